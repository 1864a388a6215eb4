"""`fast-anerf data from-spin`: a SPIN-format file synthesised from the built-in character converts back to the
generator's cameras and joints; bad input is one line, exit 2, nothing written."""

import pickle
import sys

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from fast_anerf.cli import entrypoint
from fast_anerf.data.anerf_h5 import open_anerf_h5
from fast_anerf.data.background import fill_from_neighbours
from fast_anerf.data.from_spin import SMPL_MEAN_PELVIS, SPIN_CROP, SPIN_FOCAL, convert_spin
from fast_anerf.data.rays import project_points
from fast_anerf.data.synthetic import builtin_rest_pose
from fast_anerf.errors import UserError
from fast_anerf.skeleton import axis_angle_to_matrix, matrix_to_axis_angle, rigid_inverse

FLIP = np.diag([1.0, -1.0, -1.0])  # OpenGL <-> OpenCV camera axes


def _source(tiny_data):
    """The generator's truth: images, masks, true world poses, OpenGL cameras."""
    with h5py.File(tiny_data / "train.h5") as f:
        n, h, w, _ = f["img_shape"][()]
        src = {k: f[k][()] for k in ("gt_bones", "gt_kp3d", "gt_skts", "c2ws", "focals")}
        src["imgs"] = f["imgs"][()].reshape(n, h, w, 3)
        src["masks"] = f["masks"][()].reshape(n, h, w) != 0
    src["uv"] = project_points(torch.as_tensor(src["gt_kp3d"]), torch.as_tensor(src["c2ws"])[:, None],
                               torch.as_tensor(src["focals"])[:, None], (w / 2, h / 2))[0].numpy()  # fmt: skip
    return src, int(h), int(w)


def _spin_arrays(src, h, w, pelvis):
    """Express the truth in SPIN's conventions: OpenCV camera at the origin, root rotation relative to it, the
    SMPL model origin at X_cam - t, weak-perspective (s, tx, ty) of a square crop around the projected joints.
    s is chosen so that converting with the true focal (--focal) recovers the true depth exactly."""
    n = len(src["c2ws"])
    rot = axis_angle_to_matrix(torch.as_tensor(src["gt_bones"], dtype=torch.float64)).numpy()
    cams, boxes, trans = np.zeros((n, 3)), np.zeros((n, 4)), np.zeros((n, 3))
    for i in range(n):
        world_from_cv = src["c2ws"][i, :3, :3].astype(np.float64) @ FLIP
        cv_from_world = world_from_cv.T
        rot[i, 0] = cv_from_world @ rot[i, 0]
        t = cv_from_world @ (src["gt_kp3d"][i, 0] - src["c2ws"][i, :3, 3]) - pelvis[i]
        uv = src["uv"][i]
        cx, cy = (uv.min(0) + uv.max(0)) / 2 + np.array([1.5, -0.5])  # detector boxes are never exactly centred
        side = 1.2 * np.ptp(uv, axis=0).max()
        s = 2 * src["focals"][i] / (side * t[2])
        cams[i] = s, t[0] - 2 * (cx - w / 2) / (s * side), t[1] - 2 * (cy - h / 2) / (s * side)
        boxes[i] = cx, cy, side, 0.8 * side  # (cx, cy, w, h): the crop side is max(w, h)
        trans[i] = t
    return rot, cams, boxes, trans


@pytest.fixture(scope="module")
def spin_case(tiny_data, tmp_path_factory):
    return make_spin_case(tiny_data, tmp_path_factory)


