"""Stage configs: one dataclass per stage, filled from defaults < recipe YAML < CLI flags < --set.

`--set section.field=value` reaches any field; values are parsed as YAML scalars, so `--set
train.learning_rate=3e-4` is a float and `--set lora.enabled=false` a bool. Unknown keys are errors
with a "did you mean" suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from align.errors import ConfigError

C = TypeVar("C")


@dataclass
class LoraSettings:
    """LoRA adapters through peft; `enabled: false` means full fine-tuning."""

    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: the architecture's defaults (models.py)
    use_dora: bool = False
    load_in_4bit: bool = False  # QLoRA: needs bitsandbytes and a CUDA device

    def validate(self) -> None:
        _require(self.r >= 1, "lora.r must be >= 1 (use lora.enabled=false for full fine-tuning)")
        _require(self.alpha > 0, "lora.alpha must be > 0")
        _require(0.0 <= self.dropout < 1.0, "lora.dropout must be in [0, 1)")


@dataclass
class TrainSettings:
    """Optimisation settings shared by every trained stage; `trainer` passes any other TRL config field."""

    learning_rate: float = 1e-4
    max_steps: int = -1  # > 0 overrides epochs
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    logging_steps: int = 10
    save_steps: int = 200  # checkpoint period for --resume; 0 disables checkpoints
    save_total_limit: int = 2
    eval_steps: int = 0  # 0: evaluate once at the end
    gradient_checkpointing: bool | None = None  # None: on with CUDA only (it costs time at small sizes)
    precision: str = "auto"  # auto (bf16 where supported), fp32, bf16, fp16
    trainer: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        _require(self.learning_rate > 0, "train.learning_rate must be > 0")
        _require(self.max_steps > 0 or self.epochs > 0, "train.max_steps or train.epochs must be > 0")
        _require(self.batch_size >= 1, "train.batch_size must be >= 1")
        _require(self.grad_accum >= 1, "train.grad_accum must be >= 1")
        _require(0.0 <= self.warmup_ratio < 1.0, "train.warmup_ratio must be in [0, 1)")
        _require(self.save_steps >= 0, "train.save_steps must be >= 0")
        _require(self.logging_steps >= 1, "train.logging_steps must be >= 1")
        _require(self.max_grad_norm > 0, "train.max_grad_norm must be > 0")
        choices = ("auto", "fp32", "bf16", "fp16")
        _require(self.precision in choices, f"train.precision must be one of {', '.join(choices)}")


@dataclass
class SFTConfig:
    """`align sft`: supervised fine-tuning on instruction or chat data."""

    model: str = ""  # hub id, local HF directory or align artifact
    data: str = ""  # file, directory or hub id `name[:config][@split]`
    output: str = ""
    eval_data: str | None = None  # None: hold out eval_fraction of data
    eval_fraction: float = 0.05
    limit: int | None = None  # use only the first N usable rows
    max_length: int = 512  # longer rows are dropped (and counted), never silently truncated
    packing: bool = False
    completion_only_loss: bool = True  # prompt tokens get label -100
    save_merged: bool = False  # with LoRA, also write merged full weights to merged/
    trust_remote_code: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def validate(self) -> None:
        _validate_data_stage(self)


@dataclass
class RMConfig:
    """`align rm`: a scalar reward model on preference pairs (Bradley-Terry loss)."""

    model: str = ""  # SFT artifact (usual) or any base model
    data: str = ""
    output: str = ""
    eval_data: str | None = None  # None: hold out eval_fraction of the data, whole rankings at a time
    eval_fraction: float = 0.1
    limit: int | None = None
    max_length: int = 512  # longer pairs are dropped and counted
    margin: float = 0.0  # required score gap: loss = -log sigmoid(r_chosen - r_rejected - margin)
    center_rewards: float | None = None  # coefficient of the mean((r_c + r_r)^2) regulariser
    group_rankings: bool = True  # keep the pairs of one K-way ranking in the same batch (InstructGPT)
    trust_remote_code: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def validate(self) -> None:
        _validate_data_stage(self)
        _require(self.margin >= 0, "margin must be >= 0")
        _require(self.center_rewards is None or self.center_rewards >= 0, "center_rewards must be >= 0")


@dataclass
class SamplingSettings:
    """How pairs are sampled from a policy: n responses per prompt, the judge's best vs worst (or all)."""

    n: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 32
    prompts_per_round: int | None = None  # iterative DPO: fresh prompts each round (None: all)
    label_noise: float = 0.0  # flip this share of labels, to simulate annotators
    pairs: str = "best_worst"  # or "all": every two distinct answers the judge scores differently
    batch_size: int = 256

    def validate(self) -> None:
        _require(self.n >= 2, "sampling.n must be >= 2 (a pair needs two samples)")
        _require(self.temperature > 0, "sampling.temperature must be > 0")
        _require(self.max_new_tokens >= 1, "sampling.max_new_tokens must be >= 1")
        _require(0.0 <= self.label_noise < 0.5, "sampling.label_noise must be in [0, 0.5)")
        _require(self.batch_size >= 1, "sampling.batch_size must be >= 1")
        _require(self.pairs in ("best_worst", "all"), "sampling.pairs must be best_worst or all")
        _require(
            self.prompts_per_round is None or self.prompts_per_round >= 1,
            "sampling.prompts_per_round must be >= 1",
        )


