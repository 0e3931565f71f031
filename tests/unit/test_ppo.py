"""`align ppo` on micro models: the first-minibatch sanity check, reward goes up, resume, layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.artifacts import load_artifact
from align.models import load_policy, resolve_model
from tests.conftest import REPO, invoke, logged_steps, random_llama, untimed

PROMPTS = REPO / "data/synthetic/ppo.jsonl"


def ppo_args(micro_sft: Path, output: Path, *extra: str) -> list:
    return [
        "ppo",
        "--model",
        micro_sft,
        "--prompts",
        PROMPTS,
        "--output",
        output,
        "--validation-reward",
        "align.data.synthetic:gold_reward",
        "--set",
        "ppo.rollouts=16",
        "--set",
        "ppo.mini_batch_size=8",
        "--set",
        "ppo.micro_batch_size=4",
        "--set",
        "ppo.max_new_tokens=12",
        "--set",
        "ppo.ppo_epochs=2",
        "--set",
        "train.save_steps=0",
        "--set",
        "ppo.sample_every=0",
        *extra,
    ]


def test_first_minibatch_ratio_is_one_and_rm_critic_shares_the_trunk(
    runner, micro_sft: Path, micro_rm: Path, tmp_path: Path
) -> None:
    result = invoke(
        runner, *ppo_args(micro_sft, tmp_path / "ppo", "--reward-model", micro_rm, "--max-steps", "3")
    )
    assert result.exit_code == 0, result.output
    artifact = load_artifact(tmp_path / "ppo", expect_stage="ppo")
    assert artifact.metrics["critic"] == "rm_lora"
    assert {p["stage"] for p in artifact.manifest["parents"]} == {"sft", "rm"}
    for step in logged_steps(artifact.path):
        # catches position-id, dropout, temperature and padding mismatches between rollout and update
        assert step["first_ratio"] == pytest.approx(1.0, abs=1e-5)
        assert step["first_approxkl"] == pytest.approx(0.0, abs=1e-6)
        assert step["first_clipfrac"] == 0.0
        assert 0.0 <= step["eos_rate"] <= 1.0 and "gold" in step
    assert logged_steps(artifact.path)[0]["kl"] == pytest.approx(
        0.0, abs=1e-4
    )  # policy starts as the reference
    lora_params = artifact.metrics["trainable_policy_parameters"]
    total = sum(p.numel() for p in load_policy(resolve_model(str(micro_sft))).parameters())
    assert lora_params < total / 2  # the reference is the same weights with adapters off, not a copy


def test_a_monitor_reward_is_logged_and_chooses_nothing(runner, micro_sft: Path, tmp_path: Path) -> None:
    """The synthetic gold as `monitor_reward`: logged each step and summarised, but keep-best and early
    stopping cannot select by it (they need a validation judge)."""

    def monitored(output: Path, *extra: str) -> list:
        args = ppo_args(micro_sft, output, "--max-steps", "2", "--reward", "tests.rewards:longer", *extra)
        args[args.index("--validation-reward")] = "--monitor-reward"
        return args

    result = invoke(runner, *monitored(tmp_path / "ppo"))
    assert result.exit_code == 0, result.output
    artifact = load_artifact(tmp_path / "ppo")
    assert all("gold" in step for step in logged_steps(artifact.path))
    assert "final_gold" in artifact.metrics and "best_step" not in artifact.metrics
    refused = invoke(runner, *monitored(tmp_path / "kept", "--set", "ppo.keep_best=true"))
    assert refused.exit_code == 2 and "validation judge" in refused.output


def test_ppo_raises_the_reward_and_reloads_as_a_policy(runner, micro_sft: Path, tmp_path: Path) -> None:
    result = invoke(
        runner,
        *ppo_args(
            micro_sft,
            tmp_path / "ppo",
            "--reward",
            "tests.rewards:longer",
            "--max-steps",
            "25",
            "--lr",
            "3e-3",
            "--set",
            "ppo.kl_coef=0.01",
            "--set",
            "ppo.missing_eos_penalty=null",
        ),
    )
    assert result.exit_code == 0, result.output
    steps = logged_steps(tmp_path / "ppo")
    first = sum(s["score"] for s in steps[:5]) / 5
    last = sum(s["score"] for s in steps[-5:]) / 5
    assert last > first + 0.05, (first, last)
    assert steps[-1]["kl"] > steps[0]["kl"]
    assert load_artifact(tmp_path / "ppo").metrics["critic"] == "policy_copy"
    policy = load_policy(resolve_model(str(tmp_path / "ppo")))  # SFT merged, then the PPO adapter
    assert policy.config.model_type == "gpt2"


def _demonstration_loss(policy_path: Path, rows: int = 96) -> float:
    import torch

    from align.data import load_data
    from align.models import load_tokenizer
    from align.stages.ppo.core import language_model_loss
    from align.text.encoding import tokenize_sft

    source = resolve_model(str(policy_path))
    policy, tokenizer = load_policy(source).eval(), load_tokenizer(source)
    encoded = tokenize_sft(load_data(str(REPO / "data/synthetic/sft.jsonl"), "sft", rows), tokenizer, 96)
    losses = []
    with torch.no_grad():
        for row in encoded:
            ids = torch.tensor([row["input_ids"]])
            losses.append(
                language_model_loss(policy(ids).logits, ids, torch.tensor([row["completion_mask"]]))
            )
    return float(torch.stack(losses).mean())


def test_ppo_ptx_keeps_the_policy_closer_to_the_demonstrations(
    runner, micro_sft: Path, tmp_path: Path
) -> None:
    """PPO-ptx mixes the LM loss of SFT demonstrations into every update: against a reward that pulls
    away from them ("longer"), the policy trained with it keeps a lower loss on the demonstrations than
    the same run (same seed) without it; the term is logged and the data recorded in the manifest."""
    common = ("--reward", "tests.rewards:longer", "--max-steps", "12", "--lr", "3e-3")
    ptx = ("--set", f"ptx_data={REPO / 'data/synthetic/sft.jsonl'}", "--set", "ppo.ptx_coef=2.0")
    for name, extra in (("plain", ()), ("ptx", ptx)):
        result = invoke(runner, *ppo_args(micro_sft, tmp_path / name, *common, *extra))
        assert result.exit_code == 0, result.output
    assert all("ptx_loss" in s for s in logged_steps(tmp_path / "ptx"))
    assert not any("ptx_loss" in s for s in logged_steps(tmp_path / "plain"))
    assert load_artifact(tmp_path / "ptx").manifest["ptx_data"]["rows"] > 0
    with_ptx, without = _demonstration_loss(tmp_path / "ptx"), _demonstration_loss(tmp_path / "plain")
    assert with_ptx < without - 0.01, (with_ptx, without)


def test_lora_resume_continues_bit_for_bit(runner, micro_sft: Path, tmp_path: Path, monkeypatch) -> None:
    from align.stages.ppo import loop

    common = [
        "--reward",
        "align.data.synthetic:gold_reward",
        "--max-steps",
        "4",
        "--set",
        "train.save_steps=2",
    ]
    assert invoke(runner, *ppo_args(micro_sft, tmp_path / "straight", *common)).exit_code == 0

    original = loop.PPOLoop.iteration

    def crash_in_fourth(self):  # step 3 is logged but not checkpointed (checkpoint at 2)
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(loop.PPOLoop, "iteration", crash_in_fourth)
    assert invoke(runner, *ppo_args(micro_sft, tmp_path / "resumed", *common)).exit_code == 130
    assert (tmp_path / "resumed.partial/checkpoints/step-2").is_dir() and not (tmp_path / "resumed").exists()
    monkeypatch.setattr(loop.PPOLoop, "iteration", original)
    result = invoke(runner, *ppo_args(micro_sft, tmp_path / "resumed", *common), "--resume")
    assert result.exit_code == 0, result.output
    straight, resumed = logged_steps(tmp_path / "straight"), logged_steps(tmp_path / "resumed")
    assert [s["step"] for s in resumed] == [1, 2, 3, 4]
    assert untimed(resumed) == untimed(straight)  # CPU: bit-for-bit, every logged figure of every step
    adapter = "model/adapter_model.safetensors"  # LoRA: the frozen base stays exact across rollouts
    assert (tmp_path / "resumed" / adapter).read_bytes() == (tmp_path / "straight" / adapter).read_bytes()


def test_bad_ppo_inputs(runner, micro_sft: Path, micro_rm: Path, tmp_path: Path) -> None:
    cases = [
        ([], "give exactly one of --reward-model ARTIFACT or --reward module:function"),
        (["--reward-model", micro_sft], "a 'sft' artifact, but this needs a 'rm' one"),
        (["--reward", "tests.rewards:nope"], "has no attribute 'nope'"),
        (
            ["--reward", "tests.rewards:wrong_length", "--max-steps", "1"],
            "returned list of length 1, expected 16",
        ),
        (["--reward-model", micro_rm, "--set", "ppo.kl_coef=-1"], "ppo.kl_coef must be >= 0.0 (got -1)"),
        (["--reward-model", micro_rm, "--set", "ppo.rollouts=10"], "multiple of ppo.mini_batch_size"),
    ]
    for extra, message in cases:
        result = invoke(runner, *ppo_args(micro_sft, tmp_path / "out", *extra))
        assert result.exit_code == 2 and message in result.stderr, (extra, result.output)
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("packing", [True, False])
def test_rollout_logprobs_equal_the_distribution_generate_sampled(micro_sft: Path, packing: bool) -> None:
    """Left-padded prompts of different lengths: our forward (position ids from the mask, logits / T) must give
    the log-probs `generate` sampled with, token for token, on packed rows and on the padded batch."""
    import torch
    from transformers import GenerationConfig

    from align.decoding.logprobs import response_logprobs
    from align.decoding.packing import batch_layout
    from align.models import load_tokenizer
    from align.stages.ppo.core import truncate_at_eos
    from align.text.chat import prompt_text

    source = resolve_model(str(micro_sft))
    model, tokenizer = load_policy(source).eval(), load_tokenizer(source)
    prompts = [
        prompt_text(tokenizer, [{"role": "user", "content": c}])
        for c in ("Add 3 and 4.", "Reverse the words: cat dog sun owl fox", "Repeat owl 2 times")
    ]
    queries = tokenizer(
        prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    )
    config = GenerationConfig(
        do_sample=True,
        temperature=0.7,
        top_k=0,
        top_p=1.0,
        max_new_tokens=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**queries, generation_config=config)
        q = queries["input_ids"].shape[1]
        responses = out.sequences[:, q:]
        sampled = torch.stack(
            [
                torch.log_softmax(s.float(), -1).gather(1, responses[:, t : t + 1]).squeeze(1)
                for t, s in enumerate(out.scores)
            ],
            dim=1,
        )
        truncated, mask = truncate_at_eos(responses, [tokenizer.eos_token_id], tokenizer.pad_token_id)
        attention = torch.cat([queries["attention_mask"], mask.long()], dim=1)
        batch = batch_layout(torch.cat([queries["input_ids"], truncated], 1), attention, q, packing)
        ours, _ = response_logprobs(model, batch, 0.7)
    assert queries["attention_mask"].sum(1).unique().numel() > 1  # the prompts really are padded
    torch.testing.assert_close(ours * mask, sampled * mask, atol=1e-4, rtol=0)


def _pit_distance(model, queries, responses, eos_token_id, temperature) -> float:
    """Kolmogorov-Smirnov distance of the randomised probability integral transform of every sampled
    response token under the model's own conditional distribution from Uniform(0, 1). Tokens drawn from
    softmax(logits / temperature) give i.i.d. uniforms, whatever the vocabulary order, so the distance
    shrinks like 1/sqrt(n); any other sampling distribution leaves it bounded away from 0."""
    import torch

    from align.decoding.packing import position_ids
    from align.stages.ppo.core import truncate_at_eos

    _, mask = truncate_at_eos(responses, [eos_token_id], 0)
    ids = torch.cat([queries["input_ids"], responses], 1)
    attention = torch.cat([queries["attention_mask"], torch.ones_like(responses)], 1)
    q = queries["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention, position_ids=position_ids(attention)).logits
    probs = torch.softmax(logits[:, q - 1 : -1].double() / temperature, dim=-1)
    below = (probs.cumsum(-1) - probs).gather(-1, responses[..., None]).squeeze(-1)
    own = probs.gather(-1, responses[..., None]).squeeze(-1)
    generator = torch.Generator().manual_seed(0)
    u = (below + torch.rand(own.shape, generator=generator, dtype=own.dtype) * own)[mask.bool()].sort().values
    n = u.numel()
    grid = torch.arange(1, n + 1, dtype=u.dtype) / n
    return float(torch.maximum(grid - u, u - (grid - 1 / n)).max())


def _chat_queries(tokenizer, rows: int):
    from align.decoding.generate import encode_left_padded
    from align.text.chat import prompt_text

    lines = PROMPTS.read_text().splitlines()[:24]
    prompts = [
        prompt_text(tokenizer, [{"role": "user", "content": json.loads(line)["prompt"]}]) for line in lines
    ]
    queries = encode_left_padded(tokenizer, (prompts * rows)[:rows], "cpu")
    assert queries["attention_mask"].sum(1).unique().numel() > 1  # the prompts really are padded
    return queries


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_lean_rollout_engine_samples_the_model_distribution(micro_sft: Path, architecture: str) -> None:
    """Our decode loop samples softmax(logits / T) of the policy at every position, as `generate` does
    (a KS test on the probability integral transform of each token), through the static GPT-2 decoder
    and through the generic path, and stops when every row has ended."""
    import torch

    from align.decoding.engines import GenerateEngine, LeanEngine
    from align.models import load_tokenizer

    source = resolve_model(str(micro_sft))
    tokenizer = load_tokenizer(source)
    model = load_policy(source).eval() if architecture == "gpt2" else random_llama(len(tokenizer))
    queries = _chat_queries(tokenizer, 384)
    distance = {}
    for name, engine, temperature in (
        ("generate", GenerateEngine, 0.7),
        ("lean", LeanEngine, 0.7),
        ("lean at the wrong temperature", LeanEngine, 1.4),
    ):
        torch.manual_seed(7)
        responses = engine(tokenizer, temperature, 20).sample(
            model, queries["input_ids"], queries["attention_mask"], torch.rand(384, 20)
        )
        distance[name] = _pit_distance(model, queries, responses, tokenizer.eos_token_id, 0.7)
        if name == "lean":  # the loop runs until the last row's EOS (or the token limit), no longer
            ended = responses == tokenizer.eos_token_id
            lengths = torch.where(ended.any(1), ended.int().argmax(1) + 1, 20)
            assert responses.shape[1] == int(lengths.max())
    # thousands of tokens each: the 0.1 % critical value of the KS distance is below 0.036
    assert distance["generate"] < 0.036 and distance["lean"] < 0.036, distance
    assert distance["lean at the wrong temperature"] > 0.05, distance  # the check can tell a wrong sampler


def test_static_decoder_reproduces_the_gpt2_forward(micro_sft: Path) -> None:
    """Prefill and every decode step of `StaticGPT2` give the logits of the transformers forward on the
    same left-padded sequence (teacher forcing), to float rounding."""
    import torch

    from align.decoding.generate import encode_left_padded
    from align.decoding.packing import position_ids
    from align.decoding.static_gpt2 import StaticStepper, supports
    from align.models import load_tokenizer

    source = resolve_model(str(micro_sft))
    model, tokenizer = load_policy(source).eval(), load_tokenizer(source)
    assert supports(model)
    prompts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()[:8]]
    queries = encode_left_padded(tokenizer, prompts, "cpu")
    continuation = torch.randint(
        5, model.config.vocab_size, (len(prompts), 6), generator=torch.Generator().manual_seed(0)
    )
    ids = torch.cat([queries["input_ids"], continuation], 1)
    attention = torch.cat([queries["attention_mask"], torch.ones_like(continuation)], 1)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=attention, position_ids=position_ids(attention)).logits
        stepper = StaticStepper(model, continuation.shape[1])
        steps = [stepper.start(queries["input_ids"], queries["attention_mask"])]
        steps += [stepper.step(continuation[:, t]) for t in range(continuation.shape[1] - 1)]
    q = queries["input_ids"].shape[1]
    torch.testing.assert_close(torch.stack(steps, 1), expected[:, q - 1 : -1], atol=1e-4, rtol=1e-4)


def test_lean_rollout_folds_lora_into_copies_and_leaves_the_weights_bit_exact(micro_sft: Path) -> None:
    """The rollout samples the adapter policy (LoRA folded into copies of the weights the decoder reads,
    not merged in place), and every weight of the model, the frozen base included, is bit-identical
    afterwards: the base is PPO's reference, and a resumed run reloads it clean."""
    import torch
    from peft import get_peft_model

    from align.config import LoraSettings
    from align.decoding.engines import LeanEngine
    from align.models import load_tokenizer, lora_config

    source = resolve_model(str(micro_sft))
    model, tokenizer = load_policy(source).eval(), load_tokenizer(source)
    queries = _chat_queries(tokenizer, 384)
    policy = get_peft_model(model, lora_config(LoraSettings(r=4, alpha=8), model))
    for module in policy.modules():  # a trained-looking adapter, so folding it changes the weights
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.3)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    responses = LeanEngine(tokenizer, 0.7, 20).sample(
        policy, queries["input_ids"], queries["attention_mask"], torch.rand(384, 20)
    )
    assert _pit_distance(policy, queries, responses, tokenizer.eos_token_id, 0.7) < 0.036  # the adapter's
    with policy.disable_adapter():  # and not the base's
        assert _pit_distance(policy, queries, responses, tokenizer.eos_token_id, 0.7) > 0.05
    for key, value in policy.state_dict().items():
        assert torch.equal(value, before[key]), key
