"""The offline default end to end on a micro model: pretrain -> sft -> eval through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from align.artifacts import load_artifact, verify
from tests.conftest import REPO, invoke


def test_help_lists_stages_and_documents_options(runner) -> None:
    top = invoke(runner, "--help").output
    for command in ("pretrain", "sft", "eval", "show", "verify", "data"):
        assert command in top
    sft_help = invoke(runner, "sft", "--help").output
    for option in (
        "--recipe",
        "--model",
        "--data",
        "--output",
        "--resume",
        "--set",
        "--lr",
        "--max-steps",
        "--lora",
        "--full",
        "--packing",
        "--save-merged",
        "--trust-remote-code",
        "--max-length",
    ):
        assert option in sft_help


def test_pretrain_artifact_is_a_plain_hf_model(micro_base: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    artifact = load_artifact(micro_base, expect_stage="pretrain")
    model = AutoModelForCausalLM.from_pretrained(artifact.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(artifact.model_dir)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.chat_template
    assert tokenizer.tokenize("123") == ["1", "2", "3"]  # digits are split
    metrics = artifact.metrics
    assert metrics["perplexity"] < metrics["uniform_perplexity"] / 10
    assert metrics["last_loss"] < metrics["first_loss"]


def test_sft_then_eval_raises_the_gold_score(
    runner, micro_base: Path, micro_sft: Path, tmp_path: Path
) -> None:
    scores = {}
    for name, path in (("base", micro_base), ("sft", micro_sft)):
        report = tmp_path / f"{name}.json"
        result = invoke(runner, "eval", "--model", path, "--limit", "120", "--json", report)
        assert result.exit_code == 0, result.output
        scores[name] = json.loads(report.read_text())
        assert load_artifact(path).metrics["gold_sampled"] == scores[name]["gold_sampled"]
    assert scores["sft"]["eos_rate_greedy"] > 0.9  # SFT taught the model to stop
    assert scores["sft"]["gold_greedy"] > scores["base"]["gold_greedy"]
    assert verify(micro_sft) == []  # eval adds metrics to the manifest, files stay intact
    show = invoke(runner, "show", micro_sft)
    assert show.exit_code == 0 and "pretrain" in show.output and "gold_sampled" in show.output


def outcomes(result) -> list[str]:
    return [line.split("\t")[2] for line in result.stdout.splitlines() if line.count("\t") == 2]


def test_pipeline_chains_stages_and_reruns_only_what_changed(runner, tmp_path: Path) -> None:
    recipe = tmp_path / "pipeline.yaml"
    micro = {
        "pretrain": {
            "train.max_steps": 20,
            "block_size": 64,
            "tokenizer.vocab_size": 400,
            "arch.n_layer": 1,
            "arch.n_embd": 32,
            "arch.n_head": 2,
            "arch.n_positions": 128,
        },
        "sft": {"train.max_steps": 10, "limit": 300, "train.save_steps": 0},
        "rm": {"train.max_steps": 10, "limit": 300, "train.save_steps": 0, "train.epochs": 1},
        "ppo": {
            "train.max_steps": 2,
            "ppo.rollouts": 8,
            "ppo.mini_batch_size": 8,
            "ppo.micro_batch_size": 8,
            "ppo.max_new_tokens": 6,
            "train.save_steps": 0,
        },
    }
    stages = {s: str(REPO / f"recipes/tiny/{s}.yaml") for s in micro}
    import yaml

    recipe.write_text(yaml.safe_dump({"run": str(tmp_path / "run"), "stages": stages, "set": micro}))
    first = invoke(runner, "pipeline", "--recipe", recipe)
    assert first.exit_code == 0, first.output
    assert outcomes(first) == ["ran"] * 4
    ppo = load_artifact(tmp_path / "run/ppo")
    assert ppo.parent("sft").path.resolve() == (tmp_path / "run/sft").resolve()
    assert ppo.parent("rm").path.resolve() == (tmp_path / "run/rm").resolve()

    again = invoke(runner, "pipeline", "--recipe", recipe)
    assert outcomes(again) == ["skipped"] * 4

    micro["ppo"]["ppo.kl_coef"] = 0.3
    recipe.write_text(yaml.safe_dump({"run": str(tmp_path / "run"), "stages": stages, "set": micro}))
    changed = invoke(runner, "pipeline", "--recipe", recipe)
    assert outcomes(changed) == ["skipped"] * 3 + ["ran"]
    assert load_artifact(tmp_path / "run/ppo").manifest["config"]["ppo"]["kl_coef"] == 0.3