@dataclass
class PairsConfig:
    """`align pairs`: preference pairs sampled from a policy and labelled by a judge (RM or function).

    InstructGPT's comparison data: the policy's own answers, ranked. Prompts whose samples all score the
    same give no pair and are counted.
    """

    model: str = ""
    prompts: str = ""
    output: str = ""
    reward_model: str | None = None
    reward: str | None = None
    limit: int | None = None
    seed: int = 0
    trust_remote_code: bool = False
    sampling: SamplingSettings = field(default_factory=SamplingSettings)

    def validate(self) -> None:
        _require_paths(self, "model", "prompts", "output")
        _require_one_judge(self)
        _require(self.limit is None or self.limit >= 1, "limit must be >= 1")
        self.sampling.validate()


@dataclass
class DPOConfig:
    """`align dpo`: the SFT policy trained directly on preference pairs (DPO and its variants)."""

    model: str = ""  # SFT artifact: the starting policy and the reference
    data: str = ""
    output: str = ""
    eval_data: str | None = None
    eval_fraction: float = 0.1
    limit: int | None = None
    max_length: int = 512  # longer pairs are dropped and counted
    beta: float = 0.1
    loss_type: str = "sigmoid"  # sigmoid (DPO), ipo, hinge, robust, ... (any TRL DPO loss)
    label_smoothing: float = 0.0  # robust DPO: the assumed label-flip rate
    sft_weight: float = 0.0  # add the SFT loss on chosen answers with this weight (RPO)
    precompute_ref_log_probs: bool = False
    trust_remote_code: bool = False
    # Iterative (online) DPO: with rounds > 0, each round samples pairs from the current policy on
    # `prompts`, labels them with the judge (an RM or a reward function) and trains on them; the
    # next round's reference is this round's result. `data` is then optional (used in round 1 if given).
    rounds: int = 0
    prompts: str | None = None
    reward_model: str | None = None
    reward: str | None = None
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def validate(self) -> None:
        _require(self.rounds >= 0, "rounds must be >= 0")
        if self.rounds:  # iterative DPO: pairs come from the policy and a judge; `data` is optional
            _require_paths(self, "prompts")
            _require_one_judge(self)
            self.sampling.validate()
        _validate_data_stage(
            self, required=("model", "output") if self.rounds else ("model", "data", "output")
        )
        _require(self.beta > 0, "beta must be > 0")
        _require(0.0 <= self.label_smoothing < 0.5, "label_smoothing must be in [0, 0.5)")
        _require(self.sft_weight >= 0, "sft_weight must be >= 0")


