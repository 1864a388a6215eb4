"""The ``fast-anerf`` command line: ``train | refine | render | view | eval | data``.

Each subcommand is a frozen dataclass whose docstring and field comments become ``--help``; its ``.main()``
does the work. Heavy modules are imported inside ``main()`` so that ``--help`` stays instant.

A ``UserError`` (bad input, missing file, unusable checkpoint ...) is printed as one line,
``error: <message>``, with exit code 2 and no traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from fast_anerf.errors import UserError

Backend = Literal["auto", "torch", "cpu", "tcnn"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class Train:
    """Train a character (fast per-bone hash-grid field, or the original A-NeRF field) on A-NeRF data."""

    data: Path | None = None
    """Folder with train.h5 (and test_view.h5 / test_pose.h5), or one .h5 file. Default: the built-in
    character, generated on first use."""
    out: Path = Path("runs/demo")
    """Output folder: checkpoints, TensorBoard logs, previews, eval.json."""
    eval_data: Path | None = None
    """Held-out data evaluated during and after training: a folder with test_view.h5 / test_pose.h5, or one .h5.
    Default: the --data folder (none when --data is one .h5 file); a resumed run keeps its own."""
    preset: str | None = None
    """Config preset: a name from configs/ (demo, gpu, anerf, surreal, mixamo, h36m, perfcap) or a .toml path.
    Default: demo; a resumed run keeps its own config."""
    field: Literal["fast", "anerf"] | None = None
    """Field type; overrides the preset. 'anerf' is the original A-NeRF model (our baseline)."""
    steps: int | None = None
    """Number of training steps; overrides the preset."""
    max_minutes: float | None = None
    """Stop after this many minutes of training (a checkpoint and the evaluation are still written)."""
    resume: bool = False
    """Continue from OUT/checkpoint.pt with its config; the result equals an uninterrupted run. --steps,
    --max-minutes, --eval-every and the pose schedule flags may change; --preset, --field, --seed, --gt-poses,
    --multiview, switching pose refinement on or off, and other --data may not (they would train another model)."""
    backend: Backend = "auto"
    """Encoding/MLP backend: 'tcnn' (tiny-cuda-nn, CUDA), 'cpu' (fused C hash-grid kernels, built with the
    system C compiler on first use), 'torch' (plain PyTorch, everywhere) or 'auto': the fastest available."""
    device: Device = "auto"
    """Where to train: 'cuda' when available under 'auto'."""
    seed: int | None = None
    """Random seed; overrides the preset."""
    eval_every: int | None = None
    """Evaluate on held-out views every N steps (0 = only at the end); overrides the preset."""
    gt_poses: bool = False
    """Train on the file's true poses (gt_skts, e.g. the built-in character) instead of its estimated ones."""
    refine_poses: Literal["auto", "on", "off"] | None = None
    """Refine the poses with the body model; 'auto' (the preset default) refines estimated poses."""
    pose_stop: int | None = None
    """Freeze the poses from this step on (A-NeRF's --opt_pose_stop); 0 = never."""
    temp_coef: float | None = None
    """Temporal smoothness weight between consecutive frames (A-NeRF's --temp_coef, e.g. 0.05); 0 = off."""
    pose_lr_decay: float | None = None
    """Anneal the pose learning rate by this factor over the preset's decay_steps (demo: 0.1: poses settle and
    end more accurate); 1 = constant."""
    multiview: bool = False
    """Images of one time instant (same kp_idxs) share their non-root joint rotations (A-NeRF's --multiview)."""

    def main(self) -> int:
        from fast_anerf.train import Trainer

        trainer = Trainer(self)
        trainer.run()
        return 130 if trainer.interrupted else 0  # checkpoint saved; 130 as any Ctrl-C: `train && render` stops


@dataclass(frozen=True)
class Eval:
    """PSNR and SSIM (whole image, inside A-NeRF's body box, foreground-masked) of a trained character on held-out
    splits, and for a run that refined its poses, MPJPE / PA-MPJPE before and after."""

    ckpt: Path
    """Checkpoint written by `fast-anerf train` (OUT/checkpoint.pt)."""
    data: Path | None = None
    """Folder with test_view.h5 / test_pose.h5, or one .h5. Default: the held-out data the run evaluated (its
    --data folder or --eval-data)."""
    json: Path | None = None
    """Also write the metrics here as JSON."""
    max_frames: int | None = None
    """Evaluate at most this many frames per split (evenly spread)."""
    device: Device = "auto"
    backend: Backend = "auto"

    def main(self) -> None:
        from fast_anerf.evaluate import run_eval

        run_eval(self)


