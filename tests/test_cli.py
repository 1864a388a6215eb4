"""The CLI as a user runs it: data synth / inspect, and one-line errors with exit code 2."""

import json
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
    assert "frames: 4 images, 32x32 px, 4 poses" in report
    for key, shape in (("imgs", "(4, 1024, 3)"), ("masks", "(4, 1024, 1)"), ("kp3d", "(4, 24, 3)"),
                       ("skts", "(4, 24, 4, 4)"), ("c2ws", "(4, 4, 4)"), ("gt_kp3d", "(4, 24, 3)")):  # fmt: skip
        assert any(line.split()[:1] == [key] and shape in line for line in report.splitlines()), (key, report)
    import imageio.v3 as iio

    from fast_anerf.data.inspect import sheet_layout

    assert iio.imread(sheet).shape == (*sheet_layout(4, 32, 32)[3], 3)  # a tile per image


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


def test_mistakes_found_before_any_work(tmp_path, tiny_data, tiny_model, capsys):
    """Each is one line (exit 2) before rendering or refining starts, and writes nothing."""
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    ckpt, frames = str(tiny_model), str(tiny_data / "test_pose.h5")
    refine = ["refine", "--ckpt", ckpt, "--data", frames, "--device", "cpu", "--out"]
    cases = [
        (["eval", "--ckpt", ckpt, "--json", str(tmp_path / "a_folder")], "is a folder; --json is the file"),
        (["eval", "--ckpt", ckpt, "--json", ckpt], "checkpoint.pt: exists and is not an earlier output of eval"),
        (["eval", "--ckpt", ckpt, "--json", frames], "test_pose.h5: exists and is not an earlier output of eval"),
        ([*refine, str(tmp_path / "a_file")], "is a file; --out is the folder refined.h5"),
        ([*refine, str(tmp_path / "r"), "--steps", "0"], "--steps 0: expected at least 1"),
        ([*refine, str(tmp_path / "r"), "--lr", "-1"], "--lr -1.0: expected a learning rate >= 0"),
        ([*refine, str(tmp_path / "r"), "--rays-per-batch", "-5"], "--rays-per-batch -5: expected at least 1 ray"),
        (["data", "inspect", frames, "--frames", "0"], "--frames 0: expected at least 1 frame"),
        (["train", "--data", str(tiny_data), "--out", str(tmp_path / "t"), "--temp-coef", "-1"],
         "temp_coef = -1.0 must be >= 0"),
    ]  # fmt: skip
    for argv, words in cases:
        assert entrypoint(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder"]
    assert not list((tmp_path / "a_folder").iterdir()) and not (tiny_data / "test_pose_sheet.png").exists()
    # A run folder given as --ckpt is read as its checkpoint.pt; an empty file made for the metrics is filled.
    (tmp_path / "made.json").touch()
    argv = ["eval", "--ckpt", str(tiny_model.parent), "--data", frames, "--max-frames", "1", "--json"]
    assert entrypoint([*argv, str(tmp_path / "made.json")]) == 0
    assert json.loads((tmp_path / "made.json").read_text())["splits"]["test_pose"]["frames"] == 1
