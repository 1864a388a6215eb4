"""An A-NeRF ``.h5``'s poses -> SMPL parameters in each image's camera, as SPIN / VIBE write them.

``fast-anerf data to-spin`` is the way back from ``from-spin``: after training (``RUN/refined_poses.h5``) or
``fast-anerf refine`` (``OUT/refined.h5``) corrected a SPIN / VIBE estimate, it writes the corrected poses in the
estimate's own format, for the tools that read it (SMPL renderers, Blender add-ons, ``from-spin`` itself).

Output ``.npz`` (no pickled objects), one row per image of the ``.h5``, in its order (images that share a pose
row, as SURREAL's cameras do, get the same body seen from their own camera):

* ``pred_rotmat [N, 24, 3, 3]`` and ``pose [N, 72]`` (axis-angle, rad): SMPL's local joint rotations; joint 0 is
  the global orientation in the image's OpenCV camera frame (x right, y down, z forward), as SPIN's.
* ``betas [N, B]``: the SPIN file's (``--spin``), else the ``.h5``'s ``betas``, else zeros (the mean shape).
* ``transl [N, 3]`` m: SMPL's translation in that camera. SMPL turns the body about its pelvis ``J_0(betas)``,
  so ``smplx.SMPL(betas=, global_orient=, body_pose=, transl=)`` puts the pelvis at ``J_0 + transl``; this is
  SPIN's camera translation ``t`` (``X_cam = X_model + t``).
* ``joints3d [N, 24, 3]`` m: the joints in SMPL's model frame (pelvis at ``J_0``), like SPIN's ``pred_joints``
  (``from-spin`` reads the pelvis back from it); in the camera they are ``joints3d + transl``.
* ``focal [N]``, ``center [N, 2]`` px: the full-frame pinhole camera (the ``.h5``'s) that images them.
* ``frame_ids [N]`` (the ``.h5``'s ``kp_idxs``, or the SPIN file's) and ``img_paths [N]`` when known.
* With ``--spin`` (the file ``from-spin`` converted): ``pred_camera [N, 3]``, the weak-perspective ``(s, tx,
  ty)`` of ``transl`` in that file's crop boxes (``from_spin.crop_camera_to_full`` inverted; pass the same
  ``--bbox-scale``), next to its ``bboxes`` (and ``masks``). Its other keys (VIBE's ``verts``, ``orig_cam``...)
  would describe the old poses and are not copied. Rows are matched by frame id, so a subset of the converted
  file (``data subset``) works. For a file whose poses did not change, the rotations and ``pred_camera`` are
  the SPIN file's (``tests/test_to_spin.py``).

``J_0`` is found as ``from-spin`` found it: the SPIN file's ``pred_joints`` (pelvis), else SMPL's ``J_0(betas)``
with ``--smpl``, else SMPL's mean pelvis. Positions are the ``.h5``'s world units x ``0.001 / ext_scale /
pose_scale``: metres (``from-spin``'s files and the built-in character are in metres; A-NeRF's SPIN-derived
files scaled SMPL's metres by their ``pose_scale``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from fast_anerf.data.anerf_h5 import AnerfData, open_anerf_h5
from fast_anerf.data.from_spin import SMPL_MEAN_PELVIS, crop_camera_to_full, smpl_rest_joints
from fast_anerf.data.rays import OPENCV_TO_OPENGL
from fast_anerf.data.spin_npz import ALIASES, SpinFrames, load_spin_npz
from fast_anerf.errors import DataError, UserError, refuse_to_replace
from fast_anerf.run_files import atomic_file
from fast_anerf.skeleton import axis_angle_to_matrix, matrix_to_axis_angle


def camera_frame(c2ws: np.ndarray, points: np.ndarray) -> np.ndarray:
    """World points ``[N, J, 3]`` -> each image's OpenCV camera frame, for OpenGL camera-to-world ``[N, 4, 4]``."""
    world_from_cv = c2ws[:, :3, :3] @ OPENCV_TO_OPENGL
    return np.einsum("nij,nkj->nki", world_from_cv.swapaxes(-1, -2), points - c2ws[:, None, :3, 3])