@dataclass(frozen=True)
class Synth:
    """Generate the built-in character: train.h5, test_view.h5, test_pose.h5 (cached for reuse)."""

    out: Path | None = None
    """Output folder (default: ~/.cache/fast_anerf/builtin, or $FAST_ANERF_CACHE/builtin)."""
    frames: int = 100
    """Training frames."""
    res: int = 128
    """Image height and width in pixels."""
    seed: int = 0
    """Random seed of the training poses' noise (cameras and motions are fixed)."""
    force: bool = False
    """Regenerate even if a set with the same parameters exists; outside the cache, also replace files that are not
    this set (without it they are refused)."""

    def main(self) -> None:
        from fast_anerf.data.synthetic import default_data_dir, generate_dataset

        out = self.out if self.out is not None else default_data_dir()
        paths = generate_dataset(out, n_frames=self.frames, resolution=self.res, seed=self.seed, force=self.force)
        for name, path in paths.items():
            print(f"{name}: {path}")


@dataclass(frozen=True)
class Inspect:
    """Print what an A-NeRF .h5 holds and write a contact sheet of frames with the projected joints."""

    path: tyro.conf.Positional[Path]
    """The .h5 file."""
    sheet: Path | None = None
    """Where to write the contact-sheet PNG (default: next to the file, <name>_sheet.png)."""
    frames: int = 16
    """How many frames the contact sheet shows."""

    def main(self) -> None:
        from fast_anerf.data.inspect import inspect_file

        if self.frames < 1:
            raise UserError(f"--frames {self.frames}: expected at least 1 frame on the contact sheet")
        sheet = self.sheet if self.sheet is not None else self.path.with_name(self.path.stem + "_sheet.png")
        print(inspect_file(self.path, sheet_path=sheet, n_frames=self.frames, sheet_required=self.sheet is not None))


@dataclass(frozen=True)
class FromSpin:
    """Convert SPIN/VIBE per-frame output (rotations, weak-perspective camera, boxes, betas) plus frames and
    masks into an A-NeRF .h5 (npz keys and conventions: fast_anerf/data/from_spin.py)."""

    spin: tyro.conf.Positional[Path]
    """The .npz: pred_rotmat [N,24,3,3] (or pose [N,72]), pred_camera [N,3], bboxes [N,4] (cx,cy,w,h px) (or
    to-spin's transl [N,3] m with focal [N] px), optional pred_betas, pred_joints, frame_ids, masks, focal."""
    images: Path
    """Folder of frames (sorted by name) or a video file."""
    out: Path
    """The .h5 file to write."""
    masks: Path | None = None
    """Folder or video of 0-255 masks (foreground >= 2); default: the npz key 'masks'."""
    smpl: Path | None = None
    """SMPL_NEUTRAL.pkl (or its folder) for the rest skeleton from betas (needs `pip install smplx`).
    Default: the built-in mean rest skeleton."""
    focal: float | Literal["diagonal", "spin"] | None = None
    """Focal length in pixels, if known; the camera moves along its axis so the person keeps its size.
    Default: the npz's 'focal' (to-spin writes it), else 'diagonal'. 'diagonal': the frame's diagonal, a
    guess for unknown cameras (pose refinement fixes about as much as with
    the true focal); 'spin': SPIN's 5000 px crop focal scaled to the frame (a distant camera without
    perspective, with which pose refinement fixed nothing on the built-in character)."""
    bbox_scale: float = 1.0
    """Factor on the box side if the crop was enlarged from the stored boxes (SPIN demo 1.2, VIBE 1.1)."""
    background: Literal["median", "white", "none"] = "median"
    """What is behind the person: 'median' (a static camera) stores the frames' per-pixel median outside the
    masks as the background image; 'white' (a moving camera) paints the frames white outside the masks; 'none'
    keeps them as they are (frames already on white)."""
    overwrite: bool = False
    """Replace an existing --out file."""

    def main(self) -> None:
        from fast_anerf.data.from_spin import convert_spin

        info = convert_spin(self.spin, self.images, self.out, self.masks, self.smpl, self.focal, self.bbox_scale,
                            self.background, self.overwrite)  # fmt: skip
        print(f"{info['out']}: {info['frames']} frames {info['width']}x{info['height']}, focal "
              f"{info['focal'][0]:.1f}-{info['focal'][1]:.1f} px ({info['focal_source']}), camera "
              f"{info['camera_distance'][0]:.2f}-{info['camera_distance'][1]:.2f} m from the pelvis, rest skeleton: "
              f"{info['rest_pose']}, pelvis: {info['pelvis']}, background: {info['background']}")  # fmt: skip


