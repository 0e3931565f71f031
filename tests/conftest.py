"""Shared fixtures: one micro base model (< 1M parameters, own tokenizer) built once per session."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ALIGN_SHARED_DATA", REPO.parent / "shared" / "data"))
MICRO_ARCH = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 128}


@pytest.fixture(scope="session")
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    """Run the CLI in-process; returns the result (exit_code, stdout, stderr)."""
    from align.cli import app

    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def micro_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run directory for the session's micro pipeline (pretrain, sft, rm, ppo, dpo), like runs/tiny."""
    return tmp_path_factory.mktemp("micro_runs")


@pytest.fixture(scope="session")
def micro_base(micro_runs: Path) -> Path:
    """A pretrain artifact of a micro GPT-2 trained for a few steps on the embedded corpus."""
    from align.config import ArchSettings, PretrainConfig, TokenizerSettings, TrainSettings
    from align.stages import pretrain

    output = micro_runs / "pretrain"
    config = PretrainConfig(
        data=str(REPO / "data/synthetic/pretrain.jsonl.gz"),
        output=str(output),
        block_size=64,
        tokenizer=TokenizerSettings(vocab_size=512),
        arch=ArchSettings(**MICRO_ARCH),
        train=TrainSettings(learning_rate=5e-3, max_steps=100, batch_size=16, logging_steps=10, save_steps=0),
    )
    return pretrain.run(config).path


@pytest.fixture(scope="session")
def micro_sft(micro_base: Path, micro_runs: Path) -> Path:
    """The micro base after 150 full fine-tuning steps on the synthetic demonstrations."""
    output = micro_runs / "sft"
    result = invoke(
        CliRunner(),
        "sft",
        "--recipe",
        REPO / "recipes/tiny/sft.yaml",
        "--model",
        micro_base,
        "--data",
        REPO / "data/synthetic/sft.jsonl",
        "--output",
        output,
        "--max-steps",
        "150",
        "--set",
        "train.save_steps=0",
        "--set",
        "train.logging_steps=25",
        "--set",
        "limit=2400",
    )
    assert result.exit_code == 0, result.output
    return output


@pytest.fixture(scope="session")
def micro_rm(micro_sft: Path, micro_runs: Path) -> Path:
    """A reward model on the micro SFT trunk, trained briefly on the synthetic pairs."""
    output = micro_runs / "rm"
    result = invoke(
        CliRunner(),
        "rm",
        "--recipe",
        REPO / "recipes/tiny/rm.yaml",
        "--model",
        micro_sft,
        "--output",
        output,
        "--max-steps",
        "300",
        "--lr",
        "2e-3",
        "--set",
        "limit=3000",
        "--set",
        "train.logging_steps=10",
        "--set",
        "train.save_steps=0",
    )
    assert result.exit_code == 0, result.output
    return output


@pytest.fixture(scope="session")
def micro_ppo(micro_sft: Path, micro_rm: Path, micro_runs: Path) -> Path:
    """A few LoRA PPO steps of the micro SFT policy against the micro RM (the tiny recipe, shrunk)."""
    output = micro_runs / "ppo"
    result = invoke(
        CliRunner(),
        "ppo",
        "--recipe",
        REPO / "recipes/tiny/ppo.yaml",
        "--model",
        micro_sft,
        "--reward-model",
        micro_rm,
        "--output",
        output,
        "--max-steps",
        "8",
        *sets(
            "ppo.rollouts=16",
            "ppo.mini_batch_size=8",
            "ppo.micro_batch_size=8",
            "ppo.max_new_tokens=12",
            "train.save_steps=0",
            "ppo.sample_every=0",
        ),
    )
    assert result.exit_code == 0, result.output
    return output


@pytest.fixture(scope="session")
def micro_dpo(micro_sft: Path, micro_runs: Path) -> Path:
    """A short LoRA DPO run of the micro SFT policy on the synthetic pairs."""
    output = micro_runs / "dpo"
    result = invoke(
        CliRunner(),
        "dpo",
        "--recipe",
        REPO / "recipes/tiny/dpo.yaml",
        "--model",
        micro_sft,
        "--output",
        output,
        "--max-steps",
        "30",
        "--lr",
        "2e-3",
        *sets("limit=600", "train.logging_steps=5", "train.save_steps=0"),
    )
    assert result.exit_code == 0, result.output
    return output


