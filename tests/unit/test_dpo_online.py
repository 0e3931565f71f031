"""`align dpo`, `align grpo` and `align rloo` on micro models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from align.artifacts import load_artifact
from align.config import PairSampling
from align.models import load_policy, load_tokenizer, resolve_model
from align.stages.pairs import label_pairs
from tests.conftest import REPO, invoke, sets, train_rm_briefly

PAIRS = REPO / "data/synthetic/pairs.jsonl"
PROMPTS = REPO / "data/synthetic/ppo.jsonl"


def logged(path: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in (path / "logs/metrics.jsonl").read_text().splitlines()]
    return [row[key] for row in rows if key in row]


def test_dpo_lora_learns_the_pairs_without_a_reference_copy(
    runner, micro_sft: Path, tmp_path: Path, monkeypatch
) -> None:
    from align.stages import dpo

    references = []

    class Spy(dpo.DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            references.append(self.ref_model)

    monkeypatch.setattr(dpo, "DPOTrainer", Spy)
    result = invoke(
        runner,
        "dpo",
        "--recipe",
        REPO / "recipes/tiny/dpo.yaml",
        "--model",
        micro_sft,
        "--output",
        tmp_path / "dpo",
        "--max-steps",
        "60",
        "--lr",
        "2e-3",
        "--set",
        "limit=1200",
        "--set",
        "train.logging_steps=10",
        "--set",
        "train.save_steps=0",
    )
    assert result.exit_code == 0, result.output
    assert references == [None]  # LoRA: the reference is the adapter-disabled policy, not a copy
    artifact = load_artifact(tmp_path / "dpo", expect_stage="dpo")
    losses = logged(artifact.path, "loss")
    assert losses[-1] < losses[0]
    accuracies = logged(artifact.path, "rewards/accuracies")
    assert accuracies[0] == 0.0  # step 1: the policy is the reference, every implicit reward is 0
    assert sum(accuracies[1:]) / len(accuracies[1:]) > 0.55, accuracies
    assert artifact.metrics["eval_rewards/accuracies"] > 0.55
    assert {p["stage"] for p in artifact.manifest["parents"]} == {"sft"}
    load_policy(resolve_model(str(artifact.path)))  # SFT merged, then the DPO adapter


def test_dpo_full_fine_tuning_and_ipo(runner, micro_sft: Path, tmp_path: Path) -> None:
    result = invoke(
        runner,
        "dpo",
        "--model",
        micro_sft,
        "--data",
        PAIRS,
        "--output",
        tmp_path / "ipo",
        "--full",
        "--loss-type",
        "ipo",
        "--max-steps",
        "5",
        "--set",
        "limit=200",
        "--set",
        "train.save_steps=0",
        "--set",
        "max_length=96",
    )
    assert result.exit_code == 0, result.output
    assert load_artifact(tmp_path / "ipo").manifest["model_format"] == "full"


def test_dpo_learns_real_hh_rlhf_pairs(runner, micro_base: Path, tmp_path: Path, shared_data: Path) -> None:
    """HH-RLHF transcripts are split into prompt and answers, and DPO learns them: its loss starts at
    log 2 (policy = reference, every margin 0) and falls far below it on the 32 real pairs it trains on;
    the held-out slice is scored too."""
    pairs = shared_data / "hh-rlhf/harmless-base-test-slice-train-1312.jsonl.gz"
    result = invoke(
        runner, "dpo", "--model", micro_base, "--output", tmp_path / "dpo", "--data", pairs,
        "--eval-data", shared_data / "hh-rlhf/harmless-base-test-slice-dev-500.jsonl.gz", "--max-length", "128", "--max-steps", "30", "--batch-size", "8",
        "--lr", "5e-3", "--set", "limit=32", "--set", "train.save_steps=0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = load_artifact(tmp_path / "dpo").metrics
    assert metrics["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics["last_loss"] < 0.1, metrics  # a margin no float noise crosses: it learned the pairs
    assert 0.0 <= metrics["eval_rewards/accuracies"] <= 1.0 and metrics["eval_loss"] > 0


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_critic_free_stages_run_with_a_reward_function(
    runner, micro_sft: Path, tmp_path: Path, stage: str
) -> None:
    result = invoke(
        runner,
        stage,
        "--recipe",
        REPO / f"recipes/tiny/{stage}.yaml",
        "--model",
        micro_sft,
        "--output",
        tmp_path / stage,
        "--max-steps",
        "3",
        "--batch-size",
        "8",
        "--set",
        "train.logging_steps=1",
        "--set",
        "train.save_steps=0",
        "--set",
        "max_new_tokens=8",
    )
    assert result.exit_code == 0, result.output
    artifact = load_artifact(tmp_path / stage, expect_stage=stage)
    assert artifact.metrics["steps"] == 3 and "last_reward" in artifact.metrics
    assert artifact.manifest["reward"] == "align.data.synthetic:gold_reward"


def test_trl_reward_adapter_keeps_eos_and_renders_prompts(micro_sft: Path) -> None:
    from align.rewards import trl_reward

    tokenizer = load_tokenizer(resolve_model(str(micro_sft)))
    seen = {}

    def reward(prompts, responses):
        seen["prompts"], seen["responses"] = prompts, responses
        return [0.0] * len(prompts)

    ids = tokenizer("12", add_special_tokens=False)["input_ids"]
    trl_reward(reward, tokenizer)(
        prompts=[[{"role": "user", "content": "Add 5 and 7."}]] * 2,
        completions=[None, None],
        completion_ids=[ids + [tokenizer.eos_token_id], ids],
    )
    assert seen["prompts"][0].endswith("<|assistant|>\n") and "Add 5 and 7." in seen["prompts"][0]
    assert seen["responses"] == ["12<|endoftext|>", "12"]


def test_online_stages_validate_their_inputs(runner, micro_sft: Path, tmp_path: Path) -> None:
    for args, message in (
        (
            ["--reward", "align.data.synthetic:gold_reward", "--num-generations", "3"],
            "multiple of num_generations",
        ),
        ([], "give exactly one of --reward-model"),
        (["--reward", "align.data.synthetic:missing"], "has no attribute 'missing'"),
    ):
        result = invoke(
            runner,
            "grpo",
            "--model",
            micro_sft,
            "--prompts",
            PROMPTS,
            "--output",
            tmp_path / "g",
            "--batch-size",
            "8",
            *args,
        )
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert not (tmp_path / "g").exists()


def test_pairs_from_the_policy_feed_the_reward_model(runner, micro_sft: Path, tmp_path: Path) -> None:
    result = invoke(
        runner,
        "pairs",
        "--model",
        micro_sft,
        "--prompts",
        PROMPTS,
        "--reward",
        "tests.rewards:longer",
        "--limit",
        "32",
        "--output",
        tmp_path / "pairs",
        *sets("sampling.max_new_tokens=16"),
    )
    assert result.exit_code == 0, result.output
    artifact = load_artifact(tmp_path / "pairs", expect_stage="pairs")
    rows = [json.loads(line) for line in (artifact.path / "data/pairs.jsonl").read_text().splitlines()]
    assert artifact.metrics["pairs"] == len(rows) > 0
    assert artifact.metrics["pairs"] + artifact.metrics["ties_skipped"] == 32
    for row in rows:  # best vs worst of 4 samples, as the judge scored them (no label noise asked)
        assert row["chosen_score"] > row["rejected_score"]
        assert row["chosen_score"] == min(len(row["chosen"]), 40) / 40
    assert artifact.parent("sft") is not None  # the lineage names the policy that answered
    train_rm_briefly(runner, micro_sft, tmp_path / "pairs", tmp_path / "rm")


@pytest.mark.parametrize("mode", ["best_worst", "all"])
def test_label_pairs_orders_distinct_answers_by_the_judge(mode: str) -> None:
    responses = ["a<e>", "b<e>", "a<e>", "c", "x<e>", "x<e>", "x<e>", "x<e>"]  # 2 prompts x 4 samples
    scores = [1.0, 0.0, 1.0, 0.5, 0.3, 0.3, 0.3, 0.3]
    rows, tied, flipped = label_pairs(["p", "q"], responses, scores, PairSampling(pairs=mode), 0, "<e>")
    assert (tied, flipped) == (1, 0)  # prompt q: one distinct answer
    pairs = [(r["chosen"], r["rejected"], r["chosen_score"], r["rejected_score"]) for r in rows]
    expected = [("a", "b", 1.0, 0.0)]
    if mode == "all":  # every two distinct answers, the repeated "a" counted once
        expected = [("a", "c", 1.0, 0.5), ("a", "b", 1.0, 0.0), ("c", "b", 0.5, 0.0)]
    assert pairs == expected
    assert {r["group"] for r in rows} == {"prompt-0"}


def test_label_noise_flips_that_share_of_labels() -> None:
    responses = [r for i in range(2000) for r in (f"good{i}", f"bad{i}")]
    scores = [1.0, 0.0] * 2000
    sampling = PairSampling(n=2, label_noise=0.2)
    rows, _, flipped = label_pairs(list(range(2000)), responses, scores, sampling, 0, "<e>")
    reversed_rows = sum(r["chosen_score"] < r["rejected_score"] for r in rows)
    assert reversed_rows == flipped and 0.17 < flipped / 2000 < 0.23


def test_iterative_dpo_moves_the_policy_towards_the_judge(runner, micro_sft: Path, tmp_path: Path) -> None:
    result = invoke(
        runner,
        "dpo",
        "--model",
        micro_sft,
        "--rounds",
        "3",
        "--prompts",
        PROMPTS,
        "--reward",
        "tests.rewards:longer",
        "--output",
        tmp_path / "dpo",
        "--max-steps",
        "8",
        "--lr",
        "3e-3",
        "--beta",
        "0.1",
        *sets(
            "sampling.prompts_per_round=48",
            "sampling.max_new_tokens=16",
            "eval_fraction=0",
            "train.batch_size=8",
            "train.save_steps=0",
        ),
    )
    assert result.exit_code == 0, result.output
    artifact = load_artifact(tmp_path / "dpo", expect_stage="dpo")
    rounds = artifact.metrics["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[-1]["sample_score_mean"] > rounds[0]["sample_score_mean"] + 0.05, rounds
    assert artifact.manifest["model_format"] == "full"
    assert load_policy(resolve_model(str(tmp_path / "dpo"))).config.model_type == "gpt2"