@dataclass(frozen=True)
class Subset:
    """Write some images of an A-NeRF .h5 (and the poses they use) to a new .h5: A-NeRF's Mixamo selection
    (`--select Archer_selected.npy`), SURREAL's cameras (`--cameras 0 3 6`), or a smaller file to train on."""

    path: tyro.conf.Positional[Path]
    """The source .h5 file."""
    out: Path
    """The .h5 file to write."""
    select: str | None = None
    """Image indices: a .npy / .txt file (A-NeRF's {Subject}_selected.npy), or a slice START:STOP[:STEP]."""
    cameras: tuple[int, ...] = ()
    """Keep only the images of these cameras (the file's cam_idxs, or SURREAL's camera-major order)."""
    overwrite: bool = False
    """Replace an existing --out file."""

    def main(self) -> None:
        from fast_anerf.data.subset import write_subset

        if self.select is None and not self.cameras:
            raise UserError("data subset: pass --select and/or --cameras to choose images")
        info = write_subset(self.path, self.out, self.select, self.cameras, self.overwrite)
        print(f"{self.out}: {info['images']} of {info['source_images']} images, {info['poses']} poses")


@dataclass(frozen=True)
class ToSpin:
    """Write the poses of an A-NeRF .h5 (e.g. a run's refined_poses.h5, refine's refined.h5) as SMPL parameters
    in each image's camera, SPIN / VIBE style: the way back from from-spin (keys:
    fast_anerf/data/to_spin.py)."""

    path: tyro.conf.Positional[Path]
    """The .h5 file whose poses to write."""
    out: Path
    """The .npz file to write."""
    spin: Path | None = None
    """The SPIN / VIBE .npz that from-spin converted: adds pred_camera in its boxes (and its bboxes, frame_ids,
    masks), and its pred_joints give the pelvis."""
    smpl: Path | None = None
    """SMPL_NEUTRAL.pkl (or its folder) for the pelvis J_0(betas) (needs `pip install smplx`); as in from-spin."""
    bbox_scale: float = 1.0
    """The --bbox-scale given to from-spin (with --spin)."""
    overwrite: bool = False
    """Replace an existing --out file."""

    def main(self) -> None:
        from fast_anerf.data.to_spin import export_spin

        info = export_spin(self.path, self.out, self.spin, self.smpl, self.bbox_scale, self.overwrite)
        moved = info.get("moved_mm")
        moved = f"; joints {moved[0]:.1f} mm (max {moved[1]:.1f}) from {self.spin}'s" if moved else ""
        print(f"{info['out']}: {info['frames']} frames of SMPL parameters in their cameras, pelvis: "
              f"{info['pelvis']}{moved}")  # fmt: skip


@dataclass(frozen=True)
class Data:
    """Data tools: generate the built-in character, inspect an .h5, convert SPIN output and back, select images."""

    action: tyro.conf.OmitArgPrefixes[
        Annotated[Synth, tyro.conf.subcommand("synth")]
        | Annotated[Inspect, tyro.conf.subcommand("inspect")]
        | Annotated[FromSpin, tyro.conf.subcommand("from-spin")]
        | Annotated[Subset, tyro.conf.subcommand("subset")]
        | Annotated[ToSpin, tyro.conf.subcommand("to-spin")]
    ]

    def main(self) -> None:
        self.action.main()


