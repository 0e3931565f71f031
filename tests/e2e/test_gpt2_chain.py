"""The real-model path on CPU: the `recipes/gpt2/` chain on a GPT-2-shaped model in the hub layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_gpt2_recipes_chain_on_a_hub_layout_model(shared_data: Path, tmp_path: Path) -> None:
    """sft -> rm -> ppo -> dpo by `recipes/gpt2/`, two steps each on the Alpaca and HH-RLHF slices, from a
    `save_pretrained` directory with hub GPT-2's dropout and a pad-less tokenizer (`bench/gpt2_chain.py`
    at micro size; `make results` runs it at GPT-2-small size): every stage commits, PPO switched dropout
    off in the policy and the RM, and each step's first minibatch has ratio 1 and no clipping."""
    out = tmp_path / "chain.json"
    command = [
        sys.executable,
        "bench/gpt2_chain.py",
        "--size",
        "micro",
        "--runs",
        str(tmp_path),
        "--out",
        str(out),
    ]
    env = {**os.environ, "ALIGN_SHARED_DATA": str(shared_data)}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert set(record["seconds"]) == {"sft", "rm", "ppo", "dpo"}
    assert record["ppo_dropout_disabled"]["policy"] > 0 and record["ppo_dropout_disabled"]["reward_model"] > 0
    assert [s["step"] for s in record["ppo_steps"]] == [1, 2]
    for step in record["ppo_steps"]:
        assert step["first_ratio"] == pytest.approx(1.0, abs=1e-3)
        assert step["first_clipfrac"] == 0.0 and step["first_approxkl"] < 1e-4
