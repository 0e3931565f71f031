"""A validation judge that PPO never optimises: every `ppo.validation_every` steps (and at step 0, the SFT
policy) it scores the policy's answers to a fixed set of validation prompts split off the training
prompts (never the evaluation prompts, so keeping the best checkpoint does not select on the test set).
The curve, the best step and the patience left are checkpointed, so `--resume` continues them;
`ppo.keep_best` makes the artifact the best step's policy, `ppo.early_stop_patience` ends a run that
has not improved for that many evaluations.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from align.rewards import RewardFn

# the validation prompts' random draws: the same at every evaluation, so checkpoints are compared on
# the same samples (common random numbers), and apart from every training step's (step >= 0)
VALIDATION_STEP = -1


@dataclass
class Validation:
    name: str  # the metric name: the judge function's name without `_reward`, or `validation_rm`
    judge: RewardFn
    prompts: list[str]  # the fixed validation prompts (empty: only each step's rollouts are judged)
    curve: list[dict[str, float]] = field(default_factory=list)  # {step, score} per evaluation
    best_step: int | None = None
    best_score: float = float("-inf")
    stale: int = 0  # evaluations since the last improvement

    def record(self, step: int, scores: list[float]) -> bool:
        """Add an evaluation; True when it is the best so far (the first one counts: step 0 is SFT)."""
        score = statistics.fmean(scores)
        self.curve.append({"step": step, "score": score})
        if score > self.best_score:
            self.best_step, self.best_score, self.stale = step, score, 0
            return True
        self.stale += 1
        return False

    def exhausted(self, patience: int | None) -> bool:
        return patience is not None and self.stale >= patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "curve": self.curve,
            "best_step": self.best_step,
            "best_score": self.best_score,
            "stale": self.stale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curve, self.best_step, self.best_score = state["curve"], state["best_step"], state["best_score"]
        self.stale = state["stale"]

    def summary(self) -> dict[str, Any]:
        return {
            "best_step": self.best_step,
            f"best_{self.name}": self.best_score,
            "validation_curve": self.curve,
        }
