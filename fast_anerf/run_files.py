"""Files written atomically (``atomic_path`` for any writer, ``atomic_file``, JSON, PNG) and the TensorBoard writer.

Atomic: written under a temporary name in the target's folder and renamed, so a crash or a full disk never
leaves a half-written file where a finished one is expected; an ``OSError`` becomes a one-line ``OutputError``
naming the file (``errors.writing``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import imageio.v3 as iio
import numpy as np

from fast_anerf.errors import UserError, writing


@contextlib.contextmanager
def atomic_path(path: Path, durable: bool = False) -> Iterator[Path]:
    """``with atomic_path(path) as tmp:`` write ``tmp`` (any writer: h5py, torch.save, PIL...), and the file
    appears at ``path`` only once the body completes: ``tmp`` is a unique name in ``path``'s folder (a rename
    within one filesystem is atomic; parallel writers don't collide) renamed at the end. If the body raises,
    ``tmp`` and the folders made for ``path`` are removed and an older file at ``path`` is untouched.

    ``durable``: fsync before the rename, for files whose loss costs hours (checkpoints, ``.h5``). The file gets
    the usual permissions (umask), unlike ``tempfile.mkstemp``'s private 0600. An ``OSError`` (a full disk, a
    read-only folder) becomes a one-line ``OutputError`` naming ``path``.
    """
    path = Path(path)
    made = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            yield tmp
            if durable:  # the rename is only safe if the data reached the disk first
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            for folder in made:  # innermost first; only if still empty (another writer may have used it)
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb", durable: bool = False) -> Iterator[IO]:
    """``with atomic_file(path) as handle:`` an open file (``mode``) that appears at ``path`` only once
    complete; ``atomic_path`` with the file opened for you."""
    with atomic_path(path, durable) as tmp, open(tmp, mode) as handle:
        yield handle


@contextlib.contextmanager
def folder_lock(folder: Path, command: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` while a command writes its outputs there: a second ``train`` (or
    ``refine``) into the same folder is refused at once, instead of both replacing each other's checkpoints.
    ``flock`` on the folder itself: no lock file to leave behind, and the kernel drops the lock when the process
    ends, however it ends. Where ``fcntl`` is missing (not POSIX), nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{folder}: another fast-anerf run (train or refine) is writing to this folder; wait for "
                            "it to end, or choose another --out") from None  # fmt: skip
        except OSError as error:  # NFS (a folder is not open for writing), Lustre without -o flock: no locks there
            print(f"warning: {folder}: cannot lock ({error.strerror}); a second {command} into this folder is not "
                  "refused", file=sys.stderr)  # fmt: skip
        yield
    finally:
        os.close(fd)  # releases the lock


def check_folder_free(folder: Path, command: str) -> None:
    """Fail fast, before any work, if another process holds ``folder_lock`` on an existing ``folder``."""
    if Path(folder).is_dir():
        with folder_lock(Path(folder), command):
            pass


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON under a temporary name and rename; an ``OSError`` becomes a one-line ``OutputError``. NaN and
    infinities (a metric of a split without foreground pixels) are written as ``null``: ``NaN`` is not JSON, and
    strict readers (JavaScript's ``JSON.parse``, ``jq``) refuse the whole file."""
    with atomic_file(path, "w") as handle:
        json.dump(_finite_or_null(obj), handle, indent=2, allow_nan=False)


def _finite_or_null(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_null(v) for v in obj]
    return obj


class _Probe(Exception):
    """Raised inside ``atomic_path`` by ``probe_writable`` to drop its empty file."""


def probe_writable(path: Path) -> None:
    """Fail now, in one line (``OutputError``), if ``path`` could not be written later: found before minutes of
    work rather than after. Leaves nothing behind (no file, no folders made for it)."""
    try:
        with atomic_path(Path(path)) as tmp:
            tmp.write_bytes(b"")
            raise _Probe
    except _Probe:
        pass


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write a PNG under a temporary name and rename; an ``OSError`` becomes a one-line ``OutputError``."""
    with atomic_path(path) as tmp:
        # Encode in memory, write the bytes ourselves: on a full disk imageio's plugin raises again from __del__.
        tmp.write_bytes(iio.imwrite("<bytes>", image, extension=".png"))


def summary_writer(folder: Path):
    """A TensorBoard ``SummaryWriter`` on ``folder``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; log.jsonl-style history is in the checkpoint and eval.json
        return None
    _quiet_tensorboard_thread_errors()
    return SummaryWriter(str(folder))


def _quiet_tensorboard_thread_errors() -> None:
    """TensorBoard writes events from a thread; on a full disk that thread dies with a printed traceback, and the
    same OSError reaches the training loop at its next log call, where it becomes the one-line error. Keep the
    thread's copy quiet (only OSErrors of TensorBoard's own writer threads; everything else prints as before)."""
    previous = threading.excepthook
    if getattr(previous, "_fast_anerf", False):
        return

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
            return
        previous(args)

    hook._fast_anerf = True
    threading.excepthook = hook
