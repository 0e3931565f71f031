"""Guards against reward over-optimisation, measured (`make results`).

    python bench/study_guards.py [--runs runs/tiny] [--seeds 0 1 2] [--out results/guards.json]

Needs runs/tiny/pretrain, sft and rm (`make demo`); the unguarded PPO runs of the offline default are
study_alignment's (`runs/tiny/study/ppo_rm-seed*`, same recipe and seeds), made here if missing.

1. Planted hack (offline default): PPO against `bench.rewards:length_reward`, which pays for words
   whatever they say, with the gold reward as the never-optimised validation judge, unguarded and with
   `ppo.keep_best` (validation every 10 steps, patience 3). Measured: the evaluated gold of both
   artifacts against the SFT policy's, and the step at which the length monitor first fires.
2. RM ensembles on the hard preset (where PPO at beta 0.05 loses gold against one RM): SFT and an RM by
   the tiny recipes on the hard preset's data, an ensemble of 3 RMs (`--ensemble 3`) on the same pairs,
   then PPO by the tiny recipe against the single RM and against the ensemble with the mean, min and
   uwo objectives, per seed. Measured: gold gain over the hard SFT policy, the ensemble-mean RM score
   and the KL of each.
3. The same on the offline default: the uwo objective over an ensemble of 3 against the single RM.

Every policy is evaluated by `align eval` (1,200 held-out prompts of its preset, T=0.7 and greedy).
Outputs that exist are reused. Writes one JSON file and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness import align
from study_alignment import spread, train

GOLD = "align.data.synthetic:gold_reward"
KEEP_BEST = ["ppo.keep_best=true", "ppo.validation_every=10", "ppo.early_stop_patience=3"]
OBJECTIVES = ("mean", "min", "uwo")
KEPT = ("gold_sampled", "gold_greedy", "rm_score_sampled", "kl_to_reference", "flaws_sampled")


def evaluate(policy: Path, reference: Path, rm: Path, prompts: str, report: Path) -> dict:
    if not report.exists():
        align(
            "eval", "--model", str(policy), "--reference", str(reference), "--reward-model", str(rm),
            "--prompts", prompts, "--json", str(report),
        )  # fmt: skip
    return {k: v for k, v in json.loads(report.read_text()).items() if k in KEPT}


def sets(*assignments: str) -> list[str]:
    return [arg for assignment in assignments for arg in ("--set", assignment)]


def first_trip(artifact: Path, monitor: str) -> int | None:
    rows = [json.loads(line) for line in (artifact / "logs/metrics.jsonl").read_text().splitlines()]
    return next((r["step"] for r in rows if r.get(f"monitor_{monitor}")), None)


def planted_hack(runs: Path, work: Path) -> dict:
    sft, prompts = runs / "sft", "data/synthetic/eval.jsonl"
    command = ["ppo", "--recipe", "recipes/tiny/ppo.yaml", "--model", str(sft), "--reward"]
    command += ["bench.rewards:length_reward", "--set", "reward_model=null", "--validation-reward", GOLD]
    command += ["--max-steps", "80"]
    result = {"steps": 80, "sft": evaluate(sft, sft, runs / "rm", prompts, work / "sft-eval.json")}
    for name, extra in (("unguarded", []), ("keep_best", sets(*KEEP_BEST))):
        output = work / f"hack-{name}"
        train([*command, *extra], output)
        metrics = json.loads((output / "manifest.json").read_text())["metrics"]
        result[name] = {
            **evaluate(output, sft, runs / "rm", prompts, work / f"hack-{name}-eval.json"),
            "best_step": metrics.get("best_step"),
            "stopped": metrics.get("stopped"),
            "length_monitor_first_step": first_trip(output, "length_hacking"),
        }
    result["keep_best_gold_vs_sft"] = round(
        result["keep_best"]["gold_sampled"] - result["sft"]["gold_sampled"], 4
    )
    return result


def hard_preset(runs: Path, work: Path) -> tuple[Path, Path, Path, Path]:
    """The hard preset's data, and SFT, RM and ensemble trained on it by the tiny recipes."""
    data = work / "hard-data"
    if not (data / "sft.jsonl").exists():
        align("data", "synth", "--preset", "hard", "--output", str(data))
    sft, rm, ensemble = work / "hard-sft", work / "hard-rm", work / "hard-rm-ensemble3"
    train(["sft", "--recipe", "recipes/tiny/sft.yaml", "--model", str(runs / "pretrain"),
           "--data", str(data / "sft.jsonl")], sft)  # fmt: skip
    rm_command = [
        "rm",
        "--recipe",
        "recipes/tiny/rm.yaml",
        "--model",
        str(sft),
        "--data",
        str(data / "pairs.jsonl"),
    ]
    train(rm_command, rm)
    train([*rm_command, "--ensemble", "3"], ensemble)
    return data, sft, rm, ensemble


