"""SIGKILL each training stage in a subprocess once its step-k checkpoint is on disk (plus a checkpoint torn
by the kill): no artifact appears, and `--resume` finishes with the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.artifacts import load_artifact
from tests.conftest import REPO, logged_steps, sets, synthetic_sft_rows, untimed, write_jsonl

FAST = sets("train.logging_steps=10", "train.eval_steps=0", "max_length=96")
STAGES = {
    # stage: (CLI args, the checkpoint to kill after, a torn checkpoint's name, compared metric keys)
    "sft": (
        [
            "sft",
            "--max-steps",
            "60",
            "--batch-size",
            "8",
            "--lr",
            "3e-3",
            *sets("train.save_steps=10"),
            *FAST,
        ],
        "checkpoint-20",
        "checkpoint-990",
        ("steps", "last_loss", "eval_loss"),
    ),
    "rm": (
        ["rm", "--max-steps", "40", "--batch-size", "8", "--lr", "2e-3", *sets("train.save_steps=10"), *FAST],
        "checkpoint-20",
        "checkpoint-990",
        ("steps", "last_loss", "eval_accuracy"),
    ),
    "dpo": (
        [
            "dpo",
            "--max-steps",
            "40",
            "--batch-size",
            "8",
            "--lr",
            "2e-3",
            *sets("train.save_steps=10"),
            *FAST,
        ],
        "checkpoint-20",
        "checkpoint-990",
        ("steps", "last_loss"),
    ),
    "ppo": (
        [
            "ppo",
            "--reward",
            "align.data.synthetic:gold_reward",
            "--max-steps",
            "8",
            *sets(
                "train.save_steps=2",
                "ppo.rollouts=16",
                "ppo.mini_batch_size=8",
                "ppo.micro_batch_size=8",
                "ppo.max_new_tokens=12",
                "ppo.sample_every=0",
            ),
        ],
        "step-4",
        ".step-6.tmp",
        ("steps", "final_score", "final_kl"),
    ),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkill_then_resume_matches_an_uninterrupted_run(
    stage: str, micro_base: Path, micro_sft: Path, tmp_path: Path
) -> None:
    args, kill_after, torn_name, keys = STAGES[stage]
    inputs = {
        "sft": ["--model", micro_base, "--data", write_jsonl(tmp_path / "d.jsonl", synthetic_sft_rows(400))],
        "rm": ["--model", micro_sft, "--data", REPO / "data/synthetic/pairs.jsonl", *sets("limit=800")],
        "dpo": ["--model", micro_sft, "--data", REPO / "data/synthetic/pairs.jsonl", *sets("limit=800")],
        "ppo": ["--model", micro_sft, "--prompts", REPO / "data/synthetic/ppo.jsonl"],
    }[stage]
    command = [sys.executable, "-m", "align.cli", *map(str, args[:1]), *map(str, inputs), *map(str, args[1:])]
    subprocess.run([*command, "--output", str(tmp_path / "straight")], check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [*command, "--output", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoints = tmp_path / "killed.partial" / "checkpoints"
    done = checkpoints / kill_after / ("trainer_state.json" if stage != "ppo" else "state.pt")
    deadline = time.time() + 300
    while not done.exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert done.exists() and not killed.exists()  # killed after step k, and no half artifact
    torn = checkpoints / torn_name  # what a kill in the middle of writing the next checkpoint leaves
    torn.mkdir(exist_ok=True)
    (torn / "model.safetensors").write_bytes(b"half")

    resumed = subprocess.run([*command, "--output", str(killed), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight, again = load_artifact(tmp_path / "straight").metrics, load_artifact(killed).metrics
    for key in keys:
        assert again[key] == pytest.approx(straight[key], rel=1e-4), key
    if stage != "ppo":
        assert again["resumed_from"] not in (None, torn_name)
    else:  # our loop resumes bit for bit on CPU: every untimed figure of every step, and the weights
        logged = [untimed(logged_steps(path)) for path in (killed, tmp_path / "straight")]
        assert logged[0] == logged[1]
        adapter = "model/adapter_model.safetensors"
        assert (killed / adapter).read_bytes() == (tmp_path / "straight" / adapter).read_bytes()
    rows = [json.loads(line) for line in (killed / "logs/metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r or "score" in r]
    assert steps == sorted(set(steps))  # the log has each step once, in order


def test_sigterm_keeps_the_checkpoints_says_how_to_resume_and_exits_143(
    micro_sft: Path, tmp_path: Path
) -> None:
    """A scheduler pre-empting the job (SIGTERM) is an interrupt: one line, exit 143, and --resume finishes."""
    args, kill_after, _, _ = STAGES["ppo"]
    command = [sys.executable, "-m", "align.cli", args[0], "--model", str(micro_sft), "--prompts"]
    command += [
        str(REPO / "data/synthetic/ppo.jsonl"),
        *map(str, args[1:]),
        "--output",
        str(tmp_path / "ppo"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done = tmp_path / "ppo.partial/checkpoints" / kill_after / "state.pt"
    deadline = time.time() + 300
    while not done.exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        "terminated (SIGTERM); rerun with --resume to continue from the last checkpoint"
    )
    assert done.exists() and not (tmp_path / "ppo").exists()
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
