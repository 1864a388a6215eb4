"""Multi-bone hash grid vs an independent per-point pure-Python reference of tcnn's formulas (§A2-A5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fast_anerf.encoding.backend import resolve_backend, tcnn_available
from fast_anerf.encoding.hashgrid import (
    HashGridConfig,
    MultiBoneHashGrid,
    hashgrid_naive,
    hashgrid_torch,
)
from fast_anerf.errors import UserError

P = (1, 2654435761, 805459861)
U32 = 0xFFFFFFFF

# Levels 0-2 dense (64 entries = 4^3, 344 >= 7^3 with 1 padding entry, 1336 >= 11^3, not powers of two),
# levels 3-5 hashed into 4096 entries.
SMALL = HashGridConfig(n_levels=6, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4, per_level_scale=1.6)
# Integer scales 1, 3, 7, 15: at x=1 the +1 corner sits at index res and wraps; level 3 is hashed.
POW2 = HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=11, base_resolution=2, per_level_scale=2.0)


def ref_layout(cfg: HashGridConfig):
    """Per level (scale, res, size, offset, dense) straight from the spec, with numpy float32."""
    log2s = np.float32(np.log2(np.float64(np.float32(cfg.per_level_scale))))
    levels, off = [], 0
    for lvl in range(cfg.n_levels):
        e = np.float32(np.exp2(np.float64(np.float32(lvl) * log2s)))
        scale = np.float32(np.float64(e) * cfg.base_resolution - 1.0)
        res = math.ceil(float(scale)) + 1
        size = min((min(res**3, 2**31 - 1) + 7) // 8 * 8, 2**cfg.log2_hashmap_size)
        levels.append((scale, res, size, off, res <= 1625 and res**3 <= size))
        off += size
    return levels, off


def ref_corners(x, cfg):
    """Python ints/floats: for each point and level, [(flat entry within a bone, weight)] x 8 corners."""
    levels, _ = ref_layout(cfg)
    out = []
    for pt in x.tolist():
        per_level = []
        for scale, res, size, off, dense in levels:
            pos = [np.float32(np.float64(np.float32(c)) * np.float64(scale) + 0.5) for c in pt]  # fmaf
            cell = [math.floor(p) & U32 for p in pos]  # (uint32)(int)floor
            frac = [float(p) - math.floor(p) for p in pos]
            corners = []
            for c in range(8):
                bits = [(c >> 2) & 1, (c >> 1) & 1, c & 1]
                q = [(cell[d] + bits[d]) & U32 for d in range(3)]
                if dense:
                    idx = (q[0] + q[1] * res + q[2] * res * res) & U32
                else:
                    idx = ((q[0] * P[0]) ^ (q[1] * P[1]) ^ (q[2] * P[2])) & U32
                w = math.prod(frac[d] if bits[d] else 1.0 - frac[d] for d in range(3))
                corners.append((off + idx % size, w))
            per_level.append(corners)
        out.append(per_level)
    return out


def ref_forward(x, bone_ids, params, cfg):
    F = cfg.n_features_per_level
    table = params.double().tolist()
    out = []
    for corners, b in zip(ref_corners(x, cfg), bone_ids.tolist(), strict=True):
        row = []
        for level in corners:
            row += [sum(w * table[b][e * F + f] for e, w in level) for f in range(F)]
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def ref_differentiable(x, bone_ids, params, cfg):
    """Autograd reference: reference indices, weights from x through plain torch ops."""
    F, L = cfg.n_features_per_level, cfg.n_levels
    levels, n_entries = ref_layout(cfg)
    idx = torch.tensor([[[e for e, _ in lv] for lv in pt] for pt in ref_corners(x.detach(), cfg)])  # [N, L, 8]
    idx = idx + bone_ids[:, None, None] * n_entries
    outs = []
    for lvl, (scale, *_rest) in enumerate(levels):
        pos = (x.double() * float(scale) + 0.5).float()
        f = pos - torch.floor(pos).detach()
        w = torch.stack(
            [math.prod(f[:, d] if (c >> (2 - d)) & 1 else 1.0 - f[:, d] for d in range(3)) for c in range(8)],
            dim=1,
        )  # [N, 8]
        vals = params.reshape(-1, F)[idx[:, lvl]]  # [N, 8, F]
        outs.append((w[..., None] * vals).sum(1))
    return torch.cat(outs, dim=1).reshape(len(x), L * F)


def make_points(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g)
    edge = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.0, 1.0, 1.0], [0.5, 0.5, 1.0]])
    return torch.cat([edge, x])


@pytest.mark.parametrize(
    ("config", "n_params"),
    [
        (HashGridConfig(), 14_229_504),
        (HashGridConfig(per_level_scale=(2048 / 16) ** (1 / 15)), 12_196_240),
        (
            HashGridConfig(n_levels=20, log2_hashmap_size=16, base_resolution=32, per_level_scale=1.5),
            2_555_904,
        ),
    ],
)
def test_param_counts(config, n_params):
    assert config.n_params == n_params
    assert config.level_offsets[-1] * config.n_features_per_level == n_params
    assert config.n_output_dims == config.n_levels * config.n_features_per_level


def test_default_layout():
    cfg = HashGridConfig()
    assert cfg.resolutions[:4] == [16, 32, 64, 128]
    assert cfg.scales[:3] == (15.0, 31.0, 63.0)
    assert cfg.dense_levels == [True] * 3 + [False] * 13
    assert cfg.tcnn_config() == {
        "otype": "HashGrid",
        "n_levels": 16,
        "n_features_per_level": 2,
        "log2_hashmap_size": 19,
        "base_resolution": 16,
        "per_level_scale": 2.0,
        "interpolation": "Linear",
    }
    levels, n_entries = ref_layout(SMALL)
    assert SMALL.level_sizes == [lv[2] for lv in levels] == [64, 344, 1336, 4096, 4096, 4096]
    assert SMALL.dense_levels == [True, True, True, False, False, False]
    assert SMALL.n_entries == n_entries
    with pytest.raises(ValueError, match="n_features_per_level"):
        HashGridConfig(n_features_per_level=3)


@pytest.mark.parametrize(
    "cfg",
    [SMALL, POW2] + [HashGridConfig(4, f, 12, 4, 1.6) for f in (1, 4, 8)],
    ids=["small", "pow2", "F1", "F4", "F8"],
)
def test_forward_matches_python_reference(cfg):
    n_bones = 3
    grid = MultiBoneHashGrid(n_bones, cfg, backend="torch", init_scale=1.0)
    x = make_points(40)
    bone_ids = torch.arange(len(x)) % n_bones
    y = grid(x, bone_ids)
    assert y.shape == (len(x), cfg.n_output_dims) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ref_forward(x, bone_ids, grid.params.detach(), cfg), rtol=0, atol=1e-6)
    # Different bones really use different rows.
    y0 = grid(x, torch.zeros_like(bone_ids))
    assert (y0 - y).abs().max() > 1e-2


def test_out_of_domain_wraps_like_tcnn():
    """Negative cells go through (uint32)(int)floor; dense levels (also non-power-of-two) wrap."""
    x = torch.tensor([[-0.3, 0.2, 1.2], [-1.5, -0.01, 0.5], [1.7, 2.5, -0.9]])
    bone_ids = torch.tensor([0, 1, 1])
    params = torch.empty(2, SMALL.n_params).uniform_(-1, 1)
    y = hashgrid_torch(x, bone_ids, params, SMALL)
    torch.testing.assert_close(y.double(), ref_forward(x, bone_ids, params, SMALL), rtol=0, atol=1e-6)


@pytest.mark.parametrize("save_corners", [True, False])
def test_gradients_match_autograd_reference(save_corners):
    cfg, n_bones = SMALL, 3
    x = make_points(30, seed=1).requires_grad_(True)
    bone_ids = torch.tensor([2, 0, 1, 1, 0] + [i % n_bones for i in range(30)])
    params = torch.empty(n_bones, cfg.n_params).uniform_(-1, 1).requires_grad_(True)
    grad_out = torch.randn(len(x), cfg.n_output_dims)

    y = hashgrid_torch(x, bone_ids, params, cfg, save_corners=save_corners)
    gx, gp = torch.autograd.grad(y, [x, params], grad_out)
    y_ref = ref_differentiable(x, bone_ids, params, cfg)
    gx_ref, gp_ref = torch.autograd.grad(y_ref, [x, params], grad_out)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(gp, gp_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)

    y_naive = hashgrid_naive(x, bone_ids, params, cfg)
    gx_n, gp_n = torch.autograd.grad(y_naive, [x, params], grad_out)
    torch.testing.assert_close(y_naive, y, rtol=0, atol=1e-6)
    torch.testing.assert_close(gp_n, gp, rtol=0, atol=1e-5)
    torch.testing.assert_close(gx_n, gx, rtol=1e-5, atol=1e-5)


def test_param_grad_only_when_x_is_constant():
    grid = MultiBoneHashGrid(2, SMALL, backend="torch")
    x = torch.rand(50, 3)
    bone_ids = torch.randint(0, 2, (50,))
    with torch.no_grad():
        grid.params.uniform_(-1, 1)  # non-zero features, so the squared loss has a non-zero gradient
    grid(x, bone_ids).square().sum().backward()
    assert x.grad is None
    params = grid.params.detach().clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(hashgrid_naive(x, bone_ids, params, SMALL).square().sum(), params)
    torch.testing.assert_close(grid.params.grad, reference, rtol=1e-5, atol=1e-6)
    assert float(reference.abs().max()) > 0.1


def test_inplace_grad_accumulates_into_existing_grad():
    x, bone_ids = torch.rand(64, 3), torch.randint(0, 3, (64,))
    grid = MultiBoneHashGrid(3, SMALL, backend="torch", init_scale=1.0, inplace_grad=True)
    grid(x, bone_ids).sum().backward()  # no .grad yet: the normal path allocates it
    first = grid.params.grad.clone()
    params = grid.params.detach().clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(hashgrid_naive(x, bone_ids, params, SMALL).sum(), params)
    torch.testing.assert_close(first, reference, rtol=1e-5, atol=1e-6)  # the sum's gradient: interpolation weights
    buffer = grid.params.grad
    grid(x, bone_ids).sum().backward()  # .grad exists: added in place, same tensor
    assert grid.params.grad is buffer
    torch.testing.assert_close(grid.params.grad, 2 * first)


def test_module_interface_and_errors():
    grid = MultiBoneHashGrid(4, SMALL, backend="torch")
    assert grid.backend_name == "torch"
    assert grid.params.shape == (4, SMALL.n_params) and grid.params.abs().max() <= 1e-4
    assert grid(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).shape == (0, SMALL.n_output_dims)
    with pytest.raises(ValueError, match="bone_ids"):
        grid(torch.rand(2, 3), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        grid(torch.rand(2, 2), torch.tensor([0, 1]))
    assert set(grid.state_dict()) == {"params"}


def test_no_preset_puts_a_level_on_a_whole_number_scale():
    """Levels whose scale is a whole number reached through exp2f of a fraction (specs §A2) may get another
    resolution from tcnn on a GPU than from the CPU backends: no preset has one, whatever its grid."""
    from fast_anerf.config import FastFieldConfig, list_presets, load_preset

    assert HashGridConfig(n_levels=8, base_resolution=4, per_level_scale=1.5).integral_scale_levels == [1, 2]
    assert HashGridConfig(n_levels=5, base_resolution=16, per_level_scale=2.0).integral_scale_levels == []  # 2^l
    same = HashGridConfig(n_levels=8, base_resolution=4, per_level_scale=1.49999)
    assert same.resolutions == HashGridConfig(n_levels=8, base_resolution=4, per_level_scale=1.5).resolutions
    for fast in [FastFieldConfig()] + [load_preset(name).fast for name in list_presets()]:
        assert fast.hashgrid.integral_scale_levels == [], fast


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_tcnn_backend_unavailable_is_a_user_error():
    assert resolve_backend("auto", "cpu") in ("torch", "cpu")  # cpu: the C kernels (test_hashgrid_cpu.py)
    with pytest.raises(UserError, match="tinycudann is unavailable.*--backend torch.*install tinycudann"):
        MultiBoneHashGrid(2, SMALL, backend="tcnn")
    with pytest.raises(UserError, match="unknown backend"):
        resolve_backend("cuda")


@pytest.mark.skipif(not torch.cuda.is_available() or not tcnn_available(), reason="needs CUDA and tinycudann")
@pytest.mark.parametrize(
    "cfg",
    [
        HashGridConfig(n_levels=8, log2_hashmap_size=14, base_resolution=8, per_level_scale=1.7),
        # pls 1.5 (the demo preset's until it became 1.49999): levels 1 and 2 have exactly integral scales (5.0,
        # 8.0), where a GPU exp2f one ulp high would give tcnn other resolutions than ours (specs §A2); this
        # shows whether it does.
        HashGridConfig(
            n_levels=8, n_features_per_level=2, log2_hashmap_size=14, base_resolution=4, per_level_scale=1.5
        ),
    ],
    ids=["scale1.7", "demo"],
)
def test_tcnn_matches_torch(cfg):
    grid = MultiBoneHashGrid(3, cfg, backend="tcnn", init_scale=1.0).cuda()
    assert grid.backend_name == "tcnn"
    x = make_points(1000).cuda().requires_grad_(True)
    bone_ids = torch.randint(0, 3, (len(x),), device="cuda")
    grad_out = torch.randn(len(x), cfg.n_output_dims, device="cuda")
    y = grid(x, bone_ids)
    gx, gp = torch.autograd.grad(y, [x, grid.params], grad_out)
    y_t = hashgrid_torch(x, bone_ids, grid.params, cfg)
    gx_t, gp_t = torch.autograd.grad(y_t, [x, grid.params], grad_out)
    torch.testing.assert_close(y, y_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gp, gp_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, gx_t, rtol=1e-4, atol=1e-4)
