"""Stages under `accelerate launch` with 2 CPU processes (gloo), and the shipped launch configs/recipes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from align.artifacts import load_artifact, verify
from tests.conftest import REPO, sets

ACCELERATE = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--config_file",
    str(REPO / "recipes/accelerate/cpu2.yaml"),
]


def test_two_processes_train_and_commit_one_artifact(micro_base: Path, tmp_path: Path) -> None:
    output = tmp_path / "sft"
    command = [
        *ACCELERATE,
        "-m",
        "align.cli",
        "sft",
        "--model",
        str(micro_base),
        "--data",
        str(REPO / "data/synthetic/sft.jsonl"),
        "--output",
        str(output),
        "--max-steps",
        "12",
        "--full",
        "--lr",
        "3e-3",
        *sets("limit=600", "eval_fraction=0", "train.save_steps=0", "train.logging_steps=1"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]  # no .partial or per-process scratch left
    artifact = load_artifact(output, expect_stage="sft")
    assert verify(output) == []
    rows = [json.loads(line) for line in (output / "logs/metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 13))  # logged once, by the main process
    losses = [r["loss"] for r in rows if "loss" in r]
    assert sum(losses[-3:]) < sum(losses[:3])
    assert artifact.metrics["steps"] == 12


@pytest.mark.parametrize("config", sorted((REPO / "recipes/accelerate").glob("*.yaml")), ids=lambda p: p.stem)
def test_launch_configs_load_through_accelerate(config: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(config))
    assert loaded.num_processes >= 2 and loaded.distributed_type.name in (
        "MULTI_CPU",
        "MULTI_GPU",
        "FSDP",
        "DEEPSPEED",
    )
    if loaded.distributed_type.name == "DEEPSPEED":
        assert loaded.deepspeed_config["zero_stage"] in (2, 3)


CONFIG_OF_STAGE = {
    "pretrain": "PretrainConfig",
    "sft": "SFTConfig",
    "rm": "RMConfig",
    "ppo": "PPOConfig",
    "dpo": "DPOConfig",
    "grpo": "GRPOConfig",
    "rloo": "RLOOConfig",
}
STAGE_RECIPES = sorted(
    p
    for p in (REPO / "recipes").glob("*/*.yaml")
    if p.parent.name != "accelerate" and p.stem.split("_")[0] in CONFIG_OF_STAGE
)


@pytest.mark.parametrize("recipe", STAGE_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_stage_recipe_validates(recipe: Path) -> None:
    from align import config as configs

    configs.build_config(getattr(configs, CONFIG_OF_STAGE[recipe.stem.split("_")[0]]), recipe)
