"""`fast-anerf render` on a tiny trained model (conftest's ``tiny_model``): bullet orbits, retargeting,
interpolation, val, atomic output. Renders are 16-48 px."""

import json

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from fast_anerf.cli import entrypoint
from fast_anerf.data.anerf_h5 import open_anerf_h5
from fast_anerf.data.pose_files import place_canonical, read_pose_file
from fast_anerf.data.rays import project_points
from fast_anerf.errors import DataError
from fast_anerf.media import count_video_frames
from fast_anerf.mesh import posed_bounds
from fast_anerf.model import load_character
from fast_anerf.render_inputs import interpolate_poses, orbit_cameras, pose_to_skts, slerp
from fast_anerf.skeleton import axis_angle_to_matrix, matrix_to_axis_angle, pose_skeleton, skts_to_pose


def _render(ckpt, out, *extra) -> int:
    common = ["--device", "cpu", "--backend", "torch"]
    return entrypoint(["render", "--ckpt", str(ckpt), "--out", str(out), *common, *extra])


def _frames(out) -> list[np.ndarray]:
    return [iio.imread(p) for p in sorted((out / "frames").glob("*.png"))]


# ---------------------------------------------------------------------------------------------
# Pose and camera math (no model)
# ---------------------------------------------------------------------------------------------
def _expected_frame(model, train_h5, cam: int, skts, res: int, background) -> np.ndarray:
    """What a frame of ``skts`` seen from training camera ``cam`` must look like: ``render_image`` directly
    (mean appearance code), as uint8 levels."""
    from fast_anerf.render_inputs import camera
    from fast_anerf.renderer import RenderSettings, render_image

    with open_anerf_h5(train_h5) as data:
        c2w, focal, center = camera(data, cam, res, res)
    settings = RenderSettings.from_train(model.config.train, training=False)
    with torch.no_grad():
        rgb = render_image(model, c2w, focal, center, res, res, skts, -1, background, settings)["rgb"]
    return (rgb.clamp(0, 1).numpy() * 255).round()


def test_skts_to_pose_inverts_forward_kinematics():
    torch.manual_seed(0)
    rest = torch.randn(24, 3) * 0.3
    rest[0] = 0
    bones, root = torch.randn(4, 24, 3) * 0.6, torch.randn(4, 3)
    _, skts = pose_skeleton(rest, bones, root)
    rotations, roots = skts_to_pose(skts)
    assert torch.allclose(rotations, axis_angle_to_matrix(bones), atol=1e-5)
    assert torch.allclose(roots, root, atol=1e-5)
    assert torch.allclose(pose_to_skts(rest, rotations, roots), skts, atol=1e-4)


def test_interpolation_slerps_and_animate_moves_only_chosen_joints():
    torch.manual_seed(1)
    rotations = axis_angle_to_matrix(torch.randn(3, 24, 3) * 0.5)
    roots = torch.randn(3, 3)
    rot, root = interpolate_poses(rotations, roots, n_steps=4)
    assert rot.shape == (9, 24, 3, 3) and root.shape == (9, 3)
    assert torch.allclose(rot[0], rotations[0]) and torch.allclose(rot[4], rotations[1], atol=1e-6)
    assert torch.allclose(rot[8], rotations[2]) and torch.allclose(root[2], (roots[0] + roots[1]) / 2, atol=1e-6)
    # Halfway = half the relative rotation angle, about the same axis.
    rel = matrix_to_axis_angle(rotations[0].transpose(-1, -2) @ rotations[1])
    half = matrix_to_axis_angle(rotations[0].transpose(-1, -2) @ rot[2])
    assert torch.allclose(half, rel / 2, atol=1e-5)
    assert torch.allclose(slerp(rotations[0], rotations[1], torch.tensor([1.0]))[0], rotations[1], atol=1e-5)
    rot, root = interpolate_poses(rotations, roots, n_steps=4, joints=[18, 19])
    still = [j for j in range(24) if j not in (18, 19)]
    assert torch.equal(rot[:, still], rotations[0, still].expand(9, 22, 3, 3))
    assert torch.allclose(rot[8, 18], rotations[2, 18]) and torch.equal(root, roots[:1].expand(9, 3))


