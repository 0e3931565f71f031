"""One PPO step of the tiny recipe (rollout + reward + update), timed part by part: our rollout engine and
packed rows against plain `generate` and padded batches, in the same run.

    python bench/ppo_step.py [--device cpu|cuda] [--runs runs/tiny] [--steps 12]

Needs runs/tiny/sft and runs/tiny/rm (`make demo`). Runs `align ppo` with the tiny recipe for a few steps
each way (same seed) and reports the median seconds per step of generation, the policy/reference/critic
forwards, the reward, the update and the whole step. Everything but the rollout engine and the batch
layout (`ppo.packing`) is the same in both runs. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from harness import add_device, device_of, emit, machine, run_stage

PARTS = ("seconds_generation", "seconds_forward", "seconds_reward", "seconds_update", "response_length")


WAYS = {"ours": ("lean", "true"), "baseline": ("generate", "false")}  # rollout engine, packing


def timed_run(runs: Path, way: str, steps: int, out: Path, device: torch.device) -> dict[str, float]:
    engine, packing = WAYS[way]
    rows = run_stage(
        device,
        "ppo",
        out,
        *(
            "--recipe",
            "recipes/tiny/ppo.yaml",
            "--model",
            str(runs / "sft"),
            "--reward-model",
            str(runs / "rm"),
        ),
        *(
            "--max-steps",
            str(steps),
            "--set",
            f"ppo.rollout_engine={engine}",
            "--set",
            f"ppo.packing={packing}",
        ),
        *("--set", "train.save_steps=0"),
    )[1:]
    for row in rows:
        row["seconds_step"] = row["seconds_rollout"] + row["seconds_update"]
    return {key: round(statistics.median(r[key] for r in rows), 3) for key in (*PARTS, "seconds_step")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device(parser)
    parser.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    device = device_of(args)
    with tempfile.TemporaryDirectory() as tmp:
        ways = {way: timed_run(args.runs, way, args.steps, Path(tmp) / way, device) for way in WAYS}
    emit(
        {
            "bench": "ppo_step",
            "device": device.type,
            "machine": machine(device),
            "model": str(args.runs / "sft"),
            "steps": args.steps,
            **ways,
            "unit": "median seconds per step",
            "ratio": round(ways["baseline"]["seconds_step"] / ways["ours"]["seconds_step"], 3),
            **{
                f"ratio_{part}": round(
                    ways["baseline"][f"seconds_{part}"] / ways["ours"][f"seconds_{part}"], 3
                )
                for part in ("generation", "forward", "update")
            },
        }
    )


if __name__ == "__main__":
    main()
