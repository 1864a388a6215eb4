"""Occupancy marching: the packed torch path against brute-force dense sampling, the C loop (CPU) and nerfacc's
path (CUDA) against the torch path."""

import warnings

import pytest
import torch

from fast_anerf.bone_boxes import bone_boxes, ray_box_intervals
from fast_anerf.ckernels import load_library
from fast_anerf.config import FastFieldConfig
from fast_anerf.data.synthetic import builtin_rest_pose
from fast_anerf.renderer import rays_to_bones
from fast_anerf.sampling.march import _MARCH_SIGNATURE, MARCH_SOURCE, march_boxes, march_occupied, ray_span
from fast_anerf.sampling.occupancy import BoneOccupancy
from fast_anerf.sampling.volrend import visibility, visibility_progressive
from fast_anerf.skeleton import pose_skeleton


def _scene(resolution=8, occupied=0.4, n_rays=300, seed=0, dtype=torch.float64):
    """A posed skeleton, random rays towards it (some missing every box) and a random occupancy grid."""
    g = torch.Generator().manual_seed(seed)
    rest = torch.as_tensor(builtin_rest_pose(), dtype=torch.float32)
    c = FastFieldConfig()
    box_min, box_max = bone_boxes(rest, c.box_pad, c.torso_pad, c.head_extent, c.hand_extent, c.foot_extent)
    occ = BoneOccupancy(box_min, box_max, resolution)
    occ.binaries.copy_(torch.rand(occ.binaries.shape, generator=g) < occupied)
    bones = torch.randn(24, 3, generator=g) * 0.3
    kp3d, skts = pose_skeleton(rest, bones, torch.tensor([0.1, -0.2, 0.3]))
    rays_o = (torch.randn(n_rays, 3, generator=g) * 0.2 + torch.tensor([0.3, 0.1, 3.0])).to(dtype)
    target = (torch.randn(n_rays, 3, generator=g) * 0.5).to(dtype) + kp3d[0].to(dtype)
    rays_d = (target - rays_o) * (0.5 + torch.rand(n_rays, 1, generator=g, dtype=dtype))  # not unit length
    return occ, skts.to(dtype), rays_o, rays_d


def _march(occ, skts, rays_o, rays_d, step, **kw):
    origins, directions = rays_to_bones(rays_o, rays_d, skts)
    box_min = occ.box_min.to(rays_o.dtype)
    t_in, t_out, hit = ray_box_intervals(origins, directions, box_min, box_min + occ.box_size.to(rays_o.dtype))
    scale = rays_d.norm(dim=-1)
    out = march_occupied(t_in, t_out, hit, scale, origins, directions, occ, step, **kw)
    return out, (t_in, t_out, hit, scale)


def _brute_force(occ, skts, rays_o, rays_d, anchor, dt, n_steps):
    """Every candidate of the t-grid, tested point by point: is it in an occupied cell of a box holding it."""
    k = torch.arange(n_steps, dtype=rays_o.dtype)
    mid = anchor[:, None] + (k + 0.5) * dt[:, None]  # [R, K]
    world = rays_o[:, None] + mid[..., None] * rays_d[:, None]  # [R, K, 3]
    local = torch.einsum("jab,rkb->rkja", skts[:, :3, :3], world) + skts[:, :3, 3]  # [R, K, 24, 3]
    box_min = occ.box_min.to(rays_o.dtype)
    box_max = box_min + occ.box_size.to(rays_o.dtype)
    inside = ((local >= box_min) & (local <= box_max)).all(-1)  # [R, K, 24]
    r = occ.resolution
    cell = ((local - box_min) / (box_max - box_min) * r).floor().long().clamp(0, r - 1)
    bone = torch.arange(24).expand_as(inside)
    occupied = occ.binaries[bone, cell[..., 0], cell[..., 1], cell[..., 2]]
    keep = (inside & occupied).any(-1)
    ray, kk = keep.nonzero(as_tuple=True)
    return ray, mid[ray, kk]


