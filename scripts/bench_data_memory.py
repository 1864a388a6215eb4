"""Memory and start-up time of training on an A-NeRF-sized data set.

A-NeRF's released files are far larger than the built-in character: SURREAL holds 9 cameras x 1200 poses at
512^2, Mixamo and H36M ~1000^2 frames (specs/anerf.md §1.3). This builds such a file from the built-in
character (its frames upsampled to ``--res`` by pixel repetition and tiled to ``--images``), then runs
``fast-anerf train --data BIG.h5 --steps 3`` in a fresh process and reports that process's peak resident
memory and wall time, next to the size of the file's ``imgs`` (uint8), and the memory each image adds (the
same run on a 2-image file gives the fixed part: PyTorch, the model). ``--compare-tree DIR`` runs the same
command a second time with the package imported from another checkout (e.g. ``git worktree add /tmp/old
HEAD~1``), so both figures come from one run of this script on one machine.

    python scripts/bench_data_memory.py [--images 400] [--res 512] [--compare-tree DIR] [--out bench_data_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The child reads its peak from /proc (VmHWM): getrusage's ru_maxrss survives exec on Linux and would report
# this script's own peak (it held the big arrays) when that is larger.
CHILD = """
import json, re, sys, time
start = time.perf_counter()
from fast_anerf.cli import entrypoint
import fast_anerf
code = entrypoint(sys.argv[1:])
hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print("BENCH " + json.dumps({"exit": code, "seconds": time.perf_counter() - start, "peak_rss_mb": hwm / 1024,
      "package": fast_anerf.__file__}))
"""


def build_big_file(path: Path, n_images: int, res: int) -> int:
    """Write an A-NeRF .h5 of ``n_images`` frames at ``res``^2; returns the bytes of its ``imgs`` (uint8)."""
    from fast_anerf.data.anerf_h5 import open_anerf_h5
    from fast_anerf.data.h5_write import write_anerf_h5
    from fast_anerf.data.synthetic import default_data_dir, generate_dataset

    folder = default_data_dir()
    generate_dataset(folder, verbose=False)
    with open_anerf_h5(folder / "train.h5") as data:
        small = data.load_all()
        arrays = dict(data.arrays)
        n, h = data.n_images, data.height
    if res % h:
        raise SystemExit(f"--res must be a multiple of the built-in character's {h} px")
    factor, rows = res // h, np.arange(n_images) % n

    def up(a: np.ndarray) -> np.ndarray:  # [n, h, w, ...] -> [n, h*f, w*f, ...], nearest
        return a.repeat(factor, axis=1).repeat(factor, axis=2)

    out = {
        "imgs": up(small["imgs"])[rows],
        "masks": up(small["masks"])[rows],
        "sampling_masks": up(small["sampling_masks"])[rows],
        "focals": arrays["focals"][rows] * factor,
        "centers": arrays["centers"][rows] * factor if "centers" in arrays else None,
        "c2ws": arrays["c2ws"][rows],
    }
    for key in ("kp3d", "bones", "skts", "cyls", "gt_kp3d", "gt_skts", "gt_bones"):
        if key in arrays:
            out[key] = arrays[key][data.pose_idxs[rows]]
    for key in ("rest_pose", "ext_scale"):
        if key in arrays:
            out[key] = arrays[key]
    write_anerf_h5(path, {k: v for k, v in out.items() if v is not None})
    return int(out["imgs"].nbytes)


def run_train(data: Path, run_dir: Path, tree: Path | None) -> dict:
    """``fast-anerf train --data DATA --steps 3`` in a fresh interpreter (package from ``tree`` if given)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-c", CHILD, "train", "--data", str(data), "--out", str(run_dir), "--steps", "3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if not lines:  # killed (out of memory) or crashed: report it instead of a number
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"exit": proc.returncode, "error": tail[0]}
    return json.loads(lines[-1][len("BENCH ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--res", type=int, default=512)
    parser.add_argument("--compare-tree", type=Path, default=None, help="another checkout to measure alongside")
    parser.add_argument("--out", type=Path, default=Path("bench_data_memory.json"))
    args = parser.parse_args()
    if args.images < 3:  # MB per image = the difference to a 2-image run, over the images beyond those 2
        parser.error(f"--images must be at least 3 (a 2-image run is the baseline), got {args.images}")

    with tempfile.TemporaryDirectory(prefix="bench_data_memory_") as tmp:
        big, small = Path(tmp) / "big.h5", Path(tmp) / "small.h5"
        start = time.perf_counter()
        imgs_bytes = build_big_file(big, args.images, args.res)
        build_big_file(small, 2, args.res)
        print(f"wrote {big.stat().st_size / 2**20:.0f} MB ({args.images} images of {args.res}^2) in "
              f"{time.perf_counter() - start:.0f} s")  # fmt: skip
        trees = {"this tree": None} | ({"compare tree": args.compare_tree} if args.compare_tree else {})
        results = {}
        for i, (name, tree) in enumerate(trees.items()):
            results[name] = run_train(big, Path(tmp) / f"big{i}", tree)
            results[name]["two_images"] = run_train(small, Path(tmp) / f"small{i}", tree)

    mb = imgs_bytes / 2**20
    print(f"\n{args.images} images of {args.res}^2: imgs = {mb:.0f} MB as uint8 (device: cpu, {os.cpu_count()} cores)")
    print(f"{'package':<14} {'peak RSS (MB)':>14} {'x imgs':>8} {'MB per image':>13} {'wall (s)':>9}")
    for name, r in results.items():
        if "peak_rss_mb" not in r or "peak_rss_mb" not in r["two_images"]:
            print(f"{name:<14} failed: {r.get('error') or r['two_images'].get('error')}")
            continue
        rss = r["peak_rss_mb"]
        r["mb_per_image"] = (rss - r["two_images"]["peak_rss_mb"]) / (args.images - 2)
        print(f"{name:<14} {rss:>14.0f} {rss / mb:>8.2f} {r['mb_per_image']:>13.2f} {r['seconds']:>9.1f}")
    report = {
        "device": "cpu",
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "images": args.images,
        "res": args.res,
        "imgs_mb": mb,
        "runs": results,
        "compare_tree": str(args.compare_tree) if args.compare_tree else None,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
