"""Placing samples along rays through the posed bone boxes, returned packed (nerfacc's format).

Three placements:

* **Occupancy marching** (the fast field, ``march_occupied``): candidates at a fixed step
  ``t_k = near + (offset + k) * dt`` with ``dt = step / |d|`` (the same world length on every ray), as
  nerfacc's grid marching with ``cone_angle=0`` (the t-grid is anchored at the ray's near, not at each box
  entry). A candidate is kept when its midpoint lies in a posed bone box *and* in an occupied cell of that
  bone's occupancy grid (``occupancy.py``) for at least one such bone. On CPU a C loop (``march_cpu.c``,
  built on first use like the hash-grid kernels: 6.4 -> 1.2 ms per 2048-ray training batch) with a
  plain-PyTorch twin that also runs where no compiler is; on CUDA nerfacc's ``traverse_grids`` marches each
  bone's grid with the rays moved into that bone's frame, and the per-bone sample sets are merged (the shared
  t-grid makes the same candidate identical in every bone).
* **Fixed step in the boxes** (``march_boxes``, occupancy off): the same candidates, kept when the midpoint
  lies inside some posed bone box (the field is exactly 0 elsewhere).
* **Stratified** (A-NeRF, ``march_boxes`` with ``n_samples``): ``n_samples`` jittered samples evenly between
  near and far, all kept unless ``cull`` is set.

``near``/``far`` of a ray is the span of its entries into / exits from the bone boxes (tighter than
A-NeRF's cylinder), so rays that miss every box produce no sample. ``offset`` is uniform in ``[0, 1)`` per
ray when ``stratified`` (training), else 0. Early termination (dropping samples behind opaque ones) needs
densities and lives in the renderer (``volrend.visibility``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from fast_anerf.bone_boxes import ray_box_intervals
from fast_anerf.ckernels import I64, INT, PTR, load_library, pieces_for
from fast_anerf.sampling.volrend import nerfacc_cuda, use_nerfacc

MARCH_SOURCE = Path(__file__).with_name("march_cpu.c")
_MARCH_SIGNATURE = (
    ("march_occupied", (INT, I64, I64, INT, I64, *[PTR] * 9, INT, PTR, PTR, PTR)),  # (pieces, start, stop, ...)
    ("ray_box_intervals", (INT, I64, I64, INT, *[PTR] * 7)),
)
MIN_RAYS_PER_THREAD = 512


def box_intervals(
    origins: torch.Tensor, directions: torch.Tensor, box_min: torch.Tensor, box_max: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``bone_boxes.ray_box_intervals`` (same arguments and results), in one C loop for float32 CPU tensors.

    The PyTorch slab test runs ~12 ops over ``[R, 24, 3]`` temporaries: 39 ms of a 512x512 viewer frame (the
    ~65k rays within the body's bounds) on this 2-core CPU. Elsewhere (CUDA, float64, no compiler) it is the
    PyTorch function itself.
    """
    tensors = (origins, directions, box_min, box_max)
    if not _cpu_march_usable(*tensors):
        return ray_box_intervals(origins, directions, box_min, box_max)
    lib = load_library(MARCH_SOURCE, _MARCH_SIGNATURE)[0]
    o, d, lo, hi = (t.detach().contiguous() for t in tensors)
    n_rays, n_bones = o.shape[:2]
    t_in = torch.empty(n_rays, n_bones, dtype=torch.float32)  # the C loop writes float32, whatever the default
    t_out = torch.empty(n_rays, n_bones, dtype=torch.float32)
    hit = torch.empty(n_rays, n_bones, dtype=torch.bool)
    ptrs = [t.data_ptr() for t in (o, d, lo, hi, t_in, t_out, hit)]
    lib.ray_box_intervals(pieces_for(lib, n_rays, 16 * MIN_RAYS_PER_THREAD), 0, n_rays, n_bones, *ptrs)
    return t_in, t_out, hit


def ray_span(t_in: torch.Tensor, t_out: torch.Tensor, hit: torch.Tensor):
    """``near [R]``, ``far [R]``, ``any_hit [R]``: the span of each ray's box intervals (0, 0 on a miss)."""
    inf = torch.full_like(t_in, float("inf"))
    any_hit = hit.any(dim=-1)
    near = torch.where(hit, t_in, inf).amin(dim=-1)
    far = torch.where(hit, t_out, -inf).amax(dim=-1)
    near = torch.where(any_hit, near, torch.zeros_like(near))
    far = torch.where(any_hit, far, torch.zeros_like(far))
    return near, far, any_hit


