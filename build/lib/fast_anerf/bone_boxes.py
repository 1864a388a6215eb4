"""Per-bone boxes in joint-local coordinates, sized from the rest skeleton.

A "bone" is a joint's local frame (A-NeRF's ``skts``). The body part that moves rigidly with joint ``j``
is the segment from ``j`` to its children, so bone ``j``'s box is the axis-aligned box (in ``j``'s rest
axes) around the joint and its children's rest offsets, grown by a margin for the flesh around the bones.
Leaf joints (head, hands, feet) also reach beyond the joint, along their parent-to-joint direction
(the head upwards), to cover the skull, fingers and toes. Because the box lives in the joint's frame it
never changes with the pose; the fast field is defined only inside the union of the posed boxes.

All sizes are fractions of the skeleton's height (``skeleton_height``), so they work in any units
(metres for the built-in character, A-NeRF's ~0.7 m-per-unit for its data).
"""

from __future__ import annotations

import torch

from fast_anerf.skeleton import SMPL_PARENTS, children_of, rigid_inverse

WIDE_JOINTS = (0, 3, 6, 9, 15)  # pelvis, spine and head: wider than the limbs
HEAD, LEFT_HAND, RIGHT_HAND, LEFT_FOOT, RIGHT_FOOT = 15, 22, 23, 10, 11


def skeleton_height(rest_pose: torch.Tensor) -> float:
    """Extent of the rest skeleton along its longest axis (world units): ~1.45 m for an adult."""
    extent = rest_pose.max(dim=0).values - rest_pose.min(dim=0).values
    return float(extent.max())


def bone_boxes(
    rest_pose: torch.Tensor,
    box_pad: float,
    torso_pad: float,
    head_extent: float,
    hand_extent: float,
    foot_extent: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes around each bone in its own rest frame.

    Args:
        rest_pose: ``[24, 3]`` rest joint positions (world units, SMPL canonical axes, y up).
        box_pad, torso_pad: margin around limb / trunk-and-head bones, as a fraction of the skeleton height.
        head_extent, hand_extent, foot_extent: how far leaf boxes reach beyond their joint (fraction).

    Returns:
        ``box_min [24, 3]``, ``box_max [24, 3]`` in joint-local coordinates (world units).
    """
    height = skeleton_height(rest_pose)
    children = children_of(SMPL_PARENTS)
    box_min = torch.empty(24, 3, dtype=rest_pose.dtype)
    box_max = torch.empty(24, 3, dtype=rest_pose.dtype)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=rest_pose.dtype)
    leaf_extent = {
        HEAD: head_extent,
        LEFT_HAND: hand_extent,
        RIGHT_HAND: hand_extent,
        LEFT_FOOT: foot_extent,
        RIGHT_FOOT: foot_extent,
    }
    for j in range(24):
        points = [torch.zeros(3, dtype=rest_pose.dtype)]
        points += [rest_pose[c] - rest_pose[j] for c in children[j]]
        if j in leaf_extent:
            if j == HEAD:
                direction = up
            else:
                direction = rest_pose[j] - rest_pose[SMPL_PARENTS[j]]
                direction = direction / direction.norm().clamp_min(1e-8)
            points.append(direction * leaf_extent[j] * height)
        stacked = torch.stack(points)
        pad = (torso_pad if j in WIDE_JOINTS else box_pad) * height
        box_min[j] = stacked.min(dim=0).values - pad
        box_max[j] = stacked.max(dim=0).values + pad
    return box_min, box_max


def ray_box_intervals(
    origins_local: torch.Tensor, directions_local: torch.Tensor, box_min: torch.Tensor, box_max: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab test of rays against each bone's box, in the bones' own frames.

    Args:
        origins_local: ``[R, J, 3]`` ray origins in each joint frame.
        directions_local: ``[R, J, 3]`` ray directions in each joint frame (any length; t is in its units).
        box_min, box_max: ``[J, 3]``.

    Returns:
        ``t_in [R, J]``, ``t_out [R, J]`` (clamped to t >= 0), ``hit [R, J]`` (``t_out > t_in``).
    """
    safe = torch.where(directions_local.abs() < 1e-12, torch.full_like(directions_local, 1e-12), directions_local)
    inv = 1.0 / safe
    t0 = (box_min - origins_local) * inv
    t1 = (box_max - origins_local) * inv
    t_in = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    t_out = torch.maximum(t0, t1).amin(dim=-1)
    return t_in, t_out, t_out > t_in


def posed_bounds(skts: torch.Tensor, box_min: torch.Tensor, box_max: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World axis-aligned bounds ``lo [3]``, ``hi [3]`` of the union of the posed bone boxes of one pose.

    Args:
        skts: ``[J, 4, 4]`` world-to-joint transforms; box_min, box_max: ``[J, 3]`` joint-local boxes.
    """
    bits = torch.tensor([[(k >> a) & 1 for a in range(3)] for k in range(8)], dtype=box_min.dtype)  # [8, 3]
    corners = box_min[:, None] + bits.to(box_min.device)[None] * (box_max - box_min)[:, None]  # [J, 8, 3]
    l2ws = rigid_inverse(skts.to(box_min.dtype))
    world = torch.einsum("jab,jkb->jka", l2ws[:, :3, :3], corners) + l2ws[:, None, :3, 3]
    world = world.reshape(-1, 3)
    return world.min(dim=0).values, world.max(dim=0).values


def rays_hit_bounds(rays_o: torch.Tensor, rays_d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``[R]`` bool: which world rays (``[R, 3]`` each) enter the box ``[lo, hi]`` at some ``t >= 0`` (slab test).

    Meant with ``posed_bounds`` grown by a margin: a ray that misses it misses every posed bone box, so it
    renders the background exactly, and whole images can skip the per-bone work for it.
    """
    t_in, t_out, hit = ray_box_intervals(rays_o[:, None], rays_d[:, None], lo[None], hi[None])
    return hit[:, 0]
