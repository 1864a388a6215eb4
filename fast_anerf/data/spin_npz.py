"""Reading a SPIN / VIBE ``.npz`` (keys and aliases: ``from_spin``'s module docstring) into validated arrays.

Every key is read only when used, so keys the conversion never needs (VIBE's ``joints2d=None``, an object
array) cannot stop it; each problem is one ``DataError`` naming the file, the key and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fast_anerf.data.frames import binarize_mask
from fast_anerf.errors import DataError
from fast_anerf.skeleton import axis_angle_to_matrix

SPIN_PELVIS_49 = 8  # "OP MidHip" in SPIN's 49 joints, mapped to SMPL joint 0
ALIASES = {
    "rotmat": ("pred_rotmat", "pred_rot_mat", "rotmat"),
    "pose": ("pose", "pred_pose"),
    "camera": ("pred_camera", "pred_cam"),
    "bboxes": ("bboxes", "bbox"),
    "betas": ("pred_betas", "betas"),
    "joints": ("pred_joints", "joints3d"),
    "frame_ids": ("frame_ids",),
    "masks": ("masks",),
    "transl": ("transl",),
    "focal": ("focal",),
}


@dataclass
class SpinFrames:
    """Validated SPIN output, float64. ``rotmats [N, 24, 3, 3]``, ``cameras [N, 3]`` (s, tx, ty) and ``bboxes
    [N, 3]`` (cx, cy, side) px, or None when the file holds ``transl [N, 3]`` m (full-frame camera, ``X_cam = X +
    transl``) instead; ``betas [N, B]``, ``pelvis [N, 3]`` m or None, ``frame_ids [N]`` or None, ``masks [N, H,
    W]`` bool or None, ``focals [N]`` px (the file's ``focal``) or None."""

    rotmats: np.ndarray
    cameras: np.ndarray
    bboxes: np.ndarray
    betas: np.ndarray
    pelvis: np.ndarray | None
    frame_ids: np.ndarray | None
    masks: np.ndarray | None
    transl: np.ndarray | None = None
    focals: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.rotmats)


def bad_key(path: Path, key: str, problem: str, fix: str) -> DataError:
    return DataError(f"{path}: key '{key}' {problem} — {fix}")


def _finite(path: Path, key: str, a: np.ndarray) -> np.ndarray:
    if np.asarray(a).dtype.kind not in "biuf":
        raise bad_key(path, key, f"holds {np.asarray(a).dtype} values, not numbers", "re-export the SPIN output")
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        row = int(np.argwhere(~np.isfinite(a.reshape(len(a), -1)).all(-1))[0, 0]) if a.ndim else 0
        raise bad_key(path, key, f"has non-finite values (first in row {row})", "re-export the SPIN output")
    return a


