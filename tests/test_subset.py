"""`fast-anerf data subset`: the written file holds exactly the chosen images and the poses they use."""

from pathlib import Path

import numpy as np
import pytest
import torch
from test_anerf_h5 import H, W, make_data

import fast_anerf.data.subset as subset_module
from fast_anerf.cli import entrypoint
from fast_anerf.data.anerf_h5 import open_anerf_h5
from fast_anerf.data.h5_write import write_anerf_h5
from fast_anerf.data.split import load_split


def per_image(path: Path) -> dict:
    """What a reader sees per image: pixels, masks, background, camera and the pose the image uses."""
    with open_anerf_h5(path) as d:
        rows = d.pose_idxs
        out = {
            "imgs": np.stack([d.image(i) for i in range(d.n_images)]),
            "masks": np.stack([d.mask(i) for i in range(d.n_images)]),
            "sampling": np.stack([d.sampling_mask(i) for i in range(d.n_images)]),
            "bkgd": np.stack([d.background(i) for i in range(d.n_images)]),
            "paths": list(d.arrays["img_paths"]),
        }
        for key in ("c2ws", "focals", "centers", "cam_idxs", "gt_kp3d"):
            if key in d.arrays:
                out[key] = d.arrays[key]
        for key in ("kp3d", "bones", "skts", "cyls"):
            out[key] = d.arrays[key][rows]
        out["rest_pose"], out["n_poses"] = d.arrays["rest_pose"], d.n_poses
    return out


def assert_selected(source: dict, subset: dict, ids) -> None:
    for key, value in source.items():
        if key in ("rest_pose", "n_poses"):
            continue
        want = [value[i] for i in ids] if isinstance(value, list) else value[ids]
        np.testing.assert_array_equal(subset[key], want, err_msg=key)
    np.testing.assert_array_equal(subset["rest_pose"], source["rest_pose"])


def test_select_in_any_order_across_blocks(tmp_path, monkeypatch):
    """Indices from a .npy in shuffled order, copied 2 images per block: image i of the subset is image ids[i]."""
    src = tmp_path / "src.h5"
    write_anerf_h5(src, make_data(n=7, n_poses=7))
    ids = np.array([5, 0, 3, 6, 2])
    np.save(tmp_path / "selected.npy", ids)
    monkeypatch.setattr(subset_module, "_BLOCK", 2)
    assert entrypoint(["data", "subset", str(src), "--out", str(tmp_path / "sub.h5"), "--select",
                       str(tmp_path / "selected.npy")]) == 0  # fmt: skip
    sub = per_image(tmp_path / "sub.h5")
    assert sub["n_poses"] == 5
    assert_selected(per_image(src), sub, ids)


