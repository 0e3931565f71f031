"""The config base and the settings several stages share: LoRA, training, pair sampling, a new model."""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class LoraSettings(Settings):
    """LoRA adapters through peft; `enabled: false` means full fine-tuning."""

    enabled: bool = True
    r: int = Field(16, ge=1)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None  # None: the architecture's defaults (models.py)
    use_dora: bool = False
    load_in_4bit: bool = False  # QLoRA: needs bitsandbytes and a CUDA device


# experiment trackers both transformers' Trainer and accelerate log to -> the package each needs
TRACKERS = {
    "tensorboard": "tensorboard",
    "trackio": "trackio",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
}


class TrainSettings(Settings):
    """Optimisation settings of every trained stage; `trainer` passes any other TRL config field."""

    learning_rate: float = Field(1e-4, gt=0)
    max_steps: int = -1  # > 0 overrides epochs
    epochs: float = 1.0
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    lr_scheduler: str = "cosine"
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(200, ge=0)  # checkpoint period for --resume; 0 disables checkpoints
    save_total_limit: int = Field(2, ge=1)
    eval_steps: int = 0  # 0: evaluate once at the end
    gradient_checkpointing: bool | None = None  # None: on with CUDA only (it costs time at small sizes)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where supported
    report_to: list[str] = ["tensorboard"]  # experiment trackers (TRL's and accelerate's); [] or none: off
    trainer: dict[str, Any] = {}

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, value: Any) -> list[str]:
        """`tensorboard,trackio` or a list; each must be a tracker transformers and accelerate know, and
        installed, so a run does not fail at its first logging step."""
        names = value.split(",") if isinstance(value, str) else [n for v in value for n in str(v).split(",")]
        names = [n.strip() for n in names if n.strip() and n.strip() != "none"]
        for name in names:
            require(name in TRACKERS, f"unknown tracker '{name}' (choose from: {', '.join(TRACKERS)})")
            package = TRACKERS[name]
            require(
                importlib.util.find_spec(package) is not None,
                f"tracker '{name}' needs its package: pip install {package}",
            )
        return names

    @model_validator(mode="after")
    def _steps(self) -> TrainSettings:
        require(self.max_steps > 0 or self.epochs > 0, "train.max_steps or train.epochs must be > 0")
        return self


class PairSampling(Settings):
    """How pairs are sampled from a policy: n responses per prompt, the judge's best vs worst (or all)."""

    n: int = Field(4, ge=2)  # a pair needs two samples
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(32, ge=1)
    prompts_per_round: int | None = Field(None, ge=1)  # iterative DPO: fresh prompts each round (None: all)
    label_noise: float = Field(0.0, ge=0.0, lt=0.5)  # flip this share of labels, to simulate annotators
    pairs: Literal["best_worst", "all"] = "best_worst"  # all: every two answers the judge scores differently
    batch_size: int = Field(256, ge=1)


class TokenizerSettings(Settings):
    """Byte-level BPE trained on the corpus; digits are split so numbers stay learnable."""

    vocab_size: int = Field(2048, ge=300)  # 256 bytes + specials at least
    min_frequency: int = 2


class ArchSettings(Settings):
    """GPT-2 shape for a model trained from scratch."""

    n_layer: int = Field(4, ge=1)
    n_embd: int = Field(192, ge=1)
    n_head: int = Field(4, ge=1)
    n_positions: int = Field(256, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # a model trained for minutes underfits; PPO switches it off

    @model_validator(mode="after")
    def _heads(self) -> ArchSettings:
        require(self.n_embd % self.n_head == 0, "arch.n_embd must be divisible by arch.n_head")
        return self


def require_paths(config: Settings, *names: str) -> None:
    for name in names:
        require(bool(getattr(config, name)), f"'{name}' is required (give --{name} or set it in the recipe)")


__all__ = [
    "Settings",
    "LoraSettings",
    "TrainSettings",
    "PairSampling",
    "TokenizerSettings",
    "ArchSettings",
    "require",
    "require_paths",
]
