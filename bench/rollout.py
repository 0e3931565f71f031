"""Rollout throughput: our LeanSampler against plain `model.generate`, same model, prompts and seed.

    python bench/rollout.py [--model runs/tiny/sft] [--batch 64] [--new-tokens 32] [--repeats 5]

Without --model it builds a random-initialised GPT-2 of the tiny recipe's shape (runs anywhere). With
`--lora` the policy carries a LoRA adapter as in PPO (generate then pays the adapter's extra matmuls
per token; LeanSampler merges it for the rollout). Prints one JSON line: new tokens per second of
each engine (median of the repeats), the ratio, whether both drew identical tokens, and the machine.
Rows that stop early keep decoding as padding in both engines, so the token count is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch


def build_model(name: str | None, lora: bool, device: torch.device):
    from transformers import GPT2Config, GPT2LMHeadModel

    from align.models import load_policy, load_tokenizer, resolve_model

    if name:
        source = resolve_model(name)
        model, tokenizer = load_policy(source), load_tokenizer(source)
    else:
        tokenizer = None
        model = GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_layer=4, n_embd=192, n_head=4, n_positions=256))
    if lora:
        from peft import get_peft_model

        from align.config import LoraSettings
        from align.models import lora_config

        model = get_peft_model(model, lora_config(LoraSettings(r=16, alpha=32), model))
    return model.to(device).eval(), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="policy artifact or HF model (default: random tiny GPT-2)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lora", action="store_true")
    args = parser.parse_args()
    from align.stages.ppo.rollout import HFSampler, LeanSampler

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = build_model(args.model, args.lora, device)
    vocab = model.config.vocab_size
    ids = _NeverStop(tokenizer.pad_token_id if tokenizer else 0)
    torch.manual_seed(0)
    queries = torch.randint(5, vocab, (args.batch, args.prompt_tokens), device=device)
    mask = torch.ones_like(queries)
    engines = {
        "generate": HFSampler(ids, 1.0, args.new_tokens),
        "lean": LeanSampler(ids, 1.0, args.new_tokens),
    }
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    outputs = {}
    for _ in range(args.repeats + 1):  # the first round warms up
        for name, engine in engines.items():
            torch.manual_seed(1)
            _sync(device)
            start = time.perf_counter()
            outputs[name] = engine.sample(model, queries, mask)
            _sync(device)
            seconds[name].append(time.perf_counter() - start)
    tokens = args.batch * args.new_tokens
    rate = {name: round(tokens / statistics.median(s[1:]), 1) for name, s in seconds.items()}
    print(
        json.dumps(
            {
                "bench": "rollout",
                "machine": _machine(device),
                "model": args.model or "random tiny GPT-2 (4x192)",
                "lora": args.lora,
                "batch": args.batch,
                "new_tokens": args.new_tokens,
                "new_tokens_per_second": rate,
                "ratio_lean_vs_generate": round(rate["lean"] / rate["generate"], 3),
                "identical_tokens": bool(torch.equal(outputs["lean"], outputs["generate"])),
            }
        )
    )


class _NeverStop:
    """Token ids for the engines with an EOS outside the vocabulary: both decode every step."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.eos_token_id = 10**9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.machine()} {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}"


if __name__ == "__main__":
    main()
