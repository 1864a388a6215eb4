"""Per-bone occupancy grids: layout, nerfacc's update rule, densities in training poses, checkpoints, rendering."""

from dataclasses import replace

import torch

from fast_anerf.config import RunConfig
from fast_anerf.data.synthetic import builtin_rest_pose
from fast_anerf.model import Character, load_character, save_checkpoint
from fast_anerf.renderer import RenderSettings, render_rays
from fast_anerf.sampling.occupancy import BoneOccupancy, density_in_poses
from fast_anerf.skeleton import pose_skeleton


def _occ(resolution=4):
    box_min = torch.arange(72, dtype=torch.float32).reshape(24, 3) * 0.1 - 1.0
    return BoneOccupancy(box_min, box_min + torch.tensor([0.4, 0.8, 1.2]), resolution)


def _model(occupancy=True, resolution=8, seed=0, density_bias=3.5):
    torch.manual_seed(seed)
    config = RunConfig()
    config = replace(
        config,
        train=replace(config.train, occupancy=occupancy, occ_resolution=resolution),
        fast=replace(config.fast, density_bias=density_bias),
    )
    model = Character(config, torch.as_tensor(builtin_rest_pose()), n_frame_codes=3, backend="torch")
    with torch.no_grad():  # a random, non-trivial field
        model.field.grid.params.uniform_(-1, 1)
    return model


def test_cell_layout_is_nerfaccs():
    occ = _occ(resolution=4)
    # Bone 5, cell (x=1, y=2, z=3): id = 5 * 64 + 1 * 16 + 2 * 4 + 3.
    point = occ.box_min[5] + (torch.tensor([1.0, 2.0, 3.0]) + 0.5) / 4 * occ.box_size[5]
    assert occ.cell_ids(torch.tensor([5]), point[None]).item() == 5 * 64 + 16 + 8 + 3
    ids = torch.randperm(24 * 64)[:300]
    bone, x = occ.cell_points(ids, torch.rand(300, 3) * 0.98 + 0.01)
    assert torch.equal(occ.cell_ids(bone, x), ids)
    # Outside the box: clamped to the nearest cell.
    far = occ.box_min[0] - 1.0
    assert occ.cell_ids(torch.tensor([0]), far[None]).item() == 0
    occ.binaries.zero_()
    occ.binaries[5, 1, 2, 3] = True
    assert occ.occupied(torch.tensor([5, 5, 4]), torch.stack([point, point, point])).tolist() == [True, True, False]


def test_update_follows_nerfaccs_rule():
    occ = _occ(resolution=4)
    assert occ.binaries.all()  # starts all-occupied (the box-culled sampling of an untrained model)
    # A value that depends on the bone only: bones 0-11 dense (0.5), 12-23 empty (0.001).
    value = lambda bone, x: torch.where(bone < 12, 0.5, 0.001)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    assert not occ.update(3, value, gen, every_n=16)  # not an update step
    assert occ.update(0, value, gen, threshold=0.01, warmup_steps=32, every_n=16)  # warm-up: every cell
    assert torch.equal(occ.occs[:12], torch.full((12, 64), 0.5)) and torch.equal(
        occ.occs[12:], torch.full((12, 64), 0.001)
    )
    assert occ.binaries[:12].all() and not occ.binaries[12:].any()  # threshold min(mean=0.2505, 0.01)
    # After warm-up: R^3/4 = 16 random cells + up to 16 occupied cells per bone, decayed once, max with value.
    before = occ.occs.clone()
    zero = lambda bone, x: torch.zeros(bone.shape)  # noqa: E731
    assert occ.update(32, zero, gen, ema_decay=0.5, warmup_steps=32, every_n=16)
    changed = occ.occs != before
    torch.testing.assert_close(occ.occs[changed], before[changed] * 0.5)  # max(occs * decay, 0)
    per_bone = changed.sum(dim=1)
    assert per_bone[:12].min() >= 16 and per_bone.max() <= 32  # occupied bones: >= the 16 occupied picks
    assert per_bone[12:].min() >= 1 and per_bone[12:].max() <= 16  # empty bones: random picks only
    assert torch.equal(occ.binaries.reshape(24, -1), occ.occs > min(float(occ.occs.mean()), 0.01))


def test_density_in_poses_places_points_in_every_bone_frame():
    model = _model()
    rest = torch.as_tensor(builtin_rest_pose())
    _, skts = pose_skeleton(rest, torch.randn(24, 3, generator=torch.Generator().manual_seed(1)) * 0.3, rest[0])
    step = 0.02
    eval_fn = density_in_poses(model.field, skts[None], step)  # one frame: deterministic
    occ = model.occupancy
    ids = torch.randperm(24 * 8**3, generator=torch.Generator().manual_seed(2))[:2000]
    bone, x = occ.cell_points(ids, torch.rand(2000, 3))
    got = eval_fn(bone, x)
    # Reference: bone-local -> world with the pose's inverse, then into every bone frame.
    world = torch.einsum("nab,nb->na", torch.linalg.inv(skts)[bone], torch.cat([x, torch.ones(2000, 1)], -1))
    x_local = torch.einsum("jab,nb->nja", skts, world)[..., :3]
    expected = model.field.density(x_local) * step
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert (got > 0).float().mean() > 0.9


