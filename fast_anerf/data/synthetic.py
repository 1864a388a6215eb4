"""The built-in character: a skinned wooden mannequin (``mannequin-x``, no SMPL files) rendered on the CPU.

``generate_dataset`` writes three A-NeRF ``.h5`` files (specs/anerf.md §1) with exact masks:

* ``train.h5``: one camera orbiting the moving person once over the sequence (~3 m away, elevation
  ~5-15 degrees, person ~70 % of the frame height) while the person walks in place, raises the arms, turns
  and squats (``motions.TRAIN_MOTIONS``). ``kp3d/bones/skts/cyls`` hold **noisy SPIN-like poses**
  (below); ``gt_kp3d/gt_bones/gt_skts`` the true ones.
* ``test_view.h5``: 4 held-out cameras per frame on ~10 training frames, at azimuths 45/135/225/315 degrees
  from that frame's training camera (so >= 27 degrees from any training view within 5 frames) and other
  elevations; true poses (``gt_*`` = ``kp3d/bones/skts``).
* ``test_pose.h5``: unseen motions (``jumping_jacks``, ``wave``) from 3 cameras; true poses.

Conventions:

* World = A-NeRF's: up is -y. A canonical (SMPL y-up) motion is placed in the world by
  ``ROT_GLOB = diag(1, -1, -1)`` applied to the root orientation and position, as A-NeRF does for SURREAL;
  the person initially faces world -z.
* Units: metres. ``ext_scale = 0.001`` means "millimetres x ext_scale = world units", so 1 world unit = 1 m
  and an error in mm = error / ext_scale.
* SMPL joints 0-21 are the mannequin's joints 0-21 (same names and order as SMPL-X body joints 0-21).
  The mannequin's ``L_Hand``/``R_Hand`` sit on the wrists (zero length), so SMPL's ``left_hand``/
  ``right_hand`` (22/23) are placed at ``HAND_REACH`` = 80 % of the way from the wrist to the middle-finger
  knuckle (~8.7 cm, the palm centre). Their local rotations are always 0 (they move no geometry).
* Per-image rows: every image has its own ``kp3d/bones/skts/cyls`` row; ``kp_idxs`` = frame index in the
  sequence (test_view: the training frame it shows), ``cam_idxs`` = camera id (0 training orbit, 1-4
  test_view, 5-7 test_pose), ``img_paths`` = ``synth/<split>/cam<id>/<frame:05d>``.
* Images: per-vertex albedo (a palette colour per body part x a 7 cm checker in the part's rest frame) with
  fixed Lambertian shading (ambient 0.7, light fixed in the world), white background, no anti-aliasing: each
  pixel is the colour of the single A-NeRF ray through it, and ``masks`` = that ray hits the body.
  ``sampling_masks`` = masks dilated 5x5 twice (A-NeRF; SURREAL's extra cylinder test is not applied).

Noise model of the training poses (seeded; smooth terms are Gaussian-filtered white noise, sigma 6 frames,
rescaled to unit RMS per channel so the error size does not depend on the seed or the sequence length):
per-axis rotation noise on joints 1-21 (smooth 0.04 rad + per-frame jitter 0.011 rad), root orientation error
(smooth 0.025 rad per axis, world frame) and root translation error (smooth 32 mm along the camera's viewing
direction, as SPIN's depth ambiguity, + 6 mm per axis). Result: MPJPE ~50 mm without alignment (47-52 mm
over seeds 0-3; printed, written to ``report.txt`` and stored in ``train.h5`` as ``synth_report``).
"""

from __future__ import annotations

import colorsys
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch

from fast_anerf.cache import cache_dir
from fast_anerf.data import motions
from fast_anerf.data.anerf_h5 import dilate_mask
from fast_anerf.data.h5_write import write_anerf_h5
from fast_anerf.data.rays import bounding_cylinder, image_rays
from fast_anerf.errors import UserError
from fast_anerf.run_files import atomic_path
from fast_anerf.skeleton import axis_angle_to_matrix, matrix_to_axis_angle, pose_skeleton

if TYPE_CHECKING:
    import trimesh

