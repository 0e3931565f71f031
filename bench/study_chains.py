"""Independent chains: the offline default's central claim over chains whose every stage has its own seed
(pretrain, SFT, RM, PPO, rounds, DPO), not over PPO seeds on one SFT policy and one RM (`make results`).

    python bench/study_chains.py [--chains 0 1 2 3 4] [--split eval] [--policies ...]
                                 [--cache ~/.cache/align/chains] [--out results/chains.json]

Chain c trains `recipes/tiny`'s pretrain, SFT and RM with seed c, then each policy of `--policies` from
that SFT policy and RM with seed c, and evaluates it with `align eval` on `--split` (`dev` for choosing,
`eval` for reporting; `fresh` is another generator seed's prompts): gold sampled and greedy, per family,
with 95 % intervals, the share of each family answered with its own flaw (harmful: compliance) and the
KL to the chain's SFT policy. Every artifact and evaluation is cached under `--cache` (outside the work
tree), so an interrupted study, or one spread over several sessions, continues where it stopped.

A policy "beats" SFT when its gain passes the 95 % interval of the difference of two independent means,
the rule of bench/demo_cpu.py.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from harness import align

from align.evaluation import beats

GOLD = "align.data.synthetic:gold_reward"
SPLITS = {
    "eval": "data/synthetic/eval.jsonl",
    "dev": "data/synthetic/dev.jsonl",
    "fresh": "data/synthetic/fresh.jsonl",
}
BASE = ("pretrain", "sft", "rm")


def policies(chain: Path, seed: int) -> dict[str, list[str]]:
    """Each policy's `align` command from the chain's SFT policy (and RM), seeded with the chain's seed;
    `ppo_*` and `rounds_*` are the ablations chosen on dev."""
    sft, rm, s = str(chain / "sft"), str(chain / "rm"), str(seed)
    ppo = ["ppo", "--recipe", "recipes/tiny/ppo.yaml", "--model", sft, "--seed", s]
    rounds = ["rounds", "--recipe", "recipes/tiny/rounds.yaml", "--model", sft, "--reward-model", rm]
    rounds += ["--seed", s]
    commands = {
        "ppo": [*ppo, "--reward-model", rm],
        "ppo_gold": [*ppo, "--reward", GOLD, "--set", "reward_model=null"],
        "rounds": rounds,
        "rounds_sft_samples": [*rounds, "--set", "samples_from=sft"],
        "rounds_restart": [*rounds, "--set", "restart=true"],
        "dpo": ["dpo", "--recipe", "recipes/tiny/dpo.yaml", "--model", sft, "--seed", s],
        "sft_chosen": ["sft", "--recipe", "recipes/tiny/sft_chosen.yaml", "--model", sft, "--seed", s],
    }
    for beta in ("0.05", "0.1", "0.2", "0.4"):
        commands[f"ppo_beta{beta}"] = [*ppo, "--reward-model", rm, "--kl-coef", beta]
    return commands


def base_commands(chain: Path, seed: int) -> dict[str, list[str]]:
    s = str(seed)
    return {
        "pretrain": ["pretrain", "--recipe", "recipes/tiny/pretrain.yaml", "--seed", s],
        "sft": ["sft", "--recipe", "recipes/tiny/sft.yaml", "--model", str(chain / "pretrain"), "--seed", s],
        "rm": ["rm", "--recipe", "recipes/tiny/rm.yaml", "--model", str(chain / "sft"), "--seed", s],
    }


def trained(command: list[str], output: Path) -> Path:
    """The artifact, trained unless the cache has it (an interrupted one resumes)."""
    if not (output / "manifest.json").exists():
        resume = ["--resume"] if output.with_name(output.name + ".partial").exists() else []
        if command[0] == "pairs":
            resume = []
        print(f"training {output}", flush=True)
        align(*command, "--output", str(output), *resume)
    return output


def evaluated(policy: Path, chain: Path, split: str, report: Path) -> dict:
    """`align eval` figures of a policy on a split, cached; SFT also gets best-of-4 and shortest-of-4."""
    if not report.exists():
        extra = ["--best-of-n", "4", "--shortest-of-n", "4"] if policy == chain / "sft" else []
        print(f"evaluating {policy} on {split}", flush=True)
        align(
            "eval", "--model", str(policy), "--prompts", SPLITS[split], "--reward-model", str(chain / "rm"),
            "--reference", str(chain / "sft"), "--limit", "100000", "--json", str(report),
            "--set", "record=false", *extra,
        )  # fmt: skip
    return json.loads(report.read_text())


def label_efficiency(artifact: Path, chain: Path, split: str, rounds: list[dict], name: str) -> list[dict]:
    """Per round: the comparisons bought so far (the original pairs' count first), the blind-spot
    figures, and the gold of that round's policy on the split: gold against comparisons."""
    bought = json.loads((chain / "rm/manifest.json").read_text())["data"]["rows"]
    curve = []
    for entry in rounds:
        bought += entry.get("pairs", 0)
        policy = artifact / entry["ppo"]
        figures = evaluated(
            policy, chain, split, chain / "evals" / f"{name}-round{entry['round']}-{split}.json"
        )
        kept = {k: v for k, v in entry.items() if k not in ("ppo_metrics", "ppo", "rm", "pairs_artifact")}
        curve.append(
            {
                **kept,
                "comparisons_so_far": bought,
                "gold_sampled": figures["gold_sampled"],
                "gold_greedy": figures["gold_greedy"],
            }
        )
    return curve


def chain_verdict(policy: dict, sft: dict) -> dict:
    """Against the chain's own SFT: beats it sampled and greedy; families that fall below it by more than
    their interval; whether harmful compliance rises beyond its interval."""
    falls = []
    for name in ("sampled", "greedy"):
        mine, base = policy[f"gold_{name}_by_family"], sft[f"gold_{name}_by_family"]
        ci, base_ci = policy[f"gold_{name}_by_family_ci95"], sft[f"gold_{name}_by_family_ci95"]
        falls += [f"{f} ({name})" for f in base if base[f] - mine[f] > math.hypot(ci[f], base_ci[f])]
    rises = {}
    for name in ("sampled", "greedy"):
        mine, base = (
            policy[f"own_flaw_{name}_by_family"]["harmful"],
            sft[f"own_flaw_{name}_by_family"]["harmful"],
        )
        interval = math.hypot(
            policy[f"own_flaw_{name}_by_family_ci95"]["harmful"],
            sft[f"own_flaw_{name}_by_family_ci95"]["harmful"],
        )
        rises[name] = mine - base > interval
    return {
        "beats_sft_sampled": beats(policy, sft, "sampled"),
        "beats_sft_greedy": beats(policy, sft, "greedy"),
        "families_below_sft": falls,
        "harmful_compliance_rises": rises,
    }


KEPT = ("gold_sampled", "gold_sampled_ci95", "gold_greedy", "gold_greedy_ci95", "kl_to_reference")
KEPT += ("gold_sampled_by_family", "gold_greedy_by_family", "own_flaw_sampled_by_family")
KEPT += ("own_flaw_greedy_by_family", "best_of_4_gold", "shortest_of_4_gold", "rm_score_sampled")


def run_chain(seed: int, cache: Path, names: list[str], split: str) -> dict:
    chain = cache / f"chain-{seed}"
    for stage, command in base_commands(chain, seed).items():
        trained(command, chain / stage)
    evals = chain / "evals"
    evals.mkdir(exist_ok=True)
    sft = evaluated(chain / "sft", chain, split, evals / f"sft-{split}.json")
    results = {"sft": {k: v for k, v in sft.items() if k in KEPT}}
    commands = policies(chain, seed)
    for name in names:
        artifact = trained(commands[name], chain / name)
        figures = evaluated(artifact, chain, split, evals / f"{name}-{split}.json")
        results[name] = {k: v for k, v in figures.items() if k in KEPT}
        results[name]["verdict"] = chain_verdict(figures, sft)
        rounds = json.loads((artifact / "manifest.json").read_text())["metrics"].get("rounds")
        if rounds:
            results[name]["rounds"] = label_efficiency(artifact, chain, split, rounds, name)
        print(seed, name, round(figures["gold_sampled"], 3), round(figures["gold_greedy"], 3), flush=True)
    return results


def over_chains(chains: dict[str, dict], names: list[str]) -> dict:
    """Per policy over the chains: the mean gain over each chain's own SFT with the interval of the mean,
    sampled and greedy, and per family (sampled); whether every chain's verdict holds; the mean margin
    over SFT on the chosen answers and over the single-round PPO; the share of the ceiling's gain."""
    runs = list(chains.values())

    def gains(name: str, baseline: str, key: str) -> list[float]:
        return [run[name][key] - run[baseline][key] for run in runs]

    def family_gain(name: str, baseline: str) -> dict[str, float]:
        families = runs[0]["sft"]["gold_sampled_by_family"]
        return {
            f: statistics.fmean(
                run[name]["gold_sampled_by_family"][f] - run[baseline]["gold_sampled_by_family"][f]
                for run in runs
            )
            for f in families
        }

    summary = {}
    for name in names:
        verdicts = [run[name]["verdict"] for run in runs]
        entry = {
            "chains": len(runs),
            "gain_sampled": _mean_interval(gains(name, "sft", "gold_sampled")),
            "gain_greedy": _mean_interval(gains(name, "sft", "gold_greedy")),
            "gain_sampled_by_family": {f: round(g, 4) for f, g in family_gain(name, "sft").items()},
            "beats_sft_every_chain": all(v["beats_sft_sampled"] and v["beats_sft_greedy"] for v in verdicts),
            "families_below_sft": sorted({f for v in verdicts for f in v["families_below_sft"]}),
            "harmful_compliance_rises": any(any(v["harmful_compliance_rises"].values()) for v in verdicts),
        }
        for baseline in ("sft_chosen", "ppo", "rounds_sft_samples"):
            if baseline in names and baseline != name:
                entry[f"over_{baseline}"] = {
                    kind: _mean_interval(gains(name, baseline, f"gold_{kind}"))
                    for kind in ("sampled", "greedy")
                }
        if "ppo_gold" in names and name != "ppo_gold":
            ceiling = family_gain("ppo_gold", "sft")
            entry["share_of_ceiling_gain"] = round(
                statistics.fmean(gains(name, "sft", "gold_sampled"))
                / statistics.fmean(gains("ppo_gold", "sft", "gold_sampled")),
                3,
            )
            entry["share_of_ceiling_gain_by_family"] = {
                f: round(g / max(ceiling[f], 1e-9), 3) for f, g in family_gain(name, "sft").items()
            }
        if "rounds" in runs[0][name]:
            entry["refreshed_rm_gain_on_held_out"] = refreshed_rm_gains([run[name]["rounds"] for run in runs])
        summary[name] = entry
    return summary


def refreshed_rm_gains(chains: list[list[dict]]) -> dict[str, dict]:
    """Per refresh round: how much more often the refreshed RM than the one before it ranks the round's
    held-out pairs as the judge did, with the interval of the mean over chains (the blind-spot figure)."""
    return {
        f"round {entry['round']}": _mean_interval(
            [rounds[i]["rm_accuracy_after"] - rounds[i]["rm_accuracy_before"] for rounds in chains]
        )
        for i, entry in enumerate(chains[0])
        if "rm_accuracy_before" in entry
    }


# Student's t at 97.5 % for 1..9 degrees of freedom: the interval of a mean over a few chains
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262)


