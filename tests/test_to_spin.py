"""`fast-anerf data to-spin`: SMPL / SPIN parameters from an A-NeRF .h5. An unchanged conversion gives the SPIN file
back; changed poses come back through `from-spin`; the parameters are SMPL-consistent for any file."""

import numpy as np
import pytest
import torch
from test_from_spin import _in_camera, _run, make_spin_case

from fast_anerf.cli import entrypoint
from fast_anerf.data.anerf_h5 import open_anerf_h5
from fast_anerf.data.from_spin import SMPL_MEAN_PELVIS
from fast_anerf.data.rays import project_points
from fast_anerf.data.synthetic import pose_arrays
from fast_anerf.pose_io import export_refined_poses
from fast_anerf.skeleton import axis_angle_to_matrix, matrix_to_axis_angle

FLIP = np.diag([1.0, -1.0, -1.0])


@pytest.fixture(scope="module")
def spin_case(tiny_data, tmp_path_factory):
    return make_spin_case(tiny_data, tmp_path_factory)


def _to_spin(h5, out, *extra):
    code = entrypoint(["data", "to-spin", str(h5), "--out", str(out), *[str(e) for e in extra]])
    assert code == 0
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def _cv_joints(path):
    """Each image's joints in its OpenCV camera frame [N, 24, 3], from the .h5 as the renderer sees it."""
    with open_anerf_h5(path) as data:
        kp3d, c2ws = data.arrays["kp3d"][data.pose_idxs], data.arrays["c2ws"]
    return _in_camera(kp3d, c2ws) @ FLIP  # OpenGL camera axes -> OpenCV


