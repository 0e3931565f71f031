"""Every alignment method on the tiny recipe, several seeds, same held-out prompts (`make results`).

    python bench/study_alignment.py [--runs runs/tiny] [--seeds 0 1 2] [--out results/alignment.json]

Needs runs/tiny/sft and runs/tiny/rm (`make demo` makes them). Per seed it trains, from the same SFT
policy: PPO against the RM, PPO against the gold reward function (the proxy gap), the same run 2x longer at beta 0.02, DPO on the pairs, the
control "SFT on the chosen answers" for as many steps as DPO (so DPO's own contribution shows), GRPO and
RLOO against the gold reward, and iterative DPO judged by the gold reward. Then a PPO sweep of the KL coefficient (over-optimisation: RM score and
gold against KL). Every policy is evaluated on the 1,200 held-out prompts: gold sampled at T=0.7 and
greedy, RM score, KL to the SFT policy, wall time. Writes one JSON file and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from harness import align

GOLD = "align.data.synthetic:gold_reward"


def evaluate(policy: Path, rm: Path, reference: Path, report: Path | None = None) -> dict:
    """`align eval` figures of a policy, kept beside it (or at `report`) and reused when there."""
    report = report or policy.with_name(policy.name + "-eval.json")
    if not report.exists() or "kl_to_reference" not in json.loads(report.read_text()):
        align(
            "eval",
            "--model",
            str(policy),
            "--reward-model",
            str(rm),
            "--reference",
            str(reference),
            "--json",
            str(report),
        )
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


def methods(runs: Path, seed: int) -> dict[str, list[str]]:
    rm, sft, s = str(runs / "rm"), str(runs / "sft"), str(seed)
    ppo_gold = ["ppo", "--recipe", "recipes/tiny/ppo.yaml", "--model", sft, "--reward", GOLD]
    ppo_gold += ["--set", "reward_model=null", "--seed", s]
    return {
        "ppo_rm": [
            "ppo",
            "--recipe",
            "recipes/tiny/ppo.yaml",
            "--model",
            sft,
            "--reward-model",
            rm,
            "--seed",
            s,
        ],
        "ppo_gold": ppo_gold,
        # reward-function PPO run longer with a looser KL leash: how far the policy itself can go
        "ppo_gold_long": [*ppo_gold, "--kl-coef", "0.02", "--steps", "300"],
        "dpo": ["dpo", "--recipe", "recipes/tiny/dpo.yaml", "--model", sft, "--seed", s],
        "sft_chosen": ["sft", "--recipe", "recipes/tiny/sft_chosen.yaml", "--model", sft, "--seed", s],
        "dpo_online_gold": ["dpo", "--recipe", "recipes/tiny/dpo_online.yaml", "--model", sft, "--seed", s],
        "grpo_gold": ["grpo", "--recipe", "recipes/tiny/grpo.yaml", "--model", sft, "--seed", s],
        "rloo_gold": ["rloo", "--recipe", "recipes/tiny/rloo.yaml", "--model", sft, "--seed", s],
    }


def spread(values: list[float]) -> dict:
    return {
        "mean": round(statistics.fmean(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--single-seed",
        nargs="+",
        default=["dpo_online_gold", "grpo_gold", "rloo_gold"],
        help="methods run for the first seed only",
    )
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--only", nargs="+", help="methods to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("results/alignment.json"))
    args = parser.parse_args()
    rm = args.runs / "rm"
    results: dict = json.loads(args.out.read_text()) if args.out.exists() else {}
    sft = args.runs / "sft"
    results["sft"] = evaluate(sft, rm, sft)
    results.setdefault("runs", {})
    for seed in args.seeds:
        for name, command in methods(args.runs, seed).items():
            if (args.only and name not in args.only) or (name in args.single_seed and seed != args.seeds[0]):
                continue
            output = args.runs / "study" / f"{name}-seed{seed}"
            done = results["runs"].get(name, {}).get(str(seed), {})
            seconds = (
                done["seconds"]
                if (output / "manifest.json").exists() and done
                else align(*command, "--output", str(output))
            )
            results["runs"].setdefault(name, {})[str(seed)] = {
                **evaluate(output, rm, sft),
                "seconds": seconds,
            }
            print(name, seed, results["runs"][name][str(seed)], flush=True)
            save(args.out, results)
    if not args.only or "beta_sweep" in args.only:
        for beta in args.betas:
            output = args.runs / "study" / f"ppo_rm-beta{beta}"
            done = results.get("beta_sweep", {}).get(str(beta), {})
            command = [*methods(args.runs, 0)["ppo_rm"], "--kl-coef", str(beta), "--output", str(output)]
            seconds = done["seconds"] if (output / "manifest.json").exists() and done else align(*command)
            results.setdefault("beta_sweep", {})[str(beta)] = {
                **evaluate(output, rm, sft),
                "seconds": seconds,
            }
            print("beta", beta, results["beta_sweep"][str(beta)], flush=True)
            save(args.out, results)
    results["summary"] = summarise(results)
    save(args.out, results)
    print(table(results))


def save(path: Path, results: dict) -> None:
    """After every run, so an interrupted study keeps what it measured (and a rerun reuses it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def summarise(results: dict) -> dict:
    sft = results["sft"]
    summary = {}
    for name, per_seed in results["runs"].items():
        runs = list(per_seed.values())
        summary[name] = {
            "seeds": len(runs),
            "gold_sampled_gain": spread([r["gold_sampled"] - sft["gold_sampled"] for r in runs]),
            "gold_greedy_gain": spread([r["gold_greedy"] - sft["gold_greedy"] for r in runs]),
            "rm_score": spread([r["rm_score_sampled"] for r in runs]),
            "kl_to_sft": spread([r["kl_to_reference"] for r in runs]),
            "seconds": spread([r["seconds"] for r in runs]),
        }
    return summary


def table(results: dict) -> str:
    sft = results["sft"]
    lines = [
        "| policy | gold T=0.7 (gain, min..max) | gold greedy gain | RM score | KL to SFT | seconds |",
        "|---|---|---|---|---|---|",
        f"| sft | {sft['gold_sampled']:.3f} | {sft['gold_greedy']:.3f} (abs) | {sft['rm_score_sampled']:.3f} | 0 | - |",
    ]
    for name, s in results["summary"].items():
        g = s["gold_sampled_gain"]
        lines.append(
            f"| {name} | {g['mean']:+.3f} ({g['min']:+.3f}..{g['max']:+.3f}) | "
            f"{s['gold_greedy_gain']['mean']:+.3f} | {s['rm_score']['mean']:.3f} | "
            f"{s['kl_to_sft']['mean']:.2f} | {s['seconds']['mean']:.0f} |"
        )
    for beta, r in results.get("beta_sweep", {}).items():
        lines.append(
            f"| ppo_rm beta={beta} | {r['gold_sampled'] - sft['gold_sampled']:+.3f} | "
            f"{r['gold_greedy'] - sft['gold_greedy']:+.3f} | {r['rm_score_sampled']:.3f} | "
            f"{r['kl_to_reference']:.2f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