def test_density_in_poses_uses_one_random_training_pose_per_point():
    """Several frames: each point's value is its density in one of them, and every frame is used."""
    model = _model()
    rest = torch.as_tensor(builtin_rest_pose())
    gen = torch.Generator().manual_seed(1)
    skts = torch.stack([pose_skeleton(rest, torch.randn(24, 3, generator=gen) * 0.4, rest[0])[1] for _ in range(3)])
    eval_fn = density_in_poses(model.field, skts, 0.02, torch.Generator().manual_seed(5), chunk=700)
    bone, x = model.occupancy.cell_points(torch.randperm(24 * 8**3)[:2000], torch.rand(2000, 3))
    got = eval_fn(bone, x)
    per_frame = []
    for frame_skts in skts:
        world = torch.einsum("nab,nb->na", torch.linalg.inv(frame_skts)[bone], torch.cat([x, torch.ones(2000, 1)], -1))
        x_local = torch.einsum("jab,nb->nja", frame_skts, world)[..., :3]
        per_frame.append(model.field.density(x_local) * 0.02)
    per_frame = torch.stack(per_frame)  # [3, 2000]
    error = (per_frame - got).abs() - 1e-4 * per_frame.abs()  # assert_close's test: <= atol 1e-6
    assert bool((error.min(dim=0).values <= 1e-6).all())  # every value is the density in one of the poses
    which = error.argmin(dim=0)
    distinct = (per_frame.max(0).values - per_frame.min(0).values) > 1e-3 * per_frame.max(0).values  # pose matters
    assert distinct.sum() > 100 and which[distinct].bincount(minlength=3).min() > 20  # all three poses used


def test_grids_travel_in_checkpoints_and_old_checkpoints_load_all_occupied(tmp_path):
    model = _model()
    model.occupancy.binaries[3, 1] = False
    model.occupancy.occs[7, 5] = 0.25
    save_checkpoint(tmp_path / "new.pt", model)
    loaded, _ = load_character(tmp_path / "new.pt")
    assert torch.equal(loaded.occupancy.binaries, model.occupancy.binaries)
    assert torch.equal(loaded.occupancy.occs, model.occupancy.occs)
    # A checkpoint from before the grids existed: no occupancy keys. It loads, with every cell occupied.
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("occupancy.")}
    fresh = _model()
    fresh.occupancy.binaries.zero_()
    fresh.load_state_dict(old)
    assert fresh.occupancy.binaries.all() and not fresh.occupancy.occs.any()
    assert torch.equal(fresh.field.grid.params, model.field.grid.params)
    assert "occupancy.binaries" not in old  # the caller's dict is left alone


def _rays(n=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    rays_o = torch.randn(n, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 3.0])
    return rays_o, torch.randn(n, 3, generator=g) * 0.3 - rays_o


def test_renderer_skips_empty_cells_and_stops_opaque_rays():
    model = _model(density_bias=6.0)  # an opaque body: rays stop well before leaving it
    rest = torch.as_tensor(builtin_rest_pose())
    _, skts = pose_skeleton(rest, torch.zeros(24, 3), rest[0])
    rays_o, rays_d = _rays()
    codes = torch.zeros(rays_o.shape[0], dtype=torch.long)
    bg = torch.tensor([0.2, 0.4, 0.6])
    off = render_rays(model, rays_o, rays_d, skts, codes, bg, RenderSettings(occupancy=False))
    no_stop = render_rays(model, rays_o, rays_d, skts, codes, bg, RenderSettings(early_stop_eps=0.0))
    # All-occupied grid without early stopping: exactly the box-culled samples.
    assert int(no_stop["n_samples"]) == int(off["n_samples"]) > 1000
    torch.testing.assert_close(no_stop["rgb"], off["rgb"], rtol=0, atol=1e-6)
    # Early stopping drops the samples behind opaque ones and changes pixels by at most ~eps.
    stop = render_rays(model, rays_o, rays_d, skts, codes, bg, RenderSettings(early_stop_eps=1e-3))
    assert int(stop["n_samples"]) < 0.7 * int(off["n_samples"])
    # The CPU density pass runs front to back only until each ray is opaque: it evaluates at least the kept
    # samples and at most every candidate.
    assert int(stop["n_samples"]) <= int(stop["n_candidates"]) <= int(off["n_samples"])
    torch.testing.assert_close(stop["rgb"], off["rgb"], rtol=0, atol=2e-3)
    # An empty grid: no sample at all, every pixel is the background.
    model.occupancy.binaries.zero_()
    empty = render_rays(model, rays_o, rays_d, skts, codes, bg, RenderSettings())
    assert int(empty["n_candidates"]) == 0
    torch.testing.assert_close(empty["rgb"], bg.expand(rays_o.shape[0], 3))


