"""Rollouts: sample responses, then score every token with the policy, the reference and the critic.

Every forward pass counts positions from each sequence's first real token, because GPT-2's positions
are absolute and the prompts are left-padded; the scoring forwards run on packed rows (padding dropped,
`align.packing`) unless `ppo.packing` is off. Log-probs come from logits / temperature through an fp32
log-softmax, so the update sees exactly the distribution the rollout sampled from.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from align.distributed import Processes
from align.generation import decode_response, encode_left_padded, response_logprobs
from align.packing import batch_layout
from align.stages.ppo.core import INVALID_LOGPROB, truncate_at_eos
from align.static_decode import StaticStepper, supports


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


class Sampler(Protocol):
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
class HFSampler:
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
class LeanSampler:
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
    located in its cumulative sum. The distribution of `torch.multinomial` at a tenth of its cost on CPU
    (one uniform per row instead of one exponential per vocabulary entry); a zero-probability token is
    never drawn."""
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


@dataclass
class Rollout:
    """Steps 1-4 of a PPO iteration for this process's prompts: sample, truncate at EOS, score every
    token with the policy, the reference and the critic, score the responses."""

    policy: Any
    reference: Callable[[], Any]  # a context yielding the reference model
    critic: Any
    reward: Callable[[list[str], list[str]], list[float]]
    sampler: Sampler
    tokenizer: Any
    temperature: float
    missing_eos_penalty: float | None
    packing: bool

    @torch.no_grad()
    def collect(self, prompt_texts: list[str], uniforms: torch.Tensor) -> Trajectory:
        tokenizer, clock = self.tokenizer, _Clock()
        device = next(self.critic.parameters()).device
        queries = encode_left_padded(tokenizer, prompt_texts, device)
        query_length = queries["input_ids"].shape[1]
        # 1. sample
        raw = self.sampler.sample(
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