def test_orbit_rotates_about_the_vertical_through_the_pivot():
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.5, -0.4, 3.0])
    pivot = torch.tensor([0.5, 0.2, 0.0])
    cams = orbit_cameras(c2w, pivot, 4)
    assert torch.equal(cams[0], c2w)
    distance = (cams[:, [0, 2], 3] - pivot[[0, 2]]).norm(dim=-1)
    assert torch.allclose(distance, torch.full((4,), 3.0), atol=1e-5)  # same horizontal distance
    assert torch.allclose(cams[:, 1, 3], torch.full((4,), -0.4))  # same height
    assert torch.allclose(cams[2, :3, 3], torch.tensor([0.5, -0.4, -3.0]), atol=1e-5)  # behind after 180 deg
    # Every camera still looks at the pivot's vertical line (its -z axis passes through x=0.5, z=0).
    forward = -cams[:, :3, 2]
    t = -(cams[:, 2, 3] - 0.0) / forward[:, 2].where(forward[:, 2].abs() > 1e-6, torch.ones(4))
    hit_x = cams[:, 0, 3] + t * forward[:, 0]
    for k in (0, 2):
        assert abs(float(hit_x[k]) - 0.5) < 1e-5


def test_pose_files_conventions_and_errors(tmp_path):
    bones = np.zeros((3, 24, 3), np.float32)
    np.savez(tmp_path / "canonical.npz", bones=bones, root=np.ones((3, 3)))
    np.savez(tmp_path / "world.npz", bones=bones, kp3d=np.ones((3, 24, 3)))
    assert read_pose_file(tmp_path / "canonical.npz")[2] is True
    b, r, canonical = read_pose_file(tmp_path / "world.npz")
    assert canonical is False and b.shape == (3, 24, 3) and r.shape == (3, 3)
    # Canonical motions land in A-NeRF's world: y flipped (up = -y), z flipped, added to the anchor.
    _, roots = place_canonical(bones, np.array([[0.0, 0.1, 0.2]] * 3), 1.0, torch.tensor([1.0, 2.0, 3.0]))
    scale = roots[0] - torch.tensor([1.0, 2.0, 3.0])
    assert scale[1] < 0 and scale[2] < 0 and scale[0] == 0
    with h5py.File(tmp_path / "h36m17.h5", "w") as h5:
        h5["bones"] = np.zeros((3, 24, 3))
        h5["kp3d"] = np.zeros((3, 17, 3))
    with pytest.raises(DataError, match=r"h36m17.h5: key 'kp3d' has shape \(3, 17, 3\) \(17 joints"):
        read_pose_file(tmp_path / "h36m17.h5")
    (tmp_path / "poses.txt").write_text("0 0 0")
    with pytest.raises(DataError, match="unknown retarget source type"):
        read_pose_file(tmp_path / "poses.txt")


# ---------------------------------------------------------------------------------------------
# Rendering a tiny trained model
# ---------------------------------------------------------------------------------------------
def test_bullet_body_where_projected_background_elsewhere(tiny_model, tiny_data, tmp_path, capsys):
    out = tmp_path / "bullet"
    assert _render(tiny_model, out, "--type", "bullet", "--frames", "2", "--n-views", "4", "--no-refined") == 0
    summary = capsys.readouterr().out
    assert "4 frames at 48x48" in summary and "s/frame" in summary
    frames = _frames(out)
    assert len(frames) == 4 and frames[0].shape == (48, 48, 3)
    assert count_video_frames(out / "video.mp4") == 4
    assert iio.imread(out / "video.gif").shape[0] == 4
    info = json.loads((out / "render.json").read_text())
    assert info["frames"] == 4 and info["resolution"] == [48, 48]

    model, _ = load_character(tiny_model)
    with open_anerf_h5(tiny_data / "train.h5") as data:
        skts = torch.as_tensor(data.arrays["skts"][data.pose_index(2)])
        c2w = torch.as_tensor(data.arrays["c2ws"][2])
        focal, center = float(data.arrays["focals"][2]), data.center(2)
    l2ws = torch.linalg.inv(skts)
    joints = l2ws[:, :3, 3]
    lo, hi = posed_bounds(model, skts)
    bits = torch.tensor([[(k >> a) & 1 for a in range(3)] for k in range(8)]).bool()
    corners = torch.where(bits, hi, lo)  # [8, 3] corners of the posed body's box
    for frame, cam in zip(frames, orbit_cameras(c2w, joints[0], 4), strict=True):
        uv_box, _ = project_points(corners, cam, focal, center)
        u0, v0 = uv_box.min(dim=0).values.floor().int().tolist()
        u1, v1 = uv_box.max(dim=0).values.ceil().int().tolist()
        outside = np.ones((48, 48), bool)
        outside[max(v0 - 1, 0) : v1 + 2, max(u0 - 1, 0) : u1 + 2] = False
        assert outside.sum() > 300  # the body's box does not fill the image
        assert (frame[outside] == 255).all()  # rays that miss every bone box are pure background
        uv, _ = project_points(joints[[0, 3, 6, 9]], cam, focal, center)  # pelvis and spine
        pix = uv.round().long()
        torso = frame[pix[:, 1], pix[:, 0]].astype(int)
        assert (torso.min(axis=-1) < 235).all(), torso  # the body is drawn where it projects


