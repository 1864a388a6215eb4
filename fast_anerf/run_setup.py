"""What a run starts from, shared by every command that loads a run: the device, the data paths (the built-in
character generated on first use), the rest skeleton, whether poses are refined, and what ``train --resume``
may not change."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from fast_anerf.config import TRAIN_FLAGS, RunConfig, load_preset, preset_train_keys
from fast_anerf.data.split import Split
from fast_anerf.errors import UserError, folder_holds


def pick_device(name: str) -> torch.device:
    """``--device``: ``cpu``, ``cuda`` (a one-line error without CUDA) or ``auto`` (CUDA when available)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_model(device: torch.device | str) -> str:
    """What benchmarks print and write as ``device_name``: the GPU's name, or the CPU's model (/proc/cpuinfo)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def resolve_data(data: Path | None) -> tuple[Path, Path | None]:
    """``(train .h5, folder with held-out splits or None)``; generates the built-in character if needed."""
    if data is None:
        from fast_anerf.data.synthetic import default_data_dir, generate_dataset

        folder = default_data_dir()
        generate_dataset(folder)
        return folder / "train.h5", folder
    data = Path(data)
    if data.is_dir():
        if not (data / "train.h5").is_file():
            holds = folder_holds(data)
            fix = ("pass the training file as --data FILE.h5 and a held-out one as --eval-data FILE.h5" if holds
                   else "pass an .h5 file or a folder holding train.h5")  # fmt: skip
            raise UserError(f"{data}: no train.h5 in this folder{holds}; {fix}")
        held_out = any((data / f"{name}.h5").is_file() for name in ("test_view", "test_pose"))
        return data / "train.h5", data if held_out else None  # a folder of train.h5 alone: no evaluation
    if data.is_file():
        return data, None
    raise UserError(f"{data}: no such file or folder; pass an A-NeRF .h5 or a folder holding train.h5")


def data_fingerprint(split: Split) -> str:
    """What tells a run's training data from another file cheaply: image count and size, and a hash of the
    file's poses (``kp3d``), so that ``--resume`` refuses other data that merely has as many images (and render
    and the viewer do not put its refined poses on it)."""
    return fingerprint(split.n_images, split.height, split.width, split.kp3d)


def images_digest(split: Split, n_samples: int = 8) -> str:
    """A hash of ``n_samples`` evenly spread training images (uint8 pixels) and the count of trainable pixels:
    ``--resume`` refuses data whose images changed while the poses stayed (re-extracted frames, other masks),
    without reading every image of a large file (8 of SURREAL's 10,800 read in milliseconds)."""
    digest = hashlib.sha256(np.asarray(split.sample_counts.numpy(), np.int64).tobytes())
    for i in np.unique(np.linspace(0, split.n_images - 1, n_samples).round().astype(np.int64)):
        digest.update(np.ascontiguousarray(np.asarray(split.images_u8[int(i)])).tobytes())
    return digest.hexdigest()[:16]


def fingerprint(n_images: int, height: int, width: int, kp3d) -> str:
    """``data_fingerprint`` from its parts; ``kp3d [P, 24, 3]`` (array or tensor) is hashed as float32."""
    values = kp3d.detach().cpu() if isinstance(kp3d, torch.Tensor) else torch.as_tensor(np.asarray(kp3d))
    digest = hashlib.sha256(values.float().contiguous().numpy().tobytes()).hexdigest()[:16]
    return f"{n_images}x{height}x{width}:{digest}"


def default_rest_pose(split: Split) -> torch.Tensor:
    """The file's ``rest_pose``; else our built-in rest skeleton scaled to the data's bone lengths."""
    if split.rest_pose is not None:
        return split.rest_pose
    from fast_anerf.data.synthetic import builtin_rest_pose
    from fast_anerf.skeleton import bone_lengths

    rest = torch.as_tensor(builtin_rest_pose(), dtype=torch.float32)
    data_len = bone_lengths(split.kp3d).mean()
    return rest * (data_len / bone_lengths(rest).mean())


def wants_pose_refinement(cfg, split: Split) -> bool:
    """``refine_poses`` "auto": refine when the poses are estimates (not --gt-poses, and differ from gt_kp3d)."""
    if cfg.refine_poses != "auto":
        return cfg.refine_poses == "on"
    if cfg.gt_poses:
        return False
    gt = split.gt_kp3d
    if gt is not None and gt.shape == split.kp3d.shape and torch.allclose(gt, split.kp3d, atol=1e-6):
        return False  # e.g. SURREAL: the stored poses are the true ones
    return True


def refuse_changed_settings(args, stored: RunConfig, ckpt_path: Path, preset: RunConfig | None = None) -> None:
    """A resumed run keeps what defines its model: refuse ``--preset``, ``--field``, ``--seed``, ``--gt-poses``
    and ``--multiview`` when they differ from the checkpoint's config (``UserError`` naming the flag), and a
    ``--preset`` whose ``[field]`` / ``[anerf]`` (or those four ``[train]`` keys) differ from the run's. Other
    ``[train]`` values the preset sets and the run does not share are not used: a warning names them.
    ``preset``: that preset, loaded (default: ``load_preset(args.preset)``)."""
    train = stored.train
    requested = {  # flag: (value asked for, config key, the run's value)
        "--preset": (Path(args.preset).stem if args.preset else None, "preset", stored.preset),
        "--field": (args.field, "field", train.field),
        "--seed": (args.seed, "seed", train.seed),
        "--gt-poses": (True if args.gt_poses else None, "gt_poses", train.gt_poses),
        "--multiview": (True if args.multiview else None, "multiview", train.multiview),
    }
    for flag, (wanted, key, kept) in requested.items():
        if wanted is not None and wanted != kept:
            asked = flag if wanted is True else f"{flag} {wanted}"
            raise UserError(f"{ckpt_path}: {asked} would change the run being resumed (its {key} is {kept}); "
                            "drop the flag, or start a new run in another --out")  # fmt: skip
    if args.preset:  # same name: a .toml elsewhere (or an edited one) may still define another model
        preset = preset if preset is not None else load_preset(args.preset)
        tables = (("field", preset.fast, stored.fast), ("anerf", preset.anerf, stored.anerf))
        for table, wanted, kept in tables:
            changed = sorted(k for k, v in asdict(wanted).items() if v != getattr(kept, k))
            if changed:
                raise UserError(f"{ckpt_path}: --preset {args.preset} would change the run being resumed (its "
                                f"[{table}] differs in {', '.join(changed)}); drop the flag, or start a new run in "
                                "another --out")  # fmt: skip
        _unused_train_values(args, preset, stored, ckpt_path)


def _unused_train_values(args, preset: RunConfig, stored: RunConfig, ckpt_path: Path) -> None:
    """``--resume --preset X`` where X's ``[train]`` was edited since the run began: the run keeps its own
    values (its checkpoint's), so say which of X's are not used, and the flag that would set each one."""
    given = {key for key, flag in TRAIN_FLAGS.items()  # an unset flag is None (False for a switch)
             if getattr(args, flag[2:].replace("-", "_"), None) not in (None, False)}  # fmt: skip
    differ = sorted(k for k in preset_train_keys(args.preset) - given
                    if getattr(preset.train, k) != getattr(stored.train, k))  # fmt: skip
    defining = [k for k in differ if k in ("field", "seed", "gt_poses", "multiview")]
    if defining:
        raise UserError(f"{ckpt_path}: --preset {args.preset} would change the run being resumed (its [train] "
                        f"differs in {', '.join(defining)}); drop the flag, or start a new run in another "
                        "--out")  # fmt: skip
    if differ:
        values = ", ".join(f"{k} = {getattr(preset.train, k)!r} (the run's: {getattr(stored.train, k)!r})"
                           for k in differ)  # fmt: skip
        # Flags a resume accepts (switching pose refinement on or off is refused: another model).
        flags = [TRAIN_FLAGS[k] for k in differ if k in TRAIN_FLAGS and k != "refine_poses"]
        how = f"; pass {', '.join(flags)} to change {'it' if len(flags) == 1 else 'them'}" if flags else ""
        print(f"warning: --preset {args.preset}: [train] {values} not used: a resumed run keeps its own [train] "
              f"values{how}", file=sys.stderr)  # fmt: skip
