"""The fast field and the renderer: support inside the bone boxes, rigid invariance, gradients."""

import math

import numpy as np
import pytest
import torch

from fast_anerf.bone_boxes import bone_boxes
from fast_anerf.config import FastFieldConfig, RunConfig
from fast_anerf.data.synthetic import builtin_rest_pose
from fast_anerf.model import Character
from fast_anerf.renderer import RenderSettings, render_rays
from fast_anerf.skeleton import axis_angle_to_matrix, pose_skeleton


def _model(seed=0):
    torch.manual_seed(seed)
    model = Character(RunConfig(), torch.as_tensor(builtin_rest_pose()), n_frame_codes=3, backend="torch")
    with torch.no_grad():  # a random, non-trivial field (the default init is ~0 everywhere)
        model.field.grid.params.uniform_(-1, 1)
    return model


def _posed(seed=0):
    g = torch.Generator().manual_seed(seed)
    bones = torch.randn(24, 3, generator=g) * 0.3
    root = torch.tensor([0.1, -0.2, 0.3])
    return pose_skeleton(torch.as_tensor(builtin_rest_pose()), bones, root)


def test_density_is_zero_outside_every_box_and_positive_inside():
    model = _model()
    kp3d, skts = _posed()
    x = torch.randn(4000, 3) * 0.8 + kp3d[0]
    x_local = torch.einsum("jab,nb->nja", skts[:, :3, :3], x) + skts[:, :3, 3]
    inside = ((x_local >= model.box_min) & (x_local <= model.box_max)).all(-1).any(-1)
    sigma = model.field.density(x_local)
    assert inside.any() and (~inside).any()
    assert torch.all(sigma[~inside] == 0)
    assert (sigma[inside] > 0).float().mean() > 0.9  # zero only on the box faces


def test_render_is_invariant_to_a_rigid_motion_of_the_scene():
    model = _model()
    _, skts = _posed()
    g = torch.Generator().manual_seed(1)
    rays_o = torch.randn(256, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 3.0])
    target = torch.randn(256, 3, generator=g) * 0.3
    rays_d = target - rays_o
    codes = torch.zeros(256, dtype=torch.long)
    settings = RenderSettings(step_size=0.004)
    out_a = render_rays(model, rays_o, rays_d, skts, codes, torch.ones(3), settings)
    # Move camera rays and skeleton together by a rigid transform T: x' = R x + t, skts' = skts @ T^-1.
    rot = axis_angle_to_matrix(torch.tensor([0.3, -1.1, 0.5]))
    trans = torch.tensor([0.5, 1.0, -2.0])
    t_inv = torch.eye(4)
    t_inv[:3, :3] = rot.T
    t_inv[:3, 3] = -rot.T @ trans
    out_b = render_rays(model, rays_o @ rot.T + trans, rays_d @ rot.T, skts @ t_inv, codes, torch.ones(3), settings)
    assert out_a["acc"].max() > 0.2  # the rays see the body
    torch.testing.assert_close(out_a["rgb"], out_b["rgb"], atol=2e-4, rtol=1e-3)


def test_gradients_reach_the_pose_through_skts():
    model = _model()
    _, skts = _posed()
    skts = skts.clone().requires_grad_(True)
    rays_o = torch.tensor([[0.0, 0.0, 3.0]]).expand(64, 3)
    rays_d = torch.randn(64, 3, generator=torch.Generator().manual_seed(2)) * 0.1 - rays_o
    out = render_rays(model, rays_o, rays_d, skts, torch.zeros(64, dtype=torch.long), torch.ones(3), RenderSettings())
    out["rgb"].sum().backward()
    assert torch.isfinite(skts.grad).all()
    assert (skts.grad.abs().sum(dim=(1, 2)) > 0).sum() >= 5  # several bones receive a gradient


