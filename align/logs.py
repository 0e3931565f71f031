"""What the libraries print: their own logging and download bars kept to errors, for every command."""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # weight-loading bars; training keeps its own bar
    datasets.disable_progress_bars()
