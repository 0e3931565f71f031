"""PPO on the tiny recipe: seed study, proxy gap and a KL-coefficient sweep (`make results`).

    python bench/study_ppo.py [--runs runs/tiny] [--seeds 0 1 2] [--out results/ppo.json]

Needs runs/tiny/sft and runs/tiny/rm (`make demo` makes them). For each seed: PPO against the RM and PPO
against the gold reward function; then PPO against the RM for several beta. Every policy is evaluated on
the 1,200 held-out prompts (gold sampled at T=0.7 and greedy, RM score, KL to the SFT policy). Writes one
JSON file and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ALIGN = [sys.executable, "-m", "align.cli"]


def align(*args: str) -> None:
    subprocess.run([*ALIGN, *args], check=True, stdout=subprocess.DEVNULL)


def evaluate(policy: Path, rm: Path) -> dict:
    report = policy.with_name(policy.name + "-eval.json")
    align("eval", "--model", str(policy), "--reward-model", str(rm), "--json", str(report))
    figures = json.loads(report.read_text())
    keep = (
        "gold_sampled",
        "gold_sampled_ci95",
        "gold_greedy",
        "rm_score_sampled",
        "kl_to_reference",
        "eos_rate_sampled",
        "gold_sampled_by_family",
    )
    return {k: figures[k] for k in keep if k in figures}


def ppo(runs: Path, name: str, *args: str) -> tuple[Path, float]:
    output = runs / name
    start = time.perf_counter()
    align(
        "ppo",
        "--recipe",
        "recipes/tiny/ppo.yaml",
        "--model",
        str(runs / "sft"),
        "--output",
        str(output),
        *args,
    )
    return output, round(time.perf_counter() - start, 1)


def spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.2])
    parser.add_argument("--out", type=Path, default=Path("results/ppo.json"))
    args = parser.parse_args()
    rm = args.runs / "rm"
    results: dict = {"sft": evaluate(args.runs / "sft", rm), "ppo_rm": {}, "ppo_gold": {}, "beta_sweep": {}}
    for seed in args.seeds:
        for kind, reward in (
            ("ppo_rm", ["--reward-model", str(rm)]),
            ("ppo_gold", ["--reward", "align.data.synthetic:gold_reward"]),
        ):
            policy, seconds = ppo(args.runs, f"{kind}-seed{seed}", *reward, "--seed", str(seed))
            results[kind][seed] = {**evaluate(policy, rm), "seconds": seconds}
            print(kind, seed, results[kind][seed], flush=True)
    for beta in args.betas:
        policy, seconds = ppo(
            args.runs, f"ppo_rm-beta{beta}", "--reward-model", str(rm), "--kl-coef", str(beta)
        )
        results["beta_sweep"][beta] = {**evaluate(policy, rm), "seconds": seconds}
        print("beta", beta, results["beta_sweep"][beta], flush=True)
    sft_gold = results["sft"]["gold_sampled"]
    for kind in ("ppo_rm", "ppo_gold"):
        runs = results[kind].values()
        results[f"{kind}_gain_sampled"] = spread([r["gold_sampled"] - sft_gold for r in runs])
        results[f"{kind}_gain_greedy"] = spread(
            [r["gold_greedy"] - results["sft"]["gold_greedy"] for r in runs]
        )
        results[f"{kind}_kl"] = spread([r["kl_to_reference"] for r in runs])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        json.dumps({k: v for k, v in results.items() if k.endswith(("gain_sampled", "gain_greedy", "_kl"))})
    )


if __name__ == "__main__":
    main()