@pytest.fixture(scope="session")
def micro_evaluated(
    tmp_path_factory: pytest.TempPathFactory,
    micro_sft: Path,
    micro_ppo: Path,
    micro_dpo: Path,
    micro_rm: Path,
) -> Path:
    """A copy of the micro run directory after `align eval` of SFT (with best-of-2), PPO and DPO on 48
    prompts. A copy, so that no other test's `align eval` of the shared artifacts becomes the evaluation
    their metrics quote."""
    runs = tmp_path_factory.mktemp("micro_evaluated") / "runs"
    shutil.copytree(
        micro_sft.parent, runs, ignore=shutil.ignore_patterns("*.partial", "hub_*", "evaluations")
    )
    rm = runs / micro_rm.name
    for policy, extra in ((micro_sft, ("--best-of-n", "2")), (micro_ppo, ()), (micro_dpo, ())):
        result = invoke(
            CliRunner(), "eval", "--model", runs / policy.name, "--reward-model", rm, "--limit", "48", *extra
        )
        assert result.exit_code == 0, result.output
    return runs


HUB_DROPOUT = {"resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1}  # what hub GPT-2 configs carry


def save_hub_layout(model, tokenizer, output: Path) -> Path:
    """`model` and `tokenizer` as a hub GPT-2 checkpoint looks: dropout 0.1 in its three places, and a
    tokenizer with no pad token of its own and no chat template (`align` then pads with the EOS)."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    config = GPT2Config(**{**model.config.to_dict(), **HUB_DROPOUT, "pad_token_id": None})
    hub = GPT2LMHeadModel(config)
    hub.load_state_dict(model.state_dict())
    hub.save_pretrained(output)
    eos = tokenizer.eos_token
    bare = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer, bos_token=eos, eos_token=eos, unk_token=eos
    )
    bare.save_pretrained(output)
    return output


@pytest.fixture(scope="session")
def micro_hub_sft(micro_sft: Path, micro_runs: Path) -> Path:
    """The micro SFT policy saved as a local hub-layout GPT-2 directory with hub defaults (dropout 0.1,
    pad = EOS): the settings every user of a hub GPT-2 meets."""
    from align.models import load_policy, load_tokenizer, resolve_model

    source = resolve_model(str(micro_sft))
    return save_hub_layout(load_policy(source), load_tokenizer(source), micro_runs / "hub_sft")


@pytest.fixture(scope="session")
def micro_hub_rm(micro_hub_sft: Path, micro_runs: Path) -> Path:
    """A reward model trained briefly from the hub-layout policy: it inherits dropout 0.1, and its
    tokenizer gains a distinct pad token."""
    output = micro_runs / "hub_rm"
    result = invoke(
        CliRunner(),
        "rm",
        "--recipe",
        REPO / "recipes/tiny/rm.yaml",
        "--model",
        micro_hub_sft,
        "--output",
        output,
        "--max-steps",
        "40",
        "--lr",
        "2e-3",
        *sets("limit=600", "train.save_steps=0", "eval_fraction=0"),
    )
    assert result.exit_code == 0, result.output
    return output


def train_rm_briefly(runner: CliRunner, model: Path, data: Path, output: Path) -> None:
    """`align rm` for two steps on a pairs source: proves the source is training data the RM stage takes."""
    result = invoke(
        runner,
        "rm",
        "--model",
        model,
        "--data",
        data,
        "--output",
        output,
        "--max-steps",
        "2",
        *sets("eval_fraction=0", "train.save_steps=0"),
    )
    assert result.exit_code == 0, result.output


def logged_steps(artifact: Path) -> list[dict]:
    """The rows of an artifact's logs/metrics.jsonl."""
    return [json.loads(line) for line in (artifact / "logs/metrics.jsonl").read_text().splitlines()]


def untimed(rows: list[dict]) -> list[dict]:
    """Logged rows without the figures that measure time (what a bit-for-bit comparison can ask for)."""
    return [{k: v for k, v in r.items() if "seconds" not in k and k != "tokens_per_second"} for r in rows]


def error_line(stderr: str) -> str:
    """The one error line a failed command ends with (align's progress and data lines may come before
    it; a traceback may not)."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert not any(line.startswith(("Traceback", "  File ")) for line in lines), stderr
    return errors[0]


def sets(*assignments: str) -> list[str]:
    """`--set a=1 --set b=2` for CLI calls in tests."""
    return [arg for assignment in assignments for arg in ("--set", assignment)]


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data slices not found at {SHARED_DATA} (set ALIGN_SHARED_DATA)")
    return SHARED_DATA


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def synthetic_sft_rows(n: int) -> list[dict]:
    rows = [json.loads(line) for line in (REPO / "data/synthetic/sft.jsonl").read_text().splitlines()[:n]]
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]


def random_llama(vocab_size: int):
    """A random non-GPT-2 causal LM (rotary positions, RMSNorm): the generic code paths."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # peaked next-token distributions, so a wrong temperature shows
        model.lm_head.weight.mul_(20)
    return model
