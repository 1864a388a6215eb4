"""The one place that renders: rays -> bone frames -> samples in the posed boxes -> field -> pixels.

Training, evaluation, videos and the viewer all call ``render_rays`` (a batch of rays, each with its own
posed skeleton) or ``render_image`` (a full image for one camera and one pose, in chunks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fast_anerf.bone_boxes import posed_bounds, rays_hit_bounds
from fast_anerf.data.rays import image_rays
from fast_anerf.model import Character
from fast_anerf.sampling.march import box_intervals, march_boxes, march_occupied
from fast_anerf.sampling.volrend import accumulate, render_weights, visibility, visibility_progressive


@dataclass(frozen=True)
class RenderSettings:
    """How samples are placed (see ``sampling/march.py``); lengths are fractions of the skeleton height."""

    step_size: float = 0.006
    n_samples: int = 0
    cull_to_boxes: bool = True
    density_noise_std: float = 0.0
    stratified: bool = False
    occupancy: bool = True  # skip empty cells of the model's occupancy grids (fast field, fixed step)
    early_stop_eps: float = 1e-4  # with occupancy: drop samples once the transmittance is below this
    alpha_thre: float = 0.01  # with occupancy: drop samples less opaque than min(this, mean occupancy)
    march_backend: str = "auto"  # sampling/march.py's backend: auto, torch, cpu or nerfacc

    @staticmethod
    def from_train(train_cfg, training: bool) -> RenderSettings:
        return RenderSettings(
            step_size=train_cfg.step_size,
            n_samples=train_cfg.n_samples,
            cull_to_boxes=train_cfg.cull_to_boxes,
            density_noise_std=train_cfg.density_noise_std if training else 0.0,
            stratified=training,
            occupancy=train_cfg.occupancy,
            early_stop_eps=train_cfg.early_stop_eps,
            alpha_thre=train_cfg.alpha_thre,
            march_backend=train_cfg.march_backend,
        )


def rays_to_bones(rays_o: torch.Tensor, rays_d: torch.Tensor, skts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays in every joint frame: ``o_j = skts_j o``, ``d_j = R_j d`` (t keeps its meaning).

    Args:
        rays_o, rays_d: ``[R, 3]`` world rays.
        skts: ``[R, 24, 4, 4]`` (per ray) or ``[24, 4, 4]`` (one pose) world-to-joint transforms.

    Returns:
        ``origins [R, 24, 3]``, ``directions [R, 24, 3]`` in joint-local coordinates.
    """
    rot = skts[..., :3, :3]
    trans = skts[..., :3, 3]
    if skts.dim() == 3:
        return torch.einsum("jab,rb->rja", rot, rays_o) + trans, torch.einsum("jab,rb->rja", rot, rays_d)
    # Per-ray poses: origin and direction in one [R, 72, 3] x [R, 3, 2] product (1.5x faster than two einsums).
    both = torch.bmm(rot.reshape(-1, rot.shape[1] * 3, 3), torch.stack([rays_o, rays_d], dim=-1))
    both = both.view(*rot.shape[:2], 3, 2)
    return both[..., 0] + trans, both[..., 1]


