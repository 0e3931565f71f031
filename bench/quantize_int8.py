"""INT8 export against the fp32 export of the same policy: weight bytes, text perplexity and gold score.

    python bench/quantize_int8.py [--runs runs/tiny] [--policy ppo] [--out results/quantize_int8.json]

Needs a policy artifact (`make demo`). Exports it twice (`align export`, then `--quantize int8`) and
evaluates both with `align eval` on the same prompts and seed: gold score (sampled and greedy) and the
perplexity of the first 1,200 documents of the
pretraining corpus. Outputs that exist are reused. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from harness import align, emit, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--policy", default="ppo")
    parser.add_argument("--out", type=Path, default=Path("results/quantize_int8.json"))
    args = parser.parse_args()
    work = args.runs / "quantize"
    figures = {}
    for name, extra in (("fp32", ()), ("int8", ("--quantize", "int8"))):
        export, report = work / name, work / f"{name}-eval.json"
        if not (export / "manifest.json").exists():
            align("export", "--model", str(args.runs / args.policy), "--output", str(export), *extra)
        if not report.exists():
            align(
                "eval", "--model", str(export), "--reference", str(args.runs / "sft"),
                "--perplexity-data", "data/synthetic/pretrain.jsonl.gz", "--json", str(report),
            )  # fmt: skip
        manifest = json.loads((export / "manifest.json").read_text())
        files = [p for p in export.iterdir() if p.suffix == ".safetensors"]
        figures[name] = {
            **json.loads(report.read_text()),
            "weights_bytes": sum(p.stat().st_size for p in files),
            "parameters": manifest["metrics"]["parameters"],
        }
    fp32, int8 = figures["fp32"], figures["int8"]
    record = {
        "bench": "quantize_int8",
        "machine": machine(torch.device("cpu")),
        "policy": str(args.runs / args.policy),
        "weights_bytes": {"fp32": fp32["weights_bytes"], "int8": int8["weights_bytes"]},
        "size_ratio": round(int8["weights_bytes"] / fp32["weights_bytes"], 3),
        **{
            key: {"fp32": fp32[key], "int8": int8[key], "change": int8[key] - fp32[key]}
            for key in ("text_perplexity", "gold_sampled", "gold_greedy", "kl_to_reference")
            if key in fp32
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    emit(record)


if __name__ == "__main__":
    main()
