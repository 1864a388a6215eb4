"""Per-bone multiresolution hash grids in tiny-cuda-nn's exact layout (specs/tcnn_nerfacc.md §A).

One ``[n_bones, n_params]`` fp32 Parameter holds every bone's table; row ``b`` is exactly the ``params``
vector of ``tcnn.Encoding(3, config.tcnn_config(), dtype=torch.float32)``, so checkpoints move between the
torch and tcnn backends. Entry ``e`` of level ``l``, feature ``f`` is ``params[b, (offset[l]+e)*F + f]``.

Per level ``l`` (float32 like tcnn): ``scale = exp2(l*log2(pls))*base - 1``, ``res = ceil(scale)+1``;
``pos = fma(scale, x, 0.5)``, ``cell = (uint32)(int)floor(pos)``, linear weights ``pos - floor(pos)``.
The index is dense (``Σ cell_d * res^d``, dim 0 fastest) when ``res^3`` fits the level's table, else the
CoherentPrime hash (XOR of ``cell_d * P_d``), both in uint32 and then ``% level_size``. Nothing is
clamped: the ``+0.5`` offset makes the ``+1`` corner at x=1 land on index ``res`` and wrap, as in tcnn.

Speed on CPU (scripts/bench_hashgrid.py; 65,536 points, 24 bones, L16 F2 T19, AMD EPYC, 2 threads,
best of 5): forward ~110 ms; forward+backward ~250 ms with ``inplace_grad`` (~620 ms when backward must
allocate a fresh dense gradient) vs ~930 ms through plain autograd (``hashgrid_naive``). What matters,
in order: page faults of fresh large tensors (work level by level, reuse ``.grad``), a 1-D
``index_add_`` on a complex64 view (F=2 entries as one element) instead of the per-row 2-D path, the
per-level scatters run on 2 threads, int32 index math with points as the fast axis. Sorting points by
bone helps only ~5-10% for uniform points.

Optimizer cost (same machine, 24 bones x 14,229,504 params = 341 M floats, 1.37 GB per copy): a dense Adam
step takes ~1.9-2.6 s (for-loop), ~0.8-2.0 s (``foreach``), ~0.11-0.2 s (``fused=True``: used on CPU). A
fresh dense gradient costs ~0.4-0.6 s of page faults per step; ``inplace_grad=True`` with ``zero_grad(
set_to_none=False)`` avoids it (~30 ms to zero). A lazy (SparseAdam-like) step would touch <= 8.4 M of 170 M
entries but save only ~0.1-0.2 s, with other Adam semantics: not done.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from fast_anerf.encoding.backend import check_backend, resolve_backend, tcnn_module
from fast_anerf.encoding.hashgrid_cpu import hashgrid_cpu, require_float32

PRIMES = (1, 2654435761, 805459861)  # tcnn CoherentPrime for dims 0..2 (§A4)
MAX_DENSE_RES = 1625  # tcnn MAX_BASES[3]: above it the dense stride is 0xFFFFFFFF (always hashed)
TCNN_BATCH_GRANULARITY = 256  # tcnn pads batches to a multiple of this

_POOL: dict[tuple[int, int], ThreadPoolExecutor] = {}  # per (pid, threads): forked children get new ones


def thread_pool() -> ThreadPoolExecutor | None:
    """Worker threads for the plain-PyTorch hash grid's per-level scatters (None with one torch thread)."""
    n = torch.get_num_threads()
    if n < 2:
        return None
    key = (os.getpid(), n)
    if key not in _POOL:
        # Every worker flushes denormals like the trainer's main thread (the flag is per thread): otherwise a
        # level's scatter rounds differently depending on which worker runs it, and runs stop being repeatable.
        _POOL[key] = ThreadPoolExecutor(
            max_workers=n, thread_name_prefix="fast_anerf", initializer=torch.set_flush_denormal, initargs=(True,)
        )
    return _POOL[key]