def load_spin_npz(path: str | os.PathLike) -> SpinFrames:
    """Read and validate a SPIN-format ``.npz`` (keys in the module docstring); raises one-line DataErrors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: SPIN file not found — pass the .npz with pred_rotmat, pred_camera, bboxes")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        if "pickled" in str(e):  # VIBE's vibe_output.pkl (joblib): a dict of people, each a dict of arrays
            raise DataError(f"{path}: a pickle, not an .npz — save one person's arrays with np.savez(OUT, **{{k: v "
                            "for k, v in person.items() if v is not None})") from None  # fmt: skip
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: not a readable .npz ({msg}) — save the SPIN output with np.savez") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):  # a single .npy array
        raise DataError(f"{path}: one array, not an .npz of named arrays — save the SPIN output with np.savez")
    with npz:
        return _read_spin_keys(path, _NpzKeys(path, npz))


class _NpzKeys(dict):
    """The keys of an open ``.npz``, each read only when used: VIBE writes ``joints2d=None`` (an object array
    that cannot be read without pickle), which must not stop the conversion since it is never used."""

    def __init__(self, path: Path, npz) -> None:
        super().__init__((key, None) for key in npz.files)
        self.path, self.npz = path, npz

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self.npz[key]
        except (OSError, ValueError, EOFError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"{self.path}: key '{key}' cannot be read ({msg}) — store it as a numeric array "
                            "(None values: leave the key out)") from None  # fmt: skip


def _read_spin_keys(path: Path, raw: _NpzKeys) -> SpinFrames:
    """``load_spin_npz`` on the keys of an open file."""

    def get(name: str, required: bool = True) -> tuple[str, np.ndarray | None]:
        for key in ALIASES[name]:
            if key in raw:
                return key, raw[key]
        if required:
            names = " | ".join(ALIASES[name])
            raise DataError(f"{path}: missing key '{names}' (have: {', '.join(sorted(raw))}) — add it")
        return ALIASES[name][0], None

    rot_key, rot = get("rotmat", required=False)
    if rot is None:
        key, pose = get("pose", required=False)
        if pose is None:
            names = " | ".join(ALIASES["rotmat"] + ALIASES["pose"])
            raise DataError(f"{path}: missing key '{names}' (have: {', '.join(sorted(raw))}) — add the rotations")
        pose = _finite(path, key, pose)
        if pose.ndim == 2 and pose.shape[1] == 72:
            pose = pose.reshape(-1, 24, 3)
        if pose.ndim != 3 or pose.shape[1:] != (24, 3) or len(pose) < 1:
            raise bad_key(path, key, f"has shape {pose.shape}", "expected (N, 72) or (N, 24, 3) SMPL axis-angle")
        angle = float(np.linalg.norm(pose, axis=-1).max())
        if angle > 2 * np.pi + 1e-3:  # SPIN / VIBE write radians; a joint turned by more than a full turn is degrees
            raise bad_key(path, key, f"has a rotation of {angle:.1f} (more than 2 pi)",
                       "axis-angle must be in radians (multiply degrees by pi / 180)")  # fmt: skip
        rot, rot_key = axis_angle_to_matrix(torch.as_tensor(pose)).numpy(), key
    rot = _finite(path, rot_key, rot)
    if rot.ndim != 4 or rot.shape[1:] != (24, 3, 3) or len(rot) < 1:
        raise bad_key(path, rot_key, f"has shape {rot.shape}", "expected (N, 24, 3, 3) SMPL rotation matrices")
    n = len(rot)
    ortho = np.abs(rot @ rot.swapaxes(-1, -2) - np.eye(3)).max(axis=(-1, -2))
    det = np.linalg.det(rot)
    if (ortho > 1e-2).any() or (det < 0.5).any():
        i, j = np.argwhere((ortho > 1e-2) | (det < 0.5))[0]
        raise bad_key(path, rot_key, f"frame {i} joint {j} is not a rotation (|R R^T - I| {ortho[i, j]:.3g}, det "
                   f"{det[i, j]:.3g})", "expected proper rotation matrices")  # fmt: skip
    # Re-orthonormalise the small float drift of network outputs (nearest rotation, via SVD).
    u, _, vt = np.linalg.svd(rot)
    rot = u @ vt

    def rows(name: str, tails: tuple[tuple[int, ...], ...], what: str, required: bool = True):
        key, a = get(name, required)
        if a is None:
            return key, None
        a = _finite(path, key, a)
        if a.ndim < 1 or len(a) != n or a.shape[1:] not in tails:
            want = " or ".join(str((n, *t)) for t in tails)
            raise bad_key(path, key, f"has shape {a.shape} for {n} frames of '{rot_key}'", f"expected {want} "
                       f"{what}")  # fmt: skip
        return key, a

    key, focals = get("focal", required=False)
    if focals is not None:
        focals = _finite(path, key, focals).astype(np.float64)
        focals = np.broadcast_to(focals.reshape(-1), (n,)).copy() if focals.size == 1 else focals
        if focals.shape != (n,) or (focals <= 0).any():
            raise bad_key(
                path, key, f"has shape {focals.shape} or a value <= 0", f"expected ({n},) focal lengths in px"
            )
    transl = None
    if not any(k in raw for k in ALIASES["camera"]) and "transl" in raw and focals is not None:
        key, transl = rows("transl", ((3,),), "translations in metres (to-spin's camera frame)")
        if (transl[:, 2] <= 0).any():
            i = int(np.argwhere(transl[:, 2] <= 0)[0, 0])
            raise bad_key(path, key, f"puts frame {i} at depth {transl[i, 2]:.3g}", "expected depth > 0 (in front)")
        return _optional_keys(path, raw, get, rows, rot, None, None, transl, focals)
    if not any(k in raw for k in ALIASES["camera"]):
        names = " | ".join(ALIASES["camera"])
        raise DataError(f"{path}: missing key '{names}' (have: {', '.join(sorted(raw))}) — add SPIN's weak-perspective "
                        "camera, or 'transl' with 'focal' (a full-frame camera, as to-spin writes)")  # fmt: skip
    key, cameras = rows("camera", ((3,),), "weak-perspective (s, tx, ty)")
    if (cameras[:, 0] <= 0).any():
        i = int(np.argwhere(cameras[:, 0] <= 0)[0, 0])
        raise bad_key(
            path, key, f"has scale s = {cameras[i, 0]:.4g} in frame {i}", "expected s > 0 (SPIN's crop scale)"
        )
    key, boxes = rows("bboxes", ((4,), (3,)), "(cx, cy, w, h) or (cx, cy, side) pixels")
    side = boxes[:, 2:].max(-1)
    if (side <= 0).any():
        i = int(np.argwhere(side <= 0)[0, 0])
        raise bad_key(path, key, f"has a box of size {boxes[i, 2:].tolist()} in frame {i}", "expected sizes > 0 px")
    bboxes = np.concatenate([boxes[:, :2], side[:, None]], axis=-1)
    return _optional_keys(path, raw, get, rows, rot, cameras, bboxes, None, focals)


def _optional_keys(path, raw, get, rows, rot, cameras, bboxes, transl, focals) -> SpinFrames:
    """The rest of ``_read_spin_keys``: betas, joints, frame ids and masks, each optional."""
    n = len(rot)
    key, betas = get("betas", required=False)
    if betas is None:
        betas = np.zeros((n, 10))
    else:
        betas = _finite(path, key, betas)
        if betas.ndim in (1, 2) and betas.size and (betas.ndim == 1 or len(betas) == 1):
            betas = np.broadcast_to(betas.reshape(1, -1), (n, betas.shape[-1]))  # one shape for all frames
        if betas.ndim != 2 or len(betas) != n or betas.shape[1] < 1:
            raise bad_key(path, key, f"has shape {betas.shape}", f"expected ({n}, 10) SMPL shape parameters")
    key, joints = rows("joints", ((49, 3), (24, 3)), "model-frame joints (SPIN's 49 or SMPL's 24)", required=False)
    pelvis = None if joints is None else joints[:, SPIN_PELVIS_49 if joints.shape[1] == 49 else 0]

    key, ids = get("frame_ids", required=False)
    if ids is not None:
        if ids.dtype.kind not in "iu" or ids.shape != (n,) or (ids < 0).any():
            raise bad_key(path, key, f"has shape {ids.shape} ({ids.dtype})", f"expected ({n},) frame indices >= 0")
        ids = ids.astype(np.int64)
    key, masks = get("masks", required=False)
    if masks is not None:
        masks = np.asarray(masks)
        masks = masks[..., 0] if masks.ndim == 4 and masks.shape[-1] == 1 else masks
        if masks.ndim != 3 or len(masks) != n or masks.dtype.kind not in "biuf":
            raise bad_key(path, key, f"has shape {masks.shape} ({masks.dtype})", f"expected ({n}, H, W) masks")
        masks = np.stack([binarize_mask(m) for m in masks])
    return SpinFrames(rot, cameras, bboxes, np.ascontiguousarray(betas), pelvis, ids, masks, transl, focals)
