"""The judgement log: one JSON row per judgement, appended and fsync'd at once, so nothing is lost.

A label file is read by `align rm` unchanged: ranking rows are K-way rankings, best/worst and arena rows
are preference pairs, and tie/skip rows are kept for the record (the pairs loader drops and counts them).
A restarted server reads the log back and continues with the first item that has no judgement.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from align.errors import DataError


class JudgementLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows = self._read() if self.path.exists() else []

    @property
    def done(self) -> set[int]:
        return {row["item"] for row in self.rows}

    def annotators(self, item: int) -> set[str]:
        """Who has judged the item (an item shown to two annotators has two rows)."""
        return {row.get("annotator", "") for row in self.rows if row["item"] == item}

    def append(self, row: dict[str, Any], annotator: str) -> dict[str, Any]:
        record = {**row, "annotator": annotator, "timestamp": dt.datetime.now(dt.timezone.utc).isoformat()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.rows.append(record)
        return record

    def _read(self) -> list[dict[str, Any]]:
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            # A write cut short by a kill: that judgement was never acknowledged, so drop the fragment.
            text = text[: text.rfind("\n") + 1]
            with open(self.path, "r+", encoding="utf-8") as handle:
                handle.truncate(len(text.encode("utf-8")))
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{self.path}:{number}: not a JSON judgement ({exc.msg}); fix or move the file"
                ) from None
            if not isinstance(row, dict) or not isinstance(row.get("item"), int):
                raise DataError(
                    f"{self.path}:{number}: field 'item' missing; not a judgement log of align label/arena"
                )
            rows.append(row)
        return rows