def _i32(v: int) -> int:
    """A uint32 constant as the int32 with the same bits (int32 math then wraps exactly like uint32)."""
    return v - (1 << 32) if v >= (1 << 31) else v


@dataclass(frozen=True)
class HashGridConfig:
    """tcnn ``HashGrid`` settings (3-D input, Linear interpolation, CoherentPrime hash).

    ``per_level_scale`` is rounded to float32 like tcnn's JSON reader. Beware scales that land exactly on
    integers through a fractional power (``integral_scale_levels``; pls=1.5, base 16: 23, 35, 53, 80 on levels
    1-4): CUDA's approximate ``exp2f`` may put the device scale 1 ulp higher, a resolution one larger than the
    layout's (spec §A2). Prefer pls=2.0 or generic values (1.49999 for 1.5) until a GPU golden test settles it.
    """

    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.n_levels <= 128:
            raise ValueError(f"n_levels must be in 1..128 (tcnn MAX_N_LEVELS), got {self.n_levels}")
        if self.n_features_per_level not in (1, 2, 4, 8):
            raise ValueError(f"n_features_per_level must be 1, 2, 4 or 8, got {self.n_features_per_level}")
        if not 1 <= self.log2_hashmap_size <= 30:
            raise ValueError(f"log2_hashmap_size must be in 1..30, got {self.log2_hashmap_size}")
        if self.base_resolution < 1 or not self.per_level_scale >= 1.0:
            raise ValueError("base_resolution must be >= 1 and per_level_scale >= 1.0")

    @functools.cached_property  # every encode call reads the layout: compute it once (frozen: safe)
    def exponents(self) -> tuple[float, ...]:
        """Per-level ``l * log2(per_level_scale)`` as tcnn computes them: float32 product of float32 values."""
        pls32 = float(torch.tensor(self.per_level_scale, dtype=torch.float32))
        log2s = float(torch.tensor(math.log2(pls32), dtype=torch.float32))  # std::log2 on a float
        return tuple(float(torch.tensor(lvl * log2s, dtype=torch.float32)) for lvl in range(self.n_levels))

    @functools.cached_property
    def scales(self) -> tuple[float, ...]:
        """Per-level ``scale_l`` as float32 values (cells per unit minus nothing: x*scale+0.5 = pos)."""
        out = []
        for expo in self.exponents:
            e = float(torch.tensor(2.0**expo, dtype=torch.float32))  # exp2f, correctly rounded
            # e*base - 1 is exact in float64, so one rounding to float32 = the device's fused fma.
            out.append(float(torch.tensor(e * self.base_resolution - 1.0, dtype=torch.float32)))
        return tuple(out)

    @property
    def integral_scale_levels(self) -> list[int]:
        """Levels whose scale is a whole number reached by ``exp2f`` of a fraction (pls 1.5: levels 1, 2), which
        tcnn recomputes on the GPU with an approximate ``exp2f``: one ulp high is a resolution one larger (§A2)."""
        pairs = zip(self.exponents, self.scales, strict=True)
        return [lvl for lvl, (e, s) in enumerate(pairs) if s == math.floor(s) and e != math.floor(e)]

    @property
    def resolutions(self) -> list[int]:
        """Vertices per axis on each level: ``ceil(scale_l) + 1``."""
        return [math.ceil(s) + 1 for s in self.scales]

    @property
    def level_sizes(self) -> list[int]:
        """Table entries per level: next multiple of 8 of ``res^3``, capped at ``2^T``."""
        cap = 1 << self.log2_hashmap_size
        return [min((min(r**3, 2**31 - 1) + 7) // 8 * 8, cap) for r in self.resolutions]

    @property
    def level_offsets(self) -> list[int]:
        """Entry offsets, length ``L+1``; ``level_offsets[-1]`` is the entries per bone."""
        offs = [0]
        for s in self.level_sizes:
            offs.append(offs[-1] + s)
        return offs

    @property
    def dense_levels(self) -> list[bool]:
        """True where a level is indexed densely (``res^3 <= level size``), False where hashed."""
        return [r <= MAX_DENSE_RES and r**3 <= s for r, s in zip(self.resolutions, self.level_sizes, strict=True)]

    @property
    def n_entries(self) -> int:
        return self.level_offsets[-1]

    @property
    def n_params(self) -> int:
        """Floats per bone (= ``tcnn.Encoding(...).params.numel()``)."""
        return self.n_entries * self.n_features_per_level

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level

    def tcnn_config(self) -> dict:
        """The tcnn encoding JSON for this grid."""
        return {
            "otype": "HashGrid",
            "n_levels": self.n_levels,
            "n_features_per_level": self.n_features_per_level,
            "log2_hashmap_size": self.log2_hashmap_size,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
            "interpolation": "Linear",
        }


@functools.lru_cache(maxsize=32)
def _levels(config: HashGridConfig) -> list[tuple[float, tuple[int, int, int], bool, int, int]]:
    """Per level: (scale, int32 multipliers per dim, dense?, level size, entry offset)."""
    out = []
    for scale, res, dense, size, off in zip(
        config.scales,
        config.resolutions,
        config.dense_levels,
        config.level_sizes,
        config.level_offsets[:-1],
        strict=True,
    ):
        mult = (1, res, res * res) if dense else tuple(_i32(p) for p in PRIMES)
        out.append((scale, mult, dense, size, off))
    return out


def _level_corners(x_t: Tensor, base: Tensor, level: tuple) -> tuple[Tensor, Tensor, Tensor]:
    """One level's 8 corners for ``x_t [3, N]`` float64 and ``base [N]`` (bone_id * n_entries).

    Returns ``idx [8, N]`` (dtype of ``base``), ``w [8, N]`` float32, ``frac [3, N]`` float32. Corner
    ``c = 4*b0 + 2*b1 + b2`` takes ``cell_d + b_d``. Points are the fast axis so every op vectorises.
    """
    scale, mult, dense, size, off = level
    pos = (x_t * scale + 0.5).to(torch.float32)  # float32*float32+0.5 is exact in float64: fmaf emulation
    fl = torch.floor(pos)
    frac = pos - fl
    # (int)floor times the axis multiplier; int32 math wraps mod 2^32 = tcnn's uint32, bit for bit. The
    # multipliers stay Python ints (already int32 values): a tensor of them would be a host-to-GPU copy per level.
    c0 = fl.to(torch.int32)
    c0 = [c0[i] * mult[i] for i in range(3)]
    a, b, d = (torch.stack([c0[i], c0[i] + mult[i]]) for i in range(3))  # [2, N] each: corner bit 0 / 1
    a, b, d = a[:, None, None], b[None, :, None], d[None, None, :]
    raw = ((a + b + d) if dense else (a ^ b ^ d)).reshape(8, -1)
    if size & (size - 1) == 0:
        loc = raw & (size - 1)  # power-of-two size: the low bits of the uint32 are uint32 % size
    else:
        loc = ((raw.to(torch.int64) & 0xFFFFFFFF) % size).to(torch.int32)  # uint32 % size
    idx = loc.to(base.dtype) + (base + off)
    wx = torch.stack([1.0 - frac, frac], dim=1)  # [3, 2, N]
    w = (wx[0][:, None, None] * wx[1][None, :, None] * wx[2][None, None, :]).reshape(8, -1)
    return idx, w, frac


def _bases(bone_ids: Tensor, config: HashGridConfig, n_bones: int) -> Tensor:
    """``bone_ids * n_entries`` as int32 when the whole table fits int32 indices, else int64."""
    ity = torch.int64 if n_bones * config.n_entries >= 2**31 else torch.int32
    return bone_ids.to(ity) * config.n_entries


def hashgrid_corners(x: Tensor, bone_ids: Tensor, config: HashGridConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Table entries and trilinear weights of the 8 corners around each point on every level.

    Args:
        x: ``[N, 3]`` float32 bone-box-normalised coordinates (domain [0,1]; outside wraps like tcnn).
        bone_ids: ``[N]`` integer bone of each point.
        config: the grid layout.

    Returns:
        ``idx [L, 8, N]`` int64 flat entry index into the ``[n_bones * n_entries]`` table, ``w [L, 8, N]``
        float32 weights, ``frac [L, 3, N]`` float32 in-cell position. No autograd graph is built.
    """
    x_t = x.detach().to(torch.float64).t()
    base = bone_ids.to(torch.int64) * config.n_entries
    per = [_level_corners(x_t, base, lv) for lv in _levels(config)]
    return tuple(torch.stack(t) for t in zip(*per, strict=True))  # type: ignore[return-value]


def _units(table: Tensor, n_features: int) -> tuple[Tensor, int]:
    """A 1-D view of the flat table in 'units' gathered/scattered as one element.

    F=2 -> one complex64 per entry (8-byte gathers and a tight 1-D ``index_add_``, ~3x faster than a
    2-D ``index_add_`` whose per-row loop dominates); F=4/8 -> 2/4 complex64 per entry; F=1 -> float32.
    Returns (view, units per entry).
    """
    flat = table.reshape(-1)
    if n_features == 1:
        return flat, 1
    return flat.view(torch.complex64), n_features // 2


def _unit_index(idx: Tensor, per_entry: int) -> Tensor:
    """Entry indices ``[...]`` -> unit indices ``[..., per_entry]`` flattened (identity when 1)."""
    if per_entry == 1:
        return idx.reshape(-1)
    return (idx.reshape(-1, 1) * per_entry + torch.arange(per_entry, device=idx.device)).reshape(-1)


def _gather(table: Tensor, idx: Tensor, n_features: int) -> Tensor:
    """``table[idx]`` for a flat fp32 table: ``idx [...]`` -> ``[..., F]`` float32 (no autograd)."""
    units, per = _units(table, n_features)
    vals = units.index_select(0, _unit_index(idx, per))
    if n_features > 1:
        vals = torch.view_as_real(vals)
    return vals.reshape(*idx.shape, n_features)


def _interp(w: Tensor, vals: Tensor) -> Tensor:
    """``sum_c w[c, n] * vals[c, n, f]`` -> ``[N, F]`` (8 fused multiply-adds beat einsum/bmm here)."""
    out = w[0, :, None] * vals[0]
    for c in range(1, 8):
        out.addcmul_(w[c, :, None], vals[c])
    return out


class _HashGridFunction(torch.autograd.Function):
    """Torch hash grid with a hand-written backward (params by ``index_add_``, x analytically).

    Work is done level by level: every temporary stays small (< 32 MB at 262k points), so glibc reuses
    heap memory instead of mmapping fresh pages; page faults cost more than the arithmetic on CPU.
    """

    @staticmethod
    def forward(ctx, x, bone_ids, params, config, save_corners, inplace_grad):
        n, F, L = len(x), config.n_features_per_level, config.n_levels
        # Sorting by bone keeps each level's gathers inside one bone's table (cache locality, ~5-10%).
        order = torch.argsort(bone_ids)
        x_t = x.detach()[order].to(torch.float64).t()  # [3, N]
        base = _bases(bone_ids[order], config, len(params))
        table = params.detach()
        out_s = torch.empty(n, L, F, dtype=torch.float32, device=x.device)
        saved = []
        for lvl, level in enumerate(_levels(config)):
            idx, w, frac = _level_corners(x_t, base, level)
            out_s[:, lvl] = _interp(w, _gather(table, idx, F))
            if save_corners:
                saved += [idx, w, frac]
        out = torch.empty(n, L * F, dtype=torch.float32, device=x.device)
        out[order] = out_s.reshape(n, L * F)
        ctx.config, ctx.inplace_grad, ctx.params_ref = config, inplace_grad, params
        ctx.save_corners = save_corners
        ctx.save_for_backward(order, *(saved if save_corners else [x_t, base]))
        return out

    @staticmethod
    @once_differentiable  # no double backward (e.g. eikonal terms): a clear error instead of wrong zeros
    def backward(ctx, grad_out):
        config = ctx.config
        F, L = config.n_features_per_level, config.n_levels
        order, *saved = ctx.saved_tensors
        params = ctx.params_ref
        g = grad_out[order].reshape(-1, L, F)  # [N, L, F] in sorted order
        units = per = grad_params = grad_xs = None
        if ctx.needs_input_grad[2]:
            if ctx.inplace_grad and params.grad is not None:
                target = params.grad  # add straight into the existing .grad; autograd then gets None
            else:
                target = grad_params = torch.zeros_like(params, dtype=torch.float32)
            units, per = _units(target, F)
        if ctx.needs_input_grad[0]:
            grad_xs = torch.zeros(3, len(order), dtype=torch.float32, device=grad_out.device)
        pending = []  # CPU index_add_ is single-threaded; levels own disjoint table ranges -> run in parallel
        pool = thread_pool() if grad_out.device.type == "cpu" else None
        for lvl, level in enumerate(_levels(config)):
            if ctx.save_corners:
                idx, w, frac = saved[3 * lvl : 3 * lvl + 3]
            else:  # recompute instead of holding ~76 B x L per point between forward and backward
                idx, w, frac = _level_corners(saved[0], saved[1], level)
            g_l = g[:, lvl].contiguous()  # [N, F]
            if units is not None:
                gv = w[:, :, None] * g_l[None]  # [8, N, F]
                src = gv.reshape(-1) if F == 1 else torch.view_as_complex(gv.reshape(-1, 2))
                if pool is None:
                    units.index_add_(0, _unit_index(idx, per), src)
                else:
                    pending.append(pool.submit(units.index_add_, 0, _unit_index(idx, per), src))
            if grad_xs is not None:
                vg = (_gather(params.detach(), idx, F) * g_l[None]).sum(-1).reshape(2, 2, 2, -1)
                wx = torch.stack([1.0 - frac, frac], dim=1)  # [3, 2, N]
                # d/df_d of prod_e wx_e[b_e] is +-1 on dim d times the other two dims' weights.
                d0 = ((vg[1] - vg[0]) * (wx[1][:, None] * wx[2][None])).sum((0, 1))
                d1 = ((vg[:, 1] - vg[:, 0]) * (wx[0][:, None] * wx[2][None])).sum((0, 1))
                d2 = ((vg[:, :, 1] - vg[:, :, 0]) * (wx[0][:, None] * wx[1][None])).sum((0, 1))
                grad_xs.add_(torch.stack([d0, d1, d2]), alpha=level[0])  # dpos/dx = scale
        for fut in pending:
            fut.result()
        grad_x = None
        if grad_xs is not None:
            grad_x = torch.empty(len(order), 3, dtype=torch.float32, device=grad_out.device)
            grad_x[order] = grad_xs.t()
        return grad_x, None, grad_params, None, None, None


def hashgrid_torch(
    x: Tensor,
    bone_ids: Tensor,
    params: Tensor,
    config: HashGridConfig,
    save_corners: bool = True,
    inplace_grad: bool = False,
) -> Tensor:
    """Fast pure-torch multi-bone hash grid: ``x [N, 3]``, ``bone_ids [N]``, ``params [B, n_params]``
    -> ``[N, L*F]`` (column ``l*F + f``). ``save_corners`` keeps corner indices/weights for backward
    (~76 B x L per point) instead of recomputing them; see ``MultiBoneHashGrid`` for ``inplace_grad``.
    """
    # Without a backward to come (rendering, the visibility pass) nothing needs saving: ~76 B x L per point less.
    save_corners = save_corners and torch.is_grad_enabled() and (x.requires_grad or params.requires_grad)
    require_float32(params)
    return _HashGridFunction.apply(x, bone_ids, params, config, save_corners, inplace_grad)


def hashgrid_naive(x: Tensor, bone_ids: Tensor, params: Tensor, config: HashGridConfig) -> Tensor:
    """The same function through plain autograd (reference and benchmark baseline; slower).

    One ``index_select`` for all levels: autograd's backward is then a single 2-D ``index_add_`` into a
    fresh dense zeros table (a per-level gather would allocate and sum L dense tables).
    """
    F, L = config.n_features_per_level, config.n_levels
    idx, _, _ = hashgrid_corners(x, bone_ids, config)  # [L, 8, N]
    scales = torch.tensor(config.scales, dtype=torch.float64, device=x.device)
    pos = (x.to(torch.float64).t()[None] * scales[:, None, None] + 0.5).to(torch.float32)  # [L, 3, N]
    f = pos - torch.floor(pos).detach()  # dpos/dx = scale through autograd
    wx = torch.stack([1.0 - f, f], dim=2)  # [L, 3, 2, N]
    w = (wx[:, 0, :, None, None] * wx[:, 1, None, :, None] * wx[:, 2, None, None, :]).reshape(L, 8, -1)
    vals = params.reshape(-1, F).index_select(0, idx.reshape(-1)).reshape(L, 8, len(x), F)
    return (w[..., None] * vals).sum(1).transpose(0, 1).reshape(len(x), L * F)


class MultiBoneHashGrid(nn.Module):
    """``n_bones`` tcnn-layout hash grids evaluated in one vectorised call.

    Args:
        n_bones: number of independent grids (one per bone).
        config: the shared grid layout.
        backend: ``"auto"`` (tcnn on CUDA when importable, the fused C kernels on the CPU when they build,
            else torch), ``"torch"``, ``"cpu"`` or ``"tcnn"`` (``UserError`` when the one asked for cannot run).
        init_scale: params start ``U(-init_scale, init_scale)`` (tcnn uses 1e-4).
        inplace_grad: torch and cpu backends. When ``params.grad`` already exists (train with
            ``optimizer.zero_grad(set_to_none=False)``), backward adds into it instead of allocating a fresh
            dense ``[n_bones, n_params]`` gradient (~0.3-0.6 s of page faults per step at 24 x 2^19 on CPU).
            Do not combine with ``torch.autograd.grad`` or ``backward(inputs=...)`` while ``params`` require
            grad: a backward cannot tell which gradients its caller wants, so it adds the table's into
            ``params.grad`` even when only ``x``'s was asked for (freeze the grid first, as ``refine`` does).

    ``params`` ``[n_bones, n_params]`` fp32 is the only state; row ``b`` is a tcnn ``Encoding`` params vector.
    """

    def __init__(
        self,
        n_bones: int,
        config: HashGridConfig,
        backend: Literal["auto", "torch", "cpu", "tcnn"] = "auto",
        init_scale: float = 1e-4,
        inplace_grad: bool = False,
    ) -> None:
        super().__init__()
        self.n_bones, self.config, self.backend = n_bones, config, backend
        self.inplace_grad = inplace_grad
        check_backend(backend)  # fail now (one-line UserError) when it cannot run on this machine
        self.params = nn.Parameter(torch.empty(n_bones, config.n_params).uniform_(-init_scale, init_scale))
        self._tcnn_native = None  # tcnn's native encoding object (no state), created on first CUDA call

    @property
    def n_output_dims(self) -> int:
        return self.config.n_output_dims

    @property
    def backend_name(self) -> str:
        """The backend that runs for the params' current device: ``"torch"``, ``"cpu"`` or ``"tcnn"``."""
        return resolve_backend(self.backend, self.params.device)

    def forward(self, x: Tensor, bone_ids: Tensor) -> Tensor:
        """Encode points.

        Args:
            x: ``[N, 3]`` coordinates normalised to each bone's box, in [0, 1] (float32; no clamping).
            bone_ids: ``[N]`` integer (long) bone index of each point, in ``[0, n_bones)``.

        Returns:
            ``[N, L*F]`` float32 features; column ``l*F + f`` is feature ``f`` of level ``l``.
        """
        if x.ndim != 2 or x.shape[1] != 3 or bone_ids.shape != x.shape[:1]:
            raise ValueError(f"expected x [N, 3] and bone_ids [N], got {tuple(x.shape)}, {tuple(bone_ids.shape)}")
        x = x.to(torch.float32)
        if len(x) == 0:
            return x.new_zeros(0, self.n_output_dims)
        if not bone_ids.is_cuda:  # on CUDA the check would cost two host syncs per call; the field's ids are valid
            lo, hi = int(bone_ids.min()), int(bone_ids.max())
            if lo < 0 or hi >= self.n_bones:
                raise ValueError(f"bone_ids must be in [0, {self.n_bones}), got [{lo}, {hi}]")
        backend = self.backend_name
        if backend == "tcnn":
            return self._forward_tcnn(x, bone_ids)
        if backend == "cpu":
            return hashgrid_cpu(x, bone_ids, self.params, self.config, inplace_grad=self.inplace_grad)
        return hashgrid_torch(x, bone_ids, self.params, self.config, inplace_grad=self.inplace_grad)

    def _forward_tcnn(self, x: Tensor, bone_ids: Tensor) -> Tensor:
        """One fp32 tcnn encoding call per bone present, each fed its own row of ``params``.

        tcnn's autograd function takes the params tensor as an argument, so the rows (views from
        ``unbind``, whose backward stacks all row gradients once) stay the only state.
        """
        tcnn = tcnn_module()
        if self._tcnn_native is None:
            if self.config.integral_scale_levels:
                print(f"warning: hash-grid levels {self.config.integral_scale_levels} have whole-number scales "
                      f"(per_level_scale {self.config.per_level_scale}): tiny-cuda-nn may index them otherwise than "
                      "the CPU backends, so this model may not move between backends; a per_level_scale such as "
                      "1.49999 for 1.5 avoids it", file=sys.stderr)  # fmt: skip
            enc = tcnn.Encoding(3, self.config.tcnn_config(), dtype=torch.float32)
            if enc.params.numel() != self.config.n_params:
                raise RuntimeError(f"tcnn has {enc.params.numel()} params, layout says {self.config.n_params}")
            self._tcnn_native = enc.native_tcnn_module
        order = torch.argsort(bone_ids)
        counts = torch.bincount(bone_ids, minlength=self.n_bones).tolist()
        rows = self.params.unbind(0)
        xs, parts, start = x[order].contiguous(), [], 0
        for b, count in enumerate(counts):
            if count == 0:
                continue
            xb = xs[start : start + count]
            pad = -count % TCNN_BATCH_GRANULARITY
            xb = torch.nn.functional.pad(xb, (0, 0, 0, pad)) if pad else xb
            yb = tcnn.modules._module_function.apply(self._tcnn_native, xb, rows[b].contiguous(), 1.0)
            parts.append(yb[:count].to(torch.float32))
            start += count
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return torch.cat(parts)[inverse]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tcnn_native"] = None  # native objects do not pickle; recreated lazily
        return state

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"n_bones={self.n_bones}, L={c.n_levels}, F={c.n_features_per_level}, T={c.log2_hashmap_size}, "
            f"base={c.base_resolution}, pls={c.per_level_scale:.6g}, n_params/bone={c.n_params}, "
            f"backend={self.backend}"
        )