@pytest.mark.parametrize("stratified", [False, True])
def test_torch_marching_equals_brute_force_dense_sampling(stratified):
    occ, skts, rays_o, rays_d = _scene()
    step = 0.02
    gen = torch.Generator().manual_seed(3)
    (ray_idx, t_starts, t_ends), (t_in, t_out, hit, scale) = _march(
        occ, skts, rays_o, rays_d, step, stratified=stratified, generator=gen
    )
    near, far, any_hit = ray_span(t_in, t_out, hit)
    jitter = torch.rand(rays_o.shape[0], generator=torch.Generator().manual_seed(3)).double() if stratified else 0.0
    dt = step / scale
    anchor = near + jitter * dt
    n_steps = int(((far - anchor) / dt).max().ceil()) + 2
    ref_ray, ref_mid = _brute_force(occ, skts, rays_o, rays_d, anchor, dt, n_steps)
    assert ref_ray.numel() > 500  # a meaningful test: many samples, and many candidates dropped
    assert torch.equal(ray_idx, ref_ray)
    torch.testing.assert_close(0.5 * (t_starts + t_ends), ref_mid, rtol=0, atol=1e-9)
    torch.testing.assert_close(t_ends - t_starts, dt[ray_idx], rtol=1e-12, atol=0)
    assert not any_hit.all() and ray_idx.unique().numel() < any_hit.sum()  # misses and fully-empty rays exist


