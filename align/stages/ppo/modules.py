"""The networks PPO holds, in the default two-trunk layout:

| layout (`critic`) | trunks in memory | what trains |
|---|---|---|
| policy LoRA + `rm_lora` (default with an RM) | 2: policy/reference, RM/critic | policy LoRA, critic LoRA + value head |
| policy LoRA + `rm_copy` | 3: policy/reference, RM, critic | policy LoRA, the whole critic |
| policy LoRA + `policy_copy` (default with a reward function) | 2: policy/reference, critic | policy LoRA, the whole critic |
| full fine-tuning (`lora.enabled: false`) | one more: a frozen reference copy | the whole policy |

The reference is the policy with its PPO adapter disabled. The SFT artifact is loaded merged, so
"adapter disabled" is the SFT policy, not the pretrained base. The critic's value head starts from the
RM's score head and is applied at every position.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from align.artifacts import Artifact, load_artifact
from align.config import PPOConfig
from align.errors import ConfigError
from align.models import ModelSource, load_policy, lora_config
from align.rewards import RewardModel, load_reward_function

RewardFn = Callable[[list[str], list[str]], list[float]]


class ValueModel(nn.Module):
    """A transformer trunk and a linear head read at every position: V(s_t) for each token."""

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, **inputs: Any) -> torch.Tensor:
        """Values [rows, columns] of a batch layout's `inputs()` (`align.packing`)."""
        hidden = self.trunk(**inputs).last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)


def build_policy(
    config: PPOConfig, source: ModelSource, device: torch.device
) -> tuple[nn.Module, Callable[[], AbstractContextManager[Any]]]:
    """The trainable policy and a factory of contexts that yield the reference model."""
    sft = load_policy(source, config.trust_remote_code).to(device)
    sft.config.use_cache = True
    if not config.lora.enabled:
        reference = copy.deepcopy(sft).eval().requires_grad_(False)
        return sft, lambda: nullcontext(reference)
    from peft import get_peft_model

    policy = get_peft_model(sft, lora_config(config.lora, sft))
    return policy, lambda: _adapters_off(policy)


def build_reward(
    config: PPOConfig, device: torch.device
) -> tuple[Artifact | None, RewardModel | None, RewardFn]:
    if config.reward is not None:
        return None, None, load_reward_function(config.reward)
    artifact = load_artifact(config.reward_model, expect_stage="rm")
    scorer = RewardModel.load(artifact.path, device=device)
    return artifact, scorer, scorer.score


def build_critic(
    config: PPOConfig,
    policy_source: ModelSource,
    policy_tokenizer: Any,
    scorer: RewardModel | None,
    device: torch.device,
) -> tuple[ValueModel, str, RewardFn | None]:
    """The critic and, for `rm_lora`, a reward function that scores with the critic's adapter disabled."""
    layout = config.critic
    shares_vocab = scorer is not None and _same_token_ids(policy_tokenizer, scorer.tokenizer)
    if layout == "auto":
        layout = "rm_lora" if shares_vocab else "policy_copy"
    if layout in ("rm_lora", "rm_copy") and not shares_vocab:
        raise ConfigError(
            f"critic '{layout}' needs a reward model with the policy's tokenizer; use critic=policy_copy"
        )
    if layout == "policy_copy":
        base = load_policy(policy_source, config.trust_remote_code)
        trunk = getattr(base, base.base_model_prefix)
        head = nn.Linear(base.config.hidden_size, 1, bias=False)
        nn.init.zeros_(head.weight)
        return ValueModel(trunk, head).to(device), layout, None
    rm = scorer.model
    head = copy.deepcopy(rm.score).requires_grad_(True)
    if layout == "rm_copy":
        return (
            ValueModel(copy.deepcopy(getattr(rm, rm.base_model_prefix)).requires_grad_(True), head),
            layout,
            None,
        )
    from peft import get_peft_model

    shared = get_peft_model(rm, lora_config(config.critic_lora, rm, task_type=None))
    critic = ValueModel(getattr(rm, rm.base_model_prefix), head.to(device))

    def score_without_critic_adapter(prompts: list[str], responses: list[str]) -> list[float]:
        with shared.disable_adapter():
            return scorer.score(prompts, responses)

    return critic, layout, score_without_critic_adapter


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


@contextmanager
def _adapters_off(model: Any) -> Iterator[Any]:
    with model.disable_adapter():
        yield model


def _same_token_ids(policy_tokenizer: Any, rm_tokenizer: Any) -> bool:
    """The RM reads policy token ids unchanged (it may add tokens, e.g. a distinct pad)."""
    rm_vocab = rm_tokenizer.get_vocab()
    return all(rm_vocab.get(token) == index for token, index in policy_tokenizer.get_vocab().items())
