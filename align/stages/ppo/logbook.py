"""What a PPO run records: every step's figures in metrics.jsonl and TensorBoard (main process only),
the history checkpoints keep, the over-optimisation monitors' flags, and the artifact's summary."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch

from align.stages.ppo import core
from align.stages.ppo.monitors import Monitors, length_correlation
from align.stages.ppo.rollout import Trajectory

# the figures the summary averages over the last 10 steps
_FINAL = ("score", "kl", "rlhf_reward", "entropy", "eos_rate", "beta", "approxkl", "clipfrac")


def step_stats(t: Trajectory, kl: torch.Tensor, returns: torch.Tensor, beta: float) -> dict[str, Any]:
    """The rollout's figures: reward, KL, entropy, value fit, lengths, and the scores' length correlation."""
    sequence_kl = kl.sum(1)
    lengths = t.mask.sum(1)
    return {
        "score": t.raw_scores.mean().item(),
        "kl": sequence_kl.mean().item(),
        "rlhf_reward": (t.scores - beta * sequence_kl).mean().item(),
        "beta": beta,
        "entropy": core.masked_mean(t.entropy, t.mask).item(),
        "explained_variance": core.explained_variance(t.values, returns, t.mask),
        "response_length": lengths.mean().item(),
        "length_correlation": length_correlation(t.raw_scores, lengths),
        "eos_rate": t.ended.float().mean().item(),
        **{f"seconds_{part}": seconds for part, seconds in t.seconds.items()},
    }


class Logbook:
    def __init__(
        self,
        logs_dir: Path,
        main: bool,
        logging_steps: int,
        monitors: Monitors,
        judged: tuple[str, ...],
        tensorboard: bool = True,
        accelerator: Any = None,
    ):
        self.logs_dir, self.main, self.logging_steps = logs_dir, main, logging_steps
        self.tensorboard = tensorboard
        self.monitors, self.judged = monitors, judged  # the judges' metric names: first and final kept
        # the run's experiment trackers (`train.report_to` beyond TensorBoard), started by the stage
        self.accelerator = accelerator if accelerator is not None and accelerator.log_with else None
        self.history: list[dict[str, float]] = []
        self.board: Any = None

    def __enter__(self) -> Logbook:
        from torch.utils.tensorboard import SummaryWriter

        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.board = SummaryWriter(log_dir=str(self.logs_dir)) if self.main and self.tensorboard else None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.board is not None:
            self.board.close()
        if self.accelerator is not None:
            self.accelerator.end_training()

    def record(self, step: int, stats: dict[str, Any]) -> dict[str, Any]:
        """Add the step's figures (and the monitors' flags) to the history and the logs."""
        numbers = {k: v for k, v in {"step": step, **stats}.items() if isinstance(v, (int, float))}
        self.history.append(numbers)
        flags = self.monitors.check(self.history)
        numbers.update(flags)
        record = {"step": step, **stats, **flags}
        if self.main:
            with open(self.logs_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        if step % self.logging_steps == 0:
            finite = {
                f"ppo/{key}": value
                for key, value in record.items()
                if isinstance(value, (int, float)) and math.isfinite(value) and key != "step"
            }
            if self.board is not None:
                for key, value in finite.items():
                    self.board.add_scalar(key, value, step)
            if self.accelerator is not None:
                self.accelerator.log(finite, step=step)  # the trackers log on the main process only
        return record

    def truncate(self, step: int) -> None:
        """Drop the logged steps after `step` (a resumed run is about to run them again)."""
        log = self.logs_dir / "metrics.jsonl"
        if log.exists() and self.main:
            kept = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= step]
            log.write_text("".join(line + "\n" for line in kept))

    def summary(self, processes: int) -> dict[str, Any]:
        history = self.history
        if not history:
            return {"steps": 0}
        window = history[-10:]
        summary: dict[str, Any] = {"steps": history[-1]["step"], "first_score": history[0]["score"]}
        summary["first_entropy"] = history[0]["entropy"]
        for key in (*_FINAL, *self.judged):
            if key in window[0]:
                summary[f"final_{key}"] = statistics.fmean(r[key] for r in window)
        for key in self.judged:
            summary[f"first_{key}"] = history[0][key]
        summary["monitors_tripped"] = sorted(self.monitors.tripped)
        summary["processes"] = processes
        summary["seconds_rollout"] = sum(r["seconds_rollout"] for r in history)
        summary["seconds_update"] = sum(r["seconds_update"] for r in history)
        return summary
