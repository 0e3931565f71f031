"""The one shape every Trainer-based stage shares (pretrain, sft, rm, dpo, grpo, rloo): our TrainSettings
translated into the TRL config, the trainer built on the stage's rows with our logging callbacks
(metrics.jsonl + TensorBoard) and a guard against NaN losses, trained (resuming from the last complete
checkpoint when asked) and summarised. A stage only says which trainer, which rows and which of its
own TRL fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import time
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PrinterCallback, ProgressCallback, TrainerCallback
from transformers.integrations import TensorBoardCallback

from align.artifacts import Artifact, ArtifactWriter
from align.checkpoints import newest_intact, seal
from align.config import OnlineConfig, TrainSettings, to_dict
from align.data import load_data
from align.distributed import on_accelerator
from align.errors import ConfigError, Terminated, TrainingDiverged, step_boundaries, termination_requested
from align.logs import ProgressLines, interactive
from align.models import load_policy, load_tokenizer, lora_config, pick_device, resolve_model, save_policy
from align.rewards import judge_of, trl_reward

# our TrainSettings field -> the TRL/transformers argument it sets
_TRL_NAMES = {
    "learning_rate": "learning_rate",
    "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "epochs": "num_train_epochs",
    "max_steps": "max_steps",
    "warmup_ratio": "warmup_steps",  # < 1 is a ratio of the total steps
    "lr_scheduler": "lr_scheduler_type",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
    "seed": "seed",
    "logging_steps": "logging_steps",
    "save_total_limit": "save_total_limit",
}


def fit(
    trainer_cls: type,
    config_cls: type,
    stage: Any,
    model: Any,
    tokenizer: Any,
    writer: ArtifactWriter,
    rows: tuple[list[dict[str, Any]], list[dict[str, Any]] | None],
    stage_fields: dict[str, Any],
    resume: bool,
    task_type: str = "CAUSAL_LM",
    part: str = "",
    **trainer_args: Any,
) -> tuple[Any, dict[str, Any]]:
    """Build `trainer_cls` on the (train, held-out) rows with the stage config's `train` settings and
    LoRA (if it has them, and they are on), train it, and return it with the run's summary figures.
    `part` names one of several models a stage trains (an ensemble member): its checkpoints and logs
    go to their own subdirectory."""
    lora = getattr(stage, "lora", None)
    train_rows, eval_rows = rows
    checkpoints, logs = writer.checkpoints_dir / part, writer.logs_dir / part
    trainer = trainer_cls(
        model=model,
        args=trainer_config(
            config_cls,
            stage.train,
            checkpoints,
            bool(eval_rows),
            run_name="/".join(filter(None, (writer.run_name, part))),
            **stage_fields,
        ),  # fmt: skip
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=lora_config(lora, model, task_type) if lora is not None and lora.enabled else None,
        callbacks=callbacks(logs, "tensorboard" in stage.train.report_to),
        **trainer_args,
    )
    _show_progress(trainer, writer.stage)
    checkpoint = last_complete_checkpoint(checkpoints) if resume else None
    start = time.perf_counter()
    with step_boundaries():
        output = trainer.train(resume_from_checkpoint=checkpoint)
    if termination_requested():  # the trainer saved this step and stopped (StopOnTermination)
        raise Terminated
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return trainer, {
        "train_loss": output.training_loss,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "steps": trainer.state.global_step,
        "train_seconds": round(time.perf_counter() - start, 2),
        "resumed_from": checkpoint and Path(checkpoint).name,
    }


def run_online(
    config: OnlineConfig, resume: bool, stage: str, trainer_cls: type, config_cls: type
) -> Artifact:
    """GRPO and RLOO: the SFT policy sampled in groups and trained against the judge by TRL's trainer."""
    prompts = load_data(config.prompts, "prompts", config.limit)
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    rm_artifact, reward = judge_of(config, pick_device())
    torch.manual_seed(config.train.seed)
    model = load_policy(source, config.trust_remote_code)
    with ArtifactWriter(config.output, stage, to_dict(config), resume) as writer:
        train_rows = [{"prompt": row["prompt"]} for row in prompts.rows]
        fields = {"num_generations": config.num_generations, "max_completion_length": config.max_new_tokens}
        fields.update(temperature=config.temperature, beta=config.beta, top_k=0, top_p=1.0)
        trainer, summary = fit(
            trainer_cls, config_cls, config, model, tokenizer, writer, (train_rows, None), fields, resume,
            reward_funcs=trl_reward(reward, tokenizer),
        )  # fmt: skip
        rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
        summary.update({"first_reward": rewards[0], "last_reward": rewards[-1]} if rewards else {})
        save_policy(trainer.model, tokenizer, writer, source, config.lora.enabled)
        writer.record_data(prompts)
        writer.metrics = summary
        writer.record_judge(rm_artifact, config.reward)
        return writer.commit()


