"""The networks PPO holds, in the default two-trunk layout:

| layout (`critic`) | trunks in memory | what trains |
|---|---|---|
| policy LoRA + `rm_lora` (default with an RM) | 2: policy/reference, RM/critic | policy LoRA, critic LoRA + value head |
| policy LoRA + `rm_copy` (default with an RM under FSDP) | 3: policy/reference, RM, critic | policy LoRA, the whole critic |
| policy LoRA + `policy_copy` (default with a reward function) | 2: policy/reference, critic | policy LoRA, the whole critic |
| full fine-tuning (`lora.enabled: false`) | one more: a frozen reference copy | the whole policy |

The reference is the policy with its PPO adapter disabled. The SFT artifact is loaded merged, so
"adapter disabled" is the SFT policy, not the pretrained base. The critic's value head starts from the
RM's score head and is applied at every position. Dropout is switched off in every network whatever
its config says (hub GPT-2 ships 0.1): the update must score the network the rollout sampled from.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from align.artifacts import Artifact, intact, load_artifact
from align.config import PPOConfig
from align.errors import ConfigError
from align.models import ModelSource, disable_dropout, load_policy, lora_config
from align.rewards import RewardFn, RewardModel

Reference = Callable[[], AbstractContextManager[Any]]


class ValueModel(nn.Module):
    """A transformer trunk and a linear head read at every position: V(s_t) for each token."""

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, **inputs: Any) -> torch.Tensor:
        """Values [rows, columns] of a batch layout's `inputs()` (`align.decoding.packing`)."""
        hidden = self.trunk(**inputs).last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)


@dataclass
class Networks:
    policy: nn.Module
    reference: Reference  # a context yielding the reference (SFT) model
    critic: ValueModel
    reward: RewardFn  # what PPO optimises
    layout: str  # the critic layout `critic: auto` resolved to
    reward_artifact: Artifact | None  # the RM, for the lineage
    scorer: RewardModel | None  # the RM itself (its ensemble members' disagreement is logged)
    score_statistics: tuple[float, float] | None  # the RM's stored (mean, std) of training scores
    dropout_disabled: dict[str, int]  # per network, the dropout layers that were on


def build(
    config: PPOConfig,
    source: ModelSource,
    tokenizer: Any,
    judge: RewardFn,
    device: torch.device,
    sharded: bool,
) -> Networks:
    """Policy, reference, critic and reward for `config`, against `judge` (a `RewardModel` or any reward
    function); `sharded` when FSDP will shard what trains."""
    scorer = judge if isinstance(judge, RewardModel) else None
    dropout = {"reward_model": disable_dropout(scorer.model)} if scorer is not None else {}
    policy, reference, reference_copy = _policy(config, source, device)
    critic, layout, reward = _critic(config, source, tokenizer, scorer, judge, device, sharded)
    dropout.update(policy=disable_dropout(policy), critic=disable_dropout(critic))
    if reference_copy is not None:
        dropout["reference"] = disable_dropout(reference_copy)
    artifact = scorer.artifact if scorer is not None else None
    statistics = None
    if artifact is not None and config.ppo.normalize_scores and "reward_std" in artifact.metrics:
        statistics = (artifact.metrics["reward_mean"], max(artifact.metrics["reward_std"], 1e-6))
    return Networks(policy, reference, critic, reward, layout, artifact, scorer, statistics, dropout)


def _policy(
    config: PPOConfig, source: ModelSource, device: torch.device
) -> tuple[nn.Module, Reference, nn.Module | None]:
    """The trainable policy, a factory of contexts that yield the reference, and the reference's own
    copy when there is one (full fine-tuning)."""
    sft = load_policy(source, config.trust_remote_code).to(device)
    sft.config.use_cache = True
    if not config.lora.enabled:
        reference = copy.deepcopy(sft).eval().requires_grad_(False)
        return sft, lambda: nullcontext(reference), reference
    from peft import PeftModel, get_peft_model

    if config.init_adapter is None:
        policy = get_peft_model(sft, lora_config(config.lora, sft))
    else:
        adapter = _continued_adapter(config.init_adapter, source)
        policy = PeftModel.from_pretrained(sft, str(adapter.model_dir), is_trainable=True)
    return policy, lambda: _adapters_off(policy), None


def _continued_adapter(name: str, source: ModelSource) -> Artifact:
    """The PPO artifact a policy continues (iterated RLHF): a LoRA adapter trained on `source` itself, so
    that with the adapter off the reference is still `source`, not the policy being continued."""
    artifact = intact(load_artifact(name, expect_stage="ppo"))
    base = artifact.parent(artifact.manifest.get("base_model", {}).get("stage", ""))
    if artifact.manifest.get("model_format") != "lora" or base is None or source.artifact is None:
        raise ConfigError(f"init_adapter {name}: not a LoRA PPO artifact of an artifact policy")
    if base.sha256 != source.artifact.sha256:
        raise ConfigError(
            f"init_adapter {name}: its adapter was trained on {base.path}, not on {source.name}"
        )
    return artifact


def _critic(
    config: PPOConfig,
    policy_source: ModelSource,
    policy_tokenizer: Any,
    scorer: RewardModel | None,
    judge: RewardFn,
    device: torch.device,
    sharded: bool,
) -> tuple[ValueModel, str, RewardFn]:
    """The critic and the reward PPO optimises: for `rm_lora`, the RM scoring with the critic's adapter
    disabled (they share a trunk)."""
    layout = config.critic
    shares_vocab = scorer is not None and _same_token_ids(policy_tokenizer, scorer.tokenizer)
    if layout == "auto":
        layout = ("rm_copy" if sharded else "rm_lora") if shares_vocab else "policy_copy"
    if layout in ("rm_lora", "rm_copy") and not shares_vocab:
        raise ConfigError(
            f"critic '{layout}' needs a reward model with the policy's tokenizer; use critic=policy_copy"
        )
    if layout == "rm_lora" and sharded:
        raise ConfigError(
            "critic 'rm_lora' shares the frozen RM's trunk, which FSDP cannot shard for one and not the "
            "other; use critic=rm_copy or policy_copy"
        )
    if layout == "policy_copy":
        base = load_policy(policy_source, config.trust_remote_code)
        trunk = getattr(base, base.base_model_prefix)
        head = nn.Linear(base.config.hidden_size, 1, bias=False)
        nn.init.zeros_(head.weight)
        return ValueModel(trunk, head).to(device), layout, judge
    rm = scorer.model
    head = copy.deepcopy(rm.score).requires_grad_(True)
    if layout == "rm_copy":
        trunk = copy.deepcopy(getattr(rm, rm.base_model_prefix)).requires_grad_(True)
        return ValueModel(trunk, head), layout, judge
    from peft import get_peft_model

    shared = get_peft_model(rm, lora_config(config.critic_lora, rm, task_type=None))
    critic = ValueModel(getattr(rm, rm.base_model_prefix), head.to(device))

    def score_without_critic_adapter(prompts: list[str], responses: list[str]) -> list[float]:
        with shared.disable_adapter():
            return judge(prompts, responses)

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
