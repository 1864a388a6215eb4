"""The interactive viewer's logic, independent of the web framework: what to render and from where.

``ViewerState`` holds what the page controls (pose sequence and frame, per-joint rotation edits, background,
skeleton overlay), validates every value that comes from the browser, and renders an image for a camera with
``renderer.render_image``. ``viewer_server.py`` wires it to a viser page; ``scripts/bench_view.py`` and the
tests drive it headless.

Camera conventions: viser reports a client camera as ``wxyz`` + ``position`` of an OpenCV camera (x right,
y down, looking down +z) in its world, and the vertical field of view in radians. The server sets the scene's
up direction to -y, so viser's world is A-NeRF's world; only the camera axes differ from our OpenGL ``c2w``
(y and z flipped).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fast_anerf.data.rays import OPENCV_TO_OPENGL, project_points
from fast_anerf.errors import DataError, UserError
from fast_anerf.media import draw_skeleton
from fast_anerf.model import Character
from fast_anerf.renderer import RenderSettings, render_image
from fast_anerf.skeleton import (
    N_JOINTS,
    axis_angle_to_matrix,
    forward_kinematics,
    matrix_to_axis_angle,
    rigid_inverse,
    skts_to_pose,
)

VIEW_CHUNK = 16384  # rays per render_rays call on the CPU (see ViewerState)
# On a GPU a frame is bound by kernel launches and host syncs per render_rays call (nerfacc marches 24 bones per
# call), not by arithmetic: the rays of a 512x512 frame that reach the body (~65k) in one call. Not yet measured
# on a GPU (scripts/gpu_check.sh runs bench_view.py there).
VIEW_CHUNK_CUDA = 65536
MIN_RES, MAX_RES = 32, 2048  # render size limits in pixels (the longer image side)
TRAINING = "training poses"  # name of the sequence read from the training data (refined poses when there are)
ESTIMATED = "estimated poses"  # the data's own poses, beside refined training poses (what refinement changed)
BACKGROUNDS: dict[str, tuple[float, float, float] | None] = {
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
    "checker": None,  # light/dark grey squares: shows what is transparent
}


class ViewerInputError(UserError):
    """A value from the page that the viewer cannot use (shown on the page; the server keeps serving)."""


# ---------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------
def viser_to_c2w(wxyz, position) -> np.ndarray:
    """viser's client camera (OpenCV axes, ``wxyz`` quaternion ``[4]``, ``position [3]``) -> OpenGL c2w ``[4, 4]``."""
    w, x, y, z = (float(v) for v in wxyz)
    norm = (w * w + x * x + y * y + z * z) ** 0.5
    if not np.isfinite(norm) or norm < 1e-8 or not np.all(np.isfinite(position)):
        raise ViewerInputError(f"camera from the page is not finite: wxyz={list(wxyz)}, position={list(position)}")
    w, x, y, z = w / norm, x / norm, y / norm, z / norm
    rot_cv = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    c2w = np.eye(4)
    c2w[:3, :3] = rot_cv @ OPENCV_TO_OPENGL
    c2w[:3, 3] = np.asarray(position, dtype=np.float64)
    return c2w


