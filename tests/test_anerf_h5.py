"""A-NeRF .h5 reading/writing: exact round trips, A-NeRF's own layout, and one-line errors for bad files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from fast_anerf.data.anerf_h5 import REQUIRED_KEYS, dilate_mask, open_anerf_h5
from fast_anerf.data.h5_write import write_anerf_h5
from fast_anerf.errors import DataError

N, H, W = 6, 16, 12
FLOAT_KEYS = ("kp3d", "bones", "skts", "c2ws", "focals", "centers", "cyls", "rest_pose", "betas", "gt_kp3d")


def make_data(n: int = N, n_poses: int = N, seed: int = 0) -> dict:
    """A small, valid data dict with every optional key (unflattened images)."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n, H, W)) < 0.3
    skts = np.tile(np.eye(4, dtype=np.float32), (n_poses, 24, 1, 1))
    skts[..., :3, 3] = rng.normal(size=(n_poses, 24, 3))
    c2ws = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))  # rigid, as the reader requires
    c2ws[:, :3, :3] = np.linalg.qr(rng.normal(size=(n, 3, 3)))[0]
    c2ws[:, :3, 3] = rng.normal(size=(n, 3))
    return {
        "imgs": rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8),
        "masks": masks,
        "sampling_masks": dilate_mask(masks),
        "bkgds": rng.integers(0, 256, (2, H, W, 3), dtype=np.uint8),
        "bkgd_idxs": np.arange(n) % 2,
        "kp3d": rng.normal(size=(n_poses, 24, 3)).astype(np.float32),
        "bones": rng.normal(size=(n_poses, 24, 3)).astype(np.float32),
        "skts": skts,
        "c2ws": c2ws,
        "focals": rng.uniform(10, 20, n).astype(np.float32),
        "centers": rng.uniform(4, 8, (n, 2)).astype(np.float32),
        "cyls": rng.uniform(size=(n_poses, 5)).astype(np.float32),
        "rest_pose": rng.normal(size=(24, 3)).astype(np.float32),
        "betas": rng.normal(size=(1, 10)).astype(np.float32),
        "gt_kp3d": rng.normal(size=(n, 17, 3)).astype(np.float32),
        "cam_idxs": np.arange(n, dtype=np.int64),
        "ext_scale": 0.001,
        "img_paths": [f"/data/cam{i}/frame_ü{i:04d}.png" for i in range(n)],
    }


def raw_write(path: Path, data: dict) -> Path:
    """Write keys verbatim with h5py (no conversion or validation), like a foreign writer would."""
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            f.create_dataset(k, data=v)
    return path


def anerf_style(n: int = N, n_poses: int = 3) -> dict:
    """What A-NeRF's writer produces: flattened images, (N, H*W, 1) uint8 masks, int32 img_shape."""
    d = make_data(n, n_poses)
    return {
        "imgs": d["imgs"].reshape(n, H * W, 3),
        "masks": d["masks"].reshape(n, H * W, 1).astype(np.uint8),
        "img_shape": np.array([n, H, W, 3], np.int32),
        "kp3d": d["kp3d"],
        "bones": d["bones"],
        "skts": d["skts"],
        "c2ws": d["c2ws"],
        "focals": d["focals"],
        "img_paths": np.array([p.encode() for p in d["img_paths"]]),
        "my_extra": np.arange(3),
    }


