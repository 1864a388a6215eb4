"""Volume rendering over packed samples (nerfacc's format), with a plain-PyTorch path that runs anywhere.

Packed samples: ``ray_indices [P]`` (sorted, non-decreasing), ``t_starts [P]``, ``t_ends [P]``. Densities
are per world unit; ``deltas = (t_ends - t_starts) * |rays_d|`` because A-NeRF's ray directions are not
normalised (t is depth-like).

On CUDA the weights come from ``nerfacc.render_weight_from_density`` (packed CUDA kernels); elsewhere from
the torch twin below (nerfacc's packed ops need CUDA, see specs/tcnn_nerfacc.md §C2). Both compute
``alpha = 1 - exp(-sigma * delta)``, ``T = exp(-exclusive_sum(sigma * delta))``, ``w = T * alpha``.
nerfacc builds its CUDA extension on first use (nvcc + ninja, minutes); where that fails, CUDA tensors take
the torch twin too, with one warning (``nerfacc_cuda``). ``FAST_ANERF_NERFACC=off`` skips nerfacc on purpose
(no build: a broken toolchain, or a run that cannot wait for it).
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

SWITCHED_OFF = ("0", "off", "no", "false")
SWITCHED_OFF_REASON = "switched off by FAST_ANERF_NERFACC"


@functools.cache
def nerfacc_cuda() -> tuple[bool, str]:
    """Whether nerfacc's CUDA extension loads (building it the first time), and why not: ``(ok, reason)``.

    nerfacc compiles its kernels on first import of ``nerfacc.cuda._backend``; without nvcc it sets the module
    to None (every packed op then fails with an AttributeError), and a failed build raises. Callers with CUDA
    tensors fall back to the PyTorch twins (same results, slower) and warn once.
    """
    if os.environ.get("FAST_ANERF_NERFACC", "").strip().lower() in SWITCHED_OFF:
        return False, SWITCHED_OFF_REASON
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        from nerfacc.cuda._backend import _C
    except Exception as error:  # ImportError, a failed JIT build (RuntimeError, OSError, ...)
        return False, f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
    if _C is None:
        return False, "nerfacc found no CUDA toolkit (nvcc) to build its extension"
    return True, ""


def use_nerfacc(tensor: torch.Tensor) -> bool:
    """True when ``tensor`` is on CUDA and nerfacc's kernels can run; on CUDA without them, warn once."""
    if not tensor.is_cuda:
        return False
    ok, why = nerfacc_cuda()
    if not ok and why != SWITCHED_OFF_REASON:
        _warn_no_nerfacc(why)
    return ok


@functools.cache
def _warn_no_nerfacc(why: str) -> None:
    message = f"nerfacc's CUDA kernels are unavailable ({why}): marching and compositing on the GPU use the "
    warnings.warn(message + "plain-PyTorch path (same results, slower); install nvcc and ninja", stacklevel=3)


