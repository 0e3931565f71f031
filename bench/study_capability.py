"""Is the offline default measuring alignment, not capability? SFT on *clean* demonstrations must solve
every family of the default preset (greedy correctness >= 0.9 in each), so the headroom RLHF finds
comes from the demonstrators' flaws alone.

    python bench/study_capability.py [--runs runs/tiny] [--out results/capability.json]

Needs runs/tiny/pretrain (`make demo`). Generates the default preset's demonstrations with every flaw
rate and the chatter rate at 0 (same seed, same prompts), fine-tunes the tiny base on them by
recipes/tiny/sft.yaml, and evaluates on data/synthetic/eval.jsonl. Outputs that exist are reused.
Prints one JSON line and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness import align, emit

from align.data.synthetic import PRESETS
from align.data.synthetic_sets import SynthSettings, write


def previous_seconds(out: Path) -> float | None:
    """The SFT time a cached run was measured at, kept across reruns that reuse it."""
    return json.loads(out.read_text()).get("sft_seconds") if out.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--out", type=Path, default=Path("results/capability.json"))
    args = parser.parse_args()
    work = args.runs / "capability"
    clean = SynthSettings(flaw_rates=dict.fromkeys(PRESETS["default"], 0.0), verbose_rate=0.0)
    if not (work / "data/sft.jsonl").exists():
        write(clean, work / "data")
    sft = work / "sft"
    seconds = None
    if not (sft / "manifest.json").exists():
        seconds = align(
            "sft", "--recipe", "recipes/tiny/sft.yaml", "--model", str(args.runs / "pretrain"),
            "--data", str(work / "data/sft.jsonl"), "--output", str(sft),
        )  # fmt: skip
    report = work / "eval.json"
    if not report.exists():
        align("eval", "--model", str(sft), "--json", str(report))
    figures = json.loads(report.read_text())
    by_family = figures["gold_greedy_by_family"]
    record = {
        "bench": "capability",
        "policy": "SFT on clean demonstrations (no flaws, no chatter) of the default preset",
        "gold_greedy": figures["gold_greedy"],
        "gold_greedy_by_family": by_family,
        "gold_sampled": figures["gold_sampled"],
        "gold_sampled_by_family": figures["gold_sampled_by_family"],
        "every_family_at_least_0.9_greedy": min(by_family.values()) >= 0.9,
        "sft_seconds": seconds if seconds is not None else previous_seconds(args.out),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    emit(record)


if __name__ == "__main__":
    main()
