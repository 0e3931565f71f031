"""PPO-RLHF math as pure tensor functions (Ziegler et al. 2019; Huang et al., "The N Implementation
Details of RLHF with PPO"). Shapes: B = batch (rollouts), T = response length. `mask` is 1.0 on real
response tokens (up to and including the first EOS) and 0.0 after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

INVALID_LOGPROB = 1.0  # placed on masked positions so a bug that reads them shows up as a huge KL


Total = Callable[[torch.Tensor], torch.Tensor]


def local_total(value: torch.Tensor) -> torch.Tensor:
    """One process: its own sum is the total."""
    return value


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    return masked_moments(values, mask, unbiased)[1]


def masked_moments(
    values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, total: Total = local_total
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance over the masked entries. `total` sums a tensor over every data-parallel
    process, so several processes get the statistics of their union, not each their own."""
    count = total(mask.sum())
    mean = total((values * mask).sum()) / count.clamp(min=1)
    variance = total(((values - mean) ** 2 * mask).sum()) / count.clamp(min=1)
    if unbiased and count > 1:
        variance = variance * count / (count - 1)
    return mean, variance


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, total: Total = local_total
) -> torch.Tensor:
    """Scale to unit variance over the masked entries; advantages are also shifted to mean 0, rewards not."""
    mean, variance = masked_moments(values, mask, total=total)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the first True, or the row length when there is none.  [B, T] -> [B]"""
    length = bools.shape[-1]
    positions = torch.arange(length, device=bools.device).expand_as(bools)
    return torch.where(bools, positions, length).min(dim=-1).values


def truncate_at_eos(
    responses: torch.Tensor, stop_ids: list[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace everything after the first stop token with padding; return (responses, mask [B, T] float).

    The stop token itself stays and counts as a response token (the policy chose to stop). Stops are
    found by token id among the sampled tokens only, never by comparing with the pad id, which for
    GPT-2 equals EOS.
    """
    is_stop = torch.isin(responses, torch.tensor(stop_ids, device=responses.device))
    stop_at = first_true_indices(is_stop)
    positions = torch.arange(responses.shape[1], device=responses.device).expand_as(responses)
    mask = positions <= stop_at.unsqueeze(1)
    return torch.where(mask, responses, pad_id), mask.float()


def last_token_indices(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real response token per row (where the score is placed).  [B, T] -> [B]"""
    return (mask.sum(dim=1).long() - 1).clamp(min=0)


def per_token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards[b, t] = -kl_coef * (log pi - log pi_ref) on real tokens, plus the score at the last one.

    Returns (rewards [B, T], kl [B, T]); both are 0 after EOS.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_indices(mask)] += scores
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response; V = 0 beyond the last real token.

    Returns (advantages, returns) [B, T] with returns = advantages + values.
    """
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last  # deltas after EOS are 0, so nothing leaks back across it
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


@dataclass
class LossStats:
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    approxkl: torch.Tensor
    clipfrac: torch.Tensor
    value_clipfrac: torch.Tensor
    ratio: torch.Tensor
    max_log_ratio: torch.Tensor  # the largest |log ratio| among the real tokens


def ppo_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    clip_range_value: float,
    token_count: torch.Tensor | float | None = None,
) -> LossStats:
    """Clipped surrogate policy loss and clipped value loss, as sums over the masked tokens divided by
    `token_count` (default: their number, i.e. masked means). A minibatch split into micro-batches, or
    over processes, passes the whole minibatch's count, so the parts add up to its token mean."""
    count = mask.sum().clamp(min=1) if token_count is None else token_count
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    policy_losses = torch.max(
        -advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    )
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    value_losses = torch.max((values - returns) ** 2, (clipped_values - returns) ** 2)

    def mean(per_token: torch.Tensor) -> torch.Tensor:
        return (per_token * mask).sum() / count

    with torch.no_grad():
        stats = (
            mean((ratio - 1.0) - log_ratio),
            mean(((ratio - 1.0).abs() > clip_range).float()),
            # where the clipped value loss is the one taken; tested on the clip itself, since
            # old + (v - old) is not v in floating point and would count unclipped tokens at random
            mean(
                (
                    ((values - old_values).abs() > clip_range_value)
                    & (value_losses > (values - returns) ** 2)
                ).float()
            ),
            mean(ratio),
            (log_ratio.abs() * mask).max() if mask.any() else log_ratio.new_zeros(()),
        )
    return LossStats(mean(policy_losses), 0.5 * mean(value_losses), *stats)


def language_model_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions `loss_mask` marks (PPO-ptx's term: the
    demonstrations' completions). logits [B, L, V], input_ids and loss_mask [B, L]."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logprobs = logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return -masked_mean(token_logprobs, loss_mask[:, 1:].float())


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    variance = masked_var(returns, mask)
    return float(1.0 - masked_var(returns - values, mask) / variance) if variance > 0 else float("nan")


class KLController:
    """Fixed coefficient, or adaptive (Ziegler et al. 2019): beta moves so the KL tracks a target.

    beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon)
    """

    def __init__(self, init: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target is None or not math.isfinite(current_kl):
            return
        error = max(-0.2, min(0.2, current_kl / self.target - 1.0))
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float | None]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.value, self.target, self.horizon = state["value"], state["target"], state["horizon"]
