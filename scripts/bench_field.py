"""Field throughput: points per second, forward + backward, fast field vs the original A-NeRF field.

Both fields get the same points (and the fast field runs on the plain-PyTorch backend too when another
one, such as the ``cpu`` kernels, is the default): samples of real training rays of the built-in character (bone-local
positions and directions, as the renderer makes them). Prints a table and writes JSON naming the device.

    python scripts/bench_field.py [--points 65536] [--device cpu|cuda] [--out bench_field.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fast_anerf.bone_boxes import ray_box_intervals
from fast_anerf.config import RunConfig, load_preset
from fast_anerf.data.split import RayPool, load_split
from fast_anerf.data.synthetic import default_data_dir, generate_dataset
from fast_anerf.encoding.backend import resolve_backend
from fast_anerf.model import Character
from fast_anerf.renderer import rays_to_bones
from fast_anerf.run_setup import device_model
from fast_anerf.sampling.march import march_boxes


def sample_points(config: RunConfig, n_points: int, device: torch.device):
    """``x_local [n, 24, 3]``, ``d_local [n, 24, 3]``, ``codes [n]`` from training rays of the built-in data."""
    folder = default_data_dir()
    generate_dataset(folder, verbose=False)
    split = load_split(folder / "train.h5")
    model = Character(config, split.rest_pose, split.n_images, backend="torch")
    pool = RayPool(split, 4096, 64, torch.Generator().manual_seed(0))
    xs, ds, cs, total = [], [], [], 0
    while total < n_points:
        b = pool.next_batch()
        skts = split.skts[split.pose_idxs[b["image_idx"]]]
        o, d = rays_to_bones(b["rays_o"], b["rays_d"], skts)
        t_in, t_out, hit = ray_box_intervals(o, d, model.box_min, model.box_max)
        scale = b["rays_d"].norm(dim=-1)
        ray, t0, t1 = march_boxes(t_in, t_out, hit, scale, step=config.train.step_size * model.height)
        t = 0.5 * (t0 + t1)
        xs.append(o[ray] + t[:, None, None] * d[ray])
        ds.append(d[ray] / scale[ray, None, None])
        cs.append(b["image_idx"][ray])
        total += ray.numel()
    return (
        torch.cat(xs)[:n_points].to(device),
        torch.cat(ds)[:n_points].to(device),
        torch.cat(cs)[:n_points].to(device),
        split,
    )


def time_field(model: Character, x, d, codes, repeats: int) -> float:
    """Best-of-``repeats`` seconds for one forward + backward over all points."""
    params = [p for p in model.parameters() if p.requires_grad]
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up caches and allocators
        for p in params:
            p.grad = None
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        sigma, rgb = model.field(x, d, codes)
        (sigma.mean() + rgb.mean()).backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", default="bench_field.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    fast_cfg = load_preset("demo")
    anerf_cfg = load_preset("anerf")
    x, d, codes, split = sample_points(fast_cfg, args.points, device)
    rows = []
    runs = [("fast", fast_cfg, args.backend), ("anerf", anerf_cfg, "torch")]
    if resolve_backend(args.backend, device) != "torch":  # the plain-PyTorch twin too, side by side
        runs.insert(1, ("fast", fast_cfg, "torch"))
    for name, cfg, backend in runs:
        torch.manual_seed(0)
        model = Character(cfg, split.rest_pose, split.n_images, backend=backend)
        model.to(device)
        seconds = time_field(model, x, d, codes, args.repeats)
        rows.append(
            {
                "field": name,
                "params": model.field.n_params,
                "ms": seconds * 1e3,
                "points_per_s": args.points / seconds,
                "backend": getattr(model.field, "backend_name", "torch"),
            }
        )
    ratio = rows[0]["points_per_s"] / rows[-1]["points_per_s"]
    device_name = device_model(device)
    print(f"device: {device} ({device_name}), threads {torch.get_num_threads()}, points {args.points}")
    print(f"{'field':<6} {'params':>12} {'ms fwd+bwd':>11} {'points/s':>12} backend")
    for r in rows:
        print(f"{r['field']:<6} {r['params']:>12,} {r['ms']:>11.1f} {r['points_per_s']:>12,.0f} {r['backend']}")
    print(f"fast ({rows[0]['backend']}) / anerf points per second: {ratio:.1f}x")
    if len(rows) == 3:
        twin = rows[0]["points_per_s"] / rows[1]["points_per_s"]
        print(f"fast {rows[0]['backend']} / fast torch backend: {twin:.2f}x")
    result = {
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "points": args.points,
        "rows": rows,
        "speedup": ratio,
    }
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
