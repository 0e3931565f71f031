"""Stages under `accelerate launch` with 2 CPU processes (gloo), and the shipped launch configs/recipes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.artifacts import load_artifact, verify
from tests.conftest import REPO, sets

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
CPU2 = REPO / "recipes/accelerate/cpu2.yaml"


@pytest.fixture
def fsdp_cpu2(tmp_path: Path) -> Path:
    """recipes/accelerate/fsdp.yaml (FSDP2, GPT2Block wrapping) on 2 processes, fp32: what a CPU runs."""
    import yaml

    config = yaml.safe_load((REPO / "recipes/accelerate/fsdp.yaml").read_text())
    config.update(num_processes=2, mixed_precision="no")
    path = tmp_path / "fsdp_cpu2.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(config: Path | None, stage: str, output: Path, *args: str) -> list[dict]:
    """`align STAGE` under `accelerate launch --config_file CONFIG` (plainly, one process, without
    one); the run's logged rows. Exactly one artifact must come out, and nothing else beside it."""
    command = [*ACCELERATE, str(config), "-m", "align.cli"] if config else [sys.executable, "-m", "align.cli"]
    result = subprocess.run(
        [*command, stage, "--output", str(output), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in output.parent.iterdir() if p.name.startswith(output.name)] == [output.name]
    assert verify(output) == []
    return [json.loads(line) for line in (output / "logs/metrics.jsonl").read_text().splitlines()]


def losses(rows: list[dict]) -> list[float]:
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # logged once per step, by the main process
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize(("stage", "engine"), [("sft", "ddp"), ("rm", "ddp"), ("sft", "fsdp")])
def test_two_processes_match_one_process_with_the_global_batch(
    stage: str, engine: str, micro_base: Path, micro_sft: Path, fsdp_cpu2: Path, tmp_path: Path
) -> None:
    """2 processes x batch 4 take the steps 1 process x batch 8 takes: the same global sample order
    (accelerate's seedable sampler, batches dealt to the processes in turn), the loss averaged over
    the tokens of all processes (`average_tokens_across_devices`) and the gradients by DDP, or sharded
    by FSDP2 (which torch runs on CPU over gloo). Tolerance: 1e-4 relative on every logged loss
    (float summation order differs)."""
    model, data = (micro_base, "sft.jsonl") if stage == "sft" else (micro_sft, "pairs.jsonl")
    args = [
        "--model",
        str(model),
        "--data",
        str(REPO / "data/synthetic" / data),
        "--max-steps",
        "6",
        "--full",
        "--lr",
        "3e-3",
        *sets("limit=600", "eval_fraction=0", "train.save_steps=0", "train.logging_steps=1"),
    ]
    config = CPU2 if engine == "ddp" else fsdp_cpu2
    two = losses(launch(config, stage, tmp_path / "two" / stage, *args, *sets("train.batch_size=4")))
    one = losses(launch(None, stage, tmp_path / "one" / stage, *args, *sets("train.batch_size=8")))
    assert len(two) == len(one) == 6
    assert two == pytest.approx(one, rel=1e-4)
    assert load_artifact(tmp_path / "two" / stage).metrics["steps"] == 6


def micro_ppo_args(micro_sft: Path, micro_rm: Path, steps: int) -> list[str]:
    """The tiny PPO recipe shrunk to micro size: 16 rollouts (8 per process), a checkpoint every 2 steps."""
    return [
        "--recipe",
        str(REPO / "recipes/tiny/ppo.yaml"),
        "--model",
        str(micro_sft),
        "--reward-model",
        str(micro_rm),
        *sets(
            f"ppo.steps={steps}",
            "ppo.rollouts=16",
            "ppo.mini_batch_size=8",
            "ppo.micro_batch_size=4",
            "ppo.max_new_tokens=12",
            "ppo.save_every=2",
            "ppo.sample_every=0",
        ),
    ]


def test_dpo_and_ppo_under_two_processes(micro_sft: Path, micro_rm: Path, tmp_path: Path) -> None:
    rows = launch(
        CPU2,
        "dpo",
        tmp_path / "dpo",
        "--model",
        str(micro_sft),
        "--data",
        str(REPO / "data/synthetic/pairs.jsonl"),
        "--max-steps",
        "4",
        *sets(
            "limit=200",
            "eval_fraction=0",
            "train.save_steps=0",
            "train.logging_steps=1",
            "train.batch_size=4",
        ),
    )
    assert len(losses(rows)) == 4
    rows = launch(CPU2, "ppo", tmp_path / "ppo", *micro_ppo_args(micro_sft, micro_rm, steps=4))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    metrics = load_artifact(tmp_path / "ppo", expect_stage="ppo").metrics
    assert metrics["steps"] == 4 and metrics["processes"] == 2


def test_two_process_ppo_resumes_after_sigkill_like_an_uninterrupted_run(
    micro_sft: Path, micro_rm: Path, tmp_path: Path
) -> None:
    """Kill both processes after the step-4 checkpoint, `--resume`: the same rollouts (scores equal)
    and losses within 1e-5 of an uninterrupted 2-process run (each process restores its own RNG)."""
    command = [
        *ACCELERATE,
        str(CPU2),
        "-m",
        "align.cli",
        "ppo",
        *micro_ppo_args(micro_sft, micro_rm, steps=6),
    ]
    subprocess.run(
        [*command, "--output", str(tmp_path / "straight")], check=True, capture_output=True, cwd=REPO
    )
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [*command, "--output", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        start_new_session=True,  # its own process group: the launcher and both workers
    )
    checkpoint = tmp_path / "killed.partial/checkpoints/step-4"
    deadline = time.time() + 600
    while not (checkpoint / "state.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert {p.name for p in checkpoint.iterdir()} >= {"rng-0.pt", "rng-1.pt", "state.pt"}
    resumed = subprocess.run(
        [*command, "--output", str(killed), "--resume"], capture_output=True, text=True, cwd=REPO
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight, again = (
        [json.loads(line) for line in (path / "logs/metrics.jsonl").read_text().splitlines()]
        for path in (tmp_path / "straight", killed)
    )
    assert [r["step"] for r in again] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(again, straight, strict=True):
        assert a["score"] == b["score"]
        for key in ("kl", "policy_loss", "value_loss", "approxkl"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)


def test_ppo_statistics_are_reduced_over_the_processes() -> None:
    """Advantage whitening, the KL of the adaptive controller and the logged metrics: 2 processes,
    each holding half of a batch, get the statistics one process holding all of it gets."""
    command = [*ACCELERATE, str(CPU2), str(REPO / "tests/distributed_statistics.py")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("statistics are global") == 2  # both processes checked


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
