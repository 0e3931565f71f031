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


def test_the_export_card_states_the_rounds(micro_rounds: Path, runner, tmp_path) -> None:
    from align.artifacts import load_artifact

    result = invoke(runner, "export", "--model", micro_rounds, "--output", tmp_path / "export")
    assert result.exit_code == 0, result.output
    card = (tmp_path / "export/README.md").read_text()
    refresh = load_artifact(micro_rounds).metrics["rounds"][1]
    assert "## Rounds (iterated RLHF, judge: align.data.synthetic:gold_reward)" in card
    assert f"| 1 | {refresh['pairs']} | {refresh['rm_accuracy_before']:.3f} / " in card


def test_a_warm_refresh_replays_earlier_pairs_and_weights_the_new(
    micro_sft: Path, micro_rm: Path, tmp_path: Path, runner
) -> None:
    """`rm_init: previous` trains the last round's RM further on this round's pairs (counted
    `refresh_weight` times) and as many earlier ones; the report's Health line carries the blind spot."""
    from align.artifacts import load_artifact
    from align.health import check

    output = tmp_path / "warm"
    extra = ("--set", "rm_init=previous", "--set", "refresh_weight=2")
    result = invoke(runner, *rounds_args(micro_sft, micro_rm, output, *extra))
    assert result.exit_code == 0, result.output
    rm = load_artifact(output / "round-1/rm")
    assert Path(rm.manifest["config"]["init_reward_model"]).resolve() == micro_rm.resolve()
    trained = (output / "round-1/rm-train.jsonl").read_text().splitlines()
    held = (output / "round-1/held-out.jsonl").read_text().splitlines()
    fresh, once = len(trained) // 2, len(trained) // 4  # this round's pairs twice, then as many replayed
    assert len(trained) == 4 * once and trained[:once] == trained[once:fresh]
    assert not set(trained[fresh:]) & set(trained[:fresh]) and not set(held) & set(trained)
    healthy, line = check(load_artifact(output))
    assert "round 1: RM" in line and "refreshed" in line


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


def test_a_people_round_pauses_for_labels_and_resumes_with_them(
    micro_sft: Path, micro_rm: Path, tmp_path: Path, runner
) -> None:
    """Scripted annotators drive one round through the label API: each item is handed to one annotator
    at a time, half the items go to both, ties are marked, and the round resumes once the label file is
    complete, recording its sha256 and the annotators' agreement."""
    from fastapi.testclient import TestClient

    from align.artifacts import load_artifact, sha256_file
    from align.data.synthetic import gold_reward
    from align.feedback import round_label_task
    from align.feedback.server import create_app

    output = tmp_path / "people"
    pool = (REPO / "data/synthetic/refresh.jsonl").read_text().splitlines()[:23]
    too_long = json.dumps({"prompt": "say " * 400})  # no room left to answer in the micro context
    refresh = tmp_path / "refresh.jsonl"
    refresh.write_text("\n".join([*pool[:5], too_long, *pool[5:]]) + "\n")
    args = rounds_args(micro_sft, micro_rm, output, "--judge", "people", "--set", "double_share=0.5")
    args += ["--set", f"refresh_prompts={refresh}"]
    paused = invoke(runner, *args)
    assert paused.exit_code == 3, paused.output
    assert "align label --round" in paused.output
    folder = output.with_name("people.partial") / "round-1"
    task = round_label_task(folder)
    asked = [messages[-1]["content"] for messages in task.prompts]
    assert asked == [json.loads(row)["prompt"] for row in pool]  # the over-long one is dropped
    client = TestClient(create_app(task, "label.html", {"token-ann": "ann", "token-bob": "bob"}))

    def ask(token: str) -> dict:
        return client.get("/api/next", params={"token": token}).json()

    first, second = ask("token-ann"), ask("token-bob")
    assert first["item"] != second["item"], "one item was handed to two annotators at once"
    taken = client.post(
        "/api/judge", params={"token": "token-bob"}, json={"item": first["item"], "tie": True}
    )
    assert taken.status_code == 400 and "another annotator" in taken.json()["detail"]

    def judgement(item: int, reverse: bool) -> dict:
        """ann ranks by gold, then by length (a tie only when all answers are one text); bob in exactly
        the opposite order, so the two agree only on the ties."""
        responses = task.raw_responses(item)
        if len(set(responses)) == 1:
            return {"tie": True}
        scores = gold_reward([task.sampler.render(task.prompts[item])] * len(responses), responses)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], len(responses[i]), i))
        return {"ranking": order[::-1] if reverse else order}

    shown = {"token-ann": first, "token-bob": second}
    for _ in range(4 * len(task.prompts)):
        for token, payload in shown.items():
            if "item" in payload:  # else waiting for the other, or finished
                body = {"item": payload["item"], **judgement(payload["item"], reverse=token == "token-bob")}
                assert client.post("/api/judge", params={"token": token}, json=body).status_code == 200
            shown[token] = ask(token)
    assert task.progress()["done"] == task.progress()["total"]
    summary = task.summary()
    ties = sum(len(set(task.raw_responses(item))) == 1 for item in task.double)
    assert summary["agreement_items"] == len(task.double)
    assert summary["agreement"] == pytest.approx(ties / len(task.double)), summary

    refused = invoke(runner, *args)
    assert refused.exit_code == 2 and "holds people's labels" in refused.output
    resumed = invoke(runner, *args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    refresh = load_artifact(output).metrics["rounds"][1]
    assert refresh["labels_sha256"] == sha256_file(output / "round-1/labels.jsonl")
    assert refresh["agreement"] == summary["agreement"] and refresh["pairs"] > 0
