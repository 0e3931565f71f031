"""The process group a stage runs in under `accelerate launch` or torchrun (a group of one otherwise).

The first use fixes accelerate's shared state for the whole process, so every caller goes through
`process_state`: on a machine without a GPU it asks for CPU processes, which join over gloo (asked
without it, accelerate would start each of them as a separate single process).
"""

from __future__ import annotations

import os
from typing import Any

import torch


def process_state() -> Any:
    from accelerate import PartialState

    return PartialState(cpu=not on_accelerator())


def on_accelerator() -> bool:
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def launched() -> bool:
    """Started by a multi-process launcher."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_rank() -> int:
    """This process's index in the group (0 when running alone)."""
    return process_state().process_index if launched() else 0


def wait_for_all_processes() -> None:
    if launched():
        process_state().wait_for_everyone()
