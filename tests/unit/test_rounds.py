"""Iterated RLHF (`align rounds`) on the micro models: each round's artifacts, the blind-spot figures, the
KL that stays measured against the SFT policy, and a resume that reuses what a round committed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, invoke

MICRO_ROUND = {
    "ppo": {
        "ppo.rollouts": 16,
        "ppo.mini_batch_size": 8,
        "ppo.micro_batch_size": 8,
        "ppo.max_new_tokens": 12,
        "train.save_steps": 2,
        "ppo.sample_every": 0,
    },
    "rm": {"train.max_steps": 30, "train.save_steps": 0, "train.logging_steps": 10},
}


def rounds_args(sft: Path, rm: Path, output: Path, *extra: str) -> list[str]:
    overrides = json.dumps(MICRO_ROUND)
    return [
        "rounds",
        "--recipe",
        str(REPO / "recipes/tiny/rounds.yaml"),
        "--model",
        str(sft),
        "--reward-model",
        str(rm),
        "--output",
        str(output),
        "--rounds",
        "1",
        "--set",
        "steps=[4, 4]",
        "--set",
        "sampling.prompts_per_round=24",
        "--set",
        f"overrides={overrides}",
        *extra,
    ]


@pytest.fixture(scope="module")
def micro_rounds(micro_sft: Path, micro_rm: Path, micro_runs: Path, runner) -> Path:
    output = micro_runs / "rounds"
    result = invoke(runner, *rounds_args(micro_sft, micro_rm, output))
    assert result.exit_code == 0, result.output
    return output


def test_each_round_leaves_its_artifacts_and_the_blind_spot_figures(micro_rounds: Path) -> None:
    from align.artifacts import load_artifact, verify

    artifact = load_artifact(micro_rounds, "rounds")
    assert verify(micro_rounds) == []
    for part in ("round-0/ppo", "round-1/pairs", "round-1/rm", "round-1/ppo"):
        assert verify(micro_rounds / part) == [], part
    first, refresh = artifact.metrics["rounds"]
    assert first["round"] == 0 and "rm_accuracy_before" not in first
    assert refresh["pairs"] > 0 and artifact.metrics["comparisons"] == refresh["pairs"]
    for key in ("rm_accuracy_before", "rm_accuracy_after", "rm_accuracy_own_held_out"):
        assert 0.0 <= refresh[key] <= 1.0, key
    assert refresh["held_out_pairs"] > 0
    held = (micro_rounds / "round-1/held-out.jsonl").read_text().splitlines()
    trained = (micro_rounds / "round-1/rm-train.jsonl").read_text()
    assert len(held) == refresh["held_out_pairs"]
    assert not any(line in trained for line in held), "a held-out pair was trained on"
    assert artifact.model_dir == micro_rounds / "round-1/ppo/model"


def test_a_continued_round_keeps_the_sft_policy_as_its_reference(micro_rounds: Path, micro_sft: Path) -> None:
    """Round 1 starts from round 0's adapter: its very first rollouts are already away from the SFT
    policy (KL > 0), which they would not be if the continued policy had become the reference."""
    from align.artifacts import load_artifact

    round1 = load_artifact(micro_rounds / "round-1/ppo")
    parents = {record["stage"]: record for record in round1.manifest["parents"]}
    assert round1.manifest["parents"][0]["stage"] == "sft"
    assert round1.parent("sft").sha256 == load_artifact(micro_sft).sha256
    assert "ppo" in parents, "the round it continues is a parent"
    rows = [
        json.loads(line)
        for line in (micro_rounds / "round-1/ppo/logs/metrics.jsonl").read_text().splitlines()
    ]
    first = next(row for row in rows if "kl" in row)
    assert first["kl"] > 0.01, first


def test_the_final_policy_loads_and_evaluates_against_the_sft_policy(
    micro_rounds: Path, runner, tmp_path
) -> None:
    report = tmp_path / "eval.json"
    result = invoke(runner, "eval", "--model", micro_rounds, "--limit", "16", "--json", report)
    assert result.exit_code == 0, result.output
    figures = json.loads(report.read_text())
    assert figures["kl_to_reference"] > 0
    assert set(figures["gold_sampled_by_family_ci95"]) == set(figures["gold_sampled_by_family"])


def test_resume_reuses_the_rounds_a_failed_run_committed(
    micro_sft: Path, micro_rm: Path, tmp_path, runner
) -> None:
    """A judge that fails in round 1 leaves round 0 committed; --resume with a working judge reuses it."""
    output = tmp_path / "rounds"
    failed = invoke(runner, *rounds_args(micro_sft, micro_rm, output, "--judge", "tests.rewards:raises"))
    assert failed.exit_code != 0
    round0 = output.with_name("rounds.partial") / "round-0/ppo"
    stamp = (round0 / "manifest.json").stat().st_mtime_ns
    resumed = invoke(runner, *rounds_args(micro_sft, micro_rm, output, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert (output / "round-0/ppo/manifest.json").stat().st_mtime_ns == stamp
