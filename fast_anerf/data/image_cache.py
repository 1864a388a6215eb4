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
import os
import shutil
from pathlib import Path

import numpy as np

from fast_anerf.cache import cache_dir
from fast_anerf.data.anerf_h5 import AnerfData
from fast_anerf.errors import DataError, writing

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
    built = not target.exists()
    if built:
        _build(data, target, shape)
    images = np.load(target, mmap_mode="c")
    if images.shape != shape or images.dtype != np.uint8:  # a foreign or damaged file under our name
        target.unlink(missing_ok=True)
        _build(data, target, shape)
        images, built = np.load(target, mmap_mode="c"), True
    return images, target, built


def _build(data: AnerfData, target: Path, shape: tuple[int, ...]) -> None:
    folder = target.parent
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    need, free = int(np.prod(shape)), shutil.disk_usage(folder).free
    if need > free:
        raise DataError(
            f"{data.path}: its images do not fit in the free memory, and their disk copy ({need / 2**30:.1f} GB) "
            f"does not fit in the {free / 2**30:.1f} GB free in {folder}; set FAST_ANERF_CACHE to a folder on a "
            "larger disk, or train on part of the images (`fast-anerf data subset`)"
        )
    # Copies of older versions of this file are stale: same stem and path hash, another version hash.
    for old in folder.glob(target.name.rsplit("-", 1)[0] + "-*.npy"):
        old.unlink(missing_ok=True)
    tmp = folder / f".{target.name}.{os.getpid()}.tmp"
    try:
        with writing(target):
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            for a in range(0, shape[0], _BLOCK):
                b = min(shape[0], a + _BLOCK)
                out[a:b] = data.read("imgs", slice(a, b)).reshape(b - a, *shape[1:])
            out.flush()
            del out
            os.replace(tmp, target)  # complete or absent: a killed build never leaves a short copy
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
