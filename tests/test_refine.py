"""`fast-anerf refine` over windows of consecutive frames: every frame gets the same steps, frames outside the
window being refined stay put, and Ctrl-C + ``--resume`` gives the uninterrupted result."""

import shutil
import signal
import sys

import h5py
import numpy as np
import pytest
import torch
from processes import run_until

from fast_anerf.cli import entrypoint
from fast_anerf.refine import PROGRESS_NAME, consecutive_windows


def _refine(tiny_model, data, out, *extra) -> int:
    argv = ["refine", "--ckpt", str(tiny_model), "--data", str(data), "--out", str(out), "--steps", "6", "--lr",
            "1e-2", "--rays-per-batch", "96", "--window", "3", "--device", "cpu", "--backend", "torch"]  # fmt: skip
    return entrypoint([*argv, *extra])


def test_windows_are_consecutive_balanced_and_keep_a_unit_whole():
    windows = consecutive_windows(torch.arange(8), 8, 3)
    assert [w.tolist() for w in windows] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [len(w) for w in consecutive_windows(torch.arange(130), 130, 64)] == [44, 44, 42]
    # Time instants of 4 images each (multiview), images listed instant-major: an instant is never split.
    units = torch.arange(8).repeat_interleave(4)
    windows = consecutive_windows(units, 8, 10)  # ceil(32 / 10) = 4 windows of 2 instants
    assert [sorted(set(units[w].tolist())) for w in windows] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert torch.equal(torch.cat(windows).sort().values, torch.arange(32))
    # Instants of 4 images, at most 6 per window: one instant each (two would not fit in one batch of 6).
    assert [len(w) for w in consecutive_windows(torch.arange(5).repeat_interleave(4), 5, 6)] == [4] * 5
    # An instant larger than a window is a window of its own.
    assert [len(w) for w in consecutive_windows(torch.tensor([0, 1, 1, 1, 2]), 3, 2)] == [1, 3, 1]
    # A row no image uses (unit 2) just makes no window bigger.
    assert [w.tolist() for w in consecutive_windows(torch.tensor([0, 1, 3, 4]), 5, 2)] == [[0, 1], [2, 3]]


def test_interrupted_refinement_resumes_to_the_uninterrupted_result(tiny_model, tiny_data, tmp_path, monkeypatch,
                                                                    capsys):  # fmt: skip
    import fast_anerf.refine as refine

    data = tmp_path / "train.h5"  # 8 frames: windows of 3, 3 and 2 images
    shutil.copy(tiny_data / "train.h5", data)
    assert _refine(tiny_model, data, tmp_path / "straight") == 0
    with h5py.File(tmp_path / "straight" / "refined.h5") as f:
        straight = {k: f[k][:] for k in ("bones", "kp3d", "skts")}
    with h5py.File(data) as f:
        initial = f["kp3d"][:]
    assert not (tmp_path / "straight" / PROGRESS_NAME).exists()
    moved = np.abs(straight["kp3d"] - initial).max(axis=(1, 2))
    assert (moved > 1e-4).all(), moved  # every window's frames were refined

    original = refine._refine_window

    def ctrl_c_in_window_2(*args):
        if args[7] == 1:  # k
            raise KeyboardInterrupt
        return original(*args)

    out = tmp_path / "resumed"
    monkeypatch.setattr(refine, "_refine_window", ctrl_c_in_window_2)
    capsys.readouterr()
    assert _refine(tiny_model, data, out) == 130
    assert "1 of 3 windows are saved" in capsys.readouterr().out
    assert (out / PROGRESS_NAME).is_file() and not (out / "refined.h5").exists()
    saved = torch.load(out / PROGRESS_NAME, weights_only=True)["poses"]["root"].numpy()
    assert np.abs(saved[:3] - initial[:3, 0]).max() > 1e-4  # window 1 refined ...
    assert np.array_equal(saved[3:], initial[3:, 0])  # ... the frames of the later windows untouched

    assert _refine(tiny_model, data, out) == 2  # without --resume: refused, progress kept
    err = capsys.readouterr().err
    assert PROGRESS_NAME in err and "--resume" in err and "--overwrite" in err
    assert _refine(tiny_model, data, out, "--resume", "--steps", "7") == 2  # other options: refused, named
    assert "steps=6 (now 7)" in capsys.readouterr().err
    shutil.move(data, tmp_path / "kept.h5")  # other frames at the same path: refused too
    np.save(tmp_path / "reverse.npy", np.arange(8)[::-1].copy())
    assert entrypoint(["data", "subset", str(tmp_path / "kept.h5"), "--select", str(tmp_path / "reverse.npy"), "--out",
                       str(data)]) == 0  # fmt: skip
    capsys.readouterr()
    assert _refine(tiny_model, data, out, "--resume") == 2
    assert "data_fingerprint=" in capsys.readouterr().err
    shutil.move(tmp_path / "kept.h5", data)
    monkeypatch.setattr(refine, "_refine_window", original)
    assert _refine(tiny_model, data, out, "--resume") == 0
    assert "resuming after window 1" in capsys.readouterr().out
    with h5py.File(out / "refined.h5") as f:
        for key, value in straight.items():
            assert np.array_equal(f[key][:], value), key
    assert not (out / PROGRESS_NAME).exists()


