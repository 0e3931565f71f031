"""What every Trainer-based stage shares: our TrainSettings translated into a TRL config, the logging
callbacks (metrics.jsonl + TensorBoard), a guard against NaN losses, and resuming from checkpoints."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from align.artifacts import ArtifactWriter
from align.config import TrainSettings
from align.distributed import on_accelerator
from align.errors import AlignError, ConfigError


class TrainingDiverged(AlignError):
    """The loss became NaN or infinite; the last good checkpoint is kept for --resume."""


def trainer_config(
    config_cls: type, train: TrainSettings, writer: ArtifactWriter, has_eval: bool, **stage_fields: Any
) -> Any:
    """Build a TRL/transformers config: our settings first, the stage's fields, then `train.trainer` extras."""
    cuda = torch.cuda.is_available()
    precision = train.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    kwargs: dict[str, Any] = dict(
        output_dir=str(writer.checkpoints_dir),
        learning_rate=train.learning_rate,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        warmup_steps=train.warmup_ratio,  # < 1 is a ratio of the total steps
        lr_scheduler_type=train.lr_scheduler,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        seed=train.seed,
        data_seed=train.seed,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if train.save_steps else "no",
        save_steps=train.save_steps or 500,
        save_total_limit=train.save_total_limit,
        eval_strategy="steps" if has_eval and train.eval_steps else "no",
        eval_steps=train.eval_steps or None,
        gradient_checkpointing=cuda if train.gradient_checkpointing is None else train.gradient_checkpointing,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        report_to="none",
        # without a GPU, launched processes must be CPU ones to join over gloo (else each runs alone)
        use_cpu=not on_accelerator(),
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        **stage_fields,
    )
    known = {f.name for f in dataclasses.fields(config_cls)}
    for key in train.trainer:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key 'train.trainer.{key}' for {config_cls.__name__}{hint}")
    kwargs.update(train.trainer)
    try:
        return config_cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"invalid training settings: {exc}") from None


def callbacks(writer: ArtifactWriter) -> list[TrainerCallback]:
    from torch.utils.tensorboard import SummaryWriter

    writer.logs_dir.mkdir(parents=True, exist_ok=True)
    return [
        MetricsLogger(writer.logs_dir / "metrics.jsonl"),
        TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(writer.logs_dir))),
        DivergenceGuard(),
    ]


def train(trainer: Any, writer: ArtifactWriter, resume: bool) -> dict[str, Any]:
    """Run `trainer.train()`, resuming from the last checkpoint when asked; return summary metrics."""
    checkpoint = last_complete_checkpoint(writer.checkpoints_dir) if resume else None
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "train_loss": output.training_loss,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "steps": trainer.state.global_step,
        "train_seconds": round(time.perf_counter() - start, 2),
        "resumed_from": checkpoint and Path(checkpoint).name,
    }


def last_complete_checkpoint(root: Path) -> str | None:
    """The newest checkpoint the trainer finished writing: its trainer_state.json is written last, so a
    checkpoint cut short by a kill has none and is skipped."""
    if not root.is_dir():
        return None
    done = [
        p
        for p in root.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


def evaluate_loss(trainer: Any) -> dict[str, float]:
    if trainer.eval_dataset is None:
        return {}
    loss = trainer.evaluate()["eval_loss"]
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}


class MetricsLogger(TrainerCallback):
    """Appends every logged dict to metrics.jsonl, flushed, so a crash keeps the curve so far."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any):
        if logs and state.is_world_process_zero:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class DivergenceGuard(TrainerCallback):
    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TrainingDiverged(
                f"training loss is {loss} at step {state.global_step}; the last good "
                "checkpoint is kept (lower train.learning_rate and rerun with --resume)"
            )
