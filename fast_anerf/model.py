"""A trained character: the field (fast or A-NeRF), its rest skeleton and bone boxes, and checkpoints.

Checkpoint format (a ``torch.save`` dict, written atomically):
``version``, ``field_type``, ``config`` (plain dict of ``RunConfig``), ``n_frame_codes``, ``model`` (state
dict of ``Character``), and the trainer's ``optimizer``, ``step``, ``torch_rng`` / ``cuda_rng`` / ``pool``
(random states), ``elapsed_s``, ``history``, ``poses`` (refined poses and their optimiser), ``data`` (the training
.h5), ``data_fingerprint`` (what ``--resume`` checks), ``eval_data`` (its held-out folder or file, or None).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fast_anerf.anerf_field import ANeRFField
from fast_anerf.bone_boxes import bone_boxes, skeleton_height
from fast_anerf.config import RunConfig
from fast_anerf.errors import CheckpointError
from fast_anerf.field import FastField
from fast_anerf.run_files import atomic_file
from fast_anerf.sampling.occupancy import BoneOccupancy, density_in_poses

CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"  # in a run's folder


class Character(nn.Module):
    """Field + rest skeleton + bone boxes (world units, joint-local)."""

    def __init__(self, config: RunConfig, rest_pose: torch.Tensor, n_frame_codes: int, backend: str = "auto"):
        super().__init__()
        self.config = config
        rest_pose = torch.as_tensor(rest_pose, dtype=torch.float32).cpu()
        c = config.fast
        box_min, box_max = bone_boxes(rest_pose, c.box_pad, c.torso_pad, c.head_extent, c.hand_extent, c.foot_extent)
        self.register_buffer("rest_pose", rest_pose)  # [24, 3]
        self.register_buffer("box_min", box_min)  # [24, 3]
        self.register_buffer("box_max", box_max)  # [24, 3]
        self.height = skeleton_height(rest_pose)  # world units; sample steps are fractions of it
        self.n_frame_codes = n_frame_codes
        if config.train.field == "fast":
            self.field: nn.Module = FastField(n_frame_codes, box_min, box_max, self.height, c, backend=backend)
        else:
            self.field = ANeRFField(n_frame_codes, config.anerf)
        # Per-bone occupancy grids (fast field only; saved with the weights, see sampling/occupancy.py).
        self.occupancy = (
            BoneOccupancy(box_min, box_max, config.train.occ_resolution) if self.field_type == "fast" else None
        )
        self.use_blend_mask(config.train.occupancy and config.train.occ_blend_mask)

    def use_blend_mask(self, enabled: bool) -> None:
        """Whether the fast field blends a bone only in cells its occupancy grid marks occupied (``field.py``)."""
        if self.occupancy is not None:
            # object.__setattr__: a plain reference, not a second registration of the grids as a submodule
            object.__setattr__(self.field, "blend_mask", self.occupancy if enabled else None)

    @property
    def field_type(self) -> str:
        return self.field.field_type

    def describe(self) -> str:
        return self.field.describe()

    def update_occupancy(self, step: int, skts: torch.Tensor, generator: torch.Generator | None = None) -> bool:
        """nerfacc-style occupancy update at training ``step`` (every ``occ_update_every`` steps).

        ``skts [F, 24, 4, 4]``: the training poses; each visited cell's density is evaluated in a random one.
        ``generator``: for the random cells, jitter and poses; by default a CPU generator seeded from the
        run's seed and ``step``, so resumed runs repeat the same updates without extra saved state, and the
        trainer's own random stream (ray batches, jitter) is the same with the grids on or off.
        Returns whether the grids changed.
        """
        cfg = self.config.train
        if self.occupancy is None or not cfg.occupancy:
            return False  # (BoneOccupancy.update itself skips steps that are not a multiple of the interval)
        if generator is None:
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        eval_fn = density_in_poses(self.field, skts, cfg.step_size * self.height, generator)
        return self.occupancy.update(
            step, eval_fn, generator, cfg.occ_threshold, cfg.occ_ema_decay, cfg.occ_warmup_steps, cfg.occ_update_every
        )


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Save to a temporary file in the same folder, fsync, then rename: never a half-written file; a full disk
    or a read-only folder gives one line naming the file, and the old file stays."""
    with atomic_file(path, "wb", durable=True) as handle:
        try:
            torch.save(obj, handle)  # a Python file, not a path: torch's own C++ writer loses the OSError
        except RuntimeError as error:
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None  # torch's zip writer hides a failed write (full disk) this way
            raise


