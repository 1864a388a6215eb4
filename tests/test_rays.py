"""Rays as A-NeRF builds them: projection round trips, pixel sampling, cylinder and bone-box near/far."""

from __future__ import annotations

import numpy as np
import roma
import torch

from fast_anerf.data.rays import (
    bounding_cylinder,
    image_rays,
    near_far_boxes,
    near_far_cylinder,
    pixel_rays,
    project_points,
    sample_pixel_ids,
)

H, W = 90, 120


def look_at(position: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """OpenGL c2w ``[4, 4]`` at ``position`` looking at ``target`` with world up = -y (A-NeRF)."""
    z = torch.nn.functional.normalize(position - target, dim=-1)  # camera looks down -z
    x = torch.nn.functional.normalize(torch.linalg.cross(torch.tensor([0.0, -1.0, 0.0], dtype=z.dtype), z), dim=-1)
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=z.dtype)
    c2w[:3, :3] = torch.stack([x, y, z], dim=-1)
    c2w[:3, 3] = position
    return c2w


def random_camera(gen: torch.Generator) -> torch.Tensor:
    pos = torch.randn(3, generator=gen, dtype=torch.float64)
    pos = 4.0 * pos / pos.norm()
    return look_at(pos, 0.1 * torch.randn(3, generator=gen, dtype=torch.float64))


def point_to_ray_distance(p, o, d):
    return torch.linalg.cross(p - o, d).norm(dim=-1) / d.norm(dim=-1)


