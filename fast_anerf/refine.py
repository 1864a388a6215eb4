"""``fast-anerf refine``: fit the poses of frames the model never saw, with the trained body model frozen.

The photometric loss of the frozen character (mean appearance code) pulls each frame's skeleton into place;
A-NeRF's hinge regulariser keeps rotations near the estimate and a temporal term smooths consecutive frames.
The pose learning rate anneals exponentially (``--lr-decay``), as it does for the training poses.
Writes the refined poses as an A-NeRF .h5 (``refined.h5``) next to a report (``refine_report.json``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch

from fast_anerf.data.split import RayPool, load_split
from fast_anerf.errors import UserError, refuse_to_replace
from fast_anerf.model import load_character
from fast_anerf.pose import PoseRefiner, RefinablePoses, multiview_time_ids, pose_row_paths
from fast_anerf.pose_io import export_refined_poses
from fast_anerf.pose_metrics import refinement_errors
from fast_anerf.renderer import RenderSettings, render_rays


def annealed_lr(lr: float, decay: float, step: int, steps: int) -> float:
    """Exponential anneal over a refinement of ``steps`` steps: ``lr`` at step 1, ``lr * decay`` at the last.
    Large early steps pull the poses in; small late ones let them settle instead of jittering around the optimum."""
    return lr * decay ** ((step - 1) / max(steps - 1, 1))


def run_refine(args) -> dict:
    """Refine the poses of ``args.data`` against the frozen model of ``args.ckpt``; see the module docstring."""
    from fast_anerf.run_files import write_json_atomic
    from fast_anerf.run_setup import pick_device
    from fast_anerf.train import all_finite, photometric_loss

    out = Path(args.out)
    if not args.lr_decay > 0:  # lr * decay ** fraction: 0 freezes the poses at once, < 0 has no real power
        raise UserError(f"--lr-decay is {args.lr_decay}; expected a factor > 0 (1 = a constant learning rate)")
    if not (args.steps > 0 and args.lr >= 0):
        raise UserError(f"--steps {args.steps} --lr {args.lr}: expected at least one step and a learning rate >= 0")
    if out.exists() and not out.is_dir():  # found now, not after the refinement
        raise UserError(f"{out}: is a file; --out is the folder refined.h5 and the report go to — choose another")
    refuse_to_replace(out / "refined.h5", args.overwrite)
    device = pick_device(args.device)
    model, _ = load_character(args.ckpt, device=device, backend=args.backend)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    split = load_split(args.data, keep_masks=False)
    generator = torch.Generator().manual_seed(args.seed)
    pool = RayPool(split, args.rays_per_batch, min(64, split.n_images), generator)
    time_ids = multiview_time_ids(args.data, split.pose_idxs, split.kp3d.shape[0]) if args.multiview else None
    poses = RefinablePoses(split.bones, split.kp3d[:, 0], model.rest_pose.cpu(), time_ids).to(device)
    paths = pose_row_paths(split.pose_idxs, split.img_paths, poses.n_poses)
    refiner = PoseRefiner(poses, args.lr, temp_coef=args.temp_coef, img_paths=paths,
                          reg_coef=args.reg_coef, reg_tol=args.reg_tol)  # fmt: skip
    settings = RenderSettings.from_train(model.config.train, training=True)
    settings = dataclasses.replace(settings, density_noise_std=0.0, stratified=True)
    pose_idxs = split.pose_idxs.to(device)
    print(f"{model.describe()}\nrefining {poses.n_poses} poses of {args.data} ({split.n_images} images) "
          f"for {args.steps} steps on {device}")  # fmt: skip
    start = time.perf_counter()
    bad_steps, max_bad = 0, model.config.train.max_bad_steps
    for step in range(1, args.steps + 1):
        batch = {k: v.to(device) for k, v in pool.next_batch().items()}
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
            print(f"step {step}: non-finite loss or gradient, step skipped", flush=True)
            if bad_steps >= max_bad:
                raise UserError(
                    f"{args.data}: {bad_steps} consecutive non-finite steps up to step {step}; stopped, nothing "
                    "written. Lower --lr or check the data and the checkpoint"
                )
            continue
        bad_steps = 0
        for group in refiner.optimizer.param_groups:
            group["lr"] = annealed_lr(args.lr, args.lr_decay, step, args.steps)
        refiner.after_backward(step)
        if step % 50 == 0 or step == args.steps:
            mse = float((rendered["rgb"].detach() - batch["rgb"]).pow(2).mean())
            print(f"step {step:>5}/{args.steps}  psnr {-10 * math.log10(max(mse, 1e-10)):6.2f}  "
                  f"reg {float(reg.detach()):.4f}  {time.perf_counter() - start:6.1f}s", flush=True)  # fmt: skip
    refined = poses.export()
    report: dict = {"checkpoint": str(args.ckpt), "data": str(args.data), "steps": args.steps,
                    "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    errors = refinement_errors(split, refined["kp3d"])
    if errors is None:
        print("no gt_kp3d with 24 joints in the data: pose errors not computed")
    report.update(errors or {})
    report["refined_poses"] = str(export_refined_poses(split.path, out / "refined.h5", refined))
    write_json_atomic(out / "refine_report.json", report)
    print(f"wrote {out / 'refined.h5'} and {out / 'refine_report.json'}")
    return report
