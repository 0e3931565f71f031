"""Rollout throughput: our LeanEngine against plain `model.generate`, same model, prompts and length.

    python bench/rollout.py [--device cpu|cuda] [--size tiny|micro|gpt2|gpt2-medium] [--model ART]
                            [--batch 64] [--new-tokens 64] [--lora]

By default a random-initialised GPT-2 of the tiny recipe's shape (4x192, 2.0M parameters; `--size micro`
is the 4x128, 0.94M one); `--model` takes a policy artifact or HF model instead. With `--lora` the policy
carries a LoRA adapter as in PPO (generate pays the adapter's extra matmuls per token; LeanEngine
merges it for the rollout). Both engines sample at temperature 1 with an EOS outside the vocabulary, so
every row decodes every step and the token counts are equal. Prints one JSON line: new tokens per
second of each engine (median of the repeats after a warm-up round) and the ratio. That both sample
the same distribution is a test (tests/unit/test_ppo.py), not a timing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from harness import SIZES, add_device, device_of, emit, machine, random_gpt2


def build_model(args: argparse.Namespace, device: torch.device):
    if args.model:
        from align.models import load_policy, resolve_model

        model = load_policy(resolve_model(args.model))
    else:
        model = random_gpt2(args.size)
    parameters = sum(p.numel() for p in model.parameters())
    if args.lora:
        from peft import get_peft_model

        from align.config import LoraSettings
        from align.models import lora_config

        model = get_peft_model(model, lora_config(LoraSettings(r=16, alpha=32), model))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return model.to(device=device, dtype=dtype).eval(), parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device(parser)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--model", help="policy artifact or HF model instead of a random one")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lora", action="store_true")
    args = parser.parse_args()
    from align.decoding.engines import GenerateEngine, LeanEngine

    device = device_of(args)
    model, parameters = build_model(args, device)
    ids = _NeverStop()
    torch.manual_seed(0)
    queries = torch.randint(5, model.config.vocab_size, (args.batch, args.prompt_tokens), device=device)
    mask = torch.ones_like(queries)
    engines = {
        "generate": GenerateEngine(ids, 1.0, args.new_tokens),
        "lean": LeanEngine(ids, 1.0, args.new_tokens),
    }
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.repeats + 1):  # the first round warms up
        for name, engine in engines.items():
            _sync(device)
            start = time.perf_counter()
            engine.sample(model, queries, mask, torch.rand(queries.shape[0], args.new_tokens, device=device))
            _sync(device)
            seconds[name].append(time.perf_counter() - start)
    tokens = args.batch * args.new_tokens
    rate = {name: round(tokens / statistics.median(s[1:]), 1) for name, s in seconds.items()}
    emit(
        {
            "bench": "rollout",
            "device": device.type,
            "machine": machine(device),
            "model": args.model or f"random {args.size} GPT-2",
            "parameters": parameters,  # without the adapter
            "lora": args.lora,
            "batch": args.batch,
            "new_tokens": args.new_tokens,
            "ours": rate["lean"],
            "baseline": rate["generate"],
            "unit": "new tokens/s",
            "ratio": round(rate["lean"] / rate["generate"], 3),
        }
    )


class _NeverStop:
    """Token ids for the engines with an EOS outside the vocabulary: both decode every step."""

    pad_token_id = 0
    eos_token_id = 10**9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
