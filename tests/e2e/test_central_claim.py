"""The central claim, in CI: `recipes/tiny` unchanged (its pipeline without DPO) turns its own SFT policy
into one that beats it on 600 held-out prompts, sampled and greedy, by more than the 95 % interval of the
difference (`align.evaluation.beats`, the rule of the README and `bench/demo_cpu.py`). About a quarter
of an hour on 2 cores: the one test that trains the offline default at full size."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, invoke

EVAL_PROMPTS = 600


@pytest.mark.slow
def test_the_tiny_recipe_aligns_its_sft_policy(runner, tmp_path: Path, monkeypatch) -> None:
    from align.config import EvalConfig
    from align.evaluation import beats, run

    monkeypatch.chdir(REPO)  # the recipes name their data relative to the repository
    pipeline = yaml.safe_load((REPO / "recipes/tiny/pipeline.yaml").read_text())
    stages = {name: recipe for name, recipe in pipeline["stages"].items() if name != "dpo"}
    recipe = tmp_path / "pipeline.yaml"
    recipe.write_text(yaml.safe_dump({"run": str(tmp_path / "tiny"), "stages": stages}))
    result = invoke(runner, "pipeline", "--recipe", recipe)
    assert result.exit_code == 0, result.output

    aligned = tmp_path / "tiny" / list(stages)[-1]
    figures = {
        name: run(EvalConfig(model=str(path), limit=EVAL_PROMPTS, record=False))
        for name, path in (("sft", tmp_path / "tiny/sft"), ("aligned", aligned))
    }
    sft, policy = figures["sft"], figures["aligned"]
    assert sft["prompts"] >= EVAL_PROMPTS
    for decoding in ("sampled", "greedy"):
        assert beats(policy, sft, decoding), (decoding, policy[f"gold_{decoding}"], sft[f"gold_{decoding}"])
