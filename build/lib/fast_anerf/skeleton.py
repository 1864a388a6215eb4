"""SMPL-24 skeleton: joint tree, rotation conversions and forward kinematics as A-NeRF builds them.

Conventions (specs/anerf.md §2.1-2.2):

* Joint order is SMPL's 24 joints; ``SMPL_PARENTS[0] == -1`` (A-NeRF writes the root's parent as 0,
  ``ANERF_PARENTS``).
* ``rest_pose [24, 3]`` holds rest (T-pose) joint positions with the root at the origin, in world units.
  Bone lengths come from it and never change.
* ``rotations [..., 24, 3, 3]`` are SMPL-style local rotations of each joint relative to its parent;
  ``rotations[..., 0, :, :]`` is the global root orientation.
* Forward kinematics: ``l2w_root = [R_0 | rest_0]``, ``l2w_j = l2w_parent @ [R_j | rest_j - rest_parent]``,
  then the whole skeleton is translated so that the root lands at ``root_position``.
  Each joint's local frame is therefore the rest-pose axes rotated by the accumulated chain rotation,
  with its origin at the joint (not aligned to the bone direction), exactly as A-NeRF.
* ``skts = inverse(l2ws)``: world-to-joint transforms (``T_joint_world``).

Everything here is batched over leading dimensions, differentiable, and device-agnostic.
"""

from __future__ import annotations

import functools

import roma
import torch

SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "left_knee",
    "right_knee",
    "spine2",
    "left_ankle",
    "right_ankle",
    "spine3",
    "left_foot",
    "right_foot",
    "neck",
    "left_collar",
    "right_collar",
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hand",
    "right_hand",
)
N_JOINTS = 24
SMPL_PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
ANERF_PARENTS: tuple[int, ...] = (0,) + SMPL_PARENTS[1:]
ROOT_ID = 0


# ---------------------------------------------------------------------------------------------
# Rotation representations (A-NeRF's 6D = the first two columns of the rotation matrix).
# ---------------------------------------------------------------------------------------------
def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Axis-angle ``[..., 3]`` (radians) -> rotation matrices ``[..., 3, 3]``."""
    return roma.rotvec_to_rotmat(axis_angle)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` -> axis-angle ``[..., 3]`` (radians, angle in [0, pi])."""
    return roma.rotmat_to_rotvec(matrix)


