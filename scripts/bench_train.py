"""Held-out PSNR against wall-clock: the fast field vs the original A-NeRF field, same budget, same data.

Trains each field on the built-in character for ``--minutes`` of training time (evaluation pauses the clock),
evaluating on held-out views (test_view.h5) every ``--eval-every-s`` seconds; at the end, every test_view and
test_pose frame. Prints a table and writes JSON naming the device.

    python scripts/bench_train.py [--minutes 10] [--fields fast anerf] [--gt-poses] [--out bench_train.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from fast_anerf.cli import Train
from fast_anerf.evaluate import public
from fast_anerf.run_setup import device_model
from fast_anerf.train import Trainer

PRESETS = {"fast": "demo", "anerf": "anerf"}


def run_field(field: str, args, out_root: Path) -> dict:
    run_dir = out_root / field
    if (run_dir / "checkpoint.pt").exists():
        (run_dir / "checkpoint.pt").unlink()
    trainer = Trainer(
        Train(
            data=args.data,
            out=run_dir,
            preset=args.fast_preset if field == "fast" else PRESETS[field],
            steps=10**9,
            device=args.device,
            gt_poses=args.gt_poses,
            eval_every=0,
            seed=args.seed,
        )
    )
    if "test_view" not in trainer.eval_splits:  # the curve is test_view's: fail now, not after the budget
        raise SystemExit(f"--data {args.data}: no test_view.h5 beside the training data; pass a folder holding "
                         "train.h5 and test_view.h5")  # fmt: skip
    train_cfg = dataclasses.replace(trainer.config.train, march_backend=args.march)
    trainer.config = dataclasses.replace(trainer.config, train=train_cfg)  # read by every step's RenderSettings
    budget = args.minutes * 60.0
    curve, next_eval = [], args.eval_every_s
    print(f"[{field}] {trainer.model.describe()}", flush=True)
    while trainer.elapsed < budget:
        start = time.perf_counter()
        trainer.train_step()
        trainer.elapsed += time.perf_counter() - start
        if trainer.elapsed >= next_eval or trainer.elapsed >= budget:
            view = trainer.evaluate(args.eval_frames)["test_view"]
            curve.append(
                {
                    "seconds": round(trainer.elapsed, 1),
                    "step": trainer.step,
                    "psnr": view["psnr"],
                    "psnr_fg": view["psnr_fg"],
                }
            )
            print(
                f"[{field}] {trainer.elapsed:7.1f}s step {trainer.step:6d}  test_view PSNR {view['psnr']:.2f} "
                f"(fg {view['psnr_fg']:.2f})",
                flush=True,
            )
            next_eval += args.eval_every_s
    final = {name: public(r) for name, r in trainer.evaluate(args.final_frames).items()}
    trainer.save()
    return {
        "field": field,
        "preset": args.fast_preset if field == "fast" else PRESETS[field],
        "describe": trainer.model.describe(),
        "steps": trainer.step,
        "seconds": round(trainer.elapsed, 1),
        "curve": curve,
        "final": final,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fields", nargs="+", default=["fast", "anerf"], choices=list(PRESETS))
    parser.add_argument("--data", type=Path, default=None, help="folder with train/test_view/test_pose .h5")
    parser.add_argument("--fast-preset", default="demo", help="preset of the fast field (gpu on a GPU)")
    parser.add_argument("--gt-poses", action="store_true", help="train on the true poses (no pose noise)")
    parser.add_argument("--eval-every-s", type=float, default=60.0)
    parser.add_argument("--eval-frames", type=int, default=8, help="frames of test_view per curve point")
    parser.add_argument(
        "--final-frames",
        type=int,
        default=None,
        help="frames per split at the end (default all; the A-NeRF field needs ~50 s a frame on CPU)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--march", default="auto", choices=["auto", "torch", "cpu", "nerfacc"],
                        help="marching implementation (sampling/march.py; auto: nerfacc on CUDA)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench_train.json"))
    parser.add_argument("--runs", type=Path, default=Path("runs/bench_train"))
    args = parser.parse_args()
    rows = [run_field(field, args, args.runs) for field in args.fields]
    device = "cuda" if (args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())) else "cpu"
    device_name = device_model(device)
    print(
        f"\ndevice: {device} ({device_name}), threads {torch.get_num_threads()}, budget {args.minutes} min, "
        f"poses {'true' if args.gt_poses else 'estimated (noisy)'}"
    )
    print(f"{'field':<6} {'steps':>7} {'test_view PSNR':>15} {'fg':>6} {'test_pose PSNR':>15} {'fg':>6}")
    nan = float("nan")
    for r in rows:
        v, p = r["final"].get("test_view", {}), r["final"].get("test_pose", {})
        print(
            f"{r['field']:<6} {r['steps']:>7} {v.get('psnr', nan):>15.2f} {v.get('psnr_fg', nan):>6.2f}"
            f" {p.get('psnr', nan):>15.2f} {p.get('psnr_fg', nan):>6.2f}"
        )
    if len(rows) == 2:
        gap = rows[0]["final"]["test_view"]["psnr"] - rows[1]["final"]["test_view"]["psnr"]
        print(f"{rows[0]['field']} - {rows[1]['field']} test_view PSNR: {gap:+.2f} dB")
    result = {
        "device": device,
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "minutes": args.minutes,
        "gt_poses": args.gt_poses,
        "march": args.march,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
