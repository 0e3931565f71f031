"""Read raw rows from local files, directories or hub ids, each row tagged with where it came from.

Locations are `file:line` for JSONL, CSV and text, `file[item]` for JSON arrays, `file:row N` for
Parquet and `hub_id:row N` for hub data sets, so every error can say exactly where to look.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


@dataclass
class RawRow:
    location: str  # the row: `file:line`, `file[item]`, `file:row N`, `hub_id:row N`
    origin: str  # the file or hub data set it is in: the scope of the group a row names
    values: dict[str, Any]


@dataclass
class Source:
    """Where rows came from: recorded in the manifest so an artifact names its data exactly."""

    name: str
    sha256: str | None
    files: list[Path]


def open_source(name: str) -> Source:
    path = Path(name)
    if path.is_dir() and (path / "manifest.json").is_file():  # an align artifact: its data/ (align pairs)
        if not (path / "data").is_dir():
            raise DataError(f"{name}: an artifact without data/ (a model artifact, not a data set)")
        path = path / "data"
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in SUFFIXES)
        if not files:
            raise DataError(f"{name}: directory holds no {'/'.join(SUFFIXES)} files")
        digest = hashlib.sha256()
        for file in files:
            digest.update(str(file.relative_to(path)).encode())
            digest.update(_sha256(file).encode())
        return Source(name, digest.hexdigest(), files)
    if path.is_file():
        if _suffix(path) not in SUFFIXES:
            raise DataError(f"{name}: unsupported file type (use {', '.join(SUFFIXES)}, optionally .gz)")
        return Source(name, _sha256(path), [path])
    if _looks_like_path(name):
        raise DataError(f"{name}: no such file or directory")
    return Source(name, None, [])


def read_rows(source: Source) -> Iterator[RawRow]:
    if not source.files:
        yield from _read_hub(source.name)
        return
    for file in source.files:
        yield from _read_file(file)


def _read_file(path: Path) -> Iterator[RawRow]:
    suffix = _suffix(path)
    if suffix == ".parquet":
        yield from _read_parquet(path)
        return
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: empty file (no rows)")
    if suffix == ".jsonl":
        yield from _read_jsonl(path, text)
    elif suffix == ".json":
        yield from _read_json(path, text)
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for row in reader:
            if None in row:
                raise DataError(f"{path}:{reader.line_num}: more values than header columns")
            yield RawRow(f"{path}:{reader.line_num}", str(path), dict(row))
    else:  # .txt: one document per blank-line-separated block
        line = 1
        for block in text.split("\n\n"):
            if block.strip():
                yield RawRow(f"{path}:{line}", str(path), {"text": block.strip()})
            line += block.count("\n") + 2


def _read_jsonl(path: Path, text: str) -> Iterator[RawRow]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(value).__name__}")
        yield RawRow(f"{path}:{number}", str(path), value)


def _read_json(path: Path, text: str) -> Iterator[RawRow]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(value).__name__}")
    if not value:
        raise DataError(f"{path}: empty JSON array (no rows)")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"{path}[{index}]: expected a JSON object, got {type(item).__name__}")
        yield RawRow(f"{path}[{index}]", str(path), item)


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: unreadable Parquet file ({exc})") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: empty file (no rows)")
    for index, row in enumerate(table.to_pylist()):
        yield RawRow(f"{path}:row {index}", str(path), row)


def _read_hub(name: str) -> Iterator[RawRow]:
    """`name[:config][@split]` through `datasets.load_dataset` (needs the hub or a local cache)."""
    import datasets

    spec, _, split = name.partition("@")
    hub_id, _, config = spec.partition(":")
    try:
        data = datasets.load_dataset(hub_id, config or None, split=split or "train")
    except Exception as exc:  # datasets raises many types for unreachable or unknown ids
        raise DataError(
            f"{name}: not a local path, and the hub data set could not be loaded ({exc})"
        ) from None
    for index, row in enumerate(data):
        yield RawRow(f"{name}:row {index}", name, dict(row))


def _read_text(path: Path) -> str:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#x})") from None


def _suffix(path: Path) -> str:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1].lower() if suffixes else ""


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).suffix.lower() in (*SUFFIXES, ".gz")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
