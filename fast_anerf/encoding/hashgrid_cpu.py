"""The ``cpu`` hash-grid backend: fused C kernels (``hashgrid_cpu.c``) built with the system C compiler.

The plain-PyTorch twin (``hashgrid.hashgrid_torch``) evaluates a level as ~36 tensor ops over ``[8, N]``
temporaries; the C loop keeps one point's 8 corners in registers. ``scripts/bench_hashgrid.py --preset demo``
(65k points, 24 bones, the demo grid; 2-core AMD EPYC, 2 threads, one run): forward 14.6 vs 40.0 ms,
forward+backward into an existing ``.grad`` 28.3 vs 56.4 ms; the whole fast field (``bench_field.py``, forward
and backward) 1.2-1.6x over three runs.
The kernels are scalar C (no SIMD): a division per corner and libm's ``floorf`` once cost 2x; both are gone.
Table reads are latency-bound (random rows of a 12 MB table), so corners are found for a block of 32 points
and their table lines prefetched before any is read: 1.2-1.9x for the forward kernel alone (2k-128k points).
Same parameter layout and arithmetic (tcnn's, specs §A), so
checkpoints move between the ``torch``, ``cpu`` and ``tcnn`` backends; tests compare outputs and gradients
with the twin on random inputs.

``blend_encode_cpu`` is the fast field's whole encoding without gradients (box tests, edge weights, hash
features, blending) in one C call, equal to the PyTorch path bit for bit. It serves occupancy updates, meshes
and the colour pass of rendering.

``fused_visibility_cpu`` is the whole visibility pass (which marched candidates the field with gradients
and colour must see) in one C call: per ray, front to back, encoding + density MLP + transmittance, stopping
at the first opaque sample. The PyTorch rounds it replaces (``volrend.visibility_progressive``) evaluate
``4, 8, 16...`` candidates per still-transparent ray with ~40 tensor ops a round; here no density is evaluated
behind the surface (3.2 instead of 4.4 per training ray) and there is no per-round overhead. A/B on a
converged model (2-core CPU, medians of alternating 16-step blocks): 36.6 -> 31.9 ms per training step;
``bench_sampling.py`` over 4000 steps: grids-on training 3.0x -> 3.6x the rays/s of no skipping (4.2x with
later changes: README).

Built and loaded by ``ckernels.load_library`` (system C compiler on first use, cached; no compiler: the
backend is unavailable and ``auto`` uses ``torch``, the model's description line names the backend that
runs; an explicit ``--backend cpu`` is a one-line error saying why). Each call runs on torch's OpenMP threads
(``ckernels.h``), split in up to ``torch.get_num_threads()`` pieces.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fast_anerf.ckernels import DOUBLE, FLOAT, I64, INT, PTR, load_library, pieces_for
from fast_anerf.sampling.volrend import pack_info

SOURCE = Path(__file__).with_name("hashgrid_cpu.c")
MIN_POINTS_PER_THREAD = 4096  # below this, one piece: waking a thread costs more than it saves (measured)

_LEVEL_ARGS = (INT, INT, PTR, PTR, PTR, PTR, PTR)  # F, L, scale, mult, dense, size, offset
# The C file's FIELD_ARGS: bones, box_min, box_size, margin, mask, mask resolution, table, entries per bone, levels.
_FIELD_ARGS = (INT, PTR, PTR, FLOAT, PTR, INT, PTR, I64, *_LEVEL_ARGS)
_SIGNATURES = (  # each kernel takes (pieces, start, stop) first: its range, split over threads
    ("hg_forward", (INT, I64, I64, PTR, PTR, PTR, *_LEVEL_ARGS, PTR, PTR)),
    ("hg_backward_table", (INT, INT, INT, I64, PTR, PTR, PTR, *_LEVEL_ARGS, PTR)),
    ("hg_backward_x", (INT, I64, I64, INT, INT, PTR, PTR, PTR)),
    ("hg_blend_forward", (INT, I64, I64, PTR, PTR, *_FIELD_ARGS, PTR, PTR, PTR, PTR)),
    (
        "fused_visibility",
        (INT, I64, I64, *[PTR] * 7, *_FIELD_ARGS, PTR, INT, INT, FLOAT, FLOAT, DOUBLE, FLOAT, PTR, PTR, PTR),
    ),
)
MIN_SAMPLES_PER_THREAD = 1024  # blend_encode_cpu: each sample is ~2-4 (sample, bone) pairs


def load_kernels():
    """The hash-grid kernels: ``(library or None, why it is unavailable)`` (built once, then cached)."""
    return load_library(SOURCE, _SIGNATURES)


def cpu_kernels_available() -> bool:
    return load_kernels()[0] is not None


def require_float32(params: Tensor) -> None:
    """The tables are float32, as tiny-cuda-nn's: the kernels read them as such (a float64 or float16 table would be
    read as other numbers, or past its end), so another dtype (``model.double()``, ``.half()``) is an error."""
    if params.dtype != torch.float32:
        raise TypeError(f"hash-grid parameters must be float32 (tiny-cuda-nn's layout), got {params.dtype}; keep "
                        "the encoding in float32 (do not call .double() / .half() on the model)")  # fmt: skip


@functools.lru_cache(maxsize=32)
def _level_arrays(config) -> tuple[Tensor, ...]:
    """Per-level constants as C arrays (kept alive by the cache): scale, mult, dense, size, offset."""
    from fast_anerf.encoding.hashgrid import _levels

    levels = _levels(config)
    scale = torch.tensor([lv[0] for lv in levels], dtype=torch.float64)
    mult = torch.tensor([lv[1] for lv in levels], dtype=torch.int32)  # the uint32 bits, read as uint32_t in C
    dense = torch.tensor([int(lv[2]) for lv in levels], dtype=torch.int32)
    size = torch.tensor([lv[3] for lv in levels], dtype=torch.int32)  # <= 2^30
    offset = torch.tensor([lv[4] for lv in levels], dtype=torch.int64)
    return scale, mult, dense, size, offset


def _level_args(config) -> list:
    arrays = _level_arrays(config)
    return [config.n_features_per_level, config.n_levels, *(a.data_ptr() for a in arrays)]


class _HashGridCpuFunction(torch.autograd.Function):
    """``hashgrid_torch``'s function through the C kernels (points sorted by bone for cache locality).

    When ``x`` needs a gradient (pose refinement), the forward also keeps ``d features / d x`` (``[N, L, 3, F]``,
    3 floats per feature, 48 per point for the demo grid) from the corner values it has read anyway, and the
    backward's x gradient is a dot product with it (``hg_backward_x``) instead of a second pass of random table
    reads, which cost as much as the forward. A 29k-point pose-refining batch (2-core CPU, 3 alternating runs):
    forward 4.1 -> 5.2 ms, backward 8.4 -> 5.1 ms.
    """

    @staticmethod
    def forward(ctx, x, bone_ids, params, config, inplace_grad):
        lib = load_kernels()[0]
        n, width = len(x), config.n_output_dims
        order = torch.argsort(bone_ids)
        xs = x.detach().index_select(0, order).to(torch.float32).contiguous()
        base = (bone_ids.index_select(0, order).to(torch.int64) * config.n_entries).contiguous()
        table = params.detach().contiguous()
        out_s = torch.empty(n, width, dtype=torch.float32)
        jac_shape = (n, config.n_levels, 3, config.n_features_per_level)
        jac_s = torch.empty(jac_shape, dtype=torch.float32) if ctx.needs_input_grad[0] else None
        lv = _level_args(config)
        ptrs = (xs.data_ptr(), base.data_ptr(), table.data_ptr())
        outs = (out_s.data_ptr(), jac_s.data_ptr() if jac_s is not None else None)
        lib.hg_forward(pieces_for(lib, n, MIN_POINTS_PER_THREAD), 0, n, *ptrs, *lv, *outs)
        out = torch.empty_like(out_s).index_copy_(0, order, out_s)  # back to the caller's order
        ctx.config, ctx.inplace_grad, ctx.params_ref, ctx.jac_s = config, inplace_grad, params, jac_s
        ctx.save_for_backward(order, xs, base)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        lib, config, params = load_kernels()[0], ctx.config, ctx.params_ref
        order, xs, base = ctx.saved_tensors
        n, lv = len(order), _level_args(config)
        g = grad_out.index_select(0, order).to(torch.float32).contiguous()
        grad_x = grad_params = None
        if ctx.needs_input_grad[2]:
            if ctx.inplace_grad and params.grad is not None and params.grad.is_contiguous():
                target = params.grad  # add straight into the existing .grad; autograd then gets None
            else:
                target = grad_params = torch.zeros_like(params, dtype=torch.float32)
            # Pieces of levels, which own disjoint entries: no write races, the same sums for any split.
            pieces = min(config.n_levels, pieces_for(lib, n, MIN_POINTS_PER_THREAD))
            ptrs = (xs.data_ptr(), base.data_ptr(), g.data_ptr())
            lib.hg_backward_table(pieces, 0, config.n_levels, n, *ptrs, *lv, target.data_ptr())
        if ctx.needs_input_grad[0]:
            grad_xs = torch.empty(n, 3, dtype=torch.float32)
            args = (config.n_features_per_level, config.n_levels, ctx.jac_s.data_ptr(), g.data_ptr())
            lib.hg_backward_x(pieces_for(lib, n, MIN_POINTS_PER_THREAD), 0, n, *args, grad_xs.data_ptr())
            grad_x = torch.empty_like(grad_xs).index_copy_(0, order, grad_xs)
        return grad_x, None, grad_params, None, None


def hashgrid_cpu(x: Tensor, bone_ids: Tensor, params: Tensor, config, inplace_grad: bool = False) -> Tensor:
    """``hashgrid_torch`` through the fused C kernels: ``x [N, 3]`` float32 on the CPU, ``bone_ids [N]``,
    ``params [B, n_params]`` -> ``[N, L*F]``. Needs ``cpu_kernels_available()``."""
    require_float32(params)
    return _HashGridCpuFunction.apply(x, bone_ids, params, config, inplace_grad)


def blend_encode_cpu(
    x_local: Tensor,
    d_local: Tensor | None,
    box_min: Tensor,
    box_size: Tensor,
    margin: float,
    params: Tensor,
    config,
    mask: tuple[Tensor, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The fast field's encoding without gradients, fused in C (``hg_blend_forward``); equal to its PyTorch path.

    For every sample and every bone whose box holds it: box coordinates, the smoothstep edge weight and the
    bone's hash features; blended as ``field.FastField._encode`` does (same float operations in the same order).

    Args:
        x_local: ``[N, J, 3]`` samples in every bone frame; ``d_local``: ``[N, J, 3]`` ray directions or None.
        box_min, box_size: ``[J, 3]`` the bones' boxes; ``margin``: the weight ramp's width (fraction of a box).
        params: ``[J, n_params]`` hash tables; ``config``: their ``HashGridConfig``.

    Returns:
        ``features [N, L*F]`` (weighted mean over the bones), ``weight_sum [N]``, ``d_blend [N, 3]`` (weighted
        sum of directions, not normalised) or None without ``d_local``.
    """
    require_float32(params)
    lib = load_kernels()[0]
    n = x_local.shape[0]
    x = x_local.detach().to(torch.float32).contiguous()
    d = d_local.detach().to(torch.float32).contiguous() if d_local is not None else None
    field_args, alive = _field_args(box_min, box_size, margin, params, config, mask)
    feats = torch.empty(n, config.n_output_dims, dtype=torch.float32)
    weight_sum = torch.empty(n, dtype=torch.float32)
    d_blend = torch.empty(n, 3, dtype=torch.float32) if d is not None else None
    pieces = pieces_for(lib, n, MIN_SAMPLES_PER_THREAD)
    status = torch.zeros(pieces, dtype=torch.int32)  # one per piece
    head = (x.data_ptr(), d.data_ptr() if d is not None else None, *field_args)
    tail = (feats.data_ptr(), weight_sum.data_ptr(), d_blend.data_ptr() if d_blend is not None else None)
    lib.hg_blend_forward(pieces, 0, n, *head, *tail, status.data_ptr())
    del alive
    if bool(status.any()):
        raise MemoryError("blend_encode_cpu: the C kernel could not allocate its pair buffers")
    return feats, weight_sum, d_blend


