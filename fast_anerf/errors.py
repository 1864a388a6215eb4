"""User-facing errors: one line that names the file, the key or problem, and the fix.

The CLI catches ``UserError`` (and only it) and prints ``error: <message>`` to stderr with exit code 2, so a
user never sees a traceback for bad input. Programming errors still raise normally.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line


class DataError(UserError):
    """A data file (.h5, .npz, image) that is missing, damaged or inconsistent."""


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, from another version or another field type."""


class OutputError(UserError):
    """An output that cannot be written: a folder without write permission, a full disk, a path under a file.
    ``os_error`` keeps the ``OSError`` so that a caller can name a better path (e.g. ``--out`` for a temp folder)."""

    os_error: OSError | None = None


def output_error(path, error: OSError) -> OutputError:
    """``<path>: cannot write (<reason>); <fix>`` for an ``OSError`` raised while writing ``path``."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some disk space or choose an output on another disk, then run again"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose an output folder you can write to (check its permissions)"
    elif error.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        fix = "a file or folder is in the way; choose another output path"
    else:
        fix = "check the output path and the disk, then run again"
    error_out = OutputError(f"{path}: cannot write ({reason}); {fix}")
    error_out.os_error = error
    return error_out


@contextlib.contextmanager
def writing(path) -> Iterator[None]:
    """``with writing(path): ...``: an ``OSError`` inside becomes an ``OutputError`` naming ``path``."""
    try:
        yield
    except OSError as error:
        raise output_error(path, error) from None


def folder_holds(folder) -> str:
    """`` (it holds a.h5, b.h5)`` for an error about a folder that lacks the expected files; ``""`` if it has
    no .h5 (A-NeRF's folders name theirs surreal_train_h5py.h5, surreal_val_h5py.h5, ...)."""
    found = sorted(p.name for p in Path(folder).glob("*.h5"))
    if not found:
        return ""
    return " (it holds " + ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "") + ")"


def refuse_to_replace(path: Path, overwrite: bool) -> None:
    """The one line for an output that is already there: a user's earlier result is never replaced unasked."""
    if Path(path).exists() and not overwrite:
        raise UserError(f"{path}: exists — choose another --out, or pass --overwrite to replace it")
