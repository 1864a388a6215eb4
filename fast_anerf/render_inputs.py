"""What ``fast-anerf render``'s views are made of: poses and cameras at the output size.

* Poses: a pose is ``(rotations [24, 3, 3] local to the parent, root [3] world)``; ``pose_to_skts`` re-poses a
  rest skeleton into the world-to-joint transforms the renderer takes; ``interpolate_poses`` slerps between key
  poses (``interpolate`` / ``animate``); ``parse_joints`` reads ``--joints``.
* Cameras and photos: ``camera`` rescales a training camera to ``--res`` (one scale, the height ratio, about the
  principal point); ``resize_image`` makes a photo (ground truth, background, correction panel) match that camera,
  white where another aspect shows more than the photo (``photo_coverage`` says which columns it covers);
  ``orbit_cameras`` turns a camera about the vertical through the body (``bullet``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fast_anerf.errors import UserError
from fast_anerf.skeleton import (
    N_JOINTS,
    SMPL_JOINT_NAMES,
    axis_angle_to_matrix,
    forward_kinematics,
    matrix_to_axis_angle,
    rigid_inverse,
)

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def pose_to_skts(rest_pose: torch.Tensor, rotations: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """Re-pose a rest skeleton ``[24, 3]`` with ``rotations [..., 24, 3, 3]`` and ``root [..., 3]``: ``skts``."""
    _, l2ws = forward_kinematics(rest_pose.to(rotations), rotations, root.to(rotations))
    return rigid_inverse(l2ws)


def slerp(r0: torch.Tensor, r1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Rotations ``[..., 3, 3]`` a fraction ``w [n]`` of the way from ``r0`` to ``r1``: ``[n, ..., 3, 3]``."""
    delta = matrix_to_axis_angle(r0.transpose(-1, -2) @ r1)  # [..., 3]
    steps = w.reshape(-1, *([1] * delta.dim())) * delta
    return r0 @ axis_angle_to_matrix(steps)


