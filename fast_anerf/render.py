"""``fast-anerf render``: bullet-time orbits, new poses, held-out frames next to ground truth, and meshes.

Render types (A-NeRF's ``run_render.py``, specs/anerf.md §4):

* ``bullet``: for each chosen training frame, the camera orbits 360 degrees about the vertical (world y)
  axis through the body's root: ``c2w`` is left-multiplied by a rotation about that axis, ``--n-views``
  views. (A-NeRF rotates about the world origin after moving the camera/body there; same picture.)
* ``retarget``: the character in other poses. Without a source it replays training frames with their own
  cameras (or all through ``--camera``'s); with ``--source`` (an A-NeRF .h5 or an .npz, ``data/pose_files.py``)
  or ``--motion`` (a built-in motion) OUR rest skeleton (``model.rest_pose``: our bone lengths) is re-posed
  with the source's joint rotations and root positions, seen by one training camera.
* ``interpolate``: slerp of every joint rotation (and a straight line for the root) between consecutive
  chosen training poses, ``--n-steps`` poses per pair. ``animate``: the same for ``--joints`` only, the rest
  of the body (and the root) keeps the first chosen pose (A-NeRF's ``animate``).
* ``correction``: the estimated pose of a training image morphing into its refined pose (what pose refinement
  changed), rendered next to the photo with both skeletons drawn (A-NeRF's ``correction``).
* ``val``: held-out frames (``--source``, default the run's held-out data, else ``test_view.h5`` next to the
  training data) with their cameras and poses and the mean appearance code, each next to its ground truth,
  PSNR written on it.
* ``mesh``: see ``mesh.py``.

Poses, cameras and photos at the output size are built by ``render_inputs.py``. Training frames use the poses
the model was trained on (refined ones when the checkpoint has them, for its own data) and their own appearance
code; new poses (and another file's frames) the mean code.
Cameras are the training data's (c2w, focal, principal point), rescaled to ``--res``. Every image goes
through ``renderer.render_image`` with the checkpoint's settings (occupancy skipping when the model has grids).
Outputs: ``frames/NNNNN.png``, ``video.mp4``, ``video.gif``, ``render.json``, written atomically (``media.py``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fast_anerf.data.rays import project_points
from fast_anerf.errors import UserError
from fast_anerf.render_inputs import (
    BACKGROUNDS,
    background,
    camera,
    interpolate_poses,
    orbit_cameras,
    parse_joints,
    photo_coverage,
    pose_to_skts,
    resize_image,
)
from fast_anerf.skeleton import (
    N_JOINTS,
    axis_angle_to_matrix,
    forward_kinematics,
    rigid_inverse,
    skts_to_pose,
)

DEFAULT_ANIMATE_JOINTS = ("right_shoulder", "right_elbow", "right_wrist", "right_hand")  # A-NeRF's S9 choice
REFINED_NOTE = "refined poses from the checkpoint"


# ---------------------------------------------------------------------------------------------
# Scene: the model, its training data's cameras and poses
# ---------------------------------------------------------------------------------------------
@dataclass
class View:
    """One image to render. Tensors on the CPU; ``background`` is ``[3]`` or ``[H, W, 3]`` in [0, 1]."""

    c2w: torch.Tensor  # [4, 4] OpenGL camera-to-world
    focal: float  # pixels, at the output resolution
    center: tuple[float, float]  # principal point (cx, cy), pixels
    skts: torch.Tensor  # [24, 4, 4] world-to-joint
    code_id: int  # appearance code, -1 = mean code
    background: torch.Tensor
    gt: torch.Tensor | None = None  # [H, W, 3] ground truth (val)
    gt_columns: torch.Tensor | None = None  # [W] bool: columns the photo covers (PSNR); None = all
    panel: np.ndarray | None = None  # uint8 [H, W, 3] shown right of the render (correction: photo + skeletons)
    caption: tuple[str, str] | None = None  # written on the render: (text, short text for narrow images)


def trained_skts(ckpt: dict, data, model, use_refined: bool = True) -> tuple[torch.Tensor, str, str]:
    """Pose rows ``skts [P, 24, 4, 4]`` the model was trained on, where they come from, and why ``data`` is not
    the run's training data ('' when it is, or cannot be told).

    The refined poses stored in the checkpoint when ``data`` is the file they were refined from; else the file's
    ``gt_skts`` for ``--gt-poses`` runs, else its ``skts``. The checkpoint's fingerprint of its data tells another
    file with as many poses (another subset, a regenerated file), whose frames its poses and codes do not fit.
    """
    from fast_anerf.run_setup import fingerprint

    stored = ckpt.get("data_fingerprint")  # None: a checkpoint of an older version
    arrays = data.arrays
    other = stored is not None and stored != fingerprint(data.n_images, data.height, data.width, arrays["kp3d"])
    mismatch = f"{data.path} is not the data this run trained on (other images or poses)" if other else ""
    state = ckpt.get("poses")
    if use_refined and not other and isinstance(state, dict) and "poses" in state:
        from fast_anerf.pose import RefinablePoses

        sd = state["poses"]
        n = sd["root"].shape[0]
        if n == data.n_poses:
            zeros = torch.zeros(n, N_JOINTS, 3)
            poses = RefinablePoses(zeros, zeros[:, 0], model.rest_pose.cpu(), sd["time_ids"])
            poses.load_state_dict(sd)
            with torch.no_grad():
                return poses()[1].float(), REFINED_NOTE, ""
        mismatch = f"its {n} refined poses do not match the {data.n_poses} of {data.path}"
    if model.config.train.gt_poses and "gt_skts" in data.arrays:
        return torch.as_tensor(data.arrays["gt_skts"], dtype=torch.float32), "true poses (gt_skts)", mismatch
    return torch.as_tensor(data.arrays["skts"], dtype=torch.float32), "the data's poses (skts)", mismatch


class Scene:
    """A loaded checkpoint and its training data (kept open: images are read lazily)."""

    def __init__(self, args) -> None:
        from fast_anerf.data.anerf_h5 import open_anerf_h5
        from fast_anerf.model import load_character
        from fast_anerf.renderer import RenderSettings
        from fast_anerf.run_setup import pick_device

        self.device = pick_device(args.device)
        self.model, self.ckpt = load_character(args.ckpt, device=self.device, backend=args.backend)
        self.model.eval()
        stored = str(self.ckpt.get("data") or "")
        path = Path(args.data) if args.data is not None else Path(stored) if stored else None
        path = path / "train.h5" if path is not None and path.is_dir() else path
        if args.data is not None and not path.is_file():
            raise UserError(f"--data {args.data}: no such .h5 file (or folder with train.h5); pass the training data")
        if path is None or not path.is_file():
            raise UserError(f"{args.ckpt}: its training data '{path}' is not there; pass the .h5 with --data")
        self.data = open_anerf_h5(path)
        self.skts, self.pose_note, self.mismatch = trained_skts(self.ckpt, self.data, self.model, args.refined)
        self.refined = self.pose_note == REFINED_NOTE
        self.height, self.width = args.res if args.res is not None else (self.data.height, self.data.width)
        self.settings = RenderSettings.from_train(self.model.config.train, training=False)
        self.chunk = args.chunk or self.model.config.train.chunk_rays

    @property
    def n_images(self) -> int:
        return self.data.n_images

    def image_skts(self, i: int) -> torch.Tensor:
        return self.skts[self.data.pose_index(i)]

    def code(self, i: int) -> int:
        """Training image ``i``'s own appearance code (the mean code if the model has no such code, or ``--data``
        is not the run's training data)."""
        return i if i < self.model.n_frame_codes and not self.mismatch else -1

    def check_frames(self, frames: tuple[int, ...]) -> list[int]:
        for i in frames:
            if not 0 <= i < self.n_images:
                raise UserError(f"--frames/--camera {i}: out of range; {self.data.path} has {self.n_images} images")
        return list(frames)

    def fixed_view(self, cam: int, skts: torch.Tensor, code: int, bg: str) -> View:
        c2w, focal, center = camera(self.data, cam, self.height, self.width)
        return View(c2w, focal, center, skts, code, background(bg, self.data, cam, self.height, self.width))

    def mean_root(self) -> torch.Tensor:
        return skts_to_pose(self.skts)[1].mean(dim=0)

    def start_root(self) -> torch.Tensor:
        """Where a canonical motion stands: the root of the first training pose (motions start standing, as
        training sequences do; the mean root sinks with every crouch). ``view`` places motions there too."""
        return skts_to_pose(self.skts[:1])[1][0]

    def close(self) -> None:
        self.data.close()