def make_spin_case(tiny_data, tmp_path_factory) -> dict:
    """A SPIN .npz + frames/ + masks/ folders (PNG) made from the built-in character's training split."""
    src, h, w = _source(tiny_data)
    n = len(src["c2ws"])
    root = tmp_path_factory.mktemp("spin")
    rot, cams, boxes, trans = _spin_arrays(src, h, w, np.tile(SMPL_MEAN_PELVIS, (n, 1)))
    np.savez(root / "spin.npz", pred_rotmat=rot.astype(np.float32), pred_camera=cams, bboxes=boxes,
             pred_betas=np.zeros((n, 10), np.float32))  # fmt: skip
    (root / "frames").mkdir()
    (root / "masks").mkdir()
    for i in range(n):  # frame_2 < frame_10: names sort by number
        iio.imwrite(root / "frames" / f"frame_{i * 4}.png", src["imgs"][i])
        iio.imwrite(root / "masks" / f"frame_{i * 4}.png", src["masks"][i].astype(np.uint8) * 255)
    return {"root": root, "src": src, "h": h, "w": w, "trans": trans, "cams": cams, "boxes": boxes, "rot": rot}


def _run(case, *extra, npz="spin.npz", masks=True, out="out.h5"):
    root = case["root"]
    args = ["data", "from-spin", str(root / npz), "--images", str(root / "frames"), "--out", str(root / out)]
    args += ["--masks", str(root / "masks")] if masks else []
    return entrypoint(args + [str(e) for e in extra]), root / out


def _in_camera(kp3d, c2ws):
    """World joints -> each image's OpenGL camera frame, [N, 24, 3]."""
    return np.einsum("nji,nkj->nki", c2ws[:, :3, :3], kp3d - c2ws[:, None, :3, 3])


