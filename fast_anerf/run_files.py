"""Files a run writes: JSON and PNG written atomically, and the TensorBoard writer.

Atomic: written under a temporary name in the target's folder and renamed, so a crash or a full disk never
leaves a half-written file where a finished one is expected; an ``OSError`` becomes a one-line ``OutputError``
naming the file (``errors.writing``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import imageio.v3 as iio
import numpy as np

from fast_anerf.errors import writing


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_file(path) as handle:`` writes a file that appears at ``path`` only once complete: under a
    temporary name in its folder, renamed at the end, removed if the body raises. An ``OSError`` becomes a
    one-line ``OutputError`` naming ``path``."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, mode) as handle:
                yield handle
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON under a temporary name and rename; an ``OSError`` becomes a one-line ``OutputError``."""
    with atomic_file(path, "w") as handle:
        json.dump(obj, handle, indent=2)


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write a PNG under a temporary name and rename; an ``OSError`` becomes a one-line ``OutputError``."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        try:
            # Encode in memory, write the bytes ourselves: on a full disk imageio's plugin raises again from __del__.
            tmp.write_bytes(iio.imwrite("<bytes>", image, extension=".png"))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


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
