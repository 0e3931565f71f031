"""`align data inspect`: what a stage will see of a data source, before spending time training on it."""

from __future__ import annotations

import json
import statistics
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from align.data.formats import load_data


def inspect(source: str, kind: str, tokenizer_name: str | None = None) -> Group:
    dataset = load_data(source, kind)
    table = Table("figure", "value", title=f"{source} as {kind}")
    table.add_row("rows read", str(dataset.read))
    table.add_row("usable rows", str(len(dataset.rows)))
    for reason, count in sorted(dataset.dropped.items()):
        table.add_row(f"dropped: {reason}", str(count))
    if tokenizer_name:
        lengths = _token_lengths(dataset.rows, kind, tokenizer_name)
        cuts = statistics.quantiles(lengths, n=100) if len(lengths) > 1 else lengths * 99
        for pct in (50, 90, 99):
            table.add_row(f"tokens p{pct}", str(int(cuts[pct - 1])))
        table.add_row("tokens max", str(max(lengths)))
    examples = [Text(json.dumps(row, ensure_ascii=False, indent=1)[:1200]) for row in dataset.rows[:2]]
    return Group(table, Text("examples as the stage sees them:", style="bold"), *examples)


def _token_lengths(rows: list[dict[str, Any]], kind: str, tokenizer_name: str) -> list[int]:
    from align.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(tokenizer_name))

    def length(row: dict[str, Any]) -> int:
        if kind == "text":
            return len(tokenizer(row["text"])["input_ids"])
        turns = row["prompt"] + (row.get("completion") or row.get("chosen") or [])
        return len(tokenizer.apply_chat_template(turns, tokenize=True, return_dict=True)["input_ids"])

    return [length(row) for row in rows]