@dataclass
class OnlineConfig:
    """Critic-free online RL through TRL (GRPO, RLOO): sample groups of responses, reward them, update."""

    model: str = ""  # SFT artifact
    reward_model: str | None = None
    reward: str | None = None  # Python reward `module:function`
    prompts: str = ""
    output: str = ""
    limit: int | None = None
    num_generations: int = 4  # responses per prompt (the group the baseline comes from)
    max_new_tokens: int = 24
    temperature: float = 0.7
    beta: float = 0.05  # KL coefficient to the reference
    trust_remote_code: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def validate(self) -> None:
        _require_paths(self, "model", "prompts", "output")
        _require_one_judge(self)
        _require(
            self.num_generations >= 2, "num_generations must be >= 2 (the baseline comes from the group)"
        )
        _require(
            self.train.batch_size % self.num_generations == 0,
            "train.batch_size must be a multiple of num_generations",
        )
        _require(
            self.temperature > 0 and self.max_new_tokens >= 1, "temperature must be > 0, max_new_tokens >= 1"
        )
        _require(self.beta >= 0, "beta must be >= 0")
        if self.lora.enabled:
            self.lora.validate()
        self.train.validate()


@dataclass
class GRPOConfig(OnlineConfig):
    """`align grpo`: group-relative policy optimisation (TRL GRPOTrainer)."""


@dataclass
class RLOOConfig(OnlineConfig):
    """`align rloo`: REINFORCE leave-one-out (TRL RLOOTrainer)."""


@dataclass
class PPOSettings:
    """PPO-RLHF hyper-parameters (names and defaults follow Huang et al.'s reference implementation)."""

    steps: int = 100  # PPO iterations (rollout + update)
    rollouts: int = 64  # prompts sampled per iteration
    mini_batch_size: int = 16
    micro_batch_size: int = 16  # gradient accumulation inside a minibatch
    ppo_epochs: int = 4
    max_new_tokens: int = 32
    temperature: float = 0.7  # sampling temperature; log-probs use the same
    rollout_engine: str = "lean"  # lean (our decode loop, LoRA merged) or generate (transformers)
    packing: bool = True  # score and update on packed rows (padding dropped); false: padded batches
    learning_rate: float = 1e-5
    critic_learning_rate: float | None = None  # None: same as learning_rate
    critic_warmup_steps: int = 0  # iterations that train the critic only
    kl_coef: float = 0.05  # beta of the per-token KL penalty
    target_kl: float | None = None  # adaptive beta (Ziegler et al.): sequence KL target
    kl_horizon: int = 10000
    kl_ceiling: float | None = None  # stop the run when the mean sequence KL passes this
    missing_eos_penalty: float | None = 1.0  # subtracted from the score of a response without EOS
    normalize_scores: bool = True  # (score - mean) / std with the RM's stored statistics
    score_clip: float | None = None  # clip scores to [-c, c] after normalisation
    whiten_rewards: bool = False
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    max_grad_norm: float = 1.0
    stop_kl: float | None = None  # end an update's epochs early when approx-KL passes this
    allow_ratio_mismatch: bool = False  # train on although the first minibatch's ratio is not 1 (loop.py)
    ptx_coef: float = 0.0  # PPO-ptx (InstructGPT): weight of the LM loss on ptx_data rows in each update
    ptx_batch_size: int = 8  # ptx_data rows per minibatch
    seed: int = 0
    log_every: int = 1
    sample_every: int = 10  # log a few generations every N iterations
    save_every: int = 25  # checkpoint period for --resume; 0 disables

    def validate(self) -> None:
        _require(self.steps >= 1 and self.rollouts >= 1, "ppo.steps and ppo.rollouts must be >= 1")
        _require(
            self.rollout_engine in ("lean", "generate"), "ppo.rollout_engine must be 'lean' or 'generate'"
        )
        _require(
            self.rollouts % self.mini_batch_size == 0,
            "ppo.rollouts must be a multiple of ppo.mini_batch_size",
        )
        _require(
            self.mini_batch_size % self.micro_batch_size == 0,
            "ppo.mini_batch_size must be a multiple of ppo.micro_batch_size",
        )
        _require(
            self.ppo_epochs >= 1 and self.max_new_tokens >= 1,
            "ppo.ppo_epochs and max_new_tokens must be >= 1",
        )
        _require(self.temperature > 0, "ppo.temperature must be > 0")
        _require(self.learning_rate > 0, "ppo.learning_rate must be > 0")
        _require(self.kl_coef >= 0, "ppo.kl_coef (beta) must be >= 0")
        _require(self.target_kl is None or self.target_kl > 0, "ppo.target_kl must be > 0")
        _require(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "ppo.gamma and ppo.lam must be in [0, 1]")
        _require(self.clip_range > 0 and self.clip_range_value > 0, "ppo clip ranges must be > 0")
        _require(
            self.ptx_coef >= 0 and self.ptx_batch_size >= 1, "ppo.ptx_coef must be >= 0, ptx_batch_size >= 1"
        )