def c2w_to_viser(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenGL c2w ``[4, 4]`` -> viser's ``(wxyz [4], position [3])`` (inverse of ``viser_to_c2w``)."""
    rot = np.asarray(c2w, dtype=np.float64)[:3, :3] @ OPENCV_TO_OPENGL
    # Shepperd's method on the largest of the four squared components: stable for every rotation.
    trace = np.trace(rot)
    squares = np.array([trace, rot[0, 0], rot[1, 1], rot[2, 2]])
    k = int(np.argmax(squares))
    if k == 0:
        w = 0.5 * np.sqrt(1 + trace)
        q = [w, (rot[2, 1] - rot[1, 2]) / (4 * w), (rot[0, 2] - rot[2, 0]) / (4 * w), (rot[1, 0] - rot[0, 1]) / (4 * w)]
    else:
        i, j, m = k - 1, k % 3, (k + 1) % 3
        s = 0.5 * np.sqrt(max(1 + 2 * rot[i, i] - trace, 1e-12))
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (rot[m, j] - rot[j, m]) / (4 * s)
        q[1 + i] = s
        q[1 + j] = (rot[j, i] + rot[i, j]) / (4 * s)
        q[1 + m] = (rot[m, i] + rot[i, m]) / (4 * s)
    return np.array(q), np.asarray(c2w, dtype=np.float64)[:3, 3].copy()


def look_at_c2w(eye, target, up=(0.0, -1.0, 0.0)) -> np.ndarray:
    """OpenGL c2w ``[4, 4]`` at ``eye`` looking at ``target`` with camera up close to ``up`` (world -y)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, np.cross(back, right), back], axis=1)
    c2w[:3, 3] = eye
    return c2w


def render_size(aspect: float, max_side: int) -> tuple[int, int]:
    """``(height, width)`` with the longer side ``max_side`` (clamped to [MIN_RES, MAX_RES]) and the given
    width/height ``aspect`` (clamped to [1/8, 8], so a degenerate canvas still renders)."""
    if not (np.isfinite(aspect) and np.isfinite(max_side)):
        raise ViewerInputError(f"render size must be finite, got aspect={aspect}, resolution={max_side}")
    side = int(np.clip(round(max_side), MIN_RES, MAX_RES))
    aspect = float(np.clip(aspect, 1 / 8, 8))
    if aspect >= 1:
        return max(MIN_RES // 4, round(side / aspect)), side
    return side, max(MIN_RES // 4, round(side * aspect))


# ---------------------------------------------------------------------------------------------
# Pose sequences
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoseSequence:
    """Poses to walk through: ``bones [T, 24, 3]`` local axis-angle (rad, world root orientation), ``roots
    [T, 3]`` world root positions, ``code_ids [T]`` appearance codes (-1 = the mean code, for unseen poses)."""

    name: str
    bones: torch.Tensor
    roots: torch.Tensor
    code_ids: torch.Tensor

    @property
    def n_frames(self) -> int:
        return self.bones.shape[0]


def bones_from_skts(skts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-joint transforms ``[T, 24, 4, 4]`` -> axis-angle ``(bones [T, 24, 3], roots [T, 3])``."""
    local, roots = skts_to_pose(skts.double())
    return matrix_to_axis_angle(local).float(), roots.float()


@dataclass(frozen=True)
class TrainingView:
    """The training data's poses and its first camera (the viewer's home view)."""

    path: Path  # the .h5
    sequence: PoseSequence
    c2w: np.ndarray  # [4, 4] OpenGL
    fov_y: float  # rad
    aspect: float  # width / height


def load_training_view(data, skts: torch.Tensor, own_codes: bool = True) -> TrainingView:
    """Poses ``skts [P, 24, 4, 4]`` (one row per pose of the open A-NeRF file ``data``; appearance code = the
    first image showing it, or the mean code without ``own_codes``: not the run's training file) and the file's
    camera 0, without loading its images."""
    arrays = data.arrays
    pose_idxs = np.asarray(data.pose_idxs)
    code_ids = np.full(skts.shape[0], -1, np.int64)
    for image in range(len(pose_idxs) - 1, -1, -1) if own_codes else ():  # backwards: the first image wins
        code_ids[pose_idxs[image]] = image
    focal = float(np.asarray(arrays["focals"]).reshape(-1)[0])
    c2w = np.asarray(arrays["c2ws"], np.float64).reshape(-1, 4, 4)[0]
    bones, roots = bones_from_skts(skts)
    sequence = PoseSequence(TRAINING, bones, roots, torch.as_tensor(code_ids))
    fov_y = 2 * float(np.arctan(data.height / (2 * focal)))
    return TrainingView(Path(data.path), sequence, c2w, fov_y, data.width / data.height)


def load_motion_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A motion ``.npz``: ``bones [T, 24, 3]`` axis-angle (rad) and ``root [T, 3]`` (m, relative to the standing
    pelvis), in the canonical SMPL frame (y up, facing +z) like the built-in motions."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array has no named keys
            raise ValueError("not an .npz archive")
        with loaded as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as error:  # noqa: BLE001 - whatever is wrong with the file: one line naming it
        raise DataError(f"{path}: cannot read the motion file ({type(error).__name__}); pass an .npz") from None
    root_key = "root" if "root" in arrays else "roots"
    if "bones" not in arrays or root_key not in arrays:
        raise DataError(f"{path}: a motion .npz needs keys 'bones' [T,24,3] and 'root' [T,3]; found {list(arrays)}")
    if not all(
        np.issubdtype(arrays[k].dtype, np.number) and not np.iscomplexobj(arrays[k]) for k in ("bones", root_key)
    ):
        raise DataError(f"{path}: keys 'bones'/'{root_key}' must hold real numbers; fix the file")
    bones, root = arrays["bones"].astype(np.float64), arrays[root_key].astype(np.float64)
    if bones.ndim != 3 or bones.shape[1:] != (N_JOINTS, 3) or root.shape != (bones.shape[0], 3) or len(bones) == 0:
        raise DataError(
            f"{path}: key 'bones' must be [T,24,3] and 'root' [T,3] with T >= 1; got {bones.shape} and {root.shape}"
        )
    if not (np.isfinite(bones).all() and np.isfinite(root).all()):
        raise DataError(f"{path}: keys 'bones'/'root' hold NaN or infinite values; fix the file")
    return bones, root


def motion_sequence(name: str, bones: np.ndarray, roots: np.ndarray, anchor, scale: float) -> PoseSequence:
    """A canonical motion (y up, metres) placed in A-NeRF's world: root offsets scaled by ``scale`` (the
    character's size relative to the motion's) and added to ``anchor [3]`` (world root position)."""
    from fast_anerf.data.synthetic import canonical_to_world

    world_bones, world_roots = canonical_to_world(bones, roots)
    world_roots = world_roots * scale + np.asarray(anchor, np.float64)
    codes = torch.full((len(bones),), -1, dtype=torch.long)
    return PoseSequence(name, torch.as_tensor(world_bones).float(), torch.as_tensor(world_roots).float(), codes)


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------
def checker_background(height: int, width: int, cell: int = 16) -> torch.Tensor:
    """``[H, W, 3]`` light/dark grey checkerboard in [0, 1]."""
    v, u = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    dark = ((u // cell + v // cell) % 2).float()
    return (0.8 - 0.2 * dark)[..., None].expand(height, width, 3).contiguous()


# ---------------------------------------------------------------------------------------------
# The viewer's state
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """What one render uses, copied under the lock so that page edits during a render cannot tear it."""

    sequence: PoseSequence
    frame: int
    joint_offsets: torch.Tensor  # [24, 3]
    background: str
    show_skeleton: bool


class ViewerState:
    """Everything the page controls, validated, and ``render`` for a camera. Thread-safe: GUI callbacks and
    per-client render threads call it concurrently.

    Args:
        model: the trained character (in eval mode on its device).
        sequences: pose sequences to choose from; the first is shown first.
        settings, chunk: passed to ``render_image`` (default: the model's evaluation settings, and rays per
            chunk at least ``VIEW_CHUNK``: fewer, larger field calls; 16k rays measured 1.3x faster per frame
            than 4k on CPU, with ~10 MB of temporaries; ``VIEW_CHUNK_CUDA`` on a GPU).
    """

    def __init__(
        self,
        model: Character,
        sequences: list[PoseSequence],
        settings: RenderSettings | None = None,
        chunk: int | None = None,
    ) -> None:
        if not sequences:
            raise ValueError("ViewerState needs at least one pose sequence")
        self.model = model
        self.sequences = {s.name: s for s in sequences}
        self.settings = settings or RenderSettings.from_train(model.config.train, training=False)
        on_gpu = model.box_min.device.type == "cuda"
        self.chunk = chunk or max(model.config.train.chunk_rays, VIEW_CHUNK_CUDA if on_gpu else VIEW_CHUNK)
        self._lock = threading.Lock()
        self._sequence = sequences[0]
        self._frame = 0
        self._offsets = torch.zeros(N_JOINTS, 3)
        self._background = "white"
        self._skeleton = False
        self.version = 0  # bumped on every change: render loops compare it to know when to re-render
        self.last_stats: dict[str, float] = {}

    # --- page inputs ------------------------------------------------------------------------------
    @property
    def motion(self) -> str:
        return self._sequence.name

    @property
    def frame(self) -> int:
        return self._frame

    @property
    def n_frames(self) -> int:
        return self._sequence.n_frames

    def _changed(self) -> None:
        self.version += 1

    def set_motion(self, name: str) -> None:
        """Switch to another sequence; the frame is clamped into it."""
        with self._lock:
            if name not in self.sequences:
                raise ViewerInputError(f"unknown motion {name!r}; choose one of {list(self.sequences)}")
            self._sequence = self.sequences[name]
            self._frame = min(self._frame, self._sequence.n_frames - 1)
            self._changed()

    def set_frame(self, frame) -> None:
        """Show frame ``frame`` (an integer in [0, n_frames))."""
        with self._lock:
            n = self._sequence.n_frames
            if not isinstance(frame, int | float | np.number) or not np.isfinite(frame) or frame != int(frame):
                raise ViewerInputError(f"frame must be a whole number, got {frame!r}")
            if not 0 <= int(frame) < n:
                raise ViewerInputError(f"frame {int(frame)} is out of range; {self.motion!r} has frames 0..{n - 1}")
            self._frame = int(frame)
            self._changed()

    def advance(self, step: int = 1) -> int:
        """Play: move ``step`` frames forward, wrapping around; returns the new frame."""
        with self._lock:
            self._frame = (self._frame + step) % self._sequence.n_frames
            self._changed()
            return self._frame

    def joint_offset(self, joint: int) -> tuple[float, float, float]:
        return tuple(float(v) for v in self._offsets[joint])

    def set_joint_offset(self, joint, rotvec) -> None:
        """Extra local rotation of ``joint`` (axis-angle ``[3]``, rad, each component in [-pi, pi]) applied
        on top of the sequence's pose: ``R_joint' = R_joint @ exp(rotvec)``."""
        values = np.asarray(rotvec, dtype=np.float64).reshape(-1)
        if not isinstance(joint, int | np.integer) or not 0 <= int(joint) < N_JOINTS:
            raise ViewerInputError(f"joint must be an index in 0..{N_JOINTS - 1}, got {joint!r}")
        if values.shape != (3,) or not np.isfinite(values).all():
            raise ViewerInputError(f"joint rotation must be 3 finite angles in radians, got {values.tolist()}")
        if np.abs(values).max() > np.pi + 1e-6:
            raise ViewerInputError(f"joint rotation angles must lie in [-pi, pi] radians, got {values.tolist()}")
        with self._lock:
            self._offsets[int(joint)] = torch.as_tensor(values, dtype=torch.float32)
            self._changed()

    def reset_joints(self) -> None:
        with self._lock:
            self._offsets.zero_()
            self._changed()

    def set_background(self, name: str) -> None:
        with self._lock:
            if name not in BACKGROUNDS:
                raise ViewerInputError(f"unknown background {name!r}; choose one of {list(BACKGROUNDS)}")
            self._background = name
            self._changed()

    def set_skeleton(self, show: bool) -> None:
        with self._lock:
            self._skeleton = bool(show)
            self._changed()

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._sequence, self._frame, self._offsets.clone(), self._background, self._skeleton)

    # --- rendering -----------------------------------------------------------------------------------
    def pose(self, snap: Snapshot | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(kp3d [24, 3], skts [24, 4, 4], code_id)`` of the current frame with the joint edits applied."""
        snap = snap or self.snapshot()
        seq, t = snap.sequence, snap.frame
        rotations = axis_angle_to_matrix(seq.bones[t].double())
        if bool(snap.joint_offsets.any()):
            rotations = rotations @ axis_angle_to_matrix(snap.joint_offsets.double())
        rest = self.model.rest_pose.detach().cpu().double()
        kp3d, l2ws = forward_kinematics(rest, rotations, seq.roots[t].double())
        return kp3d.float(), rigid_inverse(l2ws).float(), int(seq.code_ids[t])

    def render(self, c2w, fov_y: float, height: int, width: int) -> np.ndarray:
        """Render the current pose: OpenGL ``c2w [4, 4]``, vertical field of view ``fov_y`` (rad), size in
        pixels (each side clamped to [8, MAX_RES]). Returns uint8 ``[H, W, 3]``; ``last_stats`` gets the time and
        the number of field samples."""
        c2w = torch.as_tensor(np.asarray(c2w, dtype=np.float64), dtype=torch.float32)
        if c2w.shape != (4, 4) or not bool(torch.isfinite(c2w).all()):
            raise ViewerInputError("camera pose must be a finite 4x4 matrix")
        if not (np.isfinite(fov_y) and 1e-3 < fov_y < np.pi - 1e-3):
            raise ViewerInputError(f"field of view must be in (0, 180) degrees, got {np.degrees(fov_y)}")
        height, width = int(np.clip(height, MIN_RES // 4, MAX_RES)), int(np.clip(width, MIN_RES // 4, MAX_RES))
        start = time.perf_counter()
        snap = self.snapshot()
        kp3d, skts, code_id = self.pose(snap)
        focal = 0.5 * height / float(np.tan(0.5 * fov_y))
        colour = BACKGROUNDS[snap.background]
        background = checker_background(height, width) if colour is None else torch.tensor(colour)
        out = render_image(
            self.model,
            c2w,
            focal,
            (width / 2, height / 2),
            height,
            width,
            skts,
            code_id=code_id if code_id < self.model.n_frame_codes else -1,  # -1: the mean code
            background=background,
            settings=self.settings,
            chunk=self.chunk,
        )
        image = (out["rgb"].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        if snap.show_skeleton:
            uv, depth = project_points(kp3d, c2w, focal, (width / 2, height / 2))
            draw_skeleton(image, uv.numpy(), depth.numpy())
        seconds = time.perf_counter() - start
        self.last_stats = {"seconds": seconds, "height": height, "width": width, "samples": int(out["n_samples"])}
        return image
