"""Every accepted row shape normalises to the same conversational form; bad rows say where and why."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from align.data import load_data
from align.errors import DataError
from tests.conftest import write_jsonl

USER = [{"role": "user", "content": "Add 1 and 2."}]


def one(tmp_path: Path, row: dict, kind: str) -> dict:
    return load_data(str(write_jsonl(tmp_path / "d.jsonl", [row])), kind).rows[0]


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "Add 1 and 2.", "completion": "3"},
        {"instruction": "Add 1 and 2.", "input": "", "output": "3"},
        {"messages": [*USER, {"role": "assistant", "content": "3"}]},
        {"conversations": [{"from": "human", "value": "Add 1 and 2."}, {"from": "gpt", "value": "3"}]},
    ],
)
def test_sft_shapes(tmp_path: Path, row: dict) -> None:
    assert one(tmp_path, row, "sft") == {
        "prompt": USER,
        "completion": [{"role": "assistant", "content": "3"}],
    }


def test_alpaca_input_joins_the_instruction(tmp_path: Path) -> None:
    row = one(tmp_path, {"instruction": "Sort:", "input": "b a", "output": "a b"}, "sft")
    assert row["prompt"][0]["content"] == "Sort:\n\nb a"


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "Add 1 and 2.", "chosen": "3", "rejected": "4"},
        {
            "chosen": "\n\nHuman: Add 1 and 2.\n\nAssistant: 3",
            "rejected": "\n\nHuman: Add 1 and 2.\n\nAssistant: 4",
        },
        {
            "conversations": [{"from": "human", "value": "Add 1 and 2."}],
            "chosen": {"from": "gpt", "value": "3"},
            "rejected": {"from": "gpt", "value": "4"},
        },
        {
            "chosen": [*USER, {"role": "assistant", "content": "3"}],
            "rejected": [*USER, {"role": "assistant", "content": "4"}],
        },
        {
            "prompt": USER,
            "chosen": [{"role": "assistant", "content": "3"}],
            "rejected": [{"role": "assistant", "content": "4"}],
        },
    ],
)
def test_pair_shapes(tmp_path: Path, row: dict) -> None:
    pair = one(tmp_path, row, "pairs")
    assert (pair["prompt"], pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == (USER, "3", "4")


def test_multi_turn_transcript_keeps_earlier_turns(tmp_path: Path) -> None:
    prefix = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: Add 1 and 2."
    pair = one(
        tmp_path, {"chosen": prefix + "\n\nAssistant: 3", "rejected": prefix + "\n\nAssistant: 4"}, "pairs"
    )
    assert [m["role"] for m in pair["prompt"]] == ["user", "assistant", "user"]


def test_k_way_ranking_becomes_all_ordered_pairs(tmp_path: Path) -> None:
    row = {"prompt": "Add 1 and 2.", "responses": ["4", "3", "three"], "ranking": [1, 2, 0]}
    pairs = load_data(str(write_jsonl(tmp_path / "r.jsonl", [row])), "pairs").rows
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("3", "three"),
        ("3", "4"),
        ("three", "4"),
    ]
    assert len({p["group"] for p in pairs}) == 1


GROUPED_PAIRS = [
    {"prompt": "Add 1 and 2.", "chosen": "3", "rejected": "4", "group": "prompt-0"},
    {"prompt": "Add 1 and 2.", "chosen": "3", "rejected": "5", "group": "prompt-0"},
    {"prompt": "Add 2 and 2.", "chosen": "4", "rejected": "5", "group": "prompt-1"},
    {"prompt": "Add 2 and 2.", "chosen": "4", "rejected": "6"},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_pairs_naming_a_group_share_it_within_their_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"g{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(GROUPED_PAIRS))
    else:
        write_jsonl(path, GROUPED_PAIRS)
    (tmp_path / "h.jsonl").write_text(json.dumps(GROUPED_PAIRS[0]) + "\n")  # same name, another file
    groups = [p["group"] for p in load_data(str(tmp_path), "pairs").rows]
    assert groups[0] == groups[1] != groups[2] != groups[3]
    assert groups[4] != groups[0]
    assert groups[3].endswith({".jsonl": "g.jsonl:4", ".json": "g.json[3]"}[suffix])


def test_unusable_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a", "chosen": "x", "rejected": "x"},
        {"prompt": "a", "chosen": "x", "rejected": "y"},
        {"prompt": "", "chosen": "x", "rejected": "y"},
        {"prompt": "a", "chosen": "", "rejected": "y"},
        {"prompt": "a", "chosen": "x", "rejected": ""},  # saying nothing, ranked low: kept
    ]
    data = load_data(str(write_jsonl(tmp_path / "p.jsonl", rows)), "pairs")
    assert len(data.rows) == 2 and data.read == 5
    assert data.rows[1]["rejected"] == [{"role": "assistant", "content": ""}]
    assert data.info()["dropped"] == {"chosen equals rejected": 1, "empty prompt": 1, "empty chosen": 1}


def test_prompts_come_from_any_file(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a"},
        {"instruction": "b", "output": "x"},
        {"prompt": "c", "chosen": "x", "rejected": "y"},
    ]
    data = load_data(str(write_jsonl(tmp_path / "p.jsonl", rows)), "prompts")
    assert [r["prompt"][0]["content"] for r in data.rows] == ["a", "b", "c"]


def test_csv_parquet_json_gzip_and_directories(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d").mkdir()
    (tmp_path / "d/a.csv").write_text("prompt,completion\nAdd 1 and 2.,3\n")
    (tmp_path / "d/b.json").write_text(json.dumps([{"prompt": "x", "completion": "y"}]))
    (tmp_path / "d/c.jsonl.gz").write_bytes(gzip.compress(b'{"prompt": "p", "completion": "q"}\n'))
    pq.write_table(pa.table({"prompt": ["m"], "completion": ["n"]}), tmp_path / "d/e.parquet")
    data = load_data(str(tmp_path / "d"), "sft")
    assert [r["completion"][0]["content"] for r in data.rows] == ["3", "y", "q", "n"]
    assert data.source.sha256 and len(data.source.sha256) == 64


@pytest.mark.parametrize(
    ("content", "kind", "message"),
    [
        ('{"prompt": "a"}\n', "sft", r"d.jsonl:1: field 'completion' missing \(has: prompt\)"),
        ('{"prompt": "a", "completion": 3}\n', "sft", "d.jsonl:1: field 'completion'"),
        ('{"prompt": "a", "completion": "b"}\n{oops\n', "sft", r"d.jsonl:2: invalid JSON"),
        ("[1, 2]\n", "sft", "d.jsonl:1: expected a JSON object, got list"),
        ('{"prompt": "a", "chosen": "b"}\n', "pairs", "d.jsonl:1: field 'rejected' missing"),
        ('{"chosen": "no turns", "rejected": "x"}\n', "pairs", "d.jsonl:1: field 'chosen' is a plain string"),
        (
            '{"prompt": "a", "responses": ["x", "y"], "ranking": [0, 0]}\n',
            "pairs",
            "field 'ranking' must list",
        ),
        ('{"prompt": "a", "chosen": "b", "rejected": "c", "group": [1]}\n', "pairs", "field 'group' must be"),
        ('{"messages": [{"role": "wizard", "content": "x"}]}\n', "sft", "unknown role 'wizard'"),
        ('{"messages": [{"role": "user", "content": "x"}]}\n', "sft", "must end with an assistant turn"),
        ('{"text": "a"}\n', "prompts", r"field 'prompt' missing \(has: text\)"),
        ("\n\n", "sft", "empty file"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path: Path, content: str, kind: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_data(str(path), kind)


def test_non_utf8_and_missing_paths(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not UTF-8"):
        load_data(str(path), "sft")
    with pytest.raises(DataError, match="no such file"):
        load_data(str(tmp_path / "missing.jsonl"), "sft")


def test_real_hh_rlhf_transcripts_split_into_prompt_and_responses(shared_data: Path) -> None:
    data = load_data(str(shared_data / "hh-rlhf/harmless-base-test-slice-train-1312.jsonl.gz"), "pairs")
    assert data.read == 1312 and len(data.rows) + sum(data.dropped.values()) == 1312
    with gzip.open(shared_data / "hh-rlhf/harmless-base-test-slice-train-1312.jsonl.gz", "rt") as handle:
        raw = json.loads(handle.readline())
    first = data.rows[0]
    rendered = "".join(
        f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in first["prompt"]
    )
    assert raw["chosen"] == f"{rendered}\n\nAssistant: {first['chosen'][0]['content']}"
    assert raw["rejected"] == f"{rendered}\n\nAssistant: {first['rejected'][0]['content']}"
    multi_turn = [r for r in data.rows if len(r["prompt"]) > 1]
    assert multi_turn and all(r["prompt"][-1]["role"] == "user" for r in data.rows)


def test_real_alpaca_and_sharegpt_pairs(shared_data: Path) -> None:
    alpaca = load_data(str(shared_data / "alpaca/alpaca-data-subset-train-4500.json"), "sft")
    assert alpaca.read == 4500 and len(alpaca.rows) + sum(alpaca.dropped.values()) == 4500
    with_input = [r for r in alpaca.rows if "\n\n" in r["prompt"][0]["content"]]
    assert len(with_input) > 1000  # about 39 % of rows carry an input
    sharegpt = load_data(str(shared_data / "llamafactory-dpo-en-demo/dpo_en_demo-train-250.json"), "pairs")
    assert len(sharegpt.rows) == 250
    assert any(r["prompt"][0]["role"] == "system" for r in sharegpt.rows)
    assert all(r["prompt"][-1]["role"] == "user" for r in sharegpt.rows)


def test_a_pairs_file_serves_as_sft_data_with_its_chosen_answers(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Add 1 and 2.", "chosen": "3", "rejected": "4"},
        {"prompt": "Add 1 and 2.", "responses": ["4", "3"], "ranking": [1, 0]},
    ]
    data = load_data(str(write_jsonl(tmp_path / "p.jsonl", rows)), "sft")
    assert [r["completion"][0]["content"] for r in data.rows] == ["3", "3"]