@dataclass
class PPOConfig:
    """`align ppo`: the SFT policy optimised against a reward model (or a reward function) with PPO."""

    model: str = ""  # SFT artifact (the policy and, adapters disabled, the reference)
    reward_model: str | None = None  # RM artifact
    reward: str | None = None  # or a Python reward `module:function`
    validation_reward: str | None = (
        None  # a `module:function` that scores each step's rollouts, never optimised
    )
    prompts: str = ""  # prompts file (or a pairs/sft file: its prompts)
    ptx_data: str | None = None  # SFT data (demonstrations) whose LM loss PPO-ptx mixes in
    output: str = ""
    limit: int | None = None
    critic: str = "auto"  # rm_lora (LoRA + value head on the RM trunk), rm_copy, policy_copy; auto picks
    trust_remote_code: bool = False
    lora: LoraSettings = field(
        default_factory=LoraSettings
    )  # enabled: false = full fine-tuning + frozen copy
    critic_lora: LoraSettings = field(default_factory=LoraSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)

    def validate(self) -> None:
        _require_paths(self, "model", "prompts", "output")
        _require_one_judge(self)
        choices = ("auto", "rm_lora", "rm_copy", "policy_copy")
        _require(self.critic in choices, f"critic must be one of {', '.join(choices)}")
        _require(
            self.reward_model is not None or self.critic in ("auto", "policy_copy"),
            f"critic '{self.critic}' needs --reward-model",
        )
        _require(self.ppo.ptx_coef == 0 or bool(self.ptx_data), "ppo.ptx_coef > 0 needs ptx_data (SFT data)")
        if self.lora.enabled:
            self.lora.validate()
        self.critic_lora.validate()
        self.ppo.validate()


@dataclass
class TokenizerSettings:
    """Byte-level BPE trained on the corpus; digits are split so numbers stay learnable."""

    vocab_size: int = 2048
    min_frequency: int = 2

    def validate(self) -> None:
        _require(self.vocab_size >= 300, "tokenizer.vocab_size must be >= 300 (256 bytes + specials)")


@dataclass
class ArchSettings:
    """GPT-2 shape for a model trained from scratch."""

    n_layer: int = 4
    n_embd: int = 192
    n_head: int = 4
    n_positions: int = 256
    dropout: float = 0.0  # a model trained for minutes underfits; dropout only slows it (and PPO needs 0)

    def validate(self) -> None:
        _require(0.0 <= self.dropout < 1.0, "arch.dropout must be in [0, 1)")
        _require(
            min(self.n_layer, self.n_embd, self.n_head, self.n_positions) >= 1, "arch sizes must be >= 1"
        )
        _require(self.n_embd % self.n_head == 0, "arch.n_embd must be divisible by arch.n_head")


@dataclass
class PretrainConfig:
    """`align pretrain`: a tokenizer and a small GPT-2 from scratch on a text corpus."""

    data: str = "data/synthetic/pretrain.jsonl"
    output: str = ""
    eval_fraction: float = 0.05
    block_size: int = 128  # packed sequence length
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    arch: ArchSettings = field(default_factory=ArchSettings)
    train: TrainSettings = field(default_factory=lambda: TrainSettings(learning_rate=1e-3, batch_size=16))

    def validate(self) -> None:
        _require_paths(self, "data", "output")
        _require(0.0 < self.eval_fraction < 1.0, "eval_fraction must be in (0, 1)")
        _require(8 <= self.block_size <= self.arch.n_positions, "block_size must be in [8, arch.n_positions]")
        self.tokenizer.validate()
        self.arch.validate()
        self.train.validate()


