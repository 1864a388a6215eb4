"""The fast field: per-bone multiresolution hash grids feeding two small MLPs.

Input (the same as the A-NeRF field, so the renderer treats both alike): each sample's position and ray
direction in all 24 joint frames. Design choices, with the reason for each:

* **One hash grid per bone, in the bone's own frame.** A body part moves rigidly with its joint, so in
  the joint frame it is static across poses: one grid learns its shape and colour from every frame. (A-NeRF
  instead feeds distances and directions to all 24 joints into one big MLP, which must learn the rigid
  invariance and needs 8x256 layers and 80 samples per ray.) All grids share one ``[24, n_params]`` table
  evaluated in one vectorised call; each row is a valid tiny-cuda-nn ``HashGrid`` parameter vector.
* **Boxes instead of A-NeRF's 0.5-unit spheres.** Each bone owns a box around its segment
  (``bone_boxes.py``), sized from the rest skeleton, and contributes only inside it; outside the union of
  boxes the density is exactly 0, so the renderer skips those samples. Box coordinates normalised to
  [0, 1]^3 are exactly what the hash grid expects (tcnn's domain).
* **Soft blending that vanishes at the box edge** (the spirit of A-NeRF's cutoff): bone ``j``'s weight
  ``w_j`` is a product over axes of a smoothstep ramp over the outer ``blend_margin`` of the box. Features
  are the normalised blend ``sum_j w_j f_j / sum_j w_j``; the density is multiplied by the coverage
  ``min(sum_j w_j, 1)``, so it fades to 0 at the union's boundary instead of jumping, and overlapping bones
  (joints) hand over smoothly.
* **A bone blends only where it held body** (``Character.use_blend_mask``, on by default with occupancy
  grids): its weight is multiplied by its own occupancy cell (0 or 1). Box regions that are empty in every
  training pose never get a sample once the grids skip them, so nothing trains them to be empty; in a novel
  pose such a region of one bone can overlap another bone's body and leak its stale features into the blend.
  Measured on the built-in character (``bench_sampling.py``, 4000 steps): held-out novel-pose PSNR 0.46 dB
  below training without skipping; with the mask 0.03-0.07 dB (three runs). The grids' own updates evaluate
  the unmasked density, so a cell the mask silences can become occupied again.
* **Density** ``sigma = coverage * exp(raw + density_bias) / height`` (truncated-exponential gradient, as
  Instant-NGP): a wide dynamic range for thin, opaque surfaces. Dividing by the skeleton height makes the
  raw value unit-free (metres or A-NeRF units train alike); the bias starts training from a light fog,
  which converges much faster than from empty space. Units: per world unit of ray length.
* **Coarse-to-fine levels while the poses move** (``coarse_to_fine_steps``, BARF's schedule): in a run that
  refines its poses, the finer hash levels fade in over the first steps (``coarse_to_fine_weights``). Fine
  levels fitted early bake the pose errors into the body and give the poses sharp, local gradients; coarse
  ones first let the poses settle. Off by default: measured with the demo preset (2000 of 4000 steps, from
  2 of 8 levels), seeds 0 / 1, MPJPE -55.2 % / -57.2 % against -53.5 % / -53.6 % without and held-out PSNR
  +0.2 dB on test_pose, but the root drifted in scripts/bench_spin_loop.py (``configs/demo.toml`` has the figures).
* **Colour** sees geometry features, the ray direction relative to the contributing bones (blended like the
  features, encoded with degree-4 spherical harmonics; view dependence is tied to the body, not the world)
  and A-NeRF's 16-D per-frame appearance code (the mean code for frames never seen).
"""

from __future__ import annotations

import torch
from torch import nn

from fast_anerf.config import FastFieldConfig
from fast_anerf.encoding.hashgrid import MultiBoneHashGrid
from fast_anerf.encoding.hashgrid_cpu import blend_encode_cpu, fused_visibility_cpu, relu_mlp_first_output_weights
from fast_anerf.encoding.mlp import TcnnMLP
from fast_anerf.encoding.spherical_harmonics import spherical_harmonics

N_BONES = 24


