"""SIGKILL each training stage in a subprocess once its step-k checkpoint is on disk (plus a checkpoint torn
by the kill): no artifact appears, and `--resume` finishes with the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.artifacts import load_artifact
from tests.conftest import REPO, error_line, logged_steps, sets, synthetic_sft_rows, untimed, write_jsonl

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
    """A scheduler pre-empting the job (SIGTERM): a checkpoint at the next step boundary, one line, exit
    143, and --resume finishes."""
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
    saved = [int(p.name.split("-")[1]) for p in (tmp_path / "ppo.partial/checkpoints").glob("step-*")]
    assert max(saved) > int(kill_after.split("-")[1]), saved  # a checkpoint at the step it stopped
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


PPO_CHECKPOINTED = [
    "ppo", "--max-steps", "6", "--prompts", str(REPO / "data/synthetic/ppo.jsonl"),
    *sets("train.save_steps=2", "ppo.rollouts=16", "ppo.mini_batch_size=8", "ppo.micro_batch_size=8",
          "ppo.max_new_tokens=12", "ppo.sample_every=0"),
]  # fmt: skip


@pytest.fixture(scope="module")
def interrupted_ppo(micro_sft: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PPO run interrupted at step 5, its checkpoints step-2 and step-4 in `ppo.partial/`."""
    root = tmp_path_factory.mktemp("interrupted")
    command = [sys.executable, "-m", "align.cli", *PPO_CHECKPOINTED, "--model", str(micro_sft)]
    result = subprocess.run(
        [*command, "--reward", "tests.rewards:interrupted_at_5", "--output", str(root / "ppo")],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 130, result.stderr[-2000:]
    assert sorted(p.name for p in (root / "ppo.partial/checkpoints").iterdir()) == ["step-2", "step-4"]
    return root / "ppo.partial"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated policy.safetensors": ("policy.safetensors", _truncate, "modified"),
    "64 flipped bytes in policy.safetensors": ("policy.safetensors", _flip, "modified"),
    "truncated optimizers.pt": ("optimizers.pt", _truncate, "modified"),
    "truncated state.pt": ("state.pt", _truncate, "modified"),
    "garbled progress.json": ("progress.json", lambda p: p.write_text("{garbled"), "modified"),
    "empty rng-0.pt": ("rng-0.pt", lambda p: p.write_bytes(b""), "modified"),
    "missing critic.safetensors": ("critic.safetensors", lambda p: p.unlink(), "missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_set_aside_and_the_run_resumes_from_an_older_one(
    interrupted_ppo: Path, micro_sft: Path, tmp_path: Path, damage: str
) -> None:
    name, spoil, word = DAMAGE[damage]
    partial = tmp_path / "ppo.partial"
    shutil.copytree(interrupted_ppo, partial)
    spoil(partial / "checkpoints/step-4" / name)
    command = [sys.executable, "-m", "align.cli", *PPO_CHECKPOINTED, "--model", str(micro_sft)]
    command += ["--reward", "tests.rewards:longer", "--output", str(tmp_path / "ppo"), "--resume"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"step-4: {name} {word}" in result.stderr and "set aside as damaged-step-4" in result.stderr
    assert not any(line.startswith("Traceback") for line in result.stderr.splitlines())
    assert load_artifact(tmp_path / "ppo").metrics["steps"] == 6


def test_when_no_checkpoint_is_intact_the_resume_stops_in_one_line(
    interrupted_ppo: Path, micro_sft: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "ppo.partial"
    shutil.copytree(interrupted_ppo, partial)
    for step in ("step-2", "step-4"):
        _flip(partial / "checkpoints" / step / "policy.safetensors")
    command = [sys.executable, "-m", "align.cli", *PPO_CHECKPOINTED, "--model", str(micro_sft)]
    command += ["--reward", "tests.rewards:longer", "--output", str(tmp_path / "ppo"), "--resume"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2, result.stderr[-2000:]
    assert error_line(result.stderr) == (
        f"error: {partial / 'checkpoints'}: no intact checkpoint to resume from (step-4: policy.safetensors "
        "modified (sha256 differs from checksums.json); step-2: policy.safetensors modified (sha256 differs "
        "from checksums.json)); rerun without --resume"
    )


def test_a_damaged_trainer_checkpoint_is_set_aside_too(micro_base: Path, tmp_path: Path) -> None:
    """SFT (a Trainer stage) killed after a few checkpoints; flipped bytes in the newest one's weights:
    the resume names it, sets it aside and continues from the one before."""
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_sft_rows(400))
    command = [sys.executable, "-m", "align.cli", "sft", "--model", str(micro_base), "--data", str(data)]
    command += ["--max-steps", "40", "--full", *sets("train.save_steps=2"), "--output", str(tmp_path / "sft")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = tmp_path / "sft.partial/checkpoints"
    deadline = time.time() + 300
    while not (root / "checkpoint-4" / "checksums.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    sealed = sorted(
        (p for p in root.glob("checkpoint-*") if (p / "checksums.json").exists()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    newest, before = sealed[-1], sealed[-2]
    _flip(newest / "model.safetensors")
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{newest.name}: model.safetensors modified" in resumed.stderr
    assert load_artifact(tmp_path / "sft").metrics["resumed_from"] == before.name


def test_sigterm_in_a_trainer_stage_saves_the_step_it_stops_at(micro_base: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_sft_rows(400))
    command = [sys.executable, "-m", "align.cli", "sft", "--model", str(micro_base), "--data", str(data)]
    command += [
        "--max-steps",
        "400",
        "--full",
        *sets("train.save_steps=50"),
        "--output",
        str(tmp_path / "sft"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = tmp_path / "sft.partial/checkpoints"
    deadline = time.time() + 300
    while not (root / "checkpoint-50" / "checksums.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    steps = sorted(int(p.name.split("-")[1]) for p in root.glob("checkpoint-*"))
    assert steps[-1] > 50 and steps[-1] % 50, steps  # saved where it stopped, not at a save_steps multiple
    assert (root / f"checkpoint-{steps[-1]}" / "checksums.json").exists()
