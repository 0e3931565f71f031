"""The stages, written out once. The CLI, the pipeline, evaluation, the artifacts and the Python API read
this table; one stage name is its CLI command, its module `align/stages/<name>.py`, its recipe file and
its artifact directory.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import align.config as configs

if TYPE_CHECKING:
    from align.artifacts import Artifact

# CLI options -> the config key each one sets (the options themselves are declared in cli.py)
_COMMON = {"model": "model", "output": "output", "trust_remote_code": "trust_remote_code"}
_TRAIN = {
    "learning_rate": "train.learning_rate",
    "max_steps": "train.max_steps",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "seed": "train.seed",
    "lora": "lora.enabled",
    "report_to": "train.report_to",
}
_DATA = {**_COMMON, **_TRAIN, "data": "data", "eval_data": "eval_data", "max_length": "max_length"}
_JUDGED = {"reward_model": "reward_model", "reward": "reward", "prompts": "prompts"}
_JUDGED["ensemble_objective"] = "ensemble_objective"
_ONLINE = {**_COMMON, **_TRAIN, **_JUDGED, "num_generations": "num_generations", "beta": "beta"}


@dataclass(frozen=True)
class Stage:
    name: str
    config: type[configs.Settings]
    summary: str  # the command's help line
    flags: dict[str, str]  # CLI option -> config key, beyond --recipe, --output, --resume and --set
    inputs: dict[str, str] = field(default_factory=dict)  # config field -> the stage whose artifact fills it
    holds_policy: bool = True

    @property
    def aligns_a_policy(self) -> bool:
        """Trains an SFT policy further: its KL reference is that SFT parent."""
        return self.holds_policy and self.inputs.get("model") == "sft"

    def run(self, settings: Any, resume: bool = False) -> Artifact:
        """Run the stage (its module loads torch, transformers and TRL on first use), then leave the
        process group a launcher started, if any."""
        from align.distributed import close_process_group

        try:
            return importlib.import_module(f"align.stages.{self.name}").run(settings, resume)
        finally:
            close_process_group()


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            "pretrain",
            configs.PretrainConfig,
            "Train a byte-level BPE tokenizer and a small GPT-2 from scratch on a text corpus.",
            {"data": "data", "output": "output", **_TRAIN},
        ),
        Stage(
            "sft",
            configs.SFTConfig,
            "Supervised fine-tuning on instruction/chat data (loss on completions only).",
            {**_DATA, "lora_r": "lora.r", "packing": "packing", "save_merged": "save_merged"},
            {"model": "pretrain"},
        ),
        Stage(
            "pairs",
            configs.PairsConfig,
            "Preference pairs from the policy's own samples, ranked by an RM or a reward function.",
            {
                **_COMMON,
                **_JUDGED,
                "n": "sampling.n",
                "temperature": "sampling.temperature",
                "label_noise": "sampling.label_noise",
                "pairing": "sampling.pairs",
                "limit": "limit",
                "seed": "seed",
            },
            {"model": "sft"},
            holds_policy=False,
        ),
        Stage(
            "rm",
            configs.RMConfig,
            "Reward model on ranked pairs (Bradley-Terry), initialised from the SFT policy.",
            {**_DATA, "margin": "margin", "ensemble": "ensemble"},
            {"model": "sft", "data": "pairs"},
            holds_policy=False,
        ),
        Stage(
            "ppo",
            configs.PPOConfig,
            "PPO against a reward model or a reward function, with a per-token KL penalty to the SFT policy.",
            {
                **_COMMON,
                **{name: key for name, key in _TRAIN.items() if name not in ("epochs", "batch_size")},
                **_JUDGED,
                "validation_reward": "validation_reward",
                "validation_reward_model": "validation_reward_model",
                "monitor_reward": "monitor_reward",
                "kl_coef": "ppo.kl_coef",
                "critic": "critic",
                "steps": "ppo.steps",  # the earlier name of --max-steps, still read (with a notice)
            },
            {"model": "sft", "reward_model": "rm"},
        ),
        Stage(
            "rounds",
            configs.RoundsConfig,
            "Iterated RLHF: PPO, then rounds of judging the policy's answers, refreshing the RM on them "
            "and PPO against it (KL always to the SFT policy).",
            {
                **_COMMON,
                "reward_model": "reward_model",
                "data": "data",
                "prompts": "prompts",
                "refresh_prompts": "refresh_prompts",
                "judge": "judge",
                "rounds": "rounds",
                "seed": "seed",
            },
            {"model": "sft", "reward_model": "rm"},
        ),
        Stage(
            "dpo",
            configs.DPOConfig,
            "Direct preference optimisation of the SFT policy on pairs (with --rounds: on pairs it samples "
            "each round, judged by --reward-model / --reward).",
            {**_DATA, **_JUDGED, "beta": "beta", "loss_type": "loss_type", "rounds": "rounds"},
            {"model": "sft", "data": "pairs"},
        ),
        Stage(
            "grpo",
            configs.GRPOConfig,
            "GRPO (group-relative, no critic) against an RM or a reward function.",
            _ONLINE,
            {"model": "sft"},
        ),
        Stage(
            "rloo",
            configs.RLOOConfig,
            "RLOO (leave-one-out baseline, no critic) against an RM or a reward function.",
            _ONLINE,
            {"model": "sft"},
        ),
    )
}
POLICY_STAGES = (*(name for name, stage in STAGES.items() if stage.holds_policy), "export")
