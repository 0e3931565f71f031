"""The reward protocol shared by every online method, eval and labelling:

    score(prompts: list[str], responses: list[str]) -> list[float]

`prompts` are rendered prompt texts (chat template plus generation prompt, exactly what the policy
saw) and `responses` the raw completion texts, ending in the EOS text when the policy stopped. A
reward-model artifact and a Python `module:function` both satisfy it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from align.artifacts import Artifact, intact, load_artifact
from align.errors import AlignError, ConfigError
from align.text.chat import prompt_text

RewardFn = Callable[[list[str], list[str]], list[float]]


OBJECTIVES = ("mean", "min", "uwo")


class RewardModel:
    """A reward-model artifact behind the reward protocol: `RewardModel.load("runs/tiny/rm").score(p, r)`.

    An ensemble artifact (`align rm --ensemble K`) holds K members; each member's scores are standardised
    by its own statistics on the training pairs (Bradley-Terry scores are shift-invariant) and combined by
    the objective of Coste et al. 2023: `mean`, `min` (worst case) or `uwo` (the mean minus `penalty` x
    the variance across members). `members` and `spread` expose the members' scores and their
    disagreement (the standard deviation across members) of the last call. One member scores as it is.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        artifact: Artifact | None = None,
        batch_size: int = 64,
        members: list[tuple[Any, float, float]] | None = None,
        objective: str = "mean",
        penalty: float = 1.0,
    ):
        if objective not in OBJECTIVES:
            raise ConfigError(f"ensemble_objective must be one of {', '.join(OBJECTIVES)}, got '{objective}'")
        self.model = model.eval()  # the first member: its trunk carries PPO's rm_lora critic
        self.tokenizer = tokenizer
        tokenizer.truncation_side = "left"  # past the context a prompt loses its start, never the response
        config = model.config
        self.context = getattr(config, "n_positions", None) or getattr(
            config, "max_position_embeddings", None
        )
        self.artifact = artifact
        self.batch_size = batch_size
        self.members = members or [(self.model, 0.0, 1.0)]  # (model, mean, std) per member
        self.objective, self.penalty = objective, penalty
        self.spread: list[float] = []

    @classmethod
    def load(
        cls,
        path: str | Path | Artifact,
        device: str | torch.device | None = None,
        objective: str = "mean",
        penalty: float = 1.0,
    ) -> RewardModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from align.models import load_pretrained, pick_device

        artifact = path if isinstance(path, Artifact) else intact(load_artifact(path, expect_stage="rm"))
        device = device or pick_device()
        members = []
        for directory, stats in zip(member_dirs(artifact), _member_statistics(artifact), strict=True):
            model = load_pretrained(AutoModelForSequenceClassification, directory, "a reward model")
            members.append((model.to(device).eval(), *stats))
        tokenizer = AutoTokenizer.from_pretrained(artifact.model_dir)
        return cls(members[0][0], tokenizer, artifact, members=members, objective=objective, penalty=penalty)

    @torch.no_grad()
    def member_scores(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """[K, N] scores of every member, standardised by each member's own statistics (raw for one)."""
        texts = [p + r for p, r in zip(prompts, responses, strict=True)]
        device = next(self.model.parameters()).device
        rows = []
        for model, mean, std in self.members:
            scores: list[float] = []
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                    padding_side="right",
                    truncation=self.context is not None,
                    max_length=self.context,
                ).to(device)
                scores.extend(model(**batch).logits[:, 0].float().tolist())
            rows.append(
                torch.tensor(scores) if len(self.members) == 1 else (torch.tensor(scores) - mean) / std
            )
        return torch.stack(rows)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        members = self.member_scores(prompts, responses)
        self.spread = members.std(0, unbiased=False).tolist()
        return combine(members, self.objective, self.penalty).tolist()

    def score_messages(self, prompts: list[list[dict[str, str]]], responses: list[str]) -> list[float]:
        """Convenience for chat prompts: renders them with the RM's chat template first."""
        return self.score([prompt_text(self.tokenizer, p) for p in prompts], responses)

    __call__ = score


def combine(members: torch.Tensor, objective: str, penalty: float = 1.0) -> torch.Tensor:
    """Coste et al.'s ensemble objectives over [K, N] member scores -> [N]."""
    if objective == "min":
        return members.min(0).values
    mean = members.mean(0)
    return mean - penalty * members.var(0, unbiased=False) if objective == "uwo" else mean


def member_dirs(artifact: Artifact) -> list[Path]:
    """An RM artifact's member model directories: model/ first, then members/1 ... members/K-1."""
    extra = sorted((artifact.path / "members").glob("*"), key=lambda p: int(p.name))
    return [artifact.model_dir, *extra]


def _member_statistics(artifact: Artifact) -> list[tuple[float, float]]:
    """Each member's (mean, std) of scores on training pairs, which standardises it in an ensemble."""
    members = artifact.metrics.get("members") or [artifact.metrics]
    return [(m.get("reward_mean", 0.0), max(m.get("reward_std", 1.0), 1e-6)) for m in members]


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
    reward_model: str | None,
    reward: str | None,
    device: str | torch.device | None = None,
    objective: str = "mean",
    penalty: float = 1.0,
) -> tuple[Artifact | None, RewardFn]:
    """The reward an online stage optimises or a labeller ranks with: an RM artifact (returned too, for
    the lineage, and loaded as a `RewardModel` combining an ensemble's members by `objective`) or an
    explicitly named Python `module:function`, checked against the protocol."""
    if reward is not None:
        return None, load_reward_function(reward)
    artifact = load_artifact(reward_model, expect_stage="rm")
    return artifact, RewardModel.load(artifact, device, objective, penalty)


def judge_of(config: Any, device: str | torch.device | None = None) -> tuple[Artifact | None, RewardFn]:
    """`load_judge` for a stage config that names its judge (`reward_model` / `reward`) and how an
    ensemble's members combine."""
    return load_judge(
        config.reward_model, config.reward, device, config.ensemble_objective, config.uwo_penalty
    )


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


class RewardError(AlignError):
    """A user's reward function failed or returned something the protocol does not allow."""


def checked(function: RewardFn, name: str) -> RewardFn:
    """Wrap a reward so that raising, NaN, a wrong length or a non-number ends in one line naming the
    function and what it did, not deep in a stage (`--debug` shows the traceback)."""

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        try:
            values = function(prompts, responses)
        except Exception as exc:  # noqa: BLE001 - whatever the user's function raises is reported
            raise RewardError(f"reward {name} raised {type(exc).__name__}: {_first_line(exc)}") from exc
        if not hasattr(values, "__len__") or len(values) != len(prompts):
            raise RewardError(
                f"reward {name} returned {type(values).__name__} of length "
                f"{getattr(values, '__len__', lambda: '?')()}, expected {len(prompts)} floats"
            )
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            raise RewardError(f"reward {name} must return numbers, got {list(values)[:3]!r}") from None
        bad = sum(not math.isfinite(v) for v in numbers)
        if bad:
            raise RewardError(f"reward {name} returned NaN or infinity for {bad} of {len(numbers)} responses")
        return numbers

    return score


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


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
