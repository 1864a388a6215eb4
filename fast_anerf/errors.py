"""User-facing errors: one line that names the file, the key or problem, and the fix.

The CLI catches ``UserError`` (and only it) and prints ``error: <message>`` to stderr with exit code 2, so a
user never sees a traceback for bad input. Programming errors still raise normally.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line


class DataError(UserError):
    """A data file (.h5, .npz, image) that is missing, damaged or inconsistent."""


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, from another version or another field type."""
