"""``fast-anerf view``: the browser page (viser) around ``viewer.ViewerState``.

What the page shows:

* the character rendered from the browser's camera (orbit, pan, zoom): a small image while the camera or the
  pose changes (at most the moving resolution, smaller if needed for ``MOVING_FPS``), a full-size one once
  everything has rested for ``REFINE_DELAY`` seconds;
* Pose: motion picker (training poses, built-in motions, ``--motion-file``), frame slider, play/pause, speed;
* Joints: a joint picker and three rotation sliders (axis-angle offset on top of the pose), reset;
* Display: skeleton overlay, background, full and moving resolution;
* per browser tab: frames per second, render resolution and time; errors (also logged) in a box and a
  notification.

Each connected tab gets a render thread; every callback catches its errors, so a bad value or a failed render
is reported and the server keeps serving. Ctrl-C stops the server, its threads and returns exit code 0.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fast_anerf.errors import UserError
from fast_anerf.skeleton import SMPL_JOINT_NAMES
from fast_anerf.viewer import (
    BACKGROUNDS,
    ESTIMATED,
    MAX_RES,
    MIN_RES,
    TRAINING,
    TrainingView,
    ViewerState,
    look_at_c2w,
    render_size,
    viser_to_c2w,
)

log = logging.getLogger("fast_anerf.viewer")
REFINE_DELAY = 0.3  # s without camera or pose changes before the full-size render
MOVING_FPS = 10.0  # while moving, the render size drops (down to MIN_RES) to keep about this frame rate
JPEG_QUALITY = 90


class ClientRenderer:
    """Render loop of one browser tab: re-renders small on every change, full size once it rests."""

    def __init__(self, app: ViewerApp, client) -> None:
        self.app, self.client = app, client
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.frames = 0  # images sent (tests and the status line read it)
        self._seconds_per_pixel = 0.0  # measured render cost, sizes the moving frames
        self.status = client.gui.add_markdown("**FPS** – · waiting for the first frame", order=-100.0)
        self._thread = threading.Thread(target=self._loop, name=f"render-client-{client.client_id}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10.0)

    def _camera_key(self) -> tuple | None:
        cam = self.client.camera
        try:
            return (tuple(cam.wxyz), tuple(cam.position), float(cam.fov), float(cam.aspect))
        except (AssertionError, ZeroDivisionError):  # no camera message yet, or a zero-height canvas
            return None

    def _loop(self) -> None:
        done_key, last_change, refined = None, time.monotonic(), True
        while not self._stop.is_set():
            self._wake.wait(timeout=0.05)
            self._wake.clear()
            camera = self._camera_key()
            if camera is None:
                continue
            key = (camera, self.app.state.version, self.app.resolution, self.app.preview_resolution)
            now = time.monotonic()
            if key != done_key:
                done_key, last_change, refined = key, now, False
                # A first frame, or a change: small and fast (never above the full size); done if it is that size.
                side = min(self._moving_side(camera[3]), self.app.resolution)
                self._render(camera, side, moving=True)
                refined = side >= self.app.resolution
            elif not refined and now - last_change >= REFINE_DELAY:
                refined = True
                self._render(camera, self.app.resolution, moving=False)

    def _moving_side(self, aspect: float) -> int:
        """Longer image side while moving: the page's moving resolution, or less if this machine cannot
        render that at ``MOVING_FPS`` (pixels per frame = budget / measured seconds per pixel)."""
        limit = self.app.preview_resolution
        if self._seconds_per_pixel <= 0:
            return limit
        pixels = 1.0 / (MOVING_FPS * self._seconds_per_pixel)
        aspect = float(np.clip(aspect, 1 / 8, 8)) if np.isfinite(aspect) else 1.0  # a 0-width canvas: 0
        side = (pixels * max(aspect, 1.0 / aspect)) ** 0.5  # pixels = side^2 / elongation
        return int(np.clip(32 * round(side / 32), MIN_RES, limit))

    def _render(self, camera: tuple, max_side: int, moving: bool) -> None:
        wxyz, position, fov, aspect = camera
        start = time.perf_counter()
        try:
            height, width = render_size(aspect, max_side)
            image = self.app.state.render(viser_to_c2w(wxyz, position), fov, height, width)
            self.client.scene.set_background_image(image, format="jpeg", jpeg_quality=JPEG_QUALITY)
        except Exception as error:  # never kill the loop: report, and wait for the next change
            if not self._stop.is_set():  # a tab closing mid-render is not an error
                self.app.report_error(f"rendering failed: {error}", error)
            return
        seconds = time.perf_counter() - start
        rate = seconds / (height * width)
        self._seconds_per_pixel = rate if self._seconds_per_pixel <= 0 else 0.7 * self._seconds_per_pixel + 0.3 * rate
        self.frames += 1
        kind = "moving" if moving else "resting"
        self.status.content = (
            f"**FPS** {1.0 / max(seconds, 1e-6):.1f} · **{width}×{height}** ({kind}) · {seconds * 1000:.0f} ms"
        )


class ViewerApp:
    """The viser server, its GUI and one ``ClientRenderer`` per connected tab.

    Args:
        state: what to render.
        home: the training data's first camera (initial view), or None to look at the first pose from the front.
        host, port: where to listen (port 0 = any free port; a taken port moves on to the next free one).
        resolution, preview_resolution: longer image side (pixels) when resting / while moving.
    """

    def __init__(
        self,
        state: ViewerState,
        home: TrainingView | None,
        host: str = "127.0.0.1",
        port: int = 8080,
        resolution: int = 512,
        preview_resolution: int = 128,
        verbose: bool = True,
    ) -> None:
        import viser  # imported here: the CLI's --help must not pay for it

        _check_host(host)
        self.state = state
        self.resolution = int(np.clip(resolution, MIN_RES, MAX_RES))
        self.preview_resolution = int(np.clip(preview_resolution, MIN_RES, MAX_RES))
        self.renderers: dict[int, ClientRenderer] = {}
        self._lock = threading.Lock()
        self._playing = threading.Event()
        self._stopped = threading.Event()
        self.last_error = ""
        self.server = viser.ViserServer(host=host, port=port, label="fast-anerf", verbose=verbose)
        # viser's world becomes A-NeRF's (up = -y): orbiting keeps the character upright.
        self.server.scene.set_up_direction("-y")
        self._set_home_camera(home)
        self._build_gui()
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)
        self._player = threading.Thread(target=self._play_loop, name="viewer-player", daemon=True)
        self._player.start()

    @property
    def url(self) -> str:
        host = self.server.get_host()
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.server.get_port()}"

    def _set_home_camera(self, home: TrainingView | None) -> None:
        kp3d, _, _ = self.state.pose()
        target = kp3d.mean(0).double().numpy()
        if home is not None:
            c2w, fov = home.c2w, home.fov_y
        else:  # in front of the first pose (the person faces its root's -z), a little above
            height = self.state.model.height
            root_rot = self.state.sequences[self.state.motion].bones[0, 0].double()
            from fast_anerf.skeleton import axis_angle_to_matrix

            facing = axis_angle_to_matrix(root_rot).numpy() @ np.array([0.0, 0.0, 1.0])
            eye = target + 1.8 * height * facing + np.array([0.0, -0.15 * height, 0.0])
            c2w, fov = look_at_c2w(eye, target), np.radians(40.0)
        # Orbit about the point of the view axis nearest to the body: the first frame is exactly the home view.
        forward = -c2w[:3, 2]
        look_at = c2w[:3, 3] + max(float((target - c2w[:3, 3]) @ forward), 1e-3) * forward
        cam = self.server.initial_camera
        cam.position = tuple(c2w[:3, 3])
        cam.look_at = tuple(look_at)
        cam.up = (0.0, -1.0, 0.0)
        cam.fov = float(fov)

    # --- GUI ---------------------------------------------------------------------------------------
    def _build_gui(self) -> None:
        gui, state = self.server.gui, self.state
        self.error_box = gui.add_markdown("", visible=False, order=-90.0)
        with gui.add_folder("Pose"):
            self.motion = gui.add_dropdown("Motion", list(state.sequences), initial_value=state.motion)
            self.frame = gui.add_slider("Frame", 0, max(state.n_frames - 1, 1), 1, 0)
            self.frame.disabled = state.n_frames == 1  # a one-frame sequence: nothing to move to
            self.play = gui.add_button("Play")
            self.speed = gui.add_slider("Speed (fps)", 1, 30, 1, 10)
        with gui.add_folder("Joints"):
            self.joint = gui.add_dropdown("Joint", list(SMPL_JOINT_NAMES), initial_value=SMPL_JOINT_NAMES[0])
            self.axes = [gui.add_slider(f"Rotate {a}", -np.pi, np.pi, 0.01, 0.0) for a in "xyz"]
            self.reset = gui.add_button("Reset joints")
        with gui.add_folder("Display"):
            self.skeleton = gui.add_checkbox("Skeleton", False)
            self.background = gui.add_dropdown("Background", list(BACKGROUNDS), initial_value="white")
            self.res = gui.add_slider("Resolution", MIN_RES, MAX_RES, 32, self.resolution)
            self.preview = gui.add_slider("Moving resolution", MIN_RES, MAX_RES, 32, self.preview_resolution)

        # Set while this thread shows the state's values in the controls: their callbacks then do nothing.
        # Thread-local, since viser runs the callbacks of a value set from Python in the setting thread.
        self._local = threading.local()
        self.motion.on_update(self._guard(lambda _: self._on_motion()))
        self.frame.on_update(self._guard(lambda _: state.set_frame(self.frame.value), self._show_frame))
        self.play.on_click(self._guard(lambda _: self._toggle_play()))
        self.joint.on_update(self._guard(lambda _: self._on_joint()))
        for slider in self.axes:
            slider.on_update(self._guard(lambda _: self._on_axes(), self._on_joint))
        self.reset.on_click(self._guard(lambda _: self._on_reset()))
        self.skeleton.on_update(self._guard(lambda _: state.set_skeleton(self.skeleton.value)))
        self.background.on_update(self._guard(lambda _: state.set_background(self.background.value)))
        self.res.on_update(self._guard(lambda _: self._on_resolution(), self._show_resolution))
        self.preview.on_update(self._guard(lambda _: self._on_resolution(), self._show_resolution))

    def _guard(self, callback, revert=None):
        """Wrap a GUI callback: a new input clears the last error; its own error goes to the page and the log,
        and ``revert()`` puts the control back to the value in use."""

        def guarded(event) -> None:
            if getattr(self._local, "showing", False):
                return
            # Cleared first: a render thread may already be reporting a failure of the state this input made.
            self.clear_error()
            try:
                callback(event)
            except Exception as error:
                self.report_error(str(error), error)
                if revert is not None:
                    try:
                        with self._showing_state():
                            revert()
                    except Exception:
                        log.exception("viewer: could not reset the control")
                return
            self.wake_all()

        return guarded

    def _on_motion(self) -> None:
        self.state.set_motion(self.motion.value)
        n = self.state.n_frames
        with self._showing_state():  # the state clamped its frame already
            self.frame.value = self.state.frame
        self.frame.max = max(n - 1, 1)  # a one-frame motion still gets a valid slider
        self.frame.disabled = n == 1

    def _toggle_play(self) -> None:
        if self._playing.is_set():
            self._playing.clear()
            self.play.label = "Play"
        else:
            self._playing.set()
            self.play.label = "Pause"

    def _play_loop(self) -> None:
        while not self._stopped.is_set():
            if not self._playing.wait(timeout=0.2):
                continue
            try:  # one atomic step of the state (a motion switched meanwhile cannot leave it out of range)
                frame = self.state.advance()
                with self._showing_state():  # show it without writing it back
                    self.frame.value = frame
            except Exception as error:  # the player must outlive any error
                self.report_error(f"playing failed: {error}", error)
            time.sleep(1.0 / max(float(self.speed.value), 1.0))

    def _show_frame(self) -> None:
        self.frame.value = self.state.frame

    def _show_resolution(self) -> None:
        self.res.value, self.preview.value = self.resolution, self.preview_resolution

    def _joint_index(self) -> int:
        return SMPL_JOINT_NAMES.index(self.joint.value)

    @contextlib.contextmanager
    def _showing_state(self):
        previous = getattr(self._local, "showing", False)
        self._local.showing = True
        try:
            yield
        finally:
            self._local.showing = previous

    def _on_joint(self) -> None:
        with self._showing_state():  # show the chosen joint's edit without writing it back
            for slider, value in zip(self.axes, self.state.joint_offset(self._joint_index()), strict=True):
                slider.value = value

    def _on_axes(self) -> None:
        self.state.set_joint_offset(self._joint_index(), [s.value for s in self.axes])

    def _on_reset(self) -> None:
        self.state.reset_joints()
        self._on_joint()

    def _on_resolution(self) -> None:
        for name, slider in (("resolution", self.res), ("moving resolution", self.preview)):
            value = slider.value
            if not np.isfinite(value) or not MIN_RES <= value <= MAX_RES:
                raise UserError(f"{name} must be in [{MIN_RES}, {MAX_RES}] pixels, got {value}")
        self.resolution, self.preview_resolution = int(self.res.value), int(self.preview.value)

    # --- clients, errors, lifetime -------------------------------------------------------------------
    def _on_connect(self, client) -> None:
        renderer = ClientRenderer(self, client)
        with self._lock:
            self.renderers[client.client_id] = renderer
        client.camera.on_update(lambda _: renderer.wake())
        renderer.wake()

    def _on_disconnect(self, client) -> None:
        with self._lock:
            renderer = self.renderers.pop(client.client_id, None)
        if renderer is not None:
            renderer.stop()

    def wake_all(self) -> None:
        with self._lock:
            renderers = list(self.renderers.values())
        for renderer in renderers:
            renderer.wake()

    def report_error(self, message: str, error: BaseException | None = None) -> None:
        """Show ``message`` on every page (a box and a red notification) and log it (with the traceback when
        it is not a user error)."""
        if error is not None and not isinstance(error, UserError | ValueError):
            log.error("viewer: %s", message, exc_info=error)
        else:
            log.warning("viewer: %s", message)
        try:
            self.error_box.content = f"⚠️ **Error:** {message}"
            self.error_box.visible = True
            for client in self.server.get_clients().values():
                client.add_notification("Error", message, color="red", auto_close_seconds=8.0)
        except Exception:  # reporting must never raise (e.g. while the server shuts down)
            log.exception("viewer: could not show the error on the page")
        self.last_error = message  # last: whoever sees it also sees the page updated

    def clear_error(self) -> None:
        if self.error_box.visible:
            self.error_box.visible = False

    def stop(self) -> None:
        """Stop playing, every render thread and the server."""
        self._stopped.set()
        self._playing.clear()
        with self._lock:
            renderers = list(self.renderers.values())
            self.renderers.clear()
        for renderer in renderers:
            renderer.stop()
        self.server.stop()
        self._player.join(timeout=5.0)


def _check_host(host: str) -> None:
    """One line for a host this machine cannot listen on (viser would otherwise wait forever, silently)."""
    try:
        family = socket.getaddrinfo(host, None)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
    except (OSError, UnicodeError):
        raise UserError(f"--host {host!r} is not an address of this machine; use 127.0.0.1 (default)") from None


def build_state(args) -> tuple[ViewerState, TrainingView | None]:
    """Load the checkpoint, the training poses and the motions named by the ``View`` arguments."""
    from fast_anerf.bone_boxes import skeleton_height
    from fast_anerf.data import motions
    from fast_anerf.data.anerf_h5 import open_anerf_h5
    from fast_anerf.data.synthetic import builtin_rest_pose
    from fast_anerf.model import load_character
    from fast_anerf.render import REFINED_NOTE, trained_skts
    from fast_anerf.run_setup import pick_device, resolve_data
    from fast_anerf.viewer import load_motion_file, load_training_view, motion_sequence

    device = pick_device(args.device)
    model, ckpt = load_character(args.ckpt, device=device, backend=args.backend)
    model.eval()
    data = args.data if args.data is not None else (Path(ckpt["data"]) if ckpt.get("data") else None)
    home, extra = None, []
    if data is not None and Path(data).exists():
        train_h5, _ = resolve_data(Path(data))
        with open_anerf_h5(train_h5) as opened:  # the poses the model was trained on: refined ones if any
            skts, note, mismatch = trained_skts(ckpt, opened, model)
            home = load_training_view(opened, skts, own_codes=not mismatch)
            if note == REFINED_NOTE:  # the estimates too, to compare what refinement changed
                estimates = torch.as_tensor(opened.arrays["skts"], dtype=torch.float32)
                extra.append(replace(load_training_view(opened, estimates).sequence, name=ESTIMATED))
        log.info("training poses: %s%s", note, f" ({mismatch})" if mismatch else "")
    elif args.data is not None:
        raise UserError(f"--data {args.data}: no such file or folder; pass the training .h5 or its folder")
    else:
        log.warning("training data %s not found: only the built-in motions are shown (pass --data)", data)
    # Motions are in metres for a ~1.7 m person standing at the origin: scale them to the character, and
    # place them where the training sequence starts (motions start standing, as training sequences do).
    scale = model.height / skeleton_height(torch.as_tensor(builtin_rest_pose()))
    anchor = home.sequence.roots[0].double().numpy() if home is not None else np.zeros(3)
    sequences = ([home.sequence] if home is not None else []) + extra
    for name in motions.list_motions():
        sequences.append(motion_sequence(name, *motions.MOTIONS[name](96), anchor, scale))
    for path in args.motion_file:
        name = Path(path).stem  # the picker's name: one sequence per name
        if any(s.name == name for s in sequences):
            raise UserError(f"--motion-file {path}: the name '{name}' is taken by another sequence (a built-in motion "
                            "or another file); rename the file")  # fmt: skip
        sequences.append(motion_sequence(name, *load_motion_file(path), anchor, scale))
    return ViewerState(model, sequences), home


def run_viewer(args) -> None:
    """Serve until Ctrl-C (``View.main``)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a port; use 1..65535 (or 0 for any free port)")
    for name, value in (("--resolution", args.resolution), ("--preview-resolution", args.preview_resolution)):
        if not MIN_RES <= value <= MAX_RES:
            raise UserError(f"{name} {value} is out of range; use {MIN_RES}..{MAX_RES} pixels")
    state, home = build_state(args)
    app = ViewerApp(state, home, args.host, args.port, args.resolution, args.preview_resolution)
    try:  # from here on, Ctrl-C at any point stops the server cleanly
        local = args.host in ("127.0.0.1", "localhost", "::1")
        where = "this machine only" if local else f"{args.host}: reachable from other machines"
        print(
            f"fast-anerf viewer: {app.url} (serving {where}; motions: {', '.join(state.sequences)}). Ctrl-C stops.",
            flush=True,
        )
        if home is None:
            print(f"(no '{TRAINING}': the checkpoint's training data was not found)", flush=True)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nCtrl-C: stopping the viewer", flush=True)
    finally:
        app.stop()
    print("viewer stopped")
