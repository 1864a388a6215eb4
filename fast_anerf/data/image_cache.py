"""Images of an .h5 too big for memory, as an uncompressed, memory-mapped copy on disk.

A split holds its images as uint8 (``split.py``). When they do not fit in the free memory (SURREAL's 10,800
frames of 512^2 are 8 GB, Mixamo's ~1000^2 frames more), training reads them from a ``.npy`` copy instead,
mapped into memory: the operating system pages in what batches touch and drops it under pressure, so the
process is not killed. Why a copy and not the ``.h5`` itself: A-NeRF's files are gzip-chunked, and reading a
batch's pixels straight from them measured ~67 ms per 64 images x 32 pixels (a whole CPU training step; far
too slow for a GPU), where a mapped array costs a gather.

The copy lives in ``cache_dir("images")`` (``$FAST_ANERF_CACHE/images``), named after the file's stem, a hash
of its path and a hash of its size and modification time: it is built once (block by block, never whole in
memory), reused while the file is unchanged, and replaced (the stale copy deleted) when it changes.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from fast_anerf.cache import cache_dir
from fast_anerf.data.anerf_h5 import AnerfData
from fast_anerf.errors import DataError, writing
from fast_anerf.run_files import atomic_path

_BLOCK = 64  # images per copy step


def cache_path(path: Path) -> Path:
    """Where the disk copy of ``path``'s images goes (this version of the file)."""
    stat = path.stat()
    where = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    version = hashlib.sha1(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    return cache_dir("images") / f"{path.stem}-{where}-{version}.npy"


def mapped_images(data: AnerfData) -> tuple[np.ndarray, Path, bool]:
    """``imgs`` of ``data`` as uint8 ``[N, H, W, 3]`` mapped from the disk copy, building it if needed.

    Returns ``(images, copy path, built now)``. The mapping is copy-on-write: writes to the array (there should
    be none) never reach the file. Raises ``DataError`` when the disk lacks room for the copy.
    """
    shape = (data.n_images, data.height, data.width, 3)
    target = cache_path(data.path)
    images = _open(target, shape) if target.exists() else None
    if images is not None:
        return images, target, False
    _build(data, target, shape)  # absent, or a damaged or foreign file under our name: replaced
    return np.load(target, mmap_mode="c"), target, True


def _open(target: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The mapped copy, or None if it is not a readable uint8 array of ``shape`` (truncated, foreign)."""
    try:
        images = np.load(target, mmap_mode="c")
    except (ValueError, OSError):
        return None
    return images if images.shape == shape and images.dtype == np.uint8 else None


def human_size(n_bytes: float) -> str:
    """``25.0 kB``, ``1.3 GB``: binary units, one decimal."""
    value, unit = n_bytes / 1024, "kB"
    for bigger in ("MB", "GB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def _build(data: AnerfData, target: Path, shape: tuple[int, ...]) -> None:
    folder = target.parent
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    need, free = int(np.prod(shape)), shutil.disk_usage(folder).free
    if need > free:
        raise DataError(
            f"{data.path}: its images do not fit in the free memory, and their disk copy ({human_size(need)}) "
            f"does not fit in the {human_size(free)} free in {folder}; set FAST_ANERF_CACHE to a folder on a "
            "larger disk, or train on part of the images (`fast-anerf data subset`)"
        )
    # Copies of older versions of this file are stale: same stem and path hash, another version hash.
    for old in folder.glob(target.name.rsplit("-", 1)[0] + "-*.npy"):
        old.unlink(missing_ok=True)
    with atomic_path(target) as tmp:  # complete or absent: a killed build never leaves a short copy
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for a in range(0, shape[0], _BLOCK):
            b = min(shape[0], a + _BLOCK)
            out[a:b] = data.read("imgs", slice(a, b)).reshape(b - a, *shape[1:])
        out.flush()
        del out
