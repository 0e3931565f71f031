"""Checkpoints that prove themselves: each one records every file's sha256 in `checksums.json`, written
last, and `--resume` re-hashes before loading. A checkpoint with a missing, unreadable or modified file
(or no record: cut short before it was sealed) is set aside as `damaged-<name>` with a one-line notice,
and the run resumes from the newest intact one; when none is left it stops in one line naming what it
found. PPO's `step-N` and the Trainer stages' `checkpoint-N` folders are sealed the same way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from align.artifacts import sha256_file, write_json_atomic
from align.errors import DataError

CHECKSUMS = "checksums.json"
logger = logging.getLogger("align")


def seal(directory: Path) -> None:
    """Record the sha256 of every file under `directory`; the record is written last."""
    files = {
        str(path.relative_to(directory)): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != CHECKSUMS
    }
    write_json_atomic(directory / CHECKSUMS, files)


def problem(directory: Path) -> str | None:
    """What is wrong with a checkpoint, or None when every recorded file re-hashes as recorded."""
    try:
        recorded = json.loads((directory / CHECKSUMS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {CHECKSUMS} (written last: the checkpoint was cut short)"
    except (OSError, ValueError) as exc:
        return f"{CHECKSUMS} unreadable ({exc})"
    for name, digest in recorded.items():
        path = directory / name
        try:
            if sha256_file(path) != digest:
                return f"{name} modified (sha256 differs from {CHECKSUMS})"
        except FileNotFoundError:
            return f"{name} missing"
        except OSError as exc:
            return f"{name} unreadable ({exc.strerror})"
    return None


def newest_intact(found: list[Path]) -> Path | None:
    """The newest of `found` (oldest first) that proves intact; each damaged one newer than it is set
    aside with a notice. None when nothing was found; an error when all were damaged."""
    damaged = []
    for directory in reversed(found):
        why = problem(directory)
        if why is None:
            return directory
        aside = directory.with_name(f"damaged-{directory.name}")
        directory.rename(aside)
        damaged.append(f"{directory.name}: {why}")
        logger.warning(
            "%s: %s; set aside as %s, resuming from an older checkpoint", directory, why, aside.name
        )
    if damaged:
        raise DataError(
            f"{found[0].parent}: no intact checkpoint to resume from ({'; '.join(damaged)}); rerun without --resume"
        )
    return None