@dataclass
class EvalConfig:
    """`align eval`: gold score, RM score and KL of a policy on held-out prompts."""

    model: str = ""
    prompts: str = "data/synthetic/eval.jsonl"
    reward_model: str | None = None  # also report the RM's mean score of the responses
    reference: str | None = None  # KL reference; default: the SFT parent of a PPO/DPO artifact
    limit: int | None = 1200
    temperature: float = 0.7
    greedy: bool = True  # also report greedy decoding beside sampling
    max_new_tokens: int = 32
    batch_size: int = 128
    seed: int = 0
    best_of_n: list[int] = field(default_factory=list)  # best-of-n baselines (needs reward_model)
    shortest_of_n: list[int] = field(default_factory=list)  # the shortest of n samples: does saying less win?
    perplexity_data: str | None = None  # a text set whose perplexity is reported
    write_manifest: bool = True  # store the figures in the artifact's manifest metrics

    def validate(self) -> None:
        _require_paths(self, "model", "prompts")
        _require(self.temperature > 0, "temperature must be > 0")
        _require(self.max_new_tokens >= 1, "max_new_tokens must be >= 1")
        _require(self.batch_size >= 1, "batch_size must be >= 1")
        _require(self.limit is None or self.limit >= 1, "limit must be >= 1")
        _require(all(n >= 2 for n in self.best_of_n + self.shortest_of_n), "best_of_n values must be >= 2")
        _require(not self.best_of_n or bool(self.reward_model), "best_of_n needs a reward_model to pick with")


def build_config(
    cls: type[C],
    recipe: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> C:
    """Merge defaults, a recipe file, CLI flags (dotted keys; None means not given) and `--set` overrides."""
    values: dict[str, Any] = load_recipe(recipe) if recipe else {}
    for key, value in (flags or {}).items():
        if value is not None:
            _set_path(values, key, value)
    for item in sets or []:
        _apply_set(values, item)
    config = from_dict(cls, values)
    config.validate()
    return config


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of config fields, got {type(values).__name__}")
    return values


def from_dict(cls: type[C], values: dict[str, Any], where: str = "") -> C:
    """Build dataclass `cls` from plain values, checking every key and type."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"unknown config key '{dotted}'{hint}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if annotation is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{where}' must be a list, got {value!r}")
        return [_coerce(v, args[0], where) for v in value]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads `1e-4` (no dot) as a string
        except ValueError:
            pass
    if (
        annotation in (int, str, bool, float)
        and isinstance(value, annotation)
        and not (annotation is int and isinstance(value, bool))
    ):
        return value
    raise ConfigError(
        f"config key '{where}' must be {getattr(annotation, '__name__', annotation)}, got {value!r}"
    )


def _apply_set(values: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.field=value, got '{item}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    _set_path(values, key.strip(), value)


def _set_path(values: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = values
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"'{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _validate_data_stage(config: Any, required: tuple[str, ...] = ("model", "data", "output")) -> None:
    """What SFT, RM and DPO share: inputs named, held-out share, length bound, row limit, LoRA and optimiser."""
    _require_paths(config, *required)
    _require(0.0 <= config.eval_fraction < 1.0, "eval_fraction must be in [0, 1)")
    _require(config.max_length >= 8, "max_length must be >= 8")
    _require(config.limit is None or config.limit >= 1, "limit must be >= 1")
    if config.lora.enabled:
        config.lora.validate()
    config.train.validate()


def _require_one_judge(config: Any) -> None:
    _require(
        (config.reward_model is None) != (config.reward is None),
        "give exactly one of --reward-model ARTIFACT or --reward module:function",
    )


def _require_paths(config: Any, *names: str) -> None:
    for name in names:
        if not getattr(config, name):
            raise ConfigError(f"'{name}' is required (give --{name} or set it in the recipe)")