def test_retarget_interpolate_animate_and_val(tiny_model, tiny_data, tmp_path, capsys):
    assert _render(tiny_model, tmp_path / "motion", "--type", "retarget", "--motion", "wave", "--motion-frames", "3",
                   "--res", "24", "32") == 0  # fmt: skip
    frames = _frames(tmp_path / "motion")
    assert len(frames) == 3 and frames[0].shape == (24, 32, 3)
    assert json.loads((tmp_path / "motion" / "render.json").read_text())["poses"] == "built-in motion wave"
    assert all((f < 235).any() and (f == 255).any() for f in frames)  # a body on a white background

    assert _render(tiny_model, tmp_path / "interp", "--type", "interpolate", "--frames", "0", "7", "--n-steps", "3",
                   "--res", "24", "24") == 0  # fmt: skip
    frames = _frames(tmp_path / "interp")
    assert len(frames) == 4 and not np.array_equal(frames[0], frames[-1])
    # The ends are training images 0 and 7's poses (the data's, this model refined none) from camera 0.
    model, _ = load_character(tiny_model)
    with open_anerf_h5(tiny_data / "train.h5") as data:
        pose = {i: torch.as_tensor(data.arrays["skts"][data.pose_index(i)]) for i in (0, 7)}
    for frame, i in ((frames[0], 0), (frames[-1], 7)):
        expected = _expected_frame(model, tiny_data / "train.h5", 0, pose[i], 24, torch.ones(3))
        assert np.abs(frame.astype(float) - expected).max() <= 2, i

    assert _render(tiny_model, tmp_path / "anim", "--type", "animate", "--frames", "0", "7", "--n-steps", "2",
                   "--joints", "left_shoulder", "18", "--res", "24", "24", "--background", "black") == 0  # fmt: skip
    frames = _frames(tmp_path / "anim")
    assert len(frames) == 3 and (frames[0][0, 0] == 0).all()
    expected = _expected_frame(model, tiny_data / "train.h5", 0, pose[0], 24, torch.zeros(3))
    assert np.abs(frames[0].astype(float) - expected).max() <= 2  # starts at frame 0's pose, on black
    assert not np.array_equal(frames[0], frames[-1])  # the shoulder moved

    capsys.readouterr()
    assert _render(tiny_model, tmp_path / "val", "--type", "val", "--frames", "0", "3") == 0
    summary = capsys.readouterr().out
    frames = _frames(tmp_path / "val")
    assert len(frames) == 2 and frames[0].shape == (48, 96, 3)  # prediction | ground truth
    info = json.loads((tmp_path / "val" / "render.json").read_text())
    assert len(info["psnr_per_frame"]) == 2 and 8.0 < info["psnr"] < 60.0
    assert info["poses"] == "the held-out split's own poses"
    assert f"mean PSNR {info['psnr']:.2f} dB" in summary


