"""The reward protocol shared by every online method, eval and labelling:

    score(prompts: list[str], responses: list[str]) -> list[float]

`prompts` are rendered prompt texts (chat template plus generation prompt, exactly what the policy
saw) and `responses` the raw completion texts, ending in the EOS text when the policy stopped. A
reward-model artifact and a Python `module:function` both satisfy it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from align.artifacts import Artifact, load_artifact
from align.errors import AlignError, ConfigError
from align.text.chat import prompt_text

RewardFn = Callable[[list[str], list[str]], list[float]]


class RewardModel:
    """A reward-model artifact behind the reward protocol: `RewardModel.load("runs/tiny/rm").score(p, r)`."""

    def __init__(self, model: Any, tokenizer: Any, artifact: Artifact | None = None, batch_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.artifact = artifact
        self.batch_size = batch_size

    @classmethod
    def load(cls, path: str | Path | Artifact, device: str | torch.device | None = None) -> RewardModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from align.models import load_pretrained, pick_device

        artifact = path if isinstance(path, Artifact) else load_artifact(path, expect_stage="rm")
        model = load_pretrained(AutoModelForSequenceClassification, artifact.model_dir, "a reward model")
        tokenizer = AutoTokenizer.from_pretrained(artifact.model_dir)
        return cls(model.to(device or pick_device()), tokenizer, artifact)

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        texts = [p + r for p, r in zip(prompts, responses, strict=True)]
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
                padding_side="right",
            ).to(device)
            scores.extend(self.model(**batch).logits[:, 0].float().tolist())
        return scores

    def score_messages(self, prompts: list[list[dict[str, str]]], responses: list[str]) -> list[float]:
        """Convenience for chat prompts: renders them with the RM's chat template first."""
        return self.score([prompt_text(self.tokenizer, p) for p in prompts], responses)

    __call__ = score


def score_file(reward_model: str, data: str) -> list[dict[str, Any]]:
    """`align rm score`: every (prompt, response) row of an sft-shaped file with the RM's score (the
    response read as finished, EOS appended)."""
    from align.data import load_data

    rows = load_data(data, "sft").rows
    scorer = RewardModel.load(reward_model)
    answers = [row["completion"][0]["content"] for row in rows]
    scores = scorer.score_messages(
        [r["prompt"] for r in rows], [a + scorer.tokenizer.eos_token for a in answers]
    )
    return [
        {"prompt": row["prompt"], "response": answer, "score": score}
        for row, answer, score in zip(rows, answers, scores, strict=True)
    ]


def load_judge(
    reward_model: str | None, reward: str | None, device: str | torch.device | None = None
) -> tuple[Artifact | None, RewardFn]:
    """The reward an online stage optimises or a labeller ranks with: an RM artifact (returned too, for
    the lineage, and loaded as a `RewardModel`) or an explicitly named Python `module:function`, checked
    against the protocol."""
    if reward is not None:
        return None, load_reward_function(reward)
    artifact = load_artifact(reward_model, expect_stage="rm")
    return artifact, RewardModel.load(artifact, device=device)


def load_reward_function(spec: str) -> RewardFn:
    """Import `module:function` (only ever from an explicit user flag) and check it follows the protocol."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--reward expects module:function, got '{spec}'")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ConfigError(f"--reward {spec}: cannot import module '{module_name}' ({exc})") from None
    except AttributeError:
        raise ConfigError(f"--reward {spec}: module '{module_name}' has no attribute '{attr}'") from None
    if not callable(function):
        raise ConfigError(f"--reward {spec}: '{attr}' is not callable")
    return checked(function, spec)


def checked(function: RewardFn, name: str) -> RewardFn:
    """Wrap a reward so a wrong return shape or type fails with a clear message, not deep in a stage."""

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        values = function(prompts, responses)
        if not hasattr(values, "__len__") or len(values) != len(prompts):
            raise AlignError(
                f"reward {name} returned {type(values).__name__} of length "
                f"{getattr(values, '__len__', lambda: '?')()}, expected {len(prompts)} floats"
            )
        try:
            return [float(v) for v in values]
        except (TypeError, ValueError):
            raise AlignError(f"reward {name} must return numbers, got {values[:3]!r}") from None

    return score


def trl_reward(reward: RewardFn, tokenizer: Any) -> Callable[..., list[float]]:
    """Our reward protocol as a TRL reward function `f(prompts, completions, completion_ids=...)`: rendered
    prompts, and responses that keep the EOS text when the policy stopped."""
    from align.decoding.generate import decode_response

    def align_reward(
        prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **_: Any
    ) -> list[float]:
        rendered = [prompt_text(tokenizer, p) if isinstance(p, list) else p for p in prompts]
        return reward(rendered, [decode_response(tokenizer, ids) for ids in completion_ids])

    return align_reward