def _dense_field_reference(field, x_local, d_local, code_ids):
    """FastField.forward written densely (every sample x every bone, weight 0 outside a box) with the naive
    per-point hash grid: the obviously correct twin of its sparse (sample, bone)-pair implementation."""
    from fast_anerf.encoding.hashgrid import hashgrid_naive
    from fast_anerf.encoding.spherical_harmonics import spherical_harmonics
    from fast_anerf.field import smooth_ramp, trunc_exp

    n = x_local.shape[0]
    u = (x_local - field.box_min) / field.box_size  # [N, 24, 3]
    inside = ((u >= 0) & (u <= 1)).all(dim=-1)
    w = smooth_ramp(u, field.cfg.blend_margin).prod(dim=-1) * inside  # [N, 24]
    feats = torch.stack([hashgrid_naive(u[:, b].clamp(0, 1), torch.full((n,), b), field.grid.params,
                                        field.grid.config) for b in range(24)], dim=1)  # fmt: skip
    blended = (w[..., None] * feats).sum(1) / w.sum(1).clamp_min(1e-6)[:, None]
    d_sum = (w[..., None] * d_local).sum(1)
    d_blend = d_sum / d_sum.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    h = field.density_mlp(blended)
    sigma = w.sum(1).clamp_max(1.0) * trunc_exp(h[:, 0] + field.cfg.density_bias) / field.height
    table = field.frame_codes.weight
    codes = torch.where((code_ids < 0)[:, None], table.mean(0, keepdim=True), table[code_ids.clamp_min(0)])
    colour_in = torch.cat([h[:, 1:], spherical_harmonics(d_blend, field.cfg.sh_degree), codes], dim=-1)
    return sigma, field.color_mlp(colour_in)


def test_fast_field_equals_its_dense_reference_outputs_and_gradients():
    """Values and gradients (sample positions, i.e. the pose; hash table; both MLPs; appearance codes) of the
    field's sparse blend equal a dense per-bone reference, on samples around a posed body (some in no box)."""
    model = _model()
    with torch.no_grad():
        for mlp in (model.field.density_mlp, model.field.color_mlp):
            mlp.params.normal_(0, 0.3)
        model.field.frame_codes.weight.normal_(0, 0.5)
    kp3d, skts = _posed()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(600, 3, generator=g) * 0.1 + kp3d[torch.randint(0, 24, (600,), generator=g)]
    d = torch.nn.functional.normalize(torch.randn(600, 3, generator=g), dim=-1)
    x_local = (torch.einsum("jab,nb->nja", skts[:, :3, :3], x) + skts[:, :3, 3]).requires_grad_(True)
    d_local = torch.einsum("jab,nb->nja", skts[:, :3, :3], d)
    code_ids = torch.randint(-1, 3, (600,), generator=g)
    field = model.field
    params = [x_local, field.grid.params, field.density_mlp.params, field.color_mlp.params, field.frame_codes.weight]
    weights = torch.randn(600, 4, generator=g)  # a random linear loss of sigma and rgb

    def run(fn):
        sigma, rgb = fn(field, x_local, d_local, code_ids) if fn is not None else field(x_local, d_local, code_ids)
        loss = (torch.cat([sigma[:, None] * field.height, rgb], dim=-1) * weights).sum()
        return (sigma, rgb), torch.autograd.grad(loss, params)

    (sigma, rgb), grads = run(None)
    (sigma_ref, rgb_ref), grads_ref = run(_dense_field_reference)
    covered = sigma_ref > 0
    assert 100 < int(covered.sum()) < 590  # samples inside boxes and outside all of them
    torch.testing.assert_close(sigma, sigma_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(rgb, rgb_ref, rtol=1e-4, atol=1e-6)
    for name, got, ref in zip(("x_local", "grid", "density_mlp", "color_mlp", "codes"), grads, grads_ref, strict=True):
        assert float(ref.abs().max()) > 0, name
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-5 * float(ref.abs().max()), msg=name)


@pytest.mark.parametrize("motion", ["walk", "squat", "jumping_jacks", "wave"])
def test_bone_boxes_cover_the_built_in_body(motion):
    from fast_anerf.data.motions import MOTIONS
    from fast_anerf.data.synthetic import Character as Body
    from fast_anerf.data.synthetic import canonical_to_world, pose_arrays

    body = Body()
    cfg = FastFieldConfig()
    rest = torch.as_tensor(body.rest_pose).float()
    box_min, box_max = bone_boxes(rest, cfg.box_pad, cfg.torso_pad, cfg.head_extent, cfg.hand_extent, cfg.foot_extent)
    bones, roots = canonical_to_world(*MOTIONS[motion](6))
    poses = pose_arrays(body.rest_pose, bones, roots)
    for t in (1, 4):
        verts = torch.as_tensor(body.pose(bones[t], roots[t])[0]).float()
        skts = torch.as_tensor(poses["skts"][t])
        local = torch.einsum("jab,vb->vja", skts[:, :3, :3], verts) + skts[:, :3, 3]
        inside = ((local >= box_min) & (local <= box_max)).all(-1).any(-1)
        assert inside.float().mean() > 0.999, np.flatnonzero(~inside.numpy())[:10]


