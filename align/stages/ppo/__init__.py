"""PPO-RLHF: the SFT policy optimised against a reward model (or reward function) with a KL penalty.

    align ppo --model runs/tiny/sft --reward-model runs/tiny/rm --prompts data/synthetic/ppo.jsonl \\
              --output runs/tiny/ppo

Our own implementation (TRL has none any more): `core.py` the math as pure functions, `networks.py` the
models PPO holds, `rollout.py` trajectories, `loop.py` the iterations, `checkpoint.py` resuming.
"""

from __future__ import annotations

from typing import Any

import torch

from align import trackers
from align.artifacts import Artifact, ArtifactWriter, load_artifact
from align.config import PPOConfig, to_dict
from align.data import Dataset, load_data
from align.data.splits import hold_out
from align.decoding.packing import check_packing
from align.decoding.static_gpt2 import supports
from align.distributed import make_accelerator
from align.errors import ConfigError, DataError
from align.models import load_tokenizer, resolve_model, save_policy
from align.rewards import RewardFn, RewardModel, judge_of, load_reward_function
from align.stages.ppo import networks as ppo_networks
from align.stages.ppo.checkpoint import full_weights
from align.stages.ppo.loop import PPOData, PPOLoop
from align.stages.ppo.networks import trainable
from align.stages.ppo.validation import Validation
from align.text.chat import context_length, fitting_prompts
from align.text.encoding import tokenize_sft


def run(config: PPOConfig, resume: bool = False) -> Artifact:
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    accelerator = make_accelerator(trackers.external(config.train.report_to))
    sharded = accelerator.distributed_type.name == "FSDP"
    torch.manual_seed(config.train.seed)
    judge = judge_of(config, accelerator.device)[1]
    networks = ppo_networks.build(config, source, tokenizer, judge, accelerator.device, sharded)
    context = context_length(networks.policy.config)
    prompts, prompt_data = _prompt_texts(config, tokenizer, context)
    ptx_rows, ptx_info = _ptx_rows(config, tokenizer, context)
    if config.ppo.packing:
        check_packing("policy", networks.policy)
        check_packing("critic", networks.critic)
    if sharded and config.ppo.rollout_engine == "lean" and not supports(networks.policy):
        raise ConfigError(
            "under FSDP the lean rollout engine decodes GPT-2 models only; set ppo.rollout_engine=generate"
        )
    with ArtifactWriter(config.output, "ppo", to_dict(config), resume) as writer:
        prompts, validation = _validation(config, prompts, accelerator.device)
        data = PPOData(prompts, ptx_rows, validation, _monitor(config))
        if accelerator.log_with:
            trackers.start(accelerator, writer.run_name, to_dict(config))
        loop = PPOLoop(config.ppo, config.train, networks, data, tokenizer, writer, accelerator)
        summary = loop.train(resume)
        summary.update(
            {
                "critic": networks.layout,
                "trainable_policy_parameters": sum(p.numel() for p in trainable(networks.policy)),
                "trainable_critic_parameters": sum(p.numel() for p in trainable(networks.critic)),
            }
        )
        weights = full_weights(networks.policy)  # every process takes part in gathering FSDP shards
        if loop.processes.is_main:
            save_policy(networks.policy, tokenizer, writer, source, config.lora.enabled, weights)
        writer.record_data(prompt_data)
        writer.metrics = summary
        writer.record_judge(networks.reward_artifact, config.reward)
        if config.init_adapter is not None:  # the round this one continues
            writer.add_parent(load_artifact(config.init_adapter))
        writer.extra["dropout_disabled"] = networks.dropout_disabled
        if ptx_info:
            writer.extra["ptx_data"] = ptx_info
        return writer.commit()


def _monitor(config: PPOConfig) -> tuple[str, RewardFn] | None:
    """The reward logged per step and nothing else, under its name without `_reward` (gold)."""
    if config.monitor_reward is None:
        return None
    return _metric_name(config.monitor_reward, "monitor"), load_reward_function(config.monitor_reward)


def _metric_name(spec: str, default: str) -> str:
    return spec.partition(":")[2].removesuffix("_reward") or default


def _validation(config: PPOConfig, prompts: list[str], device: Any) -> tuple[list[str], Validation | None]:
    """The validation judge PPO never optimises, and the training prompts left once its fixed validation
    prompts are split off (only with `ppo.validation_every`). A function is logged under its name without
    `_reward` (`align.data.synthetic:gold_reward` logs `gold`), an RM as `validation_rm`."""
    if config.validation_reward is not None:
        name = _metric_name(config.validation_reward, "validation")
        judge = load_reward_function(config.validation_reward)
    elif config.validation_reward_model is not None:
        name, judge = "validation_rm", RewardModel.load(config.validation_reward_model, device)
    else:
        return prompts, None
    held: list[str] = []
    if config.ppo.validation_every:
        count = (config.ppo.validation_prompts + 0.5) / len(prompts)  # exactly that many
        prompts, held = hold_out(prompts, count, config.train.seed)
    if len(prompts) < config.ppo.rollouts:
        raise DataError(
            f"{len(prompts)} training prompts left after the validation split, fewer than ppo.rollouts"
        )
    return prompts, Validation(name, judge, held)


def _prompt_texts(config: PPOConfig, tokenizer: Any, context: int) -> tuple[list[str], Dataset]:
    """Rendered prompts; those leaving no room for max_new_tokens in the context are dropped and counted."""
    data = load_data(config.prompts, "prompts", config.limit)
    texts = fitting_prompts(data, tokenizer, context - config.ppo.max_new_tokens)
    if len(texts) < config.ppo.rollouts:
        raise DataError(
            f"{config.prompts}: {len(texts)} usable prompts, fewer than ppo.rollouts={config.ppo.rollouts}"
        )
    return texts, data


def _ptx_rows(
    config: PPOConfig, tokenizer: Any, context: int
) -> tuple[list[dict[str, list[int]]], dict | None]:
    """PPO-ptx's demonstrations, chat-formatted with completion masks (none when ptx is off)."""
    if not config.ppo.ptx_coef:
        return [], None
    data = load_data(config.ptx_data, "sft", config.limit)
    return tokenize_sft(data, tokenizer, context), data.info()


__all__ = ["run"]
