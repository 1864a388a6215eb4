"""Files written atomically (``atomic_path`` for any writer, ``atomic_file``, JSON, PNG) and the TensorBoard writer.

Atomic: written under a temporary name in the target's folder and renamed, so a crash or a full disk never
leaves a half-written file where a finished one is expected; an ``OSError`` becomes a one-line ``OutputError``
naming the file (``errors.writing``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import imageio.v3 as iio
import numpy as np

from fast_anerf.errors import writing


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


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON under a temporary name and rename; an ``OSError`` becomes a one-line ``OutputError``."""
    with atomic_file(path, "w") as handle:
        json.dump(obj, handle, indent=2)


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
