"""Held-out splits that keep related rows together (a ranking's pairs, a prompt's samples)."""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from typing import Any

from align.errors import DataError


def hold_out(
    rows: list[Any], fraction: float, seed: int, group: Callable[[int, Any], Hashable] = lambda i, row: i
) -> tuple[list[Any], list[Any]]:
    """(kept, held) rows, both in their original order: a seeded `fraction` of the groups (at least one),
    whole, goes to `held`. By default every row is its own group."""
    keys = [group(i, row) for i, row in enumerate(rows)]
    groups = sorted(set(keys))
    if len(groups) < 2:
        raise DataError(
            f"{len(rows)} rows in {len(groups)} group(s): none left to train on once a share is held out "
            "for evaluation (give more rows, or set eval_fraction=0)"
        )
    random.Random(seed).shuffle(groups)
    held = set(groups[: max(1, int(len(groups) * fraction))])
    return [r for r, k in zip(rows, keys, strict=True) if k not in held], [
        r for r, k in zip(rows, keys, strict=True) if k in held
    ]


def by_group(index: int, row: dict[str, Any]) -> Hashable:
    """The group a pair row names (the pairs of one ranking, of one prompt's samples)."""
    return row["group"]