def test_round_trip_every_key(tmp_path):
    d = make_data()
    path = tmp_path / "train.h5"
    write_anerf_h5(path, d)
    with open_anerf_h5(path) as data:
        assert (data.n_images, data.height, data.width, data.n_poses) == (N, H, W, N)
        assert data.keys["imgs"] == ((N, H * W, 3), "uint8")
        assert data.keys["masks"] == ((N, H * W, 1), "uint8")
        assert data.keys["kp3d"][1] == "float32" and data.keys["cam_idxs"][1] == "int64"
        assert data.extra_keys == []
        for key in FLOAT_KEYS:
            np.testing.assert_array_equal(data.arrays[key], d[key])
        np.testing.assert_array_equal(data.arrays["cam_idxs"], d["cam_idxs"])
        np.testing.assert_array_equal(data.arrays["img_shape"], [N, H, W, 3])
        assert data.arrays["ext_scale"] == np.float32(0.001)
        assert list(data.arrays["img_paths"]) == d["img_paths"]
        for i in range(N):
            np.testing.assert_array_equal(data.image(i), d["imgs"][i])
            np.testing.assert_array_equal(data.mask(i), d["masks"][i])
            np.testing.assert_array_equal(data.sampling_mask(i), d["sampling_masks"][i])
            np.testing.assert_array_equal(data.background(i), d["bkgds"][i % 2])
            assert data.pose_index(i) == i
            assert data.center(i) == tuple(float(c) for c in d["centers"][i])
        # Lazily read pixels: unsorted, repeated ids come back in the caller's order.
        ids = np.array([H * W - 1, 0, 37, 5, 37, W])
        np.testing.assert_array_equal(data.pixels(3, ids), d["imgs"][3].reshape(-1, 3)[ids])
        assert data.pixels(3, np.zeros(0, np.int64)).shape == (0, 3)
        clone = pickle.loads(pickle.dumps(data))  # for spawned DataLoader workers
        np.testing.assert_array_equal(clone.image(1), d["imgs"][1])
        clone.close()
        everything = data.load_all()
        np.testing.assert_array_equal(everything["imgs"], d["imgs"])
        np.testing.assert_array_equal(everything["masks"], d["masks"])
        np.testing.assert_array_equal(everything["sampling_masks"], d["sampling_masks"])
        np.testing.assert_array_equal(everything["bkgds"], d["bkgds"])


def test_write_accepts_flattened_images(tmp_path):
    d = make_data()
    flat = dict(d, imgs=d["imgs"].reshape(N, H * W, 3), masks=d["masks"].reshape(N, H * W), img_shape=(N, H, W, 3))
    del flat["bkgds"], flat["bkgd_idxs"], flat["sampling_masks"], flat["centers"]
    write_anerf_h5(tmp_path / "flat.h5", flat)
    with open_anerf_h5(tmp_path / "flat.h5") as data:
        np.testing.assert_array_equal(data.image(2), d["imgs"][2])
        np.testing.assert_array_equal(data.mask(2), d["masks"][2])
        assert data.background(2) is None
        assert data.center(0) == (W / 2, H / 2)
        assert data.load_all()["bkgds"] is None


def test_reads_anerf_layout_surreal_style(tmp_path):
    d = anerf_style(n=N, n_poses=3)
    with open_anerf_h5(raw_write(tmp_path / "surreal.h5", d)) as data:
        assert data.n_poses == 3 and data.extra_keys == ["my_extra"]
        assert "my_extra" in data.keys and "my_extra" not in data.arrays
        assert [data.pose_index(i) for i in range(N)] == [0, 1, 2, 0, 1, 2]
        mask = d["masks"][4, :, 0].reshape(H, W) != 0
        np.testing.assert_array_equal(data.mask(4), mask)
        np.testing.assert_array_equal(data.sampling_mask(4), dilate_mask(mask))  # no sampling_masks stored
        np.testing.assert_array_equal(data.pixels(4, [3, 1]), d["imgs"][4][[3, 1]])
        assert data.arrays["img_paths"][1] == d["img_paths"][1].decode()


def test_kp_idxs_and_shared_camera(tmp_path):
    d = anerf_style(n=N, n_poses=4)
    d["kp_idxs"] = np.array([3, 3, 2, 1, 0, 0])
    d["c2ws"], d["focals"] = d["c2ws"][0], np.float32(500.0)  # one camera for every image
    with open_anerf_h5(raw_write(tmp_path / "k.h5", d)) as data:
        assert [data.pose_index(i) for i in range(N)] == [3, 3, 2, 1, 0, 0]
        assert data.arrays["c2ws"].shape == (N, 4, 4) and data.arrays["focals"].shape == (N,)
        np.testing.assert_array_equal(data.arrays["c2ws"][5], d["c2ws"])


def test_perfcap_style_float_indices_are_whole_numbers(tmp_path):
    # A-NeRF's PerfCap writer stores bkgd_idxs = np.zeros(N) as float32; A-NeRF reads it with astype(int64).
    d = anerf_style(n=N, n_poses=N)
    d["bkgds"] = np.zeros((1, H * W, 3), np.uint8)
    d["bkgd_idxs"] = np.zeros(N, np.float32)
    d["kp_idxs"] = np.arange(N, dtype=np.float32)
    with open_anerf_h5(raw_write(tmp_path / "perfcap.h5", d)) as data:
        assert data.arrays["bkgd_idxs"].dtype == np.int64 and data.background(3).shape == (H, W, 3)
        assert data.arrays["kp_idxs"].tolist() == list(range(N))
    d["bkgd_idxs"] = np.full(N, 0.5, np.float32)
    with pytest.raises(DataError, match=rf"'bkgd_idxs' has shape \({N},\) \(float32\); expected \({N},\) whole"):
        open_anerf_h5(raw_write(tmp_path / "half.h5", d))


