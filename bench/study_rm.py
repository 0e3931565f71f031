"""Reward-model recipes on the synthetic pairs: what moves held-out accuracy against the gold ranking.

    python bench/study_rm.py [--runs runs/tiny] [--work runs/tiny/rm-study] [--out results/reward_model.json]

Needs runs/tiny/pretrain and runs/tiny/sft (`make demo`). Trains each RM variant (learning rate, epochs,
the trunk it starts from: pretrained base, SFT policy, a longer-pretrained or a wider/deeper trunk) on
data/synthetic/pairs.jsonl and reports the stage's own held-out figures (10 % of the pairs, whole
groups, measured against the gold reward's order with ties excluded) beside the same accuracy on
training pairs: equal figures mean the trunk, not the data, is the limit. Outputs that exist are reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness import align

WIDE = ["--set", "arch.n_layer=6", "--set", "arch.n_embd=256", "--set", "arch.n_head=8"]

# Trunks made for the study: (output, align arguments). {work} and {runs} are filled in.
TRUNKS = [
    ("pre1500", ["pretrain", "--recipe", "recipes/tiny/pretrain.yaml", "--set", "train.max_steps=1500"]),
    ("sft1500", ["sft", "--recipe", "recipes/tiny/sft.yaml", "--model", "{work}/pre1500"]),
    ("big6-pretrain", ["pretrain", "--recipe", "recipes/tiny/pretrain.yaml", *WIDE]),
    ("big6-sft", ["sft", "--recipe", "recipes/tiny/sft.yaml", "--model", "{work}/big6-pretrain"]),
]
# RM variants: name -> (trunk, what differs from recipes/tiny/rm.yaml, align rm arguments)
VARIANTS = {
    "e2lr1e3": ("{runs}/sft", "2 epochs, lr 1e-3 (the earlier recipe)", ["--epochs", "2", "--lr", "1e-3"]),
    "e4lr1e3": ("{runs}/sft", "lr 1e-3", ["--lr", "1e-3"]),
    "e4lr3e3": ("{runs}/sft", "lr 3e-3", ["--lr", "3e-3"]),
    "e4lr3e4": ("{runs}/sft", "the recipe: 4 epochs, lr 3e-4", []),
    "e4lr1e4": ("{runs}/sft", "lr 1e-4", ["--lr", "1e-4"]),
    "frombase": ("{runs}/pretrain", "pretrained base, no SFT, lr 1e-3", ["--lr", "1e-3"]),
    "frompre1500": (
        "{work}/pre1500",
        "base pretrained 1,500 steps (3.3x), no SFT, lr 1e-3",
        ["--lr", "1e-3"],
    ),
    "fromsft1500": ("{work}/sft1500", "SFT of the 1,500-step base", []),
    "big6": ("{work}/big6-sft", "6 layers x 256 (4.8M) trunk, pretrained and SFT as the recipes", []),
}


def training_gold_accuracy(rm: Path, limit: int = 1500) -> float:
    """Gold-ranking accuracy on the pairs the RM trained on (the stage's own split, rebuilt)."""
    from align.artifacts import load_artifact
    from align.config import RMConfig, make_config
    from align.data import load_data
    from align.data.splits import by_group, hold_out
    from align.evaluation import reward_model_report
    from align.rewards import RewardModel
    from align.text.encoding import tokenize_pairs

    config = make_config(RMConfig, load_artifact(rm, expect_stage="rm").manifest["config"])
    scorer = RewardModel.load(rm)
    rows = tokenize_pairs(load_data(config.data, "pairs"), scorer.tokenizer, config.max_length, config.margin)
    train, _ = hold_out(rows, config.eval_fraction, config.train.seed, by_group)
    return reward_model_report(scorer, train[:limit], "train")["train_gold_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--work", type=Path, default=Path("runs/tiny/rm-study"))
    parser.add_argument("--out", type=Path, default=Path("results/reward_model.json"))
    args = parser.parse_args()
    fill = {"work": str(args.work), "runs": str(args.runs)}
    for name, command in TRUNKS:
        if not (args.work / name / "manifest.json").exists():
            align(*(part.format(**fill) for part in command), "--output", str(args.work / name))
    results = {}
    for name, (trunk, change, extra) in VARIANTS.items():
        output = args.work / name
        start = time.perf_counter()
        if not (output / "manifest.json").exists():
            command = ["rm", "--recipe", "recipes/tiny/rm.yaml", "--model", trunk.format(**fill), *extra]
            align(*command, "--output", str(output))
        metrics = json.loads((output / "manifest.json").read_text())["metrics"]
        results[name] = {
            "change": change,
            "held_out_gold_accuracy": round(metrics["eval_gold_accuracy"], 4),
            "held_out_gold_pairs": metrics["eval_gold_pairs"],
            "ties_excluded": metrics["eval_gold_ties_excluded"],
            "training_gold_accuracy": round(training_gold_accuracy(output), 4),
            "train_loss": round(metrics["train_loss"], 4),
            "train_seconds": metrics["train_seconds"],
        }
        print(name, results[name], f"({time.perf_counter() - start:.0f} s)", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| RM variant | held-out gold accuracy | on training pairs | train loss |\n|---|---|---|---|")
    for r in results.values():
        print(
            f"| {r['change']} | {r['held_out_gold_accuracy']:.3f} | "
            f"{r['training_gold_accuracy']:.3f} | {r['train_loss']:.3f} |"
        )


if __name__ == "__main__":
    main()
