"""Values from the browser (reliability, item 5): joint angles, frame index, resolution and the camera are
validated server-side; a bad value is rejected (or clamped, for sizes) with a message on the page, nothing in
the viewer's state changes, and the server keeps rendering. ``test_viewer.py`` tests the ordinary values."""

import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest
from viewer_fakes import fake_client, wait_until

from fast_anerf.cli import View
from fast_anerf.viewer import MAX_RES, MIN_RES, ViewerInputError, c2w_to_viser, render_size

if "fuzz_inputs" not in sys.modules:  # the small 2-step checkpoint of the damaged-input corpus
    import importlib.util

    _SPEC = importlib.util.spec_from_file_location(
        "fuzz_inputs", Path(__file__).resolve().parents[1] / "scripts" / "fuzz_inputs.py"
    )
    sys.modules["fuzz_inputs"] = importlib.util.module_from_spec(_SPEC)
    _SPEC.loader.exec_module(sys.modules["fuzz_inputs"])
fuzz = sys.modules["fuzz_inputs"]

BAD_ANGLES = ([1e9, 0, 0], [0, -1e9, 0], [np.nan, 0, 0], [0, np.inf, 0], [0, 0, -np.inf], [0.1, 0.2], "0.5", None)
BAD_FRAMES = (-1, 10**6, 2.5, np.nan, np.inf, -np.inf, "7", None, [1])


@pytest.fixture(scope="module")
def viewer(tiny_data, tmp_path_factory):
    from fast_anerf.viewer_server import build_state

    fx = fuzz.make_fixture(tmp_path_factory.mktemp("viewer_fixture"), data=tiny_data)
    return build_state(View(ckpt=fx.ckpt, device="cpu", backend="torch"))


def test_state_rejects_bad_page_values_and_changes_nothing(viewer):
    state, _ = viewer
    version, frame, offsets = state.version, state.frame, [state.joint_offset(j) for j in range(24)]
    for angles in BAD_ANGLES:
        with pytest.raises(ViewerInputError, match="joint rotation"):
            state.set_joint_offset(3, angles)
    for joint in (-1, 24, 10**9, 2.0, "3", None, np.nan):
        with pytest.raises(ViewerInputError, match="joint must be an index"):
            state.set_joint_offset(joint, [0.1, 0.0, 0.0])
    for bad in BAD_FRAMES:
        with pytest.raises(ViewerInputError, match="frame"):
            state.set_frame(bad)
    for name in ("", "../../etc/passwd", None):
        with pytest.raises(ViewerInputError):
            state.set_motion(name)
    assert state.version == version and state.frame == frame
    assert [state.joint_offset(j) for j in range(24)] == offsets
    # Limits themselves are fine: the last frame, and +-pi.
    state.set_frame(state.n_frames - 1)
    state.set_joint_offset(3, [np.pi, -np.pi, 0.0])
    assert state.frame == state.n_frames - 1 and state.joint_offset(3) == pytest.approx((np.pi, -np.pi, 0.0))
    state.reset_joints()
    state.set_frame(0)