def _mean_interval(values: list[float]) -> dict:
    """The mean over chains with the half-width of its 95 % t interval (None for one chain)."""
    mean, df = statistics.fmean(values), len(values) - 1
    half = (
        (T_975[df - 1] if df <= len(T_975) else 1.96) * statistics.stdev(values) / math.sqrt(len(values))
        if df
        else None
    )
    return {
        "mean": round(mean, 4),
        "ci95": None if half is None else round(half, 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--split", choices=tuple(SPLITS), default="eval")
    parser.add_argument(
        "--policies",
        nargs="+",
        default=["ppo", "ppo_gold", "dpo", "sft_chosen", "rounds"],
    )
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/align/chains")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    chains = {str(seed): run_chain(seed, args.cache, args.policies, args.split) for seed in args.chains}
    results = {"split": args.split, "prompts": SPLITS[args.split], "chains": chains}
    results["summary"] = over_chains(chains, args.policies)
    out = args.out or Path(f"results/chains_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def table(results: dict) -> str:
    """Per chain and policy: gold sampled and greedy (✓ beats the chain's SFT), KL; then the means."""
    lines = [
        "| chain | policy | gold T=0.7 | gold greedy | KL to SFT | families below SFT |",
        "|---|---|---|---|---|---|",
    ]
    for chain, policies in results["chains"].items():
        for name, f in policies.items():
            verdict = f.get("verdict", {})
            marks = ["✓" if verdict.get(f"beats_sft_{kind}") else "" for kind in ("sampled", "greedy")]
            lines.append(
                f"| {chain} | {name} | {f['gold_sampled']:.3f} {marks[0]} | {f['gold_greedy']:.3f} {marks[1]} | "
                f"{f.get('kl_to_reference', 0):.2f} | {', '.join(verdict.get('families_below_sft', [])) or '-'} |"
            )
    for name, entry in results["summary"].items():
        gain = entry["gain_sampled"]
        lines.append(
            f"mean gain of {name} over SFT, sampled: {gain['mean']:+.3f} ± {gain['ci95'] or float('nan'):.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
