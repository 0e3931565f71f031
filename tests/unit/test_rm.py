"""`align rm` on a micro model: learns the synthetic preferences, reloads plainly, keeps rankings together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from align.artifacts import load_artifact
from align.errors import AlignError, ConfigError
from align.rewards import RewardModel, load_reward_function
from tests.conftest import REPO, invoke, write_jsonl


def test_rm_trains_on_the_synthetic_pairs_and_reports_its_figures(micro_rm: Path) -> None:
    metrics = load_artifact(micro_rm, expect_stage="rm").metrics
    assert metrics["last_loss"] < metrics["first_loss"] == pytest.approx(0.6931, abs=1e-3)  # zero head: log 2
    assert metrics["eval_gold_pairs"] > 100 and metrics["eval_gold_ties_excluded"] >= 0
    for key in (
        "eval_accuracy",
        "eval_gold_accuracy",
        "eval_margin",
        "eval_calibration",
        "eval_length_correlation",
        "reward_mean",
        "reward_std",
        "eval_accuracy_longer_rejected",
    ):
        assert key in metrics


def test_rm_ranks_held_out_pairs(runner, micro_sft: Path, tmp_path: Path) -> None:
    """A preference a micro model can learn in seconds (concise over chatty) must rank held-out pairs."""
    rows = [json.loads(line) for line in (REPO / "data/synthetic/sft.jsonl").read_text().splitlines()[:800]]
    pairs = [
        {
            "prompt": r["prompt"],
            "chosen": r["completion"],
            "rejected": f"Well, let me think. {r['completion']}",
        }
        for r in rows
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    result = invoke(
        runner,
        "rm",
        "--model",
        micro_sft,
        "--data",
        data,
        "--output",
        tmp_path / "rm",
        "--full",
        "--max-steps",
        "60",
        "--lr",
        "2e-3",
        "--batch-size",
        "16",
        "--set",
        "train.save_steps=0",
    )
    assert result.exit_code == 0, result.output
    metrics = load_artifact(tmp_path / "rm").metrics
    assert metrics["eval_pairs"] == 80 and metrics["eval_accuracy"] > 0.9, metrics


def test_a_continued_rm_keeps_its_score_head(runner, micro_sft: Path, micro_rm: Path, tmp_path: Path) -> None:
    """`init_reward_model` (a refresh of iterated RLHF) starts from the last RM, score head included: at a
    vanishing learning rate it scores as that RM does, and its first loss is below the log 2 of a head
    that starts at zero."""
    result = invoke(
        runner, "rm", "--recipe", REPO / "recipes/tiny/rm.yaml", "--model", micro_sft,
        "--output", tmp_path / "rm", "--max-steps", "2", "--lr", "1e-12",
        "--set", f"init_reward_model={micro_rm}", "--set", "limit=200",
        "--set", "train.save_steps=0", "--set", "train.logging_steps=1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_artifact(tmp_path / "rm").metrics["first_loss"] < 0.69
    prompts = [[{"role": "user", "content": "How many words: owl cat jam"}]] * 2
    responses = ["3<|endoftext|>", "owl cat jam<|endoftext|>"]
    before = RewardModel.load(micro_rm, "cpu").score_messages(prompts, responses)
    after = RewardModel.load(tmp_path / "rm", "cpu").score_messages(prompts, responses)
    assert after == pytest.approx(before, abs=1e-4) and before[0] != before[1]


def test_plain_transformers_reload_gives_the_same_scores(micro_rm: Path) -> None:
    prompts = ["<|user|>\nAdd 1 and 2.\n<|assistant|>\n"] * 3
    responses = ["3<|endoftext|>", "Sure! 3<|endoftext|>", "4<|endoftext|>"]
    ours = RewardModel.load(micro_rm, device="cpu").score(prompts, responses)
    model = AutoModelForSequenceClassification.from_pretrained(micro_rm / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(micro_rm / "model")
    with torch.no_grad():
        plain = [
            model(**tokenizer(p + r, return_tensors="pt")).logits[0, 0].item()
            for p, r in zip(prompts, responses, strict=True)
        ]
    assert ours == pytest.approx(plain, abs=1e-5)


def test_rm_score_command(runner, micro_rm: Path, tmp_path: Path) -> None:
    data = write_jsonl(
        tmp_path / "r.jsonl",
        [{"prompt": "Add 1 and 2.", "completion": "3"}, {"prompt": "Add 1 and 2.", "completion": "Sure! 3"}],
    )
    result = invoke(
        runner, "rm", "score", "--model", micro_rm, "--data", data, "--output", tmp_path / "s.jsonl"
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["response"] for r in rows] == ["3", "Sure! 3"] and all(
        isinstance(r["score"], float) for r in rows
    )


def test_wrong_inputs_are_refused(runner, micro_base: Path, micro_rm: Path, tmp_path: Path) -> None:
    sft_file = REPO / "data/synthetic/sft.jsonl"
    cases = [
        (["--model", micro_base, "--data", sft_file], "field 'chosen' missing"),
        (
            ["--model", micro_rm, "--data", REPO / "data/synthetic/pairs.jsonl"],
            "a 'rm' artifact, but this needs",
        ),
        (["--model", micro_base, "--data", REPO / "data/synthetic/pairs.jsonl", "--margin", "-1"], "margin"),
    ]
    for args, message in cases:
        result = invoke(runner, "rm", *args, "--output", tmp_path / "out", "--max-steps", "1")
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert not (tmp_path / "out").exists()
    result = invoke(runner, "rm", "score", "--model", micro_base, "--data", sft_file)
    assert result.exit_code == 2 and "a 'pretrain' artifact, but this needs a 'rm' one" in result.stderr


def test_ranking_pairs_stay_together_in_batches() -> None:
    from align.stages.rm import GroupSampler

    groups = ["a", "a", "a", "b", "c", "c", "c", "d"]
    sampler = GroupSampler(groups, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(8))
    for group in "ac":
        positions = [order.index(i) for i, g in enumerate(groups) if g == group]
        assert positions == list(range(positions[0], positions[0] + 3))
    sampler.set_epoch(1)
    assert list(GroupSampler(groups, seed=0)) == order  # same seed and epoch, same order


def test_real_hh_rlhf_trains(runner, micro_base: Path, tmp_path: Path, shared_data: Path) -> None:
    result = invoke(
        runner,
        "rm",
        "--model",
        micro_base,
        "--output",
        tmp_path / "rm",
        "--full",
        "--data",
        shared_data / "hh-rlhf/harmless-base-test-slice-train-1312.jsonl.gz",
        "--eval-data",
        shared_data / "hh-rlhf/harmless-base-test-slice-dev-500.jsonl.gz",
        "--max-length",
        "128",
        "--max-steps",
        "20",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--set",
        "limit=400",
        "--set",
        "train.logging_steps=5",
        "--set",
        "train.save_steps=0",
    )
    assert result.exit_code == 0, result.output
    artifact = load_artifact(tmp_path / "rm")
    assert 0.0 <= artifact.metrics["eval_accuracy"] <= 1.0 and artifact.metrics["eval_pairs"] > 20
    assert artifact.manifest["data"]["dropped"]  # long multi-turn dialogues are counted, not silently cut
    assert "eval_gold_accuracy" not in artifact.metrics  # gold exists for synthetic tasks only


def test_reward_functions_are_validated() -> None:
    gold = load_reward_function("align.data.synthetic:gold_reward")
    assert gold(["Add 1 and 2."], ["3<|endoftext|>"]) == [1.0]
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        load_reward_function("align.data.synthetic:nope")
    with pytest.raises(ConfigError, match="cannot import module"):
        load_reward_function("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="expects module:function"):
        load_reward_function("just_a_name")
    bad = load_reward_function("tests.rewards:wrong_length")
    with pytest.raises(AlignError, match="returned list of length 1, expected 2"):
        bad(["a", "b"], ["c", "d"])
