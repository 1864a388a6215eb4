"""``fast-anerf train``: the training loop, checkpoints (atomic, resumable), logging and final evaluation.

One step: draw a ray batch (``data/split.py``), render it through the posed bone boxes (``renderer.py``),
photometric loss against the pixels composited on their background (A-NeRF §2.6), Adam step.
Ctrl-C saves a checkpoint and exits cleanly; ``--resume`` restores model, optimiser, step and every random
generator, so the result equals an uninterrupted run (on CPU).
"""

from __future__ import annotations

import math
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fast_anerf.config import RunConfig, load_preset, with_overrides
from fast_anerf.data.split import RayPool, Split, load_split
from fast_anerf.errors import CheckpointError, UserError, writing
from fast_anerf.evaluate import evaluate_split, find_eval_splits, format_table, public
from fast_anerf.model import CHECKPOINT_NAME, Character, load_character, read_checkpoint, save_checkpoint
from fast_anerf.pose import PoseRefiner, RefinablePoses, multiview_time_ids, pose_row_paths
from fast_anerf.renderer import RenderSettings, render_rays
from fast_anerf.run_files import check_folder_free, folder_lock, summary_writer, write_json_atomic, write_png_atomic
from fast_anerf.run_setup import (
    data_fingerprint,
    default_rest_pose,
    images_digest,
    pick_device,
    refuse_changed_settings,
    resolve_data,
    wants_pose_refinement,
)


def build_optimizer(model: Character, cfg) -> torch.optim.Adam:
    """Adam with groups: hash grids (lr), MLPs (lr_mlp, small weight decay), appearance codes (lr_framecode)."""
    groups: dict[str, list] = {"grid": [], "mlp": [], "codes": []}
    for name, param in model.field.named_parameters():
        key = "grid" if name.startswith("grid.") else "codes" if name.startswith("frame_codes") else "mlp"
        groups[key].append(param)
    spec = [
        {"params": groups["grid"], "lr": cfg.lr, "base_lr": cfg.lr, "weight_decay": 0.0},
        {"params": groups["mlp"], "lr": cfg.lr_mlp, "base_lr": cfg.lr_mlp, "weight_decay": cfg.weight_decay_mlp},
        {"params": groups["codes"], "lr": cfg.lr_framecode, "base_lr": cfg.lr_framecode, "weight_decay": 0.0},
    ]
    # fused=True: one kernel over all tensors; on CPU ~10x cheaper than the per-tensor loop for big grids.
    groups = [g for g in spec if g["params"]]
    return torch.optim.Adam(groups, betas=(0.9, cfg.adam_beta2), eps=cfg.adam_eps, fused=True)


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every entry of every tensor is finite, in one read of each (no bool tensor per entry).

    A sum is non-finite exactly when an entry is inf/nan, or when finite entries overflow float32 (~1e38):
    such gradients would be useless anyway, so flagging them too is the safe side. ~30x faster than
    ``isfinite(t).all()`` on the 6 M-entry demo grid gradient (0.4 vs 13 ms per step on this CPU).
    """
    if not tensors:
        return True
    return bool(torch.isfinite(torch.stack([t.sum(dtype=torch.float32) for t in tensors])).all())


REFINED_POSES_NAME = "refined_poses.h5"


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links or relative paths); False when either is missing."""
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def photometric_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "l1":
        return (pred - target).abs().mean()
    if kind == "huber":
        return torch.nn.functional.huber_loss(pred, target, delta=0.1)
    return (pred - target).pow(2).mean()