def render_rays(
    model: Character,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    skts: torch.Tensor,
    code_ids: torch.Tensor,
    background: torch.Tensor,
    settings: RenderSettings,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Render a batch of rays of posed characters.

    Args:
        rays_o, rays_d: ``[R, 3]`` (A-NeRF rays: directions not normalised, t is depth-like).
        skts: ``[R, 24, 4, 4]`` or ``[24, 4, 4]`` world-to-joint transforms of each ray's pose.
        code_ids: ``[R]`` appearance code per ray (-1 = mean code).
        background: ``[R, 3]`` or ``[3]`` colour behind the body, in [0, 1].
        settings: sample placement.
        generator: CPU generator for the stratified jitter.

    Returns:
        ``rgb [R, 3]`` (composited on the background), ``acc [R]`` (opacity), ``depth [R]`` (t, where acc>0),
        ``n_samples`` (scalar tensor: samples evaluated by the full field), ``n_candidates`` (samples whose
        density was evaluated without gradients to choose them; ``n_samples`` without occupancy). On the CPU
        with the fast field's ``cpu`` backend the choosing pass is one C call (``FastField.fused_visibility``);
        otherwise, called without gradients (rendering), it computes colour as well and is the only field
        pass, so there ``n_samples == n_candidates``.
    """
    origins, directions = rays_to_bones(rays_o, rays_d, skts)
    # Sample placement is not differentiated (poses get gradients through the samples' bone coordinates).
    o, d = origins.detach(), directions.detach()
    t_in, t_out, hit = box_intervals(o, d, model.box_min, model.box_max)
    ray_scale = rays_d.norm(dim=-1)  # world length per unit of t
    height = model.height
    occupancy = getattr(model, "occupancy", None)
    if settings.occupancy and occupancy is not None and settings.n_samples == 0:
        ray_idx, t_starts, t_ends = march_occupied(
            t_in, t_out, hit, ray_scale, o, d, occupancy,
            step=settings.step_size * height, stratified=settings.stratified, generator=generator,
            backend=settings.march_backend,
        )  # fmt: skip
        n_candidates = ray_idx.numel()
        if (settings.early_stop_eps > 0 or settings.alpha_thre > 0) and n_candidates:
            # nerfacc's sigma_fn pass: densities without gradients pick the visible samples (stop each ray
            # once opaque), so the expensive pass with gradients and colour runs on far fewer samples.
            alpha_thre = min(settings.alpha_thre, float(occupancy.occs.mean()))
            thresholds = (settings.early_stop_eps, alpha_thre)
            fused = None
            if not ray_idx.is_cuda and hasattr(model.field, "fused_visibility"):  # all of it in one C call
                fused = model.field.fused_visibility(o, d, ray_scale, ray_idx, t_starts, t_ends, *thresholds)
            if fused is not None:
                (keep, n_candidates), colour = fused, None
            else:
                # Without gradients (rendering) this pass computes colour too and is the only one.
                rays = (o, d, ray_scale, code_ids)
                with_colour = not torch.is_grad_enabled()
                keep, n_candidates, colour = _visible_samples(
                    model, *rays, ray_idx, t_starts, t_ends, thresholds, with_colour
                )
            kept_idx = keep.nonzero().squeeze(1)
            ray_idx, t_starts, t_ends = (v.index_select(0, kept_idx) for v in (ray_idx, t_starts, t_ends))
            if colour is not None:  # every density evaluated came with its colour: n_samples = n_candidates
                kept = (colour[0][kept_idx], colour[1][kept_idx], t_starts, t_ends, ray_idx)
                return _composite(*kept, ray_scale, background, n_candidates, n_candidates)
    else:
        ray_idx, t_starts, t_ends = march_boxes(
            t_in,
            t_out,
            hit,
            ray_scale,
            step=settings.step_size * height,
            n_samples=settings.n_samples,
            cull=settings.cull_to_boxes,
            stratified=settings.stratified,
            generator=generator,
        )
        n_candidates = ray_idx.numel()
    t_mid = 0.5 * (t_starts + t_ends)
    d_ray = directions.index_select(0, ray_idx)
    x_local = origins.index_select(0, ray_idx) + t_mid[:, None, None] * d_ray  # [P, 24, 3]
    d_local = d_ray / ray_scale.index_select(0, ray_idx)[:, None, None]  # unit length in every frame
    codes = code_ids.index_select(0, ray_idx)
    sigma, rgb = model.field(x_local, d_local, codes, density_noise_std=settings.density_noise_std)
    return _composite(sigma, rgb, t_starts, t_ends, ray_idx, ray_scale, background, ray_idx.numel(), n_candidates)


@torch.no_grad()
def _visible_samples(
    model, origins, directions, ray_scale, code_ids, ray_idx, t_starts, t_ends, thresholds, with_colour: bool
):
    """The visibility pass through the field's PyTorch path: ``(keep [P], densities evaluated, colour)``; the
    rays in the bone frames (``origins``, ``directions [R, 24, 3]``) come detached.

    CUDA: one density pass over all candidates (nerfacc's way; cheap on a GPU). CPU: front to back, only until
    each ray is opaque (``visibility_progressive``: the same samples, far fewer densities). ``with_colour``
    (rendering: no pass with gradients follows) evaluates colour too and returns ``colour = (sigma [P],
    rgb [P, 3])``, else None.
    """
    n_rays, n_candidates = ray_scale.shape[0], ray_idx.numel()
    sigma_all = ray_scale.new_zeros(n_candidates) if with_colour else None
    rgb_all = ray_scale.new_zeros(n_candidates, 3) if with_colour else None
    t_mid = 0.5 * (t_starts + t_ends)

    def sigma_fn(sel: torch.Tensor) -> torch.Tensor:
        ray = ray_idx.index_select(0, sel)
        d_ray = directions.index_select(0, ray)  # index_select: ~2x faster than directions[ray] on CPU
        x = origins.index_select(0, ray) + t_mid.index_select(0, sel)[:, None, None] * d_ray
        if not with_colour:
            return model.field.density(x)
        scale = ray_scale.index_select(0, ray)[:, None, None]
        sigma_all[sel], rgb_all[sel] = model.field(x, d_ray / scale, code_ids.index_select(0, ray))
        return sigma_all[sel]

    args = (t_starts, t_ends, ray_idx, n_rays, ray_scale, *thresholds)
    if ray_idx.is_cuda:
        keep = visibility(sigma_fn(torch.arange(n_candidates, device=ray_idx.device)), *args)
    else:
        keep, n_candidates = visibility_progressive(sigma_fn, *args, return_count=True)
    return keep, n_candidates, (sigma_all, rgb_all) if with_colour else None


def _composite(
    sigma, rgb, t_starts, t_ends, ray_idx, ray_scale, background, n_samples: int, n_candidates: int
) -> dict[str, torch.Tensor]:
    """Packed samples (``sigma [P]``, ``rgb [P, 3]``, intervals, ``ray_idx [P]``) -> ``render_rays``' outputs."""
    n_rays = ray_scale.shape[0]
    t_mid = 0.5 * (t_starts + t_ends)
    weights, _, _ = render_weights(sigma, t_starts, t_ends, ray_idx, n_rays, ray_scale=ray_scale)
    color = accumulate(weights, rgb, ray_idx, n_rays)
    acc = accumulate(weights, None, ray_idx, n_rays)[:, 0]
    depth = accumulate(weights, t_mid[:, None], ray_idx, n_rays)[:, 0] / acc.clamp_min(1e-6)
    background = background.expand(n_rays, 3) if background.dim() == 1 else background
    color = color + (1.0 - acc[:, None]) * background
    return {
        "rgb": color,
        "acc": acc,
        "depth": depth,
        "n_samples": torch.tensor(n_samples),
        "n_candidates": torch.tensor(n_candidates),
    }


@torch.no_grad()
def render_image(
    model: Character,
    c2w: torch.Tensor,
    focal: float,
    center: tuple[float, float],
    height: int,
    width: int,
    skts: torch.Tensor,
    code_id: int = -1,
    background: torch.Tensor | None = None,
    settings: RenderSettings | None = None,
    chunk: int = 4096,
) -> dict[str, torch.Tensor]:
    """Render a full image of one posed character.

    Args:
        c2w: ``[4, 4]`` OpenGL camera-to-world; focal in pixels; center = principal point (cx, cy).
        skts: ``[24, 4, 4]`` world-to-joint transforms of the pose.
        code_id: appearance code (-1 = mean code, for frames never seen).
        background: ``[H, W, 3]`` image or ``[3]`` colour in [0, 1] (default white).

    Returns:
        ``rgb [H, W, 3]``, ``acc [H, W]``, ``depth [H, W]``, ``n_samples`` (total samples evaluated).
    """
    device = model.box_min.device
    settings = settings or RenderSettings()
    rays_o, rays_d = image_rays(c2w.to(device), focal, center, height, width)
    if background is None:
        background = torch.ones(3, device=device)
    background = background.to(device)
    bg = background.reshape(-1, 3).expand(height * width, 3) if background.dim() > 1 else background
    skts = skts.to(device)
    # Rays that miss the world bounds of the posed boxes meet no box: they render the background exactly. They
    # are most pixels of a view, and their per-bone slab tests and marching took most of a viewer frame's time
    # on the CPU (512x512: 275 of 500 ms).
    lo, hi = posed_bounds(skts, model.box_min, model.box_max)
    margin = 1e-3 * model.height  # float slack: the per-bone tests run in the bone frames
    pixels = rays_hit_bounds(rays_o, rays_d, lo - margin, hi + margin).nonzero().squeeze(1)
    rgb = bg.expand(height * width, 3).clone()
    acc = torch.zeros(height * width, device=device)
    depth = torch.zeros(height * width, device=device)
    total = 0
    for start in range(0, pixels.numel(), chunk):
        sel = pixels[start : start + chunk]
        bg_chunk = bg.index_select(0, sel) if bg.dim() > 1 else bg
        codes = torch.full((sel.numel(),), code_id, dtype=torch.long, device=device)
        out = render_rays(model, rays_o[sel], rays_d[sel], skts, codes, bg_chunk, settings)
        rgb[sel], acc[sel], depth[sel] = out["rgb"], out["acc"], out["depth"]
        total += int(out["n_samples"])
    return {
        "rgb": rgb.reshape(height, width, 3),
        "acc": acc.reshape(height, width),
        "depth": depth.reshape(height, width),
        "n_samples": torch.tensor(total),
    }
