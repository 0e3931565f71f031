"""The artifact contract: one directory per stage run, committed atomically, verifiable by hash.

    runs/<run>/<stage>/
      manifest.json   stage, versions, resolved config, parents (relative path + sha256), data,
                      base model, files {name: sha256}, metrics
      model/          save_pretrained output (full weights or LoRA adapter) and the tokenizer
      logs/           TensorBoard events and metrics.jsonl

A run works in `<output>.partial/` (which holds its checkpoints, so `--resume` finds them) and is
renamed into place only when complete: a killed run never leaves a directory a later stage accepts.
Under `accelerate launch` every process runs the stage, but only the main one commits: the others
write into a private scratch directory that is discarded, and share the main one's checkpoints.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from align.distributed import process_rank, wait_for_all_processes
from align.errors import WRITING, ArtifactError

MANIFEST = "manifest.json"
PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"  # the previous artifact, for the instant of the swap
logger = logging.getLogger("align")
_LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers")


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def model_dir(self) -> Path:
        """model/, or the artifact directory itself for an export (which is a plain model directory)."""
        return self.path / self.manifest.get("model_dir", "model")

    @property
    def metrics(self) -> dict[str, Any]:
        """The training record's figures, and those of the newest evaluation on the default eval set (the
        headline keys `align eval` has always given: gold_sampled, kl_to_reference...)."""
        quoted = self.evaluation
        return {**self.manifest.get("metrics", {}), **(quoted["figures"] if quoted else {})}

    @property
    def evaluation(self) -> dict[str, Any] | None:
        """The evaluation `metrics` quotes: the newest record on the default eval set, or None."""
        records = [record for record in evaluations(self) if record["evaluated"].get("default")]
        return records[-1] if records else None

    @property
    def sha256(self) -> str:
        """Content identity: the hash of the file table, so metrics added later (eval) do not change it."""
        return content_hash(self.manifest)

    def parent(self, stage: str) -> Artifact | None:
        """The input artifact of the given stage, resolved relative to this artifact."""
        for record in self.manifest.get("parents", []):
            if record["stage"] == stage:
                return load_artifact(os.path.normpath(self.path / record["path"]))
        return None


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_artifact(path: str | Path, expect_stage: str | tuple[str, ...] | None = None) -> Artifact:
    """Open an artifact, refusing a missing, corrupt or wrong-stage one with a message saying which."""
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX):
        raise ArtifactError(f"{path}: an unfinished run (resume it with --resume), not an artifact")
    manifest_path = path / MANIFEST
    restore_interrupted_swap(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such artifact directory")
    if not manifest_path.is_file():
        raise ArtifactError(f"{path}: not an align artifact ({MANIFEST} missing)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: corrupt manifest ({exc})") from None
    if not isinstance(manifest, dict) or "stage" not in manifest or "files" not in manifest:
        raise ArtifactError(f"{manifest_path}: corrupt manifest (no 'stage' or 'files')")
    for name in manifest["files"]:
        _check_inside(path, name, manifest_path)
    for record in manifest.get("parents", []):
        if not isinstance(record, dict) or "path" not in record or "stage" not in record:
            raise ArtifactError(f"{manifest_path}: corrupt manifest (bad parent record)")
    artifact = Artifact(path, manifest)
    expected = (expect_stage,) if isinstance(expect_stage, str) else expect_stage
    if expected and artifact.stage not in expected:
        raise ArtifactError(
            f"{path}: a '{artifact.stage}' artifact, but this needs a {' or '.join(repr(s) for s in expected)} one"
        )
    missing = [name for name in manifest["files"] if not (path / name).is_file()]
    if missing:
        raise ArtifactError(f"{path}: incomplete artifact, missing {missing[0]} (run `align verify {path}`)")
    return artifact


def verify(path: str | Path) -> list[str]:
    """Re-hash every file the manifest lists; return one line per problem (empty: intact)."""
    artifact = load_artifact(path)
    problems = []
    for name, digest in artifact.manifest["files"].items():
        if sha256_file(artifact.path / name) != digest:
            problems.append(f"{name}: modified (sha256 differs from the manifest)")
    for record in artifact.manifest.get("parents", []):
        parent = artifact.path / record["path"]
        if not is_artifact(parent):
            problems.append(f"parent {record['stage']}: not found at {record['path']}")
        elif record.get("sha256") and load_artifact(parent).sha256 != record["sha256"]:
            problems.append(f"parent {record['stage']}: its files changed since this artifact was made")
        else:  # its manifest is the one recorded: are its files still what that manifest says?
            problems += [f"parent {record['stage']}: {problem}" for problem in verify(parent)]
    return problems


def intact(artifact: Artifact) -> Artifact:
    """The artifact, once every file its manifest lists re-hashes to the recorded sha256: a stage, eval,
    export, generate and chat load nothing damaged. A file's hash is cached by path, size and mtime, so
    large weights are read once (`hash_cache_path()`)."""
    cache = _hash_cache()
    known = dict(cache)
    for name, digest in artifact.manifest["files"].items():
        if cached_sha256(artifact.path / name, cache) != digest:
            raise ArtifactError(
                f"{artifact.path / name}: modified since the artifact was made (sha256 differs from the "
                f"manifest); `align verify {artifact.path}` lists every such file"
            )
    if cache != known:  # a file was hashed: keep it; an artifact known already costs one read
        _save_hash_cache(cache)
    return artifact


_HASH_CACHE_ENTRIES = 5000  # the newest files hashed; older entries are only re-hashed if used again


def hash_cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "align" / "file-hashes.json"


def cached_sha256(path: Path, cache: dict[str, list[Any]]) -> str:
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
    if cache.get(key, [None, None, None])[:2] != stamp:
        cache[key] = [*stamp, sha256_file(path)]
    return cache[key][2]


def _hash_cache() -> dict[str, list[Any]]:
    try:
        return json.loads(hash_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _save_hash_cache(cache: dict[str, list[Any]]) -> None:
    """Best effort: a cache that cannot be written only costs a re-hash next time."""
    kept = dict(list(cache.items())[-_HASH_CACHE_ENTRIES:])
    try:
        hash_cache_path().parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(hash_cache_path(), kept)
    except OSError:
        pass


def content_hash(manifest: dict[str, Any]) -> str:
    table = json.dumps({"stage": manifest["stage"], "files": manifest["files"]}, sort_keys=True)
    return hashlib.sha256(table.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ArtifactWriter:
    """Collects what a stage produces in `<output>.partial/` and commits it as one artifact.

    Usage: `with ArtifactWriter(output, "sft", config, resume) as writer:` write files under
    `writer.work_dir`, record parents/data/metrics, then `return writer.commit()`.
    """

    output: Path
    stage: str
    config: dict[str, Any]
    resume: bool = False
    parents: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    base_model: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        self.shared_dir = self.output.with_name(self.output.name + PARTIAL_SUFFIX)
        self.rank = process_rank()
        self.work_dir = self.shared_dir if self.rank == 0 else Path(f"{self.shared_dir}.rank{self.rank}")
        restore_interrupted_swap(self.output)
        if self.output.exists() and not is_artifact(self.output):
            raise ArtifactError(f"{self.output}: exists and is not an align artifact; refusing to replace it")
        self.lock = OutputLock(self.shared_dir) if self.rank == 0 else None
        WRITING.append(str(self.shared_dir))  # what a full disk's one-line error names
        if self.work_dir.exists() and (self.rank != 0 or not self.resume):
            _empty(self.work_dir, keep=LOCK_FILES if self.rank == 0 else ())
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(f"{self.work_dir}: cannot create ({exc.strerror})") from None
        wait_for_all_processes()

    @property
    def checkpoints_dir(self) -> Path:
        """Shared by all processes (the trainer coordinates who writes what)."""
        return self.shared_dir / "checkpoints"

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def run_name(self) -> str:
        """What experiment trackers call this run: `<run directory>/<artifact>`, e.g. `tiny/ppo`."""
        return f"{self.output.resolve().parent.name}/{self.output.name}"

    @property
    def model_dir(self) -> Path:
        return self.work_dir / "model"

    def add_parent(self, artifact: Artifact) -> None:
        relative = os.path.relpath(artifact.path.resolve(), self.output.resolve())
        self.parents.append({"stage": artifact.stage, "path": relative, "sha256": artifact.sha256})

    def record_data(self, data: Any, held_out: Any = None) -> None:
        """The data's source, hash and row counts (`Dataset.info()`), and the held-out set's."""
        self.data = data.info()
        if held_out is not None:
            self.data["eval"] = held_out.info()

    def record_judge(self, reward_model: Artifact | None, reward: str | None) -> None:
        """What judged the stage's samples: an RM artifact (a parent) or a `module:function`."""
        if reward_model is not None:
            self.add_parent(reward_model)
        self.extra["reward"] = reward or {"stage": "rm"}

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """On failure keep the work directory only if it holds work worth resuming: a checkpoint, or an
        artifact committed inside it (a round of `align rounds`)."""
        resumable = self.checkpoints_dir.is_dir() and any(
            p.is_dir() and p.name.startswith(("checkpoint-", "step-")) for p in self.checkpoints_dir.iterdir()
        )
        resumable = resumable or any(is_artifact(p) for p in self.work_dir.glob("*/*"))
        if exc_type is not None and self.work_dir.exists() and (self.rank != 0 or not resumable):
            shutil.rmtree(self.work_dir, ignore_errors=True)
        if self.lock is not None:
            self.lock.release()
        if exc_type is None and str(self.shared_dir) in WRITING:  # a failure keeps it for its error line
            WRITING.remove(str(self.shared_dir))

    def commit(self) -> Artifact:
        if self.rank != 0:  # the main process commits; this one drops its scratch copy
            wait_for_all_processes()
            shutil.rmtree(self.work_dir, ignore_errors=True)
            return load_artifact(self.output)
        artifact = self._commit()
        wait_for_all_processes()
        return artifact

    def _commit(self) -> Artifact:
        shutil.rmtree(self.checkpoints_dir, ignore_errors=True)
        files = {
            str(p.relative_to(self.work_dir)): sha256_file(p)
            for p in sorted(self.work_dir.rglob("*"))
            if p.is_file()
            and p.name != MANIFEST
            and p.relative_to(self.work_dir).as_posix() not in LOCK_FILES
        }
        manifest = {
            "stage": self.stage,
            "align_version": _version("align"),
            "created": _now(),
            "config": self.config,
            "parents": self.parents,
            "data": self.data,
            "base_model": self.base_model,
            "files": files,
            "metrics": self.metrics,
            "libraries": {name: _version(name) for name in _LIBRARIES},
            **self.extra,
        }
        write_json_atomic(self.work_dir / MANIFEST, manifest)
        _swap_into_place(self.work_dir, self.output)
        for name in LOCK_FILES:  # held until the artifact is in place; the committed one has none
            (self.output / name).unlink(missing_ok=True)
        self.lock.release()
        self.lock = None
        return load_artifact(self.output)