class Trainer:
    """Holds everything a run needs; ``run()`` trains, checkpoints, evaluates."""

    def __init__(self, args) -> None:
        # Adam's moments of rarely touched hash entries decay into denormal floats within ~1000 steps, which
        # slow CPU arithmetic ~10x (measured: 0.16 s -> 1.2 s per step); flush them to zero instead. First: torch's
        # worker threads copy the setting when they start, and reading a checkpoint (--resume) starts them.
        torch.set_flush_denormal(True)
        self.out = Path(args.out)
        self.ckpt_path = self.out / CHECKPOINT_NAME
        resume_state = None
        check_folder_free(self.out, "train")
        self.resuming = bool(args.resume)
        if args.resume:
            if not self.out.is_dir():
                raise UserError(f"{self.out}: no such run folder to resume; pass the --out of the run (the folder "
                                f"holding {CHECKPOINT_NAME})")  # fmt: skip
            if not self.ckpt_path.is_file():
                raise CheckpointError(f"{self.ckpt_path}: no checkpoint to resume from (the run stopped before its "
                                      "first checkpoint); start it again without --resume")  # fmt: skip
            resume_state = read_checkpoint(self.ckpt_path)
            config = RunConfig.from_checkpoint(resume_state["config"], source=str(self.ckpt_path))
            refuse_changed_settings(args, config, self.ckpt_path, load_preset(args.preset) if args.preset else None)
            stored = resume_state.get("data")
            data_arg = args.data if args.data is not None or not stored else Path(stored)
            if args.data is None and stored and not Path(stored).exists():
                raise UserError(f"{self.ckpt_path}: the run's data {stored} is gone (moved?); pass its new place "
                                "with --data")  # fmt: skip
        else:
            if self.ckpt_path.exists():
                raise UserError(f"{self.ckpt_path} exists; pass --resume to continue it or choose another --out")
            config = load_preset(args.preset or "demo")
            data_arg = args.data
        config = with_overrides(
            config,
            field=args.field,
            steps=args.steps,
            max_minutes=args.max_minutes,
            seed=args.seed,
            eval_every=args.eval_every,
            gt_poses=True if args.gt_poses else None,
            refine_poses=args.refine_poses,
            pose_stop=args.pose_stop,
            temp_coef=args.temp_coef,
            pose_lr_decay_rate=args.pose_lr_decay,
            multiview=True if args.multiview else None,
            backend=args.backend if args.backend != "auto" else None,
            device=args.device if args.device != "auto" else None,
        )
        if args.resume and not torch.cuda.is_available():
            # A run started on a GPU (device cuda, backend tcnn) resumes on this CPU with the default flags; a
            # stored "cuda" would refuse to run here. Choices that can run here are kept.
            config = with_overrides(
                config,
                device="auto" if args.device == "auto" and config.train.device == "cuda" else None,
                backend="auto" if args.backend == "auto" and config.train.backend == "tcnn" else None,
            )
        self.config = config
        cfg = config.train
        self.device = pick_device(cfg.device)
        self.train_path, self.eval_dir = resolve_data(data_arg)
        if args.eval_data is not None:
            self.eval_dir = Path(args.eval_data)
        elif resume_state is not None and resume_state.get("eval_data"):
            # The run's own held-out data (its "data" may be the training .h5 alone, whose folder holds none),
            # also when --data names the training data again; if that moved, its new folder's held-out files.
            stored = Path(resume_state["eval_data"])
            if args.data is None or stored.exists():
                self.eval_dir = stored
        self.split = load_split(self.train_path, keep_masks=False)
        self.data_fingerprint = data_fingerprint(self.split)
        stored_fingerprint = resume_state.get("data_fingerprint") if resume_state is not None else None
        self.images_digest = images_digest(self.split)
        stored_images = resume_state.get("images_digest") if resume_state is not None else None
        for stored, now, what in ((stored_fingerprint, self.data_fingerprint, "other poses or image count"),
                                  (stored_images, self.images_digest, "other images or masks")):  # fmt: skip
            if stored not in (None, now):  # None: a checkpoint of an older version
                raise UserError(f"{self.ckpt_path}: {self.train_path} is not the data this run trained on ({what}); "
                                f"pass the run's own --data ({resume_state.get('data')}), or start a new run in "
                                "another --out")  # fmt: skip
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.model = Character(config, default_rest_pose(self.split), self.split.n_images, backend=cfg.backend)
        self.model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.pool = RayPool(self.split, cfg.rays_per_batch, cfg.images_per_batch, self.generator)
        if cfg.gt_poses and self.split.gt_skts is None:
            raise UserError(
                f"{self.train_path}: --gt-poses needs the key 'gt_skts', which this file lacks; drop the flag"
            )
        self.skts = (self.split.gt_skts if cfg.gt_poses else self.split.skts).to(self.device)
        self.pose_idxs = self.split.pose_idxs.to(self.device)
        if cfg.gt_poses and cfg.refine_poses == "on":
            if resume_state is not None:
                raise UserError(f"{self.ckpt_path}: this run trains on the file's true poses (gt_poses), which are not "
                                "refined; drop --refine-poses on")  # fmt: skip
            raise UserError("--gt-poses trains on the file's true poses, --refine-poses on refines its estimated ones; "
                            "drop one of the two flags")  # fmt: skip
        self.refiner = self._make_refiner() if wants_pose_refinement(cfg, self.split) else None
        if self.refiner is not None and _same_file(self.train_path, self.out / REFINED_POSES_NAME):
            raise UserError(f"{self.train_path}: the run would write its refined poses over its own --data; copy the "
                            "file elsewhere or choose another --out")  # fmt: skip
        if resume_state is not None and resume_state.get("poses") is not None and self.refiner is None:
            asked = f"--refine-poses {args.refine_poses}" if args.refine_poses else "this --data"
            raise UserError(f"{self.ckpt_path}: the run refines its poses; resuming without refinement ({asked}) "
                            "would drop them. Resume without that flag, or, once the run has finished, train a new "
                            f"model on them in another --out: --data {self.out / 'refined_poses.h5'} "
                            "--refine-poses off")  # fmt: skip
        if resume_state is not None and resume_state.get("poses") is None and self.refiner is not None:
            asked = f"--refine-poses {args.refine_poses}" if args.refine_poses else "this --data"
            raise UserError(f"{self.ckpt_path}: the run trains on fixed poses; resuming with refinement ({asked}) "
                            "would start moving them mid-run. Resume without that flag, or start a new run in "
                            "another --out")  # fmt: skip
        self.step = 0
        self.elapsed = 0.0
        self.history: list[dict] = []
        if resume_state is not None:
            self._restore(resume_state)
            if self.step > cfg.steps:  # a checkpoint saved with a shorter --steps would end the run for good
                raise UserError(f"{self.ckpt_path}: the run has done {self.step} steps, more than --steps "
                                f"{cfg.steps}; pass --steps {self.step} or more")  # fmt: skip
            if self.step == cfg.steps:  # not an error: a job script that always resumes must be rerunnable
                print(f"{self.ckpt_path}: the run has done its {self.step} steps; evaluating only (pass --steps with "
                      "more to train further)")  # fmt: skip
            limit = cfg.max_minutes * 60.0
            if 0 < limit <= self.elapsed and self.step < cfg.steps:  # it would stop at once, having done nothing
                raise UserError(f"{self.ckpt_path}: the run has used its time limit ({self.elapsed / 60:.1f} of "
                                f"max_minutes {cfg.max_minutes:g}); pass --max-minutes with more (0 = no limit) to "
                                "train further")  # fmt: skip
        # Held-out splits, read once now: a damaged file fails before training, and evaluations reuse them.
        paths = find_eval_splits(self.eval_dir) if self.eval_dir is not None else {}
        self.eval_splits: dict[str, Split] = {name: load_split(path) for name, path in paths.items()}
        self._interrupted = False
        self._bad_steps = 0

    def _make_refiner(self) -> PoseRefiner:
        cfg, split = self.config.train, self.split
        time_ids = None
        if cfg.multiview:
            time_ids = multiview_time_ids(self.train_path, self.split.pose_idxs, self.split.skts.shape[0])
        poses = RefinablePoses(split.bones, split.kp3d[:, 0], self.model.rest_pose, time_ids).to(self.device)
        paths = pose_row_paths(split.pose_idxs, split.img_paths, poses.n_poses)
        jitter = (cfg.pose_jitter_rot, cfg.pose_jitter_trans * float(self.model.height), cfg.seed)
        return PoseRefiner(poses, cfg.pose_lr, cfg.pose_step_every, cfg.pose_start, cfg.pose_stop,
                           cfg.pose_reg_coef, cfg.pose_reg_tol, cfg.temp_coef, paths, jitter)  # fmt: skip

    # ----------------------------------------------------------------------------------------------
    def _restore(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.pool.load_state_dict(state["pool"])
            torch.set_rng_state(state["torch_rng"])
            cuda_rng = state.get("cuda_rng")  # density noise draws on the GPU; restored on the same GPU count
            if cuda_rng is not None and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_rng)
            self.step = int(state["step"])
            self.elapsed = float(state["elapsed_s"])
            self.history = list(state.get("history", []))
            if self.refiner is not None and state.get("poses") is not None:
                self.refiner.load_state_dict(state["poses"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            what = f"no {error}" if isinstance(error, KeyError) else " ".join(str(error).split())[:200]
            raise CheckpointError(
                f"{self.ckpt_path}: cannot resume ({type(error).__name__}: {what}); the checkpoint is damaged or "
                "from other data — start a new run without --resume (another --out) or pass the run's --data"
            ) from None

    def save(self) -> Path:
        save_checkpoint(
            self.ckpt_path,
            self.model,
            optimizer=self.optimizer.state_dict(),
            step=self.step,
            elapsed_s=self.elapsed,
            pool=self.pool.state_dict(),
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            data=str(self.train_path.resolve()),  # absolute: eval / render / view run from anywhere
            data_fingerprint=self.data_fingerprint,
            images_digest=self.images_digest,
            eval_data=str(self.eval_dir.resolve()) if self.eval_dir is not None else None,
            history=self.history,
            poses=self.refiner.state_dict() if self.refiner is not None else None,
        )
        return self.ckpt_path

    def _set_lr(self) -> None:
        cfg = self.config.train
        factor = cfg.decay_rate ** (self.step / cfg.decay_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        if self.refiner is not None:
            pose_factor = cfg.pose_lr_decay_rate ** (self.step / cfg.decay_steps)
            for group in self.refiner.optimizer.param_groups:
                group["lr"] = cfg.pose_lr * pose_factor

    def train_step(self) -> dict | None:
        """One optimisation step; returns its stats, or None when it was skipped (non-finite loss)."""
        cfg = self.config.train
        self.model.train()
        self.model.field.update_schedule(self.step, poses_refined=self.refiner is not None)
        if cfg.occupancy and cfg.occ_update_every > 0 and self.step % cfg.occ_update_every == 0:
            # Occupancy grids from the field's density in the current training poses (sampling/occupancy.py).
            with torch.no_grad():
                all_skts = self.skts if self.refiner is None else self.refiner.poses()[1]
            self.model.update_occupancy(self.step, all_skts)  # its own generator, seeded by step
        batch = {k: v.to(self.device) for k, v in self.pool.next_batch().items()}
        rows = self.pose_idxs.index_select(0, batch["image_idx"])
        pose_loss = torch.zeros((), device=self.device)
        if self.refiner is not None:
            skts, pose_loss = self.refiner.skts(rows, self.step + 1)
        else:
            skts = self.skts.index_select(0, rows)  # [B, 24, 4, 4]; index_select: ~9x faster than skts[rows] here
        settings = RenderSettings.from_train(cfg, training=True)
        out = render_rays(
            self.model,
            batch["rays_o"],
            batch["rays_d"],
            skts,
            batch["image_idx"],
            batch["background"],
            settings,
            generator=self.generator,
        )
        loss = photometric_loss(out["rgb"], batch["rgb"], cfg.loss) + pose_loss
        # Keep the (large, dense) grid gradient buffer: the grid's backward adds into it in place.
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        params = list(self.model.parameters()) + (list(self.refiner.poses.parameters()) if self.refiner else [])
        # One finiteness read for the loss and every gradient (poses too): on a GPU, one host sync, not two.
        finite = all_finite([loss.detach()] + [p.grad for p in params if p.grad is not None])
        self.step += 1
        if not finite:
            self._bad_steps += 1
            print(f"step {self.step}: non-finite loss or gradient, step skipped")
            if self.refiner is not None:
                self.refiner.optimizer.zero_grad(set_to_none=True)
            if self._bad_steps >= cfg.max_bad_steps:
                saved = self.ckpt_path.is_file()
                last = f"the last good checkpoint is {self.ckpt_path}" if saved else "no checkpoint was written yet"
                raise UserError(
                    f"{self._bad_steps} consecutive non-finite steps (loss or gradient) up to step {self.step} "
                    f"(max_bad_steps {cfg.max_bad_steps}); stopped, {last}. Lower the learning rate or check the data"
                )
            return None
        self._bad_steps = 0
        self._set_lr()
        self.optimizer.step()
        if self.refiner is not None:
            self.refiner.after_backward(self.step)
        mse = float((out["rgb"].detach() - batch["rgb"]).pow(2).mean())
        return {
            "loss": float(loss.detach()),
            "psnr": -10 * math.log10(max(mse, 1e-10)),
            "samples_per_ray": int(out["n_samples"]) / batch["rgb"].shape[0],
            "candidates_per_ray": int(out["n_candidates"]) / batch["rgb"].shape[0],  # density-only pass
        }

    def evaluate(self, max_frames: int | None) -> dict[str, dict]:
        settings = RenderSettings.from_train(self.config.train, training=False)
        self.model.eval()
        # The field as a checkpoint of this step loads (load_character), also when a finished run is resumed.
        self.model.field.update_schedule(self.step, poses_refined=self.refiner is not None)
        results = {}
        for name, split in self.eval_splits.items():
            results[name] = evaluate_split(self.model, split, settings, max_frames, chunk=self.config.train.chunk_rays)
        return results

    def _preview(self, results: dict[str, dict], writer) -> None:
        for name, result in results.items():
            pred, gt = result["_preview"]
            image = (torch.cat([pred, gt], dim=1).numpy() * 255).round().astype(np.uint8)
            write_png_atomic(self.out / "previews" / f"{name}_step{self.step:06d}.png", image)
            if writer is not None:
                writer.add_image(f"preview/{name}", image, self.step, dataformats="HWC")
                writer.add_scalar(f"eval/{name}/psnr", result["psnr"], self.step)
                writer.add_scalar(f"eval/{name}/psnr_fg", result["psnr_fg"], self.step)

    # ----------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train, checkpoint, evaluate. The data is in memory by now, so an ``OSError`` (a full disk, TensorBoard's
        writer failing) is an output problem: one line naming OUT, and the last checkpoint stays as it was."""
        with writing(self.out):  # an unwritable OUT fails now, in one line, not at the first checkpoint
            self.out.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.out).close()
        # Held for the whole run: another train into this folder is refused (their checkpoints would replace
        # each other); checked again here, since both may have passed the check in __init__ at once.
        with writing(self.out), folder_lock(self.out, "train"):
            if not self.resuming and self.ckpt_path.exists():
                raise UserError(f"{self.ckpt_path} exists; pass --resume to continue it or choose another --out")
            for stale in self.out.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # left by a killed run mid-save
                stale.unlink(missing_ok=True)
            return self._run()

    def _run(self) -> dict:
        cfg = self.config.train
        writer = summary_writer(self.out / "tb")
        print(
            f"{self.model.describe()}\ndevice {self.device}; data {self.train_path} "
            f"({self.split.n_images} images {self.split.height}x{self.split.width}, {len(self.pool):,} rays)"
        )
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        deadline = cfg.max_minutes * 60.0 if cfg.max_minutes > 0 else math.inf
        rays_per_step = self.pool.rays_per_image * self.pool.images_per_batch
        # The last logged training stats: a resumed run that trains no further still reports its own.
        stats_keys = ("loss", "psnr", "samples_per_ray", "candidates_per_ray")  # train_step's
        last = {k: v for k, v in self.history[-1].items() if k in stats_keys} if self.history else None
        window_start, window_steps, first_step = time.perf_counter(), 0, self.step
        try:
            while self.step < cfg.steps and self.elapsed < deadline and not self._interrupted:
                t0 = time.perf_counter()
                stats = self.train_step()
                self.elapsed += time.perf_counter() - t0
                window_steps += 1
                if stats is not None:
                    last = stats
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rate = window_steps * rays_per_step / max(time.perf_counter() - window_start, 1e-9)
                    window_start, window_steps = time.perf_counter(), 0
                    if last is not None:
                        record = {
                            "step": self.step,
                            "elapsed_s": round(self.elapsed, 2),
                            "rays_per_s": round(rate),
                            **{k: round(v, 4) for k, v in last.items()},
                        }
                        self.history.append(record)
                        print(
                            f"step {self.step:>6}/{cfg.steps}  psnr {last['psnr']:6.2f}  loss {last['loss']:.5f}  "
                            f"{rate:8.0f} rays/s  {last['samples_per_ray']:5.1f} samples/ray  "
                            f"{self.elapsed:7.1f}s",
                            flush=True,
                        )
                        if writer is not None:
                            for key in ("loss", "psnr", "samples_per_ray"):
                                writer.add_scalar(f"train/{key}", last[key], self.step)
                            writer.add_scalar("train/rays_per_s", rate, self.step)
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save()
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.eval_splits:
                    results = self.evaluate(cfg.eval_frames)
                    self._preview(results, writer)
                    summary = ", ".join(f"{n} {r['psnr']:.2f} dB (fg {r['psnr_fg']:.2f})" for n, r in results.items())
                    print(f"eval at step {self.step}: {summary}", flush=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        # A resumed run that ran no step leaves its checkpoint as it was (same state; nothing to rewrite).
        path = self.save() if self.step != first_step or not self.ckpt_path.is_file() else self.ckpt_path
        if self._interrupted:
            print(f"interrupted at step {self.step}; checkpoint saved to {path} (continue with --resume)")
            return {}
        final = {}
        if self.eval_splits:
            results = self.evaluate(None)
            self._preview(results, writer)
            final = {name: public(r) for name, r in results.items()}
            print(format_table(final))
        summary = {
            "step": self.step,
            "train_seconds": round(self.elapsed, 2),
            "device": str(self.device),
            "field": self.model.describe(),
            "config": self.config.to_dict(),
            "splits": final,
            "train_psnr_last": last["psnr"] if last else None,
            "poses": self.finish_poses(),
        }
        write_json_atomic(self.out / "eval.json", summary)
        print(f"trained {self.step} steps in {self.elapsed:.1f}s; checkpoint {path}; metrics {self.out / 'eval.json'}")
        if writer is not None:
            writer.close()
        return summary

    def finish_poses(self) -> dict | None:
        """Pose errors before/after refinement (printed) and the refined poses exported as an A-NeRF .h5."""
        if self.refiner is None:
            return None
        from fast_anerf.pose_io import export_refined_poses
        from fast_anerf.pose_metrics import refinement_errors

        refined = self.refiner.poses.export()
        path = export_refined_poses(self.train_path, self.out / REFINED_POSES_NAME, refined)
        result: dict = {"refined_poses": str(path)}
        result.update(refinement_errors(self.split, refined["kp3d"]) or {})
        print(f"refined poses: {path}")
        return result

    @property
    def interrupted(self) -> bool:
        """Whether Ctrl-C stopped the run (its checkpoint was saved; no evaluation, no eval.json)."""
        return self._interrupted

    def _on_sigint(self, signum, frame) -> None:
        if self._interrupted:  # a second Ctrl-C: give up immediately (the last checkpoint is intact)
            raise KeyboardInterrupt
        self._interrupted = True
        print("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to abort)", flush=True)


__all__ = ["Trainer", "pick_device", "load_character"]