def spread(n: int, count: int) -> tuple[int, ...]:
    """``count`` indices evenly spread over ``range(n)`` (distinct, sorted)."""
    return tuple(sorted(set(np.linspace(0, n - 1, min(count, n)).round().astype(int).tolist())))


# ---------------------------------------------------------------------------------------------
# Plans: the list of views of each render type
# ---------------------------------------------------------------------------------------------
def plan_bullet(scene: Scene, args) -> list[View]:
    views = []
    for i in scene.check_frames(args.frames or (0,)):
        skts = scene.image_skts(i)
        pivot = skts_to_pose(skts)[1]
        base = scene.fixed_view(i, skts, scene.code(i), args.bg)
        for c2w in orbit_cameras(base.c2w, pivot, args.n_views):
            views.append(View(c2w, base.focal, base.center, skts, base.code_id, base.background))
    return views


def poses_shown(scene: Scene, args) -> str:
    """What ``render.json`` says the frames are posed by: a retarget source's or held-out poses, else the run's."""
    if args.type == "retarget" and args.motion is not None:
        return f"built-in motion {args.motion}"
    if args.type == "retarget" and args.source is not None:
        return f"poses of {args.source}"
    if args.type == "val":
        return "the held-out split's own poses"
    if args.type == "mesh" and args.rest:
        return "the rest pose"
    return scene.pose_note