def test_gradients_flow_through_the_surviving_samples():
    model = _model()
    rest = torch.as_tensor(builtin_rest_pose())
    _, skts = pose_skeleton(rest, torch.zeros(24, 3), rest[0])
    skts = skts.clone().requires_grad_(True)
    rays_o, rays_d = _rays(64)
    codes = torch.zeros(64, dtype=torch.long)

    def gradients(settings: RenderSettings, counts: dict | None = None, name: str = "") -> list[torch.Tensor]:
        model.zero_grad()
        out = render_rays(model, rays_o, rays_d, skts, codes, torch.ones(3), settings)
        if counts is not None:
            counts[name] = int(out["n_samples"])
        weights = torch.linspace(-1.0, 1.0, out["rgb"].numel()).reshape(out["rgb"].shape)  # a non-uniform loss
        params = [skts, model.field.grid.params, model.field.density_mlp.params]
        return list(torch.autograd.grad((out["rgb"] * weights).sum(), params))

    # Every cell occupied and nothing dropped: the occupancy path keeps exactly the box-culled samples, so its
    # gradients (pose, hash table, MLP) equal the plain path's.
    full = gradients(RenderSettings(early_stop_eps=0.0, alpha_thre=0.0))
    plain = gradients(RenderSettings(occupancy=False))
    for got, ref in zip(full, plain, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
        assert float(ref.abs().max()) > 0
    # With half of the cells empty, marching drops the samples there. Reference: the plain path evaluates every
    # box sample, and the blend mask (each bone's weight times its cell) gives the dropped ones zero density
    # and zero gradient; so pixels and gradients are the same, from fewer samples, and differ from the full grid.
    model.occupancy.binaries.copy_(
        torch.rand(model.occupancy.binaries.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    )
    counts = {}
    sparse = gradients(RenderSettings(early_stop_eps=0.0, alpha_thre=0.0), counts, "sparse")
    masked_plain = gradients(RenderSettings(occupancy=False), counts, "plain")
    assert counts["sparse"] < 0.9 * counts["plain"]
    for got, ref in zip(sparse, masked_plain, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
    assert not torch.allclose(sparse[0], full[0])


def test_training_updates_the_grids_and_resume_keeps_them(tiny_data, tmp_path, monkeypatch, one_torch_thread):
    import fast_anerf.train as train_module
    from fast_anerf.cli import Train
    from fast_anerf.train import Trainer

    original = train_module.load_preset

    def small(name):  # a tiny run: few rays, grids updated every 4 steps, warm-up over after step 8
        cfg = original(name)
        small_train = replace(cfg.train, rays_per_batch=256, images_per_batch=8, occ_update_every=4)
        return replace(cfg, train=replace(small_train, occ_warmup_steps=8, ckpt_every=5, eval_every=0))

    monkeypatch.setattr(train_module, "load_preset", small)
    args = Train(
        data=tiny_data, out=tmp_path / "a", steps=10, device="cpu", backend="torch", eval_every=0, gt_poses=True
    )
    straight = Trainer(args)
    assert straight.model.occupancy.binaries.all() and not straight.model.occupancy.occs.any()
    straight.run()
    occ = straight.model.occupancy
    assert occ.occs.max() > 0.01 and 0.0 < occ.occupied_fraction < 1.0  # the fog outside the body is carved
    # Interrupted at step 6 and resumed: the same grids as the uninterrupted run.
    Trainer(replace(args, out=tmp_path / "b", steps=6)).run()
    resumed = Trainer(replace(args, out=tmp_path / "b", resume=True))
    assert resumed.step == 6 and resumed.model.occupancy.occs.max() > 0.01  # the grids came back with it
    resumed.run()
    assert torch.equal(resumed.model.occupancy.occs, occ.occs)
    assert torch.equal(resumed.model.occupancy.binaries, occ.binaries)
    assert torch.equal(resumed.model.field.grid.params, straight.model.field.grid.params)


def test_rendering_without_gradients_is_one_pass_with_the_same_pixels():
    """Without autograd the visibility pass also computes colour and is the only field pass: same image."""
    model = _model(density_bias=6.0)  # opaque: rays stop early, so the two-pass path drops candidates
    rest = torch.as_tensor(builtin_rest_pose())
    _, skts = pose_skeleton(rest, torch.zeros(24, 3), rest[0])
    rays_o, rays_d = _rays(256)
    codes = torch.zeros(256, dtype=torch.long)
    args = (model, rays_o, rays_d, skts, codes, torch.ones(3), RenderSettings())
    with torch.no_grad():
        one_pass = render_rays(*args)
    two_pass = render_rays(*args)
    assert int(two_pass["n_samples"]) < int(two_pass["n_candidates"])  # some candidates were dropped
    assert int(one_pass["n_samples"]) == int(one_pass["n_candidates"]) == int(two_pass["n_candidates"])
    for key in ("rgb", "acc", "depth"):
        torch.testing.assert_close(one_pass[key], two_pass[key].detach(), atol=1e-5, rtol=1e-5)
    assert (one_pass["acc"] > 0.5).any()  # the rays do see the body
