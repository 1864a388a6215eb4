"""`fast-anerf render --type val` scores frames as `fast-anerf eval` does: the same ground truth (the photo's body
over the stored background) and, at another aspect, only the columns the photo covers."""

import json
import shutil

import h5py
import numpy as np
import pytest

from fast_anerf.cli import entrypoint


def _val(ckpt, out, *extra) -> dict:
    argv = ["render", "--ckpt", str(ckpt), "--out", str(out), "--type", "val", "--device", "cpu", *extra]
    assert entrypoint(argv) == 0
    return json.loads((out / "render.json").read_text())


def test_val_ground_truth_is_evals_body_over_the_stored_background(tiny_model, tiny_data, tmp_path):
    """The photo's own background differs from ``bkgds`` by noise (as real footage does): val must score the
    photo's body over ``bkgds``, as eval (A-NeRF's --eval) does, not the raw photo."""
    from fast_anerf.data.split import load_split
    from fast_anerf.evaluate import evaluate_split
    from fast_anerf.model import load_character
    from fast_anerf.renderer import RenderSettings

    noisy = tmp_path / "noisy_view.h5"
    shutil.copy(tiny_data / "test_view.h5", noisy)
    with h5py.File(noisy, "r+") as f:
        assert "bkgds" in f
        imgs, masks = f["imgs"][:], f["masks"][:]
        noise = np.random.default_rng(0).integers(-40, 41, imgs.shape)
        outside = masks == 0  # [N, H*W, 1] against imgs [N, H*W, 3]
        f["imgs"][...] = np.where(outside, np.clip(imgs.astype(int) + noise, 0, 255), imgs).astype(np.uint8)
    model, _ = load_character(tiny_model)
    split = load_split(noisy)
    settings = RenderSettings.from_train(model.config.train, training=False)
    last = split.n_images - 1
    scores = evaluate_split(model, split, settings, max_frames=2)["per_frame"]["psnr"]  # frames 0 and last
    info = _val(tiny_model, tmp_path / "val", "--source", str(noisy), "--frames", "0", str(last))
    assert info["psnr_per_frame"] == pytest.approx(scores, abs=0.01)
    raw = _val(tiny_model, tmp_path / "clean", "--source", str(tiny_data / "test_view.h5"), "--frames", "0", str(last))
    assert raw["psnr_per_frame"] == pytest.approx(scores, abs=0.01)  # the noise outside the body does not count


def test_val_on_black_puts_the_ground_truth_on_black_too(tiny_model, tmp_path):
    """--background black: the body is rendered on black, so its ground truth is the photo's body on black (not on
    the file's white background, which scored 0.4 dB)."""
    import imageio.v3 as iio

    white = _val(tiny_model, tmp_path / "white", "--frames", "0", "3")
    black = _val(tiny_model, tmp_path / "black", "--frames", "0", "3", "--background", "black")
    assert black["psnr_per_frame"] == pytest.approx(white["psnr_per_frame"], abs=1.5)
    frame = iio.imread(tmp_path / "black" / "frames" / "00000.png")
    assert (frame[-1, -1] == 0).all() and (frame[-1, 0] == 0).all()  # GT and render corners: black


def test_val_at_a_wider_aspect_scores_only_what_the_photo_covers(tiny_model, tmp_path):
    """At 48x96 the photo (48x48) covers the middle 48 columns; the rest is white padding in both the ground truth
    and the render's background, which would add 10 log10(2) = 3 dB of perfect pixels."""
    native = _val(tiny_model, tmp_path / "native", "--frames", "0", "3")
    wide = _val(tiny_model, tmp_path / "wide", "--frames", "0", "3", "--res", "48", "96")
    assert wide["psnr_per_frame"] == pytest.approx(native["psnr_per_frame"], abs=0.05)