@pytest.mark.parametrize("convert", [["--focal", "focal"], [], ["--bbox-scale", "1.2"]], ids=["focal", "spin", "bbox"])
def test_an_unchanged_conversion_gives_the_spin_file_back(spin_case, convert, capsys):
    convert = [repr(float(spin_case["src"]["focals"][0])) if c == "focal" else c for c in convert]
    name = "_".join(convert) or "plain"
    code, h5 = _run(spin_case, *convert, out=f"back_{name}.h5")
    assert code == 0
    scale = ["--bbox-scale", "1.2"] if "--bbox-scale" in convert else []
    capsys.readouterr()
    spin = _to_spin(h5, spin_case["root"] / f"back_{name}.npz", "--spin", spin_case["root"] / "spin.npz", *scale)
    assert "joints 0.0 mm (max 0.0)" in capsys.readouterr().out
    np.testing.assert_allclose(spin["pred_rotmat"], spin_case["rot"], atol=2e-6)
    rot = axis_angle_to_matrix(torch.as_tensor(spin["pose"].reshape(-1, 24, 3), dtype=torch.float64)).numpy()
    np.testing.assert_allclose(rot, spin_case["rot"], atol=2e-6)
    np.testing.assert_allclose(spin["pred_camera"], spin_case["cams"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(spin["bboxes"], spin_case["boxes"])
    np.testing.assert_array_equal(spin["frame_ids"], np.arange(8))
    np.testing.assert_allclose(spin["joints3d"][:, 0], np.tile(SMPL_MEAN_PELVIS, (8, 1)), atol=1e-6)
    if "--focal" in convert:  # the true camera: SPIN's t is the generator's
        np.testing.assert_allclose(spin["transl"], spin_case["trans"], rtol=1e-5, atol=1e-5)
    # The pinhole camera images the joints where the .h5's camera does.
    cam = torch.as_tensor(spin["joints3d"] + spin["transl"][:, None], dtype=torch.float64)
    uv = cam[..., :2] / cam[..., 2:] * torch.as_tensor(spin["focal"])[:, None, None]
    uv = uv + torch.as_tensor(spin["center"])[:, None]
    with open_anerf_h5(h5) as data:
        uv_h5, _ = project_points(torch.as_tensor(data.arrays["kp3d"]), torch.as_tensor(data.arrays["c2ws"])[:, None],
                                  torch.as_tensor(data.arrays["focals"])[:, None], data.center(0))  # fmt: skip
    np.testing.assert_allclose(uv.numpy(), uv_h5.numpy(), atol=2e-3)


def _refined(h5, out, seed=0):
    """``h5`` with every pose changed (a bent joint, a turned and shifted root), written as training does."""
    rng = np.random.default_rng(seed)
    with open_anerf_h5(h5) as data:
        bones, kp3d, rest = data.arrays["bones"].astype(np.float64), data.arrays["kp3d"], data.arrays["rest_pose"]
    bones[:, 5] += rng.normal(0, 0.2, (len(bones), 3))
    turn = axis_angle_to_matrix(torch.as_tensor(rng.normal(0, 0.1, (len(bones), 3))))
    root = axis_angle_to_matrix(torch.as_tensor(bones[:, 0]))
    bones[:, 0] = matrix_to_axis_angle(turn @ root).numpy()
    roots = kp3d[:, 0] + rng.normal(0, 0.05, (len(bones), 3))
    poses = {k: torch.as_tensor(v) for k, v in pose_arrays(rest, bones, roots).items()}
    return export_refined_poses(h5, out, poses)


def test_refined_poses_come_back_through_from_spin(spin_case, capsys):
    """to-spin of changed poses, converted again by from-spin with the same frames: the same joints in every camera."""
    root = spin_case["root"]
    focal = repr(float(spin_case["src"]["focals"][0]))
    assert _run(spin_case, "--focal", focal, out="base.h5")[0] == 0
    refined = _refined(root / "base.h5", root / "refined.h5")
    capsys.readouterr()
    _to_spin(refined, root / "refined.npz", "--spin", root / "spin.npz")
    moved = np.linalg.norm(_cv_joints(refined) - _cv_joints(root / "base.h5"), axis=-1) * 1000
    assert f"joints {moved.mean():.1f} mm (max {moved.max():.1f})" in capsys.readouterr().out
    assert moved.mean() > 20  # the edit moved the body: the round trip below is not a no-op
    code, again = _run(spin_case, "--focal", focal, npz="refined.npz", out="again.h5")
    assert code == 0
    np.testing.assert_allclose(_cv_joints(again), _cv_joints(refined), atol=1e-4)  # m
    with open_anerf_h5(again) as data:
        np.testing.assert_allclose(data.arrays["kp3d"][:, 0], np.tile(SMPL_MEAN_PELVIS, (8, 1)), atol=1e-6)


def test_to_spin_output_converts_back_without_options(spin_case, capsys):
    """Without --spin, to-spin writes a full-frame camera (transl, focal) that from-spin reads as it is: the same
    joints in every camera, at the file's focal, with no --focal to repeat. --focal F moves the camera along its
    axis, keeping the person's image size."""
    root = spin_case["root"]
    focal = float(spin_case["src"]["focals"][0])
    assert _run(spin_case, "--focal", repr(focal), out="plain_base.h5")[0] == 0
    refined = _refined(root / "plain_base.h5", root / "plain_refined.h5")
    spin = _to_spin(refined, root / "plain.npz")
    assert "pred_camera" not in spin
    code, again = _run(spin_case, npz="plain.npz", out="plain_again.h5")
    assert code == 0 and "px (plain.npz's focal)" in capsys.readouterr().out
    np.testing.assert_allclose(_cv_joints(again), _cv_joints(refined), atol=1e-4)  # m
    with open_anerf_h5(again) as data:
        np.testing.assert_allclose(data.arrays["focals"], focal, rtol=1e-6)
    code, longer = _run(spin_case, "--focal", repr(2 * focal), npz="plain.npz", out="plain_longer.h5")
    assert code == 0
    near, far = _cv_joints(again), _cv_joints(longer)
    np.testing.assert_allclose(far[..., 2] - near[..., 2], spin["transl"][:, None, 2] + 0 * near[..., 2], rtol=1e-4)
    assert _run(spin_case, "--focal", "spin", npz="plain.npz", out="plain_spin.h5")[0] == 2
    assert "has no SPIN crop camera (pred_camera)" in capsys.readouterr().err


def test_a_subset_is_matched_by_frame_id(spin_case):
    root = spin_case["root"]
    assert _run(spin_case, out="full.h5")[0] == 0
    subset = ["data", "subset", str(root / "full.h5"), "--out", str(root / "odd.h5"), "--select", "1:8:2"]
    assert entrypoint(subset) == 0
    spin = _to_spin(root / "odd.h5", root / "odd.npz", "--spin", root / "spin.npz")
    np.testing.assert_array_equal(spin["frame_ids"], [1, 3, 5, 7])
    np.testing.assert_allclose(spin["pred_camera"], spin_case["cams"][1::2], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(spin["bboxes"], spin_case["boxes"][1::2])


def test_any_file_gives_smpl_consistent_parameters(tiny_data, tmp_path):
    """Without --spin (the built-in character, whose cameras orbit): SMPL's kinematics with the written pose,
    pelvis J_0 and transl put the joints where each image's camera sees them."""
    spin = _to_spin(tiny_data / "train.h5", tmp_path / "builtin.npz")
    assert "pred_camera" not in spin and "bboxes" not in spin
    with open_anerf_h5(tiny_data / "train.h5") as data:
        rest, n = data.arrays["rest_pose"], data.n_images
    fk = pose_arrays(rest, spin["pose"].reshape(n, 24, 3).astype(np.float64), np.tile(SMPL_MEAN_PELVIS, (n, 1)))
    camera = _cv_joints(tiny_data / "train.h5")
    np.testing.assert_allclose(fk["kp3d"] + spin["transl"][:, None], camera, atol=2e-5)
    np.testing.assert_allclose(spin["joints3d"] + spin["transl"][:, None], camera, atol=2e-5)
    assert spin["betas"].shape == (n, 10) and spin["focal"].shape == (n,)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("not_npz", "must be an .npz"),
        ("exists", "exists"),
        ("is_spin", "is the SPIN file"),
        ("fewer_frames", "has no frame 5 (3 of"),
        ("other_frames", "has no frame 0"),
        ("missing_h5", "file not found"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(spin_case, capsys, case, expect):
    root = spin_case["root"]
    if not (root / "bad_base.h5").exists():
        assert _run(spin_case, out="bad_base.h5")[0] == 0
    h5, out, spin = root / "bad_base.h5", root / f"bad_{case}.npz", root / "spin.npz"
    with np.load(spin) as f:
        arrays = {k: f[k] for k in f.files}
    if case == "not_npz":
        out = root / "bad.h5"
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "is_spin":
        out = spin
    elif case == "fewer_frames":
        spin = root / "five.npz"
        np.savez(spin, **{k: v[:5] for k, v in arrays.items()})
    elif case == "other_frames":
        spin = root / "later.npz"
        np.savez(spin, **arrays, frame_ids=np.arange(8) + 100)
    elif case == "missing_h5":
        h5 = root / "nothing.h5"
    before = out.read_bytes() if out.exists() else None
    capsys.readouterr()
    code = entrypoint(["data", "to-spin", str(h5), "--out", str(out), "--spin", str(spin)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert (out.read_bytes() if out.exists() else None) == before  # untouched, or not created
    assert not list(root.glob(f".{out.name}*"))  # no temporary file left behind


def test_anerfs_own_scale_conventions_give_the_same_smpl_parameters(spin_case, tmp_path):
    """A-NeRF's SPIN-derived files hold SMPL's metres x ``pose_scale`` and store ext_scale 0.001 x 0.25 / 0.00035:
    the same poses in that form give the same SMPL parameters and metres."""
    code, h5 = _run(spin_case, out="metres.h5")
    assert code == 0
    plain = _to_spin(h5, tmp_path / "plain.npz")
    scaled, scale = tmp_path / "anerf_units.h5", 1.7
    import shutil

    import h5py

    shutil.copy(h5, scaled)
    with h5py.File(scaled, "r+") as f:
        for key in ("kp3d", "rest_pose", "cyls"):
            f[key][...] = f[key][...] * scale
        for key in ("skts", "c2ws"):
            value = f[key][...]
            value[..., :3, 3] *= scale
            f[key][...] = value
        for key, value in (("pose_scale", scale), ("ext_scale", 0.001 * 0.25 / 0.00035)):
            del f[key]
            f.create_dataset(key, data=np.float64(value))
    with open_anerf_h5(scaled) as data:
        assert data.ext_scale == 0.001 and data.pose_scale == pytest.approx(scale)
    anerf = _to_spin(scaled, tmp_path / "anerf.npz")
    for key in ("pred_rotmat", "transl", "joints3d", "focal", "center"):
        np.testing.assert_allclose(anerf[key], plain[key], rtol=1e-5, atol=1e-5, err_msg=key)
