"""``fast-anerf data subset``: a new A-NeRF ``.h5`` holding some images of another, streamed block by block.

What A-NeRF users select with code, as a file the other commands read like any other:

* Mixamo trains only on ``{Subject}_selected.npy`` (``MixamoDataset._idx_map``): ``--select Archer_selected.npy``.
* SURREAL's ``--N_cams`` restricts training to cameras {0, 3, 6}: ``--cameras 0 3 6`` (cameras from
  ``cam_idxs``, else SURREAL's camera-major order ``i // n_poses``).
* Every other frame, or the first 1000: ``--select ::2``, ``--select 0:1000`` (Python slices).
* A smaller file to train on: training holds the images in memory (uint8, ~1.1 MB per 512^2 image with the
  ids of the trainable pixels) or, when they do not fit, maps them from a copy on disk (slower).

Images are copied ``_BLOCK`` at a time (never the whole file in memory). Pose rows follow the images: the rows
the selected images use are kept, in order of first use, with ``kp_idxs`` rewritten when images share rows
(with one pose per image, ``kp_idxs`` is bookkeeping, e.g. Mixamo's time instant that ``--multiview`` groups
by, and is kept).
``train_idxs`` / ``val_idxs`` (indices into the source) are dropped; keys unknown to A-NeRF are copied
unchanged.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import h5py
import numpy as np

from fast_anerf.data.anerf_h5 import IMAGE_KEYS, AnerfData, open_anerf_h5
from fast_anerf.data.h5_write import atomic_h5, image_chunks
from fast_anerf.errors import UserError, refuse_to_replace

_BLOCK = 64  # images per copy step
# Rows: one per image (expanded by the reader: c2ws, focals, centers), one per pose row, or either.
PER_IMAGE_KEYS = ("c2ws", "focals", "centers", "cam_idxs", "bkgd_idxs", "img_paths")
PER_POSE_KEYS = ("kp3d", "bones", "skts")
PER_POSE_OR_IMAGE_KEYS = ("cyls", "gt_kp3d", "gt_skts", "gt_bones", "gt_poses", "betas")
DROPPED_KEYS = ("train_idxs", "val_idxs", "kp_idxs", "img_shape")  # kp_idxs and img_shape are rewritten


def parse_selection(select: str, n_images: int) -> np.ndarray:
    """``--select``: a ``.npy`` / ``.txt`` file of image indices, or a slice ``START:STOP[:STEP]``.

    Returns int64 ``[k]`` indices in the given order. ``UserError`` names the file or value and the fix.
    """
    if re.fullmatch(r"-?\d*:-?\d*(:-?\d*)?", select):
        parts = [int(p) if p else None for p in select.split(":")]
        if len(parts) == 3 and parts[2] == 0:
            raise UserError(f"--select {select}: a slice step cannot be 0; e.g. ::2 for every other image")
        return np.arange(n_images)[slice(*parts)]
    path = Path(select)
    if not path.is_file():
        raise UserError(f"--select {select}: no such file; pass a .npy or .txt of image indices, or a slice "
                        "START:STOP[:STEP] such as 0:1000 or ::2")  # fmt: skip
    try:
        with warnings.catch_warnings():  # numpy warns (2 lines) on an empty text file: the check below says it
            warnings.simplefilter("ignore", UserWarning)
            ids = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: cannot read image indices ({e}); expected a .npy or .txt of integers") from None
    ids = np.asarray(ids).reshape(-1)
    if ids.dtype.kind == "b":  # a boolean mask over the images
        if ids.size != n_images:
            raise UserError(f"{path}: a mask of {ids.size} values for {n_images} images; expected one per image "
                            "(or integer image indices)")  # fmt: skip
        return np.flatnonzero(ids)
    if ids.dtype.kind == "f" and np.all(ids == np.round(ids)):
        ids = ids.astype(np.int64)
    if ids.dtype.kind not in "iu":
        raise UserError(f"{path}: holds {ids.dtype} values; expected integer image indices")
    if ids.dtype.kind == "u" and ids.size and ids.max() > np.iinfo(np.int64).max:
        raise UserError(f"{path}: image index {ids.max()} is out of range; expected indices below {n_images}")
    return ids.astype(np.int64)


def camera_ids(data: AnerfData, n_images: int) -> np.ndarray | None:
    """Camera of each image: ``cam_idxs``, else SURREAL's camera-major order, else None (unknown)."""
    if "cam_idxs" in data.arrays:
        return np.asarray(data.arrays["cam_idxs"], np.int64)
    if data.n_poses < n_images and n_images % data.n_poses == 0 and "kp_idxs" not in data.arrays:
        return np.arange(n_images) // data.n_poses
    return None