def test_blend_mask_silences_a_bone_exactly_in_its_empty_cells():
    """With one bone's grid empty, samples only that bone covers get no density; the others keep theirs."""
    model = _model()
    _, skts = _posed()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 3, generator=g) * 0.3
    x_local = torch.einsum("jab,nb->nja", skts[:, :3, :3], x) + skts[:, :3, 3]
    inside = ((x_local >= model.box_min) & (x_local <= model.box_max)).all(-1)  # [N, 24]
    bone = int(inside.sum(0).argmax())
    only_bone = inside[:, bone] & (inside.sum(-1) == 1)
    not_bone = ~inside[:, bone] & inside.any(-1)
    assert only_bone.sum() > 20 and not_bone.sum() > 20
    with torch.no_grad():
        before = model.field.density(x_local)
        model.occupancy.binaries[bone] = False
        after = model.field.density(x_local)
        unmasked = model.field.density(x_local, masked=False)
        model.use_blend_mask(False)
        switched_off = model.field.density(x_local)
    assert bool((before[only_bone] > 0).float().mean() > 0.9) and bool((after[only_bone] == 0).all())
    assert torch.equal(after[not_bone], before[not_bone])
    assert torch.equal(unmasked, before) and torch.equal(switched_off, before)


def test_checkpoints_from_before_the_blend_mask_keep_rendering_without_it():
    old = RunConfig().to_dict()
    del old["train"]["occ_blend_mask"]
    assert RunConfig.from_checkpoint(old).train.occ_blend_mask is False
    assert RunConfig.from_checkpoint(RunConfig().to_dict()).train.occ_blend_mask is True
    assert RunConfig.from_dict(old).train.occ_blend_mask is True  # presets and new runs: on


def test_trunc_exp_value_and_clamped_gradient():
    """exp(x) forward (clamped at 15); its backward is exp(clamp(x, -15, 15)): the true gradient inside, bounded
    outside, so huge raw densities cannot blow up a step."""
    from fast_anerf.field import trunc_exp

    x = torch.linspace(-5.0, 5.0, 41, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(trunc_exp, (x,))
    big = torch.tensor([14.0, 20.0, 100.0, -30.0], dtype=torch.float64, requires_grad=True)
    y = trunc_exp(big)
    (grad,) = torch.autograd.grad(y.sum(), big)
    torch.testing.assert_close(y.detach(), torch.exp(torch.tensor([14.0, 15.0, 15.0, -30.0], dtype=torch.float64)))
    torch.testing.assert_close(grad, torch.exp(torch.tensor([14.0, 15.0, 15.0, -15.0], dtype=torch.float64)))


def test_spherical_harmonics_are_orthonormal_on_the_sphere():
    """The 16 real SH functions of degree 4 integrate to the identity Gram matrix over the sphere (Fibonacci
    lattice, 40k points): a wrong constant or variable in any term breaks it. Degree 1 is the constant
    1 / (2 sqrt(pi)); lower degrees are prefixes of higher ones."""
    from fast_anerf.encoding.spherical_harmonics import spherical_harmonics

    n = 40000
    k = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = math.pi * (1.0 + 5.0**0.5) * k
    r = (1.0 - z * z).sqrt()
    d = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)
    basis = spherical_harmonics(d, 4)  # [n, 16]
    gram = 4.0 * math.pi * basis.T @ basis / n
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=2e-3, rtol=0)
    assert float(basis[0, 0]) == pytest.approx(0.5 / math.sqrt(math.pi))
    for degree in (1, 2, 3):
        torch.testing.assert_close(spherical_harmonics(d[:10], degree), basis[:10, : degree**2])
