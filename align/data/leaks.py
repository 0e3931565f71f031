"""Whether held-out prompts leak into training inputs, checked on the files themselves (`align data check`).

The generator keeps every set in its region (`align.data.synthetic.region_of`), but a figure on `eval`
is only believed when the committed files are shown to obey that, so this reads them back without
trusting the generator: every task stated anywhere in a training input (prompt, answer, ranked
response or corpus sentence, in any phrasing `find_tasks` knows) is collected by its body and region
key, and no `dev`, `eval` or `fresh` prompt may share either with them.

    align data check data/synthetic
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from align.data.synthetic import find_tasks, region_of, task_of
from align.errors import DataError

# file -> the region its tasks must come from
TRAINING = {
    "pretrain.jsonl.gz": "train",
    "sft.jsonl": "train",
    "pairs.jsonl": "train",
    "ppo.jsonl": "train",
    "refresh.jsonl": "refresh",
}
HELD_OUT = {"dev.jsonl": "dev", "eval.jsonl": "eval", "fresh.jsonl": "eval"}
_SHOWN = 10  # problems quoted; the rest are counted


@dataclass
class LeakReport:
    """What the training inputs state, and every way a held-out prompt meets them."""

    bodies: dict[tuple[str, str], str] = field(default_factory=dict)  # (family, body) -> first file:line
    keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (family, region key) -> first file:line
    problems: list[str] = field(default_factory=list)
    held_out: Counter[str] = field(default_factory=Counter)  # held-out file -> prompts checked

    def summary(self) -> str:
        checked = ", ".join(f"{name} {n}" for name, n in self.held_out.items())
        head = f"{len(self.bodies)} task bodies in training inputs; held-out prompts checked: {checked}"
        if not self.problems:
            return f"{head}; no leaks"
        shown = "\n  ".join(self.problems[:_SHOWN])
        more = f"\n  ... and {len(self.problems) - _SHOWN} more" if len(self.problems) > _SHOWN else ""
        return f"{head}; {len(self.problems)} leaks:\n  {shown}{more}"


def check(directory: Path) -> LeakReport:
    """Read every training file present, then hold each held-out prompt against what they state."""
    report = LeakReport()
    for name, region in TRAINING.items():
        for where, text in _texts(directory / name):
            for task in find_tasks(text):
                report.bodies.setdefault((task.family, task.body), where)
                report.keys.setdefault((task.family, task.key), where)
                if region_of(task) != region:
                    report.problems.append(f"{where}: states the {region_of(task)} task '{task.body}'")
    for name, region in HELD_OUT.items():
        for where, prompt in _prompts(directory / name):
            report.held_out[name] += 1
            report.problems.extend(_held_out_problems(report, where, prompt, region))
    return report


def fresh_prompts(report: LeakReport, prompts: list[dict], taken: set[str]) -> Counter[str]:
    """Per family, the prompts whose body and key no training input states and that `taken` lacks."""
    fresh: Counter[str] = Counter()
    for row in prompts:
        task = task_of(row["prompt"])
        if task is None or row["prompt"] in taken:
            continue
        if (task.family, task.body) not in report.bodies and (task.family, task.key) not in report.keys:
            fresh[task.family] += 1
    return fresh


def _held_out_problems(report: LeakReport, where: str, prompt: str, region: str) -> Iterator[str]:
    task = task_of(prompt)
    if task is None:
        yield f"{where}: states no task the gold reward knows"
        return
    if region_of(task) != region:
        yield f"{where}: '{task.body}' belongs to the {region_of(task)} region, not {region}"
    if (task.family, task.body) in report.bodies:
        yield f"{where}: '{task.body}' is stated in training input {report.bodies[task.family, task.body]}"
    elif (task.family, task.key) in report.keys:
        yield f"{where}: the pair '{task.key}' is in training input {report.keys[task.family, task.key]}"


def _rows(path: Path) -> Iterator[tuple[str, object]]:
    if not path.exists():
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                yield f"{path.name}:{number}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not JSON ({exc.msg})") from None


def _texts(path: Path) -> Iterator[tuple[str, str]]:
    """Every string anywhere in every row: prompts, answers, ranked responses, corpus text."""
    for where, row in _rows(path):
        stack = [row]
        while stack:
            value = stack.pop()
            if isinstance(value, str):
                yield where, value
            elif isinstance(value, dict):
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)


def _prompts(path: Path) -> Iterator[tuple[str, str]]:
    for where, row in _rows(path):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise DataError(f"{where}: field 'prompt' missing")
        yield where, row["prompt"]
