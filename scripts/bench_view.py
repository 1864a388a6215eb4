"""Viewer frame rate, headless: the exact per-frame path of ``fast-anerf view`` without the browser.

Each frame is ``ViewerState.render`` (pose -> forward kinematics -> ``renderer.render_image`` -> uint8), with
the camera orbiting the character and the pose advancing one frame, as when a user drags the view while a
motion plays; then the JPEG encoding the page receives. Prints ms per frame and frames per second per size.

    python scripts/bench_view.py --ckpt runs/demo/checkpoint.pt            # a trained character
    python scripts/bench_view.py                                          # untrained demo-preset field
    python scripts/bench_view.py --sizes 256 512 --frames 20 --device cuda --out bench_view_cuda.json

Without ``--ckpt`` the field is the demo preset's, untrained, posed by the built-in motions: the network and
the samples per ray (fixed steps inside the bone boxes) are those of a trained one, but a trained field skips
more empty space once the renderer uses occupancy grids, so trained numbers can be faster.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fast_anerf.run_setup import device_model


def build(ckpt: Path | None, device: str, backend: str):
    from fast_anerf.cli import View
    from fast_anerf.viewer_server import build_state

    if ckpt is not None:
        return build_state(View(ckpt=ckpt, device=device, backend=backend))
    from fast_anerf.config import load_preset
    from fast_anerf.data import motions
    from fast_anerf.data.synthetic import builtin_rest_pose
    from fast_anerf.model import Character
    from fast_anerf.run_setup import pick_device
    from fast_anerf.viewer import ViewerState, motion_sequence

    model = Character(load_preset("demo"), torch.as_tensor(builtin_rest_pose()), 1, backend=backend)
    model = model.to(pick_device(device)).eval()
    sequences = [motion_sequence(n, *motions.MOTIONS[n](48), np.zeros(3), 1.0) for n in motions.TRAIN_MOTIONS]
    return ViewerState(model, sequences), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square render sizes (pixels)")
    parser.add_argument("--frames", type=int, default=5, help="timed frames per size (after one warm-up frame)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "cpu", "tcnn"])
    parser.add_argument("--march", default="auto", choices=["auto", "torch", "cpu", "nerfacc"],
                        help="marching implementation (sampling/march.py; auto: nerfacc on CUDA)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench_view.json"))
    args = parser.parse_args()
    if args.frames < 1:
        parser.error(f"--frames must be at least 1 (timed frames per size), got {args.frames}")

    from fast_anerf.viewer import look_at_c2w

    state, home = build(args.ckpt, args.device, args.backend)
    state.settings = dataclasses.replace(state.settings, march_backend=args.march)
    model = state.model
    device = model.box_min.device
    kp3d, _, _ = state.pose()
    target = kp3d.mean(0).double().numpy()
    # The page opens at the training data's first camera: orbit at its distance, with its field of view.
    distance = float(np.linalg.norm(home.c2w[:3, 3] - target)) if home is not None else 2.0 * model.height
    fov = home.fov_y if home is not None else np.radians(40.0)
    print(
        f"{model.describe()}\ndevice {device}, torch threads {torch.get_num_threads()}, "
        f"motion {state.motion!r} ({state.n_frames} frames), step {state.settings.step_size}, march {args.march}"
    )
    rows = []
    for size in args.sizes:
        times, coverage, samples = [], [], []
        for i in range(args.frames + 1):
            angle = 2 * np.pi * i / max(args.frames, 1)
            eye = target + distance * np.array([np.sin(angle), -0.2, -np.cos(angle)])
            state.advance()
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            image = state.render(look_at_c2w(eye, target), fov, size, size)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 1:  # the warm-up frame pays for the allocator and first kernel launches
                times.append(time.perf_counter() - start)
                coverage.append(int((image.astype(int).sum(-1) < 3 * 250).sum()))
                samples.append(state.last_stats["samples"])
        jpeg_times = []  # the page's JPEG encoding: min of 5 after an untimed one (PIL loads its encoder, ~18 ms)
        for k in range(6):
            start = time.perf_counter()
            Image.fromarray(image).save(io.BytesIO(), format="JPEG", quality=90)
            if k:
                jpeg_times.append(time.perf_counter() - start)
        jpeg_ms = 1000 * min(jpeg_times)
        ms = 1000 * float(np.median(times))
        print(
            f"{size}x{size}: {ms:8.1f} ms/frame (median of {len(times)}), {1000 / ms:6.2f} FPS; "
            f"min {1000 * min(times):.1f} ms; jpeg {jpeg_ms:.1f} ms; body covers {np.mean(coverage) / size**2:.0%}; "
            f"{np.mean(samples) / 1e3:.0f}k samples/frame, {np.sum(samples) / np.sum(times) / 1e3:.0f}k samples/s"
        )
        rows.append({"size": size, "ms_per_frame": ms, "fps": 1000 / ms, "min_ms": 1000 * min(times),
                     "jpeg_ms": jpeg_ms, "body_fraction": float(np.mean(coverage)) / size**2,
                     "samples_per_frame": float(np.mean(samples))})  # fmt: skip
    name = device_model(device)
    result = {"device": device.type, "device_name": name, "threads": torch.get_num_threads(),
              "ckpt": str(args.ckpt) if args.ckpt else None, "march": args.march, "rows": rows}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