def _field_args(box_min, box_size, margin, params, config, mask) -> tuple[tuple, list[Tensor]]:
    """The C kernels' ``FIELD_ARGS`` (bones, boxes, margin, mask, table, levels) and the tensors they point into
    (keep them alive until the call returns)."""
    boxes = [box_min.detach().float().contiguous(), box_size.detach().float().contiguous()]
    table = params.detach().contiguous()
    mask_cells = mask[0].contiguous() if mask is not None else None
    mask_args = (mask_cells.data_ptr(), int(mask[1])) if mask is not None else (None, 0)
    args = (len(boxes[0]), *(b.data_ptr() for b in boxes), float(margin), *mask_args)
    args = (*args, table.data_ptr(), config.n_entries, *_level_args(config))
    return args, [*boxes, table, mask_cells]


def relu_mlp_first_output_weights(weights: list[Tensor], n_inputs: int) -> Tensor | None:
    """A bias-free ReLU MLP's weights (``TcnnMLP.layer_weights()``) as ``fused_visibility`` reads them: the hidden
    matrices transposed (``[n_in, N]``, ``[N, N]``...), then row 0 of the output matrix; flat float32. None when
    the kernel cannot run it (hidden width over 256)."""
    if len(weights) == 1:
        return weights[0][0, :n_inputs].detach().float().contiguous()
    if weights[0].shape[0] > 256:
        return None
    parts = [weights[0][:, :n_inputs].t()] + [w.t() for w in weights[1:-1]] + [weights[-1][0]]
    return torch.cat([p.detach().float().reshape(-1) for p in parts])


