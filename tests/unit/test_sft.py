"""`align sft` on a micro GPT-2: every input shape, completion-only loss, plain reloading, resume, moves."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.artifacts import load_artifact
from align.data import load_data
from align.errors import ArtifactError
from align.models import load_policy, load_tokenizer, resolve_model
from tests.conftest import REPO, invoke, synthetic_sft_rows, write_jsonl

FAST = "--max-steps 40 --batch-size 8 --lr 3e-3 --set train.logging_steps=5 --set train.save_steps=0".split()  # noqa: SIM905
FAST += ["--set", "max_length=96"]


def messages_rows(n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["completion"]},
            ]
        }
        for r in synthetic_sft_rows(n)
    ]


def alpaca_rows(n: int) -> list[dict]:
    return [
        {"instruction": r["prompt"], "input": "", "output": r["completion"]} for r in synthetic_sft_rows(n)
    ]


@pytest.mark.parametrize("shape", ["prompt_completion", "alpaca", "messages"])
def test_sft_lora_on_each_format(runner, micro_base: Path, tmp_path: Path, shape: str) -> None:
    rows = {"prompt_completion": synthetic_sft_rows, "alpaca": alpaca_rows, "messages": messages_rows}[shape](
        300
    )
    data = tmp_path / "data.json" if shape == "alpaca" else tmp_path / "data.jsonl"
    if shape == "alpaca":
        data.write_text(json.dumps(rows))
    else:
        write_jsonl(data, rows)
    result = invoke(runner, "sft", "--model", micro_base, "--data", data, "--output", tmp_path / "sft", *FAST)
    assert result.exit_code == 0, result.output
    artifact = load_artifact(result.stdout.strip().splitlines()[-1], expect_stage="sft")
    metrics = artifact.metrics
    assert metrics["last_loss"] < metrics["first_loss"] * 0.9, metrics
    assert metrics["perplexity"] > 1 and metrics["steps"] == 40
    assert artifact.manifest["data"]["rows"] + sum(artifact.manifest["data"]["dropped"].values()) == 300
    assert_plain_peft_reload_generates(artifact.path)


def assert_plain_peft_reload_generates(path: Path) -> None:
    """Plain transformers + peft, no align code: base from the recorded relative path, then the adapter."""
    from peft import PeftModel

    adapter_dir = path / "model"
    base_rel = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert not Path(base_rel).is_absolute()
    base = AutoModelForCausalLM.from_pretrained(adapter_dir / base_rel)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Add 1 and 2."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    ours = load_policy(resolve_model(str(path))).eval()
    ids = prompt["input_ids"]
    torch.testing.assert_close(ours(ids).logits, model(ids).logits, atol=1e-5, rtol=0)


def test_real_alpaca_slice_trains(runner, micro_base: Path, tmp_path: Path, shared_data: Path) -> None:
    source = shared_data / "alpaca/alpaca-data-subset-train-4500.json"
    subset = tmp_path / "alpaca-200.json"
    subset.write_text(json.dumps(json.loads(source.read_text())[:200]))
    result = invoke(
        runner,
        "sft",
        "--model",
        micro_base,
        "--data",
        subset,
        "--output",
        tmp_path / "sft",
        "--max-steps",
        "20",
        "--batch-size",
        "4",
        "--lr",
        "3e-3",
        "--set",
        "train.logging_steps=5",
        "--set",
        "max_length=128",
        "--set",
        "train.save_steps=0",
    )
    assert result.exit_code == 0, result.output
    artifact = load_artifact(tmp_path / "sft")
    assert artifact.metrics["last_loss"] < artifact.metrics["first_loss"]
    assert (
        artifact.manifest["data"]["dropped"]["longer than max_length=128 tokens"] > 0
    )  # counted, not silent


def test_full_fine_tuning_and_merged_export(runner, micro_base: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_sft_rows(200))
    result = invoke(
        runner, "sft", "--model", micro_base, "--data", data, "--output", tmp_path / "full", "--full", *FAST
    )
    assert result.exit_code == 0, result.output
    full = load_artifact(tmp_path / "full")
    assert full.manifest["model_format"] == "full"
    before = AutoModelForCausalLM.from_pretrained(micro_base / "model").state_dict()
    after = AutoModelForCausalLM.from_pretrained(full.model_dir).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) - 2  # every trainable tensor moved (tied/buffer entries aside)


def test_completion_only_loss_masks_the_prompt_and_keeps_eos(micro_base: Path, tmp_path: Path) -> None:
    import datasets
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from align.text.encoding import tokenize_sft

    source = resolve_model(str(micro_base))
    tokenizer = load_tokenizer(source)
    data = load_data(str(REPO / "data/synthetic/sft.jsonl"), "sft", limit=4)
    rows = tokenize_sft(data, tokenizer, max_length=96)
    args = TRLSFTConfig(
        output_dir=str(tmp_path),
        completion_only_loss=True,
        report_to="none",
        max_length=96,
        bf16=False,
        use_cpu=True,
    )
    trainer = SFTTrainer(
        model=load_policy(source),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    prepared = [trainer.train_dataset[i] for i in range(len(rows))]
    batch = trainer.data_collator(prepared)
    for i, row in enumerate(rows):
        n_prompt = row["completion_mask"].index(1)
        labels = batch["labels"][i, : len(row["input_ids"])].tolist()
        assert labels[:n_prompt] == [-100] * n_prompt
        assert labels[n_prompt:] == row["input_ids"][n_prompt:]
        assert labels[-1] == tokenizer.eos_token_id  # the answer's EOS is learned
        assert (batch["labels"][i, len(row["input_ids"]) :] == -100).all()  # padding is not


def test_gradient_checkpointing_is_off_on_cpu(tmp_path: Path) -> None:
    from trl import SFTConfig as TRLSFTConfig

    from align.artifacts import ArtifactWriter
    from align.config import TrainSettings
    from align.stages.trl_stage import trainer_config

    with ArtifactWriter(tmp_path / "x", "sft", {}) as writer:
        args = trainer_config(TRLSFTConfig, TrainSettings(), writer.checkpoints_dir, has_eval=False)
    fields = {f.name for f in dataclasses.fields(args)}  # transformers >= 5.24 renamed the field
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    assert getattr(args, name) is torch.cuda.is_available()


def test_a_kill_between_the_commit_renames_restores_the_previous_artifact(
    runner, micro_base: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_sft_rows(60))
    common = ["sft", "--model", micro_base, "--data", data, "--output", tmp_path / "out", "--max-steps", "2"]
    assert invoke(runner, *common, "--set", "train.save_steps=0").exit_code == 0
    manifest = (tmp_path / "out" / "manifest.json").read_text()
    # the state a SIGKILL between `_swap_into_place`'s two renames leaves behind
    os.replace(tmp_path / "out", tmp_path / "out.old")
    shutil.copytree(tmp_path / "out.old", tmp_path / "out.partial")
    assert load_artifact(tmp_path / "out").manifest == json.loads(manifest)  # the previous artifact is back
    assert not (tmp_path / "out.old").exists()
    with pytest.raises(ArtifactError, match="an unfinished run"):
        load_artifact(tmp_path / "out.partial")  # the next stage never takes the half-committed one
    assert invoke(runner, *common, "--lr", "1e-3", "--set", "train.save_steps=0").exit_code == 0
    assert (tmp_path / "out" / "manifest.json").read_text() != manifest


def test_moved_runs_still_load(runner, micro_base: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(micro_base, run_dir / "pretrain")
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_sft_rows(100))
    result = invoke(
        runner,
        "sft",
        "--model",
        run_dir / "pretrain",
        "--data",
        data,
        "--output",
        run_dir / "sft",
        "--max-steps",
        "3",
        "--set",
        "train.save_steps=0",
    )
    assert result.exit_code == 0, result.output
    ids = torch.tensor([[3, 10, 11, 12]])
    before = load_policy(resolve_model(str(run_dir / "sft")))(ids).logits
    shutil.move(str(run_dir), str(tmp_path / "moved"))
    moved = tmp_path / "moved" / "sft"
    manifest = json.loads((moved / "manifest.json").read_text())
    assert str(tmp_path) not in json.dumps([manifest["parents"], manifest["base_model"]])
    assert str(tmp_path) not in (moved / "model/adapter_config.json").read_text()
    torch.testing.assert_close(load_policy(resolve_model(str(moved)))(ids).logits, before)
    assert invoke(runner, "verify", moved).exit_code == 0


def test_save_merged_writes_plain_weights_equal_to_the_adapter_model(
    runner, micro_base: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_sft_rows(100))
    result = invoke(
        runner,
        "sft",
        "--model",
        micro_base,
        "--data",
        data,
        "--output",
        tmp_path / "sft",
        "--save-merged",
        "--max-steps",
        "3",
        "--set",
        "train.save_steps=0",
    )
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "sft/merged").eval()
    ids = torch.tensor([[3, 10, 11, 12]])
    adapter = load_policy(resolve_model(str(tmp_path / "sft"))).eval()
    torch.testing.assert_close(merged(ids).logits, adapter(ids).logits, atol=1e-5, rtol=0)


def test_data_inspect_reports_rows_drops_lengths_and_examples(
    runner, micro_base: Path, tmp_path: Path
) -> None:
    rows = [*synthetic_sft_rows(20), {"prompt": "x", "completion": " "}]
    result = invoke(
        runner,
        "data",
        "inspect",
        write_jsonl(tmp_path / "d.jsonl", rows),
        "--kind",
        "sft",
        "--tokenizer",
        micro_base,
    )
    assert result.exit_code == 0, result.output
    for fragment in (
        "rows read",
        "21",
        "usable rows",
        "20",
        "dropped: empty completion",
        "tokens p90",
        "examples",
    ):
        assert fragment in result.stdout