class _TruncExp(torch.autograd.Function):
    """exp(min(x, 15)) whose gradient is exp(clamp(x, -15, 15)): bounded, so huge raw densities cannot explode it,
    and not 0 above 15 (a straight-through past the clamp), so a density pushed there can still come back down."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x.clamp_max(15.0))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(-15.0, 15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


def coarse_to_fine_weights(step: int, cfg: FastFieldConfig) -> torch.Tensor | None:
    """Weights ``[L]`` of the hash levels at training step ``step``, or None once every level is fully on.

    BARF's schedule per level: ``alpha`` goes linearly from ``coarse_to_fine_start`` to ``L`` over the first
    ``coarse_to_fine_steps`` steps, and level ``l`` weighs ``(1 - cos(pi * clamp(alpha - l, 0, 1))) / 2``.
    """
    steps, n_levels = cfg.coarse_to_fine_steps, cfg.n_levels
    if steps <= 0 or step >= steps:
        return None
    alpha = cfg.coarse_to_fine_start + (n_levels - cfg.coarse_to_fine_start) * max(step, 0) / steps
    ramp = (alpha - torch.arange(n_levels, dtype=torch.float32)).clamp(0.0, 1.0)
    return (1.0 - torch.cos(torch.pi * ramp)) / 2.0


def smooth_ramp(u: torch.Tensor, margin: float) -> torch.Tensor:
    """0 at the box faces (u = 0 or 1), 1 deeper than ``margin`` inside; C1 smooth (smoothstep)."""
    s = (torch.minimum(u, 1.0 - u) / margin).clamp(0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


class FastField(nn.Module):
    """Per-bone hash-grid radiance field of an articulated body. See the module docstring."""

    field_type = "fast"
    fuse_no_grad = True  # cpu backend: fused C encoding without gradients and fused visibility (tests turn it off)

    def __init__(
        self,
        n_frame_codes: int,
        box_min: torch.Tensor,
        box_max: torch.Tensor,
        height: float,
        cfg: FastFieldConfig,
        backend: str = "auto",
    ) -> None:
        """``box_min``/``box_max [24, 3]``: each bone's box in its joint frame (``bone_boxes.bone_boxes``);
        ``height``: the skeleton's size in world units (``bone_boxes.skeleton_height``)."""
        super().__init__()
        self.cfg = cfg
        self.register_buffer("box_min", box_min.clone().float())  # [24, 3] joint-local, world units
        self.register_buffer("box_size", (box_max - box_min).float())  # [24, 3]
        self.height = height
        # inplace_grad: the backward adds into the existing .grad instead of allocating a dense table each step.
        self.grid = MultiBoneHashGrid(N_BONES, cfg.hashgrid, backend=backend, inplace_grad=True)
        n_grid = cfg.hashgrid.n_output_dims
        self.density_mlp = TcnnMLP(
            n_grid, 1 + cfg.geo_feature_dim, cfg.density_neurons, cfg.density_hidden_layers, backend=backend
        )
        n_color_in = cfg.geo_feature_dim + cfg.sh_degree**2 + cfg.framecode_dim
        self.color_mlp = TcnnMLP(
            n_color_in, 3, cfg.color_neurons, cfg.color_hidden_layers, output_activation="Sigmoid", backend=backend
        )
        self.frame_codes = nn.Embedding(max(n_frame_codes, 1), max(cfg.framecode_dim, 1))
        nn.init.normal_(self.frame_codes.weight, std=0.01)
        # The model's occupancy grids when the blend is masked (``Character.use_blend_mask``); kept out of the
        # submodules (they belong to the model), hence set through object.__setattr__.
        object.__setattr__(self, "blend_mask", None)
        # [L*F] weights of the hash features while coarse-to-fine fades the levels in; None = all levels on. Set
        # from the step (update_schedule; load_character too), so it is not saved in the state dict.
        object.__setattr__(self, "level_weights", None)

    @property
    def backend_name(self) -> str:
        return self.grid.backend_name

    @property
    def box_max(self) -> torch.Tensor:
        return self.box_min + self.box_size

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        c = self.cfg
        return (
            f"fast field: {self.n_params:,} params (24 bones x hash grid L{c.n_levels} F{c.n_features_per_level} "
            f"T{c.log2_hashmap_size}, MLPs {c.density_neurons}x{c.density_hidden_layers} / "
            f"{c.color_neurons}x{c.color_hidden_layers}, backend {self.backend_name})"
        )

    def update_schedule(self, step: int, poses_refined: bool = True) -> None:
        """Set the hash levels' weights for training step ``step`` (``level_weights``, module docstring): all on
        at once when the run does not refine its poses (coarse-to-fine is there for them)."""
        weights = coarse_to_fine_weights(step, self.cfg) if poses_refined else None
        if weights is not None:
            weights = weights.to(self.box_min.device).repeat_interleave(self.cfg.n_features_per_level)
        object.__setattr__(self, "level_weights", weights)

    def _encode(self, x_local: torch.Tensor, d_local: torch.Tensor | None = None, masked: bool = True):
        """Blend per-bone hash features (and, with ``d_local``, ray directions) of samples.

        Returns ``(features [N, L*F], coverage [N], d_blend [N, 3] or None)``: the weighted mean of the hash
        features of the bones whose box holds the sample, ``min(sum of weights, 1)``, and the weighted
        direction normalised to unit length. Without gradients on the ``cpu`` backend one fused C call does it
        all (``hashgrid_cpu.blend_encode_cpu``, equal results): the ~20 tensor ops over ``[N, 24, 3]`` and
        ``[pairs]`` temporaries dominated the small batches of the visibility pass (15.7 -> 12.0 ms per
        training step), occupancy updates and rendering.
        """
        occ = self.blend_mask if masked else None
        # The tables are float32 (tcnn's layout): float64 samples (rays built in double) are encoded in float32,
        # as the C path does, rather than mixing dtypes in the blend below.
        x_local = x_local.to(torch.float32)
        d_local = d_local.to(torch.float32) if d_local is not None else None
        if self.fuse_no_grad and not torch.is_grad_enabled() and self.grid.backend_name == "cpu":
            *args, mask = self._kernel_inputs(occ)
            blended, weight_sum, d_sum = blend_encode_cpu(x_local, d_local, *args, mask=mask)
        else:
            u = (x_local - self.box_min) / self.box_size  # [N, 24, 3] box-normalised
            inside = ((u >= 0.0) & (u <= 1.0)).all(dim=-1)  # [N, 24]
            # Flat ids and index_select: 2-index gathers (u[s, b]) cost ~2x more on CPU, forward and backward.
            pairs = inside.reshape(-1).nonzero().squeeze(1)  # flat sample * 24 + bone of samples inside boxes
            sample_idx, bone_idx = pairs // u.shape[1], pairs % u.shape[1]
            u_pairs = u.reshape(-1, 3).index_select(0, pairs)  # [P, 3]
            weights = smooth_ramp(u_pairs, self.cfg.blend_margin).prod(dim=-1)  # [P]
            if occ is not None:  # 0 in the bone's empty cells (Character.use_blend_mask)
                weights = weights * occ.binaries.reshape(-1).index_select(0, occ.unit_cell_ids(bone_idx, u_pairs))
            feats = self.grid(u_pairs, bone_idx)  # [P, L*F]
            n = x_local.shape[0]
            weight_sum = torch.zeros(n, dtype=u.dtype, device=u.device).index_add_(0, sample_idx, weights)
            blended = torch.zeros(n, feats.shape[-1], dtype=feats.dtype, device=feats.device)
            blended = blended.index_add_(0, sample_idx, feats * weights[:, None])
            blended = blended / weight_sum.clamp_min(1e-6)[:, None]
            d_sum = None
            if d_local is not None:  # bone-relative view direction, blended with the same weights
                d_pairs = d_local.reshape(-1, 3).index_select(0, pairs) * weights[:, None]
                d_sum = torch.zeros_like(x_local[:, 0]).index_add_(0, sample_idx, d_pairs)
        d_blend = d_sum / d_sum.norm(dim=-1, keepdim=True).clamp_min(1e-6) if d_sum is not None else None
        if self.level_weights is not None:
            blended = blended * self.level_weights
        return blended, weight_sum.clamp_max(1.0), d_blend

    def _codes(self, code_ids: torch.Tensor) -> torch.Tensor:
        table = self.frame_codes.weight
        codes = table.index_select(0, code_ids.clamp_min(0))
        unseen = code_ids < 0  # frames never seen in training use the mean code (as A-NeRF)
        # torch.where without an `if unseen.any()`: that test would be a host sync per call on a GPU.
        return torch.where(unseen[:, None], table.mean(dim=0, keepdim=True).expand_as(codes), codes)

    def forward(
        self, x_local: torch.Tensor, d_local: torch.Tensor, code_ids: torch.Tensor, density_noise_std: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density and colour of samples.

        Args:
            x_local: ``[N, 24, 3]`` the samples in every joint frame (world units).
            d_local: ``[N, 24, 3]`` the ray direction in every joint frame (unit length).
            code_ids: ``[N]`` per-frame appearance code index; -1 = the mean code.
            density_noise_std: std of Gaussian noise added to the raw density (training regulariser).

        Returns:
            ``sigma [N]`` (>= 0, per world unit) and ``rgb [N, 3]`` in [0, 1].
        """
        feats, coverage, d_blend = self._encode(x_local, d_local)
        h = self.density_mlp(feats)  # [N, 1 + geo]
        raw = h[:, 0]
        if density_noise_std > 0:
            raw = raw + torch.randn_like(raw) * density_noise_std
        sigma = coverage * trunc_exp(raw + self.cfg.density_bias) / self.height
        color_in = [h[:, 1:], spherical_harmonics(d_blend, self.cfg.sh_degree)]
        if self.cfg.framecode_dim > 0:
            color_in.append(self._codes(code_ids))
        rgb = self.color_mlp(torch.cat(color_in, dim=-1))
        return sigma, rgb

    def density(self, x_local: torch.Tensor, masked: bool = True) -> torch.Tensor:
        """``sigma [N]`` of samples ``x_local [N, 24, 3]`` (no colour branch; meshes, occupancy grids)."""
        feats, coverage, _ = self._encode(x_local, masked=masked)
        return coverage * trunc_exp(self.density_mlp(feats)[:, 0] + self.cfg.density_bias) / self.height

    def fused_visibility(
        self,
        origins: torch.Tensor,
        directions: torch.Tensor,
        ray_scale: torch.Tensor,
        ray_indices: torch.Tensor,
        t_starts: torch.Tensor,
        t_ends: torch.Tensor,
        early_stop_eps: float,
        alpha_thre: float,
    ) -> tuple[torch.Tensor, int] | None:
        """``volrend.visibility_progressive`` with this field's (masked) density, in one C call.

        Args: ``origins``, ``directions [R, 24, 3]`` rays in the joint frames, ``ray_scale [R]``, packed sorted
        candidates (``ray_indices``, ``t_starts``, ``t_ends [P]``), thresholds as ``volrend.visibility``.
        Returns ``(keep [P] bool, densities evaluated)``, or None where the fused kernel does not apply (a backend
        other than ``cpu``, ``fuse_no_grad`` off): the caller then runs the PyTorch rounds. Densities equal
        ``density()``'s up to the MLP's float summation order (``hashgrid_cpu.fused_visibility_cpu``).
        """
        mlp = self.density_mlp
        relu = mlp.activation == "ReLU" and mlp.output_activation == "None"
        if not (self.fuse_no_grad and self.grid.backend_name == "cpu" and relu):
            return None
        layers = mlp.layer_weights()
        if self.level_weights is not None:  # W (w * f) = (W diag(w)) f: the kernel reads unweighted features
            layers = [layers[0][:, : mlp.n_input_dims] * self.level_weights, *layers[1:]]
        weights = relu_mlp_first_output_weights(layers, mlp.n_input_dims)
        if weights is None:
            return None
        args = (weights, mlp.n_neurons, mlp.n_hidden_layers, self.cfg.density_bias, self.height)
        rays = (origins, directions, ray_scale, ray_indices, t_starts, t_ends)
        return fused_visibility_cpu(*rays, self._kernel_inputs(self.blend_mask), *args, early_stop_eps, alpha_thre)

    def _kernel_inputs(self, occ) -> tuple:
        """What the C kernels read of the encoding: ``(box_min, box_size, margin, params, config, mask)``, the
        mask ``(binaries, resolution)`` of occupancy grids ``occ`` or None (an unmasked blend)."""
        mask = (occ.binaries, occ.resolution) if occ is not None else None
        return self.box_min, self.box_size, self.cfg.blend_margin, self.grid.params, self.grid.config, mask
