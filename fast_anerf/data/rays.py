"""Camera rays, pixel sampling and per-ray near/far, exactly as A-NeRF (specs/anerf.md §1.4-1.6).

Conventions:

* Cameras are OpenGL/NeRF camera-to-world ``c2w [4, 4]``: camera x right, y up, looking down -z.
* Pixel ``(u, v)`` (column, row) has flat id ``v * W + u``. The ray through it is
  ``dir_cam = [(u - cx) / f, -(v - cy) / f, -1]`` at the integer pixel coordinate (A-NeRF adds no +0.5),
  rotated to world. Directions are **not normalised**: their camera-z component is 1, so the ray parameter
  ``t`` equals the depth of the point in front of the camera (world units). Normalise separately for view
  directions.
* World "up" is -y (A-NeRF's SPIN/SURREAL frame), so the bounding cylinder is vertical along y.

Which near/far the trainer should use:

* ``near_far_boxes`` (recommended): union of the posed per-bone boxes, in each joint's frame (``skts``).
  Much tighter than the cylinder (arms and legs, not a person-sized column), so fewer wasted samples, and it
  follows pose refinement if called with the current ``skts``. Rays that hit no box get ``hit=False``: render
  them as pure background (no samples) instead of inventing a range.
* ``near_far_cylinder``: A-NeRF's own range (infinite vertical cylinder from ``cyls``), for the A-NeRF
  baseline and for comparisons. Its misses are flagged too; A-NeRF substituted the batch mean (``nanmean``),
  which we leave to the caller.
"""

from __future__ import annotations

import numpy as np
import torch

OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0])  # flips a camera's y and z axes (OpenCV <-> OpenGL); its own inverse

Tensor = torch.Tensor