def test_a_motion_stands_where_the_training_sequence_starts_as_in_the_viewer(tiny_model, tiny_data, tmp_path):
    """Canonical motions are placed at the first training pose's root (the viewer's anchor), not the mean root,
    which sinks with every crouch of the training sequence."""
    from fast_anerf.cli import View
    from fast_anerf.data.pose_files import builtin_motion
    from fast_anerf.viewer_server import build_state

    out = tmp_path / "walk"
    assert _render(tiny_model, out, "--type", "retarget", "--motion", "walk", "--motion-frames", "4", "--frames",
                   "0", "2", "--res", "24", "24") == 0  # fmt: skip
    model, _ = load_character(tiny_model)
    with open_anerf_h5(tiny_data / "train.h5") as data:
        start = skts_to_pose(torch.as_tensor(data.arrays["skts"][:1]))[1][0]
        mean = skts_to_pose(torch.as_tensor(data.arrays["skts"]))[1].mean(dim=0)
    assert (start - mean).norm() > 0.01  # the two anchors differ on this data
    bones, roots = builtin_motion("walk", 4)
    bones, roots = place_canonical(bones, roots, model.height, start)
    skts = pose_to_skts(model.rest_pose, axis_angle_to_matrix(bones), roots)
    for frame, i in zip(_frames(out), (0, 2), strict=True):
        expected = _expected_frame(model, tiny_data / "train.h5", 0, skts[i], 24, torch.ones(3))
        assert np.abs(frame.astype(float) - expected).max() <= 2, i
    state, _ = build_state(View(ckpt=tiny_model, device="cpu", backend="torch"))  # the viewer's 96-frame walk
    walk = state.sequences["walk"]
    _, placed = place_canonical(*builtin_motion("walk", len(walk.roots)), model.height, start)
    torch.testing.assert_close(walk.roots, placed, atol=1e-5, rtol=0)


