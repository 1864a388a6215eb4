"""The original A-NeRF field (Su et al. 2021), our baseline for side-by-side comparisons.

Behaviour follows specs/anerf.md §2.3-2.5 (A-NeRF's ``reldist`` / ``reldir`` / ``relray`` inputs, its
``CutoffEmbedder`` and ``core/networks/nerf.py::NeRF``):

* inputs per sample, for each of the 24 joints ``j`` with ``p_j = skts_j @ x`` (world units):
  ``v_j = ||p_j||`` (24), ``r_j = p_j / ||p_j||`` (72), ``d_j`` the unit ray direction in joint ``j``'s
  frame (72);
* ``v`` is positionally encoded (``multires`` 7 -> 360) and ``d`` too (``multires_views`` 4 -> 648); ``r``
  enters raw (``multires_bones`` 0 -> 72);
* cutoff ``w_j = 1 - sigmoid(tau (v_j - c))`` multiplies ``v``'s blocks joint-wise (the raw copy too when
  ``cutoff_inputs``) and ``d``'s blocks (each joint's 3 components by its ``w_j``) when ``cutoff_viewdir``;
* density trunk: 8 x Linear(256)+ReLU on ``[v_enc, r]`` (432), input re-concatenated after layer 4;
  ``sigma = relu(alpha_linear(h) + noise)``;
* colour head: ``feature_linear(h)`` (no activation) ++ ``d_enc`` ++ frame code -> Linear(128)+ReLU ->
  ``rgb_linear`` -> widened sigmoid ``sigmoid(raw) * 1.002 - 0.001``.

A-NeRF trains two such networks (coarse with 64 stratified samples, fine with 16 more importance samples). We
keep **one** network; how samples are placed along a ray (stratified, importance, occupancy-grid marching) is
the shared renderer's business, so both this field and the fast field plug into the same renderer.

Layer names (``pts_linears``, ``alpha_linear``, ``feature_linear``, ``views_linears``, ``rgb_linear``) and
their concatenation orders match A-NeRF's, so its weights map onto this module one to one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fast_anerf.encoding.positional import (
    TAU_START,
    cutoff_tau,
    cutoff_weights,
    encoded_dim,
    positional_encoding,
)
from fast_anerf.skeleton import N_JOINTS

RGB_PADDING = 0.001  # A-NeRF's widened sigmoid: rgb in (-0.001, 1.001), so 0 and 1 are reachable
_MIN_SQ_DIST = 1e-12  # guards ||p_j|| at a sample exactly on a joint (world units squared)


@dataclass(frozen=True)
class ANeRFFieldConfig:
    """Settings of the original A-NeRF field; defaults are A-NeRF's (specs/anerf.md §2.4-2.5, §5)."""

    netdepth: int = 8  # Linear layers in the density trunk
    netwidth: int = 256  # their width
    skips: tuple[int, ...] = (4,)  # the trunk input is concatenated again after these layer indices
    multires: int = 7  # frequencies for the joint distances v
    multires_views: int = 4  # frequencies for the joint-relative view directions d
    multires_bones: int = 0  # frequencies for the joint-relative point directions r (0 = raw, A-NeRF default)
    cutoff_dist: float = 0.5  # world units (A-NeRF: cutoff_mm 500 * ext_scale 0.001)
    use_cutoff: bool = True  # cut off v's encoding far from each joint
    cutoff_inputs: bool = True  # the cutoff also multiplies the raw input copy, not only sin/cos blocks
    cutoff_viewdir: bool = True  # cut off d's encoding with the same per-joint weights
    cutoff_rate: float = 10.0  # tau grows by this factor every cutoff_step thousand steps
    cutoff_step: int = 250  # in thousands of steps
    framecode_dim: int = 16  # per-frame appearance code width (0 disables)
    use_framecode: bool = True
    view_width: int = 128  # hidden width of the colour head

    def __post_init__(self) -> None:
        if self.netdepth < 1 or self.netwidth < 1 or self.view_width < 1:
            raise ValueError(
                f"ANeRFFieldConfig: netdepth, netwidth and view_width must be >= 1, got "
                f"{self.netdepth}, {self.netwidth}, {self.view_width}"
            )
        bad = [s for s in self.skips if not 0 <= s < self.netdepth - 1]
        if bad:
            raise ValueError(
                f"ANeRFFieldConfig: skips {bad} out of range; a skip concatenates the input after a trunk "
                f"layer that another trunk layer follows, so use indices in [0, {self.netdepth - 2}]"
            )
        if min(self.multires, self.multires_views, self.multires_bones, self.framecode_dim) < 0:
            raise ValueError("ANeRFFieldConfig: multires*, framecode_dim must be >= 0")
        if self.cutoff_dist <= 0 or self.cutoff_rate <= 0 or self.cutoff_step <= 0:
            raise ValueError(
                f"ANeRFFieldConfig: cutoff_dist, cutoff_rate and cutoff_step must be > 0, got "
                f"{self.cutoff_dist}, {self.cutoff_rate}, {self.cutoff_step}"
            )

    @property
    def uses_framecode(self) -> bool:
        return self.use_framecode and self.framecode_dim > 0

    @property
    def v_dim(self) -> int:
        """Encoded joint distances (360 by default)."""
        return encoded_dim(N_JOINTS, self.multires)

    @property
    def r_dim(self) -> int:
        """Joint-relative point directions (72 raw by default)."""
        return encoded_dim(3 * N_JOINTS, self.multires_bones)

    @property
    def d_dim(self) -> int:
        """Encoded joint-relative view directions (648 by default)."""
        return encoded_dim(3 * N_JOINTS, self.multires_views)

    @property
    def trunk_in_dim(self) -> int:
        """Density trunk input ``[v_enc, r]`` (432 by default)."""
        return self.v_dim + self.r_dim

    @property
    def color_in_dim(self) -> int:
        """Colour head input ``[feature, d_enc, framecode]`` (256 + 648 + 16 = 920 by default)."""
        return self.netwidth + self.d_dim + (self.framecode_dim if self.uses_framecode else 0)