def _jitter(n_rays: int, stratified: bool, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    if stratified:
        return torch.rand(n_rays, generator=generator, device="cpu").to(device=like.device, dtype=like.dtype)
    return torch.zeros(n_rays, device=like.device, dtype=like.dtype)


def _fixed_step_grid(near, far, ray_scale, step, jitter, max_candidates):
    """The t-grid of every ray: ``anchor [R]`` (first candidate's start), ``dt [R]``, ``n_cand`` (columns)."""
    if step <= 0:
        raise ValueError(f"marching: the step must be > 0 (world units), got {step}; set train.step_size > 0")
    dt = step / ray_scale
    anchor = near + jitter * dt
    span = float(((far - anchor) / dt).max()) if near.numel() else 0.0
    n_cand = max(1, min(max_candidates, math.ceil(span)))
    return anchor, dt, n_cand


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
    near, far, any_hit = ray_span(t_in, t_out, hit)
    if n_samples > 0:
        # A-NeRF's stratified sampling (sample_from_lineseg): one sample per bin, each at its own uniformly
        # random place inside it (one offset per ray would make every ray's samples a shifted regular grid).
        dt = (far - near) / n_samples  # [R]
        if stratified:
            jitter = torch.rand(n_rays, n_samples, generator=generator, device="cpu").to(device=device, dtype=dt.dtype)
        else:
            jitter = torch.full((n_rays, 1), 0.5, device=device, dtype=dt.dtype)
        k = torch.arange(n_samples, device=device, dtype=t_in.dtype)
        t_starts = near[:, None] + k[None, :] * dt[:, None]
        mid = t_starts + jitter * dt[:, None]
    else:
        anchor, dt, n_cand = _fixed_step_grid(
            near, far, ray_scale, step, _jitter(n_rays, stratified, generator, near), max_candidates
        )
        k = torch.arange(n_cand, device=device, dtype=t_in.dtype)
        t_starts = anchor[:, None] + k[None, :] * dt[:, None]
        mid = t_starts + 0.5 * dt[:, None]
    keep = any_hit[:, None] & (mid < far[:, None])  # [R, K]
    if cull:
        inside = (mid[:, :, None] >= t_in[:, None, :]) & (mid[:, :, None] <= t_out[:, None, :]) & hit[:, None, :]
        keep &= inside.any(dim=-1)
    ray_indices, k_idx = keep.nonzero(as_tuple=True)  # row-major: sorted by ray
    if n_samples > 0:
        # Stratified samples are points; give them their bin as the interval, centred on the jittered point.
        centre = mid[ray_indices, k_idx]
        half = 0.5 * dt.index_select(0, ray_indices)
        return ray_indices, centre - half, centre + half
    t0 = t_starts[ray_indices, k_idx]
    return ray_indices, t0, t0 + dt.index_select(0, ray_indices)


def march_occupied(
    t_in: torch.Tensor,
    t_out: torch.Tensor,
    hit: torch.Tensor,
    ray_scale: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    occupancy,
    step: float,
    stratified: bool = False,
    generator: torch.Generator | None = None,
    max_candidates: int = 1024,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed-step samples whose midpoint is in an occupied cell of some bone whose box contains it.

    Args:
        t_in, t_out, hit: ``[R, 24]`` per-ray, per-bone box intervals (``bone_boxes.ray_box_intervals``).
        ray_scale: ``[R]`` length of each ray direction (world units per unit of t).
        origins, directions: ``[R, 24, 3]`` the rays in every bone frame (``renderer.rays_to_bones``), detached.
        occupancy: ``BoneOccupancy`` (``binaries [24, R, R, R]``, ``box_min``/``box_size``, ``occupied``).
        step: world-space step between samples.
        stratified: one uniform random offset in ``[0, 1)`` step per ray (training).
        generator: CPU generator for the offsets, for reproducible runs.
        max_candidates: cap on candidates per ray.
        backend: ``"auto"`` (nerfacc on CUDA tensors; on the CPU the C loop when it builds, else torch),
            ``"torch"``, ``"cpu"`` or ``"nerfacc"``.

    Returns:
        Packed ``ray_indices [P]`` (sorted by ray, then t), ``t_starts [P]``, ``t_ends [P]`` (``t_ends - t_starts
        = step / |d|``), the same on both backends.
    """
    if backend not in ("auto", "torch", "cpu", "nerfacc"):
        raise ValueError(f"march_occupied: backend must be 'auto', 'torch', 'cpu' or 'nerfacc', got {backend!r}")
    n_rays = t_in.shape[0]
    near, far, any_hit = ray_span(t_in, t_out, hit)
    jitter = _jitter(n_rays, stratified, generator, near)
    anchor, dt, n_cand = _fixed_step_grid(near, far, ray_scale, step, jitter, max_candidates)
    if backend == "nerfacc":
        if not t_in.is_cuda:
            raise ValueError("march_occupied: backend 'nerfacc' needs CUDA tensors; use backend 'torch' on CPU")
        ok, why = nerfacc_cuda()
        if not ok:
            raise ValueError(f"march_occupied: nerfacc's CUDA kernels are unavailable ({why}); use backend 'torch'")
    if backend == "nerfacc" or (backend == "auto" and use_nerfacc(t_in)):
        ray_indices, k_idx = _occupied_nerfacc(
            t_in, hit, ray_scale, origins, directions, occupancy, step, anchor, dt, far, any_hit, n_cand
        )
    elif backend in ("cpu", "auto") and _cpu_march_usable(t_in, t_out, origins, directions, anchor, dt, far,
                                                          occupancy.box_min, occupancy.box_size):  # fmt: skip
        ray_indices, k_idx = _occupied_cpu(t_in, t_out, hit, origins, directions, occupancy, anchor, dt, far, n_cand)
    elif backend == "cpu":
        why = load_library(MARCH_SOURCE, _MARCH_SIGNATURE)[1] or "it needs float32 CPU tensors"
        raise ValueError(f"march_occupied: backend 'cpu' cannot run here ({why}); use backend 'torch'")
    else:
        ray_indices, k_idx = _occupied_torch(t_in, t_out, hit, origins, directions, occupancy, anchor, dt, far, n_cand)
    dt_s = dt.index_select(0, ray_indices)
    t_starts = anchor.index_select(0, ray_indices) + k_idx.to(anchor.dtype) * dt_s
    return ray_indices, t_starts, t_starts + dt_s


def _occupied_torch(t_in, t_out, hit, origins, directions, occupancy, anchor, dt, far, n_cand):
    """``(ray_indices [P], k [P])`` of kept candidates, in plain PyTorch (CPU or CUDA).

    Works on (ray, bone) box hits rather than a dense ``[R, K, 24]`` test: each hit covers a contiguous
    range of candidates, found from ``t_in``/``t_out`` (widened by one, then tested exactly as nerfacc does,
    ``t_in <= mid <= t_out`` and ``mid < far``), so the work is proportional to the (candidate, box) pairs.
    """
    n_rays, n_bones = t_in.shape
    device = t_in.device
    # Flat (ray * n_bones + bone) ids and index_select throughout: 2-index and boolean-mask indexing cost
    # 2-10x more on CPU (this function took 11 ms per 2048-ray training batch, 6.5 ms now).
    hit_id = hit.reshape(-1).nonzero().squeeze(1)  # [H] box hits
    r = hit_id // n_bones
    t_lo, t_hi = t_in.reshape(-1).index_select(0, hit_id), t_out.reshape(-1).index_select(0, hit_id)
    a, step = anchor.index_select(0, r), dt.index_select(0, r)
    k_lo = (torch.ceil((t_lo - a) / step - 0.5) - 1).clamp(0, n_cand - 1).long()
    k_hi = (torch.floor((t_hi - a) / step - 0.5) + 1).clamp(-1, n_cand - 1).long()
    counts = (k_hi - k_lo + 1).clamp_min(0)
    pair = torch.repeat_interleave(torch.arange(r.numel(), device=device), counts)  # [T] (candidate, box)
    k = k_lo.index_select(0, pair) + torch.arange(pair.numel(), device=device)
    k -= (torch.cumsum(counts, 0) - counts).index_select(0, pair)
    r, hit_id = r.index_select(0, pair), hit_id.index_select(0, pair)
    mid = anchor.index_select(0, r) + (k.to(anchor.dtype) + 0.5) * dt.index_select(0, r)  # as the dense t-grid
    inside = (mid >= t_lo.index_select(0, pair)) & (mid <= t_hi.index_select(0, pair)) & (mid < far.index_select(0, r))
    sel = inside.nonzero().squeeze(1)
    r, k, mid, hit_id = (v.index_select(0, sel) for v in (r, k, mid, hit_id))
    o, d = origins.reshape(-1, 3).index_select(0, hit_id), directions.reshape(-1, 3).index_select(0, hit_id)
    occupied = occupancy.occupied(hit_id % n_bones, o + mid[:, None] * d)  # bone-local midpoints [T, 3]
    keep = torch.zeros(n_rays * n_cand, dtype=torch.bool, device=device)
    keep[(r * n_cand + k).masked_select(occupied)] = True  # kept if any bone containing it marks it occupied
    return keep.view(n_rays, n_cand).nonzero(as_tuple=True)  # row-major: sorted by ray, then t


def _cpu_march_usable(*tensors: torch.Tensor) -> bool:
    """The C loops read float32 CPU arrays (the training dtype) and need their library to build."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return load_library(MARCH_SOURCE, _MARCH_SIGNATURE)[0] is not None


def _occupied_cpu(t_in, t_out, hit, origins, directions, occupancy, anchor, dt, far, n_cand):
    """``_occupied_torch``'s result from the C loop of ``march_cpu.c`` (same float32 arithmetic, same samples)."""
    lib = load_library(MARCH_SOURCE, _MARCH_SIGNATURE)[0]
    n_rays, n_bones = t_in.shape
    arrays = [t_in, t_out, hit, origins, directions, anchor, dt, far, occupancy.binaries]
    arrays = [a.detach().contiguous() for a in arrays]
    box_min, box_size = occupancy.box_min.contiguous(), occupancy.box_size.contiguous()
    keep = torch.zeros(n_rays, n_cand, dtype=torch.bool)
    ptrs = [a.data_ptr() for a in arrays] + [occupancy.resolution, box_min.data_ptr(), box_size.data_ptr()]
    pieces = pieces_for(lib, n_rays, MIN_RAYS_PER_THREAD)
    lib.march_occupied(pieces, 0, n_rays, n_bones, n_cand, *ptrs, keep.data_ptr())
    return keep.nonzero(as_tuple=True)  # row-major: sorted by ray, then t


def _occupied_nerfacc(t_in, hit, ray_scale, origins, directions, occupancy, step, anchor, dt, far, any_hit, n_cand):
    """The same candidates from nerfacc's CUDA grid traversal, one bone at a time (NEVER RUN: no GPU so far).

    nerfacc marches normalised directions with a scalar step, so each bone gets unit directions and
    ``t' = t |d|``; ``near_planes = anchor |d|`` anchors its t-grid where ours is. Its emitted midpoints are
    mapped back to candidate indices ``k = floor((t_mid - anchor) / dt)`` (robust to its float32 stepping
    drift), and the union over bones is taken with ``unique`` on ``ray * K + k`` (sorted: by ray, then t).
    """
    from nerfacc.grid import traverse_grids

    scale = ray_scale.float()
    aabbs = torch.cat([occupancy.box_min, occupancy.box_min + occupancy.box_size], dim=-1).float()  # [24, 6]
    keys = []
    for j in range(t_in.shape[1]):
        # Only the rays that hit this bone's box (nerfacc 0.5.3 ignores rays_mask unless over-allocating).
        rays = (hit[:, j] & any_hit).nonzero().squeeze(1)
        if rays.numel() == 0:
            continue
        _, samples, _ = traverse_grids(
            origins[rays, j].float().contiguous(),
            (directions[rays, j] / ray_scale[rays, None]).float().contiguous(),
            occupancy.binaries[j : j + 1].contiguous(),
            aabbs[j : j + 1].contiguous(),
            near_planes=(anchor[rays] * scale[rays]).float().contiguous(),
            far_planes=(far[rays] * scale[rays]).float().contiguous(),
            step_size=float(step),
            cone_angle=0.0,
        )
        ray = samples.ray_indices.long()
        t_mid = samples.vals
        if samples.is_valid is not None:
            ray, t_mid = ray[samples.is_valid], t_mid[samples.is_valid]
        ray = rays[ray]  # back to the batch's ray ids
        k = torch.floor((t_mid.to(anchor.dtype) / ray_scale[ray] - anchor[ray]) / dt[ray]).long()
        inside = (k >= 0) & (k < n_cand)  # beyond the candidate cap: dropped, as the torch path does
        keys.append(ray[inside] * n_cand + k[inside])
    if not keys:
        empty = torch.zeros(0, dtype=torch.long, device=t_in.device)
        return empty, empty
    merged = torch.unique(torch.cat(keys))  # sorted
    return merged // n_cand, merged % n_cand