def plan_retarget(scene: Scene, args) -> list[View]:
    if args.source is None and args.motion is None:  # replay training frames, own cameras and codes
        for flag in ("--recenter", "--motion-frames"):
            if given(args, flag):
                raise UserError(f"{flag} is for retargeting from --source / --motion; without them retarget replays "
                                "the training frames — drop it")  # fmt: skip
        frames = scene.check_frames(args.frames or tuple(range(scene.n_images)))
        cams = scene.check_frames((args.camera,)) * len(frames) if args.camera is not None else frames
        views = zip(cams, frames, strict=True)
        return [scene.fixed_view(c, scene.image_skts(i), scene.code(i), args.bg) for c, i in views]
    if args.source is not None and args.motion is not None:
        raise UserError("--source and --motion both given; retarget from one of them")
    from fast_anerf.data.pose_files import builtin_motion, place_canonical, read_pose_file

    cam = scene.check_frames((args.camera if args.camera is not None else 0,))[0]
    if given(args, "--motion-frames") and args.motion is None:
        raise UserError("--motion-frames is for --motion (a built-in motion); --source plays all its frames — drop it")
    if args.motion is not None:
        bones, roots, canonical = *builtin_motion(args.motion, args.motion_frames), True
    else:
        bones, roots, canonical = read_pose_file(args.source)
    if canonical:  # stand where the training subject stood, sized like our skeleton
        if args.recenter:
            what = f"--motion {args.motion}" if args.motion is not None else f"{args.source} (bones + root)"
            raise UserError(f"--recenter: {what} is in the canonical frame, placed on the training subject "
                            "already; drop --recenter (it moves world-frame sources)")  # fmt: skip
        bones, roots = place_canonical(bones, roots, scene.model.height, scene.start_root())
    else:
        bones, roots = torch.as_tensor(bones), torch.as_tensor(roots)
        if args.recenter:
            roots = roots - roots.mean(dim=0) + scene.mean_root()
    rows = list(args.frames) if args.frames else list(range(len(bones)))
    if any(not 0 <= r < len(bones) for r in rows):
        raise UserError(f"--frames: out of range; the retarget source has {len(bones)} frames")
    rotations = axis_angle_to_matrix(torch.as_tensor(bones[rows]))
    skts = pose_to_skts(scene.model.rest_pose.cpu(), rotations, roots[rows].float())
    return [scene.fixed_view(cam, s, -1, args.bg) for s in skts]


