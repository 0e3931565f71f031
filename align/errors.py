"""User-facing errors: every command turns these into one line on stderr and exit code 2."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any


class AlignError(Exception):
    """A problem the user can fix (bad input, bad config, wrong artifact); never a bug."""


class ConfigError(AlignError):
    """A recipe or flag that does not fit the stage's config."""


class DataError(AlignError):
    """A data file that cannot be read or normalised; the message names file, line and field."""


class ArtifactError(AlignError):
    """An artifact directory that is missing, of the wrong stage, or corrupt."""


class Paused(AlignError):
    """The run waits for something only people can give (labels); `--resume` continues it. Exit code 3."""


class TrainingDiverged(AlignError):
    """The loss became NaN or infinite; the last good checkpoint is kept for --resume."""


_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


# what torch's zip writer and safetensors' Rust writer say when the disk is full or not writable: they
# raise RuntimeError / SafetensorError, not OSError
_STORAGE_MESSAGES = {
    "No space left on device": "No space left on device",
    "StorageFull": "No space left on device",
    "unexpected pos": "No space left on device",  # torch.save's inline_container on a full disk
    "file write failed": "No space left on device",
    "Read-only file system": "Read-only file system",
    "ReadOnlyFilesystem": "Read-only file system",
    "Permission denied": "Permission denied",
    "PermissionDenied": "Permission denied",
}
WRITING: list[str] = []  # the output directories being written now, newest last (ArtifactWriter)


def storage_failure(exc: BaseException) -> str | None:
    """`<what failed> writing <path>` when `exc` is a full, read-only or forbidden disk, else None."""
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRORS:
        what, path = exc.strerror, exc.filename
    elif type(exc).__name__ in ("RuntimeError", "SafetensorError"):
        what = next((name for text, name in _STORAGE_MESSAGES.items() if text in str(exc)), None)
        path = None
    else:
        return None
    if what is None:
        return None
    path = path or (WRITING[-1] if WRITING else None)
    return f"{what} writing {path}" if path else what


class Terminated(KeyboardInterrupt):
    """SIGTERM: a scheduler pre-empting the job. Handled as an interrupt, with the exit code 143."""


class _Termination:
    """Where a SIGTERM goes: inside a training loop that checkpoints at step boundaries, it only asks
    the loop to stop at the next one (`requested`); anywhere else it interrupts at once."""

    at_step_boundaries = False
    requested = False


def stop_on_sigterm() -> None:
    """Turn SIGTERM into a stop: at the next step boundary of a training loop (with a checkpoint), else
    at once; either way it unwinds as `Terminated`, with one line saying how to resume."""
    import signal

    def terminate(signum: int, frame: Any) -> None:
        if not _Termination.at_step_boundaries:
            raise Terminated
        _Termination.requested = True

    signal.signal(signal.SIGTERM, terminate)


@contextlib.contextmanager
def step_boundaries() -> Iterator[None]:
    """Run a training loop that checks `termination_requested()` after each step, checkpoints, and
    raises `Terminated`."""
    _Termination.at_step_boundaries = True
    try:
        yield
    finally:
        _Termination.at_step_boundaries = False


def termination_requested() -> bool:
    return _Termination.requested


def handled(function: Callable[..., Any]) -> Callable[..., Any]:
    """A command whose AlignError becomes one line on stderr and exit code 2 (the traceback with
    ALIGN_DEBUG=1 or `align --debug`); an interrupt says how to resume; a full or read-only disk says
    that no artifact was replaced."""
    import typer

    @functools.wraps(function)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Paused as exc:
            typer.echo(f"paused: {exc}", err=True)
            raise typer.Exit(3) from None
        except AlignError as exc:
            if os.environ.get("ALIGN_DEBUG"):
                raise  # the traceback, for a user debugging their own reward function or data
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            typer.echo(f"{what}; rerun with --resume to continue from the last checkpoint", err=True)
            raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
        except Exception as exc:  # noqa: BLE001 - only storage failures are turned into a line
            failure = storage_failure(exc)
            if failure is None:
                raise
            # a full disk or a read-only / forbidden directory: nothing was committed, any earlier artifact stands
            typer.echo(
                f"error: {failure}; no artifact was replaced (free space or fix permissions, rerun)", err=True
            )
            raise typer.Exit(2) from None

    return command