def test_per_camera_rows_follow_cam_idxs_in_any_image_order(tmp_path):
    # Four cameras, images ordered frame by frame (camera 0 1 2 3 0 1 2 3 ...): cam_idxs says which is which.
    n, n_cams = 8, 4
    d = anerf_style(n=n, n_poses=n // n_cams)
    cameras, focals = d["c2ws"][:n_cams], np.array([100.0, 200.0, 300.0, 400.0], np.float32)
    d.update(c2ws=cameras, focals=focals, cam_idxs=np.arange(n) % n_cams, kp_idxs=np.arange(n) // n_cams)
    with open_anerf_h5(raw_write(tmp_path / "frames.h5", d)) as data:
        assert data.arrays["focals"].tolist() == [100, 200, 300, 400] * 2
        np.testing.assert_array_equal(data.arrays["c2ws"][6], cameras[2])
        assert [data.pose_index(i) for i in range(n)] == [0, 0, 0, 0, 1, 1, 1, 1]
    # Cameras numbered 1..4 (as the built-in files number theirs) do not say which of 4 rows: refused, not guessed.
    with pytest.raises(DataError, match=r"'cam_idxs' has values 1\.\.4 but c2ws has 4 rows.*number the cameras 0\.\.3"):
        open_anerf_h5(raw_write(tmp_path / "from1.h5", {**d, "cam_idxs": np.arange(n) % n_cams + 1}))
    # Shared pose rows without kp_idxs, cam_idxs saying the images go frame by frame: refused, not guessed.
    no_kp = {k: v for k, v in d.items() if k != "kp_idxs"}
    with pytest.raises(DataError, match="'kp3d' has 2 poses for 8 images.*add kp_idxs"):
        open_anerf_h5(raw_write(tmp_path / "no_kp.h5", no_kp))
    del d["cam_idxs"]  # without it: kp_idxs frame by frame contradicts SURREAL's camera blocks: refused
    with pytest.raises(DataError, match="'c2ws' has 4 rows, one per camera, but no 'cam_idxs'"):
        open_anerf_h5(raw_write(tmp_path / "frames_no_cams.h5", d))
    d["kp_idxs"] = np.arange(n) % (n // n_cams)  # SURREAL's camera blocks (image i -> camera i // poses)
    with open_anerf_h5(raw_write(tmp_path / "blocks.h5", d)) as data:
        assert data.arrays["focals"].tolist() == [100, 100, 200, 200, 300, 300, 400, 400]


def test_anerfs_stored_ext_scale_reads_as_its_nominal_millimetres(tmp_path):
    # process_spin.py / load_surreal.py store 0.001 * 0.25 / 0.00035; A-NeRF measures in 0.001 per nominal mm.
    d = anerf_style()
    d["ext_scale"] = np.float64(0.001 * 0.25 / 0.00035)
    with open_anerf_h5(raw_write(tmp_path / "anerf.h5", d)) as data:
        assert data.ext_scale == 0.001 and data.pose_scale == 1.0
    d["ext_scale"], d["pose_scale"] = np.float32(0.01), np.float32(1.5)  # any other value is the file's own
    with open_anerf_h5(raw_write(tmp_path / "cm.h5", d)) as data:
        assert data.ext_scale == pytest.approx(0.01) and data.pose_scale == 1.5


def test_dilate_mask_matches_brute_force():
    rng = np.random.default_rng(1)
    mask = rng.random((2, 13, 17)) < 0.05
    got = dilate_mask(mask)  # 5x5 twice == 9x9 once, clipped at the border
    want = np.zeros_like(mask)
    for b, y, x in zip(*np.nonzero(mask), strict=True):
        want[b, max(y - 4, 0) : y + 5, max(x - 4, 0) : x + 5] = True
    np.testing.assert_array_equal(got, want)
    assert dilate_mask(mask, kernel=3, iterations=1).sum() < got.sum()


def _bad_cases():
    """(name, key the message must name, function editing an A-NeRF-style dict)."""
    cases = [(f"missing {k}", k, lambda d, k=k: d.pop(k)) for k in REQUIRED_KEYS]

    def nan(key, idx):
        def f(d):
            d[key] = d[key].copy()
            d[key][idx] = np.nan

        return f

    def zero_focal(d):
        d["focals"] = d["focals"].copy()
        d["focals"][2] = 0.0

    cases += [
        ("skts rows", "skts", lambda d: d.update(skts=d["skts"][:2])),
        ("bones joints", "bones", lambda d: d.update(bones=d["bones"][:, :17])),
        ("kp3d joints", "kp3d", lambda d: d.update(kp3d=np.zeros((3, 17, 3), np.float32))),
        ("imgs size", "imgs", lambda d: d.update(imgs=d["imgs"][:, :-1])),
        ("imgs count", "imgs", lambda d: d.update(imgs=d["imgs"][:-1])),
        ("imgs float", "imgs", lambda d: d.update(imgs=d["imgs"].astype(np.float32))),
        ("masks size", "masks", lambda d: d.update(masks=d["masks"][:, :5])),
        ("img_shape 3 ints", "img_shape", lambda d: d.update(img_shape=np.array([N, H, W]))),
        ("img_shape rgba", "img_shape", lambda d: d.update(img_shape=np.array([N, H, W, 4]))),
        ("tiny", "img_shape", lambda d: d.update(img_shape=np.array([N, 4, 48, 3]))),
        ("c2ws count", "c2ws", lambda d: d.update(c2ws=d["c2ws"][:4])),
        ("c2ws shape", "c2ws", lambda d: d.update(c2ws=d["c2ws"][:, :2])),
        ("focals count", "focals", lambda d: d.update(focals=d["focals"][:5])),
        ("nan kp3d", "kp3d", nan("kp3d", (1, 5, 2))),
        ("nan skts", "skts", nan("skts", (0, 0, 0, 3))),
        ("inf c2ws", "c2ws", nan("c2ws", (4, 0, 3))),
        ("zero focal", "focals", zero_focal),
        ("unmappable poses", "kp3d", lambda d: None),
        ("kp_idxs range", "kp_idxs", lambda d: d.update(kp_idxs=np.array([0, 1, 2, 3, 4, 5]))),
        ("centers shape", "centers", lambda d: d.update(centers=np.zeros((N, 3)))),
        ("cyls rows", "cyls", lambda d: d.update(cyls=np.zeros((2, 5), np.float32))),
        ("img_paths count", "img_paths", lambda d: d.update(img_paths=np.array([b"a", b"b"]))),
    ]
    return cases


@pytest.mark.parametrize("name,key,edit", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_file_raises_one_line_error(tmp_path, name, key, edit):
    d = anerf_style(n=N, n_poses=3)
    if name in ("unmappable poses", "kp_idxs range"):  # 4 poses for 6 images needs kp_idxs
        d.update({k: d[k][:1].repeat(4, 0) for k in ("kp3d", "bones", "skts")})
    edit(d)
    path = raw_write(tmp_path / "bad_file.h5", d)
    with pytest.raises(DataError) as e:
        open_anerf_h5(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and f"'{key}'" in msg, msg


def test_damaged_or_missing_files(tmp_path):
    good = tmp_path / "good.h5"
    write_anerf_h5(good, make_data())
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.h5"
    text.write_text("this is not an HDF5 file\n")
    for path in (truncated, text, tmp_path / "missing.h5", tmp_path):
        with pytest.raises(DataError) as e:
            open_anerf_h5(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_failed_write_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "train.h5"
    old = make_data(seed=0)
    write_anerf_h5(path, old)
    before = path.read_bytes()
    bad = dict(make_data(seed=1), weird=object())  # fails after the temp file exists
    with pytest.raises(TypeError):
        write_anerf_h5(path, bad)
    missing = make_data(seed=2)
    del missing["skts"]
    with pytest.raises(DataError, match="'skts'"):
        write_anerf_h5(path, missing)
    with pytest.raises(DataError, match="'masks'"):
        write_anerf_h5(path, dict(make_data(seed=3), masks=np.zeros((N, H, W + 1), bool)))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["train.h5"]
    with open_anerf_h5(path) as data:
        np.testing.assert_array_equal(data.image(0), old["imgs"][0])


def test_c2ws_count_error_names_both_accepted_shapes(tmp_path):
    d = anerf_style(n=N, n_poses=3)
    d["c2ws"] = d["c2ws"][:4, :3]  # [R | t] rows, but 4 cameras for 6 images
    with pytest.raises(DataError, match=rf"has shape \(4, 3, 4\) .* expected \({N}, 4, 4\) or \({N}, 3, 4\)"):
        open_anerf_h5(raw_write(tmp_path / "c2ws.h5", d))