def plan_interpolate(scene: Scene, args, joints: list[int] | None = None) -> list[View]:
    frames = scene.check_frames(args.frames or spread(scene.n_images, 3))
    if len(frames) < 2:
        raise UserError(f"--type {args.type} needs at least 2 --frames to move between, got {len(frames)}")
    rotations, roots = skts_to_pose(torch.stack([scene.image_skts(i) for i in frames]))
    rot, root = interpolate_poses(rotations, roots, args.n_steps, joints)
    cam = scene.check_frames((args.camera if args.camera is not None else frames[0],))[0]
    skts = pose_to_skts(scene.model.rest_pose.cpu(), rot, root)
    return [scene.fixed_view(cam, s, -1, args.bg) for s in skts]


def plan_correction(scene: Scene, args) -> list[View]:
    """What pose refinement changed (A-NeRF's ``correction``): for each chosen training image, the estimated pose
    (the data's ``skts``) morphs into the refined one (the checkpoint's) in ``--n-steps`` steps, rendered from
    that image's camera with its appearance code, next to the photo with both skeletons drawn on it (estimate
    red, current pose green). Default frames: in each third of the sequence, the image whose joints refinement
    moved most."""
    from fast_anerf.media import draw_skeleton, to_uint8

    if scene.mismatch:
        raise UserError(f"{args.ckpt}: --type correction needs the run's training data: {scene.mismatch}; drop "
                        "--data or pass the .h5 the run trained on")  # fmt: skip
    if not scene.refined:
        raise UserError(f"{args.ckpt}: --type correction shows what pose refinement changed, and this checkpoint "
                        "holds no refined poses (it trained on its data's poses, or --no-refined was given); "
                        "train with --refine-poses on")  # fmt: skip
    estimated = torch.as_tensor(scene.data.arrays["skts"], dtype=torch.float32)
    rest = scene.model.rest_pose.cpu()
    if not args.frames:
        # A joint's world position is the translation of its local-to-world transform (the inverse of its skt).
        joints_est, joints_ref = (rigid_inverse(s)[..., :3, 3] for s in (estimated, scene.skts))
        moved = (joints_est - joints_ref).norm(dim=-1).mean(dim=-1)
        per_image = moved[torch.as_tensor(scene.data.pose_idxs, dtype=torch.long)]  # [n_images]
        # The most-moved image of each third of the sequence (pose errors are smooth in time: neighbours of the
        # overall maximum would show the same correction three times).
        thirds = torch.tensor_split(torch.arange(scene.n_images), min(3, scene.n_images))
        frames = [int(part[per_image[part].argmax()]) for part in thirds]
    else:
        frames = scene.check_frames(args.frames)
    views = []
    for i in frames:
        row = scene.data.pose_index(i)
        rotations, roots = skts_to_pose(torch.stack([estimated[row], scene.skts[row]]))
        rot, root = interpolate_poses(rotations, roots, args.n_steps)  # [n_steps + 1, ...]: estimate -> refined
        joints, _ = forward_kinematics(rest, rot, root)  # [n_steps + 1, 24, 3] world
        base = scene.fixed_view(i, scene.image_skts(i), scene.code(i), args.bg)
        photo = to_uint8(resize_image(scene.data.image(i), scene.height, scene.width, scene.data.center(i)))
        uv, depth = project_points(joints, base.c2w, base.focal, base.center)
        for k, skts in enumerate(pose_to_skts(rest, rot, root)):
            panel = draw_skeleton(photo.copy(), uv[0].numpy(), depth[0].numpy(), color=(230, 30, 30))
            draw_skeleton(panel, uv[k].numpy(), depth[k].numpy(), color=(20, 170, 40))
            caption = (f"image {i}: estimate -> refined {k}/{args.n_steps}", f"{i}: {k}/{args.n_steps}")
            views.append(View(base.c2w, base.focal, base.center, skts, base.code_id, base.background,
                              panel=panel, caption=caption))  # fmt: skip
    return views


