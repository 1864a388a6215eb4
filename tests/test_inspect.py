"""Tests of ``fast_anerf.data.inspect`` on small hand-made A-NeRF files (not written by the generator)."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from fast_anerf.data.h5_write import write_anerf_h5
from fast_anerf.data.inspect import JOINT_COLOUR, LABEL_HEIGHT, inspect_file, sheet_layout
from fast_anerf.data.rays import project_points
from fast_anerf.data.synthetic import builtin_rest_pose, look_at
from fast_anerf.errors import DataError
from fast_anerf.skeleton import pose_skeleton

N, H, W = 5, 40, 32


def _file(path, extra: bool) -> dict:
    """A minimal A-NeRF file: a skeleton (up = -y) in front of slightly different cameras, random pixels."""
    rng = np.random.default_rng(0)
    rest = torch.as_tensor(builtin_rest_pose(), dtype=torch.float64)
    bones = torch.as_tensor(rng.normal(0, 0.1, (N, 24, 3)))
    bones[:, 0] = torch.tensor([np.pi, 0.0, 0.0])  # y-up canonical -> A-NeRF's y-down world
    kp3d, skts = pose_skeleton(rest, bones, torch.zeros(N, 3))
    c2ws = np.stack([look_at(np.array([0.3 * i - 0.6, -0.2, -3.5]), np.zeros(3)) for i in range(N)])
    data = {
        "imgs": rng.integers(0, 200, (N, H, W, 3), dtype=np.uint8),  # never pure red: marker pixels are ours
        "masks": rng.random((N, H, W)) > 0.5,
        "kp3d": kp3d.numpy(),
        "bones": bones.numpy(),
        "skts": skts.numpy(),
        "c2ws": c2ws,
        "focals": np.full(N, 20.0),
    }
    if extra:
        data |= {
            "gt_kp3d": kp3d.numpy() + 0.01,
            "ext_scale": 0.001,
            "centers": np.tile([W / 2 + 1, H / 2 - 1], (N, 1)),
            "rest_pose": rest.numpy(),
        }
    write_anerf_h5(path, data)
    return data


@pytest.mark.parametrize("extra", [False, True])
def test_report_and_sheet(tmp_path, extra):
    data = _file(tmp_path / "a.h5", extra)
    sheet = tmp_path / "sub" / "sheet.png"
    report = inspect_file(tmp_path / "a.h5", sheet, n_frames=4)
    assert f"{N} images" in report and f"{H}x{W}" in report
    assert "training holds at least 18.8 kB in memory" in report  # 5 x 40 x 32 pixels x 3 bytes = 19,200 bytes
    for key in list(data) + ["img_shape"]:
        assert key in report, key
    if extra:
        assert "17.3 mm" in report  # |(0.01, 0.01, 0.01)| m = 17.3 mm
    else:
        assert "no gt_kp3d" in report

    # Layout: 4 evenly spread frames of 5 -> images 0, 1, 3, 4 in a 2x2 grid of enlarged tiles.
    idxs = [0, 1, 3, 4]
    assert f"{idxs}" in report
    rows, cols, scale, size = sheet_layout(len(idxs), H, W)
    img = iio.imread(sheet)
    assert img.shape[:2] == size == (rows * (H * scale + LABEL_HEIGHT), cols * W * scale)
    assert scale > 1 and not list(tmp_path.glob("sub/.*tmp*"))  # no temp file left behind

    # Every projected joint inside the image carries the joint-marker colour.
    centre = (W / 2 + 1, H / 2 - 1) if extra else (W / 2, H / 2)
    hits = 0
    for k, i in enumerate(idxs):
        uv, depth = project_points(torch.as_tensor(data["kp3d"][i]), data["c2ws"][i], 20.0, centre)
        xy = np.round(uv.numpy() * scale + (scale - 1) / 2).astype(int)
        r, c = divmod(k, cols)
        tile = img[r * (H * scale + LABEL_HEIGHT) + LABEL_HEIGHT :, c * W * scale :]
        for x, y in xy[(depth.numpy() > 0)]:
            if 0 <= x < W * scale and 0 <= y < H * scale:
                assert tuple(tile[y, x]) == JOINT_COLOUR
                hits += 1
    assert hits > 40  # most joints are in view


def test_no_sheet_and_bad_file(tmp_path):
    _file(tmp_path / "a.h5", extra=False)
    assert "contact sheet" not in inspect_file(tmp_path / "a.h5")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="bad.h5"):
        inspect_file(tmp_path / "bad.h5")


def test_the_sheet_never_replaces_a_file_that_is_not_one(tmp_path, capsys):
    """--sheet pointing at the data itself or at notes is refused; an earlier sheet (a PNG) is replaced; the
    default sheet beside the file is skipped with a line of the report."""
    from fast_anerf.cli import entrypoint

    data = tmp_path / "a.h5"
    _file(data, extra=False)
    before = data.read_bytes()
    assert entrypoint(["data", "inspect", str(data), "--sheet", str(data)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {data}: exists and is not a PNG (data, notes?); the contact "
                                               "sheet would replace it — pass --sheet with another path")  # fmt: skip
    assert data.read_bytes() == before
    sheet = tmp_path / "sheet.png"
    assert entrypoint(["data", "inspect", str(data), "--sheet", str(sheet)]) == 0
    first = sheet.read_bytes()
    assert entrypoint(["data", "inspect", str(data), "--sheet", str(sheet), "--frames", "1"]) == 0
    assert sheet.read_bytes() != first  # an earlier sheet is replaced
    default = tmp_path / "a_sheet.png"
    default.write_text("my notes")
    capsys.readouterr()
    assert entrypoint(["data", "inspect", str(data)]) == 0
    assert "contact sheet: not written (" in capsys.readouterr().out and default.read_text() == "my notes"
