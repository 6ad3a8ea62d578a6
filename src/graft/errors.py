"""The errors graft raises for users' mistakes: one small hierarchy the CLI maps to messages.

Each error also inherits the built-in exception it refines (scikit-learn's habit), so
``except ValueError`` keeps working for callers who do not know graft's types.
"""

from __future__ import annotations


class GraftError(Exception):
    """Base class. ``hint`` says what to do about it; the CLI prints both, never a traceback."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(GraftError, ValueError):
    """An argument or option has a value graft cannot use."""

    exit_code = 2


class DataError(GraftError, ValueError):
    """The data folder or an image in it cannot be used."""

    exit_code = 3


class BackboneError(GraftError, LookupError):
    """A backbone name is unknown or its weights cannot be found."""

    exit_code = 4


class RunFolderError(GraftError, OSError):
    """A run folder is missing, incomplete, tampered with or not writable."""

    exit_code = 5


class TrainingError(GraftError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN)."""

    exit_code = 6


class TrainingInterrupted(GraftError):
    """Ctrl-C during training: the last completed epoch is saved and the run can be resumed."""

    exit_code = 130


def raise_or_record(error: DataError, errors: list[str] | None) -> None:
    """Raise ``error``, or, when collecting (``graft check``), add its message to ``errors`` and go on."""
    if errors is None:
        raise error
    errors.append(error.message)