def held_out_path(scene: Scene, source: Path | None) -> Path:
    """``--source``, else the run's held-out data (its ``eval_data``: a file, or a folder's test_view.h5 /
    test_pose.h5), else those next to the training data."""
    if source is not None:
        return Path(source)
    recorded = scene.ckpt.get("eval_data")
    stored = Path(str(recorded or scene.data.path.parent))
    if stored.is_file():
        return stored
    if recorded and not stored.exists():
        raise UserError(f"{stored}: the run's held-out data is not there any more (moved?); pass --source FILE.h5")
    folder = stored
    for name in ("test_view.h5", "test_pose.h5"):
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"{folder}: no test_view.h5 or test_pose.h5 next to the training data; pass --source FILE.h5")


def plan_val(scene: Scene, args):
    """Views of held-out frames with ground truth; returns ``(views, height, width)`` (the file's size)."""
    from fast_anerf.data.anerf_h5 import open_anerf_h5

    with open_anerf_h5(held_out_path(scene, args.source)) as val:
        height, width = args.res if args.res is not None else (val.height, val.width)
        frames = list(args.frames) if args.frames else list(range(val.n_images))
        if any(not 0 <= i < val.n_images for i in frames):
            raise UserError(f"--frames: out of range; {val.path} has {val.n_images} images")
        skts = torch.as_tensor(val.arrays["skts"], dtype=torch.float32)
        views = []
        for i in frames:
            c2w, focal, center = camera(val, i, height, width)
            bg = background(args.bg, val, i, height, width)
            photo, stored = val.image(i), val.background(i)
            behind = (np.array(BACKGROUNDS[args.bg]) * 255).round() if args.bg in BACKGROUNDS else stored
            if behind is not None:  # as eval (A-NeRF's --eval): the photo's body over the background it renders on
                photo = np.where(val.mask(i)[..., None], photo, behind).astype(np.uint8)
            gt = resize_image(photo, height, width, val.center(i))
            columns = photo_coverage(val.height, val.width, height, width, val.center(i))
            views.append(View(c2w, focal, center, skts[val.pose_index(i)], -1, bg, gt, columns))
    return views, height, width


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
# Options that only some render types read (the rest would silently ignore them): given a value other than its
# default with another --type, the render is refused. --source/--motion are checked on their own (val reads --source).
TYPE_OPTIONS = {
    "joints": ("animate",),
    "camera": ("retarget", "interpolate", "animate"),
    "n_views": ("bullet", "mesh"),
    "n_steps": ("interpolate", "animate", "correction"),
    "motion_frames": ("retarget",),
    "recenter": ("retarget",),
    "rest": ("mesh",),
    "mesh_res": ("mesh",),
    "mesh_threshold": ("mesh",),
    "mesh_renderer": ("mesh",),
    "background": ("bullet", "retarget", "interpolate", "animate", "correction", "val"),  # mesh: its own shading
    "refined": ("bullet", "retarget", "interpolate", "animate", "correction", "mesh"),  # val: the held-out poses
}


def given(args, flag: str) -> bool:
    """Whether option ``flag`` (``--motion-frames``) of the ``Render`` arguments differs from its default."""
    name = flag.removeprefix("--").replace("-", "_")
    defaults = {f.name: f.default for f in dataclasses.fields(args)} if dataclasses.is_dataclass(args) else {}
    return name in defaults and getattr(args, name) != defaults[name]