def _not_built(name: str, issue: str):
    @dataclass(frozen=True)
    class NotBuilt:
        def main(self) -> None:
            raise UserError(f"`fast-anerf {name}` is not built yet (see the issue '{issue}')")

    NotBuilt.__doc__ = f"(not built yet) {issue}."
    NotBuilt.__name__ = NotBuilt.__qualname__ = name.capitalize()
    return NotBuilt


@dataclass(frozen=True)
class Refine:
    """Fit the poses of frames the model never saw (the trained model stays frozen); writes an A-NeRF .h5."""

    ckpt: Path
    """Checkpoint written by `fast-anerf train`."""
    data: Path
    """A-NeRF .h5 with the frames and their estimated poses (e.g. SPIN)."""
    out: Path = Path("runs/refine")
    """Output folder: refined.h5 (A-NeRF keys bones/kp3d/skts refined) and refine_report.json."""
    steps: int = 1000
    """Optimisation steps for each window of --window images (~30 ms each on 2 CPU cores): every frame gets the
    same refinement, and a sequence takes (images / window) times as many steps."""
    lr: float = 1e-3
    """Pose learning rate (Adam) at the first step."""
    lr_decay: float = 0.3
    """The learning rate falls exponentially to lr * lr_decay at the last step (1 = constant). Measured on the
    built-in character's unseen frames, two models x two noise seeds: 1000 steps annealed x0.3 left 13.0-17.5 mm
    MPJPE where 300 constant steps left 14.6-24.7 mm (scripts/bench_pose.py has the current figures)."""
    temp_coef: float = 0.05
    """Temporal smoothness weight between consecutive frames; 0 = off."""
    reg_coef: float = 2.0
    """Weight of A-NeRF's hinge regulariser towards the estimated rotations."""
    reg_tol: float = 0.01
    """Tolerance of that regulariser (squared 6D difference that is free)."""
    multiview: bool = False
    """Images with the same kp_idxs (one time instant seen by several cameras) share one body pose: their
    non-root rotations are refined together (as train --multiview)."""
    window: int = 64
    """Images refined together (consecutive frames; one batch holds them all): see `fast_anerf/refine.py`."""
    rays_per_batch: int = 2048
    seed: int = 0
    overwrite: bool = False
    """Replace an existing OUT/refined.h5 (or start an interrupted refinement over)."""
    resume: bool = False
    """Continue an interrupted refinement (Ctrl-C keeps the finished windows in OUT/refine_progress.pt)."""
    device: Device = "auto"
    backend: Backend = "auto"

    def main(self) -> int:
        from fast_anerf.refine import run_refine

        return 130 if run_refine(self).get("interrupted") else 0  # 130 as any Ctrl-C: `refine && render` stops


