"""The CLI as a user runs it: data synth / inspect, and one-line errors with exit code 2."""

import subprocess
import sys

import h5py
import numpy as np

from fast_anerf.cli import entrypoint


def test_synth_then_inspect(tmp_path, capsys):
    out = tmp_path / "my data"  # a path with a space
    assert entrypoint(["data", "synth", "--out", str(out), "--frames", "4", "--res", "32"]) == 0
    for name in ("train", "test_view", "test_pose"):
        assert (out / f"{name}.h5").is_file()
    capsys.readouterr()
    sheet = tmp_path / "sheet.png"
    assert entrypoint(["data", "inspect", str(out / "train.h5"), "--sheet", str(sheet)]) == 0
    report = capsys.readouterr().out
    assert "frames" in report and "4" in report
    for key in ("imgs", "masks", "kp3d", "bones", "skts", "c2ws", "focals", "gt_kp3d"):
        assert key in report
    assert sheet.is_file() and sheet.stat().st_size > 1000


def test_bad_file_is_one_line_exit_2_without_traceback(tmp_path, tiny_data):
    bad = tmp_path / "bad.h5"
    with h5py.File(tiny_data / "train.h5") as src, h5py.File(bad, "w") as dst:
        for key in src:
            if key != "skts":
                src.copy(key, dst)
    result = subprocess.run(
        [sys.executable, "-m", "fast_anerf.cli", "data", "inspect", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "bad.h5" in lines[0] and "skts" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad_sheet.png").exists()  # nothing written on failure


def test_train_refuses_nan_pose(tmp_path, tiny_data, capsys):
    bad = tmp_path / "nan_pose.h5"
    with h5py.File(tiny_data / "train.h5") as src, h5py.File(bad, "w") as dst:
        for key in src:
            src.copy(key, dst)
        kp = dst["kp3d"][...]
        kp[0, 3, 1] = np.nan
        dst["kp3d"][...] = kp
    code = entrypoint(["train", "--data", str(bad), "--out", str(tmp_path / "run"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "nan_pose.h5" in err and "kp3d" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
