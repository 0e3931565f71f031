"""Batched generation for eval, generate and (later) PPO rollouts: left-padded prompts, EOS-truncated text.

A response is returned as the decoded completion up to its first EOS, with the EOS text appended when
the model produced one, so reward functions can tell a finished answer from a cut-off one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from align.chat import prompt_text


@dataclass
class Sampling:
    """Decoding settings; temperature None means greedy. Training rollouts keep top_k=0, top_p=1."""

    temperature: float | None = 0.7
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 32

    def generation_config(self, tokenizer: Any) -> GenerationConfig:
        sample = self.temperature is not None
        return GenerationConfig(
            do_sample=sample,
            temperature=self.temperature if sample else None,
            top_k=self.top_k if sample else None,
            top_p=self.top_p if sample else None,
            max_new_tokens=self.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    sampling: Sampling,
    batch_size: int = 64,
    seed: int = 0,
) -> list[str]:
    """Responses to chat prompts, in order. Deterministic for a given seed."""
    torch.manual_seed(seed)
    model.eval()
    device = next(model.parameters()).device
    texts = [prompt_text(tokenizer, p) for p in prompts]
    config = sampling.generation_config(tokenizer)
    responses: list[str] = []
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            output = model.generate(**batch, generation_config=config)
            completions = output[:, batch["input_ids"].shape[1] :]
            responses.extend(decode_response(tokenizer, row) for row in completions.tolist())
    finally:
        tokenizer.padding_side = padding_side
    return responses


def decode_response(tokenizer: Any, token_ids: list[int]) -> str:
    """Text up to the first EOS, plus the EOS text when there was one (never found via the pad id)."""
    eos = tokenizer.eos_token_id
    if eos in token_ids:
        return tokenizer.decode(token_ids[: token_ids.index(eos)]) + tokenizer.eos_token
    return tokenizer.decode(token_ids)
