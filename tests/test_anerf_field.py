"""Tests of the original A-NeRF field and the positional encoding / cutoff (specs/anerf.md §2.3-2.5)."""

from __future__ import annotations

import math

import pytest
import torch

from fast_anerf.anerf_field import ANeRFField, ANeRFFieldConfig
from fast_anerf.encoding.positional import (
    cutoff_tau,
    cutoff_weights,
    encoded_dim,
    positional_encoding,
)
from fast_anerf.skeleton import N_JOINTS, pose_skeleton

N_CODES = 5


def _field(**kw) -> ANeRFField:
    torch.manual_seed(0)
    return ANeRFField(N_CODES, ANeRFFieldConfig(**kw))


def _rest_pose(gen: torch.Generator) -> torch.Tensor:
    rest = torch.randn(N_JOINTS, 3, generator=gen, dtype=torch.float64) * 0.2
    return rest - rest[:1]  # root at the origin


def _to_local(points: torch.Tensor, dirs: torch.Tensor, skts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points/dirs ``[N, 3]`` and ``skts [24, 4, 4]`` -> ``x_local, d_local [N, 24, 3]``."""
    R, t = skts[:, :3, :3], skts[:, :3, 3]
    x_local = torch.einsum("jab,nb->nja", R, points) + t
    d_local = torch.einsum("jab,nb->nja", R, dirs)
    return x_local, d_local


def test_layer_shapes_match_anerf():
    f = _field()
    assert f.pts_linears[0].in_features == 432
    assert f.pts_linears[5].in_features == 688  # skip after layer index 4
    assert all(f.pts_linears[i].in_features == 256 for i in (1, 2, 3, 4, 6, 7))
    assert len(f.pts_linears) == 8
    assert (f.alpha_linear.in_features, f.alpha_linear.out_features) == (256, 1)
    assert (f.feature_linear.in_features, f.feature_linear.out_features) == (256, 256)
    assert f.views_linears[0].in_features == 256 + 648 + 16
    assert f.views_linears[0].out_features == 128
    assert (f.rgb_linear.in_features, f.rgb_linear.out_features) == (128, 3)
    assert f.frame_codes.weight.shape == (N_CODES, 16)
    # 432*256+256 + 6*(256*256+256) + 688*256+256 + 257 + 65792 + 920*128+128 + 128*3+3, plus the codes
    assert f.n_params == 866308 + N_CODES * 16
    assert "anerf" in f.describe() and f"{f.n_params:,}" in f.describe() and "\n" not in f.describe()
    no_codes = ANeRFField(0, ANeRFFieldConfig(use_framecode=False))
    assert no_codes.views_linears[0].in_features == 256 + 648 and no_codes.frame_codes is None


def test_positional_encoding_layout():
    x = torch.tensor([[0.5, -1.0]])
    expected = [0.5, -1.0]
    for f in (1.0, 2.0):  # frequency-major: [sin f x0, sin f x1, cos f x0, cos f x1]
        expected += [math.sin(f * 0.5), math.sin(-f), math.cos(f * 0.5), math.cos(-f)]
    out = positional_encoding(x, 2)
    assert out.shape == (1, encoded_dim(2, 2)) == (1, 10)
    torch.testing.assert_close(out[0], torch.tensor(expected))
    # Weights multiply every block component-wise; weight_input=False leaves the raw copy alone.
    w = torch.tensor([[2.0, 3.0]])
    torch.testing.assert_close(positional_encoding(x, 2, weights=w), out * w.repeat(1, 5))
    partial = positional_encoding(x, 2, weights=w, weight_input=False)
    torch.testing.assert_close(partial[:, :2], x)
    torch.testing.assert_close(partial[:, 2:], out[:, 2:] * w.repeat(1, 4))
    torch.testing.assert_close(positional_encoding(x, 0), x)


def test_cutoff_weights_and_tau_schedule():
    w = cutoff_weights(torch.tensor([0.0, 0.3, 0.5, 0.7, 2.0]), 2000.0, 0.5)
    assert w[0] > 1 - 1e-6 and w[1] > 1 - 1e-6
    assert w[2] == pytest.approx(0.5)
    assert w[3] < 1e-6 and w[4] < 1e-6
    f = _field()
    assert f.tau.item() == pytest.approx(20.0)
    for step, tau in [
        (0, 20.0),
        (150_000, 20 * 10**0.6),
        (250_000, 200.0),
        (500_000, 2000.0),
        (900_000, 2000.0),
    ]:
        assert cutoff_tau(step) == pytest.approx(tau, rel=1e-6)
        f.update_schedule(step)
        assert f.tau.item() == pytest.approx(tau, rel=1e-6)
    assert cutoff_tau(150_000) == pytest.approx(79.62, abs=0.01)
    # tau is saved with the weights so that a resumed run keeps the schedule.
    g = _field()
    g.load_state_dict(f.state_dict())
    assert g.tau.item() == pytest.approx(2000.0)


def test_cutoff_zeroes_far_joint_features():
    f = _field()
    f.update_schedule(500_000)  # tau = 2000
    x = torch.zeros(1, N_JOINTS, 3)
    x[0, :, 0] = torch.linspace(0.0, 2.0, N_JOINTS)  # joint 0 at distance 0, joint 23 far away
    captured: list[torch.Tensor] = []

    def grab_input(module, inputs, output) -> None:  # returns None so the output is left unchanged
        captured.append(inputs[0])

    f.pts_linears[0].register_forward_hook(grab_input)
    f.density(x)
    v_enc = captured[0][0, :360].reshape(15, N_JOINTS)  # [blocks, joints]
    assert v_enc[:, -1].abs().max() < 1e-6  # far joint: every block (raw copy included) is cut off
    assert v_enc[2, 0] == pytest.approx(1.0)  # cos(0) for the joint at distance 0, weight ~1


def test_rigid_motion_invariance():
    gen = torch.Generator().manual_seed(1)
    rest = _rest_pose(gen)
    body = torch.randn(N_JOINTS, 3, generator=gen, dtype=torch.float64) * 0.3
    f = _field().double()
    f.update_schedule(150_000)
    codes = torch.tensor([0, 1, 2, -1] * 16)
    # Points and rays attached to the body, given in the root joint's frame.
    local_pts = torch.randn(64, 3, generator=gen, dtype=torch.float64) * 0.4
    local_dirs = torch.nn.functional.normalize(torch.randn(64, 3, generator=gen, dtype=torch.float64), dim=-1)
    outputs = []
    for _ in range(2):
        bones = body.clone()
        bones[0] = torch.randn(3, generator=gen, dtype=torch.float64) * 2.0  # random root rotation
        root = torch.randn(3, generator=gen, dtype=torch.float64)
        kp3d, skts = pose_skeleton(rest, bones, root)
        # This copy's world = the body moved rigidly by its root rotation and translation.
        l2w_root = torch.linalg.inv(skts[0])
        points = local_pts @ l2w_root[:3, :3].T + l2w_root[:3, 3]
        dirs = local_dirs @ l2w_root[:3, :3].T
        assert not torch.allclose(points, local_pts)
        x_local, d_local = _to_local(points, dirs, skts)
        outputs.append(f(x_local, d_local, codes))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs[0][1], outputs[1][1], atol=1e-5, rtol=0)
    assert outputs[0][1].std() > 0  # not a trivially constant output


def _random_inputs(n: int = 32, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_JOINTS, 3, generator=gen) * 0.4
    d = torch.nn.functional.normalize(torch.randn(n, N_JOINTS, 3, generator=gen), dim=-1)
    return x, d


def test_mean_code_for_unseen_frames():
    f = _field()
    x, d = _random_inputs()
    sigma_m, rgb_m = f(x, d, torch.full((32,), -1))
    with torch.no_grad():
        f.frame_codes.weight[:] = f.frame_codes.weight.mean(0)
    sigma_0, rgb_0 = f(x, d, torch.full((32,), 2))
    torch.testing.assert_close(sigma_m, sigma_0)
    torch.testing.assert_close(rgb_m, rgb_0)


def test_gradients_density_and_ranges():
    f = _field()
    f.update_schedule(100_000)
    x, d = _random_inputs()
    x[0, 7] = 0.0  # a sample exactly on joint 7 must not produce NaNs
    x.requires_grad_(True)
    codes = torch.arange(32) % N_CODES
    sigma, rgb = f(x, d, codes)
    assert sigma.shape == (32,) and rgb.shape == (32, 3)
    assert (sigma >= 0).all() and (rgb > -0.001).all() and (rgb < 1.001).all()
    (sigma.sum() + rgb.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert f.frame_codes.weight.grad.abs().sum() > 0
    # The gradients are the right ones: finite differences in float64 (samples off the joints), w.r.t. the
    # positions (what pose refinement moves) and the appearance-code table.
    f64 = _field().double()
    f64.update_schedule(100_000)
    x64, d64 = (t[1:3].double() for t in _random_inputs())
    codes64 = torch.tensor([0, 2])
    torch.autograd.gradcheck(lambda pos: f64(pos, d64, codes64), (x64.requires_grad_(True),), eps=1e-6, atol=1e-5)
    table = f64.frame_codes.weight.detach().clone().requires_grad_(True)

    def rgb_of_codes(weight):
        return torch.func.functional_call(f64, {"frame_codes.weight": weight}, (x64.detach(), d64, codes64))[1]

    torch.autograd.gradcheck(rgb_of_codes, (table,), eps=1e-6, atol=1e-5)
    # density() is forward()'s sigma without noise, and does not depend on the view.
    with torch.no_grad():
        torch.testing.assert_close(f.density(x), sigma)
        torch.testing.assert_close(f(x, -d, codes)[0], sigma)
        noisy, _ = f(x, d, codes, density_noise_std=1.0)
        assert (noisy >= 0).all() and not torch.equal(noisy, sigma)


def test_bad_shapes_raise():
    f = _field()
    x, d = _random_inputs(4)
    with pytest.raises(ValueError, match=r"\[N, 24, 3\]"):
        f(x[:, :10], d[:, :10], torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="code_ids"):
        f(x, d, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="n_frame_codes"):
        ANeRFField(0, ANeRFFieldConfig())
    with pytest.raises(ValueError, match="skips"):
        ANeRFFieldConfig(netdepth=4, skips=(3,))
