"""One PPO step, measured: our rollout engine against `generate`, and our memory layout against the
naive four-model layout (policy, reference, critic, RM as separate full models).

    python bench/ppo_step.py [--runs runs/tiny] [--steps 12]

Needs runs/tiny/sft and runs/tiny/rm (`make demo`). Runs `align ppo` with the tiny recipe for a few steps
with each rollout engine (same seed) and reports the median seconds of rollout and update per step.
Memory counts the bytes of every distinct tensor the layout holds (weights, and Adam's two moments per
trainable parameter), from the modules PPO really builds. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def timed_run(runs: Path, engine: str, steps: int, out: Path) -> dict[str, float]:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "align.cli",
            "ppo",
            "--recipe",
            "recipes/tiny/ppo.yaml",
            "--model",
            str(runs / "sft"),
            "--reward-model",
            str(runs / "rm"),
            "--steps",
            str(steps),
            "--output",
            str(out),
            "--set",
            f"ppo.rollout_engine={engine}",
            "--set",
            "ppo.save_every=0",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows = [json.loads(line) for line in (out / "logs/metrics.jsonl").read_text().splitlines()][1:]
    return {
        key: round(statistics.median(r[key] for r in rows), 3)
        for key in ("seconds_rollout", "seconds_update", "response_length")
    }


def tensor_bytes(*modules: torch.nn.Module) -> tuple[int, int]:
    """(bytes of distinct weights, bytes of Adam state for the trainable ones) across the modules."""
    seen: dict[int, tuple[int, bool]] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            key = tensor.untyped_storage().data_ptr()
            size = tensor.untyped_storage().nbytes()
            trainable = seen.get(key, (0, False))[1] or tensor.requires_grad
            seen[key] = (size, trainable)
    weights = sum(size for size, _ in seen.values())
    adam = sum(2 * size for size, trainable in seen.values() if trainable)
    return weights, adam


def memory(runs: Path) -> dict[str, int | float]:
    import copy

    from align.config import PPOConfig, build_config
    from align.models import load_tokenizer, resolve_model
    from align.stages.ppo.modules import build_critic, build_policy, build_reward

    config = build_config(
        PPOConfig,
        "recipes/tiny/ppo.yaml",
        {"model": str(runs / "sft"), "reward_model": str(runs / "rm"), "output": "unused"},
    )
    device = torch.device("cpu")
    source = resolve_model(config.model)
    _, scorer, _ = build_reward(config, device)
    policy, reference = build_policy(config, source, device)
    critic, layout, _ = build_critic(config, source, load_tokenizer(source), scorer, device)
    with reference() as reference_model:
        ours = tensor_bytes(policy, reference_model, critic, scorer.model)
    full_policy = policy.merge_and_unload() if hasattr(policy, "merge_and_unload") else policy
    naive_models = [copy.deepcopy(full_policy) for _ in range(3)] + [copy.deepcopy(scorer.model)]
    for model in naive_models[1:3]:
        model.requires_grad_(False)
    naive_models[0].requires_grad_(True)  # policy and critic train in full
    naive_models[2].requires_grad_(True)
    naive = tensor_bytes(*naive_models)
    return {
        "layout": layout,
        "ours_weights_bytes": ours[0],
        "ours_adam_bytes": ours[1],
        "naive_weights_bytes": naive[0],
        "naive_adam_bytes": naive[1],
        "ratio_naive_vs_ours_total": round(sum(naive) / sum(ours), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engines = {e: timed_run(args.runs, e, args.steps, Path(tmp) / e) for e in ("generate", "lean")}
    print(
        json.dumps(
            {
                "bench": "ppo_step",
                "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}",
                "steps": args.steps,
                "per_step_median": engines,
                "ratio_rollout_generate_vs_lean": round(
                    engines["generate"]["seconds_rollout"] / engines["lean"]["seconds_rollout"], 3
                ),
                "memory": memory(args.runs),
            }
        )
    )


if __name__ == "__main__":
    main()
