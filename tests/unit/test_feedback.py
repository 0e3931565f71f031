"""`align label` and `align arena`: the JSON API, the judgement log, resuming, the headless judges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.data import load_data
from align.decoding.generate import Decoding
from align.errors import DataError
from align.feedback.store import JudgementLog
from align.feedback.tasks import ArenaTask, LabelTask, PolicyAnswers
from tests.conftest import REPO, invoke, train_rm_briefly

PROMPTS = REPO / "data/synthetic/eval.jsonl"


def label_task(model: Path, log: Path, k: int = 3, n: int = 4) -> LabelTask:
    prompts = [row["prompt"] for row in load_data(str(PROMPTS), "prompts", n).rows]
    sampler = PolicyAnswers(str(model), Decoding(temperature=1.0, max_new_tokens=12), seed=0)
    return LabelTask(prompts, JudgementLog(log), "tester", sampler=sampler, k=k)


def client(task, page: str):
    from fastapi.testclient import TestClient

    from align.feedback.server import create_app

    return TestClient(create_app(task, page))


def test_label_api_records_each_judgement_at_once(micro_sft: Path, tmp_path: Path) -> None:
    log = tmp_path / "rankings.jsonl"
    api = client(label_task(micro_sft, log), "label.html")
    assert "Rank the responses" in api.get("/").text
    first = api.get("/api/next").json()
    assert (first["item"], first["done"], first["total"], len(first["responses"])) == (0, 0, 4, 3)
    assert api.post("/api/judge", json={"item": 0, "ranking": [0, 0, 1]}).status_code == 400
    assert api.post("/api/judge", json={"item": 0, "ranking": [2, 0, 1]}).json()["done"] == 1
    assert api.post("/api/judge", json={"item": 0, "ranking": [2, 0, 1]}).status_code == 400  # judged
    second = api.get("/api/next").json()
    assert api.post("/api/judge", json={"item": second["item"], "best": 1, "worst": 0}).status_code == 200
    assert api.post("/api/judge", json={"item": 2, "skip": True}).status_code == 200
    rows = [json.loads(line) for line in log.read_text().splitlines()]  # on disk before the reply came
    assert [r["judgement"] for r in rows] == ["ranking", "best_worst", "skip"]
    assert rows[0]["responses"] == first["responses"] and rows[0]["ranking"] == [2, 0, 1]
    assert rows[1]["chosen"] == second["responses"][1] and rows[1]["annotator"] == "tester"
    pairs = load_data(str(log), "pairs")
    assert pairs.dropped == {"skip judgement": 1}
    ranked = [first["responses"][i] for i in [2, 0, 1]]
    distinct = sum(a != b for k, a in enumerate(ranked) for b in ranked[k + 1 :])
    assert len(pairs.rows) == distinct + 1  # the ranking's C(3, 2) pairs of distinct answers, one best/worst


def test_a_restart_resumes_with_the_same_responses(micro_sft: Path, tmp_path: Path) -> None:
    log = tmp_path / "rankings.jsonl"
    task = label_task(micro_sft, log)
    shown = task.next_payload()
    task.submit({"item": 0, "tie": True})
    unfinished = task.next_payload()
    with open(log, "a") as handle:
        handle.write('{"item": 1, "judgement": "rank')  # a write cut short by a kill
    restarted = label_task(micro_sft, log)
    assert restarted.log.done == {0} and log.read_text().endswith("\n")
    assert restarted.next_payload()["responses"] == unfinished["responses"] != shown["responses"]


def test_a_foreign_file_is_refused_not_appended_to(micro_sft: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "pairs.jsonl"
    foreign.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError, match="pairs.jsonl:1: field 'item' missing"):
        JudgementLog(foreign)


def test_arena_hides_names_shuffles_sides_and_tracks_the_win_rate(
    micro_sft: Path, micro_dpo: Path, tmp_path: Path
) -> None:
    prompts = [row["prompt"] for row in load_data(str(PROMPTS), "prompts", 6).rows]
    sampling = Decoding(temperature=0.7, max_new_tokens=12)
    task = ArenaTask(
        prompts,
        JudgementLog(tmp_path / "votes.jsonl"),
        a=PolicyAnswers(str(micro_sft), sampling),
        b=PolicyAnswers(str(micro_dpo), sampling),
    )
    api = client(task, "arena.html")
    lefts, votes = set(), ["left", "right", "tie", "left", "left", "right"]
    for vote in votes:
        item = api.get("/api/next").json()
        assert "model_a" not in item and str(micro_sft) not in json.dumps(item)
        lefts.add(task.pair(item["item"])["left"])
        stats = api.post("/api/judge", json={"item": item["item"], "vote": vote}).json()
    assert lefts == {"a", "b"}  # sides really swap
    rows = [json.loads(line) for line in (tmp_path / "votes.jsonl").read_text().splitlines()]
    b_wins = sum(r["winner"] == "b" for r in rows)
    assert stats["votes"] == 6 and stats["b_wins"] == b_wins and stats["ties"] == 1
    assert stats["b_win_rate"] == pytest.approx((b_wins + 0.5) / 6)
    finished = api.get("/api/next").json()
    assert finished["finished"] and finished["model_b"] == str(micro_dpo)
    pairs = load_data(str(tmp_path / "votes.jsonl"), "pairs")
    assert pairs.dropped["tie judgement"] == 1  # a tie is no preference; every other vote is a pair
    assert len(pairs.rows) + pairs.dropped["chosen equals rejected"] == 5


def test_headless_label_feeds_align_rm(runner, micro_sft: Path, tmp_path: Path) -> None:
    rankings = tmp_path / "rankings.jsonl"
    args = [
        "label",
        "--model",
        micro_sft,
        "--data",
        PROMPTS,
        "--limit",
        "12",
        "--k",
        "3",
        "--output",
        rankings,
    ]
    result = invoke(runner, *args, "--reward", "tests.rewards:longer", "--max-new-tokens", "16")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in rankings.read_text().splitlines()]
    assert len(rows) == 12 and json.loads(result.output.splitlines()[-1])["done"] == 12
    for row in (r for r in rows if r["judgement"] == "ranking"):
        lengths = [min(len(row["responses"][i]), 40) for i in row["ranking"]]
        assert lengths == sorted(lengths, reverse=True)  # best first, as the judge scored them
    train_rm_briefly(runner, micro_sft, rankings, tmp_path / "rm")
    pairs = load_data(str(rankings), "pairs").rows
    assert json.loads((tmp_path / "rm/manifest.json").read_text())["data"]["rows"] == len(pairs) > 12


def test_bad_feedback_inputs(runner, micro_sft: Path, micro_rm: Path, tmp_path: Path) -> None:
    base = ["--data", PROMPTS, "--output", tmp_path / "x.jsonl"]
    for args, message in (
        (["label", "--model", micro_sft, *base, "--k", "1"], "--k must be >= 2"),
        (["label", "--model", micro_rm, *base], "rm"),
        (
            [
                "arena",
                "--model-a",
                micro_sft,
                "--model-b",
                micro_sft,
                *base,
                "--reward",
                "x:y",
                "--reward-model",
                micro_rm,
            ],
            "not both",
        ),
    ):
        result = invoke(runner, *args)
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "x.jsonl").exists()


def saved_label_task(log: Path, items: int = 3, k: int = 3) -> LabelTask:
    """A label task over fixed answers (no model), as a round of `align rounds` saves them."""
    from align.feedback.tasks import SavedAnswers

    prompts = [row["prompt"] for row in load_data(str(PROMPTS), "prompts", items).rows]
    rows = [
        {"prompt": p, "prompt_text": str(p), "responses": [f"answer {i} {j}<|endoftext|>" for j in range(k)]}
        for i, p in enumerate(prompts)
    ]
    return LabelTask(prompts, JudgementLog(log), "tester", sampler=SavedAnswers(rows, "<|endoftext|>"), k=k)


@pytest.mark.parametrize(
    "body",
    [
        {"item": 0, "ranking": [0, "1", 2]},
        {"item": 0, "best": 1.0, "worst": 0},
        {"item": 0, "ranking": [1.0, 0.0, 2.0]},
        {"item": True, "tie": True},
        {"item": 0, "tie": "no"},
        {"item": 0, "tie": True, "note": "extra"},
        [0, 1],
        "ranking",
    ],
)
def test_a_mistyped_judgement_is_refused_with_422(tmp_path: Path, body) -> None:
    api = client(saved_label_task(tmp_path / "labels.jsonl"), "label.html")
    reply = api.post("/api/judge", json=body)
    assert reply.status_code == 422, reply.text
    assert not (tmp_path / "labels.jsonl").exists()


def test_oversized_bodies_get_413_and_there_is_no_schema_page(tmp_path: Path) -> None:
    api = client(saved_label_task(tmp_path / "labels.jsonl"), "label.html")
    huge = {"item": 0, "tie": True, "pad": "x" * 100_000}
    assert api.post("/api/judge", json=huge).status_code == 413
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert api.get(path).status_code == 404


def test_fuzzed_judgements_never_fail_the_server_and_every_row_reads_back(tmp_path: Path) -> None:
    """Hypothesis posts any JSON under the API's keys and others: the reply is 200, 400, 413 or 422, never
    a 500, and whatever was stored loads with `align rm`'s reader."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    log = tmp_path / "labels.jsonl"
    task = saved_label_task(log, items=200)
    api = client(task, "label.html")
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-3, 5)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=5)
    )
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=6)
    keys = st.sampled_from(["item", "ranking", "best", "worst", "tie", "skip", "vote", "x"])

    plausible = st.fixed_dictionaries(
        {"item": st.integers(-1, 200)},
        optional={
            "ranking": st.permutations(range(3)) | values,
            "best": st.integers(0, 3) | values,
            "worst": st.integers(0, 3) | values,
            "tie": st.booleans() | values,
            "skip": st.booleans(),
        },
    )

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(plausible | st.dictionaries(keys, values, max_size=5) | values)
    def post(body) -> None:
        assert api.post("/api/judge", json=body).status_code in (200, 400, 413, 422)

    post()
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows, "the fuzz never posted a valid judgement"
    item = api.get("/api/next").json()["item"]  # one preference among them, should the fuzz store only skips
    assert api.post("/api/judge", json={"item": item, "ranking": [2, 0, 1]}).status_code == 200
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(type(row["item"]) is int for row in rows)
    assert all(all(type(i) is int for i in row.get("ranking", [])) for row in rows)
    pairs = load_data(str(log), "pairs")
    assert pairs.read == len(rows) and pairs.rows


def test_the_first_response_can_be_the_best(tmp_path: Path) -> None:
    """Response 0 as the best is a choice, not a missing field."""
    api = client(saved_label_task(tmp_path / "labels.jsonl"), "label.html")
    assert api.post("/api/judge", json={"item": 0, "best": 0, "worst": 2}).status_code == 200
    row = json.loads((tmp_path / "labels.jsonl").read_text())
    assert (row["judgement"], row["best"], row["worst"]) == ("best_worst", 0, 2)
