"""Dtypes other than the training's float32: the C kernels write float32 whatever torch's default dtype is, the
hash tables refuse to be anything but float32 (the kernels would read other numbers, or past the table's end),
and float64 samples or ray lengths give the float32 results."""

from __future__ import annotations

import pytest
import torch
from test_march import _scene

from fast_anerf.bone_boxes import ray_box_intervals
from fast_anerf.config import RunConfig
from fast_anerf.data.synthetic import builtin_rest_pose
from fast_anerf.encoding.hashgrid import HashGridConfig, MultiBoneHashGrid, hashgrid_torch
from fast_anerf.encoding.hashgrid_cpu import cpu_kernels_available, hashgrid_cpu, load_kernels
from fast_anerf.model import Character
from fast_anerf.renderer import rays_to_bones
from fast_anerf.sampling.march import box_intervals, march_occupied

needs_kernels = pytest.mark.skipif(not cpu_kernels_available(), reason=f"C kernels unavailable: {load_kernels()[1]}")
CONFIG = HashGridConfig(n_levels=3, n_features_per_level=2, log2_hashmap_size=8, base_resolution=4,
                        per_level_scale=1.45)  # fmt: skip


@pytest.fixture
def default_dtype():
    """Set torch's default dtype for one test (a notebook set up for gradcheck does this), then restore it."""
    before = torch.get_default_dtype()
    yield torch.set_default_dtype
    torch.set_default_dtype(before)


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_kernels)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_hash_tables_must_stay_float32(backend, dtype):
    grid = MultiBoneHashGrid(2, CONFIG, backend=backend)
    x, ids = torch.rand(5, 3), torch.tensor([0, 1, 0, 1, 1])
    grid.to(dtype)
    with pytest.raises(TypeError, match=f"hash-grid parameters must be float32 .*, got {dtype}; keep the encoding "):
        grid(x, ids)


@needs_kernels
@pytest.mark.parametrize("default", [torch.float64, torch.float16])
def test_c_kernels_write_float32_whatever_the_default_dtype(default_dtype, default):
    g = torch.Generator().manual_seed(0)
    origins = torch.rand(64, 3, 3, generator=g, dtype=torch.float32) * 3 - 1
    directions = torch.randn(64, 3, 3, generator=g, dtype=torch.float32)
    box_min, box_max = torch.zeros(3, 3), torch.ones(3, 3)
    x = torch.rand(50, 3, generator=g, dtype=torch.float32).requires_grad_()
    ids = torch.randint(0, 2, (50,), generator=g)
    params = torch.rand(2, CONFIG.n_params, generator=g, dtype=torch.float32)
    expected = ray_box_intervals(origins, directions, box_min, box_max)
    (twin_grad,) = torch.autograd.grad(hashgrid_torch(x, ids, params, CONFIG).square().sum(), x)
    default_dtype(default)  # buffers the kernels write were allocated in this dtype: garbage, or a heap overflow
    got = box_intervals(origins, directions, box_min, box_max)
    (grad,) = torch.autograd.grad(hashgrid_cpu(x, ids, params, CONFIG).square().sum(), x)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    torch.testing.assert_close(grad, twin_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_kernels)])
def test_float64_samples_give_the_float32_field(backend):
    rest = torch.as_tensor(builtin_rest_pose(), dtype=torch.float32)
    field = Character(RunConfig(), rest, 1, backend=backend).field
    g = torch.Generator().manual_seed(1)
    x = field.box_min + torch.rand(6, 24, 3, generator=g) * field.box_size  # [6, 24, 3] inside every box
    d = torch.nn.functional.normalize(torch.randn(6, 24, 3, generator=g), dim=-1)
    frames = torch.zeros(6, dtype=torch.long)
    for grad in (False, True):  # the PyTorch blend (with grad) mixed float32 features with float64 weights
        with torch.set_grad_enabled(grad):
            sigma, rgb = field(x, d, frames)
            sigma64, rgb64 = field(x.double(), d.double(), frames)
        torch.testing.assert_close(sigma64, sigma)
        torch.testing.assert_close(rgb64, rgb)


def test_float64_ray_lengths_march_the_same_samples():
    occupancy, skts, rays_o, rays_d = _scene(occupied=0.5, n_rays=300, seed=0, dtype=torch.float32)
    origins, directions = rays_to_bones(rays_o, rays_d, skts)
    t_in, t_out, hit = ray_box_intervals(origins, directions, occupancy.box_min,
                                         occupancy.box_min + occupancy.box_size)  # fmt: skip
    scale = rays_d.norm(dim=-1)
    args = (origins, directions, occupancy, 0.01)
    expected = march_occupied(t_in, t_out, hit, scale, *args, backend="torch")
    got = march_occupied(t_in, t_out, hit, scale.double(), *args, backend="auto")  # C loop read float64 as float32
    assert len(expected[0]) > 1000
    assert torch.equal(got[0], expected[0]) and torch.allclose(got[1].float(), expected[1])
