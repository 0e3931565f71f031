"""SFT training throughput: padded batches (plain HF collation) against packed, padding-free batches.

    python bench/train_throughput.py [--device cpu|cuda] [--model runs/tiny/pretrain | --size gpt2-medium]
                                     [--steps 40] [--set train.batch_size=32 ...]

Runs `align sft` (TRL's SFTTrainer underneath) for the same number of steps on the synthetic
demonstrations, once with `packing: false` (each batch padded to its longest row) and once with
`packing: true` (rows packed into full blocks, no padding), and reports real (non-padding) training
tokens per second from the logged token counts and the trainer's runtime. `--size` trains a random
GPT-2 of that shape instead (no hub here). On CUDA it also reports model FLOPs utilisation,
MFU = tokens/s x (6 N + 12 L d T) / 989 TFLOP/s (N parameters, L layers, width d, T tokens per row:
the dense matmuls plus attention, forward and backward, against an H100 SXM's dense bf16 peak).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from harness import (
    H100_BF16_DENSE_FLOPS,
    SIZES,
    add_device,
    device_of,
    emit,
    machine,
    random_model_dir,
    run_stage,
)


def run(
    args: argparse.Namespace, model: str, packing: bool, output: Path, device: torch.device
) -> dict[str, float]:
    overrides = [item for pair in args.set for item in ("--set", pair)]
    rows = run_stage(
        device,
        "sft",
        output,
        *("--recipe", "recipes/tiny/sft.yaml", "--model", model, "--max-steps", str(args.steps)),
        *("--set", f"packing={str(packing).lower()}", "--set", "train.save_steps=0"),
        *("--set", "eval_fraction=0", "--set", "train.logging_steps=1", *overrides),
    )
    final = next(r for r in rows if "train_runtime" in r)
    tokens = max(r["num_tokens"] for r in rows if "num_tokens" in r)
    return {
        "max_length": json.loads((output / "manifest.json").read_text())["config"]["max_length"],
        "tokens": tokens,
        "seconds": round(final["train_runtime"], 2),
        "tokens_per_second": round(tokens / final["train_runtime"], 1),
    }


def mfu(tokens_per_second: float, config: dict[str, int], parameters: int, row_tokens: int) -> float:
    flops_per_token = 6 * parameters + 12 * config["n_layer"] * config["n_embd"] * row_tokens
    return tokens_per_second * flops_per_token / H100_BF16_DENSE_FLOPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device(parser)
    parser.add_argument("--model", default="runs/tiny/pretrain")
    parser.add_argument(
        "--size", choices=sorted(SIZES), help="a random GPT-2 of this shape instead of --model"
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--set", action="append", default=[], help="extra `align sft --set` overrides")
    args = parser.parse_args()
    device = device_of(args)
    with tempfile.TemporaryDirectory() as tmp:
        model = str(random_model_dir(args.size, Path(tmp))) if args.size else args.model
        padded = run(args, model, False, Path(tmp) / "padded", device)
        packed = run(args, model, True, Path(tmp) / "packed", device)
        parameters = _parameters(model)
    record = {
        "bench": "train_throughput",
        "device": device.type,
        "machine": machine(device),
        "model": f"random {args.size} GPT-2" if args.size else args.model,
        "parameters": parameters,
        "steps": args.steps,
        "ours": packed,
        "baseline": padded,
        "unit": "real (non-padding) training tokens/s",
        "ratio": round(packed["tokens_per_second"] / padded["tokens_per_second"], 3),
    }
    if device.type == "cuda" and args.size:
        record["mfu"] = round(
            mfu(packed["tokens_per_second"], SIZES[args.size], parameters, packed["max_length"]), 4
        )
        record["mfu_formula"] = "tokens/s * (6 N + 12 L d T) / 989e12, T = max_length"
    emit(record)


def _parameters(model: str) -> int:
    from align.models import load_policy, resolve_model

    return sum(p.numel() for p in load_policy(resolve_model(model)).parameters())


if __name__ == "__main__":
    main()
