from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from align.artifacts import ArtifactWriter, load_artifact, verify
from align.errors import ArtifactError


def make(output: Path, stage: str = "sft", content: str = "weights", parent=None):
    with ArtifactWriter(output, stage, {"lr": 1}) as writer:
        (writer.model_dir).mkdir(parents=True)
        (writer.model_dir / "w.bin").write_text(content)
        if parent is not None:
            writer.add_parent(parent)
        writer.metrics = {"loss": 1.0}
        return writer.commit()


def test_commit_writes_manifest_with_hashes_and_no_partial(tmp_path: Path) -> None:
    artifact = make(tmp_path / "run/sft")
    assert artifact.manifest["files"].keys() == {"model/w.bin"}
    assert artifact.manifest["libraries"]["torch"]
    assert not (tmp_path / "run/sft.partial").exists()
    assert verify(artifact.path) == []


def test_verify_detects_a_modified_file(tmp_path: Path) -> None:
    artifact = make(tmp_path / "sft")
    (artifact.model_dir / "w.bin").write_text("tampered")
    assert verify(artifact.path) == ["model/w.bin: modified (sha256 differs from the manifest)"]


def test_failed_run_leaves_nothing_and_keeps_the_old_artifact(tmp_path: Path) -> None:
    make(tmp_path / "sft", content="good")
    with pytest.raises(RuntimeError), ArtifactWriter(tmp_path / "sft", "sft", {}) as writer:
        (writer.work_dir / "half").write_text("x")
        raise RuntimeError("killed")
    assert not (tmp_path / "sft.partial").exists()
    assert (load_artifact(tmp_path / "sft").model_dir / "w.bin").read_text() == "good"


