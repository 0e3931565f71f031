"""What a person sees while a stage runs: align's own lines on stderr, the libraries kept quiet (their
known-harmless warnings filtered by message), and progress as a bar in a terminal or, without one
(CI, nohup, a log file), a readable line every few steps with the key figures, elapsed time and ETA.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from typing import Any

logger = logging.getLogger("align")

# Warnings the libraries raise about their own internals, which a user cannot act on (matched by message).
HARMLESS = (
    r".*`is_gradient_checkpointing` is deprecated",  # transformers, asked by TRL's trainers
    r".*`gradient_checkpointing` is deprecated",  # when a library passes the old argument itself
    r"Setting accelerator to CPU",  # DeepSpeed's import on a machine without a GPU
)


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (test runners and notebooks swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        """The stream is always the current stderr."""


def configure_logging() -> None:
    """align's INFO lines on stderr, once per process."""
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for message in HARMLESS:
        warnings.filterwarnings("ignore", message=message)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # weight-loading bars; training keeps its own bar
    datasets.disable_progress_bars()


def interactive() -> bool:
    """A person watches a terminal: progress is a live bar, not lines."""
    return sys.stderr.isatty()


def console() -> Any:
    """A rich console for tables: a terminal's own width, or 120 columns in a log file (rich's 80 would
    cut the per-family columns of `align eval` to `harmf…`)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=120)


class ProgressLines:
    """A progress line every `every` steps (and at the last): `stage step 50/1500 (3 %) loss 0.41 ...
    elapsed 0:12 ETA 5:48`."""

    def __init__(self, stage: str, total: int, every: int, start: int = 0):
        self.stage, self.total, self.every = stage, total, max(1, every)
        self.started, self.start = time.perf_counter(), start

    def update(self, step: int, figures: dict[str, Any]) -> None:
        if step % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self.started
        done = max(step - self.start, 1)
        eta = elapsed / done * max(self.total - step, 0)
        shown = " ".join(f"{k} {v:.4g}" for k, v in figures.items() if isinstance(v, (int, float)))
        percent = 100 * step // max(self.total, 1)
        logger.info(
            "%s step %d/%d (%d %%) %s elapsed %s ETA %s",
            self.stage, step, self.total, percent, shown, _clock(elapsed), _clock(eta),
        )  # fmt: skip


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
