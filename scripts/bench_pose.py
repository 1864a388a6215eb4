"""Pose refinement on the built-in character: joint errors before/after, and what refinement buys in PSNR.

Three runs on one machine, one after the other:
1. train with pose refinement on the noisy (SPIN-like) training poses, for ``--minutes`` of training;
2. the same without refinement (same budget) -> held-out-view PSNR difference;
3. ``refine`` with the model of (1) frozen, on unseen frames (test_pose, one camera) whose true poses were
   perturbed with the generator's noise model -> MPJPE before/after.
Prints a table and writes JSON naming the device.

    python scripts/bench_pose.py [--minutes 10] [--refine-steps N (default: refine's)] [--out bench_pose.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from fast_anerf.cli import Refine, Train
from fast_anerf.data.anerf_h5 import open_anerf_h5
from fast_anerf.data.h5_write import write_anerf_h5
from fast_anerf.data.synthetic import default_data_dir, generate_dataset, noisy_poses, pose_arrays
from fast_anerf.refine import run_refine
from fast_anerf.run_setup import device_model
from fast_anerf.train import Trainer


def noisy_unseen_frames(folder: Path, target: Path, camera: int, seed: int) -> Path:
    """test_pose.h5 frames of one camera, with SPIN-like noise on kp3d/bones/skts (true poses kept in gt_*)."""
    with open_anerf_h5(folder / "test_pose.h5") as data:
        arrays = dict(data.arrays)
        images = data.load_all()
        keep = np.flatnonzero(arrays["cam_idxs"] == camera)
        out = {
            k: v[keep] for k, v in arrays.items() if isinstance(v, np.ndarray) and v.ndim and len(v) == data.n_images
        }
        out.update({k: v for k, v in arrays.items() if k not in out})
        out["imgs"], out["masks"] = images["imgs"][keep], images["masks"][keep].astype(np.uint8)
        out["sampling_masks"] = images["sampling_masks"][keep].astype(np.uint8)
        if images["bkgds"] is not None:
            out["bkgds"] = images["bkgds"]
    out["img_paths"] = np.array([str(arrays["img_paths"][i]) for i in keep])
    out.pop("img_shape", None)
    bones, roots = noisy_poses(out["gt_bones"], out["gt_kp3d"][:, 0], out["c2ws"], seed)
    out.update(pose_arrays(out["rest_pose"], bones, roots))
    write_anerf_h5(target, out)
    return target


def train_run(out: Path, minutes: float, refine: str, seed: int) -> dict:
    if out.exists():
        shutil.rmtree(out)
    trainer = Trainer(Train(out=out, preset="demo", steps=10**9, max_minutes=minutes, refine_poses=refine,
                            eval_every=0, seed=seed))  # fmt: skip
    return trainer.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--refine-steps", type=int, default=Refine.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=Path("runs/bench_pose"))
    parser.add_argument("--out", type=Path, default=Path("bench_pose.json"))
    args = parser.parse_args()
    folder = default_data_dir()
    generate_dataset(folder, verbose=False)
    with_refine = train_run(args.runs / "refine_on", args.minutes, "on", args.seed)
    without = train_run(args.runs / "refine_off", args.minutes, "off", args.seed)
    unseen = noisy_unseen_frames(folder, args.runs / "unseen_noisy.h5", camera=5, seed=args.seed + 1)
    refine = run_refine(Refine(ckpt=args.runs / "refine_on" / "checkpoint.pt", data=unseen,
                               out=args.runs / "refine_unseen", steps=args.refine_steps, overwrite=True))  # fmt: skip
    before, after = with_refine["poses"]["before"], with_refine["poses"]["after"]
    psnr_on = with_refine["splits"]["test_view"]["psnr"]
    psnr_off = without["splits"]["test_view"]["psnr"]
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the runs' --device auto
    device_name = device_model(device)
    rows = [
        ("train: MPJPE (mm)", before["mpjpe_mm"], after["mpjpe_mm"]),
        ("train: PA-MPJPE (mm)", before["pa_mpjpe_mm"], after["pa_mpjpe_mm"]),
        ("train: MPJPE no align (mm)", before["abs_mpjpe_mm"], after["abs_mpjpe_mm"]),
        ("unseen: MPJPE (mm)", refine["before"]["mpjpe_mm"], refine["after"]["mpjpe_mm"]),
        ("unseen: PA-MPJPE (mm)", refine["before"]["pa_mpjpe_mm"], refine["after"]["pa_mpjpe_mm"]),
        ("unseen: MPJPE no align (mm)", refine["before"]["abs_mpjpe_mm"], refine["after"]["abs_mpjpe_mm"]),
    ]
    print(f"\ndevice: {device} ({device_name}), threads {torch.get_num_threads()}, {args.minutes} min per training run")
    print(f"{'metric':<28} {'before':>8} {'after':>8} {'change':>8}")
    for name, b, a in rows:
        print(f"{name:<28} {b:>8.1f} {a:>8.1f} {100 * (a - b) / b:>7.1f}%")
    print(f"test_view PSNR: refine on {psnr_on:.2f} dB, off {psnr_off:.2f} dB ({psnr_on - psnr_off:+.2f} dB)")
    result = {"device": device, "device_name": device_name, "threads": torch.get_num_threads(),
              "minutes": args.minutes, "refine_steps": args.refine_steps,
              "rows": [{"metric": n, "before": b, "after": a} for n, b, a in rows],
              "psnr_test_view_on": psnr_on, "psnr_test_view_off": psnr_off,
              "train_steps_on": with_refine["step"], "train_steps_off": without["step"]}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
