"""Batched generation through transformers' `generate` for eval, `align generate`, chat, pairs and the
feedback pages: left-padded prompts, EOS-truncated text.

A response is returned as the decoded completion up to its first EOS, with the EOS text appended when
the model produced one, so reward functions can tell a finished answer from a cut-off one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from align.errors import ConfigError
from align.text.chat import prompt_text


@dataclass
class Decoding:
    """Decoding settings; temperature None means greedy (or beam search with num_beams > 1).
    Training rollouts keep top_k=0 and top_p=1, so samples follow the distribution the log-probs describe."""

    temperature: float | None = 0.7
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 32
    num_beams: int = 1
    repetition_penalty: float = 1.0

    @classmethod
    def from_options(
        cls,
        temperature: float,
        top_k: int,
        top_p: float,
        num_beams: int,
        repetition_penalty: float,
        max_new_tokens: int,
    ) -> Decoding:
        """From command-line options, where temperature 0 means greedy."""
        if temperature < 0 or num_beams < 1 or max_new_tokens < 1:
            raise ConfigError("--temperature must be >= 0, --num-beams and --max-new-tokens >= 1")
        return cls(temperature or None, top_k, top_p, max_new_tokens, num_beams, repetition_penalty)

    def generation_config(self, tokenizer: Any) -> GenerationConfig:
        sample = self.temperature is not None
        return GenerationConfig(
            do_sample=sample,
            temperature=self.temperature if sample else None,
            top_k=self.top_k if sample else None,
            top_p=self.top_p if sample else None,
            num_beams=self.num_beams,
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=self.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )


def encode_left_padded(tokenizer: Any, prompts: list[str], device: torch.device) -> Any:
    """Rendered prompts as one left-padded batch, so every row's continuation starts at the same column."""
    return tokenizer(
        prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    ).to(device)


@torch.no_grad()
def generate_ids(
    model: Any, tokenizer: Any, prompts: list[str], decoding: Decoding, batch_size: int = 64, seed: int = 0
) -> list[list[int]]:
    """Response token ids for rendered prompts, each cut after its first EOS (kept). Deterministic per seed."""
    torch.manual_seed(seed)
    model.eval()
    device = next(model.parameters()).device
    config = decoding.generation_config(tokenizer)
    responses: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_left_padded(tokenizer, prompts[start : start + batch_size], device)
        output = model.generate(**batch, generation_config=config)
        for row in output[:, batch["input_ids"].shape[1] :].tolist():
            cut = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
            responses.append(row[:cut])
    return responses


def respond(
    model: str, prompts: list[str] | None, data: str | None, decoding: Decoding, batch_size: int, seed: int
) -> list[dict[str, str]]:
    """`align generate`: the model's answers to user messages (or a prompts file's prompts), as rows."""
    from align.data import load_data
    from align.models import load_policy, load_tokenizer, pick_device, resolve_model

    if bool(prompts) == bool(data):
        raise ConfigError("give --prompt (repeatable) or --data FILE")
    conversations = (
        [r["prompt"] for r in load_data(data, "prompts").rows]
        if data
        else [[{"role": "user", "content": p}] for p in prompts or []]
    )
    source = resolve_model(model)
    tokenizer = load_tokenizer(source)
    policy = load_policy(source, inference=True).to(pick_device())
    rendered = [prompt_text(tokenizer, c) for c in conversations]
    responses = sample_texts(policy, tokenizer, rendered, decoding, batch_size, seed)
    return [
        {"prompt": c[-1]["content"], "response": r} for c, r in zip(conversations, responses, strict=True)
    ]


def sample_texts(
    model: Any,
    tokenizer: Any,
    rendered: list[str],
    decoding: Decoding,
    batch_size: int = 64,
    seed: int = 0,
    n: int = 1,
) -> list[str]:
    """`n` responses to each rendered prompt as text, grouped by prompt (prompt i owns [i*n, (i+1)*n))."""
    repeated = [p for p in rendered for _ in range(n)]
    return [
        decode_response(tokenizer, row)
        for row in generate_ids(model, tokenizer, repeated, decoding, batch_size, seed)
    ]


def decode_response(tokenizer: Any, token_ids: list[int]) -> str:
    """Text up to the first EOS, plus the EOS text when there was one (never found via the pad id)."""
    eos = tokenizer.eos_token_id
    if eos in token_ids:
        return tokenizer.decode(token_ids[: token_ids.index(eos)]) + tokenizer.eos_token
    return tokenizer.decode(token_ids)
