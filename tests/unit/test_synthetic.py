from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from align.data.synthetic import (
    EOS,
    FAMILIES,
    SynthSettings,
    generate,
    gold_reward,
    gold_score,
    parse_task,
    write,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "<|user|>\n{}\n<|assistant|>\n"

# (prompt, correct answer, a wrong answer) for every family
CASES = [
    ("What is 38 plus 5?", "43", "33"),
    ("Add 7 and 9.", "16", "15"),
    ("Compute 12 + 0.", "12", "13"),
    ("Reverse the words: cat dog sun", "sun dog cat", "dog sun cat"),
    ("Last word of: owl jam fox", "fox", "owl"),
    ("How many words: cat cat dog", "3", "4"),
    ("Sort the numbers: 5 2 9 2", "2 2 5 9", "9 5 2 2"),
    ("Repeat cat dog 2 times", "cat dog cat dog", "cat dog cat dog cat dog"),
]


@pytest.mark.parametrize(("prompt", "answer", "wrong"), CASES)
def test_gold_reward_grades_each_family(prompt: str, answer: str, wrong: str) -> None:
    rendered = TEMPLATE.format(prompt)
    assert gold_score(rendered, answer + EOS) == 1.0  # correct and stops
    assert gold_score(rendered, f" {answer} " + EOS) == 1.0  # surrounding whitespace is harmless
    assert gold_score(rendered, answer) == 0.6  # correct but never stopped
    assert gold_score(rendered, f"Sure! {answer}" + EOS) == 0.5  # verbose
    assert gold_score(rendered, f"The answer: {answer}. Hope this helps!") == 0.25  # verbose, no EOS
    assert gold_score(rendered, wrong + EOS) == 0.0
    assert gold_score(rendered, f"Sure! {wrong}" + EOS) == 0.0
    assert gold_score(rendered, " ".join([answer] * 6) + EOS) == 0.0  # rambling repetition
    assert gold_score(rendered, EOS) == 0.0


def test_gold_reward_is_batched_and_ignores_unknown_prompts() -> None:
    assert gold_reward(["Add 1 and 2.", "Tell me a joke"], ["3" + EOS, "3" + EOS]) == [1.0, 0.0]
    assert parse_task("Tell me a joke") is None


def test_generator_is_deterministic_and_prompt_sets_are_disjoint() -> None:
    settings = SynthSettings(
        pretrain_docs=50, sft=300, pairs=200, rankings=20, ppo_prompts=120, eval_prompts=120
    )
    first, second = generate(settings), generate(settings)
    assert first == second
    prompt_sets = {
        name: {row["prompt"] for row in rows} for name, rows in first.items() if name != "pretrain"
    }
    names = list(prompt_sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not prompt_sets[a] & prompt_sets[b], f"{a} and {b} share prompts"
    families = {row["family"] for row in first["eval"]}
    assert families == set(FAMILIES)


def test_demonstrations_are_imperfect_and_pairs_follow_gold_up_to_noise() -> None:
    data = generate(
        SynthSettings(pretrain_docs=10, sft=2000, pairs=2000, rankings=0, ppo_prompts=0, eval_prompts=0)
    )
    demo_gold = [gold_score(r["prompt"], r["completion"] + EOS) for r in data["sft"]]
    assert 0.05 < sum(g < 1.0 for g in demo_gold) / len(demo_gold) < 0.6  # verbose or slipped demos exist
    agree = [
        gold_score(p["prompt"], p["chosen"] + EOS) > gold_score(p["prompt"], p["rejected"] + EOS)
        for p in data["pairs"]
    ]
    assert 0.85 < sum(agree) / len(agree) < 0.95  # 10 % label noise


def test_committed_files_regenerate_bit_identically(tmp_path: Path) -> None:
    record = json.loads((REPO / "data/synthetic/settings.json").read_text())
    hashes = write(SynthSettings(**record["settings"]), tmp_path)
    assert hashes == record["files"]
    for name, digest in hashes.items():
        assert hashlib.sha256((REPO / "data/synthetic" / name).read_bytes()).hexdigest() == digest
