"""Rollout engines: how PPO samples its responses. `LeanEngine` is our decode loop (the static GPT-2
decoder, or any model's own forward and cache), `GenerateEngine` plain `model.generate`; both sample the
full softmax(logits / temperature) the log-probs describe (no top-k, no top-p).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from align.decoding.static_gpt2 import StaticStepper, supports


class RolloutEngine(Protocol):
    """The rollout engine interface: a faster engine can replace plain `generate` behind it."""

    def sample(
        self, model: Any, queries: torch.Tensor, query_mask: torch.Tensor, uniforms: torch.Tensor
    ) -> torch.Tensor:
        """Sampled response ids [B, T], T <= max_new_tokens (generation ends when every row has stopped).
        `uniforms` [B, max_new_tokens] are the random draws of each row (engines that can use them do)."""
        ...


class Stepper(Protocol):
    """One rollout's decoding state: the prompts' prefill, then one token per row at a time."""

    def start(self, queries: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] of the first response token."""
        ...

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] after appending `token` [B]."""
        ...


@dataclass
class GenerateEngine:
    """`model.generate`, drawing from torch's random state. Under FSDP every process runs the same number
    of forwards (`synced`), since each forward gathers the shards."""

    tokenizer: Any
    temperature: float
    max_new_tokens: int
    synced: bool = False
    top_k: int = 0  # 0 and 1.0: sample the full distribution the log-probs describe
    top_p: float = 1.0

    def sample(
        self, model: Any, queries: torch.Tensor, query_mask: torch.Tensor, uniforms: torch.Tensor
    ) -> torch.Tensor:
        from transformers import GenerationConfig

        config = GenerationConfig(
            do_sample=True,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        output = model.generate(
            input_ids=queries, attention_mask=query_mask, generation_config=config, synced_gpus=self.synced
        )
        return output[:, queries.shape[1] :]


@dataclass
class LeanEngine:
    """The rollout engine: a hand-written decode loop that stops as soon as every row has produced its
    EOS. GPT-2 models decode through `StaticGPT2` (plain tensor ops over a preallocated KV cache, LoRA
    folded into copies of the weights, FSDP2 shards gathered); other architectures step the model's own
    forward (adapters applied as in training) with its own cache. Tokens follow softmax(fp32 logits /
    temperature) exactly, as `generate` samples them, drawn by `draw` from each row's own uniforms, so a
    row's sample does not depend on which other rows share its batch or process."""

    tokenizer: Any
    temperature: float
    max_new_tokens: int

    @torch.no_grad()
    def sample(
        self, model: Any, queries: torch.Tensor, query_mask: torch.Tensor, uniforms: torch.Tensor
    ) -> torch.Tensor:
        stepper = StaticStepper(model, self.max_new_tokens) if supports(model) else _ModelStepper(model)
        return self._decode(stepper, queries, query_mask, uniforms)

    def _decode(
        self, stepper: Stepper, queries: torch.Tensor, query_mask: torch.Tensor, uniforms: torch.Tensor
    ) -> torch.Tensor:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        logits = stepper.start(queries, query_mask)
        finished = torch.zeros(queries.shape[0], dtype=torch.bool, device=queries.device)
        tokens = []
        for step in range(self.max_new_tokens):
            token = draw(torch.softmax(logits.float() / self.temperature, dim=-1), uniforms[:, step])
            token = torch.where(finished, torch.full_like(token, pad), token)
            tokens.append(token)
            finished |= token == eos
            if step == self.max_new_tokens - 1 or bool(finished.all()):
                break
            logits = stepper.step(token)
        return torch.stack(tokens, dim=1)


def draw(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of `probs` [B, V] by inverse-CDF sampling: the row's uniform `uniform` [B]
    located in its cumulative sum. The distribution of `torch.multinomial` for one uniform per row instead
    of one exponential per vocabulary entry; a zero-probability token is never drawn."""
    cdf = probs.cumsum(dim=-1)
    target = uniform.to(cdf)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=probs.shape[1] - 1)


def rollout_uniforms(seed: int, step: int, rows: int, tokens: int) -> torch.Tensor:
    """The random draws of a whole step's rollouts [rows, tokens], keyed by (seed, step) alone: global
    row g gets row g whatever the number of processes, and a resumed run gets the same draws."""
    key = int.from_bytes(hashlib.sha256(f"{seed}:{step}".encode()).digest()[:8], "little")
    return torch.rand(rows, tokens, generator=torch.Generator().manual_seed(key))


class _ModelStepper:
    """Any causal LM through its own forward and KV cache, with left-padding-aware positions."""

    def __init__(self, model: Any):
        self.model = model

    def start(self, queries: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        self.mask = query_mask.clone()
        positions = self.mask.long().cumsum(1) - 1
        self.position = positions[:, -1:]
        return self._forward(queries, positions.clamp(min=0), None)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        self.position = self.position + 1
        return self._forward(token[:, None], self.position, self.past)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, past: Any) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=past,
            use_cache=True,
        )
        self.past = out.past_key_values
        return out.logits[:, -1, :]