def trainer_config(
    config_cls: type, train: TrainSettings, checkpoints: Path, has_eval: bool, **stage_fields: Any
) -> Any:
    """Build a TRL/transformers config: our settings first, the stage's fields, then `train.trainer` extras."""
    cuda = torch.cuda.is_available()
    precision = train.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    kwargs: dict[str, Any] = {trl: getattr(train, ours) for ours, trl in _TRL_NAMES.items()}
    kwargs.update(
        output_dir=str(checkpoints),
        per_device_eval_batch_size=train.batch_size,
        data_seed=train.seed,
        logging_first_step=True,
        save_strategy="steps" if train.save_steps else "no",
        save_steps=train.save_steps or 500,
        eval_strategy="steps" if has_eval and train.eval_steps else "no",
        eval_steps=train.eval_steps or None,
        disable_tqdm=not interactive(),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # TensorBoard goes to the artifact's logs/ through our callback; the other trackers are the Trainer's
        report_to=[name for name in train.report_to if name != "tensorboard"] or "none",
        # without a GPU, launched processes must be CPU ones to join over gloo (else each runs alone)
        use_cpu=not on_accelerator(),
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        **stage_fields,
    )
    known = {f.name for f in dataclasses.fields(config_cls)}
    if "project" in known:
        kwargs["project"] = "align"  # trackio's project (older transformers lack the field)
    # transformers >= 5.24 names it activation_checkpointing (the old name warns); 5.17 has the old one only
    checkpointing = (
        "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    )
    kwargs[checkpointing] = cuda if train.gradient_checkpointing is None else train.gradient_checkpointing
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


def callbacks(logs: Path, tensorboard: bool) -> list[TrainerCallback]:
    from torch.utils.tensorboard import SummaryWriter

    logs.mkdir(parents=True, exist_ok=True)
    board = [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(logs)))] if tensorboard else []
    return [
        MetricsLogger(logs / "metrics.jsonl"),
        *board,
        DivergenceGuard(),
        StopOnTermination(),
        SealCheckpoint(),
    ]


# the figures a progress line shows, from what each trainer logs
_SHOWN = ("loss", "accuracy", "rewards/accuracies", "rewards/margins", "reward", "kl", "eval_loss")


def _show_progress(trainer: Any, stage: str) -> None:
    """A bar in a terminal, without the raw dict of figures transformers writes under it every log
    step; otherwise a progress line (`align.logs.ProgressLines`) at each logging step."""
    trainer.remove_callback(PrinterCallback)
    if interactive():
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(BarOnly())
    else:
        trainer.add_callback(LineProgress(stage))


class BarOnly(ProgressCallback):
    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        """The bar stays; the figures go to metrics.jsonl and TensorBoard instead."""


class LineProgress(TrainerCallback):
    def __init__(self, stage: str):
        self.stage, self.lines = stage, None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.lines = ProgressLines(self.stage, state.max_steps, args.logging_steps, state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any):
        shown = {k: logs[k] for k in _SHOWN if k in (logs or {})}
        if state.is_world_process_zero and self.lines is not None and shown:
            self.lines.update(state.global_step, shown)


def last_complete_checkpoint(root: Path) -> str | None:
    """The newest checkpoint that re-hashes as sealed (`SealCheckpoint`): one cut short by a kill has no
    record and one damaged since fails it; each is set aside with a notice (`align/checkpoints.py`)."""
    if not root.is_dir():
        return None
    found = sorted(
        (p for p in root.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    latest = newest_intact(found)
    return None if latest is None else str(latest)


class StopOnTermination(TrainerCallback):
    """After a SIGTERM, save a checkpoint at the end of this step and stop training."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any):
        if termination_requested():
            control.should_save = True
            control.should_training_stop = True


class SealCheckpoint(TrainerCallback):
    """Records every file's sha256 in the checkpoint the trainer just wrote, so `--resume` can prove it."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any):
        directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and directory.is_dir():
            seal(directory)


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