def test_sizes_are_clamped_and_garbage_is_rejected(viewer):
    state, home = viewer
    assert render_size(1.0, 0) == (MIN_RES, MIN_RES)
    assert render_size(1.0, 10**6) == (MAX_RES, MAX_RES)
    assert render_size(1.0, -5) == (MIN_RES, MIN_RES)
    assert max(render_size(0.0, 256)) == 256 and max(render_size(1e9, 256)) == 256  # aspect clamped to [1/8, 8]
    for aspect, side in ((np.nan, 256), (1.0, np.nan), (np.inf, 256), (1.0, np.inf)):
        with pytest.raises(ViewerInputError, match="finite"):
            render_size(aspect, side)
    image = state.render(home.c2w, home.fov_y, 0, -3)  # a zero-size canvas renders the smallest image
    assert image.shape == (MIN_RES // 4, MIN_RES // 4, 3) and image.dtype == np.uint8
    bad_camera = np.array(home.c2w, dtype=float)
    bad_camera[0, 3] = np.nan
    with pytest.raises(ViewerInputError, match="camera"):
        state.render(bad_camera, home.fov_y, 32, 32)
    for fov in (0.0, np.pi, -1.0, np.inf, np.nan):
        with pytest.raises(ViewerInputError, match="field of view"):
            state.render(home.c2w, fov, 32, 32)


@contextlib.contextmanager
def _served(state, home, client_id: int):
    """A viewer on a free port (32 px) with one fake client that got its first frame: ``(app, renderer, client,
    sent)``; stopped afterwards."""
    from fast_anerf.viewer_server import ViewerApp

    app = ViewerApp(state, home, port=0, resolution=32, preview_resolution=32, verbose=False)
    client, sent = fake_client(home, client_id=client_id)
    try:
        app._on_connect(client)
        renderer = app.renderers[client_id]
        wait_until(lambda: renderer.frames >= 1, 60, "the first frame")
        yield app, renderer, client, sent
    finally:
        app.stop()


def test_server_shows_errors_on_the_page_and_keeps_serving(viewer):
    state, home = viewer
    with _served(state, home, 7) as (app, renderer, client, sent):
        # Sliders and fields set to what a tampered page could send: each one is refused on the page.
        for slider, value, words in (
            (app.res, 0, "resolution"),
            (app.res, 10**6, "resolution"),
            (app.preview, 1, "resolution"),
            (app.frame, 10**6, "out of range"),
            (app.frame, -3, "out of range"),
            (app.axes[1], 1e9, "[-pi, pi]"),
            (app.axes[2], np.nan, "finite"),
        ):
            slider.value = value
            assert app.error_box.visible and words in app.error_box.content, (value, app.error_box.content)
        assert (app.resolution, app.preview_resolution, state.frame) == (32, 32, 0)
        assert state.joint_offset(0) == (0.0, 0.0, 0.0)
        # A camera the browser sends with NaN: the render loop reports it and keeps going.
        frames = renderer.frames
        client.camera.position = np.array([np.nan, 0.0, 0.0])
        renderer.wake()
        wait_until(lambda: "not finite" in app.last_error, 30, "the camera error")
        client.camera.wxyz, client.camera.position = c2w_to_viser(home.c2w)
        app.frame.value = 2  # a good value clears the error and renders again
        wait_until(lambda: renderer.frames > frames and state.frame == 2, 60, "a frame after the errors")
        assert not app.error_box.visible
        assert sent[-1].dtype == np.uint8 and max(sent[-1].shape[:2]) == 32
    state.reset_joints()
    state.set_frame(0)


@pytest.mark.parametrize(
    ("write", "words"),
    [
        (lambda p: np.save(p, np.zeros((4, 24, 3))), "cannot read the motion file"),  # a bare .npy array
        (lambda p: p.write_bytes(b""), "cannot read the motion file"),
        (lambda p: np.savez(p, bones=np.full((2, 24, 3), "x"), root=np.zeros((2, 3))), "must hold real numbers"),
        (lambda p: np.savez(p, bones=np.zeros((2, 24, 3)) * 1j, root=np.zeros((2, 3))), "must hold real numbers"),
    ],
)
def test_a_damaged_motion_file_is_one_line(tmp_path, write, words):
    from fast_anerf.errors import DataError
    from fast_anerf.viewer import load_motion_file

    path = tmp_path / "motion.npz"
    write(path)
    if not path.exists():  # np.save appended .npy
        path = tmp_path / "motion.npz.npy"
    with pytest.raises(DataError, match=words):
        load_motion_file(path)


def test_a_host_this_machine_cannot_listen_on_and_a_taken_motion_name_are_one_line(tiny_data, tmp_path):
    from fast_anerf.errors import UserError
    from fast_anerf.viewer_server import _check_host, build_state

    with pytest.raises(UserError, match="not an address of this machine"):
        _check_host("192.0.2.1")  # TEST-NET-1: resolves, but no interface has it (viser waited forever)
    _check_host("127.0.0.1")
    fx = fuzz.make_fixture(tmp_path / "fx", data=tiny_data)
    np.savez(tmp_path / "walk.npz", bones=np.zeros((3, 24, 3)), root=np.zeros((3, 3)))
    with pytest.raises(UserError, match="'walk' is taken"):
        build_state(View(ckpt=fx.ckpt, motion_file=(tmp_path / "walk.npz",), device="cpu", backend="torch"))


def test_a_zero_width_canvas_and_a_one_frame_sequence_keep_the_viewer_working(viewer):
    from fast_anerf.viewer import PoseSequence, ViewerState
    from fast_anerf.viewer_server import ViewerApp

    state, home = viewer
    with _served(state, home, 9) as (app, renderer, client, _):
        renderer._seconds_per_pixel = 1e-6  # measured: the moving size now depends on the aspect
        client.camera.aspect = 0.0  # what viser reports for a canvas 0 pixels wide
        frames = renderer.frames
        app.frame.value = 1
        wait_until(lambda: renderer.frames > frames, 60, "a frame for the zero-width canvas")
        client.camera.aspect = 1.0
        app.frame.value = 2
        wait_until(lambda: renderer.frames > frames + 1, 60, "a frame after it (the render thread lives)")
    state.set_frame(0)
    one = state.sequences[next(iter(state.sequences))]
    single = PoseSequence("one", one.bones[:1], one.roots[:1], one.code_ids[:1])
    app = ViewerApp(ViewerState(state.model, [single]), home, port=0, resolution=32, preview_resolution=32,
                    verbose=False)  # fmt: skip
    try:
        assert app.frame.disabled  # nothing to move to (a value of 1 would be out of range)
    finally:
        app.stop()


def test_the_resting_frame_has_the_chosen_resolution_whatever_the_moving_one(viewer):
    """Moving resolution above Resolution: moving frames are capped at Resolution and the resting frame is
    rendered at it (it used to stay at whatever size the moving frame had, even larger than Resolution)."""
    state, home = viewer
    with _served(state, home, 11) as (app, renderer, client, sent):
        app.preview.value = 256  # the moving size asked for, above the resolution (64)
        app.res.value = 64
        renderer._seconds_per_pixel = 1.0  # a slow machine: moving frames drop to the smallest size
        state.set_frame(3)
        renderer.wake()
        wait_until(lambda: max(sent[-1].shape[:2]) == 64 and state.frame == 3, 60, "the resting frame at 64 px")
        assert all(max(image.shape[:2]) <= 64 for image in sent[-3:])
    state.set_frame(0)
