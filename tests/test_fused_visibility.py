"""The fused C visibility pass (``FastField.fused_visibility``) against the PyTorch path it replaces."""

from __future__ import annotations

import pytest
import torch

from fast_anerf.bone_boxes import ray_box_intervals
from fast_anerf.config import FastFieldConfig, RunConfig
from fast_anerf.data.synthetic import builtin_rest_pose
from fast_anerf.encoding.hashgrid_cpu import cpu_kernels_available, load_kernels
from fast_anerf.model import Character
from fast_anerf.renderer import RenderSettings, rays_to_bones, render_rays
from fast_anerf.sampling.march import march_occupied
from fast_anerf.sampling.volrend import exclusive_sum_packed, visibility, visibility_progressive
from fast_anerf.skeleton import pose_skeleton

needs_kernels = pytest.mark.skipif(not cpu_kernels_available(), reason=f"C kernels unavailable: {load_kernels()[1]}")
EPS, ALPHA_THRE = 1e-3, 0.02


def _scene(density_hidden_layers=1, seed=0, n_rays=600, coarse_to_fine_step=None):
    """A fast field with random weights (a mix of empty, thin and opaque regions), a random half of its
    occupancy cells occupied, and rays through the posed body: marched candidates in every bone frame.
    ``coarse_to_fine_step``: the finer hash levels faded as at that step of a 100-step schedule."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    rest = torch.as_tensor(builtin_rest_pose())
    c2f = 100 if coarse_to_fine_step is not None else 0
    config = RunConfig(fast=FastFieldConfig(density_hidden_layers=density_hidden_layers, coarse_to_fine_steps=c2f))
    model = Character(config, rest, n_frame_codes=2, backend="cpu")
    field = model.field
    field.update_schedule(coarse_to_fine_step or 0)
    with torch.no_grad():
        field.grid.params.uniform_(-2, 2, generator=g)
        field.density_mlp.params.mul_(3.0)  # raw densities spread from thin fog to opaque
        model.occupancy.binaries.copy_(torch.rand(model.occupancy.binaries.shape, generator=g) < 0.5)
    kp3d, skts = pose_skeleton(rest, torch.randn(24, 3, generator=g) * 0.3, rest[0])
    rays_o = torch.randn(n_rays, 3, generator=g) * 0.2 + torch.tensor([0.3, 0.1, 3.0])
    rays_d = (torch.randn(n_rays, 3, generator=g) * 0.4 + kp3d[0] - rays_o) * (0.5 + torch.rand(n_rays, 1, generator=g))
    origins, directions = rays_to_bones(rays_o, rays_d, skts)
    t_in, t_out, hit = ray_box_intervals(origins, directions, field.box_min, field.box_max)
    scale = rays_d.norm(dim=-1)
    step = config.train.step_size * field.height
    ray_idx, t_starts, t_ends = march_occupied(t_in, t_out, hit, scale, origins, directions, model.occupancy, step)
    return model, (origins, directions, scale, ray_idx, t_starts, t_ends), (rays_o, rays_d, skts)


def _torch_reference(field, origins, directions, scale, ray_idx, t_starts, t_ends):
    """Densities of every candidate through the field's PyTorch path, and what the rounds keep."""
    field.fuse_no_grad = False
    try:
        with torch.no_grad():
            t_mid = 0.5 * (t_starts + t_ends)
            x = origins[ray_idx] + t_mid[:, None, None] * directions[ray_idx]
            sigma = field.density(x)
    finally:
        field.fuse_no_grad = True
    args = (t_starts, t_ends, ray_idx, origins.shape[0], scale, EPS, ALPHA_THRE)
    keep, evaluated = visibility_progressive(lambda sel: sigma[sel], *args, return_count=True)
    assert torch.equal(keep, visibility(sigma, *args))
    return sigma, keep