def interpolate_poses(
    rotations: torch.Tensor, roots: torch.Tensor, n_steps: int, joints: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Poses between consecutive key poses: ``rotations [K, 24, 3, 3]``, ``roots [K, 3]`` ->
    ``[(K-1)*n_steps + 1, 24, 3, 3]``, ``[..., 3]`` (each key pose appears once, the last one included).

    ``joints=None``: every joint rotation is slerped and the root moves on a straight line. Otherwise only
    ``joints`` move; all other joints and the root keep key pose 0 (A-NeRF's ``animate``).
    """
    w = torch.arange(n_steps, dtype=rotations.dtype) / n_steps
    out_rot, out_root = [], []
    for k in range(rotations.shape[0] - 1):
        rot = slerp(rotations[k], rotations[k + 1], w)  # [n, 24, 3, 3]
        root = roots[k] + w[:, None] * (roots[k + 1] - roots[k])
        out_rot.append(rot)
        out_root.append(root)
    out_rot.append(rotations[-1:])
    out_root.append(roots[-1:])
    rot, root = torch.cat(out_rot), torch.cat(out_root)
    if joints is not None:
        keep = [j for j in range(N_JOINTS) if j not in joints]
        rot[:, keep] = rotations[0, keep]
        root = roots[:1].expand_as(root).clone()
    return rot, root


def parse_joints(names: tuple[str, ...]) -> list[int]:
    """Joint names (``right_elbow``) or SMPL indices (``19``) -> indices; a one-line error for unknown ones."""
    out = []
    for name in names:
        if name.isdigit() and int(name) < N_JOINTS:
            out.append(int(name))
        elif name in SMPL_JOINT_NAMES:
            out.append(SMPL_JOINT_NAMES.index(name))
        else:
            raise UserError(f"--joints: unknown joint '{name}'; use SMPL indices 0-23 or names {SMPL_JOINT_NAMES}")
    return out


def resize_image(image: np.ndarray | torch.Tensor, height: int, width: int, center: tuple[float, float] | None = None
                 ) -> torch.Tensor:  # fmt: skip
    """uint8 or float ``[h, w, 3]`` -> float ``[H, W, 3]`` in [0, 1] (antialiased bilinear when resized).

    With the photo's principal point ``center (cx, cy)``: as ``camera()``'s rescaled camera sees it, i.e. one
    scale (the height ratio) on both axes, and column ``cx`` moved to ``cx * W / w``; where another aspect
    shows more than the photo, white. Without it, each axis is stretched to fit.
    """
    t = torch.as_tensor(np.asarray(image))
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    h, w = t.shape[:2]
    columns = _photo_columns(h, w, height, width, center)
    size = (height, width) if columns is None else (height, max(1, round(w * height / h)))
    if t.shape[:2] != size:
        t = F.interpolate(t.permute(2, 0, 1)[None], size, mode="bilinear", antialias=True)[0].permute(1, 2, 0)
    if columns is not None:
        source, inside = columns
        left = source.floor().long()
        frac = (source - left)[:, None]
        a, b = t[:, left.clamp(0, size[1] - 1)], t[:, (left + 1).clamp(0, size[1] - 1)]
        t = torch.where(inside[:, None], a * (1 - frac) + b * frac, torch.ones(()))
    return t.clamp(0, 1)


def photo_coverage(h: int, w: int, height: int, width: int, center: tuple[float, float]) -> torch.Tensor | None:
    """``[width]`` bool: the columns of a ``height x width`` render that ``resize_image`` fills from an ``h x w``
    photo (the rest is white padding); None when it covers them all (same aspect)."""
    columns = _photo_columns(h, w, height, width, center)
    return None if columns is None else columns[1]


def _photo_columns(h, w, height, width, center):
    """``resize_image``'s column mapping at another aspect: ``(source [width] float column of the photo resized to
    height ``height``, inside [width] bool)``; None when the axes just stretch (same aspect, or no ``center``)."""
    scale = height / h
    if center is None or abs(width / w - scale) < 1e-9:
        return None
    resized_w = max(1, round(w * scale))
    # render column u sees photo column cx + (u - cx * W / w) / scale, at `scale` per pixel
    cx = center[0]
    source = (cx + (torch.arange(width, dtype=torch.float32) - cx * width / w) / scale) * resized_w / w
    return source, (source >= 0) & (source <= resized_w - 1)


def camera(data, i: int, height: int, width: int) -> tuple[torch.Tensor, float, tuple[float, float]]:
    """Camera of image ``i`` of an opened .h5, rescaled to ``height x width``: focal by the height ratio (as
    A-NeRF's ``--render_res``), the principal point by each axis' ratio."""
    sy, sx = height / data.height, width / data.width
    cx, cy = data.center(i)
    c2w = torch.as_tensor(data.arrays["c2ws"][i], dtype=torch.float32)
    return c2w, float(data.arrays["focals"][i]) * sy, (cx * sx, cy * sy)


def background(kind: str, data, i: int, height: int, width: int) -> torch.Tensor:
    """``white``/``black`` colour ``[3]``, or ``data``: image ``i``'s background image (white if it has none)."""
    if kind in BACKGROUNDS:
        return torch.tensor(BACKGROUNDS[kind])
    image = data.background(i)
    return torch.ones(3) if image is None else resize_image(image, height, width, data.center(i))


def orbit_cameras(c2w: torch.Tensor, pivot: torch.Tensor, n_views: int) -> torch.Tensor:
    """``n_views`` cameras ``[n, 4, 4]``: ``c2w`` rotated by ``2 pi k / n`` about the world-y axis through
    ``pivot [3]`` (A-NeRF's bullet time; y is vertical in its world). View 0 is ``c2w`` itself."""
    out = []
    for k in range(n_views):
        a = 2.0 * np.pi * k / n_views
        c, s = float(np.cos(a)), float(np.sin(a))
        rot = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        transform = torch.eye(4)
        transform[:3, :3] = rot
        transform[:3, 3] = pivot - rot @ pivot
        out.append(transform @ c2w)
    return torch.stack(out)
