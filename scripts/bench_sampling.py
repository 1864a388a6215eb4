"""Empty-space skipping on and off: samples per ray, training rays/s and held-out PSNR at equal steps.

Trains the fast field on the built-in character twice from the same seed and initial weights, with the
per-bone occupancy grids (``sampling/occupancy.py``) on and off (off = fixed-step samples everywhere inside
the posed bone boxes). The two runs are interleaved in blocks of steps so that other processes sharing
the CPU slow both alike. Reports, per run:

* samples per training ray evaluated by the full field (with gradients and colour), and candidates per ray
  whose density alone was evaluated without gradients to choose them (early termination), both averaged
  over the last fifth of training (the converged grid);
* training rays/s over all steps, and after the occupancy warm-up (every cell evaluated per update before);
* held-out PSNR (test_view and test_pose, every frame) after the same number of steps;
* samples per pixel and per box-hitting ray when rendering held-out images, and seconds per image.

    python scripts/bench_sampling.py [--steps N] [--threads 1] [--arm 'a0:alpha_thre=0.0'] [--out FILE.json]

``--steps`` defaults to the preset's training length (demo: 4000), so the rays/s cover a whole run as a user
trains it, warm-up included.

``--arm NAME:key=value,...`` adds a run with other ``TrainConfig`` values (JSON); every arm is compared
with "off".
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from fast_anerf.bone_boxes import ray_box_intervals
from fast_anerf.cli import Train
from fast_anerf.config import load_preset
from fast_anerf.data.rays import image_rays
from fast_anerf.data.split import load_split
from fast_anerf.data.synthetic import default_data_dir, generate_dataset
from fast_anerf.evaluate import public
from fast_anerf.renderer import RenderSettings, rays_to_bones, render_rays
from fast_anerf.run_setup import device_model
from fast_anerf.train import Trainer


def make_trainer(name: str, overrides: dict, args) -> Trainer:
    run_dir = args.runs / name
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    trainer = Trainer(
        Train(
            data=args.data,
            out=run_dir,
            preset=args.preset,
            steps=args.steps,
            device=args.device,
            gt_poses=not args.estimated_poses,
            eval_every=0,
            seed=args.seed,
        )
    )
    config = replace(trainer.config, train=replace(trainer.config.train, **overrides))
    trainer.config = config  # gates the grid updates and the render settings
    trainer.model.config = config  # saved with the checkpoint
    trainer.model.use_blend_mask(config.train.occupancy and config.train.occ_blend_mask)
    return trainer


@torch.no_grad()
def render_stats(trainer: Trainer, split_path: Path, n_frames: int) -> dict:
    """Samples per pixel / per box-hitting ray and seconds per image when rendering held-out frames."""
    model, split = trainer.model, load_split(split_path)
    model.eval()
    settings = RenderSettings.from_train(trainer.config.train, training=False)
    frames = torch.linspace(0, split.n_images - 1, min(n_frames, split.n_images)).round().long().unique().tolist()
    pixels = hit_rays = samples = candidates = 0
    seconds = 0.0  # rendering only: the box test that counts hit rays below is not part of it
    for i in frames:
        skts = split.skts[split.pose_idxs[i]].to(trainer.device)
        rays_o, rays_d = image_rays(split.c2ws[i], float(split.focals[i]), tuple(split.centers[i].tolist()),
                                    split.height, split.width)  # fmt: skip
        rays_o, rays_d = rays_o.to(trainer.device), rays_d.to(trainer.device)
        for s in range(0, rays_o.shape[0], trainer.config.train.chunk_rays):
            o, d = rays_o[s : s + trainer.config.train.chunk_rays], rays_d[s : s + trainer.config.train.chunk_rays]
            codes = torch.full((o.shape[0],), -1, dtype=torch.long, device=o.device)
            start = time.perf_counter()
            out = render_rays(model, o, d, skts, codes, torch.ones(3, device=o.device), settings)
            if o.is_cuda:  # kernels run asynchronously: wait for them before reading the clock
                torch.cuda.synchronize()
            seconds += time.perf_counter() - start
            samples += int(out["n_samples"])
            candidates += int(out["n_candidates"])
            origins, directions = rays_to_bones(o, d, skts)
            hit_rays += int(ray_box_intervals(origins, directions, model.box_min, model.box_max)[2].any(-1).sum())
        pixels += rays_o.shape[0]
    seconds /= len(frames)
    return {
        "samples_per_pixel": samples / pixels,
        "samples_per_hit_ray": samples / max(hit_rays, 1),
        "candidates_per_hit_ray": candidates / max(hit_rays, 1),
        "seconds_per_image": seconds,
        "frames": len(frames),
    }


def early_stop_ablation(trainer: Trainer, n_steps: int, block: int = 10) -> dict:
    """Does the no-grad density pass (early termination) pay off? Rays/s and samples/ray with it and without.

    Continues training the converged "on" run (after its evaluation) for ``n_steps`` steps per setting,
    alternating blocks of ``block`` steps so both settings see the same load.
    """
    base = trainer.config
    settings = {"early_stop": base.train.early_stop_eps or 1e-4, "no_early_stop": 0.0}
    seconds = dict.fromkeys(settings, 0.0)
    samples = {name: [] for name in settings}
    done = 0
    while done < n_steps:
        for name, eps in settings.items():
            trainer.config = replace(base, train=replace(base.train, early_stop_eps=eps))
            for _ in range(block):
                start = time.perf_counter()
                stats = trainer.train_step()
                seconds[name] += time.perf_counter() - start
                if stats is not None:
                    samples[name].append(stats["samples_per_ray"])
        done += block
    trainer.config = base
    rays = trainer.pool.rays_per_image * trainer.pool.images_per_batch * done
    return {
        name: {"rays_per_s": rays / seconds[name], "samples_per_ray": sum(samples[name]) / max(len(samples[name]), 1)}
        for name in settings
    }


def _number(value: float | None, spec: str) -> str:
    """A table cell: the value formatted, or n/a (nothing was measured)."""
    return "n/a" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's steps (demo: 4000)")
    parser.add_argument("--block", type=int, default=50, help="steps per run before switching to the other")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--data", type=Path, default=None, help="folder with train/test_view/test_pose .h5")
    parser.add_argument("--estimated-poses", action="store_true", help="train on the noisy estimated poses")
    parser.add_argument("--render-frames", type=int, default=4)
    parser.add_argument("--ablation-steps", type=int, default=100, help="steps per setting (0 = skip)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--arm", action="append", default=[], help="extra run, e.g. 'a0:alpha_thre=0.0' (JSON values)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench_sampling.json"))
    parser.add_argument("--runs", type=Path, default=Path("runs/bench_sampling"))
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.steps is None:
        args.steps = load_preset(args.preset).train.steps
    if args.data is None:
        args.data = default_data_dir()
        generate_dataset(args.data, verbose=False)

    arms = {"on": {}, "off": {"occupancy": False}}
    for spec in args.arm:  # e.g. "on_a0:alpha_thre=0.0,occ_update_every=32"
        name, _, assignments = spec.partition(":")
        arms[name] = {k: json.loads(v) for k, v in (a.split("=", 1) for a in assignments.split(",") if a)}
    runs = {name: make_trainer(f"skip_{name}", overrides, args) for name, overrides in arms.items()}
    warmup = runs["on"].config.train.occ_warmup_steps
    timing = {name: {"all": 0.0, "after_warmup": 0.0, "steps_after_warmup": 0} for name in runs}
    tail = {name: [] for name in runs}  # per-step stats over the last fifth of training
    rays_per_step = runs["on"].pool.rays_per_image * runs["on"].pool.images_per_batch
    print(f"{runs['on'].model.describe()}; {args.steps} steps x {rays_per_step} rays, device {runs['on'].device}")
    while runs["on"].step < args.steps:
        for name, trainer in runs.items():
            for _ in range(min(args.block, args.steps - trainer.step)):
                start = time.perf_counter()
                stats = trainer.train_step()
                spent = time.perf_counter() - start
                trainer.elapsed += spent
                timing[name]["all"] += spent
                if trainer.step > warmup:
                    timing[name]["after_warmup"] += spent
                    timing[name]["steps_after_warmup"] += 1
                if stats is not None and trainer.step > 0.8 * args.steps:
                    tail[name].append(stats)
            print(
                f"[{name:>5}] step {trainer.step:5d}  {trainer.step * rays_per_step / timing[name]['all']:7.0f} rays/s"
                + (f"  samples/ray {stats['samples_per_ray']:5.1f}  psnr {stats['psnr']:.2f}" if stats else "")
                + f"  occupied {trainer.model.occupancy.occupied_fraction:.3f}",
                flush=True,
            )

    rows = {}
    for name, trainer in runs.items():
        final = {split: public(r) for split, r in trainer.evaluate(None).items()}
        trainer.save()
        t = timing[name]
        rows[name] = {
            "steps": trainer.step,
            "train_seconds": round(t["all"], 1),
            "rays_per_s": trainer.step * rays_per_step / t["all"],
            # None when the run ends inside the occupancy warm-up (--steps <= occ_warmup_steps): nothing to time.
            "rays_per_s_after_warmup": (
                t["steps_after_warmup"] * rays_per_step / t["after_warmup"] if t["steps_after_warmup"] else None
            ),
            "samples_per_ray": sum(s["samples_per_ray"] for s in tail[name]) / max(len(tail[name]), 1),
            "candidates_per_ray": sum(s["candidates_per_ray"] for s in tail[name]) / max(len(tail[name]), 1),
            "train_psnr_tail": sum(s["psnr"] for s in tail[name]) / max(len(tail[name]), 1),
            "overrides": arms[name],
            "occupied_fraction": trainer.model.occupancy.occupied_fraction if trainer.config.train.occupancy else 1.0,
            "render": render_stats(trainer, args.data / "test_view.h5", args.render_frames),
            "final": final,
        }

    ablation = early_stop_ablation(runs["on"], args.ablation_steps) if args.ablation_steps > 0 else {}
    device = str(runs["on"].device)
    device_name = device_model(device)
    on, off = rows["on"], rows["off"]
    print(f"\ndevice: {device} ({device_name}), threads {torch.get_num_threads()}, {args.steps} steps, "
          f"poses {'estimated' if args.estimated_poses else 'true'}")  # fmt: skip
    header = (
        f"{'arm':<9} {'samples/ray':>11} {'cand/ray':>9} {'rays/s':>8} {'after wu':>9} "
        f"{'test_view':>9} {'test_pose':>9} {'spp/hit ray':>11} {'s/image':>8}"
    )
    print(header)
    for name, r in rows.items():
        print(
            f"{name:<9} {r['samples_per_ray']:>11.1f} {r['candidates_per_ray']:>9.1f} {r['rays_per_s']:>8.0f} "
            f"{_number(r['rays_per_s_after_warmup'], '.0f'):>9} {r['final']['test_view']['psnr']:>9.2f} "
            f"{r['final']['test_pose']['psnr']:>9.2f} {r['render']['samples_per_hit_ray']:>11.1f} "
            f"{r['render']['seconds_per_image']:>8.2f}"
        )
    for name, r in rows.items():  # every arm against skipping off
        r["speedup"] = r["rays_per_s"] / off["rays_per_s"]
        after = (r["rays_per_s_after_warmup"], off["rays_per_s_after_warmup"])
        r["speedup_after_warmup"] = after[0] / after[1] if None not in after else None
        r["psnr_gap_test_view"] = r["final"]["test_view"]["psnr"] - off["final"]["test_view"]["psnr"]
        r["psnr_gap_test_pose"] = r["final"]["test_pose"]["psnr"] - off["final"]["test_pose"]["psnr"]
        if name != "off":
            print(
                f"{name}/off: rays/s {r['speedup']:.2f}x (after warm-up {_number(r['speedup_after_warmup'], '.2f')}"
                f"{'x' if r['speedup_after_warmup'] is not None else ''}); PSNR test_view "
                f"{r['psnr_gap_test_view']:+.2f} dB, test_pose {r['psnr_gap_test_pose']:+.2f} dB"
            )
    for name, a in ablation.items():
        print(f"on, {name:<13}: {a['rays_per_s']:7.0f} rays/s, {a['samples_per_ray']:5.1f} samples/ray")
    result = {
        "device": device,
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "preset": args.preset,
        "poses": "estimated" if args.estimated_poses else "true",
        "rays_per_step": rays_per_step,
        "speedup": on["speedup"],
        "speedup_after_warmup": on["speedup_after_warmup"],
        "psnr_gap_test_view": on["psnr_gap_test_view"],
        "psnr_gap_test_pose": on["psnr_gap_test_pose"],
        "rows": rows,
        "early_stop_ablation": ablation,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
