"""The offline default's alignment benchmark over training seeds (`make results`).

    python bench/study_alignment.py [--runs runs/tiny] [--seeds 0 1 2] [--out results/alignment.json]

Needs runs/tiny/sft and runs/tiny/rm (`make demo` makes them). From the same SFT policy, per seed: PPO
against the RM by the demo's recipe, DPO, its control (SFT on the chosen answers, same steps), and PPO
against the gold reward itself (the proxy gap). Once: best-of-4 by the RM and shortest-of-4 of the SFT
policy (does saying less win?); PPO against the RM at beta 0 and at 4x the steps (over-optimisation:
the gold and RM-score curves per step); the RM's accuracy against the gold ranking on pairs of the SFT
policy's own samples (`align pairs`, the pairs RLHF meets); and every seed-0 policy on fresh prompts of
another generator seed (data/synthetic/fresh.jsonl), whose tasks no training input states. Every policy is evaluated by `align eval` on the
held-out prompts (gold sampled at T=0.7 and greedy, per family and per flaw, RM score, KL to the SFT
policy). Reported figures are on eval; choices are made on dev (data/synthetic/dev.jsonl), never here.
Outputs that exist are reused, so an interrupted study continues. Writes one JSON file and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from harness import align

GOLD = "align.data.synthetic:gold_reward"
# another generator seed's eval prompts less the committed eval set's; `align data check` proves that no
# training input states their tasks
FRESH = Path("data/synthetic/fresh.jsonl")
FRESH_POLICIES = ("sft", "ppo_rm-seed0", "dpo-seed0", "sft_chosen-seed0")
KEPT = (
    "gold_sampled",
    "gold_sampled_ci95",
    "gold_greedy",
    "rm_score_sampled",
    "kl_to_reference",
    "gold_sampled_by_family",
    "gold_greedy_by_family",
    "flaws_sampled",
    "best_of_4_gold",
    "shortest_of_4_gold",
)


def evaluate(policy: Path, runs: Path, report: Path, *extra: str) -> dict:
    """`align eval` figures of a policy, kept in `report` and reused when there."""
    if not report.exists():
        rm, sft = str(runs / "rm"), str(runs / "sft")
        align(
            "eval",
            "--model",
            str(policy),
            "--reward-model",
            rm,
            "--reference",
            sft,
            "--json",
            str(report),
            *extra,
        )
    return {k: v for k, v in json.loads(report.read_text()).items() if k in KEPT}


def methods(runs: Path, seed: int) -> dict[str, list[str]]:
    sft, s = str(runs / "sft"), str(seed)
    ppo = ["ppo", "--recipe", "recipes/tiny/ppo.yaml", "--model", sft, "--seed", s]
    return {
        "ppo_rm": [*ppo, "--reward-model", str(runs / "rm")],
        "ppo_gold": [*ppo, "--reward", GOLD, "--set", "reward_model=null"],
        "dpo": ["dpo", "--recipe", "recipes/tiny/dpo.yaml", "--model", sft, "--seed", s],
        "sft_chosen": ["sft", "--recipe", "recipes/tiny/sft_chosen.yaml", "--model", sft, "--seed", s],
    }


OVEROPTIMISATION = {"beta0": ["--kl-coef", "0"], "steps4x": ["--max-steps", "600"]}


def train(command: list[str], output: Path) -> float | None:
    return None if (output / "manifest.json").exists() else align(*command, "--output", str(output))


def spread(values: list[float]) -> dict:
    return {
        "mean": round(statistics.fmean(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def curve(artifact: Path, window: int = 10) -> dict:
    """Gold and RM score of the rollouts per step, smoothed over `window` steps; where gold peaked."""
    rows = [json.loads(line) for line in (artifact / "logs/metrics.jsonl").read_text().splitlines()]

    def smooth(key: str) -> list[float]:
        return [
            statistics.fmean(r[key] for r in rows[max(0, i - window + 1) : i + 1]) for i in range(len(rows))
        ]

    gold, score = smooth("gold"), smooth("score")
    peak = max(range(len(gold)), key=gold.__getitem__)
    return {
        "steps": len(rows),
        "gold_peak_step": rows[peak]["step"],
        "gold_at_peak": round(gold[peak], 4),
        "gold_final": round(gold[-1], 4),
        "score_at_gold_peak": round(score[peak], 4),
        "score_final": round(score[-1], 4),
        "kl_final": round(rows[-1]["kl"], 3),
        "gold_peaks_then_falls_while_score_rises": gold[-1] < gold[peak] - 0.05 and score[-1] > score[peak],
        "every_10th_step": [
            {"step": r["step"], "gold": round(g, 4), "score": round(s, 4)}
            for r, g, s in list(zip(rows, gold, score, strict=True))[window - 1 :: window]
        ],
    }


def onpolicy_rm_accuracy(runs: Path, work: Path) -> dict:
    """The RM against the gold ranking on pairs of the SFT policy's own answers to prompts it was not
    trained on (8 samples per prompt, every two that the gold scores differently, no label noise)."""
    pairs = work / "pairs-onpolicy"
    command = ["pairs", "--recipe", "recipes/tiny/pairs.yaml", "--model", str(runs / "sft"), "--prompts"]
    command += ["data/synthetic/ppo.jsonl", "--limit", "600", "--label-noise", "0"]
    train(command, pairs)
    from align.rewards import RewardModel

    rows = [json.loads(line) for line in (pairs / "data/pairs.jsonl").read_text().splitlines()]
    scorer = RewardModel.load(runs / "rm")
    eos = scorer.tokenizer.eos_token
    prompts = [r["prompt"] for r in rows]
    chosen = scorer.score_messages(prompts, [r["chosen"] + eos for r in rows])
    rejected = scorer.score_messages(prompts, [r["rejected"] + eos for r in rows])
    agree = [c > r for c, r in zip(chosen, rejected, strict=True)]
    return {"pairs": len(rows), "prompts": 600, "gold_accuracy": round(statistics.fmean(agree), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("results/alignment.json"))
    args = parser.parse_args()
    runs, work = args.runs, args.runs / "study"
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "sft": evaluate(
            runs / "sft", runs, work / "sft-eval.json", "--best-of-n", "4", "--shortest-of-n", "4"
        )
    }
    results["runs"] = {}
    for seed in args.seeds:
        for name, command in methods(runs, seed).items():
            output = work / f"{name}-seed{seed}"
            seconds = train(command, output)
            figures = evaluate(output, runs, work / f"{name}-seed{seed}-eval.json")
            results["runs"].setdefault(name, {})[str(seed)] = {**figures, "seconds": seconds}
            print(name, seed, figures["gold_sampled"], figures["gold_greedy"], flush=True)
    results["overoptimisation"] = {}
    for name, extra in OVEROPTIMISATION.items():
        output = work / f"ppo_rm-{name}"
        train([*methods(runs, 0)["ppo_rm"], *extra], output)
        figures = evaluate(output, runs, work / f"ppo_rm-{name}-eval.json")
        results["overoptimisation"][name] = {**figures, "curve": curve(output)}
    results["overoptimisation"]["recipe"] = {"curve": curve(work / "ppo_rm-seed0")}
    results["rm"] = {
        "synthetic_pairs_gold_accuracy": json.loads((runs / "rm/manifest.json").read_text())["metrics"][
            "eval_gold_accuracy"
        ],
        "onpolicy": onpolicy_rm_accuracy(runs, work),
    }
    settings = json.loads(Path("data/synthetic/settings.json").read_text())["settings"]
    results["fresh_prompts"] = {
        "seed": settings["fresh_seed"],
        "prompts": len(FRESH.read_text().splitlines()),
    }
    for name in FRESH_POLICIES:
        policy = runs / "sft" if name == "sft" else work / name
        controls = ["--best-of-n", "4", "--shortest-of-n", "4"] if name == "sft" else []
        results["fresh_prompts"][name] = evaluate(
            policy, runs, work / f"{name}-fresh-eval.json", "--prompts", str(FRESH), *controls
        )
    results["summary"] = summarise(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def summarise(results: dict) -> dict:
    sft = results["sft"]
    summary = {}
    for name, per_seed in results["runs"].items():
        runs = list(per_seed.values())
        families = sft["gold_sampled_by_family"]
        summary[name] = {
            "seeds": len(runs),
            "gold_sampled_gain": spread([r["gold_sampled"] - sft["gold_sampled"] for r in runs]),
            "gold_greedy_gain": spread([r["gold_greedy"] - sft["gold_greedy"] for r in runs]),
            "gold_sampled_gain_by_family": {
                f: round(statistics.fmean(r["gold_sampled_by_family"][f] for r in runs) - families[f], 4)
                for f in families
            },
            "rm_score": spread([r["rm_score_sampled"] for r in runs]),
            "kl_to_sft": spread([r["kl_to_reference"] for r in runs]),
        }
    dpo, control = results["runs"]["dpo"], results["runs"]["sft_chosen"]
    summary["dpo_over_sft_chosen"] = spread(
        [dpo[s]["gold_sampled"] - control[s]["gold_sampled"] for s in dpo]
    )
    fresh = results["fresh_prompts"]
    summary["fresh_prompts_gain"] = {
        name: {
            "gold_sampled": round(fresh[name]["gold_sampled"] - fresh["sft"]["gold_sampled"], 4),
            "by_family": {
                f: round(g - fresh["sft"]["gold_sampled_by_family"][f], 4)
                for f, g in fresh[name]["gold_sampled_by_family"].items()
            },
        }
        for name in FRESH_POLICIES[1:]
    }
    return summary


def table(results: dict) -> str:
    sft, summary = results["sft"], results["summary"]
    lines = [
        "| policy | gold T=0.7 gain (min..max) | gold greedy gain (min..max) | RM score | KL to SFT |",
        "|---|---|---|---|---|",
        f"| sft | {sft['gold_sampled']:.3f} (abs) | {sft['gold_greedy']:.3f} (abs) | {sft['rm_score_sampled']:.3f} | 0 |",
    ]
    for name in results["runs"]:
        s = summary[name]
        g, greedy = s["gold_sampled_gain"], s["gold_greedy_gain"]
        lines.append(
            f"| {name} | {g['mean']:+.3f} ({g['min']:+.3f}..{g['max']:+.3f}) | {greedy['mean']:+.3f} "
            f"({greedy['min']:+.3f}..{greedy['max']:+.3f}) | {s['rm_score']['mean']:.3f} | {s['kl_to_sft']['mean']:.2f} |"
        )
    for name in ("best_of_4", "shortest_of_4"):
        lines.append(f"| {name} (of SFT) | {sft[name + '_gold'] - sft['gold_sampled']:+.3f} | - | - | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
