"""Decoding strategies on the micro SFT policy."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from align.decoding.generate import Decoding, generate_ids, sample_texts
from align.models import load_policy, load_tokenizer, resolve_model
from align.text.chat import prompt_text
from tests.conftest import invoke

PROMPTS = [
    [{"role": "user", "content": c}]
    for c in ("Add 3 and 4.", "Reverse the words: cat dog", "Repeat owl 3 times")
]


def policy_and_tokenizer(path: Path):
    source = resolve_model(str(path))
    return load_policy(source).eval(), load_tokenizer(source)


def test_greedy_is_deterministic_and_top_k_one_equals_greedy(micro_sft: Path) -> None:
    model, tokenizer = policy_and_tokenizer(micro_sft)
    rendered = [prompt_text(tokenizer, p) for p in PROMPTS]
    greedy = Decoding(temperature=None, max_new_tokens=12)
    first = sample_texts(model, tokenizer, rendered, greedy, seed=0)
    assert first == sample_texts(model, tokenizer, rendered, greedy, seed=123)
    top1 = Decoding(temperature=1.0, top_k=1, max_new_tokens=12)
    assert sample_texts(model, tokenizer, rendered, top1, seed=7) == first


def test_beam_search_returns_the_highest_scoring_beam(micro_sft: Path) -> None:
    model, tokenizer = policy_and_tokenizer(micro_sft)
    prompt = tokenizer.apply_chat_template(
        PROMPTS[0], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    config = Decoding(temperature=None, num_beams=4, max_new_tokens=6).generation_config(tokenizer)
    config.num_return_sequences, config.output_scores, config.return_dict_in_generate = 4, True, True
    out = model.generate(**prompt, generation_config=config)
    assert torch.argmax(out.sequences_scores).item() == 0  # beams come best first
    ours = generate_ids(
        model,
        tokenizer,
        [tokenizer.apply_chat_template(PROMPTS[0], add_generation_prompt=True, tokenize=False)],
        Decoding(temperature=None, num_beams=4, max_new_tokens=6),
    )[0]
    best = out.sequences[0, prompt["input_ids"].shape[1] :].tolist()
    assert ours == best[: len(ours)]


def test_repetition_penalty_reduces_repeats(micro_base: Path) -> None:
    model, tokenizer = policy_and_tokenizer(micro_base)  # a base model rambles on, repeating itself
    prompts = [[{"role": "user", "content": f"Repeat {w} 3 times"}] for w in ("owl", "cat", "sky", "tea")]

    def repeats(penalty: float) -> int:
        ids = generate_ids(
            model,
            tokenizer,
            [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts],
            Decoding(temperature=None, repetition_penalty=penalty, max_new_tokens=32),
        )
        return sum(len(row) - len(set(row)) for row in ids)

    assert repeats(3.0) < repeats(1.0)


def test_generate_command(runner, micro_sft: Path) -> None:
    result = invoke(
        runner,
        "generate",
        "--model",
        micro_sft,
        "--prompt",
        "Add 3 and 4.",
        "--prompt",
        "Hi",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == ["Add 3 and 4.", "Hi"] and all(
        isinstance(r["response"], str) for r in rows
    )
    assert invoke(runner, "generate", "--model", micro_sft).exit_code == 2


def test_loaded_models_run_the_fused_gelu_with_unchanged_logits(micro_base: Path) -> None:
    """`load_policy` swaps GPT-2's seven-op GELU for torch's fused one: same logits, config untouched."""
    from transformers import AutoModelForCausalLM
    from transformers.activations import GELUTanh, NewGELUActivation

    source = resolve_model(str(micro_base))
    fused = load_policy(source).eval()
    plain = AutoModelForCausalLM.from_pretrained(source.artifact.model_dir).eval()
    kinds = {type(m) for m in fused.modules()}
    assert GELUTanh in kinds and NewGELUActivation not in kinds
    assert NewGELUActivation in {type(m) for m in plain.modules()}
    assert fused.config.activation_function == "gelu_new"
    ids = torch.randint(5, fused.config.vocab_size, (4, 20), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fused(ids).logits, plain(ids).logits, atol=1e-5, rtol=0)
