"""Runs the tiny offline pipeline stage by stage (what `make demo` does) and times each stage.

    python bench/demo_cpu.py [--runs runs/tiny]

Prints the artifact paths, a table of every policy on the held-out prompts (gold score sampled and
greedy, RM score, KL to the SFT policy; best-of-4 of the SFT policy as the no-training baseline), the
path of the report with its plots (`align report`), and one JSON line: {"bench": "demo_cpu", "machine", "seconds":
{stage: s}, "total_seconds", "budget_seconds", "ratio": total / budget, "figures"}. The budget is the
10-minute target for the whole pipeline.
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
POLICIES = ("pretrain", "sft", "ppo", "dpo")


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
    for name, extra in (
        ("pretrain", []),
        ("sft", ["--model", runs / "pretrain"]),
        ("rm", ["--model", runs / "sft"]),
        ("ppo", ["--model", runs / "sft", "--reward-model", runs / "rm"]),
        ("dpo", ["--model", runs / "sft"]),
    ):
        stage(
            name,
            [name, "--recipe", f"recipes/tiny/{name}.yaml", *map(str, extra), "--output", str(runs / name)],
            seconds,
        )
    figures = {}
    for policy in POLICIES:
        report = runs / f"eval-{policy}.json"
        stage(
            f"eval_{policy}",
            [
                "eval",
                "--model",
                str(runs / policy),
                "--reward-model",
                str(runs / "rm"),
                "--limit",
                str(args.eval_limit),
                "--json",
                str(report),
                *(["--best-of-n", "4"] if policy == "sft" else []),
            ],
            seconds,
        )
        figures[policy] = {
            k: round(v, 4)
            for k, v in json.loads(report.read_text()).items()
            if k in ("gold_sampled", "gold_greedy", "rm_score_sampled", "kl_to_reference")
            or k.startswith("best_of_")
        }
    print(
        f"\n{'policy':10s} {'gold (T=0.7)':>12s} {'gold greedy':>12s} {'RM score':>9s} {'KL to SFT':>10s}  artifact"
    )
    for policy, f in figures.items():
        kl = f"{f['kl_to_reference']:.2f}" if "kl_to_reference" in f else "-"
        print(
            f"{policy:10s} {f['gold_sampled']:12.3f} {f['gold_greedy']:12.3f} {f['rm_score_sampled']:9.3f} "
            f"{kl:>10s}  {runs / policy}"
        )
    best = figures["sft"]
    print(
        f"{'best-of-4':10s} {best['best_of_4_gold']:12.3f} {'-':>12s} {best['best_of_4_rm_score']:9.3f} "
        f"{best['best_of_4_kl']:10.2f}  (4 samples of the SFT policy, the RM's favourite kept)"
    )
    print(f"reward model: {runs / 'rm'}   (align show {runs / 'rm'})")
    start = time.perf_counter()
    report_md = subprocess.run([*ALIGN, "report", str(runs)], check=True, capture_output=True, text=True)
    seconds["report"] = round(time.perf_counter() - start, 1)
    total = round(sum(seconds.values()), 1)
    print(f"report: {report_md.stdout.strip()}  (plots beside it)")
    print(
        json.dumps(
            {
                "bench": "demo_cpu",
                "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads {_torch_threads()}",
                "seconds": seconds,
                "total_seconds": total,
                "budget_seconds": BUDGET_SECONDS,
                "ratio": round(total / BUDGET_SECONDS, 3),
                "figures": figures,
            }
        )
    )


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
