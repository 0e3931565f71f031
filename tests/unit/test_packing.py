"""Packed rows give every response token the log-prob, value and gradient the padded batch gives it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from align.decoding import packing
from align.decoding.logprobs import response_logprobs
from align.errors import ConfigError
from align.stages.ppo.networks import ValueModel
from tests.conftest import random_llama

VOCAB = 50


def _model(architecture: str) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    if architecture == "llama":
        return random_llama(VOCAB)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor, int]:
    """Six rows: prompts of 2-7 tokens left-padded to 7, responses of 0-9 tokens right-padded to 9."""
    generator = torch.Generator().manual_seed(1)
    prompt_lengths, response_lengths = [7, 2, 5, 3, 6, 4], [9, 1, 0, 4, 9, 2]
    ids = torch.randint(2, VOCAB, (6, 16), generator=generator)
    mask = torch.zeros(6, 16, dtype=torch.long)
    for row, (p, r) in enumerate(zip(prompt_lengths, response_lengths, strict=True)):
        mask[row, 7 - p : 7 + r] = 1
    return ids.masked_fill(mask == 0, 1), mask, 7


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_packed_rows_score_like_the_padded_batch(architecture: str, monkeypatch) -> None:
    monkeypatch.setattr(packing, "ROW_TOKENS", 20)  # 53 real tokens: several packed rows
    model = _model(architecture)
    ids, mask, q = _batch()
    response_mask = mask[:, q:].bool()
    packed = packing.PackedLayout(ids, mask, q)
    padded = packing.PaddedLayout(ids, mask, q)
    assert packed.input_ids.shape[0] >= 3 and packed.input_ids.numel() < ids.numel()

    results = {}
    for name, layout in (("packed", packed), ("padded", padded)):
        model.zero_grad()
        logprobs, entropy = response_logprobs(model, layout, temperature=0.7)
        logprobs[response_mask].sum().backward()
        gradient = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[name] = logprobs[response_mask], entropy[response_mask], gradient
    for packed_value, padded_value in zip(results["packed"], results["padded"], strict=True):
        torch.testing.assert_close(packed_value, padded_value, atol=1e-5, rtol=1e-4)

    critic = ValueModel(model.base_model, nn.Linear(model.config.hidden_size, 1))
    with torch.no_grad():
        values = {
            name: layout.gather(critic(**layout.inputs())) for name, layout in (("p", packed), ("q", padded))
        }
    torch.testing.assert_close(values["p"][response_mask], values["q"][response_mask], atol=1e-5, rtol=1e-4)


def test_first_fit_fills_rows_longest_first() -> None:
    rows, offsets = packing._first_fit([5, 9, 3, 6, 2], width=10)
    assert rows == [2, 0, 1, 1, 2] and offsets == [0, 0, 6, 0, 5]


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_packing_check_passes_models_that_keep_sequences_apart(architecture: str) -> None:
    model = _model(architecture).train()
    packing.check_packing("policy", model)
    assert model.training  # the check runs with dropout off and hands the module back as it was
    critic = ValueModel(model.base_model, nn.Linear(model.config.hidden_size, 1))
    packing.check_packing("critic", critic)


def test_packing_check_rejects_attention_that_ignores_position_restarts(monkeypatch) -> None:
    import transformers.masking_utils

    monkeypatch.setattr(transformers.masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    model = _model("gpt2")
    with pytest.raises(ConfigError, match="ppo.packing=false"):
        packing.check_packing("policy", model)
