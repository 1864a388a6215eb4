"""Writing refined poses as an A-NeRF .h5 that other tools read like the original."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import torch

from fast_anerf.data.rays import bounding_cylinder
from fast_anerf.run_files import atomic_path


def export_refined_poses(source: Path, target: Path, poses: dict[str, torch.Tensor]) -> Path:
    """Copy ``source`` (an A-NeRF .h5) to ``target`` with ``bones``, ``kp3d``, ``skts`` (and ``cyls``) replaced.

    Args:
        poses: ``bones [P, 24, 3]`` axis-angle, ``kp3d [P, 24, 3]``, ``skts [P, 24, 4, 4]``; P = the source's
            pose rows. The copy is written to a temporary file and renamed (never a half-written file).
    """
    with atomic_path(target, durable=True) as tmp:
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "a") as handle:
            for key in ("bones", "kp3d", "skts"):
                value = poses[key].detach().cpu().numpy().astype(np.float32)
                if key in handle:
                    del handle[key]
                handle.create_dataset(key, data=value, compression="gzip")
            if "cyls" in handle:
                del handle["cyls"]
                cyls = bounding_cylinder(poses["kp3d"].detach().cpu().double()).float().numpy()
                handle.create_dataset("cyls", data=cyls, compression="gzip")
    return Path(target)
