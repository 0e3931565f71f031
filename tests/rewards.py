"""Reward functions the tests hand to online stages as `tests.rewards:NAME`."""

from __future__ import annotations


def longer(prompts: list[str], responses: list[str]) -> list[float]:
    """Far from what SFT taught (short answers), so a working PPO visibly raises it in a few steps."""
    return [min(len(r.removesuffix("<|endoftext|>")), 40) / 40 for r in responses]


def shorter(prompts: list[str], responses: list[str]) -> list[float]:
    """The opposite of `longer`: a judge that a policy trained on `longer` can only disappoint."""
    return [1.0 - score for score in longer(prompts, responses)]


def wrong_length(prompts: list[str], responses: list[str]) -> list[float]:
    return [0.0]


def raises(prompts: list[str], responses: list[str]) -> list[float]:
    raise RuntimeError("the reward server is down")


def nan(prompts: list[str], responses: list[str]) -> list[float]:
    return [float("nan")] * len(responses)


def words(prompts: list[str], responses: list[str]) -> list[str]:
    return ["good"] * len(responses)


_CALLS = [0]


def interrupted_at_5(prompts: list[str], responses: list[str]) -> list[float]:
    """`longer`, until its 5th call (PPO's 5th step): then the run is interrupted as by Ctrl-C."""
    _CALLS[0] += 1
    if _CALLS[0] == 5:
        raise KeyboardInterrupt
    return longer(prompts, responses)
