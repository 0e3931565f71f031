"""`make demo`: the tiny offline pipeline through the product's own commands, timed, with a closing table.

    python bench/demo_cpu.py [--runs runs/tiny]

Runs `align pipeline --recipe recipes/tiny/pipeline.yaml` (pretrain, sft, rm, ppo, dpo; stages whose
inputs are unchanged are reused), then `align eval` of every policy on the held-out prompts (best-of-4
of the SFT policy beside it, the no-training baseline), then `align report`. The closing table gives
each policy's gold score sampled at T=0.7 and greedy, a ✓ where it beats the SFT policy by more than
the 95 % interval of the difference, the RM score and the KL to the SFT policy; a second table breaks
the sampled responses down by what they did (clean, chatter, each family's flaw), and a line gives the
RM's accuracy against the gold ranking. Writes runs/tiny/eval-<policy>.json and prints one JSON line:
{"bench": "demo_cpu", "machine", "seconds": {step: s}, "total_seconds", "budget_seconds", "ratio":
total / budget, "figures"}. The budget is the 10-minute target for the whole demo.
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
POLICIES = ("sft", "ppo", "dpo")
KEPT = ("gold_sampled", "gold_sampled_ci95", "gold_greedy", "gold_greedy_ci95", "rm_score_sampled")


def step(name: str, args: list[str], seconds: dict[str, float]) -> None:
    print(f"== {name}: align {' '.join(args)}", flush=True)
    start = time.perf_counter()
    subprocess.run([*ALIGN, *args], check=True)
    seconds[name] = round(time.perf_counter() - start, 1)


def mark(policy: dict, baseline: dict, name: str) -> str:
    """✓ when the policy beats the baseline by `align.evaluation.beats`."""
    from align.evaluation import beats

    return "✓" if beats(policy, baseline, name) else "✗"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs/tiny", help="directory of the artifacts (the recipe's `run`)")
    args = parser.parse_args()
    runs = Path(args.runs)
    seconds: dict[str, float] = {}
    step("pipeline", ["pipeline", "--recipe", "recipes/tiny/pipeline.yaml", "--run", str(runs)], seconds)
    figures = {}
    for policy in POLICIES:
        report = runs / f"eval-{policy}.json"
        best_of = ["--best-of-n", "4"] if policy == "sft" else []
        eval_args = ["eval", "--model", str(runs / policy), "--reward-model", str(runs / "rm"), *best_of]
        step(f"eval_{policy}", [*eval_args, "--json", str(report)], seconds)
        figures[policy] = json.loads(report.read_text())
    step("report", ["report", str(runs)], seconds)
    sft = figures["sft"]
    print(
        f"\n{'policy':10s} {'gold T=0.7':>16s} {'gold greedy':>16s} {'RM score':>9s} {'KL to SFT':>10s}  (✓: beats SFT)"
    )
    for policy, f in figures.items():
        marks = ("", "") if policy == "sft" else (mark(f, sft, "sampled"), mark(f, sft, "greedy"))
        kl = f"{f['kl_to_reference']:.2f}" if "kl_to_reference" in f else "-"
        print(
            f"{policy:10s} {f['gold_sampled']:8.3f} ±{f['gold_sampled_ci95']:.3f} {marks[0]:1s} "
            f"{f['gold_greedy']:8.3f} ±{f['gold_greedy_ci95']:.3f} {marks[1]:1s} "
            f"{f['rm_score_sampled']:9.3f} {kl:>10s}"
        )
    gain = sft["best_of_4_gold"] - sft["gold_sampled"]
    print(
        f"{'best-of-4':10s} {sft['best_of_4_gold']:8.3f} ({gain:+.3f})   {'-':>16s} "
        f"{sft['best_of_4_rm_score']:9.3f} {sft['best_of_4_kl']:10.2f}  (the RM's pick of 4 SFT samples)"
    )
    kinds = list(dict.fromkeys(kind for f in figures.values() for kind in f["flaws_sampled"]))
    print(f"\nsampled responses by what they did:\n{'policy':10s} " + " ".join(f"{k:>18s}" for k in kinds))
    for policy, f in figures.items():
        print(f"{policy:10s} " + " ".join(f"{f['flaws_sampled'].get(k, 0.0):18.3f}" for k in kinds))
    rm = json.loads((runs / "rm/manifest.json").read_text())["metrics"]
    print(
        f"\nreward model {runs / 'rm'}: held-out accuracy {rm['eval_accuracy']:.3f} against its labels "
        f"(10 % flipped), {rm['eval_gold_accuracy']:.3f} against the gold ranking"
    )
    print(f"report: {runs / 'report/report.md'}  (plots beside it)")
    total = round(sum(seconds.values()), 1)
    kept = {
        policy: {
            k: round(v, 4)
            for k, v in f.items()
            if k in KEPT or k == "kl_to_reference" or k.startswith("best_of_")
        }
        for policy, f in figures.items()
    }
    print(
        json.dumps(
            {
                "bench": "demo_cpu",
                "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads {_torch_threads()}",
                "seconds": seconds,
                "total_seconds": total,
                "budget_seconds": BUDGET_SECONDS,
                "ratio": round(total / BUDGET_SECONDS, 3),
                "rm_gold_accuracy": rm["eval_gold_accuracy"],
                "figures": kept,
            }
        )
    )


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
