"""``fast-anerf refine``: fit the poses of frames the model never saw, with the trained body model frozen.

The photometric loss of the frozen character (mean appearance code) pulls each frame's skeleton into place;
A-NeRF's hinge regulariser keeps rotations near the estimate and a temporal term smooths consecutive frames.
The pose learning rate anneals exponentially (``--lr-decay``), as it does for the training poses.
Writes the refined poses as an A-NeRF .h5 (``refined.h5``) next to a report (``refine_report.json``).

**Windows of consecutive frames.** The frames are refined ``--window`` images at a time (consecutive pose rows,
or time instants with ``--multiview``), ``--steps`` steps each with a fresh Adam, so every frame gets the same
treatment however long the sequence: one batch holds every image of its window. All frames at once would
spread the same steps over all of them. Measured on 600 built-in frames (``data synth --frames 600``) with the
README's demo model: 1000 steps over all frames took MPJPE -41.7 % (frames 300-359: 22.1 mm root-relative), the
same 60 frames alone -54.6 % (17.1 mm); in 10 windows of 60, -55.2 % (17.0 mm), in 6 min on 2 CPU cores.
The temporal term reaches across a window's edges to its neighbours as they stand (detached). Each window has
its own seed, and after each one the poses go to ``refine_progress.pt``: Ctrl-C (exit code 130) keeps the
finished windows and ``--resume`` continues with the next, to the same result as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fast_anerf.data.split import RayPool, check_sampling_masks, load_split
from fast_anerf.errors import CheckpointError, UserError, refuse_to_replace, writing
from fast_anerf.model import CHECKPOINT_NAME, load_character
from fast_anerf.pose import PoseRefiner, RefinablePoses, multiview_time_ids, pose_row_paths
from fast_anerf.pose_io import export_refined_poses
from fast_anerf.pose_metrics import refinement_errors
from fast_anerf.renderer import RenderSettings, render_rays


def annealed_lr(lr: float, decay: float, step: int, steps: int) -> float:
    """Exponential anneal over a refinement of ``steps`` steps: ``lr`` at step 1, ``lr * decay`` at the last.
    Large early steps pull the poses in; small late ones let them settle instead of jittering around the optimum."""
    return lr * decay ** ((step - 1) / max(steps - 1, 1))


PROGRESS_NAME = "refine_progress.pt"
# What a resumed refinement must share with the interrupted one (the options that change its result).
RESUME_KEYS = ("steps", "lr", "lr_decay", "temp_coef", "reg_coef", "reg_tol", "multiview", "rays_per_batch", "seed",
               "window")  # fmt: skip


def consecutive_windows(unit_of_image: torch.Tensor, n_units: int, max_images: int) -> list[torch.Tensor]:
    """Split units ``0..n_units-1`` (pose rows, or time instants), in order, into consecutive windows of whole
    units, each at most ``ceil(N / ceil(N / max_images))`` images (balanced, <= ``max_images``); a unit with more
    images than that is a window of its own.

    Args: ``unit_of_image [N]`` the unit of each image. Returns the image ids ``[n_k]`` of each window.
    """
    n_images = unit_of_image.numel()
    target = math.ceil(n_images / max(1, math.ceil(n_images / max_images)))
    counts = torch.bincount(unit_of_image, minlength=n_units).tolist()
    window_of_unit, window, filled = [], 0, 0
    for count in counts:
        if filled and filled + count > target:
            window, filled = window + 1, 0
        window_of_unit.append(window)
        filled += count
    window_of_image = torch.tensor(window_of_unit, dtype=torch.long)[unit_of_image]
    windows = [(window_of_image == k).nonzero().squeeze(1) for k in range(window + 1)]
    return [w for w in windows if w.numel()]


@dataclass
class Progress:
    """What ``refine_progress.pt`` holds: the options (``RESUME_KEYS``), the data, the windows done and the poses."""

    settings: dict
    windows_done: int
    poses: dict

    @staticmethod
    def settings_of(args, split, model) -> dict:
        """The options, the files, and what they hold: a file replaced at the same path is other data."""
        from fast_anerf.run_setup import data_fingerprint

        own = {key: getattr(args, key) for key in RESUME_KEYS}
        ckpt = Path(args.ckpt) / CHECKPOINT_NAME if Path(args.ckpt).is_dir() else Path(args.ckpt)
        model_hash = hashlib.sha256()
        for tensor in model.state_dict().values():
            model_hash.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return {**own, "ckpt": str(ckpt.resolve()), "model": model_hash.hexdigest()[:16],
                "data": str(Path(args.data).resolve()), "data_fingerprint": data_fingerprint(split)}  # fmt: skip

    def save(self, path: Path) -> None:
        from fast_anerf.run_files import atomic_path

        with atomic_path(path) as tmp:
            torch.save({"settings": self.settings, "windows_done": self.windows_done, "poses": self.poses}, tmp)

    @staticmethod
    def load(path: Path, settings: dict) -> Progress:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            progress = Progress(state["settings"], int(state["windows_done"]), state["poses"])
        except Exception as error:  # noqa: BLE001 - any damage: one line naming the file
            raise CheckpointError(f"{path}: not a readable refinement progress file ({type(error).__name__}); "
                                  "start over with --overwrite") from None  # fmt: skip
        changed = [f"{k}={progress.settings.get(k)!r} (now {v!r})" for k, v in settings.items()
                   if progress.settings.get(k) != v]  # fmt: skip
        if changed:
            raise UserError(f"{path}: --resume with other options or files than the interrupted refinement: "
                            f"{', '.join(changed)}; rerun with its options, or --overwrite to start over")  # fmt: skip
        return progress


def run_refine(args) -> dict:
    """Refine the poses of ``args.data`` against the frozen model of ``args.ckpt``; see the module docstring.
    Returns the report (also written to ``refine_report.json``); ``{"interrupted": True}`` after Ctrl-C."""
    from fast_anerf.run_files import check_folder_free, folder_lock, write_json_atomic
    from fast_anerf.run_setup import pick_device

    out = Path(args.out)
    if not args.lr_decay > 0:  # lr * decay ** fraction: 0 freezes the poses at once, < 0 has no real power
        raise UserError(f"--lr-decay is {args.lr_decay}; expected a factor > 0 (1 = a constant learning rate)")
    for flag, value, ok, expected in (
        ("--steps", args.steps, args.steps > 0, "at least 1"),
        ("--lr", args.lr, args.lr >= 0, "a learning rate >= 0"),
        ("--window", args.window, args.window > 0, "at least 1 image"),
        ("--rays-per-batch", args.rays_per_batch, args.rays_per_batch > 0, "at least 1 ray"),
    ):
        if not ok:
            raise UserError(f"{flag} {value}: expected {expected}")
    if out.exists() and not out.is_dir():  # found now, not after the refinement
        raise UserError(f"{out}: is a file; --out is the folder refined.h5 and the report go to — choose another")
    refuse_to_replace(out / "refined.h5", args.overwrite)
    check_folder_free(out, "refine")
    progress_path = out / PROGRESS_NAME
    if args.resume and not progress_path.is_file():
        raise UserError(f"{out}: no interrupted refinement to resume (no {PROGRESS_NAME}); drop --resume")
    if progress_path.is_file() and not (args.resume or args.overwrite):
        raise UserError(f"{progress_path}: an interrupted refinement; pass --resume to continue it, or --overwrite "
                        "to start over")  # fmt: skip
    if args.overwrite and not args.resume and progress_path.is_file():  # starting over: not to be resumed later
        progress_path.unlink()
    device = pick_device(args.device)
    model, _ = load_character(args.ckpt, device=device, backend=args.backend)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    split = load_split(args.data, keep_masks=False)
    check_sampling_masks(split)  # now, not when its window comes up hours later
    settings = Progress.settings_of(args, split, model)
    progress = Progress.load(progress_path, settings) if args.resume else Progress(settings, 0, {})
    time_ids = multiview_time_ids(args.data, split.pose_idxs, split.kp3d.shape[0]) if args.multiview else None
    poses = RefinablePoses(split.bones, split.kp3d[:, 0], model.rest_pose.cpu(), time_ids)
    if progress.poses:
        poses.load_state_dict(progress.poses)
    poses = poses.to(device)
    paths = pose_row_paths(split.pose_idxs, split.img_paths, poses.n_poses)
    refiner = PoseRefiner(poses, args.lr, temp_coef=args.temp_coef, img_paths=paths,
                          reg_coef=args.reg_coef, reg_tol=args.reg_tol)  # fmt: skip
    units = poses.time_ids.cpu()[split.pose_idxs] if args.multiview else split.pose_idxs
    windows = consecutive_windows(units, int(units.max()) + 1, args.window)
    settings_render = RenderSettings.from_train(model.config.train, training=True)
    settings_render = dataclasses.replace(settings_render, density_noise_std=0.0, stratified=True)
    print(f"{model.describe()}\nrefining {poses.n_poses} poses of {args.data} ({split.n_images} images) in "
          f"{len(windows)} window(s) of <= {args.window} images, {args.steps} steps each, on {device}"
          + (f"; resuming after window {progress.windows_done}" if progress.windows_done else ""))  # fmt: skip
    made_out = not out.exists()
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(out, "refine"):  # a second refine into OUT is refused: their progress files would mix
            start = time.perf_counter()
            for k in range(progress.windows_done, len(windows)):
                try:
                    _refine_window(model, split, refiner, windows[k], args, settings_render, device, k, len(windows))
                except KeyboardInterrupt:
                    if k:
                        print(f"\nCtrl-C: {k} of {len(windows)} windows are saved in {progress_path}; the same command "
                              "with --resume continues", flush=True)  # fmt: skip
                    else:
                        print(
                            "\nCtrl-C: no window was finished, nothing saved; the same command starts again", flush=True
                        )
                    return {"interrupted": True}
                progress.windows_done, progress.poses = k + 1, poses.state_dict()
                if k + 1 < len(windows):
                    progress.save(progress_path)
            refined = poses.export()
            report: dict = {"checkpoint": str(args.ckpt), "data": str(args.data), "steps": args.steps,
                            "windows": len(windows), "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
            errors = refinement_errors(split, refined["kp3d"])
            if errors is None:
                print("no gt_kp3d with 24 joints in the data: pose errors not computed")
            report.update(errors or {})
            report["refined_poses"] = str(export_refined_poses(split.path, out / "refined.h5", refined))
            write_json_atomic(out / "refine_report.json", report)
            progress_path.unlink(missing_ok=True)
            print(f"wrote {out / 'refined.h5'} and {out / 'refine_report.json'}")
            return report
    finally:
        if made_out:  # a refinement that saved nothing (Ctrl-C or an error in window 1) leaves no empty folder
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty


def _refine_window(model, split, refiner: PoseRefiner, images: torch.Tensor, args, settings, device, k: int,
                   n_windows: int) -> None:  # fmt: skip
    """``args.steps`` steps on the poses of window ``k``'s ``images [M]`` (a fresh Adam and a generator seeded by
    ``seed`` and ``k``, so a resumed run repeats the window exactly)."""
    from fast_anerf.train import all_finite, photometric_loss

    generator = torch.Generator().manual_seed(args.seed * 1_000_003 + k)
    pool = RayPool(split, args.rays_per_batch, images.numel(), generator, images=images)  # all of them each step
    pose_idxs = split.pose_idxs.to(device)
    refiner.restart()
    poses = refiner.poses
    where = f"window {k + 1}/{n_windows} " if n_windows > 1 else ""
    bad_steps, max_bad = 0, model.config.train.max_bad_steps
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = {key: v.to(device) for key, v in pool.next_batch().items()}
        skts, reg = refiner.skts(pose_idxs[batch["image_idx"]], step)
        codes = torch.full_like(batch["image_idx"], -1)  # frames never seen: the mean appearance code
        rendered = render_rays(model, batch["rays_o"], batch["rays_d"], skts, codes, batch["background"],
                               settings, generator=generator)  # fmt: skip
        photo = photometric_loss(rendered["rgb"], batch["rgb"], model.config.train.loss)
        loss = photo + reg
        loss.backward()
        grads_finite = all_finite([p.grad for p in poses.parameters() if p.grad is not None])
        if not (bool(torch.isfinite(loss)) and grads_finite):  # skip: one bad batch must not corrupt the poses
            refiner.optimizer.zero_grad(set_to_none=True)
            bad_steps += 1
            print(f"{where}step {step}: non-finite loss or gradient, step skipped", flush=True)
            if bad_steps >= max_bad:
                at = f" of {where.strip()}" if where else ""
                raise UserError(
                    f"{args.data}: {bad_steps} consecutive non-finite steps up to step {step}{at}; stopped, "
                    "refined.h5 not written. Lower --lr or check the data and the checkpoint"
                )
            continue
        bad_steps = 0
        for group in refiner.optimizer.param_groups:
            group["lr"] = annealed_lr(args.lr, args.lr_decay, step, args.steps)
        refiner.after_backward(step)
        if step % 50 == 0 or step == args.steps:
            mse = float((rendered["rgb"].detach() - batch["rgb"]).pow(2).mean())
            print(f"{where}step {step:>5}/{args.steps}  psnr {-10 * math.log10(max(mse, 1e-10)):6.2f}  "
                  f"reg {float(reg.detach()):.4f}  {time.perf_counter() - start:6.1f}s", flush=True)  # fmt: skip