def matrix_to_rot6d(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` -> 6D ``[..., 6]``: first two columns, column-major
    (``[r00, r10, r20, r01, r11, r21]``) as in Zhou et al. and A-NeRF's ``--opt_rot6d``."""
    return matrix[..., :, :2].transpose(-1, -2).reshape(*matrix.shape[:-2], 6)


def rot6d_to_matrix(rot6d: torch.Tensor) -> torch.Tensor:
    """6D ``[..., 6]`` -> rotation matrices ``[..., 3, 3]`` by Gram-Schmidt (roma's special_gramschmidt)."""
    two_columns = rot6d.reshape(*rot6d.shape[:-1], 2, 3).transpose(-1, -2)  # [..., 3, 2]
    return roma.special_gramschmidt(two_columns)


def rigid_inverse(transforms: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid 4x4 transforms ``[..., 4, 4]`` (cheaper and more exact than ``torch.inverse``)."""
    rotation_t = transforms[..., :3, :3].transpose(-1, -2)
    translation = -(rotation_t @ transforms[..., :3, 3:4])
    top = torch.cat([rotation_t, translation], dim=-1)
    bottom = torch.zeros_like(transforms[..., 3:4, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


# ---------------------------------------------------------------------------------------------
# Forward kinematics
# ---------------------------------------------------------------------------------------------
def forward_kinematics(
    rest_pose: torch.Tensor,
    rotations: torch.Tensor,
    root_position: torch.Tensor,
    parents: tuple[int, ...] = SMPL_PARENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose a skeleton.

    Args:
        rest_pose: ``[24, 3]`` or ``[..., 24, 3]`` rest joint positions, root at the origin (world units).
        rotations: ``[..., 24, 3, 3]`` local joint rotations (root = global orientation).
        root_position: ``[..., 3]`` world position of the root joint (A-NeRF's pelvis, ``kp3d[:, 0]``).
        parents: parent index per joint, root first (``-1`` or ``0`` for the root both work).

    Returns:
        kp3d: ``[..., 24, 3]`` world joint positions.
        l2ws: ``[..., 24, 4, 4]`` joint-to-world transforms (``skts = rigid_inverse(l2ws)``).
    """
    batch_shape = rotations.shape[:-3]
    n_joints = rotations.shape[-3]
    rest_pose = rest_pose.to(rotations).expand(*batch_shape, n_joints, 3)
    # Accumulated one tree depth at a time: every joint of a depth takes its parent's global rotation and
    # position from the previous depth in one batched product (9 depths for SMPL's 24 joints; joint by joint
    # was ~140 small ops, whose autograd dominated pose refinement's forward kinematics).
    parents = tuple(max(p, 0) if j else -1 for j, p in enumerate(parents[:n_joints]))
    levels, order = _depth_indices(parents, str(rotations.device))
    level_rot = [rotations[..., :1, :, :]]  # [..., 1, 3, 3] the root's global rotation
    level_pos = [rest_pose[..., :1, :]]
    for joints, parent_joints, slots in levels:  # slots: the parents' places in the previous depth
        parent_rot = level_rot[-1].index_select(-3, slots)
        offset = rest_pose.index_select(-2, joints) - rest_pose.index_select(-2, parent_joints)  # [..., k, 3]
        level_pos.append(level_pos[-1].index_select(-2, slots) + (parent_rot @ offset.unsqueeze(-1)).squeeze(-1))
        level_rot.append(parent_rot @ rotations.index_select(-3, joints))
    rot = torch.cat(level_rot, dim=-3).index_select(-3, order)  # [..., 24, 3, 3] back in joint order
    pos = torch.cat(level_pos, dim=-2).index_select(-2, order)  # [..., 24, 3]
    pos = pos - pos[..., :1, :] + root_position.unsqueeze(-2)
    top = torch.cat([rot, pos.unsqueeze(-1)], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return pos, torch.cat([top, bottom], dim=-2)


@functools.cache
def _depth_indices(parents: tuple[int, ...], device: str) -> tuple[list[tuple[torch.Tensor, ...]], torch.Tensor]:
    """Joints grouped by tree depth for ``forward_kinematics``, as index tensors on ``device``: per depth 1..
    ``(joints, their parents, the parents' places in the previous depth's list)``, and each joint's place in
    the concatenation of all depths (root first)."""
    depth = [0] * len(parents)
    for j in range(1, len(parents)):
        if not 0 <= parents[j] < j:
            raise ValueError(f"forward_kinematics: parents must precede their children, got {parents[j]} for {j}")
        depth[j] = depth[parents[j]] + 1
    by_depth = [[j for j in range(len(parents)) if depth[j] == d] for d in range(max(depth) + 1)]
    levels = []
    for d in range(1, len(by_depth)):
        joints = by_depth[d]
        slots = [by_depth[d - 1].index(parents[j]) for j in joints]
        levels.append(tuple(torch.tensor(v, device=device) for v in (joints, [parents[j] for j in joints], slots)))
    flat = [j for joints in by_depth for j in joints]
    return levels, torch.tensor([flat.index(j) for j in range(len(parents))], device=device)


def skts_to_pose(skts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-joint transforms ``[..., 24, 4, 4]`` -> local rotations ``[..., 24, 3, 3]``, root ``[..., 3]``.

    The inverse of forward kinematics: with ``G_j`` the joint-to-world rotations, ``R_j = G_parent^T G_j``
    (``R_0 = G_0``), so any pose source (stored, refined, ground truth) becomes rotations + root, and forward
    kinematics of the result with the same rest pose gives back ``skts``.
    """
    l2ws = rigid_inverse(skts)
    glob = l2ws[..., :3, :3]
    parents = [max(p, 0) for p in SMPL_PARENTS]
    local = glob[..., parents, :, :].transpose(-1, -2) @ glob
    local[..., 0, :, :] = glob[..., 0, :, :]
    return local, l2ws[..., 0, :3, 3].clone()


def pose_skeleton(
    rest_pose: torch.Tensor, bones: torch.Tensor, root_position: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A-NeRF keys from axis-angle ``bones [..., 24, 3]``: returns ``(kp3d [..., 24, 3], skts [..., 24, 4, 4])``."""
    kp3d, l2ws = forward_kinematics(rest_pose, axis_angle_to_matrix(bones), root_position)
    return kp3d, rigid_inverse(l2ws)


def bone_lengths(rest_pose: torch.Tensor, parents: tuple[int, ...] = SMPL_PARENTS) -> torch.Tensor:
    """Length of the bone from each joint's parent to the joint, ``[..., 24]`` (0 for the root)."""
    parent_idx = torch.tensor([max(p, 0) for p in parents], device=rest_pose.device)
    return (rest_pose - rest_pose[..., parent_idx, :]).norm(dim=-1)


def children_of(parents: tuple[int, ...] = SMPL_PARENTS) -> list[list[int]]:
    """List of child joint indices per joint."""
    children: list[list[int]] = [[] for _ in parents]
    for j, p in enumerate(parents):
        if p >= 0 and j != p:
            children[p].append(j)
    return children
