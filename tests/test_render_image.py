"""``renderer.render_image``: skipping the pixels whose rays miss the posed body's bounds changes no pixel."""

from __future__ import annotations

import math

import pytest
import torch

from fast_anerf.bone_boxes import posed_bounds, ray_box_intervals, rays_hit_bounds
from fast_anerf.config import RunConfig
from fast_anerf.data.rays import image_rays
from fast_anerf.data.synthetic import builtin_rest_pose, look_at
from fast_anerf.model import Character
from fast_anerf.renderer import RenderSettings, rays_to_bones, render_image, render_rays
from fast_anerf.skeleton import pose_skeleton


def _posed_model():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    rest = torch.as_tensor(builtin_rest_pose())
    model = Character(RunConfig(), rest, n_frame_codes=1)
    with torch.no_grad():
        model.field.grid.params.uniform_(-2, 2, generator=g)
        model.field.density_mlp.params.mul_(3.0)  # an opaque body with thin parts, not a uniform fog
    kp3d, skts = pose_skeleton(rest, torch.randn(24, 3, generator=g) * 0.3, torch.tensor([0.1, 0.0, -0.2]))
    return model, kp3d, skts


def test_bounds_contain_every_posed_box_and_rays_that_miss_them_miss_every_box():
    model, kp3d, skts = _posed_model()
    lo, hi = posed_bounds(skts, model.box_min, model.box_max)
    g = torch.Generator().manual_seed(1)
    rays_o = torch.randn(4000, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 3.0])
    rays_d = torch.randn(4000, 3, generator=g) * 0.5 + kp3d[0] - rays_o  # many hit, many miss
    inside = rays_hit_bounds(rays_o, rays_d, lo, hi)
    origins, directions = rays_to_bones(rays_o, rays_d, skts)
    hit_any_box = ray_box_intervals(origins, directions, model.box_min, model.box_max)[2].any(dim=-1)
    assert 0.2 < float(hit_any_box.float().mean()) < 0.8
    assert not bool((hit_any_box & ~inside).any())  # the bounds never drop a ray that meets a box
    assert float(inside.float().mean()) < 0.9  # and they do drop some


@pytest.mark.parametrize("thresholds", [(1e-4, 0.01), (0.0, 0.0)], ids=["default", "every-sample"])
def test_render_image_equals_rendering_every_pixel(thresholds):
    """Also without the visibility thresholds: then even the faint outer margins of the boxes reach the pixels."""
    model, kp3d, skts = _posed_model()
    eye = kp3d[0].numpy() + [0.4, 0.3, 2.5]
    c2w = torch.as_tensor(look_at(eye, kp3d[0].numpy()), dtype=torch.float32)
    size, focal = 48, 48 / (2 * math.tan(math.radians(20)))
    settings = RenderSettings(RunConfig().train.step_size, early_stop_eps=thresholds[0], alpha_thre=thresholds[1])
    background = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        image = render_image(model, c2w, focal, (size / 2, size / 2), size, size, skts, 0, background, settings)
        rays_o, rays_d = image_rays(c2w, focal, (size / 2, size / 2), size, size)
        codes = torch.zeros(size * size, dtype=torch.long)
        every = render_rays(model, rays_o, rays_d, skts, codes, background.reshape(-1, 3), settings)
    covered = float((every["acc"] > 0.5).float().mean())
    assert 0.05 < covered < 0.6  # the body fills part of the view
    torch.testing.assert_close(image["rgb"].reshape(-1, 3), every["rgb"], rtol=0, atol=1e-6)
    torch.testing.assert_close(image["acc"].reshape(-1), every["acc"], rtol=0, atol=1e-6)
    torch.testing.assert_close(image["depth"].reshape(-1), every["depth"], rtol=0, atol=1e-5)
    assert int(image["n_samples"]) == int(every["n_samples"])
