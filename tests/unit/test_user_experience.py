"""What a person meets: readable logs without a terminal, announced drops and truncation, a directly
loadable export, one-line errors for bad reward functions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from align.artifacts import load_artifact
from tests.conftest import REPO, error_line, invoke, sets, synthetic_sft_rows, write_jsonl

PROMPTS = REPO / "data/synthetic/ppo.jsonl"
MICRO_PPO = sets("ppo.rollouts=8", "ppo.mini_batch_size=8", "ppo.micro_batch_size=8", "ppo.max_new_tokens=8")
PROGRESS = re.compile(r"^(sft|ppo) step \d+/\d+ \(\d+ %\) .* elapsed \d+:\d\d ETA \d+:\d\d$")


def align(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`align ARGS` in a subprocess whose stderr is a pipe: no terminal, as in CI or `make demo > log`."""
    command = [sys.executable, "-m", "align.cli", *map(str, args)]
    environment = {**os.environ, **(env or {})}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=environment)


def test_stage_logs_without_a_terminal_are_progress_lines(
    micro_base: Path, micro_sft: Path, tmp_path: Path
) -> None:
    """SFT and PPO print a progress line (step/total, key figures, elapsed, ETA) every few steps, and no
    raw dict of figures or library FutureWarning."""
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_sft_rows(300))
    sft = align("sft", "--model", micro_base, "--data", data, "--output", tmp_path / "sft", "--max-steps", "20",
                *sets("train.logging_steps=5", "train.save_steps=0"))  # fmt: skip
    ppo = align("ppo", "--model", micro_sft, "--prompts", PROMPTS, "--reward", "align.data.synthetic:gold_reward",
                "--output", tmp_path / "ppo", "--max-steps", "4", *MICRO_PPO)  # fmt: skip
    for result, stage in ((sft, "sft"), (ppo, "ppo")):
        assert result.returncode == 0, result.stderr[-3000:]
        lines = result.stderr.splitlines()
        progress = [line for line in lines if PROGRESS.match(line)]
        assert progress and progress[-1].startswith(f"{stage} step "), result.stderr
        assert not any("FutureWarning" in line or line.startswith("{'") for line in lines), result.stderr
        assert result.stdout.strip().endswith(stage)  # the artifact path


def test_over_long_rows_are_announced_kept_with_truncation_and_warned_about(
    runner, micro_sft: Path, shared_data: Path, tmp_path: Path
) -> None:
    """The HH-RLHF slice is long for a 128-token micro model: dropped rows are announced with a warning
    above 10 %; `truncation=keep_end` keeps them (prompt cut from the left), counted in the manifest."""
    hh = shared_data / "hh-rlhf/harmless-base-test-slice-dev-500.jsonl.gz"
    args = (
        "rm",
        "--model",
        micro_sft,
        "--data",
        hh,
        "--max-steps",
        "2",
        *sets("max_length=120", "eval_fraction=0"),
    )
    dropped = invoke(runner, *args, "--output", tmp_path / "dropped")
    assert dropped.exit_code == 0, dropped.output
    assert re.search(
        r"\d+ rows read, \d+ (pairs )?kept.*; dropped: .*\d+ longer than max_length=120 tokens",
        dropped.stderr,
    )
    assert "were dropped; `truncation: keep_end` keeps over-long rows" in dropped.stderr
    kept = invoke(runner, *args, *sets("truncation=keep_end"), "--output", tmp_path / "kept")
    assert kept.exit_code == 0, kept.output
    before, after = (load_artifact(tmp_path / n).manifest["data"] for n in ("dropped", "kept"))
    assert after["rows"] > before["rows"] and after["truncated"] > 0 and before["truncated"] == 0


