"""Image metrics of `fast-anerf eval` against plain per-pixel definitions."""

import math

import numpy as np
import pytest
import torch

from fast_anerf.evaluate import psnr, ssim, ssim_map


def _ssim_reference(x: np.ndarray, y: np.ndarray, window: int = 11, sigma: float = 1.5) -> np.ndarray:
    """SSIM per pixel, one window at a time (Wang et al. 2004): Gaussian-weighted means, variances and covariance
    over the window centred on the pixel, the image extended by zeros (A-NeRF's pytorch-msssim fork pads the
    convolution); mean over channels."""
    h, w, _ = x.shape
    r = window // 2
    g = np.exp(-((np.arange(window) - r) ** 2) / (2 * sigma**2))
    weights = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            values = []
            for c in range(3):
                a, b = np.zeros((window, window)), np.zeros((window, window))
                for di in range(window):
                    for dj in range(window):
                        if 0 <= i + di - r < h and 0 <= j + dj - r < w:
                            a[di, dj], b[di, dj] = x[i + di - r, j + dj - r, c], y[i + di - r, j + dj - r, c]
                mu_a, mu_b = (weights * a).sum(), (weights * b).sum()
                var_a = (weights * (a - mu_a) ** 2).sum()
                var_b = (weights * (b - mu_b) ** 2).sum()
                cov = (weights * (a - mu_a) * (b - mu_b)).sum()
                values.append(
                    ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
                )
            out[i, j] = np.mean(values)
    return out


def test_ssim_equals_the_per_window_definition():
    rng = np.random.default_rng(0)
    x = rng.random((13, 17, 3))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    ours = ssim_map(torch.as_tensor(x), torch.as_tensor(y)).numpy()
    np.testing.assert_allclose(ours, _ssim_reference(x, y), atol=1e-9)
    assert ssim(torch.as_tensor(x), torch.as_tensor(x)) == 1.0
    mask = torch.zeros(13, 17, dtype=torch.bool)
    mask[3:7, 5:9] = True
    assert ssim(torch.as_tensor(x), torch.as_tensor(y), mask) == pytest.approx(float(ours[3:7, 5:9].mean()), abs=1e-12)


def test_psnr_whole_and_masked():
    target = torch.zeros(4, 5, 3)
    pred = torch.zeros(4, 5, 3)
    pred[0, 0] = 0.1  # one pixel off by 0.1 in every channel
    assert psnr(pred, target) == pytest.approx(-10 * math.log10(0.01 / 20), abs=1e-5)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[0, :2] = True
    assert psnr(pred, target, mask) == pytest.approx(-10 * math.log10(0.01 / 2), abs=1e-5)
    assert psnr(target, target) == 100.0  # the MSE floor (1e-10): identical images give 100 dB, not inf


def test_cylinder_box_holds_the_body_and_little_else(tiny_data):
    """A-NeRF's --eval region: every ground-truth body pixel of the held-out frames lies inside the projected
    cylinder's box, and the box leaves most of the background out."""
    from fast_anerf.data.split import load_split
    from fast_anerf.evaluate import cylinder_box

    split = load_split(tiny_data / "test_view.h5")
    areas = []
    for i in range(split.n_images):
        rows, cols = cylinder_box(split.kp3d[split.pose_idxs[i]], split.c2ws[i], float(split.focals[i]),
                                  tuple(split.centers[i].tolist()), split.height, split.width, 0.25)  # fmt: skip
        inside = torch.zeros(split.height, split.width, dtype=torch.bool)
        inside[rows, cols] = True
        mask = split.masks[i]
        assert mask.any() and not (mask & ~inside).any(), i
        areas.append(float(inside.float().mean()))
    assert sum(areas) / len(areas) < 0.7 and min(areas) < 0.5, areas  # wide only for arms-out poses