def _as_tensor(x, like: Tensor) -> Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def pixel_rays(c2w: Tensor, focal, center, pixel_ids: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Rays through pixels of one camera or one camera per ray.

    Args:
        c2w: ``[4, 4]`` or ``[n, 4, 4]`` camera-to-world (OpenGL).
        focal: float or ``[n]`` focal length in pixels.
        center: ``(cx, cy)`` / ``[2]`` or ``[n, 2]`` principal point in pixels.
        pixel_ids: ``[n]`` long, flat ``v * width + u``.
        width: image width W in pixels.

    Returns:
        rays_o ``[n, 3]`` camera centres, rays_d ``[n, 3]`` world directions with camera-z length 1
        (not unit length), in ``c2w``'s dtype and device.
    """
    c2w = torch.as_tensor(c2w)
    c2w = c2w if c2w.is_floating_point() else c2w.float()
    ids = torch.as_tensor(pixel_ids, device=c2w.device).reshape(-1).long()
    u = (ids % width).to(c2w.dtype)
    v = torch.div(ids, width, rounding_mode="floor").to(c2w.dtype)
    f = _as_tensor(focal, c2w)
    ctr = _as_tensor(center, c2w)
    dirs = torch.stack([(u - ctr[..., 0]) / f, -(v - ctr[..., 1]) / f, -torch.ones_like(u)], dim=-1)  # [n, 3]
    rot = c2w[..., :3, :3]
    # rays_d = R @ dir_cam, written as dir_cam @ R^T so one code path handles [3,3] and [n,3,3].
    rays_d = (dirs.unsqueeze(-2) @ rot.transpose(-1, -2)).squeeze(-2)
    rays_o = c2w[..., :3, 3].expand_as(rays_d)
    return rays_o, rays_d


def image_rays(c2w: Tensor, focal, center, height: int, width: int) -> tuple[Tensor, Tensor]:
    """All rays of an image in row-major pixel order: ``rays_o [H*W, 3]``, ``rays_d [H*W, 3]``."""
    c2w = torch.as_tensor(c2w)
    ids = torch.arange(height * width, device=c2w.device)
    return pixel_rays(c2w, focal, center, ids, width)


def project_points(points: Tensor, c2w: Tensor, focal, center) -> tuple[Tensor, Tensor]:
    """Project world points into a camera (the inverse of ``pixel_rays``).

    Args:
        points: ``[..., 3]`` world points.
        c2w: ``[4, 4]`` (or ``[..., 4, 4]`` broadcastable with points) camera-to-world.
        focal: float (or broadcastable tensor) in pixels; center: ``(cx, cy)`` in pixels.

    Returns:
        uv ``[..., 2]`` continuous pixel coordinates (u column, v row; integer values at pixel centres as in
        ``pixel_rays``), depth ``[..., ]`` distance in front of the camera along its -z axis (= ray ``t``).
    """
    points = torch.as_tensor(points)
    c2w = _as_tensor(c2w, points)
    rot, trans = c2w[..., :3, :3], c2w[..., :3, 3]
    cam = ((points - trans).unsqueeze(-2) @ rot).squeeze(-2)  # R^T (x - t), [..., 3]
    depth = -cam[..., 2]
    f = _as_tensor(focal, points)
    ctr = _as_tensor(center, points)
    u = ctr[..., 0] + f * cam[..., 0] / depth
    v = ctr[..., 1] - f * cam[..., 1] / depth
    return torch.stack([u, v], dim=-1), depth


def sample_pixel_ids(sampling_mask: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` distinct flat pixel ids drawn uniformly among the set pixels of ``sampling_mask`` (A-NeRF §1.5).

    Args:
        sampling_mask: bool ``[H*W]`` or ``[H, W]``.
        n: number of pixels wanted; all set pixels are returned if there are fewer.
        generator: optional torch generator (its device is used for the random numbers).

    Returns:
        ``[min(n, n_set)]`` long ids, sorted increasing (what h5 fancy indexing needs), on the mask's device.
    """
    mask = torch.as_tensor(sampling_mask).reshape(-1)
    candidates = torch.nonzero(mask, as_tuple=False).squeeze(-1)  # sorted increasing
    count = candidates.numel()
    if count <= n:
        return candidates
    rng_device = generator.device if generator is not None else torch.device("cpu")
    if count > 8 * n:
        # Fast path for the usual case (a dozen rays from ~1e5 pixels): draw with replacement, de-duplicate,
        # keep a random n-subset of the distinct draws. The distinct draws are a uniform random subset of
        # their size, so a uniform n-subset of them is a uniform n-subset of all candidates.
        draws = torch.randint(count, (2 * n + 16,), generator=generator, device=rng_device).unique()
        if draws.numel() >= n:
            keep = torch.randperm(draws.numel(), generator=generator, device=rng_device)[:n]
            return candidates[draws[keep].sort().values.to(candidates.device)]
    pick = torch.randperm(count, generator=generator, device=rng_device)[:n]
    return candidates[pick.sort().values.to(candidates.device)]


def bounding_cylinder(
    kp3d: Tensor | np.ndarray, pad: float = 0.25, top_expand: float = 1.0, bot_expand: float = 0.25
) -> Tensor | np.ndarray:
    """A-NeRF's ``get_kp_bounding_cylinder`` with up = -y, ``[..., 24, 3] -> [..., 5]``.

    ``cyl = [root_x, root_z, radius, top_y, bot_y]``: axis through the root joint's x-z; radius = the
    largest x-z distance of a joint from the root + ``pad``; ``top_y = min_y - pad * top_expand`` (up is -y,
    so the top has the smallest y), ``bot_y = max_y + pad * bot_expand``. ``pad`` is in world units
    (A-NeRF: 250 mm x ext_scale 0.001 = 0.25). Training h5 files use expands (1.0, 0.25); rendering uses
    (1.6, 1.1). Returns numpy if given numpy, else torch.
    """
    is_numpy = isinstance(kp3d, np.ndarray)
    kp = torch.as_tensor(kp3d)
    root = kp[..., 0, :]
    xz = kp[..., :, [0, 2]] - root[..., None, [0, 2]]
    radius = xz.norm(dim=-1).amax(dim=-1) + pad
    top = kp[..., 1].amin(dim=-1) - pad * top_expand
    bot = kp[..., 1].amax(dim=-1) + pad * bot_expand
    cyl = torch.stack([root[..., 0], root[..., 2], radius, top, bot], dim=-1)
    return cyl.numpy() if is_numpy else cyl


def near_far_cylinder(rays_o: Tensor, rays_d: Tensor, cyl: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Where each ray is inside A-NeRF's infinite vertical cylinder (top/bottom ignored, as A-NeRF).

    Args:
        rays_o, rays_d: ``[n, 3]`` (``rays_d`` need not be unit length).
        cyl: ``[5]`` or ``[n, 5]`` ``[root_x, root_z, radius, top_y, bot_y]``.

    Returns:
        near ``[n]``, far ``[n]`` in units of ``rays_d`` (= depth for ``pixel_rays``), near clamped to >= 0
        (0 when the origin is inside); hit bool ``[n]``. Rays that miss the cylinder, only meet it behind the
        origin, or are parallel to its axis get ``hit=False`` and ``near = far = 0``.
    """
    cyl = _as_tensor(cyl, rays_o)
    axis = cyl[..., :2]  # (x, z) of the axis
    radius = cyl[..., 2]
    o = rays_o[..., [0, 2]] - axis  # [n, 2], origin relative to the axis in x-z
    d = rays_d[..., [0, 2]]
    # |o + t d|^2 = r^2  ->  a t^2 + 2 b t + c = 0 (half-b form: fewer roundings)
    a = (d * d).sum(-1)
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - radius**2
    disc = b * b - a * c
    eps = torch.finfo(rays_o.dtype).tiny
    ok = (disc > 0) & (a > 1e-12 * (rays_d * rays_d).sum(-1).clamp_min(eps))
    sq = disc.clamp_min(0).sqrt()
    a_safe = torch.where(ok, a, torch.ones_like(a))
    t0 = (-b - sq) / a_safe
    t1 = (-b + sq) / a_safe
    hit = ok & (t1 > 0)
    zero = torch.zeros_like(t0)
    near = torch.where(hit, t0.clamp_min(0), zero)
    far = torch.where(hit, t1, zero)
    return near, far, hit


def near_far_boxes(
    rays_o: Tensor, rays_d: Tensor, skts: Tensor, box_min: Tensor, box_max: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Range of each ray through the union of per-joint oriented boxes (slab test in every joint frame).

    Args:
        rays_o, rays_d: ``[n, 3]`` world rays (any direction length).
        skts: ``[J, 4, 4]`` or ``[n, J, 4, 4]`` world-to-joint transforms (A-NeRF's ``skts``).
        box_min, box_max: ``[J, 3]`` box corners in each joint's local frame (world units).

    Returns:
        near ``[n]`` (earliest entry over the boxes the ray hits, clamped >= 0), far ``[n]`` (latest exit),
        hit bool ``[n]``; misses get ``near = far = 0``. ``t`` is in units of ``rays_d``: an affine map keeps
        the line's parameterisation, so ``t`` computed in a joint frame is the world ``t``. The range is the
        envelope of the hit boxes; gaps between boxes are left to the occupancy grid.
    """
    from fast_anerf.bone_boxes import ray_box_intervals  # (bone_boxes -> skeleton only: no import cycle)

    skts = _as_tensor(skts, rays_o)
    rot, trans = skts[..., :3, :3], skts[..., :3, 3]  # [(n,) J, 3, 3], [(n,) J, 3]
    eq = "njab,nb->nja" if rot.dim() == 4 else "jab,nb->nja"  # per-ray or shared skts
    o = torch.einsum(eq, rot, rays_o) + trans  # [n, J, 3] ray origins in each joint frame
    d = torch.einsum(eq, rot, rays_d)
    t_in, t_out, hit_j = ray_box_intervals(o, d, _as_tensor(box_min, rays_o), _as_tensor(box_max, rays_o))
    hit = hit_j.any(-1)
    inf = torch.full_like(t_in, float("inf"))
    near = torch.where(hit_j, t_in, inf).amin(-1)
    far = torch.where(hit_j, t_out, -inf).amax(-1)
    zero = torch.zeros_like(near)
    return torch.where(hit, near, zero), torch.where(hit, far, zero), hit