def test_surreal_cameras_share_pose_rows(tmp_path, capsys):
    """SURREAL's layout (3 cameras x 4 poses, camera-major, no kp_idxs): `--cameras 0 2` keeps 8 images and the
    4 poses, and writes kp_idxs so each image still uses its own pose; the held-in-memory split agrees."""
    data = make_data(n=12, n_poses=4)
    del data["cam_idxs"]
    src = tmp_path / "surreal.h5"
    write_anerf_h5(src, data)
    out = tmp_path / "cams.h5"
    assert entrypoint(["data", "subset", str(src), "--out", str(out), "--cameras", "0", "2"]) == 0
    assert f"{out}: 8 of 12 images, 4 poses" in capsys.readouterr().out
    ids = np.r_[0:4, 8:12]
    assert_selected(per_image(src), per_image(out), ids)
    whole, part = load_split(src), load_split(out)
    assert torch.equal(part.images_u8, whole.images_u8[ids])
    assert torch.equal(part.kp3d[part.pose_idxs], whole.kp3d[whole.pose_idxs[ids]])
    starts = torch.cumsum(whole.sample_counts, 0) - whole.sample_counts
    expected = torch.cat([whole.sample_pixels[starts[i] : starts[i] + whole.sample_counts[i]] for i in ids])
    assert torch.equal(part.sample_pixels, expected)
    # Images sharing pose rows in an order SURREAL's i % n_poses rule would get wrong: kp_idxs maps them.
    (tmp_path / "ids.txt").write_text("1\n5\n9\n2\n")
    assert entrypoint(["data", "subset", str(src), "--out", str(tmp_path / "shared.h5"), "--select",
                       str(tmp_path / "ids.txt")]) == 0  # fmt: skip
    shared = per_image(tmp_path / "shared.h5")
    assert shared["n_poses"] == 2
    assert_selected(per_image(src), shared, np.array([1, 5, 9, 2]))
    # The subset says which camera each image came from, so it can be split by camera again.
    with open_anerf_h5(out) as picked:
        assert picked.arrays["cam_idxs"].tolist() == [0] * 4 + [2] * 4
    again = tmp_path / "cam2.h5"
    assert entrypoint(["data", "subset", str(out), "--out", str(again), "--cameras", "2"]) == 0
    assert_selected(per_image(src), per_image(again), np.r_[8:12])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--select", "3:99", "--cameras", "7"], "no images of camera 7"),
        (["--select", "::0"], "a slice step cannot be 0"),
        (["--select", "nowhere.npy"], "--select nowhere.npy: no such file"),
        (["--select", "{dir}/big.npy"], "image index 9 is out of range; {dir}/src.h5 has 6 images (0..5)"),
        (["--select", "{dir}/twice.txt"], "repeats image indices"),
        (["--select", "{dir}/words.txt"], "cannot read image indices"),
        (["--select", "4:2"], "chooses no images"),
        ([], "pass --select and/or --cameras"),
        (["--select", "0:2", "--out", "{dir}/src.h5"], "--out is the source file"),
        (["--select", "0:2", "--out", "{dir}/exists.h5"], "exists — choose another --out, or pass --overwrite"),
        (["--select", "{dir}/short_mask.npy"], "short_mask.npy: a mask of 4 values for 6 images; expected one per"),
        (["--select", "{dir}/huge.npy"], "huge.npy: image index 18446744073709551615 is out of range"),
        (["--select", "{dir}/empty.txt"], "chooses no images"),
    ],
)
def test_bad_selections_are_one_line_errors_and_write_nothing(args, message, tmp_path, capsys):
    src = tmp_path / "src.h5"
    write_anerf_h5(src, make_data())
    np.save(tmp_path / "big.npy", np.array([1, 9]))
    (tmp_path / "twice.txt").write_text("1\n2\n1\n")
    (tmp_path / "words.txt").write_text("one two\n")
    (tmp_path / "exists.h5").write_bytes(b"keep me")
    np.save(tmp_path / "short_mask.npy", np.array([True, False, True, True]))
    np.save(tmp_path / "huge.npy", np.array([1, 2**64 - 1], np.uint64))
    (tmp_path / "empty.txt").write_text("")
    args = [a.format(dir=tmp_path) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "sub.h5")]
    assert entrypoint(["data", "subset", str(src), *out, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message.format(dir=tmp_path) in err and "\n" not in err, err
    assert not (tmp_path / "sub.h5").exists() and (tmp_path / "exists.h5").read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_images_stored_unflattened_are_copied_too(tmp_path):
    """The reader accepts [N, H, W, 3] images; the subset keeps that layout and the same pixels."""
    import h5py

    src = tmp_path / "src.h5"
    write_anerf_h5(src, make_data())
    with h5py.File(src, "a") as f:
        imgs = f["imgs"][()].reshape(-1, H, W, 3)
        del f["imgs"]
        f.create_dataset("imgs", data=imgs)
    assert entrypoint(["data", "subset", str(src), "--out", str(tmp_path / "sub.h5"), "--select", "1::2"]) == 0
    assert_selected(per_image(src), per_image(tmp_path / "sub.h5"), np.array([1, 3, 5]))


def test_mixamo_selection_keeps_time_instants_for_multiview(tmp_path):
    """Mixamo's layout: one SPIN pose per image, kp_idxs = the time instant shared by the 4 cameras. A selected
    subset keeps each image's own pose and its time instant, so --multiview still groups the same views."""
    n = 8  # 4 cameras x 2 instants, camera-major
    data = make_data(n=n, n_poses=n)
    data["kp_idxs"], data["cam_idxs"] = np.arange(n) % 2, np.arange(n) // 2
    src = tmp_path / "Archer_processed_h5py.h5"
    write_anerf_h5(src, data)
    ids = np.array([1, 2, 5, 7])
    np.save(tmp_path / "Archer_selected.npy", ids)
    out = tmp_path / "archer.h5"
    assert entrypoint(["data", "subset", str(src), "--select", str(tmp_path / "Archer_selected.npy"), "--out",
                       str(out)]) == 0  # fmt: skip
    assert_selected(per_image(src), per_image(out), ids)
    with open_anerf_h5(out) as d:
        np.testing.assert_array_equal(d.arrays["kp_idxs"], [1, 0, 1, 1])
        np.testing.assert_array_equal(d.arrays["cam_idxs"], [0, 1, 2, 3])


def test_ctrl_c_that_h5py_swallows_still_drops_the_file(tmp_path, capsys):
    """A SIGINT whose handler runs inside a weakref callback (as in h5py's clean-up while images are copied) is
    printed as "Exception ignored" and dropped by Python; the write must still stop, leaving no file."""
    import os
    import signal
    import weakref

    from fast_anerf.data.h5_write import atomic_h5

    class Handle:
        pass

    def interrupt_inside_callback(_ref) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):  # the handler runs between these bytecodes, inside the callback
            pass

    out = tmp_path / "x.h5"
    with pytest.raises(KeyboardInterrupt):
        with atomic_h5(out) as f:
            f.create_dataset("a", data=np.zeros(3))
            handle = Handle()
            ref = weakref.ref(handle, interrupt_inside_callback)
            del handle  # the callback runs here; its KeyboardInterrupt goes nowhere
            f.create_dataset("b", data=np.ones(3))  # the write goes on
    assert ref() is None and not out.exists() and list(tmp_path.iterdir()) == []
    assert "Exception ignored" not in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
