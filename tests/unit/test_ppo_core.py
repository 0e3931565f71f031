"""PPO math pinned on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from align.stages.ppo import core

T = torch.tensor


def test_masked_mean_var_and_whiten() -> None:
    values, mask = T([[1.0, 2.0, 3.0, 100.0]]), T([[1.0, 1.0, 1.0, 0.0]])
    assert core.masked_mean(values, mask).item() == pytest.approx(2.0)
    assert core.masked_var(values, mask).item() == pytest.approx(1.0)  # unbiased: (1 + 0 + 1) / 2
    whitened = core.masked_whiten(values, mask)
    assert whitened.tolist()[0][:3] == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    assert whitened[0, 3].item() == 0.0  # masked entries are zeroed
    scaled = core.masked_whiten(values, mask, shift_mean=False)  # rewards: scaled, mean kept
    assert scaled.tolist()[0][:3] == pytest.approx([1.0, 2.0, 3.0], abs=1e-6)
    spread = core.masked_whiten(T([[2.0, 4.0, 6.0]]), T([[1.0, 1.0, 1.0]]), shift_mean=False)
    assert spread.tolist()[0] == pytest.approx(
        [4.0 - 1.0, 4.0, 4.0 + 1.0], abs=1e-6
    )  # unit spread, mean 4 kept


def test_truncate_at_eos_keeps_the_first_eos_even_when_pad_equals_eos() -> None:
    eos = pad = 0  # GPT-2's pad = eos
    responses = T([[5, 6, 0, 7, 0], [5, 6, 7, 8, 9], [0, 3, 3, 3, 3]])
    truncated, mask = core.truncate_at_eos(responses, [eos], pad)
    assert truncated.tolist() == [[5, 6, 0, 0, 0], [5, 6, 7, 8, 9], [0, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert core.last_token_indices(mask).tolist() == [2, 4, 0]
    assert core.first_true_indices(T([[False, True], [False, False]])).tolist() == [1, 2]


def test_kl_penalty_per_token_and_score_at_the_last_real_token() -> None:
    logprobs, ref = T([[-1.0, -2.0, -1.0, 1.0]]), T([[-1.5, -1.0, -1.0, 1.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0]])
    rewards, kl = core.per_token_rewards(T([2.0]), logprobs, ref, mask, kl_coef=0.1)
    assert kl.tolist()[0] == pytest.approx([0.5, -1.0, 0.0, 0.0])
    assert rewards.tolist()[0] == pytest.approx([-0.05, 0.1, 2.0, 0.0])  # nothing after EOS


def test_gae_with_masks_by_hand() -> None:
    rewards, values = T([[0.0, 0.0, 1.0, 5.0]]), T([[0.5, 0.6, 0.7, 9.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    advantages, returns = core.gae(rewards, values, mask, gamma, lam)
    d2 = 1.0 - 0.7  # last real token: V(next) = 0
    d1 = 0.0 + gamma * 0.7 - 0.6
    d0 = 0.0 + gamma * 0.6 - 0.5
    a2, a1 = d2, d1 + gamma * lam * d2
    a0 = d0 + gamma * lam * a1
    assert advantages.tolist()[0] == pytest.approx([a0, a1, a2, 0.0])
    assert returns.tolist()[0] == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7, 0.0])


def test_clipped_losses_by_hand() -> None:
    old = T([[0.0, 0.0]])
    new = T([[math.log(1.5), math.log(0.5)]])  # ratios 1.5 and 0.5
    advantages, mask = T([[1.0, -1.0]]), T([[1.0, 1.0]])
    values, old_values, returns = T([[1.0, 0.0]]), T([[0.0, 0.0]]), T([[2.0, 0.5]])
    stats = core.ppo_losses(new, old, advantages, values, old_values, returns, mask, 0.2, 0.2)
    # token 0: max(-1*1.5, -1*1.2) = -1.2; token 1: max(1*0.5, 1*0.8) = 0.8
    assert stats.policy_loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    # token 0: max((1-2)^2, (0.2-2)^2) = 3.24; token 1: max(0.25, 0.25)
    assert stats.value_loss.item() == pytest.approx(0.5 * (3.24 + 0.25) / 2)
    assert stats.clipfrac.item() == pytest.approx(1.0)
    expected_kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2
    assert stats.approxkl.item() == pytest.approx(expected_kl)
    assert stats.max_log_ratio.item() == pytest.approx(math.log(2.0))  # |log 0.5|
    assert stats.value_clipfrac.item() == pytest.approx(0.5)  # token 0's clipped loss is taken


def test_micro_batches_add_up_to_the_minibatch_token_mean() -> None:
    """Rows with 3 and 1 real tokens: divided by the minibatch's 4 tokens, the two halves' losses sum
    to the token mean over all 4 (a mean of the halves' own means would weigh the 1-token row 3x)."""
    torch.manual_seed(0)
    new, old, advantages = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    values, old_values, returns = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    mask = T([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    args = (new, old, advantages, values, old_values, returns, mask)
    whole = core.ppo_losses(*args, 0.2, 0.2)
    halves = [core.ppo_losses(*(a[i : i + 1] for a in args), 0.2, 0.2, token_count=4.0) for i in (0, 1)]
    for key in ("policy_loss", "value_loss", "approxkl", "clipfrac", "ratio"):
        assert (getattr(halves[0], key) + getattr(halves[1], key)).item() == pytest.approx(
            getattr(whole, key).item()
        ), key
    own_means = [core.ppo_losses(*(a[i : i + 1] for a in args), 0.2, 0.2) for i in (0, 1)]
    assert (own_means[0].policy_loss + own_means[1].policy_loss).item() / 2 != pytest.approx(
        whole.policy_loss.item()
    )


def test_ratio_one_gives_zero_kl_and_no_clipping() -> None:
    logprobs = torch.randn(3, 5)
    stats = core.ppo_losses(
        logprobs,
        logprobs.clone(),
        torch.randn(3, 5),
        torch.zeros(3, 5),
        torch.zeros(3, 5),
        torch.ones(3, 5),
        torch.ones(3, 5),
        0.2,
        0.2,
    )
    assert stats.ratio.item() == pytest.approx(1.0)
    assert stats.approxkl.item() == pytest.approx(0.0, abs=1e-7)
    assert stats.clipfrac.item() == 0.0


def test_adaptive_kl_controller_follows_ziegler() -> None:
    controller = core.KLController(0.1, target=6.0, horizon=10000)
    controller.update(current_kl=12.0, n_steps=100)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    controller.update(current_kl=4.5, n_steps=100)  # error -0.25 clipped to -0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.002) * (1 - 0.002))
    fixed = core.KLController(0.1)
    fixed.update(50.0, 100)
    assert fixed.value == 0.1
    restored = core.KLController(1.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value


def test_explained_variance() -> None:
    returns, mask = T([[1.0, 2.0, 3.0]]), T([[1.0, 1.0, 1.0]])
    assert core.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert core.explained_variance(torch.zeros(1, 3) + 2.0, returns, mask) == pytest.approx(0.0)
