"""Pose sequences to retarget a character to, read from files or built in, with one-line errors.

* A-NeRF ``.h5`` (``bones`` + ``kp3d``) or ``.npz`` with ``kp3d``: poses in the A-NeRF world (up = -y).
* ``.npz`` with ``bones`` + ``root``: the viewer's motion-file convention, the same as the built-in motions
  (``data/motions.py``): canonical SMPL frame (y up, facing +z), root offsets in metres from the standing
  pelvis; ``place_canonical`` puts such a motion into the A-NeRF world.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fast_anerf.errors import DataError, UserError
from fast_anerf.skeleton import N_JOINTS


def _check_array(path: Path, key: str, value: np.ndarray, tail: tuple[int, ...], what: str) -> np.ndarray:
    value = np.asarray(value)
    if value.dtype.kind not in "fiu":
        raise DataError(f"{path}: key '{key}' has dtype {value.dtype}; expected numbers ({what})")
    if value.ndim != 1 + len(tail) or value.shape[1:] != tail or value.shape[0] < 1:
        joints = f" ({value.shape[1]} joints, not 24)" if value.ndim == 3 and value.shape[1] != N_JOINTS else ""
        why = " — retargeting needs SMPL-24 skeletons" if len(tail) == 2 else ""  # not for a root's (T, 3)
        raise DataError(
            f"{path}: key '{key}' has shape {value.shape}{joints}; expected (T, {', '.join(map(str, tail))}) "
            f"{what}{why}"
        )
    bad = ~np.isfinite(value.reshape(value.shape[0], -1)).all(axis=1)
    if bad.any():
        raise DataError(
            f"{path}: key '{key}' has non-finite values (NaN/inf) in {int(bad.sum())} frame(s), first frame "
            f"{int(np.argmax(bad))}; fix or drop those frames"
        )
    return value.astype(np.float32)


def read_pose_file(path: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """Poses to retarget: ``(bones [T, 24, 3], roots [T, 3], canonical)``.

    * A-NeRF ``.h5``: ``bones`` (local axis-angle, root = global orientation) and ``kp3d`` (root = ``kp3d[:,
      0]``) in the A-NeRF world (``canonical=False``).
    * ``.npz`` with ``bones`` and ``root`` (or ``roots``): the viewer's motion-file convention, as the built-in
      motions: canonical SMPL frame (y up, facing +z), root offsets in metres from the standing pelvis
      (``canonical=True``). An ``.npz`` with ``bones`` and ``kp3d`` instead is A-NeRF-world like an .h5.

    Raises ``DataError`` (one line naming the file and the key) for anything that is not SMPL-24 or not finite.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: retarget source not found; pass an A-NeRF .h5 or an .npz with 'bones'")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".h5", ".hdf5"):
        raise DataError(f"{path}: unknown retarget source type '{path.suffix}'; pass an A-NeRF .h5 or an .npz")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in ("bones", "root", "roots", "kp3d") if k in npz.files}
        else:
            import h5py

            with h5py.File(path, "r") as h5:
                arrays = {k: h5[k][()] for k in ("bones", "kp3d") if k in h5}
    except Exception as error:  # zip/HDF5/pickle errors: all mean "not a readable pose file"
        raise DataError(
            f"{path}: cannot read the file ({type(error).__name__}); it is damaged or not a pose file"
        ) from None
    if "bones" not in arrays:
        raise DataError(f"{path}: key 'bones' is missing; expected bones (T, 24, 3) SMPL-24 axis-angles")
    bones = _check_array(path, "bones", arrays["bones"], (N_JOINTS, 3), "axis-angle joint rotations")
    root_key = next((k for k in ("root", "roots") if k in arrays), None)
    if root_key is not None:
        roots = _check_array(path, root_key, arrays[root_key], (3,), "root offsets")
    elif "kp3d" in arrays:
        roots = _check_array(path, "kp3d", arrays["kp3d"], (N_JOINTS, 3), "joint positions")[:, 0]
    else:
        add = "'root' (T, 3) (canonical, metres) or 'kp3d' (T, 24, 3)" if suffix == ".npz" else "'kp3d' (T, 24, 3)"
        raise DataError(f"{path}: no root positions; add {add}")  # an A-NeRF .h5 holds its roots in kp3d
    if len(roots) != len(bones):
        key = root_key or "kp3d"
        raise DataError(f"{path}: key '{key}' has {len(roots)} frames but 'bones' has {len(bones)}; they must match")
    return bones, roots, root_key is not None


def place_canonical(
    bones: np.ndarray, roots: np.ndarray, height: float, anchor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A canonical motion (y up, metres from the standing pelvis) in the A-NeRF world (up = -y): root offsets
    scaled from the built-in character's size to a skeleton ``height`` world units tall, added to ``anchor``.
    Returns ``bones [T, 24, 3]``, ``roots [T, 3]``."""
    from fast_anerf.bone_boxes import skeleton_height
    from fast_anerf.data.synthetic import builtin_rest_pose, canonical_to_world

    world_bones, world_roots = canonical_to_world(np.asarray(bones, np.float64), np.asarray(roots, np.float64))
    scale = height / skeleton_height(torch.as_tensor(builtin_rest_pose()))
    return torch.as_tensor(world_bones).float(), torch.as_tensor(world_roots * scale).float() + anchor


def builtin_motion(name: str, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A built-in motion, canonical frame: ``bones [T, 24, 3]``, root offsets ``[T, 3]`` (metres)."""
    from fast_anerf.data import motions

    if name not in motions.MOTIONS:
        raise UserError(f"--motion {name}: unknown motion; built-in motions are {', '.join(motions.list_motions())}")
    return motions.MOTIONS[name](n_frames)
