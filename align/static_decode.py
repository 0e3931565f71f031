"""GPT-2 decoding over a preallocated KV cache, written as plain tensor ops.

Per generated token, `transformers`' GPT-2 forward spends most of its time outside the matmuls (module
calls, mask building, cache bookkeeping): for the ~2M-parameter models of the offline default that is
about 80 % of a step on CPU. This module reads the (LoRA-merged) weights once and runs each decode step
as ~10 fused tensor ops per layer against a cache allocated for the whole rollout, writing keys and
values in place. The arithmetic is GPT-2's own (pre-LayerNorm blocks, scaled dot-product attention,
tied LM head), so the logits equal the reference forward's to float rounding (tested), and tokens are
drawn by the rollout engine's sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN


def supports(model: Any) -> bool:
    """Plain GPT-2 blocks only: the variants the functional forward does not reproduce go to the generic loop."""
    config = model.config
    return (
        getattr(config, "model_type", None) == "gpt2"
        and config.scale_attn_weights
        and not config.scale_attn_by_inverse_layer_idx
        and not config.reorder_and_upcast_attn
        and not getattr(config, "add_cross_attention", False)
    )


@dataclass
class _Layer:
    ln_1: tuple[torch.Tensor, torch.Tensor]
    attn_weight: torch.Tensor  # [C, 3C] (GPT-2's Conv1D layout: x @ W)
    attn_bias: torch.Tensor
    proj_weight: torch.Tensor
    proj_bias: torch.Tensor
    ln_2: tuple[torch.Tensor, torch.Tensor]
    fc_weight: torch.Tensor
    fc_bias: torch.Tensor
    out_weight: torch.Tensor
    out_bias: torch.Tensor


def _weights(module: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A Conv1D's weight and bias, looking through a LoRA wrapper (whose adapter is merged by then)."""
    base = getattr(module, "base_layer", module)
    return base.weight, base.bias


def _activation(name: str) -> Any:
    """GPT-2's tanh-approximated GELU as one fused op (the model's own is seven elementwise ops, a fifth
    of a decode step on CPU); the result agrees to float rounding."""
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return partial(F.gelu, approximate="tanh")
    return ACT2FN[name]


class StaticGPT2:
    """Functional view of a GPT-2 LM: reads the live parameters, so it stays in sync with training."""

    def __init__(self, model: Any):
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        trunk = lm.transformer
        config = lm.config
        self.heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.eps = config.layer_norm_epsilon
        self.act = _activation(config.activation_function)
        self.wte, self.wpe = trunk.wte.weight, trunk.wpe.weight
        self.lm_head = lm.lm_head.weight
        self.ln_f = (trunk.ln_f.weight, trunk.ln_f.bias)
        self.layers = [
            _Layer(
                (block.ln_1.weight, block.ln_1.bias),
                *_weights(block.attn.c_attn),
                *_weights(block.attn.c_proj),
                (block.ln_2.weight, block.ln_2.bias),
                *_weights(block.mlp.c_fc),
                *_weights(block.mlp.c_proj),
            )
            for block in trunk.h
        ]

    def new_cache(self, batch: int, length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Keys and values per layer, [B*H, length, D], filled as the rollout advances."""
        shape = (batch * self.heads, length, self.head_dim)
        return (
            [self.wte.new_empty(shape) for _ in self.layers],
            [self.wte.new_empty(shape) for _ in self.layers],
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: tuple[list[torch.Tensor], list[torch.Tensor]],
        start: int,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        """Logits of the last input position. `input_ids` [B, N] fill cache columns start..start+N;
        `bias` [B*H, N, start+N] is 0 where a new position may see a cached column and -inf elsewhere."""
        batch, length = input_ids.shape
        end = start + length
        keys, values = cache
        x = F.embedding(input_ids, self.wte) + F.embedding(positions, self.wpe)
        width = x.shape[-1]
        scale = self.head_dim**-0.5
        for index, layer in enumerate(self.layers):
            h = F.layer_norm(x, (width,), *layer.ln_1, self.eps)
            qkv = torch.addmm(layer.attn_bias, h.view(-1, width), layer.attn_weight)
            qkv = qkv.view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = (part.reshape(batch * self.heads, length, self.head_dim) for part in qkv)
            keys[index][:, start:end] = k
            values[index][:, start:end] = v
            scores = torch.baddbmm(bias, q, keys[index][:, :end].transpose(1, 2), alpha=scale)
            attention = torch.bmm(torch.softmax(scores, dim=-1), values[index][:, :end])
            attention = attention.view(batch, self.heads, length, self.head_dim).transpose(1, 2)
            x = x + torch.addmm(layer.proj_bias, attention.reshape(-1, width), layer.proj_weight).view_as(x)
            h = F.layer_norm(x, (width,), *layer.ln_2, self.eps)
            h = self.act(torch.addmm(layer.fc_bias, h.view(-1, width), layer.fc_weight))
            x = x + torch.addmm(layer.out_bias, h, layer.out_weight).view_as(x)
        last = F.layer_norm(x[:, -1], (width,), *self.ln_f, self.eps)
        return last @ self.lm_head.t()


class StaticStepper:
    """The decode-step interface of `LeanSampler` over `StaticGPT2`: a cache sized for the whole rollout
    and an additive attention bias per (row, head) that opens one column per generated token."""

    def __init__(self, model: Any, max_new_tokens: int):
        self.net = StaticGPT2(model)
        self.max_new_tokens = max_new_tokens

    def start(self, queries: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """Prefill the prompts; logits [B, V] of the first response token."""
        net, device = self.net, queries.device
        batch, self.column = queries.shape
        total = self.column + self.max_new_tokens
        self.cache = net.new_cache(batch, total)
        visible = torch.full((batch, total), float("-inf"), device=device, dtype=net.wte.dtype)
        visible[:, : self.column].masked_fill_(query_mask.bool(), 0.0)
        positions = (query_mask.long().cumsum(1) - 1).clamp(min=0)
        causal = torch.full((self.column, self.column), float("-inf"), device=device, dtype=visible.dtype)
        causal = causal.triu(1)
        prefill = causal + visible[:, None, : self.column]
        # a padding position sees itself, so no attention row is empty (its output is never used)
        prefill.diagonal(dim1=1, dim2=2).zero_()
        self.bias = visible.repeat_interleave(net.heads, dim=0)[:, None, :]
        self.position = positions[:, -1:]
        return net.forward(queries, positions, self.cache, 0, prefill.repeat_interleave(net.heads, dim=0))

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Append one token per row; logits [B, V] of the next."""
        column = self.column
        self.bias[:, :, column] = 0.0
        self.position = self.position + 1
        self.column += 1
        return self.net.forward(
            token[:, None], self.position, self.cache, column, self.bias[:, :, : column + 1]
        )
