"""Packed compositing (torch twin of nerfacc) against dense per-ray compositing."""

import torch

from fast_anerf.sampling.volrend import accumulate, exclusive_sum_packed, pack_info, render_weights


def _random_packed(n_rays=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 9, (n_rays,), generator=g)
    counts[2] = 0  # a ray without samples
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    n = int(counts.sum())
    deltas = torch.rand(n, generator=g) * 0.1 + 0.01
    t_starts = torch.zeros(n)
    for r in range(n_rays):  # consecutive intervals per ray
        sel = ray_indices == r
        t_starts[sel] = torch.cumsum(deltas[sel], 0) - deltas[sel] + 1.0
    sigmas = torch.rand(n, generator=g, dtype=torch.float64).float() * 20
    return ray_indices, t_starts, t_starts + deltas, sigmas, counts


def test_pack_info_and_exclusive_sum():
    ray_indices = torch.tensor([0, 0, 0, 2, 2, 3])
    info = pack_info(ray_indices, 5)
    assert info.tolist() == [[0, 3], [3, 0], [3, 2], [5, 1], [6, 0]]
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert exclusive_sum_packed(values, ray_indices, 5).tolist() == [0.0, 1.0, 3.0, 0.0, 4.0, 0.0]


def test_packed_compositing_equals_dense_outputs_and_gradients():
    ray_indices, t_starts, t_ends, sigmas, counts = _random_packed()
    n_rays = counts.numel()
    scale = torch.rand(n_rays) + 1.0
    rgbs = torch.rand(sigmas.numel(), 3)
    sigmas_p = sigmas.clone().requires_grad_(True)
    rgbs_p = rgbs.clone().requires_grad_(True)
    w, _, _ = render_weights(sigmas_p, t_starts, t_ends, ray_indices, n_rays, ray_scale=scale)
    color = accumulate(w, rgbs_p, ray_indices, n_rays)
    (color * torch.arange(1, 4)).sum().backward()

    sigmas_d = sigmas.clone().requires_grad_(True)
    rgbs_d = rgbs.clone().requires_grad_(True)
    dense = []
    for r in range(n_rays):  # the textbook formula, one ray at a time
        sel = (ray_indices == r).nonzero().squeeze(-1)
        acc_rgb, trans = torch.zeros(3), torch.tensor(1.0)
        for i in sel.tolist():
            alpha = 1 - torch.exp(-sigmas_d[i] * (t_ends[i] - t_starts[i]) * scale[r])
            acc_rgb = acc_rgb + trans * alpha * rgbs_d[i]
            trans = trans * (1 - alpha)
        dense.append(acc_rgb)
    dense = torch.stack(dense)
    (dense * torch.arange(1, 4)).sum().backward()
    torch.testing.assert_close(color, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sigmas_p.grad, sigmas_d.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rgbs_p.grad, rgbs_d.grad, atol=1e-5, rtol=1e-5)
    assert color[2].abs().sum() == 0  # the empty ray stays empty


def test_render_outputs_blend_the_background_by_the_remaining_transmittance():
    """``renderer._composite`` (what render_rays returns) against the per-ray textbook loop: colour over the
    background weighted by 1 - opacity, opacity, and depth as the weight-averaged interval midpoint."""
    from fast_anerf.renderer import _composite

    ray_indices, t_starts, t_ends, sigmas, counts = _random_packed(n_rays=9, seed=3)
    n_rays = counts.numel()
    g = torch.Generator().manual_seed(4)
    scale = torch.rand(n_rays, generator=g) + 0.5
    rgbs = torch.rand(sigmas.numel(), 3, generator=g)
    background = torch.rand(n_rays, 3, generator=g)
    out = _composite(sigmas, rgbs, t_starts, t_ends, ray_indices, scale, background, 0, 0)
    for r in range(n_rays):
        trans, colour, acc, depth = 1.0, torch.zeros(3), 0.0, 0.0
        for i in (ray_indices == r).nonzero().squeeze(-1).tolist():
            alpha = 1 - torch.exp(-sigmas[i] * (t_ends[i] - t_starts[i]) * scale[r])
            colour, acc = colour + trans * alpha * rgbs[i], acc + trans * alpha
            depth, trans = depth + trans * alpha * 0.5 * (t_starts[i] + t_ends[i]), trans * (1 - alpha)
        torch.testing.assert_close(out["rgb"][r], colour + (1 - acc) * background[r], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["acc"][r], torch.as_tensor(acc, dtype=torch.float32), atol=1e-5, rtol=1e-5)
        if acc > 1e-3:
            torch.testing.assert_close(out["depth"][r], torch.as_tensor(depth / acc).float(), atol=1e-4, rtol=1e-4)
    assert 0.05 < float(out["acc"].mean()) < 0.95  # partly opaque rays: the background blend matters