def _check_geometry(data, src, trans, pelvis, tol_m=2e-4):
    """World = SPIN model frame: kp3d = (generator joints in the OpenCV camera) - t; c2w = [FLIP | -t]."""
    kp3d, c2ws = data.arrays["kp3d"], data.arrays["c2ws"]
    np.testing.assert_allclose(kp3d[:, 0], pelvis, atol=1e-5)
    np.testing.assert_allclose(c2ws[:, :3, :3], np.broadcast_to(FLIP, (len(c2ws), 3, 3)), atol=1e-6)
    np.testing.assert_allclose(c2ws[:, :3, 3], -trans, rtol=1e-5, atol=1e-4)
    # Joints seen from the camera equal the generator's joints seen from its camera (rest skeletons are equal).
    np.testing.assert_allclose(_in_camera(kp3d, c2ws), _in_camera(src["gt_kp3d"], src["c2ws"]), atol=tol_m)
    # The camera relative to the body's root frame round-trips: inv(c2w) @ l2w_root.
    ours = np.linalg.inv(c2ws) @ rigid_inverse(torch.as_tensor(data.arrays["skts"][:, 0])).numpy()
    theirs = np.linalg.inv(src["c2ws"]) @ rigid_inverse(torch.as_tensor(src["gt_skts"][:, 0])).numpy()
    np.testing.assert_allclose(ours, theirs, atol=tol_m)
    # Non-root local rotations are untouched.
    rot = axis_angle_to_matrix(torch.as_tensor(data.arrays["bones"][:, 1:], dtype=torch.float64)).numpy()
    rot_src = axis_angle_to_matrix(torch.as_tensor(src["gt_bones"][:, 1:], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(rot, rot_src, atol=1e-5)


def _projections(data):
    c2ws, focals = torch.as_tensor(data.arrays["c2ws"])[:, None], torch.as_tensor(data.arrays["focals"])[:, None]
    uv, _ = project_points(torch.as_tensor(data.arrays["kp3d"]), c2ws, focals, (data.width / 2, data.height / 2))
    return uv.numpy()


def test_round_trip_with_known_focal(spin_case, capsys):
    src, h, w = spin_case["src"], spin_case["h"], spin_case["w"]
    focal = float(src["focals"][0])
    code, out = _run(spin_case, "--focal", repr(focal))
    assert code == 0, capsys.readouterr().err
    assert "8 frames 48x48" in capsys.readouterr().out
    with open_anerf_h5(out) as data:  # the file passes the reader's full validation
        n = data.n_images
        np.testing.assert_allclose(data.arrays["focals"], focal, rtol=1e-6)
        np.testing.assert_allclose(data.arrays["centers"], np.tile([w / 2, h / 2], (n, 1)))
        _check_geometry(data, src, spin_case["trans"], np.tile(SMPL_MEAN_PELVIS, (n, 1)))
        assert np.abs(_projections(data) - src["uv"]).max() < 0.01  # px
        imgs = data.load_all()
        np.testing.assert_array_equal(imgs["imgs"], src["imgs"])
        np.testing.assert_array_equal(imgs["masks"], src["masks"])
        assert imgs["sampling_masks"][imgs["masks"]].all() and imgs["sampling_masks"].sum() > imgs["masks"].sum()
        np.testing.assert_allclose(data.arrays["rest_pose"], builtin_rest_pose(), atol=1e-6)
        assert float(data.arrays["ext_scale"]) == pytest.approx(0.001)
        assert data.arrays["cyls"].shape == (n, 5)
        assert (imgs["bkgds"] == 255).all() and (data.arrays["bkgd_idxs"] == 0).all()  # frames on white: white
        assert not any(k.startswith("gt_") for k in data.keys)
        assert data.arrays["img_paths"][2].endswith("frame_8.png")  # natural sort: frame_8 before frame_12


def _spin_world(src, trans):
    """Generator joints in the SPIN model frame: OpenCV camera coordinates minus t."""
    cv = np.einsum("nij,nkj->nki", FLIP[None] @ src["c2ws"][:, :3, :3].swapaxes(-1, -2),
                   src["gt_kp3d"] - src["c2ws"][:, None, :3, 3])  # fmt: skip
    return cv - trans[:, None]


def test_spin_focal_gives_distant_camera_with_the_same_image(spin_case):
    """--focal spin: SPIN's 5000 px crop focal scaled to the frame, a camera ~tens of metres away. Same world
    joints; projections agree exactly at the pelvis depth and up to the perspective difference elsewhere."""
    src, boxes = spin_case["src"], spin_case["boxes"]
    code, out = _run(spin_case, "--focal", "spin", out="spin_focal.h5")
    assert code == 0
    with open_anerf_h5(out) as data:
        focals = SPIN_FOCAL * boxes[:, 2] / SPIN_CROP
        np.testing.assert_allclose(data.arrays["focals"], focals, rtol=1e-5)
        tz = 2 * SPIN_FOCAL / (SPIN_CROP * spin_case["cams"][:, 0])
        np.testing.assert_allclose(-data.arrays["c2ws"][:, 2, 3], tz, rtol=1e-5)
        assert tz.min() > 10 * spin_case["trans"][:, 2].max()  # far away, long lens
        # The world (SPIN model frame) does not depend on the camera.
        trans = np.concatenate([spin_case["trans"][:, :2], tz[:, None]], axis=-1)
        assert np.abs(data.arrays["kp3d"] - _spin_world(src, spin_case["trans"])).max() < 2e-4
        err = np.linalg.norm(_projections(data) - src["uv"], axis=-1)  # [N, 24] px
        np.testing.assert_allclose(data.arrays["c2ws"][:, :3, 3], -trans, rtol=1e-5, atol=1e-4)
    size = np.ptp(src["uv"], axis=1).max(-1)  # body size in px, per frame
    assert err[:, 0].max() < 0.05  # the pelvis (~ at the depth t_z) is exact
    # Elsewhere the generator's 3 m camera shows more perspective than SPIN's weak-perspective camera: the error
    # is about depth offset / 3 m of the joint's image offset from the pelvis, a few % of the body's size.
    assert (err.max(-1) < 0.08 * size).all(), (err.max(-1), size)


def test_default_focal_is_the_frame_diagonal(spin_case, capsys):
    """Without --focal: the frame's diagonal, the camera moved along its axis from SPIN's so that the pelvis
    projects where SPIN's camera put it; a focal that is neither a number nor a mode is refused."""
    h, w, cams, boxes = spin_case["h"], spin_case["w"], spin_case["cams"], spin_case["boxes"]
    code, out = _run(spin_case, out="diagonal.h5")
    assert code == 0 and "(the frame's diagonal)" in capsys.readouterr().out
    with open_anerf_h5(out) as data:
        np.testing.assert_allclose(data.arrays["focals"], np.hypot(w, h), rtol=1e-6)
        tz_spin = 2 * SPIN_FOCAL / (SPIN_CROP * cams[:, 0])
        tz = tz_spin * np.hypot(w, h) / (SPIN_FOCAL * boxes[:, 2] / SPIN_CROP)
        np.testing.assert_allclose(-data.arrays["c2ws"][:, 2, 3], tz, rtol=1e-5)
        np.testing.assert_allclose(-data.arrays["c2ws"][:, :2, 3], spin_case["trans"][:, :2], rtol=1e-5, atol=1e-5)
        assert np.abs(_projections(data)[:, 0] - spin_case["src"]["uv"][:, 0]).max() < 0.05  # px, the pelvis
    root = spin_case["root"]  # (the command line refuses other words itself: tyro checks the choices)
    with pytest.raises(UserError, match="--focal wide: expected a focal length in pixels or one of"):
        convert_spin(root / "spin.npz", root / "frames", root / "wide.h5", root / "masks", focal="wide")
    assert not (root / "wide.h5").exists()


def test_vibe_names_axis_angle_frame_ids_npz_masks(spin_case, tiny_data):
    """VIBE-style keys (pose [N,72], pred_cam, betas, joints3d giving the pelvis, boxes (cx, cy, side)),
    frame_ids into a longer image folder, masks from the npz ({0,1}), and the pelvis taken from joints3d."""
    src, h, w = _source(tiny_data)
    n = len(src["c2ws"])
    root = spin_case["root"]
    pelvis = np.tile([0.01, -0.2, 0.05], (n, 1)) + 0.01 * np.arange(n)[:, None]
    rot, cams, boxes, trans = _spin_arrays(src, h, w, pelvis)
    pose = matrix_to_axis_angle(torch.as_tensor(rot)).reshape(n, 72).numpy()
    joints = np.zeros((n, 24, 3))
    joints[:, 0] = pelvis
    # The folder holds n + 2 frames; row i uses frame i + 1 (by name order).
    folder = root / "long_sequence"
    folder.mkdir()
    for j in range(n + 2):
        iio.imwrite(folder / f"{j:03d}.png", src["imgs"][min(max(j - 1, 0), n - 1)])
    np.savez(root / "vibe.npz", pose=pose, pred_cam=cams,
             bboxes=np.concatenate([boxes[:, :2], boxes[:, 2:3]], -1), betas=np.zeros(10), joints3d=joints,
             frame_ids=np.arange(n) + 1, masks=src["masks"].astype(np.uint8))  # fmt: skip
    out = root / "vibe.h5"
    args = ["data", "from-spin", str(root / "vibe.npz"), "--images", str(folder), "--out", str(out)]
    assert entrypoint(args + ["--focal", repr(float(src["focals"][0]))]) == 0
    with open_anerf_h5(out) as data:
        _check_geometry(data, src, trans, pelvis)
        np.testing.assert_array_equal(data.arrays["kp_idxs"], np.arange(n) + 1)
        assert np.abs(_projections(data) - src["uv"]).max() < 0.01
        all_images = data.load_all()
        np.testing.assert_array_equal(all_images["imgs"], src["imgs"])
        np.testing.assert_array_equal(all_images["masks"], src["masks"])
        assert data.arrays["betas"].shape == (n, 10)


def _edit_npz(case, name, **changes):
    with np.load(case["root"] / "spin.npz") as f:
        arrays = {k: f[k] for k in f.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value(arrays[key]) if callable(value) else value
    np.savez(case["root"] / name, **arrays)
    return name


ROW_KEYS = ("pred_rotmat", "pred_camera", "bboxes", "pred_betas")


def _nan_first(a):
    a = a.copy()
    a[0, 3, 0, 0] = np.nan
    return a


@pytest.mark.parametrize(
    "name, edit, extra, expect",
    [
        ("cam_shape.npz", {"pred_camera": lambda a: a[:, :2]}, [], "pred_camera"),
        ("cam_scale.npz", {"pred_camera": lambda a: a * np.array([-1.0, 1, 1])}, [], "pred_camera"),
        ("nan_rot.npz", {"pred_rotmat": _nan_first}, [], "pred_rotmat"),
        ("few_boxes.npz", {"bboxes": lambda a: a[:-1]}, [], "bboxes"),
        ("no_rot.npz", {"pred_rotmat": None}, [], "pred_rotmat"),
        ("more_rows.npz", dict.fromkeys(ROW_KEYS, lambda a: np.concatenate([a, a[:1]])), [], "frames"),
        ("no_masks.npz", {}, ["--no-masks"], "masks"),
        ("smpl_missing.npz", {}, ["--smpl", "/nonexistent/SMPL_NEUTRAL.pkl"], "pip install smplx"),
        ("text_rot.npz", {"pred_rotmat": lambda a: np.array(["a"] * len(a))}, [], "not numbers"),
        ("degrees.npz", {"pred_rotmat": None, "pose": np.full((8, 72), 30.0)}, [], "radians"),
        ("no_cam.npz", {"pred_camera": None}, [], "or 'transl' with 'focal' (a full-frame camera, as to-spin"),
        ("object.npz", {"pred_betas": lambda a: np.array([None] * len(a))}, [], "key 'pred_betas' cannot be read"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(spin_case, capsys, monkeypatch, name, edit, extra, expect):
    monkeypatch.setitem(sys.modules, "smplx", None)  # as if smplx were not installed
    npz = _edit_npz(spin_case, name, **edit)
    masks = "--no-masks" not in extra
    extra = [e for e in extra if e != "--no-masks"]
    out = name.replace(".npz", ".h5")
    capsys.readouterr()
    code, path = _run(spin_case, *extra, npz=npz, masks=masks, out=out)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expect in lines[0]
    assert not path.exists()
    assert not list(spin_case["root"].glob(f".{out}*"))  # no temporary file left behind


def test_smplx_rest_skeleton_from_betas(spin_case, tmp_path):
    """--smpl with a tiny fake SMPL file (24 vertices = joints): rest pose and pelvis follow the betas."""
    pytest.importorskip("smplx")
    rng = np.random.default_rng(0)
    template = builtin_rest_pose().astype(np.float64) + SMPL_MEAN_PELVIS
    shapedirs = 0.01 * rng.standard_normal((24, 3, 10))
    parents = np.array([2**32 - 1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21])
    model = {"v_template": template, "shapedirs": shapedirs, "J_regressor": np.eye(24), "weights": np.eye(24),
             "posedirs": np.zeros((24, 3, 207)), "kintree_table": np.stack([parents, np.arange(24)]),
             "f": np.zeros((1, 3), np.int64)}  # fmt: skip
    smpl = tmp_path / "SMPL_NEUTRAL.pkl"
    smpl.write_bytes(pickle.dumps(model))
    n = len(spin_case["cams"])
    betas = rng.standard_normal((n, 10))
    _edit_npz(spin_case, "betas.npz", pred_betas=betas)
    code, out = _run(spin_case, "--smpl", tmp_path, npz="betas.npz", out="smpl.h5")
    assert code == 0
    joints = template + np.einsum("vkl,nl->nvk", shapedirs, betas)  # [N, 24, 3]
    with open_anerf_h5(out) as data:
        np.testing.assert_allclose(data.arrays["rest_pose"], (joints - joints[:, :1]).mean(0), atol=1e-5)
        np.testing.assert_allclose(data.arrays["kp3d"][:, 0], joints[:, 0], atol=1e-5)
        np.testing.assert_allclose(data.arrays["betas"], betas, atol=1e-6)


def test_frames_from_a_video(spin_case, capsys):
    """--images may be a video (imageio): frames in order, paths <video>/<frame:06d> for the temporal loss."""
    root, src = spin_case["root"], spin_case["src"]
    video = root / "clip.mp4"
    iio.imwrite(video, src["imgs"], fps=10)  # lossy: compare loosely
    out = root / "video.h5"
    args = ["data", "from-spin", str(root / "spin.npz"), "--images", str(video), "--masks", str(root / "masks")]
    assert entrypoint(args + ["--out", str(out)]) == 0
    with open_anerf_h5(out) as data:
        imgs = data.load_all()["imgs"].astype(np.float64)
        assert np.abs(imgs - src["imgs"]).mean() < 12
        assert data.arrays["img_paths"][3] == f"{video}/000003"
    # frame_ids pick some frames of a longer video (only those are kept while decoding): the right ones, named
    # by their index in the video; ids past its end are one line.
    n = len(src["imgs"])
    long_video = root / "long.mp4"
    iio.imwrite(long_video, np.concatenate([src["imgs"][::-1], src["imgs"]]), fps=10)  # frame n + i = image i
    picked = _edit_npz(spin_case, "picked.npz", frame_ids=np.arange(n, 2 * n), masks=src["masks"])
    args = ["data", "from-spin", str(root / picked), "--images", str(long_video), "--out", str(root / "picked.h5")]
    assert entrypoint(args) == 0
    with open_anerf_h5(root / "picked.h5") as data:
        imgs = data.load_all()["imgs"].astype(np.float64)
        assert np.abs(imgs - src["imgs"]).mean() < 12  # the second half, not the reversed first
        assert data.arrays["img_paths"][0] == f"{long_video}/{n:06d}"
    repeated = _edit_npz(spin_case, "repeated.npz", frame_ids=np.full(n, n + 2), masks=src["masks"])
    args = ["data", "from-spin", str(root / repeated), "--images", str(long_video), "--out", str(root / "rep.h5")]
    assert entrypoint(args) == 0  # one frame for every row: allowed, and read once from the video
    with open_anerf_h5(root / "rep.h5") as data:
        imgs = data.load_all()["imgs"].astype(np.float64)
        assert np.abs(imgs - src["imgs"][2]).mean() < 12
    beyond = _edit_npz(spin_case, "beyond.npz", frame_ids=np.arange(n) + n + 1, masks=src["masks"])
    args = ["data", "from-spin", str(root / beyond), "--images", str(long_video), "--out", str(root / "beyond.h5")]
    capsys.readouterr()
    assert entrypoint(args) == 2 and not (root / "beyond.h5").exists()
    assert f"frame_ids go up to {2 * n} but there are only {2 * n} frames" in capsys.readouterr().err


def test_real_background_is_stored_or_painted_white_and_outputs_are_never_clobbered(spin_case, capsys):
    """Frames in front of a static (non-white) background: `--background median` stores it as ``bkgds``, which
    training composites onto (without it the body would have to fake the background inside the dilated masks);
    `white` paints the frames white outside the masks. An existing --out, or one that is an input, is refused."""
    from fast_anerf.data.split import load_split

    root, src = spin_case["root"], spin_case["src"]
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 200, (spin_case["h"], spin_case["w"], 3), dtype=np.uint8)
    (root / "frames_bg").mkdir()
    photos = np.where(src["masks"][..., None], src["imgs"], scene)
    for i, photo in enumerate(photos):
        iio.imwrite(root / "frames_bg" / f"frame_{i * 4}.png", photo)
    args = ["data", "from-spin", str(root / "spin.npz"), "--images", str(root / "frames_bg"), "--masks",
            str(root / "masks")]  # fmt: skip
    assert entrypoint(args + ["--out", str(root / "bg.h5")]) == 0
    with open_anerf_h5(root / "bg.h5") as data:
        stored = data.load_all()
        bkgd = stored["bkgds"].reshape(scene.shape)
        never_seen = stored["sampling_masks"].reshape(photos.shape[:3]).all(axis=0)
    assert 0 < never_seen.sum() < 0.5 * never_seen.size
    np.testing.assert_array_equal(bkgd[~never_seen], scene[~never_seen])
    # Never uncovered: the colour of the nearest seen pixels (white would be far off a dark background).
    filled = np.round(fill_from_neighbours(scene, ~never_seen)).astype(np.uint8)
    np.testing.assert_array_equal(bkgd[never_seen], filled[never_seen])
    assert bkgd[never_seen].mean() < 200
    split = load_split(root / "bg.h5")
    np.testing.assert_allclose(split.background(3)[~never_seen].numpy(), scene[~never_seen] / 255.0, atol=1e-6)

    assert entrypoint(args + ["--out", str(root / "white.h5"), "--background", "white"]) == 0
    with open_anerf_h5(root / "white.h5") as data:
        stored = data.load_all()
        assert stored["bkgds"] is None
        np.testing.assert_array_equal(stored["imgs"], np.where(src["masks"][..., None], photos, 255))

    capsys.readouterr()
    before = (root / "bg.h5").read_bytes()
    for out, words in ((root / "bg.h5", "exists"), (root / "spin.npz", "is the SPIN .npz"),
                       (root / "frames_bg" / "frame_0.png", "is --images")):  # fmt: skip
        assert entrypoint(args + ["--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and str(out) in err, err
    assert (root / "bg.h5").read_bytes() == before
    assert entrypoint(args + ["--out", str(root / "bg.h5"), "--overwrite", "--background", "none"]) == 0
    with open_anerf_h5(root / "bg.h5") as data:
        np.testing.assert_array_equal(data.load_all()["imgs"], photos)
    assert "inverted" not in capsys.readouterr().err

    (root / "masks_inverted").mkdir()
    for i, mask in enumerate(src["masks"]):
        iio.imwrite(root / "masks_inverted" / f"frame_{i * 4}.png", (~mask).astype(np.uint8) * 255)
    inverted = args[:-1] + [str(root / "masks_inverted"), "--out", str(root / "inverted.h5")]
    assert entrypoint(inverted) == 0  # converted, but the user is told
    assert "are they inverted?" in capsys.readouterr().err


def test_fill_from_neighbours_grows_the_known_colours_inwards():
    image = np.zeros((5, 7, 3), np.float32)
    image[:, :3] = 20.0  # the known left part is dark grey, the right part is unknown (values ignored)
    image[:, 3:] = 999.0
    known = np.zeros((5, 7), bool)
    known[:, :3] = True
    filled = fill_from_neighbours(image, known)
    np.testing.assert_array_equal(filled, np.full((5, 7, 3), 20.0))
    known = np.zeros((5, 7), bool)
    known[0, 0], known[4, 6] = True, True
    image[0, 0], image[4, 6] = 0.0, 100.0
    filled = fill_from_neighbours(image, known)[..., 0]
    assert filled[0, 1] == 0.0 and filled[4, 5] == 100.0 and 0.0 < filled[2, 3] < 100.0  # nearest colour wins


def test_a_damaged_frame_is_named_in_one_line(spin_case, capsys):
    import shutil

    root = spin_case["root"]
    shutil.copytree(root / "frames", root / "frames_damaged")
    damaged = root / "frames_damaged" / "frame_8.png"
    damaged.write_bytes(damaged.read_bytes()[:100])
    args = ["data", "from-spin", str(root / "spin.npz"), "--images", str(root / "frames_damaged"), "--masks",
            str(root / "masks"), "--out", str(root / "damaged.h5")]  # fmt: skip
    capsys.readouterr()
    assert entrypoint(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(damaged) in err and "replace the damaged file" in err
    assert not (root / "damaged.h5").exists()


def test_mask_rules_for_each_kind_of_mask():
    from fast_anerf.data.frames import binarize_mask

    probabilities = np.array([[0.02, 0.49], [0.5, 0.97]])  # a segmentation network's output
    assert binarize_mask(probabilities).tolist() == [[False, False], [True, True]]
    assert binarize_mask(np.array([[0, 1], [1, 0]], np.uint8)).tolist() == [[False, True], [True, False]]
    assert binarize_mask(np.array([[0, 1], [2, 255]], np.uint8)).tolist() == [[False, False], [True, True]]  # A-NeRF
    colour = np.zeros((1, 2, 3), np.uint8)
    colour[0, 1, 2] = 200
    assert binarize_mask(colour).tolist() == [[False, True]]
    cutout = np.zeros((1, 2, 4), np.uint8)  # RGB black everywhere, the person in the alpha channel
    cutout[0, 1, 3] = 255
    assert binarize_mask(cutout).tolist() == [[False, True]]
    opaque = np.full((1, 2, 4), 255, np.uint8)  # an opaque RGBA mask: the colour channels are the mask
    opaque[0, 0, :3] = 0
    assert binarize_mask(opaque).tolist() == [[False, True]]
    grey_alpha = np.zeros((1, 2, 2), np.uint8)
    grey_alpha[0, 0, 1] = 255
    assert binarize_mask(grey_alpha).tolist() == [[True, False]]
    opaque_grey = np.full((1, 2, 2), 255, np.uint8)  # grey + alpha, opaque everywhere: the grey channel is the mask
    opaque_grey[0, 1, 0] = 0
    assert binarize_mask(opaque_grey).tolist() == [[True, False]]


def test_keys_never_used_do_not_stop_the_conversion(spin_case, capsys):
    """VIBE without OpenPose saves joints2d=None: an object array, unreadable without pickle, and never used."""
    npz = _edit_npz(spin_case, "vibe_none.npz", joints2d=np.array([None] * 8))
    assert _run(spin_case, npz=npz, out="vibe_none.h5")[0] == 0
    with open(spin_case["root"] / "vibe.pkl", "wb") as f:
        pickle.dump({1: {"pose": np.zeros((8, 72))}}, f)
    assert _run(spin_case, npz="vibe.pkl", out="vibe_pkl.h5")[0] == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("vibe.pkl: a pickle, not an .npz — save one person's arrays with np.savez(OUT, **{k: v for "
                        "k, v in person.items() if v is not None})")  # fmt: skip


def test_alpha_masks_are_read_and_empty_masks_refused(spin_case, capsys):
    root = spin_case["root"]
    for folder, alpha in (("masks_alpha", True), ("masks_black", False)):
        (root / folder).mkdir(exist_ok=True)
        for i, mask in enumerate(spin_case["src"]["masks"]):
            rgba = np.zeros((*mask.shape, 4), np.uint8)
            rgba[..., 3] = mask * 255 if alpha else 255
            iio.imwrite(root / folder / f"frame_{i * 4}.png", rgba)
    spin, frames = root / "spin.npz", root / "frames"
    out = root / "alpha.h5"
    assert entrypoint(["data", "from-spin", str(spin), "--images", str(frames), "--masks", str(root / "masks_alpha"),
                       "--out", str(out)]) == 0  # fmt: skip
    with h5py.File(out) as f:
        stored = f["masks"][()].reshape(spin_case["src"]["masks"].shape) != 0
    np.testing.assert_array_equal(stored, spin_case["src"]["masks"])
    capsys.readouterr()
    black = root / "black.h5"
    assert entrypoint(["data", "from-spin", str(spin), "--images", str(frames), "--masks", str(root / "masks_black"),
                       "--out", str(black)]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip() == (
        f"error: {root / 'masks_black'}: every mask is empty (no pixel >= 2 on 0-255, nor an alpha channel) — pass "
        "masks where the person is the bright part"
    )
    assert not black.exists()


def test_hidden_files_are_not_frames_and_a_data_file_is_not_a_video(spin_case, capsys):
    root = spin_case["root"]
    (root / "frames_mac").mkdir(exist_ok=True)
    for frame in (root / "frames").iterdir():
        (root / "frames_mac" / frame.name).write_bytes(frame.read_bytes())
        (root / "frames_mac" / f"._{frame.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata
    assert _run(spin_case, out="mac.h5", npz="spin.npz")[0] == 0
    args = ["data", "from-spin", str(root / "spin.npz"), "--masks", str(root / "masks")]
    assert entrypoint([*args, "--images", str(root / "frames_mac"), "--out", str(root / "mac2.h5")]) == 0
    with h5py.File(root / "mac.h5") as a, h5py.File(root / "mac2.h5") as b:
        np.testing.assert_array_equal(a["imgs"][()], b["imgs"][()])
    capsys.readouterr()
    assert entrypoint([*args, "--images", str(root / "spin.npz"), "--out", str(root / "npz.h5")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {root / 'spin.npz'}: frames must be a folder of images or a video, not a .npz file"
    )