def fused_visibility_cpu(
    origins: Tensor,
    directions: Tensor,
    ray_scale: Tensor,
    ray_indices: Tensor,
    t_starts: Tensor,
    t_ends: Tensor,
    field_inputs: tuple,
    mlp: Tensor,
    n_neurons: int,
    n_hidden: int,
    density_bias: float,
    height: float,
    early_stop_eps: float,
    alpha_thre: float,
) -> tuple[Tensor, int]:
    """``volrend.visibility_progressive`` with the fast field's density, fused in C (``fused_visibility``).

    Each ray's candidates are walked front to back, and only until the ray is opaque: densities are evaluated
    for far fewer candidates than by rounds, with no tensor op per round. The density is the field's
    (``FastField.density``, masked blend) computed in float32 C: equal to the PyTorch path up to the order of the
    MLP's float sums (~1e-6 relative), so a candidate within that of a threshold may be chosen differently.

    Args:
        origins, directions: ``[R, J, 3]`` each ray in every bone frame; ``ray_scale [R]``: world length per t.
        ray_indices: ``[P]`` sorted candidates' rays; ``t_starts``, ``t_ends``: ``[P]`` their intervals.
        field_inputs: ``(box_min, box_size, margin, params, config, mask)``: the encoding's constants
            (``blend_encode_cpu``'s arguments).
        mlp: the density MLP from ``relu_mlp_first_output_weights``; ``n_neurons``, ``n_hidden``: its hidden
            width and layers.
        density_bias, height: ``sigma = coverage * exp(min(raw + bias, 15)) / height``.
        early_stop_eps, alpha_thre: as ``volrend.visibility``.

    Returns:
        ``keep [P]`` bool and the number of densities evaluated.
    """
    lib = load_kernels()[0]
    n_rays, n = origins.shape[0], ray_indices.numel()
    keep = torch.zeros(n, dtype=torch.uint8)
    if n == 0:
        return keep.bool(), 0
    first, counts = pack_info(ray_indices, n_rays).T.contiguous()  # [n_rays] each: first candidate, count
    rays = [t.detach().to(torch.float32).contiguous() for t in (origins, directions, ray_scale)]
    ts = [t.detach().to(torch.float32).contiguous() for t in (t_starts, t_ends)]
    field_args, alive = _field_args(*field_inputs)
    pieces = max(1, min(n_rays, pieces_for(lib, n, MIN_SAMPLES_PER_THREAD)))  # split rays, sized by candidates
    evaluated = torch.zeros(pieces, dtype=torch.int64)  # one per piece
    status = torch.zeros(pieces, dtype=torch.int32)
    head = (*(t.data_ptr() for t in rays), first.data_ptr(), counts.data_ptr(), *(t.data_ptr() for t in ts))
    head = (*head, *field_args, mlp.data_ptr(), int(n_neurons), int(n_hidden), float(density_bias), float(height))
    tail = (float(early_stop_eps), float(alpha_thre), keep.data_ptr(), evaluated.data_ptr(), status.data_ptr())
    lib.fused_visibility(pieces, 0, n_rays, *head, *tail)
    del alive
    if bool(status.any()):
        raise MemoryError("fused_visibility_cpu: the C kernel could not allocate its buffers")
    return keep.bool(), int(evaluated.sum())
