"""Runs the tiny offline pipeline stage by stage (what `make demo` does) and times each stage.

    python bench/demo_cpu.py [--runs runs/tiny]

Prints the artifact paths, a gold-score table of every policy on the held-out prompts, and one JSON
line: {"bench": "demo_cpu", "machine": ..., "seconds": {stage: s}, "total_seconds", "budget_seconds",
"ratio": total / budget, "gold": {...}}. The budget is the 10-minute target for the whole pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BUDGET_SECONDS = 600
ALIGN = [sys.executable, "-m", "align.cli"]


def stage(name: str, args: list[str], seconds: dict[str, float]) -> None:
    print(f"== {name}: align {' '.join(args)}", flush=True)
    start = time.perf_counter()
    subprocess.run([*ALIGN, *args], check=True)
    seconds[name] = round(time.perf_counter() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs/tiny", help="directory for the artifacts")
    parser.add_argument("--eval-limit", type=int, default=1200, help="held-out prompts per evaluation")
    args = parser.parse_args()
    runs = Path(args.runs)
    seconds: dict[str, float] = {}
    out = ["--output"]
    stage(
        "pretrain",
        ["pretrain", "--recipe", "recipes/tiny/pretrain.yaml", *out, str(runs / "pretrain")],
        seconds,
    )
    stage(
        "sft",
        [
            "sft",
            "--recipe",
            "recipes/tiny/sft.yaml",
            "--model",
            str(runs / "pretrain"),
            *out,
            str(runs / "sft"),
        ],
        seconds,
    )
    gold = {}
    for policy in ("pretrain", "sft"):
        report = runs / f"eval-{policy}.json"
        stage(
            f"eval_{policy}",
            ["eval", "--model", str(runs / policy), "--limit", str(args.eval_limit), "--json", str(report)],
            seconds,
        )
        figures = json.loads(report.read_text())
        gold[policy] = {
            "sampled": round(figures["gold_sampled"], 4),
            "greedy": round(figures["gold_greedy"], 4),
            "by_family_sampled": figures["gold_sampled_by_family"],
        }
    total = round(sum(seconds.values()), 1)
    print("\nartifacts:")
    for policy in ("pretrain", "sft"):
        print(
            f"  {policy:9s} {runs / policy}   gold sampled {gold[policy]['sampled']:.3f}  "
            f"greedy {gold[policy]['greedy']:.3f}"
        )
    print(
        json.dumps(
            {
                "bench": "demo_cpu",
                "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads {_torch_threads()}",
                "seconds": seconds,
                "total_seconds": total,
                "budget_seconds": BUDGET_SECONDS,
                "ratio": round(total / BUDGET_SECONDS, 3),
                "gold": gold,
            }
        )
    )


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
