"""Refinable per-frame poses (A-NeRF §2.7, §3): 6D joint rotations + root position, with FK every step.

Parameters, as A-NeRF's ``PoseOptLayer``: per pose row, 24 joint rotations in the 6D representation (first
two columns of the rotation matrix; Gram-Schmidt back to a rotation) and the root position. Forward
kinematics of the fixed rest skeleton turns them into ``kp3d`` and ``skts`` each step, so the photometric
loss reaches the poses through the samples' bone coordinates. Regularisers:

* ``hinge_regulariser``: A-NeRF's pull towards the initial (estimated) pose, ``max((anchor6d - cur6d)^2 - tol,
  0)`` summed over the 6 numbers, mean over the non-root joints of the batch's poses, times ``coef``. Root
  rotation and position are free (A-NeRF regularises neither).
* ``temporal_loss``: constant-velocity prior between consecutive frames of one sequence,
  ``|(x_t - x_{t-1}) - (x_{t+1} - x_t)|^2`` on the 6D rotations (all joints) and on the joint positions, with
  the neighbours detached (as A-NeRF), only where both neighbours are consecutive frames (``valid``).

Multi-view (A-NeRF's ``--multiview``): images of one time instant share the non-root rotations; each view
keeps its own root rotation and root position (they absorb the unknown extrinsics).

Pose jitter (training only, ``PoseRefiner(jitter=...)``): each step, every pose row's bone frames are moved by
a small random rigid transform (``rigid_jitter``) before the field sees them. Once annealed poses stop moving,
the field fits the single training camera and held-out PSNR falls; poses that keep moving act as augmentation.
Built-in character, 4000 steps, means of seeds 0/1 (configs/demo.toml): test_view 25.64 dB annealed, 26.08 dB
annealed with jitter (0.02 rad, 0.2 % of the height), 26.20 dB with a constant pose lr (seeds 0/1/2); MPJPE -54.5,
-54.2 and -36.0 %.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from fast_anerf.errors import UserError
from fast_anerf.skeleton import (
    axis_angle_to_matrix,
    forward_kinematics,
    matrix_to_axis_angle,
    matrix_to_rot6d,
    rigid_inverse,
    rot6d_to_matrix,
)


class RefinablePoses(nn.Module):
    """Per pose row ``P``: rotations ``[P, 24, 6]`` (6D) and root positions ``[P, 3]`` (world units)."""

    def __init__(
        self,
        bones: torch.Tensor,
        root: torch.Tensor,
        rest_pose: torch.Tensor,
        time_ids: torch.Tensor | None = None,
    ) -> None:
        """
        Args:
            bones: ``[P, 24, 3]`` initial axis-angle rotations (the data's estimated poses).
            root: ``[P, 3]`` initial root joint positions (``kp3d[:, 0]``).
            rest_pose: ``[24, 3]`` rest skeleton (fixed bone lengths).
            time_ids: ``[P]`` multi-view grouping: rows with the same id share their non-root rotations
                (initialised with the mean of the group's 6D values). ``None``: every row is independent.
        """
        super().__init__()
        rot6d = matrix_to_rot6d(axis_angle_to_matrix(bones.float()))  # [P, 24, 6]
        n_poses = rot6d.shape[0]
        if time_ids is None:
            time_ids = torch.arange(n_poses)
        time_ids = torch.as_tensor(time_ids, dtype=torch.long)
        n_times = int(time_ids.max()) + 1 if n_poses else 0
        shared = torch.zeros(n_times, 23, 6).index_add_(0, time_ids, rot6d[:, 1:])
        shared = shared / torch.bincount(time_ids, minlength=n_times).clamp_min(1)[:, None, None]
        self.register_buffer("time_ids", time_ids)
        self.register_buffer("rest_pose", rest_pose.float().clone())
        self.register_buffer("anchor_rot6d", rot6d.clone())  # the initial estimate, for the regulariser
        self.register_buffer("anchor_root", root.float().clone())
        self.root_rot6d = nn.Parameter(rot6d[:, :1].clone())  # [P, 1, 6] per view
        self.joint_rot6d = nn.Parameter(shared)  # [T, 23, 6] shared by the views of a time instant
        self.root = nn.Parameter(root.float().clone())  # [P, 3]

    @property
    def n_poses(self) -> int:
        return self.root.shape[0]

    def rot6d(self, pose_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Current 6D rotations ``[B, 24, 6]`` of ``pose_ids [B]`` (all rows when None)."""
        if pose_ids is None:
            pose_ids = torch.arange(self.n_poses, device=self.root.device)
        return torch.cat([self.root_rot6d[pose_ids], self.joint_rot6d[self.time_ids[pose_ids]]], dim=1)

    def forward(self, pose_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable FK of ``pose_ids [B]``: ``kp3d [B, 24, 3]``, ``skts [B, 24, 4, 4]``."""
        if pose_ids is None:
            pose_ids = torch.arange(self.n_poses, device=self.root.device)
        rotations = rot6d_to_matrix(self.rot6d(pose_ids))
        kp3d, l2ws = forward_kinematics(self.rest_pose, rotations, self.root[pose_ids])
        return kp3d, rigid_inverse(l2ws)

    @torch.no_grad()
    def export(self) -> dict[str, torch.Tensor]:
        """A-NeRF keys of every row: ``bones [P, 24, 3]`` (axis-angle), ``kp3d [P, 24, 3]``, ``skts``."""
        kp3d, skts = self.forward()
        bones = matrix_to_axis_angle(rot6d_to_matrix(self.rot6d()))
        return {"bones": bones.cpu(), "kp3d": kp3d.cpu(), "skts": skts.cpu()}

    def hinge_regulariser(self, pose_ids: torch.Tensor, tol: float = 0.01, coef: float = 2.0) -> torch.Tensor:
        """A-NeRF's pull towards the initial pose, on the non-root joints of ``pose_ids [B]`` (scalar)."""
        err = (self.anchor_rot6d[pose_ids, 1:] - self.rot6d(pose_ids)[:, 1:]).pow(2)
        return coef * (err - tol).clamp_min(0.0).sum(dim=-1).mean()

    def temporal_loss(
        self,
        pose_ids: torch.Tensor,
        prev_ids: torch.Tensor,
        next_ids: torch.Tensor,
        valid: torch.Tensor,
        coef: float = 0.05,
        cur_kp: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Constant-velocity prior (A-NeRF's ``--use_temp_loss``) on rows ``pose_ids [B]``.

        ``prev_ids``/``next_ids [B]`` are the neighbouring rows, ``valid [B]`` whether both are consecutive
        frames of the same sequence; ``cur_kp [B, 24, 3]``: the rows' joints if already computed (``forward``).
        Neighbours are detached, as in A-NeRF. Returns a scalar.
        """
        if not bool(valid.any()):
            return torch.zeros((), device=self.root.device)
        cur_rot = self.rot6d(pose_ids)
        cur_kp = self.forward(pose_ids)[0] if cur_kp is None else cur_kp
        with torch.no_grad():  # both neighbours in one forward kinematics
            prev_rot, next_rot = self.rot6d(prev_ids), self.rot6d(next_ids)
            prev_kp, next_kp = self.forward(torch.cat([prev_ids, next_ids]))[0].split(len(pose_ids))
        # Squared norm per joint, mean over rows x joints (as A-NeRF's per-ray mean), so the weight does not
        # grow with the number of joints.
        ang = ((cur_rot - prev_rot) - (next_rot - cur_rot)).pow(2).sum(dim=-1)  # [B, 24]
        pos = ((cur_kp - prev_kp) - (next_kp - cur_kp)).pow(2).sum(dim=-1)  # [B, 24]
        return coef * ((ang + pos) * valid.float()[:, None]).mean()


def rigid_jitter(n: int, n_joints: int, rot_sigma: float, trans_sigma: float, generator) -> torch.Tensor:
    """``[n, n_joints, 4, 4]`` small random rigid transforms: rotation by an axis-angle vector with independent
    ``N(0, rot_sigma^2)`` components (radians), translation ``N(0, trans_sigma^2)`` per axis (world units)."""
    rot = axis_angle_to_matrix(torch.randn(n, n_joints, 3, generator=generator) * rot_sigma)
    out = torch.eye(4).repeat(n, n_joints, 1, 1)
    out[..., :3, :3] = rot
    out[..., :3, 3] = torch.randn(n, n_joints, 3, generator=generator) * trans_sigma
    return out


_FRAME_NUMBER = re.compile(r"^(.*?)(\d+)(\D*)$")


def multiview_time_ids(path, pose_idxs: torch.Tensor, n_poses: int) -> torch.Tensor:
    """``--multiview``: the time instant ``[P]`` (0..T-1) of each pose row of the ``.h5`` at ``path``, from its
    ``kp_idxs`` (the instant of each image; ``pose_idxs [N]`` maps images to rows). Rows of one instant share
    their non-root rotations (``RefinablePoses``)."""
    from fast_anerf.data.anerf_h5 import open_anerf_h5

    with open_anerf_h5(path) as data:
        if "kp_idxs" not in data.arrays:
            raise UserError(f"{path}: --multiview needs the key 'kp_idxs' (the time instant of each image) to group "
                            "views; add it or drop --multiview")  # fmt: skip
        kp_idxs = torch.as_tensor(data.arrays["kp_idxs"], dtype=torch.long)
    time_of_row = torch.full((n_poses,), -1, dtype=torch.long)  # a row no image uses: an instant of its own
    time_of_row[pose_idxs] = kp_idxs
    unused = time_of_row < 0
    time_of_row[unused] = kp_idxs.max() + 1 + torch.arange(int(unused.sum()))
    return time_of_row.unique(return_inverse=True)[1]


def pose_row_paths(pose_idxs: torch.Tensor, img_paths: list[str] | None, n_poses: int) -> list[str]:
    """One image path per pose row (its first image's), which identifies consecutive frames for the temporal
    loss; ``""`` for a row no image uses (it then has no neighbours); ``[]`` without paths."""
    if not img_paths:
        return []
    paths = [""] * n_poses
    for image, row in reversed(list(enumerate(pose_idxs.tolist()))):
        paths[row] = img_paths[image]
    return paths


def temporal_neighbours(img_paths: list[str], n_poses: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Previous/next pose rows and validity from image paths (same folder/prefix, frame number +-1).

    Returns ``prev [P]``, ``next [P]``, ``valid [P]`` (bool); without paths every row is invalid.
    """
    prev = torch.arange(n_poses)
    nxt = torch.arange(n_poses)
    valid = torch.zeros(n_poses, dtype=torch.bool)
    if len(img_paths) != n_poses:
        return prev, nxt, valid
    index: dict[tuple[str, int, str], int] = {}
    keys = []
    for row, path in enumerate(img_paths):
        match = _FRAME_NUMBER.match(path)
        key = (match.group(1), int(match.group(2)), match.group(3)) if match else None
        keys.append(key)
        if key is not None:
            index[key] = row
    for row, key in enumerate(keys):
        if key is None:
            continue
        before = index.get((key[0], key[1] - 1, key[2]))
        after = index.get((key[0], key[1] + 1, key[2]))
        if before is not None and after is not None:
            prev[row], nxt[row], valid[row] = before, after, True
    return prev, nxt, valid


class PoseRefiner:
    """Optimises ``RefinablePoses`` beside a body model (training) or alone (``fast-anerf refine``).

    A separate Adam (A-NeRF: its own learning rate, stepped every ``step_every`` iterations with gradients
    accumulated in between); poses start moving after ``start`` steps (the body needs a rough shape before
    its image gradients mean anything) and freeze from ``stop`` on (0 = never).
    """

    def __init__(self, poses: RefinablePoses, lr: float, step_every: int = 1, start: int = 0, stop: int = 0,
                 reg_coef: float = 2.0, reg_tol: float = 0.01, temp_coef: float = 0.0,
                 img_paths: list[str] | None = None,
                 jitter: tuple[float, float, int] = (0.0, 0.0, 0)) -> None:  # fmt: skip
        """``jitter``: (rotation sigma in radians, translation sigma in world units, seed) of the training-time pose
        jitter (module docstring); zeros: none."""
        self.poses = poses
        self.jitter = jitter
        self.optimizer = torch.optim.Adam(poses.parameters(), lr=lr)
        self.step_every, self.start, self.stop = max(1, step_every), start, stop
        self.reg_coef, self.reg_tol, self.temp_coef = reg_coef, reg_tol, temp_coef
        prev, nxt, valid = temporal_neighbours(img_paths or [], poses.n_poses)
        device = poses.root.device
        self.prev, self.next, self.valid = prev.to(device), nxt.to(device), valid.to(device)

    def restart(self) -> None:
        """A fresh Adam (zero moments): rows that get no gradient from now on do not move at all (with the old
        moments they would drift on). ``fast-anerf refine`` restarts for each window of frames."""
        self.optimizer = torch.optim.Adam(self.poses.parameters(), lr=self.optimizer.param_groups[0]["lr"])

    def active(self, step: int) -> bool:
        """Whether poses are optimised at training step ``step`` (1-based step being taken)."""
        return step > self.start and (self.stop <= 0 or step <= self.stop)

    def skts(self, rows: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``skts [B, 24, 4, 4]`` for pose rows ``rows [B]`` and the regulariser loss (0 when inactive)."""
        unique_rows, inverse = rows.unique(return_inverse=True)
        if not self.active(step):
            with torch.no_grad():
                skts = self._jittered(self.poses(unique_rows)[1], unique_rows, step)
                return skts.index_select(0, inverse), torch.zeros((), device=rows.device)
        kp3d, skts = self.poses(unique_rows)
        skts = self._jittered(skts, unique_rows, step)
        loss = self.poses.hinge_regulariser(unique_rows, self.reg_tol, self.reg_coef)
        if self.temp_coef > 0:
            neighbours = (self.prev[unique_rows], self.next[unique_rows], self.valid[unique_rows])
            loss = loss + self.poses.temporal_loss(unique_rows, *neighbours, self.temp_coef, cur_kp=kp3d)
        # index_select: its backward (index_add) is ~6x faster than that of skts[inverse] (index_put) here.
        return skts.index_select(0, inverse), loss

    def _jittered(self, skts: torch.Tensor, rows: torch.Tensor, step: int) -> torch.Tensor:
        """``skts [U, 24, 4, 4]`` of pose ``rows [U]`` moved by this step's jitter (the same for a row and step on
        every run: seeded by seed and step, so a resumed run repeats it)."""
        rot_sigma, trans_sigma, seed = self.jitter
        if rot_sigma <= 0 and trans_sigma <= 0:
            return skts
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        noise = rigid_jitter(self.poses.n_poses, skts.shape[1], rot_sigma, trans_sigma, generator)
        return noise.to(skts.device).index_select(0, rows) @ skts

    def after_backward(self, step: int) -> None:
        """Step the pose optimiser every ``step_every`` active steps (gradients accumulate in between)."""
        if self.active(step) and step % self.step_every == 0:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        """Poses, Adam's moments and the gradients gathered since the last pose step (with ``step_every > 1`` a
        checkpoint can fall mid-window; without them a resumed run would step on a partial sum)."""
        pending = {name: p.grad.clone() for name, p in self.poses.named_parameters() if p.grad is not None}
        return {"poses": self.poses.state_dict(), "optimizer": self.optimizer.state_dict(), "pending_grads": pending}

    def load_state_dict(self, state: dict) -> None:
        self.poses.load_state_dict(state["poses"])
        self.optimizer.load_state_dict(state["optimizer"])
        pending = state.get("pending_grads", {})  # absent in checkpoints of older versions: none pending
        for name, p in self.poses.named_parameters():
            p.grad = pending[name].to(p.device).clone() if name in pending else None
