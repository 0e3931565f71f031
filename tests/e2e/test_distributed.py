"""Stages under `accelerate launch` with 2 CPU processes (gloo), and the shipped launch configs/recipes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align.artifacts import load_artifact, verify
from tests.conftest import REPO, logged_steps, sets, untimed

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
CPU2 = REPO / "recipes/accelerate/cpu2.yaml"
CPU2_FSDP = REPO / "recipes/accelerate/cpu2-fsdp.yaml"


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
    return logged_steps(output)


def losses(rows: list[dict]) -> list[float]:
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # logged once per step, by the main process
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize(("stage", "engine"), [("sft", "ddp"), ("rm", "ddp"), ("sft", "fsdp")])
def test_two_processes_match_one_process_with_the_global_batch(
    stage: str, engine: str, micro_base: Path, micro_sft: Path, tmp_path: Path
) -> None:
    """2 processes x batch 4 take the steps 1 process x batch 8 takes: the same global sample order
    (accelerate's seedable sampler, batches dealt to the processes in turn), the loss averaged over
    the tokens of all processes (`average_tokens_across_devices`) and the gradients by DDP. Under the
    FSDP2 launch config the Trainer-based stages run data-parallel on CPU processes too (accelerate
    shards on accelerators only), so that case checks the config launches them correctly. Tolerance:
    1e-4 relative on every logged loss (float summation order differs)."""
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
    config = CPU2 if engine == "ddp" else CPU2_FSDP
    two = losses(launch(config, stage, tmp_path / "two" / stage, *args, *sets("train.batch_size=4")))
    one = losses(launch(None, stage, tmp_path / "one" / stage, *args, *sets("train.batch_size=8")))
    assert len(two) == len(one) == 6
    assert two == pytest.approx(one, rel=1e-4)
    assert load_artifact(tmp_path / "two" / stage).metrics["steps"] == 6


def micro_ppo_args(micro_sft: Path, micro_rm: Path, steps: int, critic: str = "auto") -> list[str]:
    """The tiny PPO recipe shrunk to micro size: 16 rollouts (8 per process), a checkpoint every 2 steps."""
    return [
        "--recipe",
        str(REPO / "recipes/tiny/ppo.yaml"),
        "--model",
        str(micro_sft),
        "--reward-model",
        str(micro_rm),
        "--critic",
        critic,
        *sets(
            f"train.max_steps={steps}",
            "ppo.rollouts=16",
            "ppo.mini_batch_size=8",
            "ppo.micro_batch_size=4",
            "ppo.max_new_tokens=12",
            "train.save_steps=2",
            "ppo.sample_every=0",
        ),
    ]


def test_dpo_under_two_processes(micro_sft: Path, tmp_path: Path) -> None:
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


# the PPO layouts each launch config runs: DDP shares the RM's trunk with the critic, FSDP2 gives the
# critic its own copy to shard
PPO_LAUNCHES = {"ddp": (CPU2, "rm_lora"), "fsdp": (CPU2_FSDP, "rm_copy")}


@pytest.mark.parametrize("engine", list(PPO_LAUNCHES))
def test_ppo_two_processes_match_one_process_with_the_global_batch(
    engine: str, micro_sft: Path, micro_rm: Path, tmp_path: Path
) -> None:
    """Two processes (8 rollouts each) under DDP or FSDP2 take the steps one process with all 16 takes:
    the same samples (each rollout's random draws are keyed by its global index), the rollouts gathered
    and dealt out as the same global minibatches, losses as token means over the whole minibatch.
    Every logged figure within 1e-4, the trained adapter within 1e-5 (float summation order differs)."""
    config, critic = PPO_LAUNCHES[engine]
    args = micro_ppo_args(micro_sft, micro_rm, steps=4, critic=critic)
    two = launch(config, "ppo", tmp_path / "two", *args)
    one = launch(None, "ppo", tmp_path / "one", *args)
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(untimed(two), untimed(one), strict=True):
        assert a.keys() == b.keys()
        for key, value in b.items():
            assert a[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (a["step"], key)
    metrics = load_artifact(tmp_path / "two", expect_stage="ppo").metrics
    assert metrics["processes"] == 2 and metrics["critic"] == critic
    adapters = [
        load_file(str(path / "model/adapter_model.safetensors"))
        for path in (tmp_path / "two", tmp_path / "one")
    ]
    for key, weight in adapters[1].items():
        torch.testing.assert_close(adapters[0][key], weight, atol=1e-5, rtol=0)


@pytest.mark.parametrize("engine", list(PPO_LAUNCHES))
def test_two_process_ppo_resumes_after_sigkill_like_an_uninterrupted_run(
    engine: str, micro_sft: Path, micro_rm: Path, tmp_path: Path
) -> None:
    """Kill both processes after the step-4 checkpoint, `--resume`: every logged figure of every step and
    the trained adapter are those of an uninterrupted 2-process run, bit for bit (checkpoints hold the
    whole trainable state, gathered from FSDP2 shards, and each process's random state)."""
    config, critic = PPO_LAUNCHES[engine]
    command = [
        *ACCELERATE,
        str(config),
        "-m",
        "align.cli",
        "ppo",
        *micro_ppo_args(micro_sft, micro_rm, 6, critic),
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
    while not (checkpoint / "progress.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert {p.name for p in checkpoint.iterdir()} >= {"rng-0.pt", "rng-1.pt", "state.pt", "optimizers.pt"}
    resumed = subprocess.run(
        [*command, "--output", str(killed), "--resume"], capture_output=True, text=True, cwd=REPO
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight, again = logged_steps(tmp_path / "straight"), logged_steps(killed)
    assert [r["step"] for r in again] == [1, 2, 3, 4, 5, 6]
    assert untimed(again) == untimed(straight)
    adapter = "model/adapter_model.safetensors"
    assert (killed / adapter).read_bytes() == (tmp_path / "straight" / adapter).read_bytes()


def test_ppo_rollouts_are_gathered_in_global_order() -> None:
    """2 processes, each holding its slice of a batch at its own padding width, gather the whole batch in
    global order (which whitening, the adaptive KL and the update's minibatches then read), and their
    sums and maxima are global."""
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
