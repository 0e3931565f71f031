"""A reward model trained on the SFT policy's own answers (InstructGPT's data) against the one trained on
the synthetic candidate pairs: how well each picks among the policy's samples, and what PPO makes of it,
then rounds of iterated RLHF (the RM refreshed on the answers PPO drifted to).

    python bench/study_onpolicy_rm.py [--runs runs/tiny] [--seeds 0 1 2] [--refreshes 2]
                                      [--out results/onpolicy_rm.json]

Needs runs/tiny/sft and runs/tiny/rm (`make demo`). Makes `align pairs --recipe recipes/tiny/pairs.yaml`
(8 answers per prompt, gold-judged, 10 % of labels flipped, all distinct pairs) and an RM on them. Each
refresh round samples judged pairs from the last round's PPO policies (3,000 prompts each), trains an
RM on every pair so far, and runs PPO against it. PPO runs by the tiny recipe at `--beta` for each seed
and at `--low-beta` for the first (over-optimisation), evaluated on the 1,200 held-out prompts (PPO
against the synthetic-pairs RM is in results/alignment*.json). For every RM: best-of-8 of the SFT policy
on 600 held-out prompts judged by gold (beside a random pick and the gold oracle's pick, per family) and
answer checks (right answer against a typical wrong one). Outputs that exist are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
from collections import defaultdict
from pathlib import Path

from harness import align
from study_alignment import evaluate, spread

ONPOLICY_RM_EPOCHS = "5"
REFRESHED_RM_EPOCHS = "4"


def best_of_n(policy: Path, rms: dict[str, Path], n: int = 8, prompts: int = 600) -> dict:
    """Gold of the answer each RM ranks first among n samples, per family; random and oracle beside."""
    from align.data import load_data
    from align.data.synthetic import family_of, gold_reward
    from align.decoding.generate import Decoding, sample_texts
    from align.models import load_policy, load_tokenizer, resolve_model
    from align.rewards import RewardModel
    from align.text.chat import prompt_text

    source = resolve_model(str(policy))
    tokenizer = load_tokenizer(source, False)
    rows = load_data("data/synthetic/eval.jsonl", "prompts", prompts).rows
    rendered = [prompt_text(tokenizer, row["prompt"]) for row in rows]
    sampling = Decoding(temperature=0.7, max_new_tokens=24)
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


def answer_checks(rm: Path, prompts: int = 1200) -> dict[str, float]:
    """How often the RM scores the right answer above a wrong one on held-out prompts: the last word
    against the first (the SFT's slip), against a word the prompt lacks, and against saying nothing;
    a count against count + 1; a sorted list against the reversed one. PPO finds every check it fails."""
    from align.data.synthetic import WORDS, parse_task
    from align.rewards import RewardModel
    from align.text.chat import prompt_text

    model = RewardModel.load(rm, "cpu")
    tokenizer = model.tokenizer
    eos, rng = tokenizer.eos_token, random.Random(0)
    checks: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for line in Path("data/synthetic/eval.jsonl").read_text().splitlines()[:prompts]:
        task = json.loads(line)["prompt"]
        family, answer = parse_task(task)
        prompt = prompt_text(tokenizer, [{"role": "user", "content": task}])
        words, reverse_sorted = task.split(":")[-1].split(), " ".join(sorted(answer.split(), reverse=True))
        if family == "last":
            checks["last_vs_first"].append((prompt, answer, words[0]))
            checks["last_vs_absent_word"].append(
                (prompt, answer, rng.choice([w for w in WORDS if w not in words]))
            )
            checks["last_vs_nothing"].append((prompt, answer, ""))
        elif family == "count":
            checks["count_vs_one_more"].append((prompt, answer, str(int(answer) + 1)))
        elif family == "sort" and answer != reverse_sorted:
            checks["sorted_vs_reversed"].append((prompt, answer, reverse_sorted))
    results = {}
    for name, items in checks.items():
        prompts_ = [prompt for prompt, _, _ in items]
        right = model.score(prompts_, [a + eos for _, a, _ in items])
        wrong = model.score(prompts_, [w + eos for _, _, w in items])
        results[name] = round(statistics.fmean(r > w for r, w in zip(right, wrong, strict=True)), 3)
    return results


def ppo_output(work: Path, beta: float, seed: int) -> Path:
    """Where PPO at `beta` with `seed` writes (seed 0 unsuffixed)."""
    return work / f"ppo-beta{beta}" if seed == 0 else work / f"ppo-beta{beta}-seed{seed}"


def ppo_against(rm: Path, sft: Path, runs: list[tuple[float, int]], work: Path) -> dict:
    """PPO by the tiny recipe against `rm` for each (KL coefficient, seed): gold and RM-score gains over
    the SFT policy scored by the same RM, and per coefficient their spread over seeds."""
    work.mkdir(parents=True, exist_ok=True)
    sft_figures = evaluate(sft, rm, sft, work / "sft-eval.json")
    per_beta: dict[str, dict[str, dict]] = defaultdict(dict)
    for beta, seed in runs:
        output = ppo_output(work, beta, seed)
        if not (output / "manifest.json").exists():
            ppo = ["ppo", "--recipe", "recipes/tiny/ppo.yaml", "--model", str(sft), "--reward-model", str(rm)]
            align(*ppo, "--kl-coef", str(beta), "--seed", str(seed), "--output", str(output))
        figures = evaluate(output, rm, sft)
        per_beta[f"beta={beta}"][str(seed)] = {
            **figures,
            "gold_sampled_gain": round(figures["gold_sampled"] - sft_figures["gold_sampled"], 4),
            "gold_greedy_gain": round(figures["gold_greedy"] - sft_figures["gold_greedy"], 4),
            "rm_score_gain": round(figures["rm_score_sampled"] - sft_figures["rm_score_sampled"], 4),
        }
    summary = {
        beta: {
            "seeds": len(seeds),
            **{
                key: spread([run[key] for run in seeds.values()])
                for key in ("gold_sampled_gain", "gold_greedy_gain", "rm_score_gain", "kl_to_reference")
            },
        }
        for beta, seeds in per_beta.items()
    }
    return {"sft": sft_figures, "runs": per_beta, "summary": summary}


def refreshed_rm(sft: Path, sources: dict[str, Path], policies: list[Path], work: Path) -> Path:
    """One refresh of iterated RLHF: judged pairs from each policy's own answers (3,000 prompts) join
    `sources` (name -> pairs artifact, updated), and an RM is trained on them all, so it has seen, ranked,
    the answers PPO drifted to."""
    for policy in policies:
        name = f"{work.name}-{policy.name}"
        sources[name] = work / f"pairs-{policy.name}"
        if not (sources[name] / "manifest.json").exists():
            args = ["--model", str(policy), "--limit", "3000", "--seed", "1", "--output", str(sources[name])]
            align("pairs", "--recipe", "recipes/tiny/pairs.yaml", *args)
    data = work / "data"  # one file per source: `align rm --data DIR` reads them all
    data.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        link = data / f"{name}.jsonl"
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(source / "data" / "pairs.jsonl", data))
    rm = work / "rm"
    if not (rm / "manifest.json").exists():
        args = [
            "--model",
            str(sft),
            "--data",
            str(data),
            "--epochs",
            REFRESHED_RM_EPOCHS,
            "--output",
            str(rm),
        ]
        align("rm", "--recipe", "recipes/tiny/rm.yaml", *args)
    return rm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--beta", type=float, default=0.2, help="KL coefficient of the multi-seed PPO runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--low-beta", type=float, default=0.05, help="one seed: the over-optimised contrast")
    parser.add_argument("--refreshes", type=int, default=2, help="rounds of iterated RLHF")
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
    runs = [(args.low_beta, args.seeds[0])] + [(args.beta, seed) for seed in args.seeds]
    ppo = {"onpolicy_rm": ppo_against(rms["onpolicy_rm"], sft, runs, work)}
    sources, policies_dir = {"sft": pairs}, work
    for refresh in range(1, args.refreshes + 1):
        policies = [ppo_output(policies_dir, beta, args.seeds[0]) for beta in (args.low_beta, args.beta)]
        policies_dir = work / f"refresh{refresh}"
        rms[f"refresh{refresh}_rm"] = refreshed_rm(sft, sources, policies, policies_dir)
        ppo[f"refresh{refresh}_rm"] = ppo_against(rms[f"refresh{refresh}_rm"], sft, runs, policies_dir)
    results = {
        "pairs": json.loads((pairs / "manifest.json").read_text())["metrics"],
        "reward_models": {
            name: json.loads((rm / "manifest.json").read_text())["metrics"] for name, rm in rms.items()
        },
        "answer_checks": {name: answer_checks(rm) for name, rm in rms.items()},
        "best_of_8": best_of_n(sft, rms),
        "ppo": ppo,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["answer_checks"]))
    for name, figures in ppo.items():
        print(name, json.dumps({beta: row["gold_sampled_gain"] for beta, row in figures["summary"].items()}))


if __name__ == "__main__":
    main()