FORMAT_VERSION = 1
EXT_SCALE = 0.001
ROT_GLOB = np.diag([1.0, -1.0, -1.0])
HAND_REACH = 0.8
AMBIENT = 0.7
LIGHT_DIR = np.array([0.35, -0.8, -0.5]) / np.linalg.norm([0.35, -0.8, -0.5])  # from above, in front
CHECKER = 0.07  # m, checker cell in each body part's rest frame
DISTANCE = 3.0  # m, camera to target
BODY_FILL = 0.7  # standing body height / image height
MOTION_FRAMES = 48  # natural length of each motion before subsampling
SPLITS = ("train", "test_view", "test_pose")
TEST_VIEW_OFFSETS = ((45.0, 25.0), (135.0, -5.0), (225.0, 30.0), (315.0, 0.0))  # (azimuth, elevation), deg
TEST_POSE_CAMERAS = ((0.0, 10.0), (120.0, 20.0), (240.0, 5.0))
# Noise of the training poses (see the module docstring).
NOISE_SMOOTH_ROT, NOISE_JITTER_ROT, NOISE_ROOT_ROT = 0.04, 0.011, 0.025  # rad
NOISE_DEPTH, NOISE_TRANS = 0.032, 0.006  # m
NOISE_SMOOTH_FRAMES = 6.0


def default_data_dir() -> Path:
    """Cache folder of the built-in data set: ``$FAST_ANERF_CACHE/builtin``, else
    ``~/.cache/fast_anerf/builtin``."""
    return cache_dir("builtin")


@functools.lru_cache(maxsize=1)
def _mannequin():
    from mannequin import Mannequin  # imported lazily: only data generation needs it

    return Mannequin("wooden")


def _mannequin_rest_joints() -> np.ndarray:
    """All mannequin joints at rest, ``[54, 3]`` metres in its own (y-up, facing +z) frame."""
    m = _mannequin()
    return m.joint_transforms(m.rest_pose(dtype=np.float64))[:, :3, 3]


def builtin_rest_pose() -> np.ndarray:
    """Rest (T-ish) skeleton of the built-in character, ``[24, 3]`` float32 metres, root at the origin,
    SMPL canonical frame (y up, facing +z)."""
    m = _mannequin()
    joints = _mannequin_rest_joints()
    rest = joints[:24].copy()
    for hand, wrist, knuckle in ((22, 20, "L_Middle1"), (23, 21, "R_Middle1")):
        rest[hand] = joints[wrist] + HAND_REACH * (joints[m.joint_index(knuckle)] - joints[wrist])
    return (rest - rest[0]).astype(np.float32)


