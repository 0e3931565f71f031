"""Rollouts: sample responses, then score every token with the policy, the reference and the critic.

Every forward pass counts positions from each sequence's first real token, because GPT-2's positions
are absolute and the prompts are left-padded; the scoring forwards run on packed rows (padding dropped,
`align.decoding.packing`) unless `ppo.packing` is off. Log-probs come from logits / temperature through an fp32
log-softmax, so the update sees exactly the distribution the rollout sampled from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from align.decoding.engines import RolloutEngine
from align.decoding.generate import decode_response, encode_left_padded
from align.decoding.logprobs import response_logprobs
from align.decoding.packing import batch_layout
from align.distributed import Processes
from align.stages.ppo.core import INVALID_LOGPROB, truncate_at_eos


@dataclass
class Trajectory:
    """One batch of rollouts. B rollouts, Q prompt tokens (left-padded), T response tokens."""

    query_responses: torch.Tensor  # [B, Q+T] prompt then response ids, padded after the first EOS
    attention_mask: torch.Tensor  # [B, Q+T]
    query_length: int  # Q
    mask: torch.Tensor  # [B, T] 1.0 on response tokens up to and including the first EOS
    logprobs: torch.Tensor  # [B, T] policy log-probs at sampling time
    ref_logprobs: torch.Tensor  # [B, T] reference (SFT) log-probs
    values: torch.Tensor  # [B, T] critic values of the state before each response token
    entropy: torch.Tensor  # [B, T] policy entropy per token
    scores: torch.Tensor  # [B] reward of the whole response (after the missing-EOS penalty)
    raw_scores: torch.Tensor  # [B] reward as the reward model/function returned it
    ended: torch.Tensor  # [B] bool: the response contains its stop token
    prompt_texts: list[str]
    response_texts: list[str]
    seconds: dict[str, float]  # generation, forward (policy, reference, critic), reward


@dataclass
class Rollout:
    """Steps 1-4 of a PPO iteration for this process's prompts: sample, truncate at EOS, score every
    token with the policy, the reference and the critic, score the responses."""

    policy: Any
    reference: Callable[[], Any]  # a context yielding the reference model
    critic: Any
    reward: Callable[[list[str], list[str]], list[float]]
    engine: RolloutEngine
    tokenizer: Any
    temperature: float
    missing_eos_penalty: float | None
    packing: bool

    @torch.no_grad()
    def respond(self, prompt_texts: list[str], uniforms: torch.Tensor) -> list[str]:
        """The policy's sampled answers as text, nothing scored (the validation set's)."""
        device = next(self.critic.parameters()).device
        queries = encode_left_padded(self.tokenizer, prompt_texts, device)
        raw = self.engine.sample(
            self.policy, queries["input_ids"], queries["attention_mask"], uniforms.to(device)
        )
        return [decode_response(self.tokenizer, row) for row in raw.tolist()]

    @torch.no_grad()
    def collect(self, prompt_texts: list[str], uniforms: torch.Tensor) -> Trajectory:
        tokenizer, clock = self.tokenizer, _Clock()
        device = next(self.critic.parameters()).device
        queries = encode_left_padded(tokenizer, prompt_texts, device)
        query_length = queries["input_ids"].shape[1]
        # 1. sample
        raw = self.engine.sample(
            self.policy, queries["input_ids"], queries["attention_mask"], uniforms.to(device)
        )
        clock.lap("generation")
        # 2. cut each response after its first EOS; later tokens become padding and leave the mask
        responses, mask = truncate_at_eos(raw, [tokenizer.eos_token_id], tokenizer.pad_token_id)
        width = int(mask.sum(1).max().item())  # drop columns that are padding in every row
        responses, mask = responses[:, :width], mask[:, :width]
        query_responses = torch.cat([queries["input_ids"], responses], dim=1)
        attention_mask = torch.cat([queries["attention_mask"], mask.long()], dim=1)
        # 3. per-token log-probs (policy, reference) and values
        batch = batch_layout(query_responses, attention_mask, query_length, self.packing)
        logprobs, entropy = response_logprobs(self.policy, batch, self.temperature)
        with self.reference() as reference_model:
            ref_logprobs, _ = response_logprobs(reference_model, batch, self.temperature)
        values = batch.gather(self.critic(**batch.inputs())).float()
        invalid = mask == 0
        logprobs, ref_logprobs = (
            logprobs.masked_fill(invalid, INVALID_LOGPROB),
            ref_logprobs.masked_fill(invalid, INVALID_LOGPROB),
        )
        values, entropy = values.masked_fill(invalid, 0.0), entropy.masked_fill(invalid, 0.0)
        clock.lap("forward")
        # 4. score the decoded responses (EOS text kept, so rewards can tell finished from cut off)
        response_texts = [decode_response(tokenizer, row) for row in raw.tolist()]
        raw_scores = torch.tensor(
            self.reward(prompt_texts, response_texts), dtype=torch.float32, device=device
        )
        ended = torch.tensor([t.endswith(tokenizer.eos_token) for t in response_texts], device=device)
        scores = raw_scores.clone()
        if self.missing_eos_penalty is not None:
            scores = torch.where(ended, scores, scores - self.missing_eos_penalty)
        clock.lap("reward")
        return Trajectory(
            query_responses,
            attention_mask,
            query_length,
            mask,
            logprobs,
            ref_logprobs,
            values,
            entropy,
            scores,
            raw_scores,
            ended,
            prompt_texts,
            response_texts,
            clock.seconds,
        )


def gather_trajectory(local: Trajectory, processes: Processes, pad_id: int) -> Trajectory:
    """Every process's rollouts as one batch in global order, on every process: prompts left-padded and
    responses right-padded to the widest. The update then deals global minibatches out evenly, so N
    processes compute what one process with the whole batch computes."""
    if processes.size == 1:
        return local
    q = local.query_length
    queries = processes.gather_rows(local.query_responses[:, :q], pad_id, left=True)
    query_mask = processes.gather_rows(local.attention_mask[:, :q], 0, left=True)
    responses = processes.gather_rows(local.query_responses[:, q:], pad_id)
    mask = processes.gather_rows(local.mask, 0.0)
    return Trajectory(
        torch.cat([queries, responses], dim=1),
        torch.cat([query_mask, mask.long()], dim=1),
        queries.shape[1],
        mask,
        processes.gather_rows(local.logprobs, INVALID_LOGPROB),
        processes.gather_rows(local.ref_logprobs, INVALID_LOGPROB),
        processes.gather_rows(local.values, 0.0),
        processes.gather_rows(local.entropy, 0.0),
        processes.gather_rows(local.scores, 0.0),
        processes.gather_rows(local.raw_scores, 0.0),
        processes.gather_rows(local.ended.long(), 0).bool(),
        processes.gather_objects(local.prompt_texts),
        processes.gather_objects(local.response_texts),
        local.seconds,
    )


class _Clock:
    """Wall seconds between laps, by name (CPU ops are synchronous; on CUDA the next `.item()` or
    host copy that a lap ends with has waited for the device)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self.last
        self.last = now