@dataclass(frozen=True)
class Render:
    """Render a trained character: a 360-degree orbit (bullet), new poses (retarget / interpolate / animate),
    estimated poses morphing into the refined ones next to the photo (correction), held-out frames next to
    ground truth with PSNR (val), or a coloured mesh and its turntable (mesh).
    Writes PNG frames, video.mp4, video.gif and render.json into OUT, all at once when the render succeeded."""

    ckpt: Path
    """Checkpoint written by `fast-anerf train` (OUT/checkpoint.pt)."""
    type: Literal["bullet", "retarget", "interpolate", "animate", "correction", "val", "mesh"] = "bullet"
    """What to render (see `fast_anerf/render.py`)."""
    out: Path = Path("renders/out")
    """Output folder; replaced only if it holds an earlier render."""
    res: tuple[int, int] | None = None
    """Output size H W in pixels (cameras are rescaled). Default: the data's. Mesh: a square H x H turntable
    (default 256)."""
    background: Literal["white", "black", "data"] | None = None
    """Colour behind the body; 'data' = the frame's background image. Default: data for val, else white."""
    frames: tuple[int, ...] = ()
    """Training images to use (bullet, interpolate/animate key poses, correction, mesh poses, retarget replay), or
    rows of --source (retarget, val). Default: bullet/mesh 0, interpolate/animate 3 spread frames, correction the
    image in each third of the sequence whose pose refinement moved most, otherwise all."""
    n_views: int = 36
    """Bullet and mesh turntable: views per 360 degrees."""
    n_steps: int = 10
    """Interpolate/animate: poses from one key pose to the next; correction: from the estimate to the refined pose."""
    joints: tuple[str, ...] = ()
    """Animate: joints that move (SMPL names or indices 0-23). Default: the right arm."""
    camera: int | None = None
    """Retarget/interpolate/animate: the training image whose camera looks (default: retarget 0, or each replayed
    frame's own; interpolate/animate the first key frame)."""
    source: Path | None = None
    """Retarget: poses from an A-NeRF .h5 (bones + kp3d) or an .npz (bones [T,24,3] + root [T,3] in the
    viewer's canonical convention, or + kp3d [T,24,3] in A-NeRF's world). Val: the held-out .h5
    (default: the run's held-out data, else test_view.h5 next to the training data)."""
    motion: str | None = None
    """Retarget: a built-in motion (walk, arm_raise, turn, squat, jumping_jacks, wave)."""
    motion_frames: int = 48
    """Frames of the built-in motion."""
    recenter: bool = False
    """Retarget from a world-frame source (.h5, .npz with kp3d): move its mean root onto the training data's."""
    refined: bool = True
    """Training frames use the refined poses stored in the checkpoint, when there are any."""
    rest: bool = False
    """Mesh: extract at the rest pose (canonical frame, y up) instead of the frames' poses."""
    mesh_res: int = 128
    """Mesh: marching-cubes cells along the longest side of the posed body's box."""
    mesh_threshold: float = 0.5
    """Mesh: surface where a slab 1% of the body height thick reaches this opacity (0-1)."""
    mesh_renderer: Literal["auto", "trimesh", "pytorch3d"] = "auto"
    """Mesh turntable renderer: 'auto' = pytorch3d where installed, else CPU ray casting with trimesh."""
    fps: int = 12
    """Video frame rate."""
    data: Path | None = None
    """Training .h5 (cameras, poses, backgrounds). Default: the one stored in the checkpoint."""
    chunk: int | None = None
    """Rays per rendering chunk (default: the checkpoint's chunk_rays)."""
    device: Device = "auto"
    backend: Backend = "auto"

    @property
    def bg(self) -> str:
        return self.background or ("data" if self.type == "val" else "white")

    def main(self) -> None:
        from fast_anerf.render import run_render

        run_render(self)


@dataclass(frozen=True)
class View:
    """Interactive viewer in the browser: orbit the character, play training poses and motions, pose joints by
    hand. Open the printed address; Ctrl-C stops it."""

    ckpt: Path
    """Checkpoint written by `fast-anerf train`."""
    host: str = "127.0.0.1"
    """Address to listen on. The default serves this machine only; 0.0.0.0 serves every network interface
    (anyone who can reach it can use the viewer)."""
    port: int = 8080
    """Port to listen on; the next free one is used if it is taken, 0 picks any free port."""
    data: Path | None = None
    """Training .h5 (or its folder) whose poses the frame slider walks through. Default: the checkpoint's."""
    motion_file: tuple[Path, ...] = ()
    """Extra motions to play: .npz with 'bones' [T,24,3] (axis-angle, rad) and 'root' [T,3] (m, relative to
    the standing pelvis), in the canonical SMPL frame (y up, facing +z) like the built-in motions."""
    resolution: int = 512
    """Render size (longer image side, pixels) once the camera rests; also set on the page."""
    preview_resolution: int = 128
    """Render size while the camera or the pose changes; also set on the page."""
    device: Device = "auto"
    backend: Backend = "auto"

    def main(self) -> None:
        from fast_anerf.viewer_server import run_viewer

        run_viewer(self)


Command = (
    Annotated[Train, tyro.conf.subcommand("train")]
    | Annotated[Refine, tyro.conf.subcommand("refine")]
    | Annotated[Render, tyro.conf.subcommand("render")]
    | Annotated[View, tyro.conf.subcommand("view")]
    | Annotated[Eval, tyro.conf.subcommand("eval")]
    | Annotated[Data, tyro.conf.subcommand("data")]
)


def entrypoint(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    command = tyro.cli(Command, args=argv, prog="fast-anerf", config=(tyro.conf.OmitSubcommandPrefixes,))
    try:
        code = command.main()  # None, or an exit code (train: 130 after Ctrl-C saved the checkpoint)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code or 0


def main() -> None:
    sys.exit(entrypoint())


if __name__ == "__main__":
    main()
