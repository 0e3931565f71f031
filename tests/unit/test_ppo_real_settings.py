"""PPO at the settings of a hub GPT-2: dropout 0.1 in every network and a tokenizer whose pad is its EOS.
The micro models the rest of the suite uses are pretrained with dropout 0, so these are the tests that
fail when rollout and update score different networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from align.artifacts import load_artifact
from align.models import disable_dropout
from tests.conftest import REPO, error_line, invoke, logged_steps, sets

PROMPTS = REPO / "data/synthetic/ppo.jsonl"
MICRO_PPO = sets(
    "ppo.rollouts=16",
    "ppo.mini_batch_size=8",
    "ppo.micro_batch_size=4",
    "ppo.max_new_tokens=12",
    "ppo.ppo_epochs=2",
    "train.save_steps=0",
    "ppo.sample_every=0",
)


def ppo(runner, policy: Path, output: Path, *extra: str):
    return invoke(
        runner,
        "ppo",
        "--model",
        policy,
        "--prompts",
        PROMPTS,
        "--output",
        output,
        "--lr",
        "3e-3",
        *MICRO_PPO,
        *extra,
    )


def test_disabled_dropout_makes_train_mode_forwards_identical() -> None:
    """A GPT-2 with hub dropout plus a LoRA adapter with its own dropout, and a Llama whose attention reads
    a float `attention_dropout`: after `disable_dropout`, two forwards in train mode agree exactly
    (before it they do not)."""
    from peft import get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from align.config import LoraSettings
    from align.models import lora_config
    from tests.conftest import HUB_DROPOUT, random_llama

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, **HUB_DROPOUT))
    gpt2 = get_peft_model(gpt2, lora_config(LoraSettings(r=4, dropout=0.1), gpt2))
    llama = random_llama(64)
    llama.config.attention_dropout = 0.1
    for attention in (layer.self_attn for layer in llama.model.layers):
        attention.attention_dropout = 0.1
    ids = torch.randint(0, 64, (2, 12))
    # GPT-2: embedding, then per block attention, residual and MLP dropout and 4 LoRA layers (c_attn, both
    # c_proj, c_fc); Llama: each layer's float attention_dropout
    for model, expected in ((gpt2, 1 + 2 * 3 + 2 * 4), (llama, 2)):
        model.train()
        assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
        assert disable_dropout(model) == expected
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
        assert disable_dropout(model) == 0  # nothing left on


def test_ppo_on_hub_gpt2_settings_starts_every_update_at_ratio_one(
    runner, micro_hub_sft: Path, micro_hub_rm: Path, tmp_path: Path
) -> None:
    """LoRA policy with dropout 0.1, the RM (dropout 0.1) carrying the critic adapter, the tokenizer's pad
    its EOS: every step's first minibatch has ratio 1, approx-KL ~0 and no clipping, and the manifest
    says which dropout layers were switched off."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(micro_hub_sft)
    assert tokenizer.pad_token is None and not tokenizer.chat_template  # as hub GPT-2 ships
    result = ppo(runner, micro_hub_sft, tmp_path / "ppo", "--reward-model", micro_hub_rm, "--max-steps", "4")
    assert result.exit_code == 0, result.output
    artifact = load_artifact(tmp_path / "ppo")
    assert artifact.metrics["critic"] == "rm_lora"
    disabled = artifact.manifest["dropout_disabled"]  # the critic adapter sits on the RM's trunk
    assert set(disabled) == {"reward_model", "policy", "critic"}
    assert disabled["policy"] > 0 and disabled["reward_model"] > 0
    for step in logged_steps(artifact.path):
        assert step["first_ratio"] == pytest.approx(1.0, abs=1e-3), step["step"]
        assert step["first_clipfrac"] == 0.0, step["step"]
        assert step["first_approxkl"] < 1e-4 and step["first_max_log_ratio"] < 1e-2, step["step"]
    assert logged_steps(artifact.path)[-1]["kl"] > 0  # it did train


def test_full_fine_tuning_reference_copy_has_dropout_off(runner, micro_hub_sft: Path, tmp_path: Path) -> None:
    result = ppo(
        runner, micro_hub_sft, tmp_path / "ppo", "--full", "--reward", "align.data.synthetic:gold_reward"
    )
    assert result.exit_code == 0, result.output
    artifact = load_artifact(tmp_path / "ppo")
    assert artifact.manifest["dropout_disabled"]["reference"] > 0
    assert logged_steps(artifact.path)[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the copy is the policy


@pytest.mark.parametrize("plant", ["dropout", "temperature"])
def test_guard_stops_a_rollout_update_mismatch(
    runner, micro_hub_sft: Path, tmp_path: Path, monkeypatch, plant: str
) -> None:
    """Dropout left on, or rollout log-probs at another temperature than the update's: PPO stops before
    its first update with one line naming the likely causes, and writes no artifact; with
    `ppo.allow_ratio_mismatch=true` it trains anyway."""
    from align.stages.ppo import networks, rollout

    if plant == "dropout":
        monkeypatch.setattr(networks, "disable_dropout", lambda model: 0)
    else:
        scored = rollout.response_logprobs
        monkeypatch.setattr(
            rollout, "response_logprobs", lambda model, batch, t: scored(model, batch, t * 1.3)
        )
    reward = ("--reward", "align.data.synthetic:gold_reward", "--max-steps", "2")
    result = ppo(runner, micro_hub_sft, tmp_path / "ppo", *reward)
    assert result.exit_code == 2, result.output
    message = error_line(result.stderr)
    assert "before any update" in message
    for cause in ("dropout", "position ids", "temperature", "padding", "reference"):
        assert cause in message
    assert not (tmp_path / "ppo").exists()
    result = ppo(runner, micro_hub_sft, tmp_path / "ppo", *reward, *sets("ppo.allow_ratio_mismatch=true"))
    assert result.exit_code == 0, result.output
    assert logged_steps(tmp_path / "ppo")[0]["first_approxkl"] > 1e-4