def write_subset(
    source: Path, out: Path, select: str | None = None, cameras: tuple[int, ...] = (), overwrite: bool = False
) -> dict:
    """Write the images of ``source`` chosen by ``select`` and ``cameras`` (both: those in both) to ``out``.

    Returns ``{"images", "poses", "source_images"}`` counts. Raises ``UserError`` with one line for a bad
    selection, an existing ``out`` (unless ``overwrite``) or ``out`` equal to ``source``.
    """
    source, out = Path(source), Path(out)
    if out.exists() and out.resolve() == source.resolve():
        raise UserError(f"{out}: --out is the source file; write the subset to another path")
    refuse_to_replace(out, overwrite)
    with open_anerf_h5(source) as data:
        n = data.n_images
        ids = parse_selection(select, n) if select is not None else np.arange(n)
        what = f"--select {select}" if select is not None else "the selection"
        if ids.size and (ids.min() < -n or ids.max() >= n):
            bad = int(ids[(ids < -n) | (ids >= n)][0])
            raise UserError(f"{what}: image index {bad} is out of range; {source} has {n} images (0..{n - 1})")
        ids = ids % n  # negative indices count from the end, as in Python
        if len(np.unique(ids)) != len(ids):
            raise UserError(f"{what}: repeats image indices; each image can be selected once")
        if cameras:
            cams = camera_ids(data, n)
            if cams is None:
                raise UserError(f"{source}: --cameras needs the key 'cam_idxs' (the camera of each image); "
                                "select images with --select instead")  # fmt: skip
            missing = sorted(set(cameras) - set(cams.tolist()))
            if missing:
                raise UserError(f"--cameras: no images of camera {missing[0]} in {source} "
                                f"(cameras: {sorted(set(cams.tolist()))})")  # fmt: skip
            ids = ids[np.isin(cams[ids], cameras)]
        if ids.size == 0:
            raise UserError(f"{what} chooses no images of {source}; nothing to write")
        rows = data.pose_idxs[ids]
        _, first = np.unique(rows, return_index=True)
        pose_rows = rows[np.sort(first)]  # pose rows in order of first use
        remap = np.full(data.n_poses, -1, np.int64)
        remap[pose_rows] = np.arange(len(pose_rows))
        _copy(data, out, ids, pose_rows, remap[rows])
        return {"images": int(ids.size), "poses": int(pose_rows.size), "source_images": n}


def _copy(data: AnerfData, out: Path, ids: np.ndarray, pose_rows: np.ndarray, new_pose_idxs: np.ndarray) -> None:
    n, p, h, w = data.n_images, data.n_poses, data.height, data.width
    src = data.handle
    with atomic_h5(out) as f:
        f.create_dataset("img_shape", data=np.array([len(ids), h, w, 3], np.int64))
        if len(pose_rows) != len(ids):  # images share pose rows: kp_idxs tells the reader which
            f.create_dataset("kp_idxs", data=new_pose_idxs.astype(np.int64), compression="gzip")
        elif "kp_idxs" in data.arrays:
            # One pose per image: kp_idxs is bookkeeping, kept (Mixamo: the time instant --multiview groups by).
            f.create_dataset("kp_idxs", data=data.arrays["kp_idxs"][ids], compression="gzip")
        cams = camera_ids(data, n) if "cam_idxs" not in data.arrays else None
        if cams is not None:  # SURREAL's camera blocks do not survive a selection: say which camera each image is
            f.create_dataset("cam_idxs", data=cams[ids], compression="gzip")
        for key in data.keys:
            if key in DROPPED_KEYS:
                continue
            if key in IMAGE_KEYS and key != "bkgds":
                _copy_images(data, f, key, ids)
            elif key in ("c2ws", "focals", "centers"):  # as the reader expanded them: one row per image
                f.create_dataset(key, data=data.arrays[key][ids], compression="gzip")
            elif key in PER_IMAGE_KEYS:
                f.create_dataset(key, data=src[key][()][ids], compression="gzip")
            elif key in PER_POSE_KEYS or (key in PER_POSE_OR_IMAGE_KEYS and len(src[key]) == p):
                f.create_dataset(key, data=src[key][()][pose_rows], compression="gzip")
            elif key in PER_POSE_OR_IMAGE_KEYS and len(src[key]) == n:
                f.create_dataset(key, data=src[key][()][ids], compression="gzip")
            else:  # bkgds, rest_pose, ext_scale, pose_scale, one shared betas, keys unknown to A-NeRF
                src.copy(src[key], f, name=key)


def _copy_images(data: AnerfData, f: h5py.File, key: str, ids: np.ndarray) -> None:
    """Copy rows ``ids`` of an image-like key, ``_BLOCK`` images per read (HDF5 reads increasing indices)."""
    src = data.handle[key]
    shape = (len(ids), *src.shape[1:])  # A-NeRF's [N, H*W, C]; other accepted layouts keep theirs
    chunks = image_chunks(key, shape) if len(shape) == 3 else True
    dst = f.create_dataset(key, shape=shape, dtype=src.dtype, compression="gzip", chunks=chunks)
    for a in range(0, len(ids), _BLOCK):
        block = ids[a : a + _BLOCK]
        order = np.argsort(block)
        rows = data.read(key, np.sort(block))
        dst[a : a + len(block)] = rows[np.argsort(order)]
