"""The viewer: camera conversion, pose edits and validation (headless), error reporting, the CLI's lifetime, and
a real page in headless Chromium (first frame holds the character; the frame slider changes the picture)."""

import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from viewer_fakes import fake_client, wait_until

from fast_anerf.cli import View
from fast_anerf.errors import DataError
from fast_anerf.skeleton import pose_skeleton
from fast_anerf.viewer import (
    MAX_RES,
    MIN_RES,
    TRAINING,
    ViewerInputError,
    bones_from_skts,
    c2w_to_viser,
    draw_skeleton,
    load_motion_file,
    render_size,
    viser_to_c2w,
)

HEAD, L_ANKLE, R_ANKLE, L_SHOULDER, L_WRIST = 15, 7, 8, 16, 20


# ---------------------------------------------------------------------------------------------
# A tiny trained checkpoint: the demo preset with small batches, 15 steps (before the first occupancy update),
# no evaluation.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ckpt(tiny_data, tmp_path_factory) -> Path:
    import fast_anerf.train as train_module
    from fast_anerf.cli import Train

    original = train_module.load_preset

    def small(name):
        cfg = original(name)
        return replace(cfg, train=replace(cfg.train, rays_per_batch=256, images_per_batch=8, step_size=0.01))

    out = tmp_path_factory.mktemp("viewer_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "load_preset", small)
        # The .h5 file, not its folder: no held-out splits, so no evaluation at the end.
        args = Train(data=tiny_data / "train.h5", out=out, steps=15, eval_every=0, device="cpu", backend="torch")
        train_module.Trainer(args).run()
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def viewer(tiny_ckpt):
    """``(ViewerState, TrainingView)`` of the tiny checkpoint, as ``fast-anerf view`` builds them."""
    from fast_anerf.viewer_server import build_state

    return build_state(View(ckpt=tiny_ckpt, device="cpu", backend="torch"))


def _home_render(state, home, size=48):
    height, width = render_size(home.aspect, size)
    return state.render(home.c2w, home.fov_y, height, width)


# ---------------------------------------------------------------------------------------------
# Headless
# ---------------------------------------------------------------------------------------------
def test_camera_conversion_matches_viser():
    import viser.transforms as tf

    rng = np.random.default_rng(0)
    for _ in range(50):
        wxyz = rng.normal(size=4)
        wxyz /= np.linalg.norm(wxyz)
        c2w = viser_to_c2w(wxyz, [0.5, -1.0, 2.0])
        # OpenCV camera axes (viser) -> OpenGL (ours): y and z flip, the centre stays.
        np.testing.assert_allclose(c2w[:3, :3], tf.SO3(wxyz).as_matrix() @ np.diag([1, -1, -1]), atol=1e-12)
        np.testing.assert_allclose(c2w[:3, 3], [0.5, -1.0, 2.0])
        back, position = c2w_to_viser(c2w)
        assert min(np.abs(back - wxyz).max(), np.abs(back + wxyz).max()) < 1e-9
    with pytest.raises(ViewerInputError, match="not finite"):
        viser_to_c2w([np.nan, 0, 0, 1], [0, 0, 0])


def test_render_size_clamps_to_limits():
    assert render_size(4 / 3, 512) == (384, 512)
    assert render_size(0.5, 512) == (512, 256)
    assert render_size(1.0, 10) == (MIN_RES, MIN_RES)
    assert render_size(1.0, 10**6) == (MAX_RES, MAX_RES)
    with pytest.raises(ViewerInputError):
        render_size(float("nan"), 256)


def test_bones_from_skts_round_trip():
    from fast_anerf.data.synthetic import builtin_rest_pose

    rest = torch.as_tensor(builtin_rest_pose())
    bones = 0.4 * torch.randn(5, 24, 3, generator=torch.Generator().manual_seed(0))
    roots = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    _, skts = pose_skeleton(rest, bones, roots)
    bones2, roots2 = bones_from_skts(skts)
    _, skts2 = pose_skeleton(rest, bones2, roots2)
    torch.testing.assert_close(skts2, skts, atol=1e-5, rtol=0)
    torch.testing.assert_close(roots2, roots, atol=1e-6, rtol=0)


def test_motion_file(tmp_path):
    good = tmp_path / "dance.npz"
    np.savez(good, bones=np.zeros((4, 24, 3)), root=np.zeros((4, 3)))
    bones, root = load_motion_file(good)
    assert bones.shape == (4, 24, 3) and root.shape == (4, 3)
    bad = tmp_path / "bad.npz"
    np.savez(bad, bones=np.zeros((4, 23, 3)), root=np.zeros((4, 3)))
    with pytest.raises(DataError, match=r"\[T,24,3\]"):
        load_motion_file(bad)
    nan = tmp_path / "nan.npz"
    np.savez(nan, bones=np.full((2, 24, 3), np.nan), root=np.zeros((2, 3)))
    with pytest.raises(DataError, match="NaN"):
        load_motion_file(nan)
    with pytest.raises(DataError, match="cannot read"):
        load_motion_file(tmp_path / "missing.npz")


def test_draw_skeleton_marks_bones():
    image = np.zeros((32, 32, 3), np.uint8)
    uv = np.tile([16.0, 16.0], (24, 1))
    uv[1] = [16.0, 4.0]  # left hip 12 px above the pelvis: one vertical bone
    draw_skeleton(image, uv, np.ones(24), color=(255, 0, 0))
    assert image[4:17, 16, 0].min() == 255  # every pixel of the bone is drawn
    assert image[:, :15].max() == 0 and image[:, 18:].max() == 0  # and nothing beside it
    draw_skeleton(image, uv, -np.ones(24))  # joints behind the camera: nothing, no error


def test_draw_segment_width_clipping_and_bad_ends():
    from fast_anerf.media import draw_segment

    image = np.zeros((20, 20, 3), np.uint8)
    draw_segment(image, np.array([-5.0, 10.0]), np.array([30.0, 10.0]), (0, 255, 0), width=3)
    drawn = image[..., 1] == 255
    assert drawn[9:12].all() and drawn.sum() == 3 * 20  # rows 9-11 across the whole image, clipped
    before = image.copy()
    draw_segment(image, np.array([0.0, np.nan]), np.array([5.0, 5.0]), (255, 0, 0))
    draw_segment(image, np.array([0.0, 0.0]), np.array([1e7, 0.0]), (255, 0, 0))  # far off screen: skipped
    assert np.array_equal(image, before)


def test_state_validates_page_values(viewer):
    state, _ = viewer
    version = state.version
    for bad in (-1, state.n_frames, 1.5, float("nan"), "3"):
        with pytest.raises(ViewerInputError):
            state.set_frame(bad)
    for joint, angles in ((0, [np.nan, 0, 0]), (0, [4.0, 0, 0]), (24, [0, 0, 0]), (0, [0, 0])):
        with pytest.raises(ViewerInputError):
            state.set_joint_offset(joint, angles)
    with pytest.raises(ViewerInputError, match="unknown motion"):
        state.set_motion("moonwalk")
    with pytest.raises(ViewerInputError, match="unknown background"):
        state.set_background("plaid")
    with pytest.raises(ViewerInputError, match="field of view"):
        state.render(np.eye(4), float("nan"), 32, 32)
    assert state.version == version and state.frame == 0  # nothing changed


def test_sequences_and_joint_edits(viewer):
    state, home = viewer
    assert state.motion == TRAINING
    assert state.n_frames == 8 and list(state.sequences)[1:] == [
        "estimated poses",  # the tiny run refined its poses: the data's estimates are there to compare
        "walk",
        "arm_raise",
        "turn",
        "squat",
        "jumping_jacks",
        "wave",
    ]
    # Frame 0 of the training sequence is the file's pose (forward kinematics of the recovered rotations): the
    # tiny run's 15 steps end before its poses start moving, so its refined poses are the file's.
    from fast_anerf.data.anerf_h5 import open_anerf_h5

    with open_anerf_h5(home.path) as data:
        kp3d_file = torch.as_tensor(np.asarray(data.arrays["kp3d"][0]))
    kp3d, skts, code = state.pose()
    torch.testing.assert_close(kp3d, kp3d_file.float(), atol=1e-4, rtol=0)
    assert code == 0 and skts.shape == (24, 4, 4)
    state.set_joint_offset(L_SHOULDER, [0.0, 0.0, 1.5])
    moved, _, _ = state.pose()
    assert (moved[L_WRIST] - kp3d[L_WRIST]).norm() > 0.2  # the arm swings: the wrist moves > 20 cm
    torch.testing.assert_close(moved[HEAD], kp3d[HEAD])  # the rest of the body stays
    state.reset_joints()
    state.set_motion("walk")
    _, _, code = state.pose()
    assert code == -1  # unseen poses use the mean appearance code


def test_default_view_is_upright_and_shows_the_character(viewer):
    state, home = viewer
    state.set_motion(TRAINING)
    state.set_frame(0)
    kp3d, _, _ = state.pose()
    from fast_anerf.data.rays import project_points

    height, width = render_size(home.aspect, 48)
    focal = 0.5 * height / np.tan(0.5 * home.fov_y)
    uv, depth = project_points(kp3d.double(), torch.as_tensor(home.c2w), focal, (width / 2, height / 2))
    assert (depth > 0).all()
    assert uv[HEAD, 1] < uv[L_ANKLE, 1] - 0.4 * height and uv[HEAD, 1] < uv[R_ANKLE, 1] - 0.4 * height  # head up
    # The round trip through viser's camera representation keeps the view.
    np.testing.assert_allclose(viser_to_c2w(*c2w_to_viser(home.c2w)), home.c2w, atol=1e-9)
    white = _home_render(state, home)
    black_state_bg = state.snapshot().background
    assert black_state_bg == "white"
    body = (np.abs(white.astype(int) - 255).sum(-1) > 30).mean()
    assert body > 0.03, body  # some of the image is the character, not background
    state.set_background("black")
    black = _home_render(state, home)
    state.set_background("white")
    assert black[0, 0].max() < 10 and white[0, 0].min() > 245  # a corner pixel is the chosen background
    state.set_skeleton(True)
    overlay = _home_render(state, home)
    state.set_skeleton(False)
    red = (overlay[..., 0] > 200) & (overlay[..., 1] < 80) & (overlay[..., 2] < 80)
    assert red.sum() > 20


# ---------------------------------------------------------------------------------------------
# The server: errors reach the page and the log, and never stop it
# ---------------------------------------------------------------------------------------------
def test_errors_are_shown_and_the_server_keeps_serving(viewer, caplog):
    from fast_anerf.viewer_server import ViewerApp

    state, home = viewer
    state.set_motion(TRAINING)
    app = ViewerApp(state, home, port=0, resolution=48, preview_resolution=32, verbose=False)
    try:
        client, sent = fake_client(home)
        app._on_connect(client)
        renderer = app.renderers[1]
        wait_until(lambda: "resting" in renderer.status.content, 30, "the first resting frame")
        assert sent[-1].shape == (48, 48, 3) and "FPS" in renderer.status.content and "48×48" in renderer.status.content

        app.axes[0].value = float("nan")  # a bad value from the page
        assert app.error_box.visible and "finite" in app.error_box.content
        assert "finite" in caplog.text
        assert state.joint_offset(0) == (0.0, 0.0, 0.0) and app.axes[0].value == 0.0  # the slider is put back
        app.frame.value = 99
        assert app.error_box.visible and "frame 99 is out of range" in app.error_box.content
        assert state.frame == 0 and app.frame.value == 0
        app.axes[0].value = 0.5  # a good one clears the error
        assert not app.error_box.visible and state.joint_offset(0) == (0.5, 0.0, 0.0)

        real_render, frames = state.render, renderer.frames
        state.render = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory"))
        app.frame.value = 3
        wait_until(lambda: "out of memory" in app.last_error, 10, "the render error")
        assert app.error_box.visible and "rendering failed: out of memory" in app.error_box.content
        del state.render  # back to the class method: the same loop renders again
        assert state.render == real_render
        app.frame.value = 4
        wait_until(lambda: renderer.frames > frames, 30, "a frame after the error")
        assert state.frame == 4

        app.motion.value = "walk"  # the motion picker resizes the frame slider
        assert state.motion == "walk" and app.frame.max == state.n_frames - 1 == 95
        app._toggle_play()
        assert app.play.label == "Pause"
        wait_until(lambda: state.frame not in (4, 5), 10, "playing to advance two frames")
        app._toggle_play()
        assert app.play.label == "Play" and app.frame.value == state.frame
        app.motion.value = TRAINING
    finally:
        app.stop()
        state.reset_joints()
        state.set_frame(0)


def test_cli_serves_on_localhost_and_stops_on_ctrl_c(tiny_ckpt):
    cmd = [sys.executable, "-m", "fast_anerf.cli", "view", "--ckpt", str(tiny_ckpt), "--port", "0", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, lines = None, []
        deadline = time.monotonic() + 90
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"fast-anerf viewer: (http://\S+)", line)
            url = match.group(1) if match else None
        assert url is not None, "".join(lines)
        assert url.startswith("http://127.0.0.1:")  # localhost by default
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "viewer stopped" in out and "Traceback" not in out


def test_cli_bad_arguments_are_one_line(tmp_path, tiny_ckpt, capsys):
    from fast_anerf.cli import entrypoint

    for argv, message in (
        (["--ckpt", str(tmp_path / "nope.pt")], "checkpoint not found"),
        (["--ckpt", str(tiny_ckpt), "--port", "70000"], "--port 70000 is not a port"),
        (["--ckpt", str(tiny_ckpt), "--resolution", "4096"], "--resolution 4096 is out of range"),
        (["--ckpt", str(tiny_ckpt), "--motion-file", str(tmp_path / "none.npz"), "--port", "0"], "none.npz"),
    ):
        assert entrypoint(["view", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_motion_file_joins_the_picker(tiny_ckpt, tmp_path):
    from fast_anerf.data.motions import wave
    from fast_anerf.viewer_server import build_state

    bones, root = wave(12)
    np.savez(tmp_path / "my_wave.npz", bones=bones, root=root)
    state, _ = build_state(View(ckpt=tiny_ckpt, motion_file=(tmp_path / "my_wave.npz",), device="cpu"))
    state.set_motion("my_wave")
    assert state.n_frames == 12
    state.set_frame(6)  # mid-wave: the right wrist is above the right shoulder (up is -y)
    kp3d, _, code = state.pose()
    assert kp3d[21, 1] < kp3d[17, 1] and code == -1


# ---------------------------------------------------------------------------------------------
# A real browser
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    """``(chromium, chromedriver)`` paths of Debian's packages, or a skip that says why they are missing (module
    scope, listed first: the skip comes before the checkpoint is trained)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("Chromium could not be installed (apt-get install chromium chromium-driver failed; see .ci/run)")
    return browser, driver


def _browser(chromium):
    """A headless Chromium driven by chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,800",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def _screenshot(browser) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(browser.get_screenshot_as_png())[..., :3]


def test_browser_shows_the_character_and_the_frame_slider_changes_it(chromium, tiny_ckpt, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from fast_anerf.viewer_server import ViewerApp, build_state

    browser = _browser(chromium)
    state, home = build_state(View(ckpt=tiny_ckpt, device="cpu", backend="torch"))
    app = ViewerApp(state, home, port=0, resolution=256, preview_resolution=64, verbose=False)
    try:
        browser.get(app.url)

        def first_frame() -> bool:
            return bool(app.renderers) and "resting" in next(iter(app.renderers.values())).status.content

        wait_until(first_frame, 60, "a frame")
        renderer = next(iter(app.renderers.values()))
        client = next(iter(app.server.get_clients().values()))

        # The browser's camera moves to our home view (viser's own default comes first), upright: the head
        # projects above the feet.
        def at_home() -> bool:
            return np.abs(np.asarray(client.camera.position) - home.c2w[:3, 3]).max() < 1e-3

        wait_until(at_home, 20, "the browser's camera to reach the home view")
        c2w = viser_to_c2w(client.camera.wxyz, client.camera.position)
        np.testing.assert_allclose(c2w, home.c2w, atol=1e-3)
        from fast_anerf.data.rays import project_points

        kp3d, _, _ = state.pose()
        focal = 0.5 * 100 / np.tan(0.5 * client.camera.fov)
        uv, depth = project_points(kp3d.double(), torch.as_tensor(c2w), focal, (50.0, 50.0))
        assert (depth > 0).all() and uv[HEAD, 1] < uv[L_ANKLE, 1] - 30 and uv[HEAD, 1] < uv[R_ANKLE, 1] - 30

        # The render area (the canvas, left of the control panel) holds the character.
        canvas = browser.find_element(By.TAG_NAME, "canvas").rect
        x0, y0 = int(canvas["x"]), int(canvas["y"])
        w, h = int(canvas["width"]), int(canvas["height"])
        region = (slice(y0 + h // 8, y0 + 7 * h // 8), slice(x0 + w // 4, x0 + w // 2 + w // 8))

        def character_pixels(shot):
            return int((np.abs(shot[region].astype(int) - 255).sum(-1) > 40).sum())

        wait_until(lambda: character_pixels(_screenshot(browser)) > 500, 20, "the character on the page")
        before = _screenshot(browser)
        (tmp_path / "before.png").write_bytes(browser.get_screenshot_as_png())
        text = browser.find_element(By.TAG_NAME, "body").text
        assert "FPS" in text and re.search(r"\d+×\d+", text), text

        # Move the frame slider to its end with the keyboard (the only slider whose maximum is n_frames - 1).
        last = state.n_frames - 1
        sliders = browser.find_elements(By.CSS_SELECTOR, "[role=slider]")
        thumbs = [t for t in sliders if t.get_attribute("aria-valuemax") == str(last)]
        assert len(thumbs) == 1, [t.get_attribute("aria-valuemax") for t in sliders]
        thumbs[0].click()
        thumbs[0].send_keys(Keys.END)
        wait_until(lambda: state.frame == last, 20, "the frame slider to reach the server")
        frames = renderer.frames
        wait_until(lambda: renderer.frames > frames and "resting" in renderer.status.content, 60, "the new frame")

        def changed_pixels() -> int:
            diff = np.abs(_screenshot(browser)[region].astype(int) - before[region].astype(int)).sum(-1)
            return int((diff > 40).sum())

        wait_until(lambda: changed_pixels() > 200, 20, "the picture to change")
        (tmp_path / "after.png").write_bytes(browser.get_screenshot_as_png())
    finally:
        browser.quit()
        app.stop()


def test_training_poses_are_the_ones_the_model_was_trained_on(tiny_ckpt, tiny_data, tmp_path):
    """A run that refined its poses: the viewer's training sequence shows the refined poses stored in the
    checkpoint, not the data's estimates (the body was learned in the refined ones)."""
    from fast_anerf.data.anerf_h5 import open_anerf_h5
    from fast_anerf.pose import RefinablePoses
    from fast_anerf.viewer import bones_from_skts
    from fast_anerf.viewer_server import build_state

    ckpt = torch.load(tiny_ckpt, weights_only=False)
    with open_anerf_h5(tiny_data / "train.h5") as data:
        arrays = {k: torch.as_tensor(data.arrays[k]).float() for k in ("gt_bones", "gt_kp3d", "rest_pose", "skts")}
    refined = RefinablePoses(arrays["gt_bones"], arrays["gt_kp3d"][:, 0], arrays["rest_pose"])  # "refined" = truth
    ckpt["poses"] = {"poses": refined.state_dict()}
    torch.save(ckpt, tmp_path / "refined.pt")
    state, home = build_state(View(ckpt=tmp_path / "refined.pt", device="cpu", backend="torch"))
    with torch.no_grad():
        want_bones, want_roots = bones_from_skts(refined()[1])
    torch.testing.assert_close(home.sequence.bones, want_bones, atol=1e-4, rtol=0)
    torch.testing.assert_close(home.sequence.roots, want_roots, atol=1e-5, rtol=0)
    estimated_bones, estimated_roots = bones_from_skts(arrays["skts"])
    assert float((home.sequence.bones - estimated_bones).abs().max()) > 0.02  # not the data's estimates
    # ... which are there too, to compare, as "estimated poses" (only for a run that refined its poses).
    estimates = state.sequences["estimated poses"]
    torch.testing.assert_close(estimates.bones, estimated_bones)
    torch.testing.assert_close(estimates.roots, estimated_roots)
    assert torch.equal(estimates.code_ids, home.sequence.code_ids)
    ckpt["poses"] = None  # a run that trained on its data's poses
    torch.save(ckpt, tmp_path / "unrefined.pt")
    plain_state, plain_home = build_state(View(ckpt=tmp_path / "unrefined.pt", device="cpu", backend="torch"))
    assert "estimated poses" not in plain_state.sequences
    torch.testing.assert_close(plain_home.sequence.bones, estimated_bones)
    # Refined poses of other data (another row count than --data's): the data's own poses, no estimates beside.
    other = tiny_data / "test_pose.h5"
    other_state, other_home = build_state(View(ckpt=tmp_path / "refined.pt", data=other, device="cpu", backend="torch"))
    with open_anerf_h5(other) as data:
        assert data.n_poses != refined.n_poses
        other_bones, _ = bones_from_skts(torch.as_tensor(data.arrays["skts"]).float())
    torch.testing.assert_close(other_home.sequence.bones, other_bones)
    assert "estimated poses" not in other_state.sequences
