"""Read and write A-NeRF ``.h5`` files (specs/anerf.md §1.1-1.2).

Layout (what A-NeRF's ``write_to_h5py`` produces and what ``h5_write.write_anerf_h5`` writes):

* ``img_shape`` int (4,) = ``(N, H, W, 3)``.
* Image-like keys are flattened per image so that sampled pixels are one fancy-index away:
  ``imgs [N, H*W, 3]`` uint8, ``masks [N, H*W, 1]`` uint8 {0,1}, ``sampling_masks [N, H*W, 1]``,
  ``bkgds [N_bg, H*W, 3]``; gzip, chunks ``(1, 64*64, C)`` (sampling masks: one image per chunk).
* Poses: ``kp3d [P, 24, 3]`` world joints, ``bones [P, 24, 3]`` axis-angle, ``skts [P, 24, 4, 4]``
  world-to-joint. Cameras: ``c2ws [N, 4, 4]`` OpenGL camera-to-world, ``focals [N]`` pixels, optional
  ``centers [N, 2]`` principal points. Everything else float32 / int64; ``img_paths`` byte strings.

``open_anerf_h5`` validates the whole file up front (so the trainer never dies mid-run on a bad key) and
raises ``DataError`` with one line naming the file, the key, what was expected and the fix. Images stay on
disk and are read one at a time (A-NeRF files reach tens of GB).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fast_anerf.errors import DataError

REQUIRED_KEYS = ("imgs", "masks", "img_shape", "kp3d", "bones", "skts", "c2ws", "focals")
IMAGE_KEYS = ("imgs", "masks", "sampling_masks", "bkgds")  # read lazily, never loaded whole on open
ANERF_DATASET_SCALE = 0.25 / 0.00035  # A-NeRF folds this into the ext_scale its files store (``ext_scale``)
KNOWN_KEYS = REQUIRED_KEYS + (
    "sampling_masks", "bkgds", "bkgd_idxs", "centers", "cyls", "rest_pose", "betas", "kp_idxs", "cam_idxs",
    "ext_scale", "pose_scale", "img_paths", "train_idxs", "val_idxs",
)  # fmt: skip
_FINITE_KEYS = ("kp3d", "bones", "skts", "c2ws", "focals", "centers", "cyls", "rest_pose", "ext_scale", "pose_scale",
                "gt_skts")  # fmt: skip
_TEXT_KEYS = ("img_paths",)  # every other loaded key must hold numbers
# True poses that training can use (--gt-poses); gt_kp3d may have other joint sets (H36M: 17) and is only compared.
_GT_TAILS = {"gt_skts": (24, 4, 4)}  # rows: one per pose or per image
_RIGID_TOL = 1e-2  # max |R R^T - I| of a camera or bone rotation; float32 rigid transforms are ~1e-6 off
_MIN_SIZE = 8  # pixels; smaller images are almost surely a wrong img_shape
_FIX = "regenerate the file or fix the writer"


def dilate_mask(mask: np.ndarray, kernel: int = 5, iterations: int = 2) -> np.ndarray:
    """Binary dilation with a ``kernel x kernel`` ones kernel, repeated ``iterations`` times.

    Same result as A-NeRF's ``cv2.dilate(mask, np.ones((5, 5)), iterations=2)`` (anchor at the kernel centre,
    nothing enters from outside the image). Separable, pure numpy.

    Args:
        mask: ``[..., H, W]`` bool or {0,1} ints.
    Returns:
        ``[..., H, W]`` bool.
    """
    out = np.asarray(mask) != 0
    lo, hi = kernel // 2, kernel - 1 - kernel // 2  # output(x) = max src(x - lo .. x + hi), as cv2
    for _ in range(iterations):
        for axis in (-2, -1):
            n = out.shape[axis]
            acc = out.copy()
            for s in range(-lo, hi + 1):
                if s == 0 or abs(s) >= n:
                    continue
                dst = [slice(None)] * out.ndim
                src = [slice(None)] * out.ndim
                # acc[x] |= out[x + s]
                dst[axis], src[axis] = (slice(0, n - s), slice(s, n)) if s > 0 else (slice(-s, n), slice(0, n + s))
                acc[tuple(dst)] |= out[tuple(src)]
            out = acc
    return out


def _err(path: Path, message: str) -> DataError:
    return DataError(f"{path}: {message}")


class AnerfData:
    """An opened, validated A-NeRF ``.h5`` file. Use ``open_anerf_h5``; close it (or use ``with``).

    Attributes:
        path: the file.
        n_images, height, width: from ``img_shape``.
        n_poses: rows of ``kp3d``/``bones``/``skts``.
        arrays: every known non-image key, loaded. ``c2ws [N, 4, 4]``, ``focals [N]`` and ``centers [N, 2]``
            are expanded to one row per image (files may store one shared value); ``img_paths`` is decoded
            to ``str``.
        keys: every dataset in the file -> ``(shape, dtype string)`` as stored.
        extra_keys: datasets not known to A-NeRF (kept in ``keys``, not loaded).
        pose_idxs: ``[N]`` int64, the ``kp3d`` row used by each image (see ``pose_index``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._pid = -1
        self._bkgd_cache: dict[int, np.ndarray] = {}
        if not self.path.exists():
            raise _err(self.path, "file not found — check the path (expected an A-NeRF .h5 file)")
        if self.path.is_dir():
            raise _err(self.path, "is a directory, expected an A-NeRF .h5 file — pass the file path")
        try:
            self._validate()
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------------------------------------
    # File handle. h5py handles must not be shared across fork(), so a DataLoader worker reopens.
    @property
    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            try:
                self._h5 = h5py.File(self.path, "r")
            except OSError as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise _err(
                    self.path, f"not a readable HDF5 file ({msg}); it may be truncated or corrupt — "
                    "re-download or regenerate it"
                ) from None  # fmt: skip
            self._pid = os.getpid()
        return self._h5

    @property
    def ext_scale(self) -> float | None:
        """Millimetres x ``ext_scale`` = world units (0.001 when world units are metres), or None.

        A-NeRF's own files (``process_spin.py``, ``load_surreal.py``) store ``0.001 * 0.25 / 0.00035`` (0.714,
        the factor its reference skeleton was scaled by) while A-NeRF itself measures in ``0.001`` per nominal
        millimetre (its 250 mm cylinder margin = 0.25 units, its 500 mm cutoff = 0.5): for those files this is
        0.001, and their millimetres are nominal (``pose_scale`` relates them to SMPL's metres).
        """
        ext = self.arrays.get("ext_scale")
        if ext is None:
            return None
        value = float(np.asarray(ext).reshape(-1)[0])
        if math.isclose(value, 0.001 * ANERF_DATASET_SCALE, rel_tol=1e-4):
            return 0.001
        return value

    @property
    def pose_scale(self) -> float:
        """World units per metre of SMPL's skeleton: A-NeRF rescales SPIN skeletons to a reference size and
        stores the factor (``pose_scale``); 1 in our files (metres) and where absent."""
        scale = self.arrays.get("pose_scale")
        return float(np.asarray(scale).reshape(-1)[0]) if scale is not None else 1.0

    @property
    def handle(self) -> h5py.File:
        """The open (read-only) HDF5 file, for streaming copies (``fast-anerf data subset``)."""
        return self._file

    def close(self) -> None:
        """Close the file handle (the object can still reopen it lazily)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for spawned DataLoader workers: the h5py handle stays behind and is reopened lazily.
        return {**self.__dict__, "_h5": None, "_pid": -1}

    def __enter__(self) -> AnerfData:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        size = f"{self.n_images} images of {self.height}x{self.width}"
        return f"AnerfData({str(self.path)!r}, {size}, n_poses={self.n_poses})"

    # ---------------------------------------------------------------------------------------------
    def read(self, key: str, index: Any = ()) -> np.ndarray:
        """Read (part of) a dataset; HDF5 read failures become DataError naming the key."""
        try:
            return self._file[key][index]
        except (OSError, RuntimeError, KeyError) as e:  # KeyError: a listed name that a damaged header garbled
            raise _err(self.path, f"cannot read key '{key}' ({e}); the file is damaged — regenerate it") from None

    def _bad(self, key: str, problem: str, fix: str = _FIX) -> DataError:
        """``<file>: key '<key>' <what came; what was expected> — <fix>``."""
        return _err(self.path, f"key '{key}' {problem} — {fix}")

    def _validate(self) -> None:
        self.keys: dict[str, tuple[tuple[int, ...], str]] = {}

        def visit(name: str | bytes, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                # h5py gives names that are not valid UTF-8 (a damaged header) as bytes: unknown keys, shown as text.
                name = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
                self.keys[name] = (tuple(int(s) for s in obj.shape), str(obj.dtype))

        try:
            self._file.visititems(visit)
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # damaged object headers
            raise _err(self.path, f"cannot list its datasets ({e}); the file is damaged — regenerate it") from None
        self.extra_keys = sorted(k for k in self.keys if k not in KNOWN_KEYS and not k.startswith("gt_"))
        for key in REQUIRED_KEYS:
            if key not in self.keys:
                raise self._bad(key, f"is missing (required: {', '.join(REQUIRED_KEYS)})")
        self.arrays: dict[str, np.ndarray] = {}
        for key, (shape, _) in self.keys.items():
            if key in IMAGE_KEYS or key in self.extra_keys:
                continue
            arr = np.asarray(self.read(key))
            if key in _TEXT_KEYS and arr.dtype.kind in "SO":  # byte strings (img_paths) -> str
                dec = [a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a) for a in arr.ravel()]
                arr = np.array(dec).reshape(shape)
            elif key not in _TEXT_KEYS and arr.dtype.kind not in "fiub":
                raise self._bad(key, f"has dtype {arr.dtype}; expected numbers (float32 or int)")
            self.arrays[key] = arr
        self._validate_images()
        self._validate_poses()
        self._validate_index_arrays()
        # Cameras: one per image, one shared, or one per camera (image i -> camera cam_idxs[i], or i // P for
        # SURREAL's camera blocks).
        self._per_image("c2ws", (4, 4))
        self._per_image("focals", ())
        if "centers" in self.arrays:
            self._per_image("centers", (2,))
        for key in _FINITE_KEYS:
            arr = self.arrays.get(key)
            if arr is not None and not np.isfinite(arr).all():
                bad = ~np.isfinite(arr)
                row = int(np.argwhere(bad.reshape(len(arr), -1).any(-1))[0, 0]) if arr.ndim else 0
                raise self._bad(key, f"has {int(bad.sum())} non-finite values (first in row {row}); expected finite")
        focals = self.arrays["focals"]
        if (focals <= 0).any():
            i = int(np.argwhere(focals <= 0)[0, 0])
            raise self._bad("focals", f"is {focals[i]} for image {i}; expected focal lengths > 0 px")
        for key in ("ext_scale", "pose_scale"):
            if key in self.arrays and (self.arrays[key] <= 0).any():
                raise self._bad(key, f"is {self.arrays[key].reshape(-1)[:3].tolist()}; expected a scale > 0")
        for key in ("c2ws", "skts", "gt_skts"):
            if key in self.arrays:
                self._check_rigid(key)
        self._validate_indices()

    def _check_rigid(self, key: str) -> None:
        """Cameras and world-to-bone transforms are rigid: a zero or scaled rotation gives NaN or warped rays."""
        rot = self.arrays[key][..., :3, :3].astype(np.float64)
        error = np.abs(rot @ np.swapaxes(rot, -1, -2) - np.eye(3)).max(axis=(-1, -2))  # [rows(, 24)]
        if (error > _RIGID_TOL).any():
            where = np.argwhere(error > _RIGID_TOL)[0].tolist()
            raise self._bad(
                key, f"row {where} is not a rigid transform (rotation part off by {error.max():.3g}); "
                "expected a rotation and a translation"
            )  # fmt: skip

    def _validate_images(self) -> None:
        shape = self.arrays["img_shape"]
        if shape.shape != (4,) or shape.dtype.kind not in "iu" or int(shape[3]) != 3:
            raise self._bad("img_shape", f"is {shape.tolist()} ({shape.dtype}); expected 4 ints (N, H, W, 3)")
        self.n_images, self.height, self.width = (int(s) for s in shape[:3])
        n, h, w = self.n_images, self.height, self.width
        if h < _MIN_SIZE or w < _MIN_SIZE or n < 1:
            raise self._bad("img_shape", f"is {shape.tolist()}; expected >= 1 image of >= {_MIN_SIZE}x{_MIN_SIZE} px")
        # A-NeRF's flattened layout [N, H*W, C], or [N, H, W, C] (accepted, slower pixel reads).
        for key, c in (("imgs", 3), ("masks", 1), ("sampling_masks", 1), ("bkgds", 3)):
            if key not in self.keys:
                continue
            s, dtype = self.keys[key]
            tails = [(h * w, c), (h, w, c)] + ([(h * w,), (h, w)] if c == 1 else [])
            rows_ok = len(s) > 0 and (s[0] >= 1 if key == "bkgds" else s[0] == n)
            if not rows_ok or s[1:] not in tails:
                rows = "N_bg" if key == "bkgds" else n
                raise self._bad(
                    key, f"has shape {s} but img_shape is {shape.tolist()}; expected ({rows}, {h * w}, {c})"
                )
            if c == 3 and dtype != "uint8":
                raise self._bad(key, f"has dtype {dtype}; expected uint8 RGB in 0..255")
        self._imgs_flat = len(self.keys["imgs"][0]) == 3

    def _validate_poses(self) -> None:
        kp3d = self.arrays["kp3d"]
        if kp3d.ndim != 3 or kp3d.shape[1:] != (24, 3) or kp3d.shape[0] < 1:
            raise self._bad("kp3d", f"has shape {kp3d.shape}; expected (P, 24, 3) SMPL-24 joints")
        p = self.n_poses = int(kp3d.shape[0])
        for key, tail in (("bones", (24, 3)), ("skts", (24, 4, 4))):
            if self.arrays[key].shape != (p, *tail):
                got = self.arrays[key].shape
                raise self._bad(key, f"has shape {got} but kp3d has {p} poses; expected {(p, *tail)}")
        cyls = self.arrays.get("cyls")
        if cyls is not None and (cyls.ndim != 2 or cyls.shape[1] != 5 or len(cyls) not in (p, self.n_images)):
            raise self._bad("cyls", f"has shape {cyls.shape}; expected ({p}, 5), one cylinder per pose")
        paths = self.arrays.get("img_paths")
        if paths is not None and np.shape(paths) != (self.n_images,):
            raise self._bad("img_paths", f"has shape {np.shape(paths)}; expected ({self.n_images},), one path per "
                            "image (or leave the key out)")  # fmt: skip
        if "rest_pose" in self.arrays and self.arrays["rest_pose"].shape != (24, 3):
            raise self._bad("rest_pose", f"has shape {self.arrays['rest_pose'].shape}; expected (24, 3)")
        for key, tail in _GT_TAILS.items():
            a = self.arrays.get(key)
            if a is not None and (a.ndim != len(tail) + 1 or a.shape[1:] != tail or len(a) not in (p, self.n_images)):
                raise self._bad(key, f"has shape {a.shape}; expected ({p}, {', '.join(map(str, tail))})")
        # A skeleton whose joints all sit at one point has no size: bone boxes and sample steps would be 0.
        for key, joints in (("kp3d", kp3d), ("rest_pose", self.arrays.get("rest_pose"))):
            if joints is None or not np.isfinite(joints).all():
                continue  # non-finite values get their own message
            extent = np.ptp(joints.reshape(-1, 24, 3), axis=1).max(axis=-1)  # [rows]
            if (extent <= 0).any():
                row = int(np.argmin(extent))
                raise self._bad(key, f"pose {row} has all 24 joints at one point; expected a skeleton")

    def _validate_index_arrays(self) -> None:
        """``kp_idxs``, ``cam_idxs``, ``bkgd_idxs``: one whole number per image, kept as int64. Floats holding
        whole numbers are accepted: A-NeRF's PerfCap writer stores ``bkgd_idxs = np.zeros(N)`` as float32 (and
        A-NeRF reads it back with ``astype(np.int64)``)."""
        n = self.n_images
        for key in ("kp_idxs", "cam_idxs", "bkgd_idxs"):
            a = self.arrays.get(key)
            if a is None:
                continue
            whole = a.dtype.kind in "iu" or (a.dtype.kind == "f" and np.isfinite(a).all() and (a == np.round(a)).all())
            if a.shape != (n,) or not whole:
                raise self._bad(key, f"has shape {a.shape} ({a.dtype}); expected ({n},) whole numbers, one per image")
            self.arrays[key] = a.astype(np.int64)

    def _validate_indices(self) -> None:
        n, p = self.n_images, self.n_poses
        n_bg = self.keys["bkgds"][0][0] if "bkgds" in self.keys else 0
        b = self.arrays.get("bkgd_idxs")
        if b is not None and n_bg and (b.min() < 0 or b.max() >= n_bg):
            raise self._bad("bkgd_idxs", f"has values in [{b.min()}, {b.max()}] but bkgds has {n_bg} rows")
        # Image -> pose row.
        if p == n:
            self.pose_idxs = np.arange(n, dtype=np.int64)
        elif "kp_idxs" in self.arrays:
            k = self.arrays["kp_idxs"].astype(np.int64)
            if k.min() < 0 or k.max() >= p:
                raise self._bad("kp_idxs", f"has values in [{k.min()}, {k.max()}] but kp3d has {p} poses")
            self.pose_idxs = k
        elif n % p == 0:  # SURREAL: images ordered (camera, pose)
            cams = self.arrays.get("cam_idxs")
            if cams is not None and not np.array_equal(cams, np.arange(n) // p):  # not that order: no guessing
                raise self._bad(
                    "kp3d",
                    f"has {p} poses for {n} images, no 'kp_idxs' maps them, and 'cam_idxs' "
                    "says the images are not ordered (camera, pose); add kp_idxs (each image's pose)",
                )
            self.pose_idxs = np.arange(n, dtype=np.int64) % p
        else:
            expected = f"expected {n} poses, a divisor of {n}, or kp_idxs"
            raise self._bad("kp3d", f"has {p} poses for {n} images and no 'kp_idxs' maps them; {expected}")

    def _per_image(self, key: str, tail: tuple[int, ...]) -> None:
        """Expand a camera key to one row per image, accepting A-NeRF's lenient variants."""
        a = self.arrays[key]
        a = a.astype(np.float32) if a.dtype.kind in "iu" else a
        n, p = self.n_images, self.n_poses
        if key == "c2ws" and a.shape[-2:] == (3, 4):  # [R | t] without the last row
            bottom = np.broadcast_to(np.array([0, 0, 0, 1], a.dtype), (*a.shape[:-2], 1, 4))
            a = np.concatenate([a, bottom], axis=-2)
        if key == "focals" and a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        if a.shape == tail:
            a = a[None]
        rows = a.shape[0] if a.ndim == len(tail) + 1 else -1
        # Image -> camera row when the file has one row per camera id (cam_idxs 0..rows-1, any image order); in
        # other files cam_idxs is bookkeeping (the built-in character's, Mixamo's), and a row count that fits
        # neither rule is a damaged file.
        cams = self.arrays.get("cam_idxs")
        by_camera = rows not in (n, 1) and cams is not None and cams.min() >= 0 and cams.max() == rows - 1
        if a.ndim != len(tail) + 1 or a.shape[1:] != tail or (rows not in (n, 1) and rows * p != n and not by_camera):
            got = self.keys[key][0]
            also = f" or {(n, 3, 4)}" if key == "c2ws" else ""  # [R | t] rows are read too
            raise self._bad(key, f"has shape {got} but img_shape has {n} images; expected {(n, *tail)}{also}, one "
                            "row shared by all, or one per camera with cam_idxs giving each image's")  # fmt: skip
        if rows == 1:
            a = np.repeat(a, n, axis=0)
        elif by_camera:
            a = a[cams]
        elif rows != n:  # SURREAL: images ordered (camera, pose), no cam_idxs
            if cams is not None:  # cam_idxs that do not number these rows 0..rows-1 (e.g. 1..rows): no guessing
                raise self._bad(
                    "cam_idxs",
                    f"has values {cams.min()}..{cams.max()} but {key} has {rows} rows, one "
                    f"per camera; number the cameras 0..{rows - 1} or store one {key} row per image",
                )
            kp = self.arrays.get("kp_idxs")
            if kp is not None and not np.array_equal(kp, np.arange(n) % p):  # not ordered (camera, pose) either
                raise self._bad(
                    key,
                    f"has {rows} rows, one per camera, but no 'cam_idxs' says which camera each "
                    f"image is and kp_idxs does not order the images (camera, pose); add cam_idxs "
                    f"(0..{rows - 1})",
                )
            a = a[np.arange(n) // p]
        self.arrays[key] = np.ascontiguousarray(a)

    # ---------------------------------------------------------------------------------------------
    def _check_index(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.n_images:
            raise IndexError(f"image index {i} out of range for {self.n_images} images in {self.path}")
        return i

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 ``[H, W, 3]``."""
        return self.read("imgs", self._check_index(i)).reshape(self.height, self.width, 3)

    def mask(self, i: int) -> np.ndarray:
        """Foreground mask of image ``i``, bool ``[H, W]``."""
        return self.read("masks", self._check_index(i)).reshape(self.height, self.width) != 0

    def sampling_mask(self, i: int) -> np.ndarray:
        """Pixels rays may be drawn from, bool ``[H, W]``: ``sampling_masks``, else the dilated mask."""
        if "sampling_masks" in self.keys:
            return self.read("sampling_masks", self._check_index(i)).reshape(self.height, self.width) != 0
        return dilate_mask(self.mask(i))

    def background(self, i: int) -> np.ndarray | None:
        """Background of image ``i``, uint8 ``[H, W, 3]`` (``bkgds[bkgd_idxs[i]]``); None without bkgds."""
        i = self._check_index(i)
        if "bkgds" not in self.keys:
            return None
        b = int(self.arrays["bkgd_idxs"][i]) if "bkgd_idxs" in self.arrays else 0
        if b not in self._bkgd_cache:  # few distinct backgrounds (H36M: 8), reused by every image
            self._bkgd_cache[b] = self.read("bkgds", b).reshape(self.height, self.width, 3)
        return self._bkgd_cache[b]

    def pixels(self, i: int, pixel_ids: np.ndarray) -> np.ndarray:
        """RGB of some pixels of image ``i``: ``pixel_ids [n]`` flat ``v * W + u`` -> uint8 ``[n, 3]``.

        Reads only the chunks holding those pixels. Ids may be in any order and repeat; HDF5 fancy indexing
        needs strictly increasing ids, so they are de-duplicated and sorted here and returned in caller order.
        """
        i = self._check_index(i)
        ids = np.asarray(pixel_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            return np.zeros((0, 3), np.uint8)
        if ids.min() < 0 or ids.max() >= self.height * self.width:
            raise IndexError(f"pixel ids must be in [0, {self.height * self.width}), got [{ids.min()}, {ids.max()}]")
        uniq, inverse = np.unique(ids, return_inverse=True)
        if self._imgs_flat:
            rgb = self.read("imgs", (i, uniq))
        else:
            rgb = self.image(i).reshape(-1, 3)[uniq]
        return rgb[inverse.reshape(-1)]

    def pose_index(self, i: int) -> int:
        """Row of ``kp3d``/``bones``/``skts`` used by image ``i``: identity if there is one pose per image,
        else ``kp_idxs[i]`` if present, else SURREAL's ``i % n_poses``."""
        return int(self.pose_idxs[self._check_index(i)])

    def center(self, i: int) -> tuple[float, float]:
        """Principal point ``(cx, cy)`` in pixels of image ``i``: ``centers[i]`` or ``(W / 2, H / 2)``."""
        i = self._check_index(i)
        if "centers" in self.arrays:
            cx, cy = self.arrays["centers"][i]
            return float(cx), float(cy)
        return self.width / 2.0, self.height / 2.0

    def load_all(self) -> dict[str, np.ndarray | None]:
        """All images in memory, for small files: ``imgs`` uint8 ``[N, H, W, 3]``, ``masks`` bool
        ``[N, H, W]``, ``sampling_masks`` bool ``[N, H, W]``, ``bkgds`` uint8 ``[N_bg, H, W, 3]`` or None."""
        n, h, w = self.n_images, self.height, self.width
        masks = self.read("masks").reshape(n, h, w) != 0
        if "sampling_masks" in self.keys:
            sampling = self.read("sampling_masks").reshape(n, h, w) != 0
        else:
            sampling = dilate_mask(masks)
        bkgds = self.read("bkgds").reshape(-1, h, w, 3) if "bkgds" in self.keys else None
        return {
            "imgs": self.read("imgs").reshape(n, h, w, 3),
            "masks": masks,
            "sampling_masks": sampling,
            "bkgds": bkgds,
        }


def open_anerf_h5(path: str | os.PathLike) -> AnerfData:
    """Open and validate an A-NeRF ``.h5``; raises ``DataError`` (one line: file, key, expected, fix)."""
    return AnerfData(path)
