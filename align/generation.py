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
from align.packing import Layout, batch_layout, keeps_sequences_apart


@dataclass
class Sampling:
    """Decoding settings; temperature None means greedy (or beam search with num_beams > 1).
    Training rollouts keep top_k=0 and top_p=1, so samples follow the distribution the log-probs describe."""

    temperature: float | None = 0.7
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 32
    num_beams: int = 1
    repetition_penalty: float = 1.0

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
    model: Any, tokenizer: Any, prompts: list[str], sampling: Sampling, batch_size: int = 64, seed: int = 0
) -> list[list[int]]:
    """Response token ids for rendered prompts, each cut after its first EOS (kept). Deterministic per seed."""
    torch.manual_seed(seed)
    model.eval()
    device = next(model.parameters()).device
    config = sampling.generation_config(tokenizer)
    responses: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_left_padded(tokenizer, prompts[start : start + batch_size], device)
        output = model.generate(**batch, generation_config=config)
        for row in output[:, batch["input_ids"].shape[1] :].tolist():
            cut = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
            responses.append(row[:cut])
    return responses


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    sampling: Sampling,
    batch_size: int = 64,
    seed: int = 0,
) -> list[str]:
    """Responses to chat prompts, in order, as text (see `decode_response`)."""
    return sample_texts(
        model, tokenizer, [prompt_text(tokenizer, p) for p in prompts], sampling, batch_size, seed
    )


def sample_texts(
    model: Any,
    tokenizer: Any,
    rendered: list[str],
    sampling: Sampling,
    batch_size: int = 64,
    seed: int = 0,
    n: int = 1,
) -> list[str]:
    """`n` responses to each rendered prompt as text, grouped by prompt (prompt i owns [i*n, (i+1)*n))."""
    repeated = [p for p in rendered for _ in range(n)]
    return [
        decode_response(tokenizer, row)
        for row in generate_ids(model, tokenizer, repeated, sampling, batch_size, seed)
    ]


def response_logprobs(model: Any, batch: Layout, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each response token and the entropy at each response position, from fp32 logits at
    the sampling temperature.  -> [B, T], [B, T]"""
    all_logprobs = torch.log_softmax(batch.logits(model).float() / temperature, dim=-1)
    logprobs = all_logprobs.gather(-1, batch.responses.unsqueeze(-1)).squeeze(-1)
    entropy = -(all_logprobs.exp() * all_logprobs).sum(-1)
    return logprobs, entropy


@torch.no_grad()
def sequence_kl(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: list[str],
    responses: list[list[int]],
    temperature: float,
    batch_size: int = 64,
) -> list[float]:
    """Summed per-token log-ratio log pi(y|x) - log pi_ref(y|x) of each sampled response (the KL estimate
    every method is compared with: the policy's own samples, at the evaluation temperature)."""
    device = next(policy.parameters()).device
    packing = keeps_sequences_apart(policy) and keeps_sequences_apart(reference)
    kls: list[float] = []
    for start in range(0, len(prompts), batch_size):
        queries = encode_left_padded(tokenizer, prompts[start : start + batch_size], device)
        rows = responses[start : start + batch_size]
        width = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, device=device)
        mask = torch.zeros((len(rows), width), device=device)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, device=device)
            mask[i, : len(row)] = 1.0
        query_responses = torch.cat([queries["input_ids"], ids], dim=1)
        attention = torch.cat([queries["attention_mask"], mask.long()], dim=1)
        batch = batch_layout(query_responses, attention, queries["input_ids"].shape[1], packing)
        logprobs, _ = response_logprobs(policy, batch, temperature)
        ref_logprobs, _ = response_logprobs(reference, batch, temperature)
        kls.extend(((logprobs - ref_logprobs) * mask).sum(1).tolist())
    return kls


def decode_response(tokenizer: Any, token_ids: list[int]) -> str:
    """Text up to the first EOS, plus the EOS text when there was one (never found via the pad id)."""
    eos = tokenizer.eos_token_id
    if eos in token_ids:
        return tokenizer.decode(token_ids[: token_ids.index(eos)]) + tokenizer.eos_token
    return tokenizer.decode(token_ids)
