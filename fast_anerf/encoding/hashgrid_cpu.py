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
features, blending) in one C call, equal to the PyTorch path bit for bit. It serves the no-gradient passes:
choosing visible samples in training, occupancy updates, rendering.

Built and loaded by ``ckernels.load_library`` (system C compiler on first use, cached; no compiler: the
backend is unavailable and ``auto`` uses ``torch``, the model's description line names the backend that
runs; an explicit ``--backend cpu`` is a one-line error saying why). Calls are split across the threads of
``torch.get_num_threads()``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fast_anerf.ckernels import FLOAT, I64, INT, PTR, load_library, run_calls, split_range

SOURCE = Path(__file__).with_name("hashgrid_cpu.c")
MIN_POINTS_PER_THREAD = 4096  # below this, one call: thread hand-off costs more than it saves

_LEVEL_ARGS = (INT, INT, PTR, PTR, PTR, PTR, PTR)  # F, L, scale, mult, dense, size, offset
_SIGNATURES = (
    ("hg_forward", (I64, I64, PTR, PTR, PTR, *_LEVEL_ARGS, PTR)),
    ("hg_backward_table", (I64, INT, INT, PTR, PTR, PTR, *_LEVEL_ARGS, PTR)),
    ("hg_backward_x", (I64, I64, PTR, PTR, PTR, PTR, *_LEVEL_ARGS, PTR)),
    (
        "hg_blend_forward",
        (I64, I64, INT, PTR, PTR, PTR, PTR, FLOAT, PTR, INT, PTR, I64, *_LEVEL_ARGS, PTR, PTR, PTR, PTR),
    ),
)
MIN_SAMPLES_PER_THREAD = 1024  # blend_encode_cpu: each sample is ~2-4 (sample, bone) pairs


def load_kernels():
    """The hash-grid kernels: ``(library or None, why it is unavailable)`` (built once, then cached)."""
    return load_library(SOURCE, _SIGNATURES)


def cpu_kernels_available() -> bool:
    return load_kernels()[0] is not None


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


def _point_chunks(n: int) -> list[tuple[int, int]]:
    return split_range(n, max(1, min(torch.get_num_threads(), n // MIN_POINTS_PER_THREAD)))


class _HashGridCpuFunction(torch.autograd.Function):
    """``hashgrid_torch``'s function through the C kernels (points sorted by bone for cache locality)."""

    @staticmethod
    def forward(ctx, x, bone_ids, params, config, inplace_grad):
        lib = load_kernels()[0]
        n, width = len(x), config.n_output_dims
        order = torch.argsort(bone_ids)
        xs = x.detach().index_select(0, order).to(torch.float32).contiguous()
        base = (bone_ids.index_select(0, order).to(torch.int64) * config.n_entries).contiguous()
        table = params.detach().contiguous()
        out_s = torch.empty(n, width, dtype=torch.float32)
        lv = _level_args(config)
        ptrs = (xs.data_ptr(), base.data_ptr(), table.data_ptr())
        run_calls([(lib.hg_forward, (a, b, *ptrs, *lv, out_s.data_ptr())) for a, b in _point_chunks(n)])
        out = torch.empty_like(out_s).index_copy_(0, order, out_s)  # back to the caller's order
        ctx.config, ctx.inplace_grad, ctx.params_ref = config, inplace_grad, params
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
        calls = []
        if ctx.needs_input_grad[2]:
            if ctx.inplace_grad and params.grad is not None and params.grad.is_contiguous():
                target = params.grad  # add straight into the existing .grad; autograd then gets None
            else:
                target = grad_params = torch.zeros_like(params, dtype=torch.float32)
            threads = max(1, min(torch.get_num_threads(), config.n_levels, n // MIN_POINTS_PER_THREAD))
            for a, b in split_range(config.n_levels, threads):  # levels own disjoint entries: no write races
                args = (n, a, b, xs.data_ptr(), base.data_ptr(), g.data_ptr(), *lv, target.data_ptr())
                calls.append((lib.hg_backward_table, args))
        if ctx.needs_input_grad[0]:
            grad_xs = torch.empty(n, 3, dtype=torch.float32)
            table = params.detach().contiguous()
            ptrs = (xs.data_ptr(), base.data_ptr(), table.data_ptr(), g.data_ptr())
            calls += [(lib.hg_backward_x, (a, b, *ptrs, *lv, grad_xs.data_ptr())) for a, b in _point_chunks(n)]
        if calls:
            run_calls(calls)
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty_like(grad_xs).index_copy_(0, order, grad_xs)
        return grad_x, None, grad_params, None, None


def hashgrid_cpu(x: Tensor, bone_ids: Tensor, params: Tensor, config, inplace_grad: bool = False) -> Tensor:
    """``hashgrid_torch`` through the fused C kernels: ``x [N, 3]`` float32 on the CPU, ``bone_ids [N]``,
    ``params [B, n_params]`` -> ``[N, L*F]``. Needs ``cpu_kernels_available()``."""
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
    lib = load_kernels()[0]
    n, n_bones = x_local.shape[:2]
    x = x_local.detach().to(torch.float32).contiguous()
    d = d_local.detach().to(torch.float32).contiguous() if d_local is not None else None
    boxes = [box_min.detach().float().contiguous(), box_size.detach().float().contiguous()]
    table = params.detach().contiguous()
    feats = torch.empty(n, config.n_output_dims, dtype=torch.float32)
    weight_sum = torch.empty(n, dtype=torch.float32)
    d_blend = torch.empty(n, 3, dtype=torch.float32) if d is not None else None
    chunks = split_range(n, max(1, min(torch.get_num_threads(), n // MIN_SAMPLES_PER_THREAD)))
    status = torch.zeros(max(len(chunks), 1), dtype=torch.int32)
    mask_cells = mask[0].contiguous() if mask is not None else None
    mask_args = (mask_cells.data_ptr(), mask[1]) if mask is not None else (None, 0)
    head = (x.data_ptr(), d.data_ptr() if d is not None else None, *(b.data_ptr() for b in boxes), float(margin))
    head = (*head, *mask_args)
    tail = (feats.data_ptr(), weight_sum.data_ptr(), d_blend.data_ptr() if d_blend is not None else None)
    lv = _level_args(config)
    calls = []
    for k, (a, b) in enumerate(chunks):  # each chunk reports its own status
        args = (a, b, n_bones, *head, table.data_ptr(), config.n_entries, *lv, *tail, status[k:].data_ptr())
        calls.append((lib.hg_blend_forward, args))
    if calls:
        run_calls(calls)
    if bool(status.any()):
        raise MemoryError("blend_encode_cpu: the C kernel could not allocate its pair buffers")
    return feats, weight_sum, d_blend