def canonical_to_world(bones: np.ndarray, roots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical y-up motion (``[T, 24, 3]`` axis-angle, ``[T, 3]`` m) -> A-NeRF world (up = -y)."""
    bones = bones.copy()
    root_rot = axis_angle_to_matrix(torch.as_tensor(bones[:, 0], dtype=torch.float64)).numpy()
    bones[:, 0] = matrix_to_axis_angle(torch.as_tensor(ROT_GLOB @ root_rot)).numpy()
    return bones, roots @ ROT_GLOB.T


def pose_arrays(rest: np.ndarray, bones: np.ndarray, roots: np.ndarray) -> dict[str, np.ndarray]:
    """A-NeRF pose keys from world bones ``[T, 24, 3]`` and roots ``[T, 3]``: ``kp3d [T, 24, 3]``,
    ``bones``, ``skts [T, 24, 4, 4]`` (float32; FK in float64 from float32-rounded inputs)."""
    b = torch.as_tensor(bones.astype(np.float32), dtype=torch.float64)
    r = torch.as_tensor(roots.astype(np.float32), dtype=torch.float64)
    kp3d, skts = pose_skeleton(torch.as_tensor(rest, dtype=torch.float64), b, r)
    return {"kp3d": kp3d.float().numpy(), "bones": b.float().numpy(), "skts": skts.float().numpy()}


class Character:
    """The mannequin with the built-in appearance, posed by SMPL-24 world rotations."""

    def __init__(self) -> None:
        m = self.mannequin = _mannequin()
        self.faces = np.asarray(m.faces)
        self.rest_pose = builtin_rest_pose()
        self.pelvis_rest = _mannequin_rest_joints()[0]  # the mannequin's own pelvis is not at its origin
        rest_verts = m.vertices(m.rest_pose(dtype=np.float64)) - self.pelvis_rest
        self.height = float(np.ptp(rest_verts[:, 1]))
        self.mid_height = float(rest_verts[:, 1].min() + rest_verts[:, 1].max()) / 2  # canonical y, m
        self.albedo = _vertex_albedo(rest_verts, self.rest_pose)

    def pose(self, bones: np.ndarray, root: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World bones ``[24, 3]`` + root ``[3]`` -> vertices ``[V, 3]`` and mannequin joints ``[54, 3]``
        (world, metres). The mannequin rotates about its origin, not its pelvis, so the translation is
        chosen to put the pelvis at ``root``.
        """
        m = self.mannequin
        pose = m.rest_pose(dtype=np.float64)
        rot0 = axis_angle_to_matrix(torch.as_tensor(bones[0], dtype=torch.float64)).numpy()
        pose["global_rotation"] = np.asarray(bones[0], np.float64)
        pose["global_translation"] = np.asarray(root, np.float64) - rot0 @ self.pelvis_rest
        pose["body_pose"] = np.asarray(bones[1:22], np.float64)
        return m.vertices(pose), m.joint_transforms(pose)[:, :3, 3]

    def shade(self, verts: np.ndarray) -> tuple[trimesh.Trimesh, np.ndarray]:
        """Posed mesh and per-vertex RGB in [0, 1] ``[V, 3]``: albedo x (ambient + diffuse), posed normals."""
        import trimesh  # imported here: from-spin / to-spin use this module's skeleton only

        mesh = trimesh.Trimesh(verts, self.faces, process=False)
        diffuse = np.clip(mesh.vertex_normals @ LIGHT_DIR, 0.0, None)
        return mesh, self.albedo * (AMBIENT + (1 - AMBIENT) * diffuse)[:, None]


def _palette(n: int) -> np.ndarray:
    """``n`` distinct colours ``[n, 3]`` in [0, 1]: golden-ratio hue steps, alternating saturation."""
    hsv = [((0.07 + 0.618034 * i) % 1.0, 0.75 if i % 2 else 0.5, 0.95) for i in range(n)]
    return np.array([colorsys.hsv_to_rgb(*c) for c in hsv])


def _vertex_albedo(rest_verts: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Per-vertex albedo ``[V, 3]``: each vertex belongs to the joint whose rotation moves the nearest bone
    segment (public-API stand-in for the dominant skinning weight); colour = that joint's palette colour,
    darkened on alternate cells of a checker in the joint's rest frame so the texture is learnable."""
    parents = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
    starts, ends, owners = [], [], []
    for j in range(1, 24):
        starts.append(rest[parents[j]])
        ends.append(rest[j])
        owners.append(parents[j])
    # Leaf segments (joints with no child) extend outward so feet, head and fingers get their own part.
    tips = {10: (0.0, -0.02, 0.08), 11: (0.0, -0.02, 0.08), 15: (0.0, 0.15, 0.0)}
    for hand, wrist in ((22, 20), (23, 21)):
        tips[hand] = 1.2 * (rest[hand] - rest[wrist])
    for j, d in tips.items():
        starts.append(rest[j])
        ends.append(rest[j] + np.asarray(d))
        owners.append(j)
    a, b = np.array(starts), np.array(ends)  # [S, 3]
    ab = b - a
    rel = rest_verts[:, None, :] - a[None]  # [V, S, 3]
    s = np.clip((rel * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    dist = np.linalg.norm(rel - s[..., None] * ab, axis=-1)
    owner = np.array(owners)[dist.argmin(1)]  # [V]
    cells = np.floor((rest_verts - rest[owner]) / CHECKER).astype(np.int64).sum(-1) % 2
    return _palette(24)[owner] * np.where(cells == 1, 0.62, 1.0)[:, None]


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world ``[4, 4]`` at ``eye`` looking at ``target``, camera up = world up (-y)."""
    z = eye - target
    z = z / np.linalg.norm(z)
    x = np.cross(np.array([0.0, -1.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    c2w[:3, 3] = eye
    return c2w


def orbit_camera(target: np.ndarray, azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Camera ``DISTANCE`` from ``target``; azimuth 0 = in front of the unturned person (world -z),
    elevation > 0 = above (world -y)."""
    a = math.radians(180.0 + azimuth_deg)
    e = math.radians(elevation_deg)
    offset = DISTANCE * np.array([math.cos(e) * math.sin(a), -math.sin(e), math.cos(e) * math.cos(a)])
    return look_at(target + offset, target)


def render(
    mesh: trimesh.Trimesh, colours: np.ndarray, c2w: np.ndarray, focal: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast one view with A-NeRF's rays (principal point ``(W/2, H/2)``).

    Args:
        mesh: the posed mesh (reuse it across cameras: ``mesh.ray`` caches the BVH; trimesh uses embree via
            embreex when importable, else its slower pure-numpy intersector), colours ``[V, 3]`` in [0, 1]
            (interpolated barycentrically), c2w ``[4, 4]`` OpenGL, focal in pixels, size = H = W.
    Returns:
        rgb uint8 ``[H, W, 3]`` on white, mask bool ``[H, W]`` (the pixel's ray hits the mesh).
    """
    import trimesh

    rays_o, rays_d = image_rays(torch.as_tensor(c2w), focal, (size / 2, size / 2), size, size)
    tri, ray, loc = mesh.ray.intersects_id(rays_o.numpy(), rays_d.numpy(), multiple_hits=False, return_locations=True)
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], loc)  # [hits, 3]
    rgb = np.ones((size * size, 3))
    rgb[ray] = np.einsum("hk,hkc->hc", bary, colours[mesh.faces[tri]])
    mask = np.zeros(size * size, bool)
    mask[ray] = True
    rgb = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    return rgb.reshape(size, size, 3), mask.reshape(size, size)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Temporally smooth noise ``[T, ...]`` with unit RMS per channel (Gaussian filter along T)."""
    n = shape[0]
    white = rng.standard_normal((n + 6 * int(NOISE_SMOOTH_FRAMES), *shape[1:]))
    k = np.arange(-3 * int(NOISE_SMOOTH_FRAMES), 3 * int(NOISE_SMOOTH_FRAMES) + 1)
    kernel = np.exp(-0.5 * (k / NOISE_SMOOTH_FRAMES) ** 2)
    smooth = np.apply_along_axis(lambda x: np.convolve(x, kernel, mode="valid"), 0, white)[:n]
    return smooth / np.sqrt((smooth**2).mean(0, keepdims=True) + 1e-12)


def noisy_poses(bones: np.ndarray, roots: np.ndarray, c2ws: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SPIN-like estimates of world poses (model in the module docstring).

    Args: bones ``[T, 24, 3]``, roots ``[T, 3]`` (world), c2ws ``[T, 4, 4]`` (the image of each pose).
    Returns: noisy bones ``[T, 24, 3]``, roots ``[T, 3]``.
    """
    rng = np.random.default_rng([seed, 1234])
    t = len(bones)
    rot = axis_angle_to_matrix(torch.as_tensor(bones, dtype=torch.float64))
    delta = np.zeros((t, 24, 3))
    delta[:, 1:22] = NOISE_SMOOTH_ROT * _smooth_noise(rng, (t, 21, 3))
    delta[:, 1:22] += NOISE_JITTER_ROT * rng.standard_normal((t, 21, 3))
    noisy = rot @ axis_angle_to_matrix(torch.as_tensor(delta))  # local perturbation of each joint
    root_err = axis_angle_to_matrix(torch.as_tensor(NOISE_ROOT_ROT * _smooth_noise(rng, (t, 3))))
    noisy[:, 0] = root_err @ rot[:, 0]  # world-frame error of the global orientation
    view_dir = -c2ws[:, :3, 2]  # cameras look down their -z
    depth = NOISE_DEPTH * _smooth_noise(rng, (t, 1))
    trans = NOISE_TRANS * _smooth_noise(rng, (t, 3))
    return matrix_to_axis_angle(noisy).numpy(), roots + depth * view_dir + trans


def _content_digest(kp3d: np.ndarray, img_shape) -> str:
    """What makes a split file this very set: its image count and size and its poses (``kp3d [P, 24, 3]``), as
    training's ``data_fingerprint`` tells a run's data apart."""
    from fast_anerf.run_setup import fingerprint  # run_setup imports this module: not at the top

    n_images, height, width = (int(x) for x in np.asarray(img_shape).ravel()[:3])
    return fingerprint(n_images, height, width, kp3d)


def _stored_params(path: Path) -> dict | None:
    """The parameters a built-in split file was made with; ``None`` for a file that is not one, or no longer is
    (``data subset`` and pose refinement copy ``synth_params`` but change the images or poses the digest covers)."""
    try:
        with h5py.File(path, "r") as f:
            params = json.loads(_h5_text(f["synth_params"][()]))
            if "synth_digest" not in f:  # written before the digest existed: trusted as before
                return params
            if _h5_text(f["synth_digest"][()]) != _content_digest(f["kp3d"][()], f["img_shape"][()]):
                return None
        return params
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _h5_text(raw) -> str:
    """A string stored by ``write_anerf_h5`` (bytes, str, or a one-element array of either)."""
    raw = raw[0] if isinstance(raw, np.ndarray) and raw.ndim else raw
    raw = raw.item() if isinstance(raw, np.ndarray) else raw
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def generate_dataset(
    out_dir: str | os.PathLike | None = None,
    n_frames: int = 100,
    resolution: int = 128,
    seed: int = 0,
    force: bool = False,
    verbose: bool = True,
) -> dict[str, Path]:
    """Render the built-in data set (module docstring) into ``out_dir`` (default ``default_data_dir()``).

    Args:
        n_frames: training frames (one image each); test_view uses min(10, n_frames) of them, test_pose
            max(2, n_frames // 10) frames of each unseen motion.
        resolution: image height = width in pixels.
        seed: seeds the pose noise (cameras and motions are fixed).
        force: regenerate even if ``out_dir`` holds files made with the same parameters, and replace files that
            are not such a set. Without it, only the cache folder (``default_data_dir()``) is regenerated when
            its files differ: elsewhere, files at the split paths are a user's (their own data, or a set a run
            was trained on), and are refused as one line.
    Returns:
        ``{"train": path, "test_view": path, "test_pose": path}``; the summary also goes to ``report.txt``.
    """
    log = print if verbose else (lambda *a, **k: None)
    out = Path(out_dir) if out_dir is not None else default_data_dir()
    if n_frames < 1 or resolution < 16:
        raise UserError(
            f"built-in data: got n_frames={n_frames}, resolution={resolution}; need n_frames >= 1 and "
            "resolution >= 16 — pass larger values"
        )
    if out.exists() and not out.is_dir():  # found now, not after the first split has rendered
        raise UserError(f"{out}: is a file; --out is the folder the three split files go to — choose a folder")
    params = {"format_version": FORMAT_VERSION, "n_frames": n_frames, "resolution": resolution, "seed": seed}
    paths = {s: out / f"{s}.h5" for s in SPLITS}
    if not force and all(_stored_params(p) == params for p in paths.values()):
        log(f"built-in data set found in {out} (cached; --force regenerates)")
        return paths
    # Files that are not part of this very set (an incomplete one is completed) are a user's outside the cache.
    existing = [p for p in paths.values() if p.exists() and _stored_params(p) != params]
    if existing and not force and out.resolve() != default_data_dir().resolve():
        stored = _stored_params(existing[0])
        what = "a built-in set made with other settings"
        what = what if stored else "not a built-in set (or a damaged or changed copy)"
        settings = f" ({', '.join(f'{k} {v}' for k, v in stored.items() if k != 'format_version')})" if stored else ""
        raise UserError(f"{existing[0]}: exists and is {what}{settings}; choose another --out, or pass --force "
                        "to replace it")  # fmt: skip
    report_path = out / "report.txt"
    if not force and report_path.is_file() and not report_path.read_bytes().startswith(b"built-in data set"):
        raise UserError(f"{report_path}: exists and is not this command's report (your notes?); choose another "
                        "--out, or pass --force to replace it")  # fmt: skip

    start = time.perf_counter()
    char = Character()
    focal = BODY_FILL * resolution * DISTANCE / char.height
    # Aim slightly above the body's middle: raised arms reach higher than the feet reach lower.
    target = ROT_GLOB @ np.array([0.0, char.mid_height + 0.12, 0.0])

    # Training sequence: the four motions back to back, evenly subsampled to n_frames.
    frames_each = max(MOTION_FRAMES, math.ceil(n_frames / len(motions.TRAIN_MOTIONS)))
    bones_c, roots_c = motions.concatenate(motions.TRAIN_MOTIONS, frames_each)
    pick = np.round(np.linspace(0, len(bones_c) - 1, n_frames)).astype(np.int64)
    train_bones, train_roots = canonical_to_world(bones_c[pick], roots_c[pick])
    orbit = [(360.0 * i / n_frames, 10.0 + 5.0 * math.sin(2 * math.pi * 2 * i / n_frames)) for i in range(n_frames)]
    train_views = [[(i, 0, orbit[i][0], orbit[i][1])] for i in range(n_frames)]  # (kp_idx, cam, az, el)

    view_frames = np.unique(np.round(np.linspace(0, n_frames - 1, min(10, n_frames))).astype(np.int64))
    test_views = [
        [(int(i), c + 1, orbit[i][0] + daz, el) for c, (daz, el) in enumerate(TEST_VIEW_OFFSETS)] for i in view_frames
    ]
    n_pose = max(2, n_frames // 10)
    pose_bones, pose_roots, pose_views = [], [], []
    for name in motions.UNSEEN_MOTIONS:
        b, r = motions.MOTIONS[name](MOTION_FRAMES)
        sel = np.round(np.linspace(0, MOTION_FRAMES - 1, n_pose + 2)[1:-1]).astype(np.int64)  # skip rest ends
        pose_bones.append(b[sel])
        pose_roots.append(r[sel])
    pose_bones_w, pose_roots_w = canonical_to_world(np.concatenate(pose_bones), np.concatenate(pose_roots))
    for i in range(len(pose_bones_w)):
        pose_views.append([(i, 5 + c, az, el) for c, (az, el) in enumerate(TEST_POSE_CAMERAS)])

    splits = {
        "train": (train_bones, train_roots, train_views),
        "test_view": (train_bones, train_roots, test_views),
        "test_pose": (pose_bones_w, pose_roots_w, pose_views),
    }
    report = [f"built-in data set: {out}", f"  parameters: {json.dumps(params)}"]
    mpjpe_mm = None
    for split, (bones, roots, views) in splits.items():
        t0 = time.perf_counter()
        log(f"  rendering {split} ({sum(len(v) for v in views)} images) ...", flush=True)
        imgs, masks, cams, kp_idxs, cam_idxs, paths_ = [], [], [], [], [], []
        for frame_views in views:
            k = frame_views[0][0]
            verts, _ = char.pose(bones[k], roots[k])
            mesh, colours = char.shade(verts)
            for kp_idx, cam, az, el in frame_views:
                c2w = orbit_camera(target, az, el)
                rgb, mask = render(mesh, colours, c2w, focal, resolution)
                imgs.append(rgb)
                masks.append(mask)
                cams.append(c2w)
                kp_idxs.append(kp_idx)
                cam_idxs.append(cam)
                paths_.append(f"synth/{split}/cam{cam:02d}/{kp_idx:05d}")
        rows = np.asarray(kp_idxs, np.int64)  # one pose row per image
        c2ws = np.stack(cams)
        gt = pose_arrays(char.rest_pose, bones[rows], roots[rows])
        if split == "train":
            est = pose_arrays(char.rest_pose, *noisy_poses(bones[rows], roots[rows], c2ws, seed))
            mpjpe_mm = float(np.linalg.norm(est["kp3d"] - gt["kp3d"], axis=-1).mean() / EXT_SCALE)
        else:
            est = gt
        n = len(imgs)
        masks_ = np.stack(masks)
        data = {
            "imgs": np.stack(imgs),
            "masks": masks_[..., None],
            "sampling_masks": dilate_mask(masks_)[..., None],
            "img_shape": np.array([n, resolution, resolution, 3]),
            **est,
            "cyls": bounding_cylinder(est["kp3d"]),
            "gt_kp3d": gt["kp3d"],
            "gt_bones": gt["bones"],
            "gt_skts": gt["skts"],
            "c2ws": c2ws.astype(np.float32),
            "focals": np.full(n, focal, np.float32),
            "centers": np.full((n, 2), resolution / 2, np.float32),
            "rest_pose": char.rest_pose,
            "betas": np.zeros((1, 10), np.float32),
            "ext_scale": np.float32(EXT_SCALE),
            "bkgds": np.full((1, resolution, resolution, 3), 255, np.uint8),
            "bkgd_idxs": np.zeros(n, np.int64),
            "img_paths": np.array(paths_),
            "kp_idxs": rows,
            "cam_idxs": np.asarray(cam_idxs, np.int64),
            "synth_params": json.dumps(params),
            "synth_digest": _content_digest(est["kp3d"], [n, resolution, resolution, 3]),
        }
        if split == "train":
            data["synth_report"] = json.dumps({"noisy_mpjpe_mm": mpjpe_mm})
        write_anerf_h5(paths[split], data)
        size_mb = paths[split].stat().st_size / 1e6
        seconds = time.perf_counter() - t0
        line = f"  {split}: {n} images {resolution}x{resolution}, {size_mb:.2f} MB, {seconds:.1f} s"
        report.append(line)
        log(line, flush=True)
    report.append(f"  noisy training poses: MPJPE {mpjpe_mm:.1f} mm (gt_kp3d vs kp3d, no alignment)")
    report.append(f"  total {time.perf_counter() - start:.1f} s")
    with atomic_path(report_path) as tmp:
        tmp.write_text("\n".join(report) + "\n")
    log("\n".join(report[-2:]))
    return paths