class ANeRFField(nn.Module):
    """A-NeRF's skeleton-relative radiance field (one network; see the module docstring).

    Args:
        n_frame_codes: number of per-frame appearance codes (one per training image); ignored when the
            config disables frame codes.
        cfg: the field's settings.
    """

    field_type = "anerf"

    def __init__(self, n_frame_codes: int, cfg: ANeRFFieldConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ANeRFFieldConfig()
        self.cfg = cfg
        W, in_dim = cfg.netwidth, cfg.trunk_in_dim
        self.pts_linears = nn.ModuleList(
            [nn.Linear(in_dim, W)]
            + [nn.Linear(W + in_dim if i in cfg.skips else W, W) for i in range(cfg.netdepth - 1)]
        )
        self.alpha_linear = nn.Linear(W, 1)
        self.feature_linear = nn.Linear(W, W)
        self.views_linears = nn.ModuleList([nn.Linear(cfg.color_in_dim, cfg.view_width)])
        self.rgb_linear = nn.Linear(cfg.view_width, 3)
        self.frame_codes: nn.Embedding | None = None
        if cfg.uses_framecode:
            if n_frame_codes < 1:
                raise ValueError(
                    f"ANeRFField: n_frame_codes must be >= 1 with frame codes on (got {n_frame_codes}); pass "
                    "the number of training images or set use_framecode=False"
                )
            self.frame_codes = nn.Embedding(n_frame_codes, cfg.framecode_dim)
            nn.init.xavier_normal_(self.frame_codes.weight)
        # tau lives in the state dict so a resumed run continues the schedule where it stopped.
        self.register_buffer("tau", torch.tensor(TAU_START))
        self._skips = frozenset(cfg.skips)

    # ------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        """Number of parameters (frame codes included)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def n_frame_codes(self) -> int:
        return 0 if self.frame_codes is None else self.frame_codes.num_embeddings

    def describe(self) -> str:
        """One line: field type, size and parameter count."""
        c = self.cfg
        codes = f", {self.n_frame_codes} frame codes x{c.framecode_dim}" if self.frame_codes is not None else ""
        return f"{self.field_type} field: {self.n_params:,} params ({c.netdepth}x{c.netwidth} trunk{codes})"

    def update_schedule(self, step: int, poses_refined: bool = True) -> None:
        """Set the cutoff sharpness for training step ``step`` (A-NeRF calls this every iteration, whether the
        poses are refined or not)."""
        self.tau.fill_(cutoff_tau(step, self.cfg.cutoff_rate, self.cfg.cutoff_step))

    def forward(
        self, x_local: Tensor, d_local: Tensor, code_ids: Tensor, density_noise_std: float = 0.0
    ) -> tuple[Tensor, Tensor]:
        """Density and colour of samples.

        Args:
            x_local: ``[N, 24, 3]`` the sample in each joint's local frame (``skts_j @ x``), world units.
            d_local: ``[N, 24, 3]`` the ray direction rotated into each joint's frame, unit length (not
                re-normalised here).
            code_ids: ``[N]`` long frame-code index per sample; ``-1`` means the mean code (unseen frames).
                Ignored when frame codes are off.
            density_noise_std: std of the Gaussian noise added to raw density before the ReLU (A-NeRF's
                ``raw_noise_std``, 1.0 in training, 0 at test).

        Returns:
            sigma: ``[N]`` density per world unit, ``>= 0``.
            rgb: ``[N, 3]`` colour in (-0.001, 1.001).
        """
        self._check_points(x_local, "x_local")
        self._check_points(d_local, "d_local")
        if d_local.shape != x_local.shape:
            raise ValueError(f"ANeRFField: d_local {tuple(d_local.shape)} must match x_local {tuple(x_local.shape)}")
        h, w = self._trunk(x_local)
        sigma = self._sigma(h, density_noise_std)

        n = x_local.shape[0]
        d_weights = w.repeat_interleave(3, dim=-1) if self.cfg.cutoff_viewdir else None  # [N, 72]
        d_enc = positional_encoding(
            d_local.reshape(n, 3 * N_JOINTS),  # joint-major, like A-NeRF's (N, 24, 3) -> (N, 72)
            self.cfg.multires_views,
            weights=d_weights,
            weight_input=self.cfg.cutoff_inputs,
        )
        parts = [self.feature_linear(h), d_enc]
        if self.frame_codes is not None:
            parts.append(self._codes(code_ids, n))
        h = torch.cat(parts, dim=-1)
        for layer in self.views_linears:
            h = torch.relu(layer(h))
        rgb = torch.sigmoid(self.rgb_linear(h)) * (1 + 2 * RGB_PADDING) - RGB_PADDING
        return sigma, rgb

    def density(self, x_local: Tensor) -> Tensor:
        """View-independent density ``[N]`` (per world unit, ``>= 0``, no noise) of ``x_local [N, 24, 3]``;
        skips the colour head (meshes, occupancy grids)."""
        self._check_points(x_local, "x_local")
        h, _ = self._trunk(x_local)
        return self._sigma(h, 0.0)

    # ------------------------------------------------------------------------------------------
    # Internals
    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _check_points(t: Tensor, name: str) -> None:
        if t.dim() != 3 or t.shape[1:] != (N_JOINTS, 3):
            raise ValueError(
                f"ANeRFField: {name} must be [N, {N_JOINTS}, 3] (one 3-vector per joint frame), got "
                f"{tuple(t.shape)}; flatten leading dims first"
            )

    def _trunk(self, x_local: Tensor) -> tuple[Tensor, Tensor]:
        """Trunk features ``h [N, W]`` and the cutoff weights ``w [N, 24]`` (ones when cutoff is off)."""
        cfg = self.cfg
        sq = (x_local * x_local).sum(-1)  # [N, 24]
        # Clamping the squared norm keeps both v and its gradient finite for a sample exactly on a joint.
        v = sq.clamp_min(_MIN_SQ_DIST).sqrt()  # [N, 24] world units
        r = (x_local / v.unsqueeze(-1)).flatten(1)  # [N, 72], joint-major
        w = cutoff_weights(v, self.tau, cfg.cutoff_dist)
        v_enc = positional_encoding(
            v, cfg.multires, weights=w if cfg.use_cutoff else None, weight_input=cfg.cutoff_inputs
        )
        r_enc = positional_encoding(r, cfg.multires_bones) if cfg.multires_bones > 0 else r
        inputs = torch.cat([v_enc, r_enc], dim=-1)  # [N, 432]
        h = inputs
        for i, layer in enumerate(self.pts_linears):
            h = torch.relu(layer(h))
            if i in self._skips:
                h = torch.cat([inputs, h], dim=-1)  # A-NeRF's order: input first
        return h, w

    def _sigma(self, h: Tensor, noise_std: float) -> Tensor:
        raw = self.alpha_linear(h).squeeze(-1)  # [N]
        if noise_std > 0:
            raw = raw + torch.randn_like(raw) * noise_std
        return torch.relu(raw)

    def _codes(self, code_ids: Tensor, n: int) -> Tensor:
        """Frame codes ``[N, F]`` for ``code_ids [N]``; negative ids get the mean of all codes."""
        assert self.frame_codes is not None
        if code_ids.shape != (n,):
            raise ValueError(f"ANeRFField: code_ids must be [N]=[{n}] long, got {tuple(code_ids.shape)}")
        table = self.frame_codes.weight  # [n_codes, F]
        unseen = code_ids < 0
        codes = table[code_ids.clamp_min(0)]
        # torch.where instead of a data-dependent branch: no host sync on CUDA.
        return torch.where(unseen.unsqueeze(-1), table.mean(0).expand_as(codes), codes)