def test_wrong_stage_missing_and_corrupt_manifests_are_refused(tmp_path: Path) -> None:
    artifact = make(tmp_path / "sft")
    with pytest.raises(ArtifactError, match="a 'sft' artifact, but this needs a 'rm' one"):
        load_artifact(artifact.path, expect_stage="rm")
    with pytest.raises(ArtifactError, match="no such artifact"):
        load_artifact(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="manifest.json missing"):
        load_artifact(tmp_path / "empty")
    (artifact.path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt manifest"):
        load_artifact(artifact.path)


def test_manifest_paths_cannot_escape_the_artifact(tmp_path: Path) -> None:
    artifact = make(tmp_path / "sft")
    manifest = json.loads((artifact.path / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = "0" * 64
    (artifact.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="points outside the artifact"):
        load_artifact(artifact.path)


def test_parents_are_relative_so_runs_can_move(tmp_path: Path) -> None:
    base = make(tmp_path / "run/pretrain", stage="pretrain")
    child = make(tmp_path / "run/sft", parent=base)
    assert child.manifest["parents"][0]["path"] == "../pretrain"
    shutil.move(str(tmp_path / "run"), str(tmp_path / "elsewhere"))
    moved = load_artifact(tmp_path / "elsewhere/sft")
    assert moved.parent("pretrain").path.resolve() == (tmp_path / "elsewhere/pretrain").resolve()
    assert verify(moved.path) == []


def test_a_partial_directory_is_not_an_artifact(tmp_path: Path) -> None:
    (tmp_path / "sft.partial").mkdir()
    with pytest.raises(ArtifactError, match="unfinished run"):
        load_artifact(tmp_path / "sft.partial")


def test_a_second_run_on_one_output_is_refused_naming_the_holder(
    runner, micro_base: Path, tmp_path: Path
) -> None:
    """While one run holds `X.partial/`, another `--output X` exits 2 in one line naming host, PID and
    since when, and touches nothing; once the first commits, the output is free and holds no lock."""
    import os

    from tests.conftest import REPO, invoke

    output = tmp_path / "sft"
    with ArtifactWriter(output, "sft", {}) as holder:
        (holder.work_dir / "weights.bin").write_bytes(b"first run")
        second = invoke(
            runner, "sft", "--recipe", REPO / "recipes/tiny/sft.yaml", "--model", micro_base,
            "--output", output, "--max-steps", "1",
        )  # fmt: skip
        assert second.exit_code == 2
        assert "another run writes this output" in second.output and f"PID {os.getpid()}" in second.output
        assert (holder.work_dir / "weights.bin").read_bytes() == b"first run"
        holder.commit()
    assert sorted(p.name for p in output.iterdir()) == ["manifest.json", "weights.bin"]
    with ArtifactWriter(output, "sft", {}) as again:  # free again
        again.commit()


def test_a_lock_whose_process_is_gone_is_taken_over_with_a_notice(tmp_path: Path, caplog) -> None:
    partial = tmp_path / "rm.partial"
    partial.mkdir()
    (partial / ".align.holder").write_text(json.dumps({"host": "gone", "pid": 999999, "since": "yesterday"}))
    with caplog.at_level("WARNING", logger="align"), ArtifactWriter(tmp_path / "rm", "rm", {}) as writer:
        writer.commit()
    assert "taking over from a run that is gone (host gone, PID 999999, since yesterday)" in caplog.text


def test_a_damaged_parent_is_refused_where_it_is_loaded(
    runner, micro_sft: Path, micro_ppo: Path, tmp_path: Path
) -> None:
    """Flipped bytes in a copy of the SFT weights: training, eval and export from it exit 2 naming the
    file; `align verify` of a child re-verifies the parent's files too."""
    from tests.conftest import error_line, invoke

    runs = tmp_path / "runs"  # a copy of the micro run: the copied child's parents are the copies
    shutil.copytree(micro_sft.parent, runs, ignore=shutil.ignore_patterns("*.partial", "hub_*"))
    sft, ppo = runs / micro_sft.name, runs / micro_ppo.name
    assert verify(ppo) == []
    weights = next(
        name
        for name in json.loads((sft / "manifest.json").read_text())["files"]
        if name.endswith(".safetensors")
    )
    data = bytearray((sft / weights).read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])
    (sft / weights).write_bytes(bytes(data))
    expected = f"error: {sft / weights}: modified since the artifact was made"
    for command in (
        ["eval", "--model", sft, "--limit", "4"],
        ["export", "--model", sft, "--output", tmp_path / "export"],
        [
            "dpo",
            "--model",
            sft,
            "--data",
            "data/synthetic/pairs.jsonl",
            "--output",
            tmp_path / "dpo",
            "--max-steps",
            "1",
        ],
        ["eval", "--model", ppo, "--limit", "4"],  # a child whose base is the damaged copy
    ):
        result = invoke(runner, *command)
        assert result.exit_code == 2, (command, result.output)
        assert error_line(result.stderr).startswith(expected), result.stderr
    assert any(problem.startswith("parent sft: ") for problem in verify(ppo))


def test_a_file_is_hashed_once_until_it_changes(micro_sft: Path, tmp_path: Path, monkeypatch) -> None:
    import align.artifacts as artifacts

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    hashed = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda path: hashed.append(path) or real(path))
    artifact = load_artifact(micro_sft)
    artifacts.intact(artifact)
    first = len(hashed)
    artifacts.intact(artifact)
    assert first == len(artifact.manifest["files"]) and len(hashed) == first


def _write_often(path: str, tag: str) -> None:
    from align.artifacts import write_json_atomic

    for i in range(80):
        write_json_atomic(Path(path), {f"{tag}{j}": [j, i, "x" * 40] for j in range(3000)})


def test_two_processes_writing_one_json_file_leave_it_whole(tmp_path: Path) -> None:
    """The hash cache is shared by every run on the machine: concurrent writers never leave a reader a
    half-written file, and neither fails."""
    import multiprocessing

    from align.artifacts import write_json_atomic

    path = tmp_path / "cache.json"
    write_json_atomic(path, {})
    writers = [multiprocessing.Process(target=_write_often, args=(str(path), tag)) for tag in "ab"]
    for writer in writers:
        writer.start()
    unreadable = 0
    while any(writer.is_alive() for writer in writers):
        try:
            json.loads(path.read_text())
        except ValueError:
            unreadable += 1
    for writer in writers:
        writer.join()
    assert unreadable == 0 and [writer.exitcode for writer in writers] == [0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]


def test_evaluations_are_kept_apart_and_never_touch_the_committed_files(
    runner, micro_sft: Path, tmp_path: Path
) -> None:
    """`align eval` on the default set and on another keeps two records keyed by what was evaluated; the
    manifest is byte for byte what was committed, and the headline metrics quote the default set's."""
    from tests.conftest import REPO, invoke

    runs = tmp_path / "runs"
    shutil.copytree(
        micro_sft.parent, runs, ignore=shutil.ignore_patterns("*.partial", "hub_*", "evaluations")
    )
    sft = runs / micro_sft.name
    for name in ("pretrain", "sft"):
        shutil.rmtree(runs / name / "evaluations", ignore_errors=True)
    committed = {p: p.read_bytes() for p in sft.rglob("*") if p.is_file()}
    default = invoke(runner, "eval", "--model", sft, "--limit", "8", "--json", tmp_path / "default.json")
    other = invoke(
        runner, "eval", "--model", sft, "--limit", "6", "--prompts", REPO / "data/synthetic/dev.jsonl"
    )
    assert default.exit_code == 0 and other.exit_code == 0, other.output
    assert {p: p.read_bytes() for p in committed} == committed
    records = sorted((sft / "evaluations").glob("*.json"))
    assert len(records) == 2
    artifact = load_artifact(sft)
    quoted = artifact.evaluation
    assert quoted["evaluated"]["prompts"].endswith("eval.jsonl") and quoted["evaluated"]["rows"] == 8
    assert (
        artifact.metrics["gold_sampled"]
        == json.loads((tmp_path / "default.json").read_text())["gold_sampled"]
    )
    assert verify(sft) == []