def pack_info(ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """``[n_rays, 2]`` (first sample index, sample count) per ray, from sorted ``ray_indices [P]``."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    return torch.stack([starts, counts], dim=-1)


def exclusive_sum_packed(values: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Per-ray exclusive prefix sum of ``values [P]`` (sum of the earlier samples of the same ray).

    One global cumsum (float64, so long batches do not lose precision), minus each ray's offset.
    """
    if values.numel() == 0:
        return values
    cs = torch.cumsum(values.double(), 0)
    excl = cs - values.double()
    starts = pack_info(ray_indices, n_rays)[:, 0]
    # index_select, not excl[...][...]: 1-D advanced indexing costs ~2x more on CPU (also below).
    offset = excl.index_select(0, starts.clamp_max(values.numel() - 1)).index_select(0, ray_indices)
    return (excl - offset).to(values.dtype)


def render_weights(
    sigmas: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    ray_indices: torch.Tensor,
    n_rays: int,
    ray_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compositing weights of packed samples.

    Args:
        sigmas: ``[P]`` densities (per world unit).
        t_starts, t_ends: ``[P]`` sample intervals along the ray, in units of the ray direction.
        ray_indices: ``[P]`` sorted ray index of each sample.
        n_rays: number of rays.
        ray_scale: ``[n_rays]`` length of each ray's direction vector (world units per unit of t).

    Returns:
        ``weights [P]``, ``transmittance [P]`` (before the sample), ``alphas [P]``.
    """
    scale = ray_scale.index_select(0, ray_indices) if ray_scale is not None else 1.0
    delta = (t_ends - t_starts) * scale  # [P] world units
    if sigmas.dtype == torch.float32 and use_nerfacc(sigmas):  # nerfacc's scan kernels read float32 only
        import nerfacc

        # nerfacc takes sigma * (t_end - t_start): hand it the interval as (0, delta), so that it multiplies the
        # same float32 numbers as the twin below (scaled t near 200 lose ~1e-3 of delta when subtracted again).
        return nerfacc.render_weight_from_density(
            torch.zeros_like(delta), delta, sigmas, ray_indices=ray_indices, n_rays=n_rays
        )
    sigma_delta = sigmas * delta
    alphas = 1.0 - torch.exp(-sigma_delta)
    transmittance = torch.exp(-exclusive_sum_packed(sigma_delta, ray_indices, n_rays))
    return transmittance * alphas, transmittance, alphas


def accumulate(
    weights: torch.Tensor, values: torch.Tensor | None, ray_indices: torch.Tensor, n_rays: int
) -> torch.Tensor:
    """Sum ``weights [P] * values [P, C]`` per ray -> ``[n_rays, C]`` (``values=None``: ``[n_rays, 1]``)."""
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add_(0, ray_indices, src)


def visibility(
    sigmas: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    ray_indices: torch.Tensor,
    n_rays: int,
    ray_scale: torch.Tensor | None = None,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
) -> torch.Tensor:
    """Which packed samples still matter: ``[P]`` bool, nerfacc's ``render_visibility_from_density``.

    A sample is kept when the transmittance before it is ``>= early_stop_eps`` (the ray is not yet opaque:
    early termination) and, if ``alpha_thre > 0``, its own opacity is ``>= alpha_thre``. Same arguments and
    units as ``render_weights``; run it without gradients (it only chooses samples).
    """
    _, transmittance, alphas = render_weights(sigmas, t_starts, t_ends, ray_indices, n_rays, ray_scale)
    keep = transmittance >= early_stop_eps
    if alpha_thre > 0:
        keep &= alphas >= alpha_thre
    return keep


def visibility_progressive(
    sigma_fn,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    ray_indices: torch.Tensor,
    n_rays: int,
    ray_scale: torch.Tensor | None = None,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    first: int = 4,
    return_count: bool = False,
):
    """``visibility`` with densities evaluated front to back, only until each ray is opaque (same result).

    ``visibility`` needs the density of every candidate, also of those deep behind an opaque surface. Here
    round ``r`` evaluates the next ``first * 2^r`` candidates of the rays that are still transparent
    (transmittance ``>= early_stop_eps``), so a ray that stops after a few samples costs a few densities.
    Samples never evaluated lie behind a transmittance below ``early_stop_eps`` and would be dropped anyway,
    so the kept set equals ``visibility``'s. Worth it where the density costs (CPU); on CUDA nerfacc's
    single pass is cheaper than the extra launches. With the fast field on the ``cpu`` backend the renderer
    runs the same walk in C instead, one candidate at a time (``FastField.fused_visibility``).

    Args:
        sigma_fn: ``(indices [M]) -> sigmas [M]``: densities (per world unit) of the samples ``indices``.
        first: candidates per ray in the first round.
        return_count: also return how many densities were evaluated.
        Others: as ``visibility``.

    Returns:
        ``[P]`` bool: the samples to keep (and the number of densities evaluated if ``return_count``).
    """
    n = ray_indices.numel()
    keep = torch.zeros(n, dtype=torch.bool, device=ray_indices.device)
    if n == 0:
        return (keep, 0) if return_count else keep
    info = pack_info(ray_indices, n_rays)
    rank = torch.arange(n, device=ray_indices.device) - info[:, 0].index_select(0, ray_indices)  # place on its ray
    scale = ray_scale.index_select(0, ray_indices) if ray_scale is not None else torch.ones_like(t_starts)
    delta = (t_ends - t_starts) * scale
    depth = torch.zeros(n_rays, dtype=torch.float64, device=ray_indices.device)  # optical depth so far
    active = info[:, 1] > 0
    lo, size, max_rank, evaluated = 0, max(int(first), 1), int(info[:, 1].max()), 0
    while lo < max_rank and bool(active.any()):
        in_round = (rank >= lo) & (rank < lo + size) & active.index_select(0, ray_indices)
        sel = in_round.nonzero().squeeze(-1)  # sorted by ray
        sigma_delta = sigma_fn(sel) * delta.index_select(0, sel)
        evaluated += sel.numel()
        ray = ray_indices.index_select(0, sel)
        before = depth.index_select(0, ray) + exclusive_sum_packed(sigma_delta, ray, n_rays).double()
        visible = torch.exp(-before) >= early_stop_eps
        if alpha_thre > 0:
            visible &= (1.0 - torch.exp(-sigma_delta)) >= alpha_thre
        keep[sel] = visible
        depth.index_add_(0, ray, sigma_delta.double())
        active &= torch.exp(-depth) >= early_stop_eps
        lo, size = lo + size, size * 2
    return (keep, evaluated) if return_count else keep