def test_evaluate_split_scores_each_frame_from_its_own_camera_and_pose(tiny_model, tiny_data):
    """Every per-frame score equals the score of that frame rendered on its own (camera, pose, background), for
    the whole image, A-NeRF's box and the foreground; a wrong camera or pose for some frame would not match."""
    from fast_anerf.data.split import load_split
    from fast_anerf.evaluate import cylinder_box, evaluate_split
    from fast_anerf.model import load_character
    from fast_anerf.renderer import RenderSettings, render_image

    model, _ = load_character(tiny_model, backend="torch")
    model.eval()
    split = load_split(tiny_data / "test_view.h5")
    settings = RenderSettings.from_train(model.config.train, training=False)
    result = evaluate_split(model, split, settings, max_frames=4)
    assert len(result["frame_indices"]) == 4
    for k, i in enumerate(result["frame_indices"]):
        skts = split.skts[split.pose_idxs[i]]
        center = tuple(split.centers[i].tolist())
        out = render_image(model, split.c2ws[i], float(split.focals[i]), center, split.height, split.width, skts,
                           code_id=-1, background=split.background(i), settings=settings)  # fmt: skip
        pred = out["rgb"].clamp(0, 1)
        gt, mask = split.image(i), split.masks[i]
        rows, cols = cylinder_box(split.kp3d[split.pose_idxs[i]], split.c2ws[i], float(split.focals[i]), center,
                                  split.height, split.width, 0.25)  # fmt: skip
        assert result["per_frame"]["psnr"][k] == pytest.approx(psnr(pred, gt), abs=1e-4)
        assert result["per_frame"]["psnr_fg"][k] == pytest.approx(psnr(pred, gt, mask), abs=1e-4)
        assert result["per_frame"]["psnr_box"][k] == pytest.approx(psnr(pred[rows, cols], gt[rows, cols]), abs=1e-4)
        assert result["per_frame"]["ssim_fg"][k] == pytest.approx(ssim(pred, gt, mask), abs=1e-5)
        if k == 0:  # the first frame is kept for the training previews, next to its photo
            torch.testing.assert_close(result["_preview"][0], pred)
            torch.testing.assert_close(result["_preview"][1], gt)
    # The three regions are three different numbers: the background is easy, the body is hard.
    assert result["psnr"] > result["psnr_box"] > result["psnr_fg"]


def test_eval_scores_the_photos_body_over_the_files_background(tiny_model, tiny_data, tmp_path):
    """A-NeRF's --eval: with a stored background (``bkgds``), the ground truth is the photo's masked body over
    that background, so what the photo shows around the body (noise, passers-by) changes no score."""
    import shutil

    import h5py

    from fast_anerf.data.split import load_split
    from fast_anerf.evaluate import evaluate_split
    from fast_anerf.model import load_character
    from fast_anerf.renderer import RenderSettings

    model, _ = load_character(tiny_model, backend="torch")
    model.eval()
    settings = RenderSettings.from_train(model.config.train, training=False)
    rng = np.random.default_rng(0)
    results = {}
    for name, noise in (("clean", 0), ("noisy", 60)):
        path = tmp_path / f"{name}.h5"
        shutil.copy(tiny_data / "test_view.h5", path)
        with h5py.File(path, "r+") as f:
            imgs, masks = f["imgs"][:], f["masks"][:] != 0  # [N, H*W, 3], [N, H*W, 1]
            grey = np.full((1, *imgs.shape[1:]), 150, np.uint8)
            jitter = rng.integers(-noise, noise + 1, imgs.shape) if noise else 0
            photo_bg = np.clip(grey.astype(int) + jitter, 0, 255).astype(np.uint8)
            for key in ("imgs", "bkgds", "bkgd_idxs"):
                if key in f:
                    del f[key]
            f.create_dataset("imgs", data=np.where(masks, imgs, photo_bg))
            f.create_dataset("bkgds", data=grey)
            f.create_dataset("bkgd_idxs", data=np.zeros(len(imgs), np.int64))
        results[name] = evaluate_split(model, load_split(path), settings, max_frames=3)
    for key in ("psnr", "ssim", "psnr_box", "ssim_box", "psnr_fg", "ssim_fg"):
        assert results["noisy"][key] == pytest.approx(results["clean"][key], abs=1e-6), key
    # ... and the stored background is what the scores see: on it the whole image scores above the body alone.
    assert results["clean"]["psnr"] > results["clean"]["psnr_fg"] + 3
