"""The SPIN user's whole loop on the built-in character: a SPIN-format estimate in, a refined one out, both
compared with the true joints.

1. The built-in training frames' noisy (SPIN-like) poses are written as a SPIN file: ``data to-spin`` gives the
   rotations and translations in each frame's camera; the crop box is the square around the mask (x 1.2, as
   SPIN's demo), and ``pred_camera`` the weak-perspective camera of the translation in it.
2. The frames and masks go to PNG folders; ``fast-anerf data from-spin`` converts (``--camera``: with the true
   focal, x ``--focal-factor``; with its default, the frame's diagonal; or with SPIN's distant camera).
3. ``fast-anerf train`` on that file (demo preset, pose refinement on; the temporal term off: the built-in
   camera orbits the person, and SPIN's camera-frame world turns with it, so consecutive roots are not close).
4. ``fast-anerf data to-spin`` of the run's ``refined_poses.h5`` with ``--spin`` the estimate.
Errors (mm) of the estimate's and the refined file's joints in each camera (``joints3d + transl``) against the
generator's true joints in the same camera: MPJPE (root-aligned), PA-MPJPE and without alignment.

    python scripts/bench_spin_loop.py [--steps 4000] [--camera true|diagonal|spin] [--out bench_spin_loop.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from fast_anerf.cli import entrypoint
from fast_anerf.data.anerf_h5 import open_anerf_h5
from fast_anerf.data.synthetic import default_data_dir, generate_dataset
from fast_anerf.data.to_spin import camera_frame, export_spin, weak_perspective
from fast_anerf.pose_metrics import pose_metrics
from fast_anerf.run_setup import device_model


def write_estimate(train_h5: Path, folder: Path) -> tuple[Path, np.ndarray, float]:
    """SPIN .npz + frames/ + masks/ from the built-in training split's noisy poses; returns the .npz, the true
    joints in each OpenCV camera ``[N, 24, 3]`` m and the true focal px."""
    raw = export_spin(train_h5, folder / "estimate_raw.npz", overwrite=True)["out"]
    with np.load(raw) as f:
        est = {k: f[k] for k in f.files}
    with open_anerf_h5(train_h5) as data:
        images = data.load_all()
        truth = camera_frame(data.arrays["c2ws"].astype(np.float64), data.arrays["gt_kp3d"][data.pose_idxs])
    boxes = np.zeros((len(truth), 3))
    for name in ("frames", "masks"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i, mask in enumerate(images["masks"]):
        v, u = np.nonzero(mask)
        side = 1.2 * (max(np.ptp(u), np.ptp(v)) + 1)  # SPIN's demo: the square around the person, x 1.2
        boxes[i] = (u.min() + u.max() + 1) / 2, (v.min() + v.max() + 1) / 2, side
        iio.imwrite(folder / "frames" / f"{i:04d}.png", images["imgs"][i])
        iio.imwrite(folder / "masks" / f"{i:04d}.png", mask.astype(np.uint8) * 255)
    camera = weak_perspective(est["transl"].astype(np.float64), est["focal"], est["center"], boxes)
    spin = folder / "estimate.npz"
    np.savez(spin, pred_rotmat=est["pred_rotmat"], pred_camera=camera, bboxes=boxes, pred_betas=est["betas"],
             frame_ids=np.arange(len(boxes)))  # fmt: skip
    return spin, truth, float(est["focal"][0])


def camera_joints(npz: Path) -> torch.Tensor:
    with np.load(npz) as f:
        return torch.as_tensor(f["joints3d"] + f["transl"][:, None], dtype=torch.float64)


def run(argv: list[str]) -> None:
    print("$ fast-anerf " + " ".join(argv), flush=True)
    if entrypoint(argv) != 0:
        raise SystemExit(f"fast-anerf {argv[0]} failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--camera", choices=("true", "diagonal", "spin"), default="true",
                        help="from-spin's focal: the true one (x --focal-factor), its default, or SPIN's")  # fmt: skip
    parser.add_argument("--focal-factor", type=float, default=1.0, help="--camera true: --focal = this x the true")
    parser.add_argument("--preset", default="demo", help="fast-anerf train --preset (a name or a .toml)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=Path("runs/bench_spin_loop"))
    parser.add_argument("--out", type=Path, default=Path("bench_spin_loop.json"))
    args = parser.parse_args()
    shutil.rmtree(args.runs, ignore_errors=True)
    folder = args.runs / "spin"
    train_h5 = generate_dataset(default_data_dir(), verbose=False)["train"]
    spin, truth, focal = write_estimate(train_h5, folder)
    converted, run_dir = folder / "converted.h5", args.runs / "train"
    focal_flags, camera = {  # from-spin's flags and the camera's name in the table
        "true": (["--focal", repr(focal * args.focal_factor)], f"--focal {args.focal_factor:g} x the true focal"),
        "diagonal": ([], "the frame's diagonal (default)"),
        "spin": (["--focal", "spin"], "SPIN's distant camera"),
    }[args.camera]
    run(["data", "from-spin", str(spin), "--images", str(folder / "frames"), "--masks", str(folder / "masks"),
         "--out", str(converted), *focal_flags])  # fmt: skip
    start = time.perf_counter()
    run(["train", "--data", str(converted), "--out", str(run_dir), "--steps", str(args.steps), "--temp-coef", "0",
         "--seed", str(args.seed), "--preset", args.preset])  # fmt: skip
    seconds = time.perf_counter() - start
    run(["data", "to-spin", str(run_dir / "refined_poses.h5"), "--out", str(folder / "refined.npz"), "--spin",
         str(spin)])  # fmt: skip
    as_converted = folder / "estimate_converted.npz"  # the estimate as from-spin placed it, read the same way
    run(["data", "to-spin", str(converted), "--out", str(as_converted), "--spin", str(spin)])
    gt = torch.as_tensor(truth)
    before = pose_metrics(camera_joints(as_converted), gt, 0.001)
    after = pose_metrics(camera_joints(folder / "refined.npz"), gt, 0.001)
    labels = (("MPJPE (mm)", "mpjpe_mm"), ("PA-MPJPE (mm)", "pa_mpjpe_mm"), ("no alignment (mm)", "abs_mpjpe_mm"))
    rows = [(label, before[key], after[key]) for label, key in labels]
    device = "cuda" if torch.cuda.is_available() else "cpu"  # `fast-anerf train` ran with --device auto
    device_name = device_model(device)
    print(f"\ndevice: {device} ({device_name}), threads {torch.get_num_threads()}; {args.steps} training steps in "
          f"{seconds:.0f} s; camera: {camera}")  # fmt: skip
    print(f"{'joints in the camera vs truth':<30} {'SPIN in':>8} {'SPIN out':>9} {'change':>8}")
    for name, b, a in rows:
        print(f"{name:<30} {b:>8.1f} {a:>9.1f} {100 * (a - b) / b:>7.1f}%")
    result = {"device": device, "device_name": device_name, "threads": torch.get_num_threads(), "steps": args.steps,
              "preset": args.preset, "train_seconds": round(seconds, 1), "camera": camera,
              "rows": [{"metric": n, "spin_in": b, "spin_out": a} for n, b, a in rows]}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
