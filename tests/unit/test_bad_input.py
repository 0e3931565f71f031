"""Every malformed input exits with code 2 and one line naming what and where, and leaves no artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.artifacts import ArtifactWriter
from tests.conftest import error_line, invoke, sets, synthetic_sft_rows, write_jsonl

GOOD_ROW = '{"prompt": "Add 1 and 2.", "completion": "3"}\n'


def fake_artifact(path: Path, stage: str) -> Path:
    with ArtifactWriter(path, stage, {}) as writer:
        (writer.work_dir / "model").mkdir()
        (writer.work_dir / "model" / "x").write_text("x")
        return writer.commit().path


CASES = {
    # name: (data file content or None, extra CLI args, expected message fragment)
    "missing field": ('{"prompt": "a"}\n', [], "d.jsonl:1: field 'completion' missing (has: prompt)"),
    "wrong type": ('{"prompt": "a", "completion": ["b"]}\n', [], "d.jsonl:1: field 'completion'"),
    "bad json line": (GOOD_ROW + "{broken\n", [], "d.jsonl:2: invalid JSON"),
    "not an object": (GOOD_ROW + "42\n", [], "d.jsonl:2: expected a JSON object, got int"),
    "empty file": ("", [], "d.jsonl: empty file"),
    "only blank lines": ("\n\n\n", [], "d.jsonl: empty file"),
    "all rows empty": ('{"prompt": "a", "completion": " "}\n', [], "no usable sft rows (1 empty completion)"),
    "unknown role": ('{"messages": [{"role": "robot", "content": "x"}]}\n', [], "unknown role 'robot'"),
    "missing data path": (None, ["--data", "nope/missing.jsonl"], "nope/missing.jsonl: no such file"),
    "unsupported type": (None, ["--data", "{tmp}/d.xml"], "unsupported file type"),
    "missing model": (GOOD_ROW, ["--model", "./no/such/model"], "no such model directory or artifact"),
    "wrong artifact kind": (GOOD_ROW, ["--model", "{rm}"], "a 'rm' artifact, but this needs a"),
    "unfinished run as model": (GOOD_ROW, ["--model", "{partial}"], "an unfinished run"),
    "unknown recipe key": (GOOD_ROW, ["--set", "train.lerning_rate=1"], "did you mean 'learning_rate'"),
    "unknown trainer key": (
        GOOD_ROW,
        ["--set", "train.trainer={warmup_stepz: 3}"],
        "did you mean 'warmup_steps'",
    ),
    "negative lr": (GOOD_ROW, ["--lr", "-0.1"], "train.learning_rate must be > 0"),
    "lora rank 0": (GOOD_ROW, ["--lora-r", "0"], "lora.r must be >= 1"),
    "missing recipe": (
        GOOD_ROW,
        ["--recipe", "no_such_recipe.yaml"],
        "no_such_recipe.yaml: recipe file not found",
    ),
    "invalid recipe yaml": (GOOD_ROW, ["--recipe", "{tmp}/bad.yaml"], "invalid YAML"),
    "all rows too long": (GOOD_ROW, ["--set", "max_length=8"], "every row is longer than max_length=8"),
    "non utf-8 bytes": (b'{"prompt": "\xfe", "completion": "b"}\n', [], "d.jsonl:1: not UTF-8"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line(runner, micro_base: Path, tmp_path: Path, name: str) -> None:
    content, extra, expected = CASES[name]
    data = tmp_path / "d.jsonl"
    if isinstance(content, bytes):
        data.write_bytes(content)
    elif content is not None:
        data.write_text(content)
    (tmp_path / "d.xml").write_text("<x/>")
    (tmp_path / "bad.yaml").write_text("model: a\ntrain: [unclosed\n")
    (tmp_path / "sft.partial").mkdir(exist_ok=True)
    rm = fake_artifact(tmp_path / "rm", "rm") if "{rm}" in extra else ""
    substitutions = {"{tmp}": str(tmp_path), "{rm}": str(rm), "{partial}": str(tmp_path / "sft.partial")}
    extra = [_substitute(arg, substitutions) for arg in extra]
    args = [
        "sft",
        "--model",
        str(micro_base),
        "--data",
        str(data),
        "--output",
        str(tmp_path / "out"),
        "--max-steps",
        "2",
        *extra,
    ]
    result = invoke(runner, *args)
    assert result.exit_code == 2, result.output
    assert expected in error_line(result.stderr)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def _substitute(arg: str, substitutions: dict[str, str]) -> str:
    for key, value in substitutions.items():
        arg = arg.replace(key, value)
    return arg


def test_a_failed_rerun_keeps_the_existing_artifact(runner, micro_base: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_sft_rows(50))
    common = [
        "sft",
        "--model",
        micro_base,
        "--output",
        tmp_path / "out",
        "--max-steps",
        "2",
        "--set",
        "train.save_steps=0",
    ]
    assert invoke(runner, *common, "--data", data).exit_code == 0
    before = (tmp_path / "out" / "manifest.json").read_text()
    assert invoke(runner, *common, "--data", tmp_path / "missing.jsonl").exit_code == 2
    assert (tmp_path / "out" / "manifest.json").read_text() == before


def test_eval_and_show_refuse_bad_paths(runner, tmp_path: Path) -> None:
    for args in (["show", tmp_path], ["verify", tmp_path / "x"], ["eval", "--model", "./nowhere"]):
        result = invoke(runner, *args)
        assert result.exit_code == 2 and result.stderr.startswith("error: "), result.output


PAIR = '{"prompt": "Add 1 and 2.", "chosen": "3", "rejected": "4"}\n'
STAGE_CASES = {
    # name: (CLI args with {sft} {rm} {base} {data} {out} {tmp} placeholders, data file content, message)
    "rm: chosen equals rejected everywhere": (
        ["rm", "--model", "{sft}", "--data", "{data}"],
        '{"prompt": "a", "chosen": "x", "rejected": "x"}\n',
        "no usable pairs rows (1 chosen equals rejected)",
    ),
    "rm: empty strings": (
        ["rm", "--model", "{sft}", "--data", "{data}"],
        '{"prompt": "a", "chosen": "", "rejected": "y"}\n',
        "no usable pairs rows (1 empty chosen)",
    ),
    "rm: ranking repeats an index": (
        ["rm", "--model", "{sft}", "--data", "{data}"],
        '{"prompt": "a", "responses": ["x", "y"], "ranking": [0, 0]}\n',
        "d.jsonl:1: field 'ranking' must list every index",
    ),
    "rm: responses not strings": (
        ["rm", "--model", "{sft}", "--data", "{data}"],
        '{"prompt": "a", "responses": ["x", 1], "ranking": [0, 1]}\n',
        "d.jsonl:1: field 'responses' must be a list of strings",
    ),
    "rm: a model artifact as data": (
        ["rm", "--model", "{sft}", "--data", "{sft}"],
        None,
        "an artifact without data/",
    ),
    "dpo: negative beta": (
        ["dpo", "--model", "{sft}", "--data", "{data}", "--beta", "-1"],
        PAIR,
        "beta must be > 0",
    ),
    "dpo: label smoothing 0.5": (
        ["dpo", "--model", "{sft}", "--data", "{data}", "--set", "label_smoothing=0.5"],
        PAIR,
        "label_smoothing must be < 0.5 (got 0.5)",
    ),
    "dpo: rounds without a judge": (
        ["dpo", "--model", "{sft}", "--rounds", "2", "--prompts", "{data}"],
        PAIR,
        "give exactly one of --reward-model ARTIFACT or --reward module:function",
    ),
    "dpo: transcript without an assistant turn": (
        ["dpo", "--model", "{sft}", "--data", "{data}"],
        '{"chosen": "\\n\\nHuman: hi", "rejected": "\\n\\nHuman: yo"}\n',
        "d.jsonl:1",
    ),
    "pairs: one sample per prompt": (
        ["pairs", "--model", "{sft}", "--prompts", "{data}", "--reward", "tests.rewards:longer", "--n", "1"],
        PAIR,
        "sampling.n must be >= 2",
    ),
    "pairs: label noise over half": (
        [
            "pairs",
            "--model",
            "{sft}",
            "--prompts",
            "{data}",
            "--reward",
            "tests.rewards:longer",
            "--label-noise",
            "0.6",
        ],
        PAIR,
        "sampling.label_noise must be < 0.5 (got 0.6)",
    ),
    "pairs: judge not a reward model": (
        ["pairs", "--model", "{sft}", "--prompts", "{data}", "--reward-model", "{sft}"],
        PAIR,
        "a 'sft' artifact, but this needs a 'rm' one",
    ),
    "ppo: prompts longer than the context": (
        ["ppo", "--model", "{sft}", "--reward-model", "{rm}", "--prompts", "{data}"],
        '{"prompt": "' + "word " * 400 + '"}\n',
        "fewer than ppo.rollouts",
    ),
    "ppo: unknown rollout engine": (
        [
            "ppo",
            "--model",
            "{sft}",
            "--reward-model",
            "{rm}",
            "--prompts",
            "{data}",
            "--set",
            "ppo.rollout_engine=vllm",
        ],
        PAIR,
        "ppo.rollout_engine must be one of 'lean' or 'generate' (got 'vllm')",
    ),
    "sft: gigantic line": (
        ["sft", "--model", "{base}", "--data", "{data}"],
        '{"prompt": "a", "completion": "' + "x " * 1_000_000 + '"}\n',
        "d.jsonl:1: a row of 2,000,017 characters, over the limit of 1,000,000",
    ),
    "eval: best-of-1": (
        ["eval", "--model", "{sft}", "--best-of-n", "1"],
        None,
        "best_of_n values must be >= 2",
    ),
    "eval: best-of-n without a reward model": (
        ["eval", "--model", "{sft}", "--best-of-n", "4"],
        None,
        "best_of_n needs a reward_model",
    ),
    "export: a reward model as the policy": (
        ["export", "--model", "{rm}"],
        None,
        "a 'rm' artifact, but this needs",
    ),
    "generate: a weights file removed": (
        ["generate", "--model", "{broken}", "--prompt", "hi"],
        None,
        "incomplete artifact, missing model/model.safetensors",
    ),
    "generate: weights overwritten with garbage": (
        ["generate", "--model", "{tampered}", "--prompt", "hi"],
        None,
        "tampered/model/model.safetensors: modified since the artifact was made",
    ),
}


@pytest.mark.parametrize("name", list(STAGE_CASES))
def test_bad_input_in_every_stage(
    runner, micro_base: Path, micro_sft: Path, micro_rm: Path, tmp_path: Path, name: str
) -> None:
    import shutil

    args, content, expected = STAGE_CASES[name]
    data = tmp_path / "d.jsonl"
    if content is not None:
        data.write_text(content)
    broken = tmp_path / "broken"
    if "{broken}" in args:  # a copy of the SFT artifact whose weights file went missing
        shutil.copytree(micro_sft, broken)
        (broken / "model" / "model.safetensors").unlink()
    tampered = tmp_path / "tampered"
    if "{tampered}" in args:  # a copy of the SFT artifact whose weights file was overwritten
        shutil.copytree(micro_sft, tampered)
        (tampered / "model" / "model.safetensors").write_bytes(b"not safetensors at all")
    substitutions = {
        "{tampered}": str(tampered),
        "{sft}": str(micro_sft),
        "{rm}": str(micro_rm),
        "{base}": str(micro_base),
        "{data}": str(data),
        "{broken}": str(broken),
    }
    argv = [_substitute(arg, substitutions) for arg in args]
    if argv[0] not in ("eval", "generate"):
        argv += ["--output", str(tmp_path / "out")]
    result = invoke(runner, *argv)
    assert result.exit_code == 2, result.output
    line = error_line(result.stderr)
    assert expected in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("where", ["saving the weights", "committing the manifest"])
def test_a_full_disk_is_one_line_and_keeps_the_old_artifact(
    runner, micro_base: Path, tmp_path: Path, monkeypatch, where: str
) -> None:
    import errno

    import transformers.modeling_utils

    import align.artifacts

    data = write_jsonl(tmp_path / "d.jsonl", synthetic_sft_rows(50))
    common = [
        "sft",
        "--model",
        micro_base,
        "--data",
        data,
        "--output",
        tmp_path / "out",
        "--max-steps",
        "2",
        "--full",
    ]
    assert invoke(runner, *common, *sets("train.save_steps=0")).exit_code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.partial" / "x"))

    target = (
        (transformers.modeling_utils, "safe_save_file")
        if where == "saving the weights"
        else (align.artifacts, "write_json_atomic")
    )
    monkeypatch.setattr(*target, full)
    result = invoke(runner, *common, "--lr", "1e-3", *sets("train.save_steps=0"))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert error_line("\n".join(lines)).startswith("error: No space left on device writing"), lines
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
    assert not (tmp_path / "out.partial").exists()


def test_a_30_mb_row_is_refused_quickly_naming_file_and_line(
    runner, micro_base: Path, tmp_path: Path
) -> None:
    """A row over the stated limit is an error naming file and line, before any tokenizer sees it."""
    import json
    import time

    from align.data.formats import MAX_ROW_CHARS

    rows = synthetic_sft_rows(20)
    rows[6] = {"instruction": "x" * 30_000_000, "output": "y"}
    data = tmp_path / "huge.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    started = time.perf_counter()
    result = invoke(runner, "sft", "--model", micro_base, "--data", data, "--output", tmp_path / "out")
    assert result.exit_code == 2 and time.perf_counter() - started < 20
    assert error_line(result.output) == (
        f"error: {data}:7: a row of 30,000,018 characters, over the limit of {MAX_ROW_CHARS:,}"
    )


@pytest.mark.parametrize(
    "failure",
    [
        "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 4221312 vs 4221200",
        "SafetensorError: Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
        'message: "No space left on device" })',
    ],
)
def test_a_full_disk_in_torch_or_safetensors_is_one_line(
    runner, micro_base: Path, tmp_path: Path, monkeypatch, failure: str
) -> None:
    """torch.save and safetensors report a full disk as RuntimeError / SafetensorError, not OSError: the
    user still sees one line naming the output being written, exit 2, and nothing at --output."""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    kind, _, message = failure.partition(": ")

    def full(*args, **kwargs):
        raise (RuntimeError if kind == "RuntimeError" else SafetensorError)(message)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_sft_rows(50))
    result = invoke(
        runner, "sft", "--model", micro_base, "--data", data, "--output", tmp_path / "out",
        "--max-steps", "2", "--full", *sets("train.save_steps=0"),
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert error_line(result.stderr) == (
        f"error: No space left on device writing {tmp_path / 'out.partial'}; no artifact was replaced "
        "(free space or fix permissions, rerun)"
    )
    assert not (tmp_path / "out").exists()
