"""Writing A-NeRF ``.h5`` files: whole (``write_anerf_h5``) or streamed (``atomic_h5`` + ``image_chunks``).

The layout is the reader's (``fast_anerf.data.anerf_h5``): image-like keys flattened to ``[N, H*W, C]`` uint8,
gzip, A-NeRF's chunks; every other value float32 / int64 / utf-8 bytes. Files appear only once complete.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fast_anerf.data.anerf_h5 import IMAGE_KEYS, REQUIRED_KEYS, _err
from fast_anerf.run_files import atomic_path


def _flat_images(path: Path, key: str, value: Any, hw: tuple[int, int], channels: int) -> np.ndarray:
    """``[N, H, W(, C)]`` or ``[N, H*W(, C)]`` -> ``[N, H*W, C]`` uint8."""
    a = np.asarray(value)
    if a.dtype == bool or channels == 1:
        a = (a != 0).astype(np.uint8)
    elif a.dtype != np.uint8:
        fix = "convert with (x * 255).round().astype(np.uint8)"
        raise _err(path, f"key '{key}' has dtype {a.dtype}; expected uint8 images — {fix}")
    if channels == 1 and ((a.ndim == 3 and a.shape[1:] == hw) or a.ndim == 2):
        a = a[..., None]  # masks given without a channel axis
    spatial_ok = a.ndim != 4 or a.shape[1:3] == hw
    if a.ndim == 4:
        a = a.reshape(a.shape[0], a.shape[1] * a.shape[2], a.shape[3])
    if a.ndim != 3 or a.shape[2] != channels or a.shape[1] != hw[0] * hw[1] or not spatial_ok:
        expected = f"(N, {hw[0]}, {hw[1]}, {channels}) or (N, {hw[0] * hw[1]}, {channels})"
        raise _err(path, f"key '{key}' has shape {np.shape(value)}; expected {expected} — fix the images")
    return np.ascontiguousarray(a)


def _plain(value: Any) -> np.ndarray:
    """Non-image values: floats -> float32, ints/bools -> int64, strings -> utf-8 bytes (A-NeRF's dtypes)."""
    if isinstance(value, (str, bytes, os.PathLike)):
        value = [value]
    a = np.asarray(value)
    is_obj_str = a.dtype.kind == "O" and a.size > 0 and isinstance(a.flat[0], (str, bytes, os.PathLike))
    if is_obj_str or a.dtype.kind in "US":
        enc = [v if isinstance(v, bytes) else os.fspath(v).encode("utf-8") for v in a.ravel()]
        return np.array(enc, dtype=np.bytes_).reshape(a.shape)
    if a.dtype.kind == "f":
        return a.astype(np.float32)
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    raise TypeError(f"cannot store a value of dtype {a.dtype} in an A-NeRF .h5")


def write_anerf_h5(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as an A-NeRF ``.h5`` at ``path``, atomically.

    Images (``imgs``, ``bkgds``: uint8; ``masks``, ``sampling_masks``: bool or {0,1}) may be
    ``[N, H, W(, C)]`` or flattened ``[N, H*W(, C)]``; they are stored flattened, gzip, chunked as A-NeRF.
    ``img_shape`` is derived from ``imgs`` if absent (needed when ``imgs`` is flattened). Other values:
    floats -> float32, ints/bools -> int64, strings (``img_paths``) -> utf-8 bytes.

    The file is written under a temporary name in the same folder and renamed, so an interrupted write never
    leaves a partial file and never damages an older file at ``path``. Raises ``DataError`` if a required key
    is missing or the images disagree with ``img_shape``.
    """
    path = Path(path)
    for key in REQUIRED_KEYS:
        if key not in data and key != "img_shape":
            required = ", ".join(k for k in REQUIRED_KEYS if k != "img_shape")
            raise _err(path, f"cannot write: missing required key '{key}' (required: {required}) — add it")
    imgs = np.asarray(data["imgs"])
    if "img_shape" in data:
        shape = tuple(int(s) for s in np.asarray(data["img_shape"]).reshape(-1))
    elif imgs.ndim == 4:
        shape = tuple(int(s) for s in imgs.shape)
    else:
        raise _err(
            path,
            "cannot write: key 'imgs' is flattened and 'img_shape' is missing — pass img_shape (N, H, W, 3)",
        )
    if len(shape) != 4 or shape[3] != 3 or imgs.shape[0] != shape[0]:
        raise _err(
            path,
            f"cannot write: key 'img_shape' is {shape} but imgs has shape {imgs.shape}; expected (N, H, W, 3)"
            " — fix img_shape or the images",
        )
    hw = (shape[1], shape[2])

    with atomic_h5(path) as f:
        f.create_dataset("img_shape", data=np.asarray(shape, np.int64))
        for key, value in data.items():
            if key in ("img_shape", "index", "img_path"):  # A-NeRF drops per-sample bookkeeping keys
                continue
            if key in IMAGE_KEYS:
                a = _flat_images(path, key, value, hw, image_channels(key))
                f.create_dataset(key, data=a, compression="gzip", chunks=image_chunks(key, a.shape))
            else:
                a = _plain(value)
                kw = {"compression": "gzip"} if a.ndim and a.size else {}  # scalars cannot be chunked
                f.create_dataset(key, data=a, **kw)


def image_channels(key: str) -> int:
    """Channels of an image-like key: 3 for ``imgs`` and ``bkgds``, 1 for the masks."""
    return 3 if key in ("imgs", "bkgds") else 1


def image_chunks(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A-NeRF's chunks for an image-like dataset of ``shape [N, H*W, C]``: 64x64 pixels of one image (sampled
    pixels are a few chunks away), the sampling masks one whole image (always read whole)."""
    return (1, shape[1], shape[2]) if key == "sampling_masks" else (1, min(64 * 64, shape[1]), shape[2])


@contextlib.contextmanager
def _ctrl_c_noted() -> Iterator[list]:
    """Ctrl-C while h5py writes can land in one of its weakref callbacks, where Python prints the
    ``KeyboardInterrupt`` as "Exception ignored" and drops it: the write would go on and the command exit 0.
    Here the interrupt is also noted (the yielded list), so the caller can still drop the file, and not printed.
    Only where nobody else handles Ctrl-C (training saves a checkpoint on it: its handler stays)."""
    noted: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield noted
        return

    def on_sigint(signum, frame) -> None:
        noted.append(signum)
        raise KeyboardInterrupt

    def unraisable(info) -> None:
        if not issubclass(info.exc_type, KeyboardInterrupt):
            previous_hook(info)

    previous_hook = sys.unraisablehook
    signal.signal(signal.SIGINT, on_sigint)
    sys.unraisablehook = unraisable
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = previous_hook


@contextlib.contextmanager
def atomic_h5(path: Path) -> Iterator[h5py.File]:
    """``with atomic_h5(path) as f:`` writes an HDF5 file that appears at ``path`` only once complete.

    It is written under a temporary name in the same folder (so the final ``os.replace`` is a rename on one
    filesystem; unique, so parallel writers don't collide), synced to disk and renamed: an interrupted write
    never leaves a partial file and never damages an older file at ``path``, nor the folders it made for it.
    ``OSError`` (a full disk, a read-only folder) becomes one line naming ``path``; Ctrl-C (even one that h5py
    swallowed, ``_ctrl_c_noted``) leaves no file.
    """
    with _ctrl_c_noted() as interrupted, atomic_path(path, durable=True) as tmp:
        with h5py.File(tmp, "w") as f:
            yield f
        if interrupted:
            raise KeyboardInterrupt