def test_all_occupied_grid_equals_box_marching():
    occ, skts, rays_o, rays_d = _scene(occupied=1.1)
    (ray_idx, t_starts, t_ends), (t_in, t_out, hit, scale) = _march(occ, skts, rays_o, rays_d, 0.02)
    ref = march_boxes(t_in, t_out, hit, scale, step=0.02)
    assert torch.equal(ray_idx, ref[0])
    torch.testing.assert_close(t_starts, ref[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(t_ends, ref[2], rtol=0, atol=1e-12)


def test_stratified_samples_are_jittered_per_bin_as_anerf():
    """A-NeRF's sample_from_lineseg: each of the N samples uniform in its own bin of [near, far] (not one shift
    per ray); unjittered, the bins' centres."""
    t_in, t_out, hit = torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [5.0]]), torch.tensor([[True], [True]])
    n = 64
    ray_idx, t_starts, t_ends = march_boxes(t_in, t_out, hit, torch.ones(2), n_samples=n, stratified=True,
                                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    mid = (0.5 * (t_starts + t_ends)).view(2, n)
    width = (t_out - t_in) / n  # [2, 1]
    offset = (mid - t_in - torch.arange(n) * width) / width  # where in its bin each sample lies, [0, 1)
    assert torch.equal(ray_idx, torch.arange(2).repeat_interleave(n))
    assert ((offset >= 0) & (offset < 1)).all()
    assert offset.std(dim=1).min() > 0.2  # independent per bin (uniform: 0.29); one shift per ray gives 0
    torch.testing.assert_close(t_ends - t_starts, width.expand(2, n).reshape(-1))
    _, starts, ends = march_boxes(t_in, t_out, hit, torch.ones(2), n_samples=n)
    centres = t_in + (torch.arange(n) + 0.5) * width
    torch.testing.assert_close((0.5 * (starts + ends)).view(2, n), centres)


def test_empty_grid_gives_no_samples():
    occ, skts, rays_o, rays_d = _scene(occupied=0.0)
    (ray_idx, t_starts, _), _ = _march(occ, skts, rays_o, rays_d, 0.02)
    assert ray_idx.numel() == 0 and t_starts.numel() == 0


needs_march_kernel = pytest.mark.skipif(
    load_library(MARCH_SOURCE, _MARCH_SIGNATURE)[0] is None,
    reason=f"march kernel unavailable: {load_library(MARCH_SOURCE, _MARCH_SIGNATURE)[1]}",
)


@needs_march_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("stratified", [False, True])
def test_cpu_marching_equals_torch_marching(stratified, threads, monkeypatch):
    """The C loop keeps exactly the twin's candidates (float32, the training dtype), with 1 or 2 threads."""
    monkeypatch.setattr("fast_anerf.sampling.march.MIN_RAYS_PER_THREAD", 16)  # several ray ranges per call
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for seed, occupied in ((0, 0.4), (1, 0.05), (2, 0.9)):
            occ, skts, rays_o, rays_d = _scene(occupied=occupied, n_rays=500, seed=seed, dtype=torch.float32)
            outs = {}
            for backend in ("torch", "cpu"):
                gen = torch.Generator().manual_seed(seed)
                outs[backend], _ = _march(occ, skts, rays_o, rays_d, 0.01, backend=backend, stratified=stratified,
                                          generator=gen)  # fmt: skip
            assert outs["torch"][0].numel() > 300
            for ref, got in zip(outs["torch"], outs["cpu"], strict=True):
                assert torch.equal(ref, got)
    finally:
        torch.set_num_threads(previous)


@needs_march_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_box_intervals_equal_the_pytorch_slab_test(threads, monkeypatch):
    """``march.box_intervals`` (C) gives ``bone_boxes.ray_box_intervals``' bits, axis-parallel rays included."""
    from fast_anerf.sampling.march import box_intervals

    monkeypatch.setattr("fast_anerf.sampling.march.MIN_RAYS_PER_THREAD", 16)  # rays split in chunks
    occ, skts, rays_o, rays_d = _scene(n_rays=3000, dtype=torch.float32)
    rays_d[:100, 0] = 0.0  # parallel to a world axis (the bone frames are rotated: tiny, not zero, there)
    origins, directions = rays_to_bones(rays_o, rays_d, skts)
    directions[:50, :, 1] = 0.0  # exactly parallel to a box face
    directions[50:100, :, 2] = -0.0
    origins[100:150] = occ.box_min + 0.5 * occ.box_size  # starting inside every box
    box_max = occ.box_min + occ.box_size
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = box_intervals(origins, directions, occ.box_min, box_max)
    finally:
        torch.set_num_threads(previous)
    slow = ray_box_intervals(origins, directions, occ.box_min, box_max)
    for got, want in zip(fast, slow, strict=True):
        assert torch.equal(got, want)
    assert 0.05 < float(slow[2].float().mean()) < 0.9 and bool(slow[2][100:150].all())
    float64 = box_intervals(origins.double(), directions.double(), occ.box_min.double(), box_max.double())
    assert float64[0].dtype == torch.float64  # float64 takes the PyTorch function


def test_cpu_marching_refuses_what_it_cannot_run():
    occ, skts, rays_o, rays_d = _scene(n_rays=4)  # float64
    with pytest.raises(ValueError, match="backend 'cpu' cannot run here .*use backend 'torch'"):
        _march(occ, skts, rays_o, rays_d, 0.02, backend="cpu")


def test_nerfacc_backend_refuses_cpu_tensors():
    occ, skts, rays_o, rays_d = _scene(n_rays=4)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        _march(occ, skts, rays_o, rays_d, 0.02, backend="nerfacc")


def test_cuda_without_nerfaccs_kernels_falls_back_to_torch_with_one_warning(monkeypatch):
    """nerfacc builds its CUDA kernels on first use; where that fails, CUDA tensors take the torch twin and the
    user reads why once (not an AttributeError from nerfacc on the first training step)."""
    from types import SimpleNamespace

    from fast_anerf.sampling import volrend

    monkeypatch.setattr(volrend, "nerfacc_cuda", lambda: (False, "nerfacc found no CUDA toolkit (nvcc)"))
    volrend._warn_no_nerfacc.cache_clear()
    on_cuda = SimpleNamespace(is_cuda=True)  # stands for a CUDA tensor: only .is_cuda is read
    with pytest.warns(UserWarning, match=r"nerfacc's CUDA kernels are unavailable \(nerfacc found no CUDA toolkit"):
        assert volrend.use_nerfacc(on_cuda) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call does not warn again
        assert volrend.use_nerfacc(on_cuda) is False
    assert volrend.use_nerfacc(torch.zeros(1)) is False  # CPU tensors never ask
    volrend._warn_no_nerfacc.cache_clear()


@pytest.mark.parametrize("value", ["off", "0", " OFF "])
def test_nerfacc_can_be_switched_off_without_a_warning(monkeypatch, value):
    """FAST_ANERF_NERFACC=off: nerfacc is never imported (no minutes-long build, no build lock) and, since the
    user asked for it, no warning says to install nvcc."""
    import sys
    from types import SimpleNamespace

    from fast_anerf.sampling import volrend

    monkeypatch.setenv("FAST_ANERF_NERFACC", value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    volrend.nerfacc_cuda.cache_clear()
    volrend._warn_no_nerfacc.cache_clear()
    try:
        assert volrend.nerfacc_cuda() == (False, "switched off by FAST_ANERF_NERFACC")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert volrend.use_nerfacc(SimpleNamespace(is_cuda=True)) is False
        assert "nerfacc.cuda._backend" not in sys.modules
    finally:
        volrend.nerfacc_cuda.cache_clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nerfacc's grid traversal needs CUDA")
def test_nerfacc_marching_equals_torch_marching_on_cuda():
    occ, skts, rays_o, rays_d = _scene(n_rays=2000, dtype=torch.float32)
    occ = occ.cuda()
    skts, rays_o, rays_d = skts.cuda(), rays_o.cuda(), rays_d.cuda()
    (r_t, s_t, e_t), _ = _march(occ, skts, rays_o, rays_d, 0.02, backend="torch")
    (r_n, s_n, e_n), _ = _march(occ, skts, rays_o, rays_d, 0.02, backend="nerfacc")
    # nerfacc steps t in float32 and walks cells with a DDA: a midpoint within ~1e-5 of a cell face may land
    # in the neighbour cell. Compare the sets of (ray, t_start) and allow a tiny fraction of such ties.
    key_t = set(zip(r_t.tolist(), (s_t * 1e4).round().long().tolist(), strict=True))
    key_n = set(zip(r_n.tolist(), (s_n * 1e4).round().long().tolist(), strict=True))
    assert len(key_t) > 1000
    assert len(key_t ^ key_n) <= 0.002 * len(key_t), (len(key_t), len(key_t - key_n), len(key_n - key_t))
    assert torch.all(r_n[1:] >= r_n[:-1])  # sorted by ray
    torch.testing.assert_close(e_n - s_n, (0.02 / rays_d.norm(dim=-1))[r_n])


def test_visibility_matches_nerfaccs_documented_example():
    t_starts = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    sigmas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
    ray_indices = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    args = (t_starts, t_starts + 1.0, ray_indices, 3)
    keep = visibility(sigmas, *args, early_stop_eps=0.3, alpha_thre=0.2)
    assert keep.tolist() == [True, True, False, True, False, False, True]  # nerfacc's docstring
    progressive = visibility_progressive(lambda sel: sigmas[sel], *args, early_stop_eps=0.3, alpha_thre=0.2, first=1)
    assert progressive.tolist() == keep.tolist()


@pytest.mark.parametrize("alpha_thre", [0.0, 0.05])
def test_progressive_visibility_equals_one_pass_with_fewer_densities(alpha_thre):
    g = torch.Generator().manual_seed(0)
    n_rays = 300
    counts = torch.randint(0, 60, (n_rays,), generator=g)
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    t_starts = torch.cat([torch.arange(int(c), dtype=torch.float32) for c in counts]) * 0.1
    sigmas = torch.rand(ray_indices.numel(), generator=g) ** 3 * 60.0  # some rays turn opaque, some never
    scale = torch.rand(n_rays, generator=g) + 0.5
    args = (t_starts, t_starts + 0.1, ray_indices, n_rays, scale, 1e-3, alpha_thre)
    expected = visibility(sigmas, *args)
    asked = []
    keep, count = visibility_progressive(lambda sel: asked.append(sel) or sigmas[sel], *args, return_count=True)
    assert torch.equal(keep, expected)
    assert 0 < expected.sum() < expected.numel()
    assert count == sum(a.numel() for a in asked) < 0.6 * ray_indices.numel()
    assert torch.cat(asked).unique().numel() == count  # no density is evaluated twice