LOCK_FILES = (".align.lock", ".align.holder")  # in `<output>.partial/`: the lock and who holds it


class OutputLock:
    """One run per output: an OS file lock (filelock) in `<output>.partial/`, held for the run's life
    and released by the OS if the process dies; a second run is refused in one line naming the holder
    (host, PID, since when), and a lock whose process is gone is taken over with a notice."""

    def __init__(self, directory: Path):
        from filelock import FileLock, Timeout

        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(f"{directory}: cannot create ({exc.strerror})") from None
        self.holder = directory / LOCK_FILES[1]
        self.lock = FileLock(str(directory / LOCK_FILES[0]))
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise ArtifactError(
                f"{directory.with_suffix('')}: another run writes this output ({self._describe()}); wait "
                "for it, or give another --output"
            ) from None
        if self.holder.exists():
            logger.warning("%s: taking over from a run that is gone (%s)", directory, self._describe())
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now()}
        self.holder.write_text(json.dumps(me), encoding="utf-8")

    def _describe(self) -> str:
        try:
            held = json.loads(self.holder.read_text(encoding="utf-8"))
            return f"host {held['host']}, PID {held['pid']}, since {held['since']}"
        except (OSError, ValueError, KeyError):
            return "holder unknown"

    def release(self) -> None:
        self.holder.unlink(missing_ok=True)
        self.lock.release()


