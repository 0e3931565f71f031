"""SFT training throughput: padded batches (plain HF collation) against packed, padding-free batches.

    python bench/train_throughput.py [--model runs/tiny/pretrain] [--steps 40]

Runs `align sft` (TRL's SFTTrainer underneath) for the same number of steps on the synthetic
demonstrations, once with `packing: false` (each batch padded to its longest row) and once with
`packing: true` (rows packed into full blocks, no padding), and reports real (non-padding) training
tokens per second from the logged token counts and the trainer's runtime. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path


def run(model: str, steps: int, packing: bool, output: Path) -> dict[str, float]:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "align.cli",
            "sft",
            "--recipe",
            "recipes/tiny/sft.yaml",
            "--model",
            model,
            "--output",
            str(output),
            "--max-steps",
            str(steps),
            "--set",
            f"packing={str(packing).lower()}",
            "--set",
            "train.save_steps=0",
            "--set",
            "eval_fraction=0",
            "--set",
            "train.logging_steps=1",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows = [json.loads(line) for line in (output / "logs/metrics.jsonl").read_text().splitlines()]
    final = next(r for r in rows if "train_runtime" in r)
    tokens = max(r["num_tokens"] for r in rows if "num_tokens" in r)
    return {
        "tokens": tokens,
        "seconds": round(final["train_runtime"], 2),
        "tokens_per_second": round(tokens / final["train_runtime"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="runs/tiny/pretrain")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        padded = run(args.model, args.steps, False, Path(tmp) / "padded")
        packed = run(args.model, args.steps, True, Path(tmp) / "packed")
    import torch

    print(
        json.dumps(
            {
                "bench": "train_throughput",
                "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}",
                "model": args.model,
                "steps": args.steps,
                "padded": padded,
                "packed": packed,
                "ratio_packed_vs_padded": round(packed["tokens_per_second"] / padded["tokens_per_second"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
