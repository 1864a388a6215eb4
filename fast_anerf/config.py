"""Settings as frozen dataclasses, read from TOML presets in ``configs/`` and saved as plain data.

A preset file has up to three tables, ``[field]``, ``[anerf]`` and ``[train]``, whose keys are the field
names below; missing keys keep the defaults. Derived values are properties. Checkpoints store
``asdict(RunConfig)`` (plain JSON-able data, never class paths) and rebuild it with ``RunConfig.from_dict``.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from fast_anerf.anerf_field import ANeRFFieldConfig
from fast_anerf.errors import UserError

# The presets' copy inside an installed wheel, else configs/ beside the package (a checkout, an editable install).
CONFIG_DIR = next(
    (d for d in (Path(__file__).resolve().parent / "configs", Path(__file__).resolve().parent.parent / "configs")
     if d.is_dir()),
    Path(__file__).resolve().parent.parent / "configs",
)  # fmt: skip


@dataclass(frozen=True)
class FastFieldConfig:
    """The per-bone hash-grid field (``fast_anerf.field.FastField``)."""

    # Hash grid per bone (tiny-cuda-nn HashGrid semantics; see encoding/hashgrid.py).
    n_levels: int = 8
    n_features_per_level: int = 2
    log2_hashmap_size: int = 14
    base_resolution: int = 4
    per_level_scale: float = 1.49999  # not 1.5: no integral level scales (configs/demo.toml says why)
    # MLPs (tiny-cuda-nn layout, no biases).
    geo_feature_dim: int = 15  # extra outputs of the density MLP that feed the colour MLP
    density_neurons: int = 64
    density_hidden_layers: int = 1
    color_neurons: int = 64
    color_hidden_layers: int = 2
    density_bias: float = 3.5  # raw-density offset: at init sigma = e^3.5 per skeleton height, a fog that
    # gradients carve quickly (from ~0 density the exp activation learns far slower; measured)
    sh_degree: int = 4  # spherical-harmonics degree of the bone-relative view direction
    framecode_dim: int = 16  # A-NeRF's per-frame appearance code; 0 disables it
    # Bone boxes, as a fraction of the skeleton's height (so they scale with the data's units).
    box_pad: float = 0.065  # margin around each limb bone segment (body thickness)
    torso_pad: float = 0.11  # margin around pelvis, spine and head bones (wider than limbs)
    head_extent: float = 0.06  # how far the head box reaches beyond the head joint (plus torso_pad)
    hand_extent: float = 0.07
    foot_extent: float = 0.05
    blend_margin: float = 0.15  # fraction of the box (per side) over which a bone's weight fades to 0
    # Coarse-to-fine (field.py): the hash levels fade in over the first N training steps (0 = all on from the
    # start), beginning with this many levels fully on.
    coarse_to_fine_steps: int = 0
    coarse_to_fine_start: float = 2.0

    def __post_init__(self) -> None:
        """Values no field can be built with fail here, as one line naming the key (the hash grid's and MLPs'
        own checks would otherwise surface as a traceback, some only at the first training step)."""
        checks = (
            ("n_levels", 1 <= self.n_levels <= 128, "in 1..128 (tiny-cuda-nn's limit)"),
            ("n_features_per_level", self.n_features_per_level in (1, 2, 4, 8), "1, 2, 4 or 8 (tiny-cuda-nn's)"),
            ("log2_hashmap_size", 1 <= self.log2_hashmap_size <= 30, "in 1..30"),
            ("base_resolution", self.base_resolution >= 1, ">= 1"),
            ("per_level_scale", self.per_level_scale >= 1.0, ">= 1.0"),
            ("geo_feature_dim", self.geo_feature_dim >= 0, ">= 0"),
            ("density_neurons", self.density_neurons >= 1, ">= 1"),
            ("color_neurons", self.color_neurons >= 1, ">= 1"),
            ("density_hidden_layers", self.density_hidden_layers >= 0, ">= 0"),
            ("color_hidden_layers", self.color_hidden_layers >= 0, ">= 0"),
            ("sh_degree", 1 <= self.sh_degree <= 4, "in 1..4"),
            ("framecode_dim", self.framecode_dim >= 0, ">= 0 (0 = no appearance codes)"),
            ("blend_margin", 0 < self.blend_margin <= 0.5, "in (0, 0.5] (a fraction of the box per side)"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} = {getattr(self, name)!r} must be {expected}")
        for name in ("box_pad", "torso_pad", "head_extent", "hand_extent", "foot_extent"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} = {getattr(self, name)!r} must be >= 0 (a fraction of the height)")
        if self.coarse_to_fine_steps < 0:
            raise ValueError(f"coarse_to_fine_steps = {self.coarse_to_fine_steps} must be >= 0 (0 = off)")
        if not 0 <= self.coarse_to_fine_start <= self.n_levels:
            start, levels = self.coarse_to_fine_start, self.n_levels
            raise ValueError(f"coarse_to_fine_start = {start} must be within 0-{levels} (n_levels)")

    @property
    def hashgrid(self):
        from fast_anerf.encoding.hashgrid import HashGridConfig

        return HashGridConfig(
            n_levels=self.n_levels,
            n_features_per_level=self.n_features_per_level,
            log2_hashmap_size=self.log2_hashmap_size,
            base_resolution=self.base_resolution,
            per_level_scale=self.per_level_scale,
        )


@dataclass(frozen=True)
class TrainConfig:
    """The training loop, ray sampling and rendering settings."""

    field: Literal["fast", "anerf"] = "fast"
    steps: int = 2000
    max_minutes: float = 0.0  # 0 = no time limit
    seed: int = 0
    rays_per_batch: int = 2048
    images_per_batch: int = 64  # distinct images per batch; rays are drawn inside their sampling masks
    # Sampling along rays: a fixed step (a fraction of the skeleton's height) inside the bone boxes,
    # or A-NeRF's n stratified samples between near and far when n_samples > 0.
    step_size: float = 0.012
    n_samples: int = 0
    gt_poses: bool = False  # train on the file's true poses (gt_skts) instead of its estimated ones
    cull_to_boxes: bool = True  # evaluate the field only inside some bone box (the fast field is 0 outside)
    density_noise_std: float = 0.0  # A-NeRF's raw_noise_std (1.0 there), added before the density activation
    # Empty-space skipping (fast field only; sampling/occupancy.py): per-bone occupancy grids, nerfacc's rule.
    occupancy: bool = True  # march only through occupied cells and stop rays once opaque
    occ_blend_mask: bool = True  # a bone enters the field's blend only in its occupied cells (field.py)
    occ_resolution: int = 16  # cells per axis of each bone's box (13-38 mm on the built-in body; step 19 mm)
    occ_update_every: int = 16  # training steps between grid updates
    occ_warmup_steps: int = 256  # before this step every update evaluates every cell
    occ_ema_decay: float = 0.7  # nerfacc: 0.95 for 20k-step runs; ours are 1-4k steps, so forget fog faster
    occ_threshold: float = 0.01  # occupied if sigma * step (one step's optical thickness) exceeds this
    # Which marching implementation (sampling/march.py): "auto" = nerfacc's on CUDA, the C loop on the CPU (else
    # torch). All give the same samples; the choice is for speed comparisons (e.g. scripts/bench_view.py --march).
    march_backend: Literal["auto", "torch", "cpu", "nerfacc"] = "auto"
    early_stop_eps: float = 1e-4  # drop samples once the transmittance falls below this
    alpha_thre: float = 0.01  # drop samples with opacity below min(this, mean occupancy) (nerfacc examples: 1e-2)
    # Optimiser: Adam with exponential decay lr = lr * decay_rate ** (step / decay_steps).
    lr: float = 1e-1  # hash grids: 0.1 learned ~2x faster than Instant-NGP's 1e-2 here (measured)
    lr_mlp: float = 1e-2
    lr_framecode: float = 1e-3
    decay_rate: float = 0.1
    decay_steps: int = 20000
    adam_eps: float = 1e-15
    adam_beta2: float = 0.99  # Instant-NGP's; A-NeRF's 0.999 (configs/anerf.toml)
    weight_decay_mlp: float = 1e-6
    loss: Literal["mse", "l1", "huber"] = "mse"
    # Logging, evaluation, checkpoints.
    eval_every: int = 500  # 0 = only at the end
    eval_frames: int = 8  # frames per held-out split evaluated during training (all at the end)
    log_every: int = 25
    ckpt_every: int = 250
    chunk_rays: int = 4096  # rays per chunk when rendering full images
    backend: Literal["auto", "torch", "cpu", "tcnn"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    # Pose refinement (A-NeRF §3): "auto" refines when the data's poses are estimates (they differ from
    # gt_kp3d, or there is no gt_kp3d) and training does not use --gt-poses.
    refine_poses: Literal["auto", "on", "off"] = "auto"
    pose_lr: float = 1e-3
    pose_lr_decay_rate: float = 1.0  # the pose lr is multiplied by this over decay_steps (exponential; 1 = constant)
    pose_jitter_rot: float = 0.0  # training-time pose jitter (pose.py): rotation sigma, radians
    pose_jitter_trans: float = 0.0  # and translation sigma, a fraction of the skeleton height
    pose_step_every: int = 1  # A-NeRF steps its pose optimiser every 20-50 iterations (of 500k)
    pose_start: int = 200  # poses move after this many steps (the body needs a rough shape first)
    pose_stop: int = 0  # poses freeze from this step on (A-NeRF's --opt_pose_stop); 0 = never
    pose_reg_coef: float = 2.0  # A-NeRF's opt_pose_coef
    pose_reg_tol: float = 0.01  # A-NeRF's opt_pose_tol
    temp_coef: float = 0.0  # temporal smoothness weight (A-NeRF's --temp_coef 0.05 with --use_temp_loss)
    multiview: bool = False  # images with the same kp_idxs share non-root rotations (A-NeRF's --multiview)

    def __post_init__(self) -> None:
        """Values no run can use fail here, as one line naming the key (not as a traceback mid-training)."""
        positive = ("steps", "step_size", "rays_per_batch", "images_per_batch", "log_every", "chunk_rays",
                    "eval_frames", "decay_steps", "occ_resolution", "decay_rate", "pose_lr_decay_rate")  # fmt: skip
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} = {getattr(self, name)!r} must be > 0")
        # 0 means "never" / "none" for these (e.g. occ_update_every = 0 keeps the grids as they are).
        for name in ("max_minutes", "n_samples", "eval_every", "ckpt_every", "occ_update_every", "lr",
                     "lr_mlp", "pose_lr", "temp_coef", "pose_reg_coef", "pose_reg_tol", "density_noise_std",
                     "pose_jitter_rot", "pose_jitter_trans"):  # fmt: skip
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} = {getattr(self, name)!r} must be >= 0")
        if not 0 <= self.adam_beta2 < 1:
            raise ValueError(f"adam_beta2 = {self.adam_beta2!r} must be in [0, 1)")
        if self.rays_per_batch < self.images_per_batch:
            raise ValueError(f"rays_per_batch = {self.rays_per_batch} is below images_per_batch = "
                             f"{self.images_per_batch} (at least one ray per image)")  # fmt: skip


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; saved in every checkpoint."""

    preset: str = "demo"
    train: TrainConfig = field(default_factory=TrainConfig)
    fast: FastFieldConfig = field(default_factory=FastFieldConfig)
    anerf: ANeRFFieldConfig = field(default_factory=ANeRFFieldConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_checkpoint(data: dict[str, Any], source: str = "checkpoint") -> RunConfig:
        """``from_dict`` for a checkpoint's config: runs saved before ``occ_blend_mask`` existed were trained
        without the mask, so they keep rendering without it; ``steps = 0``, accepted once, reads as 1."""
        if data.get("train", {}).get("steps") == 0:  # saved by `train --steps 0` before that was refused
            data = {**data, "train": {**data["train"], "steps": 1}}
        config = RunConfig.from_dict(data, source)
        if "occ_blend_mask" not in data.get("train", {}):
            config = replace(config, train=replace(config.train, occ_blend_mask=False))
        return config

    @staticmethod
    def from_dict(data: dict[str, Any], source: str = "checkpoint", fast_table: str = "fast") -> RunConfig:
        """``fast_table``: the fast field's table as the source names it in errors (presets call it [field])."""
        return RunConfig(
            preset=str(data.get("preset", "custom")),
            train=_build(TrainConfig, data.get("train", {}), source, "train"),
            fast=_build(FastFieldConfig, data.get("fast", {}), source, fast_table),
            anerf=_build(ANeRFFieldConfig, data.get("anerf", {}), source, "anerf"),
        )


def _build(cls, values: dict[str, Any], source: str, table: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(
            f"{source}: unknown key(s) {unknown} in [{table}]; remove or rename them (valid keys: {sorted(known)})"
        )
    converted = {}
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        default = getattr(cls(), name)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not _fits(hints[name], value):
            expected = typing.get_args(hints[name]) if typing.get_origin(hints[name]) is Literal else default
            raise UserError(f"{source}: [{table}] {name} = {value!r} is not valid (expected a value like "
                            f"{expected!r}); fix that value")  # fmt: skip
        converted[name] = value
    try:
        return cls(**converted)
    except (TypeError, ValueError) as error:  # a config's own checks (e.g. ANeRFFieldConfig.__post_init__)
        raise UserError(f"{source}: [{table}] {error}; fix those values") from None


def _fits(hint: Any, value: Any) -> bool:
    """Whether a (TOML or checkpoint) value has the type of a config field: a wrong type fails here, not deep
    inside model construction."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, tuple) and all(_fits(typing.get_args(hint)[0], v) for v in value)
    return True


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_preset(name_or_path: str) -> RunConfig:
    """Read a preset by name (``configs/<name>.toml``) or path into a ``RunConfig``."""
    path, data = _read_preset(name_or_path)
    return RunConfig.from_dict(
        {
            "preset": path.stem,
            "train": data.get("train", {}),
            "fast": data.get("field", {}),
            "anerf": data.get("anerf", {}),
        },
        source=str(path),
        fast_table="field",
    )


def preset_train_keys(name_or_path: str) -> set[str]:
    """The ``[train]`` keys a preset file sets itself (the rest are ``TrainConfig``'s defaults)."""
    return set(_read_preset(name_or_path)[1].get("train", {}))


def _read_preset(name_or_path: str) -> tuple[Path, dict[str, Any]]:
    """A preset's path and its TOML tables; one line naming the file when it is missing or not a preset."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise UserError(f"preset '{name_or_path}' not found ({path}); choose one of {list_presets()} or a .toml path")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid TOML ({error}); fix the file") from None
    unknown_tables = sorted(set(data) - {"field", "anerf", "train"})
    if unknown_tables:
        raise UserError(f"{path}: unknown table(s) {unknown_tables}; use [field], [anerf] and [train]")
    return path, data


# The ``[train]`` keys that ``fast-anerf train`` flags set (with_overrides), and the flags' names.
TRAIN_FLAGS = {
    "field": "--field", "steps": "--steps", "max_minutes": "--max-minutes", "seed": "--seed",
    "eval_every": "--eval-every", "gt_poses": "--gt-poses", "refine_poses": "--refine-poses",
    "pose_stop": "--pose-stop", "temp_coef": "--temp-coef", "pose_lr_decay_rate": "--pose-lr-decay",
    "multiview": "--multiview", "backend": "--backend", "device": "--device",
}  # fmt: skip


def with_overrides(config: RunConfig, **train_overrides: Any) -> RunConfig:
    """Replace the given ``TrainConfig`` fields (keys of ``TRAIN_FLAGS``), ignoring ``None`` values (flags left
    unset). A value no run can use is one line naming its flag."""
    changes = {k: v for k, v in train_overrides.items() if v is not None}
    try:
        return dataclasses.replace(config, train=replace(config.train, **changes))
    except ValueError as error:  # TrainConfig's checks: e.g. --steps -1, or --steps below the preset's batch
        culprits = []
        for key, value in changes.items():
            try:
                replace(config.train, **{key: value})
            except ValueError:
                culprits.append(TRAIN_FLAGS.get(key, key))
        by = ", ".join(culprits) if culprits else "these flags with the preset"
        raise UserError(f"{error} (set by {by}); fix that value") from None