def save_checkpoint(path: Path, model: Character, **trainer_state: Any) -> None:
    atomic_torch_save(
        {
            "version": CHECKPOINT_VERSION,
            "field_type": model.field_type,
            "config": model.config.to_dict(),
            "n_frame_codes": model.n_frame_codes,
            "model": model.state_dict(),
            **trainer_state,
        },
        path,
    )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint dict; every problem is a one-line ``CheckpointError``."""
    path = Path(path)
    if path.is_dir() and (path / CHECKPOINT_NAME).is_file():  # a run folder: its checkpoint
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; pass the checkpoint.pt written by `fast-anerf train`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated zip, pickle garbage, ...: all mean "damaged"
        kind = type(error).__name__
        raise CheckpointError(
            f"{path}: cannot read the checkpoint ({kind}); it is damaged (e.g. truncated) or not a checkpoint — "
            "pass the checkpoint.pt written by `fast-anerf train`, or retrain"
        ) from None
    if not isinstance(ckpt, dict) or "version" not in ckpt or "model" not in ckpt:
        raise CheckpointError(
            f"{path}: not a fast-anerf checkpoint (no 'version'/'model' keys); pass the checkpoint.pt written by "
            "`fast-anerf train`"
        )
    if ckpt["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {ckpt['version']} but this fast-anerf reads version {CHECKPOINT_VERSION}; "
            "retrain or use the fast-anerf release that wrote it"
        )
    check_checkpoint(ckpt, path)
    return ckpt


def check_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    """Structure, field type and finite weights of a loaded checkpoint dict (``CheckpointError`` naming ``path``),
    so that a damaged checkpoint fails here and not deep inside a command."""

    def bad(problem: str, fix: str = "the file is damaged; retrain or pass another checkpoint") -> CheckpointError:
        return CheckpointError(f"{path}: {problem}; {fix}")

    weights = ckpt["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise bad("its 'model' entry is not a set of weights (a state dict of tensors)")
    config = ckpt.get("config")
    if not isinstance(config, dict) or not all(isinstance(config.get(t, {}), dict) for t in ("train", "fast", "anerf")):
        raise bad(f"its 'config' is {type(config).__name__}, not the run's settings")
    n_codes = ckpt.get("n_frame_codes")
    if not isinstance(n_codes, int) or isinstance(n_codes, bool) or n_codes < 0:
        raise bad(f"its 'n_frame_codes' is {n_codes!r}; expected a count >= 0")
    codes = weights.get("field.frame_codes.weight")
    if codes is not None and codes.shape[0] != max(n_codes, 1):
        raise bad(f"its 'n_frame_codes' is {n_codes} but the weights hold {codes.shape[0]} frame codes")
    field = config.get("train", {}).get("field", "fast")
    if field not in ("fast", "anerf") or ckpt.get("field_type", field) != field:
        raise bad(f"its field type {ckpt.get('field_type')!r} disagrees with its config's field {field!r}")
    rest = weights.get("rest_pose")
    if rest is None or tuple(rest.shape) != (24, 3):
        got = None if rest is None else tuple(rest.shape)
        raise bad(f"its weights lack the rest skeleton 'rest_pose' [24, 3] (got {got})")
    for name, value in weights.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            count = int((~torch.isfinite(value)).sum())
            raise bad(f"weight '{name}' holds {count} non-finite values",
                      "it was saved after training diverged; use an earlier checkpoint or retrain")  # fmt: skip
    if float(skeleton_height(rest.float())) <= 0:
        raise bad("its rest skeleton 'rest_pose' has zero height (all joints at one point)")


def load_character(path: Path, device: str | torch.device = "cpu", backend: str = "auto") -> tuple[Character, dict]:
    """Rebuild the ``Character`` of a checkpoint; returns ``(model, checkpoint_dict)``."""
    ckpt = read_checkpoint(path)
    config = RunConfig.from_checkpoint(ckpt["config"], source=str(path))
    rest_pose = ckpt["model"]["rest_pose"]
    try:
        model = Character(config, rest_pose, ckpt["n_frame_codes"], backend=backend)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as error:  # settings no model can have
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: its config cannot build a model ({first}); the file is damaged") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as error:
        first = " ".join(str(error).split())[:300]
        raise CheckpointError(
            f"{path}: weights do not match the saved config ({first}); the file is damaged or from another "
            "field type — retrain or pass the right checkpoint"
        ) from None
    model = model.to(device)
    # A run stopped mid-schedule renders as it trained (a run that refines its poses saves them).
    step = ckpt.get("step")
    step = step if isinstance(step, int) and not isinstance(step, bool) else 0
    model.field.update_schedule(step, poses_refined=ckpt.get("poses") is not None)
    return model, ckpt
