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
