"""Per-token log-probs of responses under a model, and the sequence KL every method is compared with."""

from __future__ import annotations

from typing import Any

import torch

from align.decoding.generate import encode_left_padded
from align.decoding.packing import Layout, batch_layout, keeps_sequences_apart


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