def test_ctrl_c_keeps_the_finished_windows_and_exits_130(tiny_model, tiny_data, tmp_path):
    """A real SIGINT in window 2 of 3 (its own process): exit 130, window 1 saved, no refined.h5, no traceback."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fast_anerf.cli", "refine", "--ckpt", str(tiny_model), "--data",
           str(tiny_data / "train.h5"), "--out", str(out), "--steps", "400", "--window", "3", "--rays-per-batch",
           "96", "--device", "cpu", "--backend", "torch"]  # fmt: skip
    proc, lines = run_until(cmd, r"^window 2/3 step\s+50/")
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    text = "".join(lines) + rest
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "1 of 3 windows are saved" in text and "--resume continues" in text
    assert torch.load(out / PROGRESS_NAME, weights_only=True)["windows_done"] == 1
    assert not (out / "refined.h5").exists()


def test_ctrl_c_in_window_1_saves_nothing_and_overwrite_starts_over(tiny_model, tiny_data, tmp_path, monkeypatch,
                                                                     capsys):  # fmt: skip
    import fast_anerf.refine as refine

    out = tmp_path / "run"
    out.mkdir()
    torch.save({"settings": {}, "windows_done": 1, "poses": {}}, out / PROGRESS_NAME)  # an older interrupted run

    def ctrl_c(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(refine, "_refine_window", ctrl_c)
    assert _refine(tiny_model, tiny_data / "train.h5", out, "--overwrite") == 130
    assert "no window was finished, nothing saved; the same command starts again" in capsys.readouterr().out
    assert not (out / PROGRESS_NAME).exists()  # --overwrite started over: the old progress is not resumable


def test_an_empty_sampling_mask_is_found_before_the_first_window(tiny_model, tiny_data, tmp_path, capsys):
    data = tmp_path / "empty.h5"
    shutil.copy(tiny_data / "train.h5", data)
    with h5py.File(data, "r+") as f:
        f["sampling_masks"][7] = 0
        f["masks"][7] = 0
    assert _refine(tiny_model, data, tmp_path / "out", "--steps", "1000") == 2
    captured = capsys.readouterr()
    assert "of image 7 is empty" in captured.err and "window 1/3" not in captured.out


def test_resume_without_an_interrupted_refinement_is_refused(tiny_model, tiny_data, tmp_path, capsys):
    assert _refine(tiny_model, tiny_data / "train.h5", tmp_path / "none", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'none'}: no interrupted refinement to resume (no {PROGRESS_NAME}); drop --resume"


@pytest.mark.parametrize("window", ["0", "-3"])
def test_a_window_without_images_is_refused(tiny_model, tiny_data, tmp_path, capsys, window):
    assert _refine(tiny_model, tiny_data / "train.h5", tmp_path / "w", "--window", window) == 2
    assert f"--window {window}: expected at least 1 image" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