def test_retarget_from_h5_and_npz_keeps_our_bone_lengths(tiny_model, tiny_data, tmp_path):
    model, _ = load_character(tiny_model)
    with h5py.File(tiny_data / "test_pose.h5") as h5:
        bones, kp3d = h5["bones"][:2], h5["kp3d"][:2]
    # The .npz's skeleton is 1.3x larger than the .h5's (joints scaled about the root): only its rotations and
    # root may be used, so both render the same images.
    big = kp3d[:, :1] + 1.3 * (kp3d - kp3d[:, :1])
    np.savez(tmp_path / "poses.npz", bones=bones, kp3d=big)
    rendered = {}
    for source in (tiny_data / "test_pose.h5", tmp_path / "poses.npz"):
        out = tmp_path / source.stem
        assert _render(tiny_model, out, "--type", "retarget", "--source", str(source), "--frames", "0", "1",
                       "--res", "24", "24") == 0  # fmt: skip
        rendered[source.suffix] = _frames(out)
        assert len(rendered[source.suffix]) == 2
        assert json.loads((out / "render.json").read_text())["poses"] == f"poses of {source}"
    for a, b in zip(rendered[".h5"], rendered[".npz"], strict=True):
        assert np.array_equal(a, b)
    # The re-posed skeleton has our rest pose's bone lengths and the source's root and rotations.
    skts = pose_to_skts(model.rest_pose, axis_angle_to_matrix(torch.as_tensor(bones)), torch.as_tensor(kp3d[:, 0]))
    joints = torch.linalg.inv(skts)[:, :, :3, 3]
    parents = [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
    lengths = (joints - joints[:, parents]).norm(dim=-1)
    assert torch.allclose(lengths, (model.rest_pose - model.rest_pose[parents]).norm(dim=-1).expand(2, 24), atol=1e-5)
    assert torch.allclose(joints[:, 0], torch.as_tensor(kp3d[:, 0]), atol=1e-5)
    # And the images are the character in those poses, seen from the training data's first camera.
    for frame, pose in zip(rendered[".h5"], skts, strict=True):
        expected = _expected_frame(model, tiny_data / "train.h5", 0, pose, 24, torch.ones(3))
        assert np.abs(frame.astype(float) - expected).max() <= 2
        assert (frame < 235).any()  # the body is in view


def test_pose_file_messages_name_the_fix_for_that_file(tmp_path):
    np.savez(tmp_path / "root.npz", bones=np.zeros((5, 24, 3)), root=np.zeros((5, 2)))
    with pytest.raises(DataError) as error:
        read_pose_file(tmp_path / "root.npz")
    assert str(error.value).endswith("key 'root' has shape (5, 2); expected (T, 3) root offsets")  # not "SMPL-24"
    with h5py.File(tmp_path / "no_kp3d.h5", "w") as h5:  # an .h5's roots are read from kp3d only
        h5["bones"], h5["root"] = np.zeros((5, 24, 3)), np.zeros((5, 3))
    with pytest.raises(DataError) as error:
        read_pose_file(tmp_path / "no_kp3d.h5")
    assert str(error.value).endswith("no_kp3d.h5: no root positions; add 'kp3d' (T, 24, 3)")


@pytest.mark.parametrize(
    "arrays, words",
    [
        ({"bones": np.zeros((5, 17, 3)), "root": np.zeros((5, 3))}, ["'bones'", "17 joints", "24"]),
        ({"bones": np.full((5, 24, 3), np.nan), "root": np.zeros((5, 3))}, ["'bones'", "non-finite"]),
        ({"bones": np.zeros((5, 24, 3))}, ["no root positions; add 'root' (T, 3) (canonical, metres) or 'kp3d'"]),
    ],
)
def test_bad_retarget_file_is_refused_and_writes_nothing(tiny_model, tmp_path, capsys, arrays, words):
    bad = tmp_path / "bad_motion.npz"
    np.savez(bad, **arrays)
    out = tmp_path / "renders" / "bad"
    code = _render(tiny_model, out, "--type", "retarget", "--source", str(bad))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "bad_motion.npz" in err and "Traceback" not in err
    for word in words:
        assert word in err, err
    assert not out.exists() and not (tmp_path / "renders").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--type", "bullet", "--joints", "left_shoulder"], ["--joints", "animate", "bullet"]),
        (["--type", "val", "--camera", "3"], ["--camera", "retarget / interpolate / animate", "val"]),
        (["--type", "correction", "--n-views", "8"], ["--n-views", "bullet / mesh"]),
        (["--type", "bullet", "--rest"], ["--rest", "mesh"]),
        (["--type", "animate", "--motion-frames", "5"], ["--motion-frames", "retarget"]),
        (["--type", "val", "--no-refined"], ["--no-refined is for --type", "not val"]),
        (["--type", "mesh", "--background", "black"], ["--background is for", "not mesh"]),
        (["--type", "mesh", "--rest", "--frames", "2"], ["--rest meshes the rest pose, not --frames"]),
        (["--type", "retarget", "--motion", "wave", "--recenter"], ["--recenter: --motion wave is in the canonical"]),
        (["--type", "bullet", "--chunk", "-1"], ["--chunk -1: expected at least 1 ray"]),
        (["--type", "retarget", "--frames", "0", "--recenter"], ["--recenter is for retargeting from --source"]),
        (["--type", "retarget", "--motion-frames", "5"], ["--motion-frames is for retargeting from --source"]),
        (["--type", "bullet", "--chunk", "0"], ["--chunk 0: expected at least 1 ray"]),
    ],
)
def test_an_option_the_type_does_not_read_is_refused(tiny_model, tmp_path, capsys, args, words):
    out = tmp_path / "out"
    assert _render(tiny_model, out, *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for word in words:
        assert word in err, err
    assert not out.exists()


def test_retarget_replay_through_one_camera(tiny_model, tiny_data, tmp_path):
    """``retarget`` without a source replays training frames; ``--camera`` shows them all through one camera."""
    assert _render(tiny_model, tmp_path / "own", "--type", "retarget", "--frames", "0", "5", "--res", "24", "24") == 0
    assert _render(tiny_model, tmp_path / "cam", "--type", "retarget", "--frames", "0", "5", "--camera", "0",
                   "--res", "24", "24") == 0  # fmt: skip
    own, cam = _frames(tmp_path / "own"), _frames(tmp_path / "cam")
    assert np.array_equal(own[0], cam[0])  # frame 0 is camera 0's own image
    model, _ = load_character(tiny_model)
    with open_anerf_h5(tiny_data / "train.h5") as data:
        pose5 = torch.as_tensor(data.arrays["skts"][data.pose_index(5)])
    expected = _expected_frame(model, tiny_data / "train.h5", 0, pose5, 24, torch.ones(3))
    assert np.abs(cam[1].astype(float) - expected).max() <= 2  # frame 5's pose, seen by camera 0
    assert np.abs(own[1].astype(float) - expected).max() > 20  # ... which is not what its own camera sees


def test_failed_render_leaves_no_partial_output_and_keeps_other_folders(tiny_model, tmp_path, monkeypatch, capsys):
    import fast_anerf.renderer as renderer

    calls = {"n": 0}
    original = renderer.render_image

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash mid-render")
        return original(*args, **kwargs)

    monkeypatch.setattr(renderer, "render_image", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        _render(tiny_model, tmp_path / "crash", "--type", "bullet", "--n-views", "3", "--res", "16", "16")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a hidden partial one
    monkeypatch.setattr(renderer, "render_image", original)

    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "mine.txt").write_text("keep me")
    assert _render(tiny_model, keep, "--type", "bullet", "--n-views", "2", "--res", "16", "16") == 2
    assert "does not hold an earlier render" in capsys.readouterr().err
    assert [p.name for p in keep.iterdir()] == ["mine.txt"]

    # An earlier render into which the user put a file of their own: replacing it would delete that file.
    earlier = tmp_path / "earlier"
    assert _render(tiny_model, earlier, "--type", "bullet", "--n-views", "2", "--res", "16", "16") == 0
    (earlier / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert _render(tiny_model, earlier, "--type", "bullet", "--n-views", "3", "--res", "16", "16") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notes.txt" in err and "move them out" in err
    assert (earlier / "notes.txt").read_text() == "mine" and len(_frames(earlier)) == 2
    (earlier / "notes.txt").unlink()
    assert _render(tiny_model, earlier, "--type", "bullet", "--n-views", "3", "--res", "16", "16") == 0
    assert len(_frames(earlier)) == 3


def test_correction_morphs_the_estimate_into_the_refined_pose(tiny_model, tiny_data, tmp_path, capsys):
    """``--type correction``: the first render of a frame is its estimated pose, the last its refined pose (the
    same pictures as replaying the training frame with the data's / the refined poses), next to the photo with
    the estimated skeleton (red) and the current one (green); a checkpoint without refined poses is refused."""
    from fast_anerf.pose import RefinablePoses

    assert _render(tiny_model, tmp_path / "none", "--type", "correction") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no refined poses" in err and "--refine-poses on" in err
    assert not (tmp_path / "none").exists()

    # A checkpoint whose "refined" poses are the true ones (~50 mm from the estimates).
    ckpt = torch.load(tiny_model, weights_only=False)
    with open_anerf_h5(tiny_data / "train.h5") as data:
        arrays = {k: torch.as_tensor(data.arrays[k]) for k in ("gt_bones", "gt_kp3d", "rest_pose")}
        photo = data.image(5)
    refined = RefinablePoses(arrays["gt_bones"].float(), arrays["gt_kp3d"][:, 0].float(), arrays["rest_pose"].float())
    ckpt["poses"] = {"poses": refined.state_dict()}
    refined_ckpt = tmp_path / "refined.pt"
    torch.save(ckpt, refined_ckpt)

    # Refined poses of other data than --data (test_pose.h5): said in one line, not "no refined poses".
    capsys.readouterr()
    other = tiny_data / "test_pose.h5"
    assert _render(refined_ckpt, tmp_path / "other", "--type", "correction", "--data", str(other)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "test_pose.h5 is not the data this run trained on" in err
    # Other data with as many rows (the same frames in reverse order): its poses and the mean code, not the
    # checkpoint's refined poses of other frames (the fingerprint tells them apart).
    np.save(tmp_path / "reverse.npy", np.arange(8)[::-1].copy())
    reverse = tmp_path / "reverse.h5"
    assert entrypoint(["data", "subset", str(tiny_data / "train.h5"), "--select", str(tmp_path / "reverse.npy"),
                       "--out", str(reverse)]) == 0  # fmt: skip
    assert _render(refined_ckpt, tmp_path / "rev", "--type", "correction", "--data", str(reverse)) == 2
    assert "reverse.h5 is not the data this run trained on" in capsys.readouterr().err
    assert _render(refined_ckpt, tmp_path / "rev", "--type", "retarget", "--frames", "2", "--data", str(reverse)) == 0
    assert json.loads((tmp_path / "rev" / "render.json").read_text())["poses"] == "the data's poses (skts)"
    with open_anerf_h5(tiny_data / "train.h5") as data:  # its image 2 is frame 5: its estimate, camera, mean code
        estimate5 = torch.as_tensor(data.arrays["skts"][data.pose_index(5)])
    expected = _expected_frame(load_character(tiny_model)[0], tiny_data / "train.h5", 5, estimate5, 48, torch.ones(3))
    assert np.abs(_frames(tmp_path / "rev")[0].astype(float) - expected).max() <= 2

    assert _render(refined_ckpt, tmp_path / "corr", "--type", "correction", "--frames", "5", "--n-steps", "2") == 0
    frames = _frames(tmp_path / "corr")
    assert len(frames) == 3 and frames[0].shape == (48, 96, 3)  # render | photo with skeletons
    assert _render(refined_ckpt, tmp_path / "est", "--type", "retarget", "--frames", "5", "--no-refined") == 0
    assert _render(refined_ckpt, tmp_path / "ref", "--type", "retarget", "--frames", "5") == 0
    below_label = slice(16, None)  # the caption covers the top rows of the render
    for frame, replay in ((frames[0], _frames(tmp_path / "est")[0]), (frames[2], _frames(tmp_path / "ref")[0])):
        diff = np.abs(frame[below_label, :48].astype(int) - replay[below_label].astype(int))
        assert diff.max() <= 2, diff.max()  # the same pose (up to float rounding of re-posing)
    assert np.abs(frames[0][below_label, :48].astype(int) - frames[2][below_label, :48].astype(int)).max() > 30
    red, green = np.array([230, 30, 30]), np.array([20, 170, 40])
    for k, frame in enumerate(frames):
        panel = frame[:, 48:]
        drawn = (panel != photo).any(axis=-1)
        assert (panel == green).all(axis=-1).sum() > 20  # the current skeleton
        assert ((panel == red).all(axis=-1).sum() > 5) == (k > 0)  # the estimate shows once the pose moved
        assert (drawn <= ((panel == green) | (panel == red)).all(axis=-1)).all()  # elsewhere the photo itself


def test_photos_follow_the_rescaled_camera_at_another_aspect():
    """--res of another aspect: camera() keeps one scale (the height ratio) about the principal point, so the
    photo (val's GT, correction's panel, --background data) must too, instead of being stretched to fit."""
    from fast_anerf.render_inputs import resize_image

    photo = np.full((20, 30, 3), 255, np.uint8)
    photo[:, 12] = 0  # a dark column through the principal point (cx = 12)
    photo[5] = 0  # and a dark row
    out = resize_image(photo, 40, 100, center=(12.0, 10.0)).numpy()  # x2 vertically, 30 -> 100 columns
    dark_columns = np.flatnonzero(out[30].mean(-1) < 0.6)
    assert 39 <= dark_columns.min() and dark_columns.max() <= 41  # cx * 100 / 30 = 40: where the camera puts it
    assert np.flatnonzero(out[:, 60].mean(-1) < 0.6).tolist() in ([10, 11], [10], [11])  # row 5 -> 10-11
    covered = 40 + (np.array([0, 29]) - 12) * 2  # photo columns 0 and 29 land at 16 and 74; beyond: white
    assert (out[:, : covered[0] - 1] == 1).all() and (out[:, covered[1] + 2 :] == 1).all()
    same_aspect = resize_image(photo, 40, 60, center=(12.0, 10.0))
    assert torch.equal(same_aspect, resize_image(photo, 40, 60))  # one aspect: a plain resize, as before