def _check_args(args) -> None:
    for name, types in TYPE_OPTIONS.items():
        if given(args, name) and args.type not in types:
            flag = ("--no-" if getattr(args, name) is False else "--") + name.replace("_", "-")  # as typed
            raise UserError(f"{flag} is for --type {' / '.join(types)}, not {args.type}; drop it or change --type")
    if args.res is not None and min(args.res) < 1:
        raise UserError(f"--res {args.res[0]} {args.res[1]}: expected two positive sizes (H W)")
    if args.chunk is not None and args.chunk < 1:
        raise UserError(f"--chunk {args.chunk}: expected at least 1 ray per chunk (default: the run's chunk_rays)")
    for name in ("n_views", "n_steps", "fps", "mesh_res", "motion_frames"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.type != "retarget" and (args.motion is not None or (args.source is not None and args.type != "val")):
        raise UserError(f"--source/--motion are for --type retarget (and --source for val), not {args.type}")


def render_views(scene: Scene, views: list[View], height: int, width: int, out, fps: int, title: str) -> dict:
    """Render ``views`` into ``out.tmp`` (frames/NNNNN.png, video.mp4, video.gif); returns stats."""
    from fast_anerf.evaluate import psnr
    from fast_anerf.media import label, progress_bar, to_uint8, write_png, write_videos
    from fast_anerf.renderer import render_image

    images, psnrs = [], []
    start = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(title, total=len(views), info="")
        for k, v in enumerate(views):
            result = render_image(
                scene.model, v.c2w, v.focal, v.center, height, width, v.skts, v.code_id,
                v.background, scene.settings, scene.chunk,
            )  # fmt: skip
            pred = result["rgb"].cpu().clamp(0, 1)
            image = to_uint8(pred)
            if v.gt is not None:  # over the columns the photo covers: white padding would match exactly
                cols = slice(None) if v.gt_columns is None else v.gt_columns
                psnrs.append(psnr(pred[:, cols], v.gt[:, cols]))
                text = label(image, f"PSNR {psnrs[-1]:.2f} dB", short=f"{psnrs[-1]:.1f}")
                image = np.concatenate([text, label(to_uint8(v.gt), "GT")], axis=1)
            elif v.panel is not None:
                image = np.concatenate([label(image, *v.caption) if v.caption else image, v.panel], axis=1)
            write_png(out.tmp / "frames" / f"{k:05d}.png", image)
            images.append(image)
            spf = (time.perf_counter() - start) / (k + 1)
            bar.update(task, advance=1, info=f"{spf:.2f} s/frame" + (f"  PSNR {psnrs[-1]:.2f}" if psnrs else ""))
    seconds = time.perf_counter() - start
    videos = write_videos(images, out.tmp, "video", fps)
    stats = {"frames": len(views), "seconds": seconds, "seconds_per_frame": seconds / max(len(views), 1)}
    stats["outputs"] = ["frames/"] + [p.name for p in videos]
    if psnrs:
        stats.update(psnr=float(np.mean(psnrs)), psnr_per_frame=psnrs)
    return stats


def run_render(args) -> dict:
    """``fast-anerf render``: validate everything, render into a temporary folder, rename it to ``--out``."""
    from fast_anerf.media import MARKER, OutputDir
    from fast_anerf.run_files import write_json_atomic

    _check_args(args)
    out = OutputDir(args.out)
    scene = Scene(args)
    try:
        height, width = scene.height, scene.width
        if args.type == "mesh":
            from fast_anerf.mesh import plan_mesh, run_mesh

            job = plan_mesh(scene, args)
            with out:
                stats = run_mesh(scene, job, args, out)
                height, width = stats["resolution"]
                info = {"type": "mesh", "checkpoint": str(args.ckpt), "poses": poses_shown(scene, args)}
                write_json_atomic(out.tmp / MARKER, {**info, **stats})
                out.commit()
        else:
            if args.type == "val":
                views, height, width = plan_val(scene, args)
            elif args.type == "animate":
                views = plan_interpolate(scene, args, parse_joints(args.joints or DEFAULT_ANIMATE_JOINTS))
            else:
                plans = {"bullet": plan_bullet, "retarget": plan_retarget, "interpolate": plan_interpolate,
                         "correction": plan_correction}  # fmt: skip
                views = plans[args.type](scene, args)
            with out:
                stats = render_views(scene, views, height, width, out, args.fps, f"render {args.type}")
                info = {"type": args.type, "checkpoint": str(args.ckpt), "poses": poses_shown(scene, args)}
                write_json_atomic(out.tmp / MARKER, {**info, "resolution": [height, width], **stats})
                out.commit()
    finally:
        scene.close()
    extra = f", mean PSNR {stats['psnr']:.2f} dB" if "psnr" in stats else ""
    print(
        f"{args.type}: {stats['frames']} frames at {height}x{width}, {stats['seconds_per_frame']:.2f} s/frame"
        f"{extra} -> {out.final} ({', '.join(stats['outputs'])}, {MARKER})"
    )
    return stats