def _empty(directory: Path, keep: tuple[str, ...]) -> None:
    """Remove what a directory holds, except the named files (this run's lock)."""
    for child in directory.iterdir():
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def describe(artifact: Artifact) -> list[Any]:
    """`align show`: the stage and versions, the lineage back to the first stage, base model, data and
    a table of the metrics (rich renderables)."""
    from rich.table import Table

    manifest = artifact.manifest
    lines: list[Any] = [
        f"[bold]{artifact.stage}[/bold] {artifact.path}  (created {manifest.get('created')}, "
        f"align {manifest.get('align_version')}, {manifest.get('model_format', '?')} weights)"
    ]
    for ancestor in lineage(artifact)[1:]:
        lines.append(f"  <- {ancestor.stage}: {ancestor.path}")
    if manifest.get("base_model"):
        lines.append(f"base model: {manifest['base_model']}")
    data = manifest.get("data") or {}
    if data:
        lines.append(f"data: {data.get('source')} ({data.get('rows')} rows, dropped {data.get('dropped')})")
    quoted = artifact.evaluation
    if quoted is not None:
        evaluated = quoted["evaluated"]
        lines.append(
            f"evaluation: {evaluated['prompts']} ({evaluated['rows']} prompts), {EVALUATIONS}/{quoted['key']}.json"
        )
    table = Table("metric", "value", title="metrics")
    for key, value in artifact.metrics.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return [*lines, table]