def ensembles(sft: Path, rm: Path, ensemble: Path, prompts: Path, eval_prompts: Path, work: Path,
              seeds: list[int], prefix: str, objectives: tuple[str, ...], single_runs: Path | None = None) -> dict:  # fmt: skip
    """PPO by the tiny recipe against the single RM and the ensemble under each objective, per seed;
    figures evaluated with the ensemble as the judge of the RM score."""
    result: dict = {"sft": evaluate(sft, sft, ensemble, str(eval_prompts), work / f"{prefix}-sft-eval.json")}
    base = ["ppo", "--recipe", "recipes/tiny/ppo.yaml", "--model", str(sft), "--prompts", str(prompts)]
    arms = {"single_rm": ["--reward-model", str(rm)]}
    arms |= {name: ["--reward-model", str(ensemble), "--ensemble-objective", name] for name in objectives}
    for arm, extra in arms.items():
        for seed in seeds:
            output = work / f"{prefix}-{arm}-seed{seed}"
            if arm == "single_rm" and single_runs is not None:
                output = single_runs / f"ppo_rm-seed{seed}"
            train([*base, *extra, "--seed", str(seed)], output)
            figures = evaluate(
                output, sft, ensemble, str(eval_prompts), work / f"{prefix}-{arm}-seed{seed}-eval.json"
            )
            result.setdefault(arm, {})[str(seed)] = figures
            print(prefix, arm, seed, figures["gold_sampled"], figures["kl_to_reference"], flush=True)
    return result | {"summary": summarise(result), "ensemble": members(ensemble)}


def members(ensemble: Path) -> dict:
    """What the ensemble's manifest says of its members: held-out accuracy, disagreement, correlation,
    and the weight bytes of all members together."""
    metrics = json.loads((ensemble / "manifest.json").read_text())["metrics"]
    kept = ("eval_accuracy", "eval_gold_accuracy")
    return {
        "members_eval_accuracy": [{k: m.get(k) for k in kept} for m in metrics["members"]],
        **{k: metrics.get(k) for k in (*kept, "member_disagreement", "member_correlation", "weights_bytes")},
    }


def summarise(result: dict) -> dict:
    sft = result["sft"]
    summary = {}
    for arm, per_seed in result.items():
        if arm == "sft":
            continue
        runs = list(per_seed.values())
        summary[arm] = {
            "gold_sampled_gain": spread([r["gold_sampled"] - sft["gold_sampled"] for r in runs]),
            "gold_greedy_gain": spread([r["gold_greedy"] - sft["gold_greedy"] for r in runs]),
            "ensemble_mean_rm_score_gain": spread(
                [r["rm_score_sampled"] - sft["rm_score_sampled"] for r in runs]
            ),
            "kl_to_sft": spread([r["kl_to_reference"] for r in runs]),
        }
    single_kl = summary["single_rm"]["kl_to_sft"]["mean"]
    for arm in summary:
        summary[arm]["kl_ratio_to_single_rm"] = round(summary[arm]["kl_to_sft"]["mean"] / single_kl, 3)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("results/guards.json"))
    args = parser.parse_args()
    runs, work = args.runs, args.runs / "guards"
    work.mkdir(parents=True, exist_ok=True)
    results = {"planted_hack": planted_hack(runs, work)}
    data, sft, rm, ensemble = hard_preset(runs, work)
    results["hard_preset"] = ensembles(
        sft, rm, ensemble, data / "ppo.jsonl", data / "eval.jsonl", work, args.seeds, "hard", OBJECTIVES
    )
    default_ensemble = work / "rm-ensemble3"
    train(
        ["rm", "--recipe", "recipes/tiny/rm.yaml", "--model", str(runs / "sft"), "--ensemble", "3"],
        default_ensemble,
    )
    results["default"] = ensembles(
        runs / "sft", runs / "rm", default_ensemble, Path("data/synthetic/ppo.jsonl"),
        Path("data/synthetic/eval.jsonl"), work, args.seeds, "default", ("uwo",), runs / "study",
    )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def table(results: dict) -> str:
    lines = [
        "| preset | objective | gold T=0.7 gain (min..max) | ensemble-mean RM gain | KL to SFT | KL / single RM's |"
    ]
    lines.append("|---|---|---|---|---|---|")
    for preset in ("hard_preset", "default"):
        for arm, s in results[preset]["summary"].items():
            g = s["gold_sampled_gain"]
            lines.append(
                f"| {preset} | {arm} | {g['mean']:+.3f} ({g['min']:+.3f}..{g['max']:+.3f}) | "
                f"{s['ensemble_mean_rm_score_gain']['mean']:+.3f} | {s['kl_to_sft']['mean']:.2f} | {s['kl_ratio_to_single_rm']:.2f} |"
            )
    hack = results["planted_hack"]
    lines.append("")
    lines.append(
        f"planted length hack, {hack['steps']} steps: SFT gold {hack['sft']['gold_sampled']:.3f}; unguarded "
        f"{hack['unguarded']['gold_sampled']:.3f}; keep_best {hack['keep_best']['gold_sampled']:.3f} "
        f"(best step {hack['keep_best']['best_step']}); length monitor first at step "
        f"{hack['unguarded']['length_monitor_first_step']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
