"""Experiment trackers (trackio, W&B, MLflow, ...) for our own PPO loop, through accelerate's
integrations; the Trainer-based stages hand the same `train.report_to` names to transformers. TensorBoard
is written into the artifact's `logs/` by each stage itself, so it is not a tracker here."""

from __future__ import annotations

from typing import Any

PROJECT = "align"


def external(report_to: list[str]) -> list[str]:
    return [name for name in report_to if name != "tensorboard"]


def start(accelerator: Any, run_name: str, config: dict[str, Any]) -> None:
    """Open the run on every tracker the accelerator was built with, the resolved config as its
    hyper-parameters (flattened to `section.field`, as trackers want scalars)."""
    names = {"trackio": {"name": run_name}, "wandb": {"name": run_name}, "mlflow": {"run_name": run_name}}
    accelerator.init_trackers(PROJECT, config=flatten(config), init_kwargs=names)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = (
                value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
            )
    return flat