def ancestors(artifact: Artifact) -> list[Artifact]:
    """The artifact and every artifact it came from (all parents, not only the policy path), each once,
    oldest first."""
    seen: dict[Path, Artifact] = {}

    def visit(node: Artifact) -> None:
        for record in node.manifest.get("parents", []):
            parent = node.parent(record["stage"])
            if parent is not None and parent.path.resolve() not in seen:
                visit(parent)
        seen.setdefault(node.path.resolve(), node)

    visit(artifact)
    return list(seen.values())


def lineage(artifact: Artifact) -> list[Artifact]:
    """The artifact and its ancestors along the policy path (the first parent of each), newest first."""
    chain = [artifact]
    while chain[-1].manifest.get("parents"):
        parent = chain[-1].parent(chain[-1].manifest["parents"][0]["stage"])
        if parent is None:
            break
        chain.append(parent)
    return chain


EVALUATIONS = "evaluations"  # beside the committed files: one record per thing evaluated


def record_evaluation(artifact: Artifact, evaluated: dict[str, Any], figures: dict[str, Any]) -> Path:
    """Keep an evaluation's figures in `evaluations/<key>.json`, the key a hash of what was evaluated
    (prompt set and its sha256, decoding, limit): the same evaluation again adds to its record, another
    never touches it, and the committed files (weights, tokenizer, manifest) never change."""
    key = hashlib.sha256(json.dumps(evaluated, sort_keys=True).encode()).hexdigest()[:16]
    path = artifact.path / EVALUATIONS / f"{key}.json"
    earlier = json.loads(path.read_text(encoding="utf-8"))["figures"] if path.is_file() else {}
    path.parent.mkdir(exist_ok=True)
    write_json_atomic(path, {"evaluated": evaluated, "updated": _now(), "figures": {**earlier, **figures}})
    return path


def evaluations(artifact: Artifact) -> list[dict[str, Any]]:
    """Every evaluation recorded beside the artifact, oldest first (an unreadable record is skipped)."""
    records = []
    for path in sorted((artifact.path / EVALUATIONS).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and {"evaluated", "figures", "updated"} <= record.keys():
            records.append({**record, "key": path.stem})
    return sorted(records, key=lambda record: record["updated"])


def write_json_atomic(path: Path, value: Any) -> None:
    """Readers see the old file or the new one, whole; two processes writing one file (the hash cache)
    each write their own temporary file, and the last rename wins."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=2, sort_keys=False, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk leaves no half-written file behind
        tmp.unlink(missing_ok=True)
        raise


def restore_interrupted_swap(output: Path) -> None:
    """A kill between the two renames of `_swap_into_place` leaves the previous artifact as `<output>.old`
    and no `<output>`: put the previous artifact back (the new run's work directory stays for a rerun)."""
    old = output.with_name(output.name + OLD_SUFFIX)
    if not output.exists() and is_artifact(old):
        os.replace(old, output)


def _swap_into_place(work_dir: Path, output: Path) -> None:
    """Rename the finished work directory onto `output`; an existing artifact is replaced only now."""
    old = output.with_name(output.name + OLD_SUFFIX)
    shutil.rmtree(old, ignore_errors=True)
    if output.exists():
        os.replace(output, old)
    os.replace(work_dir, output)
    shutil.rmtree(old, ignore_errors=True)


def _check_inside(root: Path, name: str, manifest_path: Path) -> None:
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ArtifactError(f"{manifest_path}: file entry '{name}' points outside the artifact")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
