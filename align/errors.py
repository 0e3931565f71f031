"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""

from __future__ import annotations


class AlignError(Exception):
    """A problem the user can fix (bad input, bad config, wrong artifact); never a bug."""


class ConfigError(AlignError):
    """A recipe or flag that does not fit the stage's config."""


class DataError(AlignError):
    """A data file that cannot be read or normalised; the message names file, line and field."""


class ArtifactError(AlignError):
    """An artifact directory that is missing, of the wrong stage, or corrupt."""


class TrainingDiverged(AlignError):
    """The loss became NaN or infinite; the last good checkpoint is kept for --resume."""