def test_project_then_rays_pass_through_points():
    gen = torch.Generator().manual_seed(0)
    focal, center = 80.0, (W / 2 + 0.3, H / 2 - 0.7)
    for _ in range(5):
        c2w = random_camera(gen)
        points = 0.3 * torch.randn(64, 3, generator=gen, dtype=torch.float64)
        uv, depth = project_points(points, c2w, focal, center)
        assert (depth > 0).all() and (uv[:, 0] >= 0).all() and (uv[:, 0] < W).all()
        assert (uv[:, 1] >= 0).all() and (uv[:, 1] < H).all()
        ids = uv[:, 1].round().long() * W + uv[:, 0].round().long()
        rays_o, rays_d = pixel_rays(c2w, focal, center, ids, W)
        # Rounding moves the pixel by at most half a pixel diagonal: distance <= 0.71 * depth / focal.
        assert (point_to_ray_distance(points, rays_o, rays_d) <= 0.71 * depth / focal).all()
        # Exact inverse at integer pixels: the point at t = depth projects back onto the pixel, at depth t.
        t = 1.0 + 3.0 * torch.rand(len(ids), generator=gen, dtype=torch.float64)
        uv2, depth2 = project_points(rays_o + t[:, None] * rays_d, c2w, focal, center)
        torch.testing.assert_close(depth2, t)
        torch.testing.assert_close(uv2, torch.stack([ids % W, ids // W], -1).double())


def test_principal_ray_is_minus_z_and_batched_cameras_agree():
    gen = torch.Generator().manual_seed(1)
    c2w = random_camera(gen)
    rays_o, rays_d = pixel_rays(c2w, 80.0, (40.0, 30.0), torch.tensor([30 * W + 40]), W)
    torch.testing.assert_close(rays_d[0], -c2w[:3, 2])
    torch.testing.assert_close(rays_o[0], c2w[:3, 3])
    ids = torch.randint(H * W, (10,), generator=gen)
    shared = pixel_rays(c2w, 80.0, (40.0, 30.0), ids, W)
    per_ray = pixel_rays(c2w.expand(10, 4, 4), torch.full((10,), 80.0), torch.tensor([[40.0, 30.0]] * 10), ids, W)
    torch.testing.assert_close(shared, per_ray)
    all_o, all_d = image_rays(c2w, 80.0, (40.0, 30.0), H, W)
    assert all_d.shape == (H * W, 3)
    torch.testing.assert_close(all_d[ids], shared[1])
    # Pixel (u=0, v=0) is up-left of the principal point: camera x < 0, y > 0.
    cam_dir = all_d[0] @ c2w[:3, :3]
    torch.testing.assert_close(cam_dir, torch.tensor([-40 / 80.0, 30 / 80.0, -1.0], dtype=torch.float64))


def test_sample_pixel_ids():
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(H, W, generator=gen) < 0.2
    n_set = int(mask.sum())
    for n in (12, n_set // 2, n_set + 5):  # fast path, permutation path, fewer pixels than asked
        ids = sample_pixel_ids(mask, n, generator=gen)
        assert len(ids) == min(n, n_set)
        assert mask.reshape(-1)[ids].all()
        assert (ids[1:] > ids[:-1]).all()  # sorted and unique
    # Uniform over the set pixels: 100 pixels, 4000 draws of 5 -> each pixel ~200 times.
    small = torch.zeros(H * W, dtype=torch.bool)
    small[torch.randperm(H * W, generator=gen)[:100]] = True
    counts = torch.zeros(H * W)
    for _ in range(4000):
        counts[sample_pixel_ids(small, 5, generator=gen)] += 1
    assert counts[~small].sum() == 0
    assert counts[small].min() > 140 and counts[small].max() < 260
    same = [sample_pixel_ids(mask, 7, torch.Generator().manual_seed(5)) for _ in range(2)]
    torch.testing.assert_close(same[0], same[1])


def test_bounding_cylinder_values():
    kp = np.zeros((24, 3), np.float32)
    kp[:, 0] = np.linspace(-0.5, 0.5, 24)
    kp[:, 1] = np.linspace(-1.0, 0.8, 24)
    kp[0] = [0.1, -1.0, 0.2]
    kp[5] = [0.1, 0.3, 0.2 + 0.9]  # farthest in x-z from the root: 0.9
    cyl = bounding_cylinder(kp)
    assert isinstance(cyl, np.ndarray)
    np.testing.assert_allclose(cyl, [0.1, 0.2, 0.9 + 0.25, -1.0 - 0.25, 0.8 + 0.25 * 0.25], rtol=1e-6)
    batched = bounding_cylinder(torch.from_numpy(np.stack([kp, kp + 1])), top_expand=1.6, bot_expand=1.1)
    torch.testing.assert_close(batched[1], torch.tensor([1.1, 1.2, 1.15, -0.4, 2.075]))


def test_near_far_cylinder():
    gen = torch.Generator().manual_seed(3)
    cyl = torch.tensor([0.3, -0.2, 0.7, -2.0, 1.0], dtype=torch.float64)
    n = 256
    ang = 2 * torch.pi * torch.rand(n, generator=gen, dtype=torch.float64)
    rays_o = torch.stack(
        [0.3 + 3 * ang.cos(), torch.randn(n, generator=gen, dtype=torch.float64), -0.2 + 3 * ang.sin()], -1
    )
    target = torch.cat([cyl[:1], torch.zeros(1, dtype=torch.float64), cyl[1:2]]) + torch.randn(
        n, 3, generator=gen, dtype=torch.float64
    )
    rays_d = (target - rays_o) * (0.5 + torch.rand(n, 1, generator=gen, dtype=torch.float64))  # any length
    near, far, hit = near_far_cylinder(rays_o, rays_d, cyl)
    assert 20 < hit.sum() < n - 20  # both cases are exercised

    def radial(t):
        p = rays_o + t[:, None] * rays_d
        return ((p[:, 0] - cyl[0]) ** 2 + (p[:, 2] - cyl[1]) ** 2).sqrt()

    torch.testing.assert_close(radial(near)[hit], torch.full_like(near[hit], 0.7))
    torch.testing.assert_close(radial(far)[hit], torch.full_like(far[hit], 0.7))
    assert (far[hit] > near[hit]).all() and (near[hit] > 0).all()
    # Misses: the ray line never comes within the radius in x-z, and the outputs are zero.
    o, d = rays_o[~hit][:, [0, 2]] - cyl[:2], rays_d[~hit][:, [0, 2]]
    closest = (o - ((o * d).sum(-1) / (d * d).sum(-1))[:, None] * d).norm(dim=-1)
    assert (closest > 0.7).all()
    assert (near[~hit] == 0).all() and (far[~hit] == 0).all()
    # Special cases: origin inside (near = 0), pointing away, vertical ray, per-ray cylinders.
    o = torch.tensor([[0.3, 0.0, -0.2], [2.0, 0.0, -0.2], [0.3, 0.0, -0.2]], dtype=torch.float64)
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    near, far, hit = near_far_cylinder(o, d, cyl.expand(3, 5))
    assert hit.tolist() == [True, False, False]
    torch.testing.assert_close(near, torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(far, torch.tensor([0.7, 0.0, 0.0], dtype=torch.float64))


def random_bones(gen: torch.Generator, n_joints: int):
    """World-to-joint ``skts [J, 4, 4]``, joint-to-world ``l2ws``, and boxes ``[J, 3]`` around each origin."""
    l2ws = torch.eye(4, dtype=torch.float64).repeat(n_joints, 1, 1)
    l2ws[:, :3, :3] = roma.random_rotmat(n_joints, dtype=torch.float64)
    l2ws[:, :3, 3] = torch.randn(n_joints, 3, generator=gen, dtype=torch.float64)
    box_min = -0.05 - 0.3 * torch.rand(n_joints, 3, generator=gen, dtype=torch.float64)
    box_max = 0.05 + 0.3 * torch.rand(n_joints, 3, generator=gen, dtype=torch.float64)
    return torch.linalg.inv(l2ws), l2ws, box_min, box_max


def test_near_far_boxes_contains_points_inside_boxes():
    gen = torch.Generator().manual_seed(4)
    n_joints, n = 5, 300
    skts, l2ws, box_min, box_max = random_bones(gen, n_joints)
    j = torch.randint(n_joints, (n,), generator=gen)
    local = box_min[j] + (box_max[j] - box_min[j]) * torch.rand(n, 3, generator=gen, dtype=torch.float64)
    points = (l2ws[j, :3, :3] @ local[..., None]).squeeze(-1) + l2ws[j, :3, 3]
    rays_o = 6 * torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=-1)
    scale = 0.5 + torch.rand(n, generator=gen, dtype=torch.float64)
    rays_d = (points - rays_o) / scale[:, None]  # the point is at t = scale
    near, far, hit = near_far_boxes(rays_o, rays_d, skts, box_min, box_max)
    assert hit.all()
    assert (near <= scale + 1e-9).all() and (scale <= far + 1e-9).all() and (near >= 0).all()
    # The entry point lies on the surface of some box (inside it, within tolerance, and on a face).
    entry = rays_o + near[:, None] * rays_d
    entry_local = torch.einsum("jab,nb->nja", skts[:, :3, :3], entry) + skts[:, :3, 3]
    inside = ((entry_local >= box_min - 1e-7) & (entry_local <= box_max + 1e-7)).all(-1)
    on_face = ((entry_local - box_min).abs() < 1e-7) | ((entry_local - box_max).abs() < 1e-7)
    assert (inside & on_face.any(-1)).any(-1).all()
    # Per-ray skts give the same answer; rays pointing away from every box miss.
    per_ray = near_far_boxes(rays_o, rays_d, skts.expand(n, -1, -1, -1), box_min, box_max)
    torch.testing.assert_close(per_ray, (near, far, hit))
    away = near_far_boxes(rays_o[:4], rays_o[:4], skts, box_min, box_max)  # outward from radius 6
    assert not away[2].any() and (away[0] == 0).all() and (away[1] == 0).all()
    # Axis-parallel ray exactly on a slab boundary: no NaN.
    eye = torch.eye(4, dtype=torch.float64)[None]
    o = torch.tensor([[-1.0, 0.5, 0.0]], dtype=torch.float64)
    res = near_far_boxes(
        o,
        torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64),
        eye,
        -0.5 * torch.ones(1, 3),
        0.5 * torch.ones(1, 3),
    )
    assert not torch.isnan(torch.cat(res[:2])).any()
