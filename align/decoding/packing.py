"""Batch layouts for the PPO forwards: scoring (prompt, response) rows with or without their padding.

A PPO batch is left-padded prompts followed by right-padded responses, so most of its columns can be
padding (README, Performance, counts it on the offline default). `PackedLayout` lays the
real tokens of several rows end to end in a few fixed-length rows, with positions restarting at 0 for
each sequence; transformers reads the restarts from `position_ids` (attention mask None, no cache) and
keeps each sequence's attention inside itself, so every token gets the logits it would get alone.
`PaddedLayout` is the plain layout, kept as the measured baseline and for models without that support.

Both answer the same questions: the per-position outputs that predict each response token, as
[B, T, ...] tensors aligned with the response mask.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import torch

from align.distributed import is_sharded
from align.errors import ConfigError

# Packed rows hold at least this many tokens (or the longest sequence): longer rows waste less padding,
# shorter ones less attention (each row attends over its whole length before the block mask applies).
ROW_TOKENS = 128


class Layout(Protocol):
    responses: torch.Tensor  # [B, T] response ids

    def inputs(self) -> dict[str, Any]:
        """Keyword arguments of the forward (ids, positions, mask)."""
        ...

    def gather(self, per_position: torch.Tensor) -> torch.Tensor:
        """[rows, columns, ...] outputs of the forward -> [B, T, ...] at the positions predicting each
        response token (the last prompt token for the first)."""
        ...

    def logits(self, model: Any) -> torch.Tensor:
        """The LM's logits [B, T, V] for the response tokens, computing the head only where needed."""
        ...


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (GPT-2's are absolute; prompts are left-padded)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


class PaddedLayout:
    def __init__(self, query_responses: torch.Tensor, attention_mask: torch.Tensor, query_length: int):
        self.query_responses, self.attention_mask = query_responses, attention_mask
        self.query_length = query_length
        self.responses = query_responses[:, query_length:]

    def inputs(self) -> dict[str, Any]:
        return {
            "input_ids": self.query_responses,
            "attention_mask": self.attention_mask,
            "position_ids": position_ids(self.attention_mask),
        }

    def gather(self, per_position: torch.Tensor) -> torch.Tensor:
        return per_position[:, self.query_length - 1 : -1]

    def logits(self, model: Any) -> torch.Tensor:
        if not _keeps_logits(model):
            return self.gather(model(**self.inputs()).logits)
        return model(**self.inputs(), logits_to_keep=self.responses.shape[1] + 1).logits[:, :-1]


class PackedLayout:
    """The real tokens of every row, first-fit into rows of `max(ROW_TOKENS, longest)` tokens."""

    def __init__(self, query_responses: torch.Tensor, attention_mask: torch.Tensor, query_length: int):
        device = query_responses.device
        self.responses = query_responses[:, query_length:]
        real = attention_mask.bool()
        lengths = real.sum(1)
        prompt_lengths = real[:, :query_length].sum(1)
        width = max(ROW_TOKENS, int(lengths.max()))
        row_of, offset_of = _first_fit(lengths.tolist(), width)
        row_of = torch.tensor(row_of, device=device)
        start = row_of * width + torch.tensor(offset_of, device=device)  # flat index of each sequence
        sequence = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
        within = torch.arange(len(sequence), device=device) - (lengths.cumsum(0) - lengths)[sequence]
        rows = int(row_of.max()) + 1
        # unused slots: token 0 at position 0, so each forms a one-token sequence of its own
        ids, positions = query_responses.new_zeros(rows * width), query_responses.new_zeros(rows * width)
        ids[start[sequence] + within] = query_responses[real]
        positions[start[sequence] + within] = within
        self.input_ids, self.position_ids = ids.view(rows, width), positions.view(rows, width)
        # response token j of row b is predicted at sequence position prompt_length - 1 + j; positions
        # past the row's response (masked out downstream) point at its last token to stay in range
        steps = torch.arange(self.responses.shape[1], device=device)
        last = (lengths - 1)[:, None]
        self.index = start[:, None] + torch.minimum(prompt_lengths[:, None] - 1 + steps, last)

    def inputs(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}

    def gather(self, per_position: torch.Tensor) -> torch.Tensor:
        return per_position.flatten(0, 1)[self.index]

    def logits(self, model: Any) -> torch.Tensor:
        """The head runs on the gathered final hidden states only (the LM computes one position's
        logits); models that transform logits after the head, and FSDP-sharded ones (whose head weight
        is gathered only inside their forward), get every position's logits instead."""
        if _transforms_logits(model) or is_sharded(model):
            return self.gather(model(**self.inputs()).logits)
        hidden = model(**self.inputs(), output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
        return _output_head(model)(self.gather(hidden))


def batch_layout(
    query_responses: torch.Tensor, attention_mask: torch.Tensor, query_length: int, packing: bool
) -> Layout:
    cls = PackedLayout if packing else PaddedLayout
    return cls(query_responses, attention_mask, query_length)


@torch.no_grad()
def keeps_sequences_apart(module: torch.nn.Module) -> bool:
    """Two 3-token sequences packed in one row come out as they do apart (dropout off for the check).
    An architecture whose attention ignores the position restarts would let packed sequences see each
    other, silently."""
    device = next(module.parameters()).device
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]], device=device)
    positions = torch.arange(3, device=device).expand(2, 3)
    mode = module.training
    module.eval()
    try:
        apart = module(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions)
        packed = module(input_ids=ids.reshape(1, 6), position_ids=positions.reshape(1, 6), use_cache=False)
    finally:
        module.train(mode)
    apart, packed = (getattr(out, "logits", out).float() for out in (apart, packed))
    return torch.allclose(packed.reshape(apart.shape), apart, atol=1e-4, rtol=1e-3)


def check_packing(name: str, module: torch.nn.Module) -> None:
    """A one-line error before PPO trains on packed rows that would not keep sequences apart."""
    if not keeps_sequences_apart(module):
        raise ConfigError(
            f"the {name} does not keep packed sequences apart (its attention ignores position_ids "
            "restarts); set ppo.packing=false"
        )


def _first_fit(lengths: list[int], width: int) -> tuple[list[int], list[int]]:
    """Row and offset of each sequence, longest first into the first row with room (first-fit decreasing)."""
    used: list[int] = []
    row_of, offset_of = [0] * len(lengths), [0] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, filled in enumerate(used) if filled + lengths[i] <= width), len(used))
        if row == len(used):
            used.append(0)
        row_of[i], offset_of[i] = row, used[row]
        used[row] += lengths[i]
    return row_of, offset_of


def _unwrapped(model: Any) -> Any:
    """The model under a DistributedDataParallel wrapper and a peft wrapper."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _keeps_logits(model: Any) -> bool:
    return "logits_to_keep" in _forward_parameters(type(_unwrapped(model)))


def _transforms_logits(model: Any) -> bool:
    """Soft-capped or scaled logits (Gemma, Cohere, Granite...) are not the head's output alone."""
    config = _unwrapped(model).config
    return not _keeps_logits(model) or any(
        getattr(config, name, None) not in (None, 1.0)
        for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    )


def _output_head(model: Any) -> Any:
    return _unwrapped(model).get_output_embeddings()


_PARAMETERS: dict[type, frozenset[str]] = {}


def _forward_parameters(cls: type) -> frozenset[str]:
    """The forward's parameter names, looked up once per model class."""
    if cls not in _PARAMETERS:
        _PARAMETERS[cls] = frozenset(inspect.signature(cls.forward).parameters)
    return _PARAMETERS[cls]
