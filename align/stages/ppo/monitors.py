"""Over-optimisation monitors: per-step checks of a PPO run that print one warning line the first time
they trip and log a 0/1 flag every step (`monitor_<name>` in metrics.jsonl and TensorBoard).

| monitor | trips when | what it suggests |
|---|---|---|
| `length_hacking` | the step's scores correlate with response length above 0.6 and responses are 10 % longer than at step 1 | the reward pays for length |
| `proxy_divergence` | over the last 10 steps the reward score rose while the validation judge fell by more than 0.05 (against the 10 before) | the policy exploits the reward |
| `ensemble_disagreement` | the RM members' mean disagreement is twice that of step 1 and above 0.5 (standardised units) | responses the ensemble has not seen |
| `kl_above_target` | the KL to the reference passes twice `ppo.target_kl` (or 10 nats with a fixed beta) | the policy drifts from the SFT policy |
| `entropy_collapse` | the policy's entropy falls below a fifth of step 1's | sampling has become near-deterministic |
| `ratio_mismatch` | the first minibatch scores the rollout differently (only logged: the guard stops the run unless `ppo.allow_ratio_mismatch`) | dropout, positions, temperature, padding |
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable

import torch

logger = logging.getLogger("align")
WINDOW = 10


def length_correlation(scores: torch.Tensor, lengths: torch.Tensor) -> float:
    """Pearson correlation of the step's scores with the response lengths (0 when either is constant)."""
    if scores.numel() < 2 or scores.std() == 0 or lengths.float().std() == 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([scores.float(), lengths.float()]))[0, 1])


class Monitors:
    def __init__(self, validation: str | None, target_kl: float | None, ratio_limits: tuple[float, float]):
        self.validation, self.target_kl, self.ratio_limits = validation, target_kl, ratio_limits
        self.tripped: set[str] = set()

    def check(self, history: list[dict[str, float]]) -> dict[str, int]:
        """Flags for the newest row of `history` (the step just logged), warning once per monitor."""
        first, now = history[0], history[-1]
        checks: dict[str, tuple[bool, Callable[[], str]]] = {
            "length_hacking": (
                now["length_correlation"] > 0.6 and now["response_length"] > 1.1 * first["response_length"],
                lambda: (
                    f"scores follow response length (r={now['length_correlation']:.2f}, "
                    f"{now['response_length']:.1f} tokens vs {first['response_length']:.1f} at step 1)"
                ),
            ),
            "proxy_divergence": self._divergence(history),
            "ensemble_disagreement": (
                "ensemble_disagreement" in now
                and now["ensemble_disagreement"] > max(0.5, 2 * first["ensemble_disagreement"]),
                lambda: (
                    f"the RM members disagree {now.get('ensemble_disagreement', 0):.2f}, "
                    f"{first.get('ensemble_disagreement', 0):.2f} at step 1"
                ),
            ),
            "kl_above_target": (
                now["kl"] > (2 * self.target_kl if self.target_kl else 10.0),
                lambda: f"KL to the reference {now['kl']:.2f} nats",
            ),
            "entropy_collapse": (
                now["entropy"] < first["entropy"] / 5,
                lambda: f"entropy {now['entropy']:.3f}, {first['entropy']:.3f} at step 1",
            ),
            "ratio_mismatch": (
                now["first_approxkl"] > self.ratio_limits[0]
                or now["first_max_log_ratio"] > self.ratio_limits[1],
                lambda: f"first minibatch approx-KL {now['first_approxkl']:.2e}",
            ),
        }
        flags = {}
        for name, (tripped, describe) in checks.items():
            flags[f"monitor_{name}"] = int(tripped)
            if tripped and name not in self.tripped:
                self.tripped.add(name)
                logger.warning("monitor %s tripped at step %d: %s", name, now["step"], describe())
        return flags

    def _divergence(self, history: list[dict[str, float]]) -> tuple[bool, Callable[[], str]]:
        if self.validation is None or len(history) < 2 * WINDOW:
            return False, str
        recent, before = history[-WINDOW:], history[-2 * WINDOW : -WINDOW]

        def mean(rows: list[dict[str, float]], key: str) -> float:
            return statistics.fmean(r[key] for r in rows)

        score_gain = mean(recent, "score") - mean(before, "score")
        validation_loss = mean(before, self.validation) - mean(recent, self.validation)
        return (
            score_gain > 0 and validation_loss > 0.05,
            lambda: (
                f"reward score {score_gain:+.3f} while {self.validation} {-validation_loss:+.3f} over {WINDOW} steps"
            ),
        )