def test_export_directory_is_a_plain_model_with_its_card_and_lineage(
    runner, micro_ppo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    result = invoke(runner, "export", "--model", micro_ppo, "--output", out)
    assert result.exit_code == 0, result.output
    script = (
        "import sys\n"
        "sys.modules['peft'] = None  # importing peft now fails\n"
        "from transformers import AutoModelForCausalLM, pipeline\n"
        f"AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
        f"print(pipeline('text-generation', model={str(out)!r})('How many words: owl cat', max_new_tokens=4))\n"
    )
    subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    card = (out / "README.md").read_text()
    assert "| rm |" in card and "| ppo |" in card and "| sft |" in card  # every artifact, the RM included
    assert "Reward: the reward model `rm`" in card and "{" not in card.split("Reward:")[1].splitlines()[0]
    assert load_artifact(out, expect_stage="export").manifest["parents"]


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        (
            "tests.rewards:raises",
            "reward tests.rewards:raises raised RuntimeError: the reward server is down",
        ),
        ("tests.rewards:nan", "reward tests.rewards:nan returned NaN or infinity for 8 of 8 responses"),
        (
            "tests.rewards:wrong_length",
            "reward tests.rewards:wrong_length returned list of length 1, expected 8 floats",
        ),
        (
            "tests.rewards:words",
            "reward tests.rewards:words must return numbers, got ['good', 'good', 'good']",
        ),
    ],
)
def test_a_bad_reward_function_is_one_line_and_leaves_no_artifact(
    runner, micro_sft: Path, tmp_path: Path, reward: str, message: str
) -> None:
    args = ["ppo", "--model", micro_sft, "--prompts", PROMPTS, "--reward", reward, "--max-steps", "3"]
    args += [*MICRO_PPO, "--output", tmp_path / "out"]
    result = invoke(runner, *args)
    assert result.exit_code == 2 and error_line(result.stderr) == f"error: {message}"
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    if reward == "tests.rewards:raises":
        debug = subprocess.run(
            [sys.executable, "-m", "align.cli", *map(str, args)],
            cwd=REPO, capture_output=True, text=True, env={**os.environ, "ALIGN_DEBUG": "1"},
        )  # fmt: skip
        assert (
            debug.returncode != 0
            and "Traceback" in debug.stderr
            and "the reward server is down" in debug.stderr
        )


def test_label_api_refuses_a_contradictory_judgement(micro_sft: Path, tmp_path: Path) -> None:
    from tests.unit.test_feedback import client, label_task

    api = client(label_task(micro_sft, tmp_path / "log.jsonl"), "label.html")
    item = api.get("/api/next").json()["item"]
    for judgement in (
        {"ranking": [0, 1, 2], "tie": True},
        {"tie": True, "skip": True},
        {"worst": 0, "tie": True},
    ):
        reply = api.post("/api/judge", json={"item": item, **judgement})
        assert reply.status_code == 400 and "give exactly one of" in reply.json()["detail"], judgement
    assert api.post("/api/judge", json={"item": item, "tie": True}).status_code == 200


