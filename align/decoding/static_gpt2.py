"""GPT-2 decoding over a preallocated KV cache, written as plain tensor ops.

Per generated token, `transformers`' GPT-2 forward spends most of its time outside the matmuls (module
calls, mask building, cache bookkeeping). This module reads the weights once per rollout and runs each
decode step as ~10 fused tensor ops per layer against a cache allocated for the whole rollout, writing
keys and values in place. A LoRA adapter is folded into copies of the weights it adapts (out of place:
the frozen base, which is also PPO's reference, stays bit-exact), and FSDP2 shards are gathered first.
The arithmetic is GPT-2's own (pre-LayerNorm blocks, scaled dot-product attention, tied LM head), so the
logits equal the reference forward's to float rounding (tested); the rollout engine draws the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from align.distributed import full_tensor
from align.errors import ConfigError


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
    """A Conv1D's weight and bias as the decoder reads them: a LoRA wrapper's active adapters added to a
    copy of its base weight (B A scaled, transposed into Conv1D's [in, out] layout)."""
    base = getattr(module, "base_layer", module)
    weight, bias = full_tensor(base.weight), full_tensor(base.bias)
    if base is module or module.disable_adapters or module.merged:
        return weight, bias
    for adapter in module.active_adapters:
        if adapter not in module.lora_A:
            continue
        if module.use_dora.get(adapter):
            raise ConfigError(
                "ppo.rollout_engine=lean folds plain LoRA only; use rollout_engine=generate with DoRA"
            )
        delta = full_tensor(module.lora_B[adapter].weight) @ full_tensor(module.lora_A[adapter].weight)
        delta = delta * module.scaling[adapter]
        weight = weight + (delta.t() if module.fan_in_fan_out else delta)
    return weight, bias


def _norm(layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return full_tensor(layer.weight), full_tensor(layer.bias)


def _activation(name: str) -> Any:
    """GPT-2's tanh-approximated GELU as one fused op (the model's own is seven elementwise ops, a fifth
    of a decode step on CPU); the result agrees to float rounding."""
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return partial(F.gelu, approximate="tanh")
    return ACT2FN[name]


class StaticGPT2:
    """Functional view of a GPT-2 LM, built for one rollout from the weights it has at that moment."""

    def __init__(self, model: Any):
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        trunk = lm.transformer
        config = lm.config
        self.heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.eps = config.layer_norm_epsilon
        self.act = _activation(config.activation_function)
        self.wte, self.wpe = full_tensor(trunk.wte.weight), full_tensor(trunk.wpe.weight)
        head = lm.lm_head.weight
        self.lm_head = self.wte if head is trunk.wte.weight else full_tensor(head)
        self.ln_f = _norm(trunk.ln_f)
        self.layers = [
            _Layer(
                _norm(block.ln_1),
                *_weights(block.attn.c_attn),
                *_weights(block.attn.c_proj),
                _norm(block.ln_2),
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
    """The decode-step interface of `LeanEngine` over `StaticGPT2`: a cache sized for the whole rollout
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