def weak_perspective(transl: np.ndarray, focals: np.ndarray, centers: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """SPIN's crop camera ``(s, tx, ty) [N, 3]`` of a body at ``transl [N, 3]`` seen with ``focals [N]`` px and
    principal points ``centers [N, 2]`` px, in crops ``boxes [N, 3]`` (cx, cy, side) px.

    The inverse of ``from_spin.crop_camera_to_full`` for any focal: the person's image size ``f / t_z`` fixes
    the crop scale, ``s = 2 f / (t_z side)``, and the box centre's offset from the principal point is a body
    shift of ``2 offset / (s side)`` m."""
    s = 2 * focals / (transl[:, 2] * boxes[:, 2])
    offset = (boxes[:, :2] - centers) * 2 / (s * boxes[:, 2])[:, None]
    return np.concatenate([s[:, None], transl[:, :2] - offset], axis=-1)


def _spin_rows(spin_path: Path, spin: SpinFrames, data: AnerfData) -> np.ndarray:
    """Row of the SPIN file for each image of the .h5 ``[N]``: matched by frame id (the .h5's ``kp_idxs``, which
    ``from-spin`` writes and ``data subset`` keeps), else by position when the counts agree."""
    n = data.n_images
    ids = spin.frame_ids if spin.frame_ids is not None else np.arange(spin.n)
    kp_idxs = data.arrays.get("kp_idxs")
    mismatch = f"pass the .npz that {data.path.name} was converted from (with `data from-spin`)"
    if kp_idxs is None:
        if spin.n != n:
            raise DataError(f"{spin_path}: has {spin.n} frames but {data.path} has {n} images — {mismatch}")
        return np.arange(n)
    if len(np.unique(ids)) != len(ids):
        if spin.n == n and np.array_equal(ids, kp_idxs):
            return np.arange(n)
        raise DataError(f"{spin_path}: key 'frame_ids' repeats frames and does not list {data.path}'s images in "
                        f"order — {mismatch}")  # fmt: skip
    row_of = {int(f): r for r, f in enumerate(ids)}
    missing = [int(k) for k in kp_idxs if int(k) not in row_of]
    if missing:
        raise DataError(f"{spin_path}: has no frame {missing[0]} ({len(missing)} of {data.path}'s {n} images are "
                        f"not in its frame ids) — {mismatch}")  # fmt: skip
    return np.array([row_of[int(k)] for k in kp_idxs])


def _file_betas(data: AnerfData) -> np.ndarray | None:
    """The .h5's ``betas`` per image ``[N, B]`` (stored per pose row, per image or once), or None."""
    betas = data.arrays.get("betas")
    if betas is None:
        return None
    betas = np.asarray(betas, np.float64).reshape(-1, betas.shape[-1]) if betas.ndim else None
    if betas is None or len(betas) not in (1, data.n_poses, data.n_images):
        raise DataError(f"{data.path}: key 'betas' has shape {data.keys['betas'][0]}; expected one row, one per "
                        f"pose or one per image — fix or delete the key")  # fmt: skip
    if len(betas) == 1:
        return np.repeat(betas, data.n_images, axis=0)
    return betas if len(betas) == data.n_images else betas[data.pose_idxs]


def export_spin(
    path: str | os.PathLike,
    out: str | os.PathLike,
    spin_path: str | os.PathLike | None = None,
    smpl: str | os.PathLike | None = None,
    bbox_scale: float = 1.0,
    overwrite: bool = False,
) -> dict:
    """Write the poses of the A-NeRF ``.h5`` at ``path`` as SMPL / SPIN parameters to ``out`` (module docstring).

    Returns a summary: ``out, frames, pelvis`` (where ``J_0`` came from) and, with ``spin_path``, ``moved_mm``:
    mean and max distance of the joints (in the camera) from the SPIN file's, as ``from-spin`` placed them.
    """
    path, out = Path(path), Path(out)
    if out.suffix.lower() != ".npz":
        raise UserError(f"{out}: --out must be an .npz file (the SPIN format)")
    if spin_path is not None and out.resolve() == Path(spin_path).resolve():
        raise UserError(f"{out}: is the SPIN file given to --spin — pass another --out (it is never overwritten)")
    refuse_to_replace(out, overwrite)
    if not (np.isfinite(bbox_scale) and bbox_scale > 0):
        raise UserError(f"--bbox-scale is {bbox_scale}; expected the factor given to from-spin (default 1)")
    with open_anerf_h5(path) as data:
        n, arrays, pose_idxs = data.n_images, data.arrays, data.pose_idxs
        metres = 0.001 / (data.ext_scale or 0.001) / data.pose_scale  # per world unit
        c2ws = arrays["c2ws"].astype(np.float64)
        c2ws[:, :3, 3] *= metres
        centers = np.array([data.center(i) for i in range(n)], np.float64)
        focals = arrays["focals"].astype(np.float64)
        kp3d = arrays["kp3d"].astype(np.float64)[pose_idxs] * metres  # [N, 24, 3] world, m
        bones = arrays["bones"].astype(np.float64)[pose_idxs]  # [N, 24, 3] axis-angle, root in the world
        rest, kp_idxs, img_paths = arrays.get("rest_pose"), arrays.get("kp_idxs"), arrays.get("img_paths")
        spin = load_spin_npz(spin_path) if spin_path is not None else None
        if spin is not None and spin.cameras is None:
            raise UserError(f"--spin {spin_path}: has no crop camera (pred_camera, bboxes): is it to-spin's own "
                            "output? pass the SPIN / VIBE file that from-spin converted")  # fmt: skip
        rows = _spin_rows(Path(spin_path), spin, data) if spin is not None else None
        betas = spin.betas[rows] if spin is not None else _file_betas(data)
    if betas is None:
        betas = np.zeros((n, 10))
    if spin is not None and spin.pelvis is not None:
        pelvis, pelvis_source = spin.pelvis[rows], f"pred_joints of {spin_path}"
    elif smpl is not None:
        pelvis, pelvis_source = smpl_rest_joints(smpl, betas)[:, 0], "SMPL J_0(betas)"
    else:
        pelvis, pelvis_source = np.tile(SMPL_MEAN_PELVIS, (n, 1)), "SMPL mean pelvis"

    joints_cam = camera_frame(c2ws, kp3d)
    transl = joints_cam[:, 0] - pelvis
    if (joints_cam[..., 2] <= 0).any():
        i = int(np.argwhere((joints_cam[..., 2] <= 0).any(-1))[0, 0])
        raise DataError(f"{path}: image {i}'s skeleton is (partly) behind its camera (key 'kp3d' or 'c2ws') — check "
                        "the file's poses and cameras")  # fmt: skip
    world_from_cv = torch.as_tensor(c2ws[:, :3, :3] @ OPENCV_TO_OPENGL)
    rotmats = axis_angle_to_matrix(torch.as_tensor(bones))
    rotmats[:, 0] = world_from_cv.transpose(-1, -2) @ rotmats[:, 0]  # global orientation in the OpenCV camera
    spin_out = {
        "pred_rotmat": rotmats.float().numpy(),
        "pose": matrix_to_axis_angle(rotmats).reshape(n, 72).float().numpy(),
        "betas": betas.astype(np.float32),
        "transl": transl.astype(np.float32),
        "joints3d": (joints_cam - transl[:, None]).astype(np.float32),
        "focal": focals.astype(np.float32),
        "center": centers.astype(np.float32),
    }
    summary: dict = {"out": str(out), "frames": n, "pelvis": pelvis_source}
    if spin is not None:
        spin_out["frame_ids"] = (spin.frame_ids if spin.frame_ids is not None else np.arange(spin.n))[rows]
        boxes = spin.bboxes[rows].copy()
        boxes[:, 2] *= bbox_scale
        spin_out["pred_camera"] = weak_perspective(transl, focals, centers, boxes).astype(np.float32)
        spin_out.update(_kept_keys(Path(spin_path), rows))
        rest = rest * metres if rest is not None else None
        before = _as_converted(spin, rows, boxes, focals, centers, rest, pelvis)
        moved = np.linalg.norm(before - joints_cam, axis=-1) * 1000
        summary["moved_mm"] = round(float(moved.mean()), 2), round(float(moved.max()), 2)
    elif kp_idxs is not None:
        spin_out["frame_ids"] = kp_idxs.astype(np.int64)
    if img_paths is not None and len(img_paths) == n:
        spin_out["img_paths"] = np.asarray(img_paths, dtype=str)
    with atomic_file(out) as handle:  # never a half-written npz
        np.savez(handle, **spin_out)
    return summary


def _kept_keys(spin_path: Path, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The SPIN file's ``bboxes`` (as the user stored them: (cx, cy, w, h), say) and ``masks``, at ``rows``."""
    with np.load(spin_path, allow_pickle=False) as raw:
        kept = {}
        for name in ("bboxes", "masks"):
            key = next((k for k in ALIASES[name] if k in raw.files), None)
            if key is not None:
                kept[name] = raw[key][rows]
    return kept


def _as_converted(spin: SpinFrames, rows, boxes, focals, centers, rest, pelvis) -> np.ndarray:
    """The SPIN file's joints ``[N, 24, 3]`` m in each camera, where ``from-spin`` put them: its rotations on the
    same rest skeleton (``rest [24, 3]`` m; None: the built-in one), pelvis at ``pelvis [N, 3]`` m, translated
    by its weak-perspective camera at the ``.h5``'s focals and principal points (``boxes`` side scaled)."""
    from fast_anerf.data.synthetic import builtin_rest_pose, pose_arrays

    rest = np.asarray(rest if rest is not None else builtin_rest_pose(), np.float32)
    t = crop_camera_to_full(spin.cameras[rows], boxes, centers, focals)[1]
    bones = matrix_to_axis_angle(torch.as_tensor(spin.rotmats[rows])).numpy()
    return pose_arrays(rest, bones, pelvis)["kp3d"].astype(np.float64) + t[:, None]
