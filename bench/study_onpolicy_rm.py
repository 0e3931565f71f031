"""A reward model trained on the SFT policy's own answers (InstructGPT's data) against the one trained on
the synthetic candidate pairs: how well each picks among the policy's samples, and what PPO makes of it.

    python bench/study_onpolicy_rm.py [--runs runs/tiny] [--out results/onpolicy_rm.json]

Needs runs/tiny/sft and runs/tiny/rm (`make demo`). Makes `align pairs --recipe recipes/tiny/pairs.yaml`
(8 answers per prompt, gold-judged, 10 % of labels flipped, all distinct pairs) and an RM on them, then
for each RM: best-of-8 of the SFT policy on 600 held-out prompts judged by gold (beside a random pick
and the gold oracle's pick, per family), and PPO against the on-policy RM by the tiny recipe at each KL
coefficient, evaluated on the 1,200 held-out prompts (PPO against the synthetic-pairs RM is in
results/alignment*.json). Outputs that exist are reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from harness import align
from study_alignment import evaluate

ONPOLICY_RM_EPOCHS = "5"


def best_of_n(policy: Path, rms: dict[str, Path], n: int = 8, prompts: int = 600) -> dict:
    """Gold of the answer each RM ranks first among n samples, per family; random and oracle beside."""
    from align.chat import prompt_text
    from align.data import load_data
    from align.data.synthetic import family_of, gold_reward
    from align.generation import Sampling, sample_texts
    from align.models import load_policy, load_tokenizer, resolve_model
    from align.rewards import RewardModel

    source = resolve_model(str(policy))
    tokenizer = load_tokenizer(source, False)
    rows = load_data("data/synthetic/eval.jsonl", "prompts", prompts).rows
    rendered = [prompt_text(tokenizer, row["prompt"]) for row in rows]
    sampling = Sampling(temperature=0.7, max_new_tokens=24)
    responses = sample_texts(load_policy(source, False), tokenizer, rendered, sampling, 256, 7, n)
    repeated = [p for p in rendered for _ in range(n)]
    gold = gold_reward(repeated, responses)
    groups = [range(i * n, (i + 1) * n) for i in range(len(rendered))]
    pickers = {
        "random": lambda g: statistics.fmean(gold[j] for j in g),
        "oracle": lambda g: max(gold[j] for j in g),
    }
    for name, rm in rms.items():
        scores = RewardModel.load(rm, "cpu").score(repeated, responses)
        pickers[name] = lambda g, s=scores: gold[max(g, key=s.__getitem__)]
    results = {}
    for name, pick in pickers.items():
        by_family = defaultdict(list)
        for prompt, group in zip(rendered, groups, strict=True):
            by_family[family_of(prompt)].append(pick(group))
        results[name] = {
            "gold": round(statistics.fmean(v for values in by_family.values() for v in values), 4),
            "by_family": {f: round(statistics.fmean(v), 3) for f, v in sorted(by_family.items())},
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.2])
    parser.add_argument("--out", type=Path, default=Path("results/onpolicy_rm.json"))
    args = parser.parse_args()
    sft, pairs, work = args.runs / "sft", args.runs / "pairs", args.runs / "onpolicy-study"
    rms = {"synthetic_pairs_rm": args.runs / "rm", "onpolicy_rm": args.runs / "rm-onpolicy"}
    work.mkdir(parents=True, exist_ok=True)
    if not (pairs / "manifest.json").exists():
        align("pairs", "--recipe", "recipes/tiny/pairs.yaml", "--model", str(sft), "--output", str(pairs))
    if not (rms["onpolicy_rm"] / "manifest.json").exists():
        rm = ["rm", "--recipe", "recipes/tiny/rm.yaml", "--model", str(sft), "--data", str(pairs)]
        align(*rm, "--epochs", ONPOLICY_RM_EPOCHS, "--output", str(rms["onpolicy_rm"]))
    results = {
        "pairs": json.loads((pairs / "manifest.json").read_text())["metrics"],
        "onpolicy_rm": json.loads((rms["onpolicy_rm"] / "manifest.json").read_text())["metrics"],
        "best_of_8": best_of_n(sft, rms),
        "sft": evaluate(sft, rms["onpolicy_rm"], sft, work / "sft-eval.json"),
        "ppo": {},
    }
    rm = rms["onpolicy_rm"]
    for beta in args.betas:
        output = work / f"ppo-beta{beta}"
        if not (output / "manifest.json").exists():
            ppo = ["ppo", "--recipe", "recipes/tiny/ppo.yaml", "--model", str(sft), "--reward-model", str(rm)]
            align(*ppo, "--kl-coef", str(beta), "--output", str(output))
        figures = evaluate(output, rm, sft)
        results["ppo"][f"beta={beta}"] = {
            **figures,
            "gold_sampled_gain": round(figures["gold_sampled"] - results["sft"]["gold_sampled"], 4),
            "gold_greedy_gain": round(figures["gold_greedy"] - results["sft"]["gold_greedy"], 4),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["best_of_8"]))
    print(json.dumps({k: (v["gold_sampled_gain"], v["kl_to_reference"]) for k, v in results["ppo"].items()}))


if __name__ == "__main__":
    main()
