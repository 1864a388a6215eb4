"""Reading a video's frames or masks: a folder of images (sorted by name, digit runs compared as numbers) or a
video file (imageio), only the frames asked for, converted one by one into a single array; and A-NeRF's rule
for 0-255 masks. Used by ``data from-spin``."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fast_anerf.errors import DataError

MASK_THRESHOLD = 2  # A-NeRF: foreground = mask >= 2 on 0-255 masks
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
NOT_MEDIA_SUFFIXES = (".npz", ".npy", ".h5", ".hdf5", ".pkl", ".json", ".txt", ".pt")  # a wrong argument


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """0-255 mask ``[H, W]`` or ``[H, W, C]`` -> bool ``[H, W]``: ``>= 2`` (A-NeRF), ``>= 0.5`` for floats in
    [0, 1] (probabilities), or ``> 0`` for other masks whose max is <= 1 (bool, integer {0, 1}). Colour masks use
    the max over the first three channels; a mask with an alpha channel that is not opaque everywhere (a
    cut-out: RGBA or grey + alpha) is its alpha channel."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] in (2, 4) and m.size and m[..., -1].min() < m[..., -1].max():
        m = m[..., -1]
    elif m.ndim == 3:
        m = m[..., : 1 if m.shape[-1] == 2 else 3].max(-1)  # grey + opaque alpha: the grey channel
    if m.dtype.kind == "f" and m.max(initial=0) <= 1:  # a segmentation network's probabilities (or 0.0 / 1.0)
        return m >= 0.5
    if m.dtype == bool or m.max(initial=0) <= 1:
        return m > 0
    return m >= MASK_THRESHOLD


def natural_key(name: str) -> list:
    """Sort key: ``frame9.png`` before ``frame10.png``, case ignored."""
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def as_rgb(img: np.ndarray, source: str) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.dtype != np.uint8:
        raise DataError(f"{source}: image dtype {img.dtype} — expected 8-bit RGB frames")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise DataError(f"{source}: image of shape {img.shape} — expected (H, W, 3)")
    return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]


def read_frames(
    path: Path, what: str, ids: np.ndarray | None, n: int, convert: Callable[[np.ndarray, str], np.ndarray]
) -> tuple[np.ndarray, list[str]]:
    """Frames ``ids`` (or all, which must be ``n``) of a folder of images or a video, each passed through
    ``convert(frame, name)`` as it is read, stacked into one array; + their names.

    Memory: one array of the converted frames (a video's other frames are decoded and dropped), never a list
    of raw frames beside a stacked copy: a 1080p video of a few minutes is tens of GB raw.
    """
    import imageio.v3 as iio

    if not path.exists():
        raise DataError(f"{path}: {what} not found — pass a folder of images or a video")
    if path.suffix.lower() in NOT_MEDIA_SUFFIXES:
        raise DataError(f"{path}: {what} must be a folder of images or a video, not a {path.suffix} file")
    wanted = None if ids is None else {int(i) for i in ids}
    try:
        if path.is_dir():
            # Hidden files are not frames: macOS leaves "._0001.png" beside each file copied from its disks.
            files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name[0] != "."),
                           key=lambda p: natural_key(p.name))  # fmt: skip
            total, names = len(files), [str(p) for p in files]
            read = lambda i: iio.imread(files[i])  # noqa: E731
        else:  # decode in order, keeping only the frames asked for
            kept, total = {}, 0
            for total, frame in enumerate(iio.imiter(path), start=1):
                if wanted is None or total - 1 in wanted:
                    kept[total - 1] = frame
            names = [f"{path}/{i:06d}" for i in range(total)]
            # Each frame leaves the dict as it is converted, unless frame_ids repeat it.
            read = kept.pop if wanted is None or len(wanted) == len(ids) else kept.__getitem__
    except (OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot read the {what} ({msg}) — pass a folder of images or a video") from None
    if ids is None:
        if total != n:
            raise DataError(f"{path}: {total} {what} but the SPIN file has {n} frames — pass matching {what} or add "
                            "frame_ids to the SPIN file")  # fmt: skip
        ids = np.arange(n)
    elif ids.max(initial=-1) >= total:
        raise DataError(f"{path}: frame_ids go up to {ids.max()} but there are only {total} {what} — fix frame_ids")
    out = None
    for k, i in enumerate(ids):
        try:
            frame = convert(read(int(i)), names[i])
        except (OSError, ValueError, RuntimeError) as e:
            why = str(e).splitlines()[0] if str(e) else repr(e)
            raise DataError(f"{names[i]}: cannot read this {what[:-1]} ({why}) — replace the damaged file or remove "
                            "it (and its row, or set frame_ids)") from None  # fmt: skip
        if out is None:
            out = np.empty((len(ids), *frame.shape), frame.dtype)
        elif frame.shape != out.shape[1:]:
            size, first = f"{frame.shape[1]}x{frame.shape[0]}", f"{out.shape[2]}x{out.shape[1]}"
            raise DataError(f"{names[i]}: {what[:-1]} of {size} px, the first is {first} — use one size")
        out[k] = frame
    return out, [names[i] for i in ids]
