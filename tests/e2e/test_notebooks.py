"""The notebooks run top to bottom on the session's micro pipeline, so they never rot."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("name", ["quickstart", "ppo_vs_dpo"])
def test_notebook_executes(name: str, micro_evaluated: Path, tmp_path: Path, monkeypatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    runs = shutil.copytree(micro_evaluated, tmp_path / "runs")  # its evaluations stay in its own copy
    monkeypatch.setenv("ALIGN_RUNS", str(runs))
    monkeypatch.setenv("ALIGN_EVAL_LIMIT", "24")
    notebook = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    lines = "".join(o.get("text", "") for o in outputs).splitlines()
    if name == "quickstart":  # the evaluation table has a measured row per policy, then four plots
        for policy in ("sft", "ppo", "dpo"):
            assert any(line.split()[:1] == [policy] and len(line.split()) == 5 for line in lines), lines
        assert sum("image/png" in o.get("data", {}) for o in outputs) == 4
    else:  # every evaluated policy of the run is listed, and two figures are drawn
        assert sum(line.split()[1:2] in (["sft"], ["ppo"], ["dpo"]) for line in lines) >= 3, lines
        assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
