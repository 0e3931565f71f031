"""The `recipes/gpt2/` chain (sft -> rm -> ppo -> dpo) on a random GPT-2-shaped model in the hub layout,
a few steps each on the real data slices: the path a user of `--model gpt2` takes, exercised offline.

    python bench/gpt2_chain.py [--size gpt2] [--steps 2] [--runs runs/gpt2-chain] [--out results/gpt2_chain.json]

The model is saved with `save_pretrained` as a hub GPT-2 checkpoint is laid out: hub dropout (0.1 in
its three places) and a tokenizer with no pad token and no chat template. Each stage runs its recipe
with the hub datasets replaced by the slices in ../shared/data (Alpaca, HH-RLHF) and batch sizes cut
to fit a CPU. Reported: seconds per stage, and per PPO step the first minibatch's ratio, approx-KL,
clip fraction and max |log ratio| (before any update they must be 1, 0, 0, 0), plus the dropout layers
each PPO network had switched off. Stages whose artifact exists are reused. Prints one JSON line and
writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from harness import SIZES, align, emit, machine, random_model_dir

SHARED = Path(os.environ.get("ALIGN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ALPACA = SHARED / "alpaca/alpaca-data-subset-train-4500.json"
HH = SHARED / "hh-rlhf/harmless-base-test-slice-train-1312.jsonl.gz"


def stages(runs: Path, base: Path, steps: int) -> dict[str, list[str]]:
    """Each stage's recipe and the overrides that put it on the slices and on a CPU's batch sizes."""
    small = ["--set", "train.batch_size=2", "--set", "train.grad_accum=1", "--set", "max_length=256"]
    small += ["--set", "train.save_steps=0", "--set", "train.logging_steps=1", "--max-steps", str(steps)]
    return {
        "sft": [
            "--recipe",
            "recipes/gpt2/sft_alpaca.yaml",
            "--model",
            str(base),
            "--data",
            str(ALPACA),
            *small,
        ],
        "rm": [
            "--recipe",
            "recipes/gpt2/rm_hh.yaml",
            "--model",
            str(runs / "sft"),
            "--data",
            str(HH),
            *small,
        ],
        "ppo": [
            *("--recipe", "recipes/gpt2/ppo_hh.yaml", "--model", str(runs / "sft"), "--prompts", str(HH)),
            *("--reward-model", str(runs / "rm"), "--max-steps", str(steps)),
            *("--set", "ppo.rollouts=8", "--set", "ppo.mini_batch_size=4", "--set", "ppo.micro_batch_size=2"),
            *("--set", "ppo.max_new_tokens=16", "--set", "train.save_steps=0"),
        ],
        "dpo": [
            "--recipe",
            "recipes/gpt2/dpo_hh.yaml",
            "--model",
            str(runs / "sft"),
            "--data",
            str(HH),
            *small,
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt2")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=Path("runs/gpt2-chain"))
    parser.add_argument("--out", type=Path, default=Path("results/gpt2_chain.json"))
    args = parser.parse_args()
    runs = args.runs / args.size
    base = runs / "base" / args.size
    if not (base / "config.json").is_file():
        rows = json.loads(ALPACA.read_text())[:2000]
        texts = [" ".join(row[key] for key in ("instruction", "input", "output")) for row in rows]
        random_model_dir(args.size, runs / "base", hub_defaults=True, texts=texts)
    timings = runs / "seconds.json"  # each stage's wall time, kept for reruns that reuse its artifact
    seconds = json.loads(timings.read_text()) if timings.is_file() else {}
    for stage, stage_args in stages(runs, base, args.steps).items():
        output = runs / stage
        if not (output / "manifest.json").is_file():
            seconds[stage] = align(stage, *stage_args, "--output", str(output))
            timings.write_text(json.dumps(seconds))
    ppo = json.loads((runs / "ppo/manifest.json").read_text())
    steps = [json.loads(line) for line in (runs / "ppo/logs/metrics.jsonl").read_text().splitlines()]
    keys = ("first_ratio", "first_approxkl", "first_clipfrac", "first_max_log_ratio")
    record = {
        "bench": "gpt2_chain",
        "machine": machine(torch.device("cpu")),
        "model": f"random {args.size} GPT-2 in the hub layout (dropout 0.1, pad = eos)",
        "shape": SIZES[args.size],
        "seconds": seconds,
        "ppo_steps": [{"step": s["step"], **{k: s[k] for k in keys}} for s in steps],
        "ppo_dropout_disabled": ppo["dropout_disabled"],
        "ppo_critic": ppo["metrics"]["critic"],
        "rm_rows_dropped": json.loads((runs / "rm/manifest.json").read_text())["data"].get("dropped"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    emit(record)


if __name__ == "__main__":
    main()
