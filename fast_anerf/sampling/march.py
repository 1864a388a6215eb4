"""Placing samples along rays through the posed bone boxes, returned packed (nerfacc's format).

Two placements:

* **Fixed step** (the fast field): candidates ``t_k = near + offset + k * dt`` with ``dt = step / |d|`` (so the
  step is the same world length on every ray), as nerfacc's grid marching with ``cone_angle=0``; a
  candidate is kept when its midpoint lies inside some posed bone box (the field is exactly 0 elsewhere),
  so rays that miss every box cost nothing.
* **Stratified** (A-NeRF): ``n_samples`` jittered samples evenly between near and far, all kept unless
  ``cull`` is set.

``near``/``far`` of a ray is the span of its entries into / exits from the bone boxes (tighter than
A-NeRF's cylinder). ``offset`` is uniform in ``[0, dt)`` per ray when ``stratified`` (training), else 0.
"""

from __future__ import annotations

import math

import torch


def march_boxes(
    t_in: torch.Tensor,
    t_out: torch.Tensor,
    hit: torch.Tensor,
    ray_scale: torch.Tensor,
    step: float = 0.0,
    n_samples: int = 0,
    cull: bool = True,
    stratified: bool = False,
    generator: torch.Generator | None = None,
    max_candidates: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples along rays inside the union of bone boxes.

    Args:
        t_in, t_out, hit: ``[R, J]`` per-ray, per-bone box intervals (``bone_boxes.ray_box_intervals``).
        ray_scale: ``[R]`` length of each ray direction (world units per unit of t).
        step: fixed world-space step (used when ``n_samples == 0``).
        n_samples: if > 0, stratified samples per ray between near and far instead of a fixed step.
        cull: keep only samples whose midpoint is inside some box.
        stratified: jitter sample positions (training).
        generator: random generator for the jitter (CPU), for reproducible runs.
        max_candidates: cap on candidates per ray (protects memory if a ray is huge).

    Returns:
        Packed ``ray_indices [P]`` (sorted), ``t_starts [P]``, ``t_ends [P]``.
    """
    n_rays = t_in.shape[0]
    device = t_in.device
    inf = torch.full_like(t_in, float("inf"))
    near = torch.where(hit, t_in, inf).amin(dim=-1)  # [R]
    far = torch.where(hit, t_out, -inf).amax(dim=-1)
    any_hit = hit.any(dim=-1)
    near = torch.where(any_hit, near, torch.zeros_like(near))
    far = torch.where(any_hit, far, torch.zeros_like(far))
    if n_samples > 0:
        n_cand = n_samples
        dt = (far - near) / n_samples  # [R]
    else:
        if step <= 0:
            raise ValueError("march_boxes: give step > 0 or n_samples > 0")
        dt = step / ray_scale
        span = float(((far - near) / dt).max()) if n_rays else 0.0
        n_cand = max(1, min(max_candidates, math.ceil(span)))
    if stratified:
        jitter = torch.rand(n_rays, generator=generator, device="cpu").to(device)
    else:
        jitter = torch.zeros(n_rays, device=device) if n_samples == 0 else torch.full((n_rays,), 0.5, device=device)
    if n_samples > 0:
        # A-NeRF's stratified sampling: one sample per bin, at a jittered position inside it.
        k = torch.arange(n_cand, device=device, dtype=t_in.dtype)
        t_starts = near[:, None] + k[None, :] * dt[:, None]
        t_ends = t_starts + dt[:, None]
        mid = t_starts + jitter[:, None] * dt[:, None]
    else:
        k = torch.arange(n_cand, device=device, dtype=t_in.dtype)
        t_starts = near[:, None] + (jitter[:, None] + k[None, :]) * dt[:, None]
        t_ends = t_starts + dt[:, None]
        mid = 0.5 * (t_starts + t_ends)
    keep = any_hit[:, None] & (mid < far[:, None])  # [R, K]
    if cull:
        inside = (mid[:, :, None] >= t_in[:, None, :]) & (mid[:, :, None] <= t_out[:, None, :]) & hit[:, None, :]
        keep &= inside.any(dim=-1)
    ray_indices, k_idx = keep.nonzero(as_tuple=True)  # row-major: sorted by ray
    if n_samples > 0:
        # Stratified samples are points; give them their bin as the interval, centred on the jittered point.
        centre = mid[ray_indices, k_idx]
        half = 0.5 * dt[ray_indices]
        return ray_indices, centre - half, centre + half
    return ray_indices, t_starts[ray_indices, k_idx], t_ends[ray_indices, k_idx]
