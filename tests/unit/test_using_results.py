"""Using the results: eval extras (best-of-n, win rate, BLEU/ROUGE, perplexity), report, export, chat."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from align.artifacts import load_artifact, verify
from align.models import load_policy, load_tokenizer, resolve_model
from tests.conftest import REPO, invoke


def test_eval_records_best_of_n_and_overlap_figures(micro_evaluated: Path) -> None:
    sft = load_artifact(micro_evaluated / "sft").metrics
    assert 0 < sft["best_of_2_kl"] <= math.log(2)  # never more than the n-fold sampling it costs
    # the RM's favourite of 2 beats the 2 it was picked from (another sample set may not: sampling noise)
    assert sft["best_of_2_rm_score"] > sft["best_of_2_pool_rm_score"]
    assert 0 <= sft["bleu_sampled"] <= 100 and 0 <= sft["rougeL_sampled"] <= 1
    for policy in ("ppo", "dpo"):
        metrics = load_artifact(micro_evaluated / policy).metrics
        assert metrics["kl_to_reference"] > 0  # against the SFT parent, found from the lineage
        assert metrics["reference"].endswith("sft")


@pytest.mark.parametrize("n", [2, 4, 8])
def test_best_of_n_kl_matches_exact_enumeration(n: int) -> None:
    """The KL recorded for best-of-n against the KL computed from its definition: keep the best of n
    draws from a distribution over K answers with distinct scores, enumerate the kept answer's exact
    distribution, and take its KL to the sampling distribution. Equal in the limit of many answers."""
    from align.evaluation import best_of_n_kl

    answers = 20_000
    p = torch.full((answers,), 1.0 / answers, dtype=torch.float64)  # answers sorted by score
    below = torch.cumsum(p, 0)
    kept = below**n - (below - p) ** n  # P(the best of n draws is this answer)
    exact = float(torch.sum(kept * torch.log(kept / p)))
    assert exact == pytest.approx(best_of_n_kl(n), abs=2e-3)
    assert exact <= best_of_n_kl(n)  # a finite support only lowers it


def test_win_rate_counts_ties_half() -> None:
    from align.evaluation import win_rate

    figures = win_rate([1.0, 0.0, 0.5, 1.0], [0.0, 0.0, 1.0, 0.5])
    assert (figures["wins"], figures["ties"], figures["losses"]) == (2, 1, 1)
    assert figures["win_rate"] == pytest.approx(0.625)


def test_eval_compares_policies_by_win_rate(runner, micro_sft: Path, micro_ppo: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    result = invoke(
        runner,
        "eval",
        "--model",
        micro_sft,
        "--model",
        micro_sft,
        "--limit",
        "24",
        "--set",
        "record=false",
        "--json",
        out,
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    match = figures["win_rate"][f"{micro_sft} vs {micro_sft}"]
    assert figures["judge"] == "gold"
    assert match["ties"] == 24 and match["win_rate"] == 0.5  # same policy, same seed: every prompt a tie
    assert "win rate" in result.output


def test_bleu_and_rouge_reward_matching_references() -> None:
    from align.evaluation import overlap_summary

    references = ["1 3 4 5 8", "blue red blue red blue", "cat dog cat dog"]
    same = overlap_summary("x", [r + "<eos>" for r in references], references, "<eos>")
    other = overlap_summary("x", ["9 9 9", "green", "ox"], references, "<eos>")
    assert same["bleu_x"] == pytest.approx(100) and same["rougeL_x"] == pytest.approx(1)
    assert other["bleu_x"] < 1 and other["rougeL_x"] == 0


def test_perplexity_is_the_exponentiated_token_loss(micro_base: Path) -> None:
    from align.evaluation import perplexity

    source = resolve_model(str(micro_base))
    model, tokenizer = load_policy(source), load_tokenizer(source)
    with gzip.open(REPO / "data/synthetic/pretrain.jsonl.gz", "rt") as corpus_file:
        corpus = corpus_file.readlines()
    texts = [json.loads(line)["text"] for line in corpus[:2]]  # of different lengths: padding matters
    batched = perplexity(model, tokenizer, texts, batch_size=2)
    losses, tokens = 0.0, 0
    for text in texts:  # one text at a time, no padding: Hugging Face's own mean loss
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            losses += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        tokens += ids.shape[1] - 1
    assert batched == pytest.approx(math.exp(losses / tokens), rel=1e-4)
    assert batched < len(tokenizer)  # better than uniform after pretraining


def test_report_plots_every_stage(micro_evaluated: Path, tmp_path: Path, runner) -> None:
    result = invoke(runner, "report", micro_evaluated, "--output", tmp_path / "report")
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report/report.md").read_text()
    for plot in ("loss.png", "reward_model.png", "ppo.png", "frontier.png", "gold_vs_proxy.png"):
        assert f"]({plot})" in report
        assert (tmp_path / "report" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for policy in ("sft", "ppo", "dpo"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {policy} |"))
        assert row.count("|") == 9 and " - | - | - | - |" not in row  # measured figures, not blanks
        assert row.endswith(" prompts, T=0.7 (`" + row.split("`")[-2] + "`) |")  # which evaluation it quotes


def test_report_points_come_from_the_manifests(micro_evaluated: Path) -> None:
    from align.report import _best_of_n, discover

    artifacts = discover(micro_evaluated)
    assert {a.stage for a in artifacts.values()} >= {"pretrain", "sft", "rm", "ppo", "dpo"}
    sft = artifacts["sft"].metrics
    points = _best_of_n(sft, "rm_score")
    assert points == [(0.0, sft["rm_score_sampled"]), (sft["best_of_2_kl"], sft["best_of_2_rm_score"])]


def test_report_of_an_empty_directory_is_a_clear_error(runner, tmp_path: Path) -> None:
    result = invoke(runner, "report", tmp_path)
    assert result.exit_code == 2 and "no artifacts" in result.output


def test_export_merges_lora_and_loads_without_peft(runner, micro_dpo: Path, tmp_path: Path) -> None:
    assert load_artifact(micro_dpo).manifest["model_format"] == "lora"
    result = invoke(runner, "export", "--model", micro_dpo, "--output", tmp_path / "export")
    assert result.exit_code == 0, result.output
    exported = load_artifact(tmp_path / "export", expect_stage="export")
    assert verify(exported.path) == []
    ids = torch.tensor([[5, 17, 42, 99, 3, 7]])
    with torch.no_grad():
        adapter_logits = load_policy(resolve_model(str(micro_dpo)))(input_ids=ids).logits
    script = (
        "import sys, json, torch\n"
        "sys.modules['peft'] = None  # importing peft now fails\n"
        "from transformers import AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(exported.model_dir)!r})\n"
        f"print(json.dumps(model(input_ids=torch.tensor({ids.tolist()})).logits.tolist()))\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    plain_logits = torch.tensor(json.loads(output.stdout.strip().splitlines()[-1]))
    assert (plain_logits - adapter_logits).abs().max().item() <= 1e-4
    card = (exported.model_dir / "README.md").read_text()
    assert "| pretrain |" in card and "| sft |" in card and "| dpo |" in card
    assert "data/synthetic/pairs.jsonl" in card


def test_chat_keeps_a_bounded_history_and_filters_unsafe_replies(micro_sft: Path, micro_rm: Path) -> None:
    from align.conversation import REFUSAL, Conversation

    session = Conversation.load(str(micro_sft), history_turns=1)
    for message in ("Add 2 and 3.", "How many words: red blue", "Last word of: cat dog"):
        assert session.reply(message) != REFUSAL
    window = session.messages("next")
    assert len(session.history) == 6
    assert [m["content"] for m in window] == ["Last word of: cat dog", session.history[-1]["content"], "next"]
    strict = Conversation.load(str(micro_sft), safety_model=str(micro_rm), safety_threshold=float("inf"))
    assert strict.reply("Add 2 and 3.") == REFUSAL and strict.history == []


def test_chat_command_reads_turns_from_stdin(runner, micro_sft: Path) -> None:
    from align.cli import app

    result = runner.invoke(
        app, ["chat", "--model", str(micro_sft), "--temperature", "0"], input="Add 2 and 3.\n/reset\n/exit\n"
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("assistant: ") == 1 and "(history cleared)" in result.output


def test_bad_chat_and_export_inputs(runner, micro_rm: Path, tmp_path: Path) -> None:
    result = invoke(runner, "chat", "--model", micro_rm)
    assert result.exit_code == 2 and "rm" in result.output
    result = invoke(runner, "export", "--model", tmp_path / "missing", "--output", tmp_path / "out")
    assert result.exit_code == 2 and not (tmp_path / "out").exists()
