"""The benchmarks run and print a JSON line whose ratio is what it says it is (tiny settings; the figures
themselves come from `make bench`, never from a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

KEYS = {"bench", "device", "machine", "model", "ours", "baseline", "unit", "ratio"}


def bench(script: str, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, f"bench/{script}", *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(record) >= KEYS and record["device"] == "cpu" and "cpus" in record["machine"]
    return record


def ratio_of(numerator: float, denominator: float) -> float:
    return pytest.approx(numerator / denominator, abs=1e-3)


def test_rollout_bench() -> None:
    record = bench(
        "rollout.py", "--size", "micro", "--batch", "8", "--new-tokens", "8", "--repeats", "1", "--lora"
    )
    assert record["parameters"] < 1_000_000 and record["unit"] == "new tokens/s"
    assert record["ratio"] == ratio_of(record["ours"], record["baseline"])


def test_memory_bench_counts_two_trunks_against_four() -> None:
    record = bench("memory.py", "--size", "micro")
    assert record["ours"]["layout"] == "rm_lora"
    # two trunks of weights (plus adapters) against four, and Adam state for adapters only
    assert 0.5 <= record["ours"]["weights_bytes"] / record["baseline"]["weights_bytes"] < 0.6
    assert record["ratio"] < 0.5
    totals = [record[way]["weights_bytes"] + record[way]["adam_bytes"] for way in ("ours", "baseline")]
    assert record["ratio"] == ratio_of(*totals)


def test_train_throughput_bench() -> None:
    record = bench("train_throughput.py", "--size", "micro", "--steps", "3")
    assert record["ours"]["tokens"] > record["baseline"]["tokens"]  # packed rows hold more real tokens a step
    assert record["ratio"] == ratio_of(
        record["ours"]["tokens_per_second"], record["baseline"]["tokens_per_second"]
    )


@pytest.mark.usefixtures("micro_rm")
def test_ppo_step_bench(micro_runs: Path) -> None:
    record = bench("ppo_step.py", "--runs", str(micro_runs), "--steps", "3")
    parts = ("seconds_generation", "seconds_forward", "seconds_reward", "seconds_update")
    for engine in ("ours", "baseline"):
        assert all(record[engine][part] > 0 for part in parts)
    assert record["ratio"] == ratio_of(record["baseline"]["seconds_step"], record["ours"]["seconds_step"])
