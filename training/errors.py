"""The training package's exception tree, rooted in minigpt_core's `MiniGPTError`.

The CLI maps these to exit codes in one place (`training.cli.main`); library code only raises them.
It is not a place for generic Python errors: bugs stay `AssertionError`/`TypeError` and crash loudly.
"""

from __future__ import annotations

from minigpt_core.errors import MiniGPTError


class TrainingError(MiniGPTError):
    """Base of every error the training package raises on purpose."""


class DataError(TrainingError):
    """A data file is missing, has the wrong format, or has too many bad lines."""


class ResumeError(TrainingError):
    """A run directory or checkpoint cannot be resumed from."""


class TrainingDiverged(TrainingError):
    """The loss or the gradient norm became NaN/inf; the last good checkpoint is kept."""