def test_off_loopback_every_api_call_needs_its_token_and_the_token_names_the_annotator(
    micro_sft: Path, tmp_path: Path
) -> None:
    """The server bound to 0.0.0.0, a client on 127.0.0.1: no token and a wrong token get 401, each
    annotator's token works and the row stores that annotator, whatever the client sends."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from align.feedback.server import access_tokens, create_app
    from tests.unit.test_feedback import label_task

    log = tmp_path / "log.jsonl"
    tokens = access_tokens("0.0.0.0", ["ann", "bob"], "tester")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(label_task(micro_sft, log), "label.html", tokens),
                                           host="0.0.0.0", port=port, log_level="warning"))  # fmt: skip
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert httpx.get(f"{url}/").status_code == 200  # the page itself holds no data
        assert httpx.get(f"{url}/api/next").status_code == 401
        assert httpx.get(f"{url}/api/next", params={"token": "wrong"}).status_code == 401
        bob = next(t for t, name in tokens.items() if name == "bob")
        item = httpx.get(f"{url}/api/next", params={"token": bob}).json()["item"]
        forged = httpx.post(f"{url}/api/judge", headers={"X-Align-Token": bob},
                            json={"item": item, "tie": True, "annotator": "mallory"})  # fmt: skip
        assert forged.status_code == 422  # no field beyond the judgement's own: the token names who
        judged = httpx.post(
            f"{url}/api/judge", headers={"X-Align-Token": bob}, json={"item": item, "tie": True}
        )
        assert judged.status_code == 200
        assert httpx.post(f"{url}/api/judge", json={"item": 1, "tie": True}).status_code == 401
    finally:
        server.should_exit = True
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["annotator"] for r in rows] == ["bob"]
    assert access_tokens("127.0.0.1", [], "tester") is None  # this machine only: no tokens


def test_report_to_logs_every_stage_to_an_offline_tracker(micro_sft: Path, tmp_path: Path) -> None:
    """`--report-to trackio` (a tracker that runs offline): the Trainer stages log through transformers'
    integration, PPO through accelerate's; each run is named `<run dir>/<stage>`. Without
    `tensorboard` in the list no TensorBoard events are written; metrics.jsonl always is."""
    store = tmp_path / "trackio"
    runs = tmp_path / "r"
    env = {"TRACKIO_DIR": str(store), "HF_HUB_OFFLINE": "1"}
    pairs = REPO / "data/synthetic/pairs.jsonl"
    commands = {
        "sft": ("--data", REPO / "data/synthetic/sft.jsonl", "--max-steps", "2", "--report-to", "tensorboard,trackio"),
        "rm": ("--data", pairs, "--max-steps", "2", "--report-to", "trackio", *sets("limit=64")),
        "ppo": ("--prompts", PROMPTS, "--reward", "align.data.synthetic:gold_reward", "--max-steps", "2",
                "--report-to", "trackio", *MICRO_PPO),
    }  # fmt: skip
    for stage, args in commands.items():
        result = align(stage, "--model", micro_sft, "--output", runs / stage, *args, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    import sqlite3

    with sqlite3.connect(store / "align.db") as db:
        logged = {}
        for run, metrics in db.execute("select run_name, metrics from metrics"):
            logged.setdefault(run, set()).update(json.loads(metrics))
    assert "train/loss" in logged["r/sft"] and "train/loss" in logged["r/rm"], logged
    assert {"ppo/score", "ppo/kl", "ppo/approxkl"} <= logged["r/ppo"], logged
    assert list((runs / "sft/logs").glob("events.out.tfevents.*"))
    for stage in ("rm", "ppo"):
        assert not list((runs / stage / "logs").rglob("events.out.tfevents.*"))
        assert (runs / stage / "logs/metrics.jsonl").stat().st_size > 0


def test_int8_export_has_int8_block_weights_and_runs_where_a_policy_runs(
    runner, micro_ppo: Path, tmp_path: Path
) -> None:
    """`align export --quantize int8`: GPT-2's Conv1D block weights stored as int8 (not left fp32), the
    weights well under half the fp32 bytes, logits close to the fp32 policy's, and `align generate`
    runs it; a training stage refuses it in one line."""
    import torch
    from safetensors import safe_open

    from align.models import load_int8, load_policy, resolve_model
    from align.quantization import WEIGHTS_FILE

    out = tmp_path / "int8"
    result = invoke(runner, "export", "--model", micro_ppo, "--output", out, "--quantize", "int8")
    assert result.exit_code == 0, result.output
    with safe_open(str(out / WEIGHTS_FILE), "pt") as weights:
        dtypes = {name: weights.get_slice(name).get_dtype() for name in weights.keys()}  # noqa: SIM118
    policy = load_policy(resolve_model(str(micro_ppo))).eval()
    blocks = [n for n in dtypes if n.startswith("transformer.h.") and n.endswith(".weight._data")]
    assert len(blocks) == 4 * policy.config.n_layer, dtypes  # c_attn, attn c_proj, c_fc, mlp c_proj
    assert all(dtypes[n] == "I8" for n in blocks), dtypes
    metrics = load_artifact(out).metrics
    assert metrics["weights_bytes"] < 0.5 * metrics["fp32_weights_bytes"]
    ids = torch.randint(0, policy.config.vocab_size, (2, 16))
    with torch.no_grad():
        fp32, int8 = policy(ids).logits, load_int8(out)(ids).logits
    assert (int8 - fp32).abs().max() < 0.05 * fp32.abs().max()
    assert (int8 - fp32).abs().max() > 0  # quantized, not a copy
    generated = invoke(runner, "generate", "--model", out, "--prompt", "How many words: owl cat")
    assert generated.exit_code == 0, generated.output
    refused = invoke(runner, "sft", "--model", out, "--data", REPO / "data/synthetic/sft.jsonl",
                     "--output", tmp_path / "sft")  # fmt: skip
    assert refused.exit_code == 2 and "an int8 export is for inference" in error_line(refused.stderr)