@needs_kernels
@pytest.mark.parametrize(
    "hidden_layers, threads, coarse_to_fine_step", [(1, 1, None), (1, 2, None), (2, 1, None), (2, 2, None), (1, 2, 40)]
)
def test_fused_visibility_keeps_the_samples_of_the_pytorch_rounds(hidden_layers, threads, coarse_to_fine_step,
                                                                   monkeypatch):  # fmt: skip
    monkeypatch.setattr("fast_anerf.encoding.hashgrid_cpu.MIN_SAMPLES_PER_THREAD", 256)  # rays split in chunks
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, packed, _ = _scene(hidden_layers, coarse_to_fine_step=coarse_to_fine_step)
        if coarse_to_fine_step is not None:  # levels 5-7 off, 4 at 0.35: the fused kernel must see it too
            assert model.field.level_weights[10:].eq(0).all() and 0 < float(model.field.level_weights[8]) < 1
        keep, evaluated = model.field.fused_visibility(*packed, EPS, ALPHA_THRE)
    finally:
        torch.set_num_threads(previous)
    origins, _, scale, ray_idx, t_starts, t_ends = packed
    sigma, expected = _torch_reference(model.field, *packed)
    # Both walk the same candidates with the same densities up to float rounding (the MLP's sums run in another
    # order): samples whose opacity or transmittance sits within 1e-4 of a threshold may go either way.
    sigma_delta = sigma * (t_ends - t_starts) * scale[ray_idx]
    alpha = 1.0 - torch.exp(-sigma_delta)
    log_trans = -exclusive_sum_packed(sigma_delta, ray_idx, origins.shape[0]).double()
    borderline = ((alpha / ALPHA_THRE - 1).abs() < 1e-4) | ((log_trans - torch.log(torch.tensor(EPS))).abs() < 1e-4)
    assert int(borderline.sum()) <= 2
    assert torch.equal(keep[~borderline], expected[~borderline])
    # The walk stops each ray at the candidate that makes it opaque: exactly those densities are evaluated.
    opaque_before = log_trans < torch.log(torch.tensor(EPS))
    assert evaluated == int((~opaque_before).sum())
    # A meaningful scene: rays that turn opaque, samples dropped as too thin, samples kept.
    assert 0.1 < float(expected.float().mean()) < 0.6
    assert int(opaque_before.sum()) > 0.2 * ray_idx.numel()
    assert int(((alpha < ALPHA_THRE) & ~opaque_before).sum()) > 50


@needs_kernels
def test_training_and_rendering_give_the_pytorch_paths_pixels():
    """``render_rays`` with the fused pass (training: then the field with gradients; rendering: then colour) gives
    the pixels of the PyTorch rounds, and the fused pass evaluates fewer densities."""
    model, _, (rays_o, rays_d, skts) = _scene(seed=1, n_rays=400)
    settings = RenderSettings(step_size=RunConfig().train.step_size, early_stop_eps=EPS, alpha_thre=ALPHA_THRE)
    args = (model, rays_o, rays_d, skts, torch.zeros(len(rays_o), dtype=torch.long), torch.ones(3), settings)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            fused = render_rays(*args)
            model.field.fused_visibility = lambda *a: None  # the PyTorch rounds
            plain = render_rays(*args)
            del model.field.fused_visibility
        torch.testing.assert_close(fused["rgb"], plain["rgb"], rtol=0, atol=1e-5)
        if grad:  # the same samples go through the field with gradients
            assert int(fused["n_samples"]) == int(plain["n_samples"])
        else:  # the rounds computed colour for every density they evaluated; the fused pass only for those kept
            assert int(fused["n_samples"]) < int(plain["n_samples"]) == int(plain["n_candidates"])
        assert int(fused["n_candidates"]) < int(plain["n_candidates"])
        assert float((fused["acc"] > 0.5).float().mean()) > 0.1  # the body covers a good part of the rays


def test_fused_visibility_is_not_offered_by_the_torch_backend():
    rest = torch.as_tensor(builtin_rest_pose())
    field = Character(RunConfig(), rest, n_frame_codes=1, backend="torch").field
    empty = torch.zeros(0)
    assert field.fused_visibility(torch.zeros(1, 24, 3), torch.zeros(1, 24, 3), torch.ones(1), empty.long(),
                                  empty, empty, EPS, ALPHA_THRE) is None  # fmt: skip
