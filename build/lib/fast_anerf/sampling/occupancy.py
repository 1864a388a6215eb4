"""Per-bone occupancy grids: where each bone's part of the field is not empty, in the bone's own frame.

Design, with the reason for each choice:

* **One grid per bone, over the bone's box, in joint-local coordinates.** The fast field lives in the bone
  frames (``field.py``): a body part is static in its joint's frame, so its occupancy is too, and one grid
  serves every pose (a world-aligned grid, as nerfacc's, would have to be rebuilt for each pose).
  Resolution ``R`` per axis (default 16: cells of 13-38 mm on the built-in character's boxes, about one
  marching step of 19 mm; each update evaluates the density of up to ``24 R^3 / 2`` cells: ~50 ms on this
  2-core CPU at ``R = 16``, about 1.5 training steps, every 16 steps; the cost grows with ``R^3``).
* **nerfacc's layout and names** (``OccGridEstimator``, specs/tcnn_nerfacc.md §C1): ``occs [24, R^3]``
  float and ``binaries [24, R, R, R]`` bool, cell id ``x*R*R + y*R + z``, a point maps to cell
  ``floor((p - box_min) / box_size * R)`` clamped to ``[0, R-1]``. Both are buffers of the module, so they
  travel in the ``Character`` state dict (checkpoints); a checkpoint written before the grids existed loads
  with every cell occupied (the old box-culled sampling) and the next updates carve it.
* **nerfacc's update rule** (``update_every_n_steps``): every ``n`` training steps, before ``warmup_steps``
  every cell, afterwards ``R^3/4`` uniformly random cells plus up to ``R^3/4`` currently occupied cells per
  bone; one point jittered uniformly inside each chosen cell; ``occs = max(occs * decay, value)`` for the
  visited cells; ``binaries = occs > min(mean(occs[occs >= 0]), threshold)``. Randomness comes from a CPU
  generator seeded by the run's seed and the step (``Character.update_occupancy``): resumed runs repeat the
  same updates with no extra saved state, and the trainer's own random stream (ray batches, jitter) is the
  same with the grids on or off, so the two can be compared at equal steps. Unlike nerfacc
  the grid starts all-occupied (``binaries`` true), so an untrained model samples every box. The default
  decay (``TrainConfig.occ_ema_decay``) is 0.7, not nerfacc's 0.95: a visited cell loses a factor 0.95 per
  visit, so the initial fog (``sigma * step`` ~ 0.4) needs ~70 visits (~2300 steps) to fall below 0.01;
  with 0.7, ~13 visits. Measured on the built-in character after 1000 steps at 0.95: 93 % of cells still
  marked occupied while a fresh evaluation put only 27 % above the threshold.
* **Units.** ``value = sigma * step`` (density per world unit times the marching step in world units, as
  nerfacc's examples): the optical thickness of one step, so ``threshold = 0.01`` means "a step here absorbs
  about 1 % of the light".
* **Where the density is evaluated: in training poses, not the rest pose.** The fast field blends
  overlapping bones (near joints), so the density at a bone-local point depends on where the *other*
  bones are, i.e. on the pose. Away from joints only one bone covers the point and any pose gives the same
  value. Near joints, the rest pose is a pose the model may never have seen: there the other bones' grids
  hold untrained or "empty" values, and the blend can under-estimate the density of cells that are body in
  every training pose; those cells would then be skipped, get no gradient, and stay skipped. Each point is
  therefore mapped bone-local -> world -> all 24 bone frames with a **random training frame's pose**
  (``density_in_poses``), so over the EMA window (about 20 updates) a cell records the largest density it
  had across many training poses: a union over poses, the conservative choice for novel poses too. The
  point is written into its own bone's slot exactly (no round trip through world coordinates).
* **The density without the blend mask** (``field.density(..., masked=False)``): the field may silence a bone in
  its empty cells (``field.py``); the grid must see what the bone's own features would add there, or a cell
  once marked empty could never come back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

N_BONES = 24


class BoneOccupancy(nn.Module):
    """Occupancy grids of the 24 bones (see the module docstring).

    Buffers: ``occs [24, R^3]`` (opacity-like EMA values), ``binaries [24, R, R, R]`` (occupied cells);
    ``box_min``/``box_size [24, 3]`` (joint-local, world units) are derived from the model and not saved.
    """

    def __init__(self, box_min: torch.Tensor, box_max: torch.Tensor, resolution: int = 16) -> None:
        super().__init__()
        if resolution < 1:
            raise ValueError(f"BoneOccupancy: resolution must be >= 1, got {resolution}; use e.g. 16")
        self.resolution = int(resolution)
        self.register_buffer("box_min", box_min.detach().clone().float(), persistent=False)
        self.register_buffer("box_size", (box_max - box_min).detach().clone().float(), persistent=False)
        occs, binaries = self._fresh()
        self.register_buffer("occs", occs)  # [24, R^3]
        self.register_buffer("binaries", binaries)  # [24, R, R, R]

    def _fresh(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.resolution
        return torch.zeros(N_BONES, r**3), torch.ones(N_BONES, r, r, r, dtype=torch.bool)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        # Checkpoints written before the occupancy grids existed: start all-occupied instead of failing.
        # (``Module.load_state_dict`` works on a shallow copy of the caller's dict, so this adds nothing there.)
        if prefix + "occs" not in state_dict and prefix + "binaries" not in state_dict:
            occs, binaries = self._fresh()
            state_dict[prefix + "occs"] = occs
            state_dict[prefix + "binaries"] = binaries
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)

    @property
    def occupied_fraction(self) -> float:
        """Fraction of all cells marked occupied."""
        return float(self.binaries.float().mean())

    def cell_ids(self, bone_idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Flat cell index ``bone * R^3 + x*R*R + y*R + z`` of points ``x [P, 3]`` (local to ``bone_idx [P]``)."""
        u = (x - self.box_min.index_select(0, bone_idx)) / self.box_size.index_select(0, bone_idx)
        return self.unit_cell_ids(bone_idx, u)

    def unit_cell_ids(self, bone_idx: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``cell_ids`` of points already in box coordinates ``u [P, 3]`` (``(x - box_min) / box_size``)."""
        r = self.resolution
        c = (u.detach() * r).floor().long().clamp(0, r - 1)
        return bone_idx * r**3 + (c[:, 0] * r + c[:, 1]) * r + c[:, 2]

    def occupied(self, bone_idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``[P]`` bool: is the cell of bone ``bone_idx [P]`` holding the bone-local point ``x [P, 3]`` occupied.

        Points outside the box are clamped to the nearest cell; callers test box membership themselves.
        """
        return self.binaries.reshape(-1).index_select(0, self.cell_ids(bone_idx, x))

    def cell_points(self, flat_ids: torch.Tensor, jitter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bone index ``[N]`` and bone-local point ``[N, 3]`` at ``jitter [N, 3]`` (in [0, 1)) inside each cell."""
        r = self.resolution
        bone = flat_ids // r**3
        cell = flat_ids % r**3
        xyz = torch.stack([cell // (r * r), (cell // r) % r, cell % r], dim=-1).to(jitter.dtype)
        return bone, self.box_min[bone] + (xyz + jitter) / r * self.box_size[bone]

    def _cells_to_visit(self, step: int, warmup_steps: int, generator: torch.Generator | None) -> torch.Tensor:
        """Flat ids of the cells to evaluate in this update (nerfacc's choice, per bone)."""
        n_cells = self.resolution**3
        if step < warmup_steps:
            return torch.arange(N_BONES * n_cells)
        quarter = max(n_cells // 4, 1)
        offsets = (torch.arange(N_BONES) * n_cells)[:, None]
        uniform = (torch.randint(0, n_cells, (N_BONES, quarter), generator=generator) + offsets).reshape(-1)
        chosen = [uniform]
        binaries = self.binaries.reshape(N_BONES, n_cells).cpu()
        for bone in range(N_BONES):
            occupied = binaries[bone].nonzero().squeeze(-1)
            if occupied.numel() > quarter:
                occupied = occupied[torch.randint(0, occupied.numel(), (quarter,), generator=generator)]
            chosen.append(occupied + bone * n_cells)
        return torch.cat(chosen)

    @torch.no_grad()
    def update(
        self,
        step: int,
        eval_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        generator: torch.Generator | None = None,
        threshold: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        every_n: int = 16,
    ) -> bool:
        """nerfacc's ``update_every_n_steps`` for all bones; returns whether it updated at this step.

        Args:
            step: the training step (updates when ``step % every_n == 0``).
            eval_fn: ``(bone_idx [N], x [N, 3] bone-local) -> [N]`` opacity-like value ``sigma * step``.
            generator: CPU generator for the random cells and jitter (seeded per step, for identical resumes).
            threshold, ema_decay, warmup_steps, every_n: nerfacc's ``occ_thre``, ``ema_decay``,
                ``warmup_steps``, ``n``.
        """
        if every_n <= 0 or step % every_n != 0:
            return False
        device = self.occs.device
        ids = self._cells_to_visit(step, warmup_steps, generator)
        jitter = torch.rand(ids.numel(), 3, generator=generator)
        bone, x = self.cell_points(ids.to(device), jitter.to(device))
        values = eval_fn(bone, x).float()
        flat = self.occs.reshape(-1)
        ids = ids.to(device)
        visited = torch.unique(ids)
        flat[visited] *= ema_decay  # decay each visited cell once, even if chosen twice (random + occupied)
        flat.scatter_reduce_(0, ids, values, reduce="amax", include_self=True)
        valid = flat[flat >= 0]  # nerfacc marks cells no camera sees with -1; we keep the convention
        thre = min(float(valid.mean()) if valid.numel() else 0.0, threshold)
        self.binaries.copy_((self.occs > thre).reshape(self.binaries.shape))
        return True


POSES_PER_UPDATE = 32  # distinct training poses per grid update (each point gets one of them)


def density_in_poses(
    field: nn.Module,
    skts: torch.Tensor,
    step_world: float,
    generator: torch.Generator | None = None,
    chunk: int = 16384,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``eval_fn`` for ``BoneOccupancy.update``: ``field.density`` of bone-local points in random training poses.

    Each point ``x`` of bone ``j`` is placed in the pose of a random frame ``f`` (world = ``skts[f, j]^-1 x``),
    then expressed in all 24 bone frames (the field's input), with slot ``j`` set to ``x`` exactly. The frame is
    drawn from ``POSES_PER_UPDATE`` random training poses per call, so the points of one pose move into the 24
    frames with one ``[n, 3] x [3, 72]`` product (gathering a ``[72, 4]`` transform per point cost as much as
    the density itself); every update draws new poses, so over the EMA window the grid still sees them all.

    Args:
        field: has ``density(x_local [N, 24, 3]) -> sigma [N]`` (per world unit).
        skts: ``[F, 24, 4, 4]`` world-to-joint transforms of the training poses (detached here).
        step_world: the marching step in world units; the value is ``sigma * step_world``.
        generator: CPU generator choosing the poses.
        chunk: points per ``field.density`` call (bounds memory: ~400 floats per point).
    """
    skts = skts.detach()
    n_joints = skts.shape[1]
    rows = skts[..., :3, :].reshape(skts.shape[0], n_joints * 3, 4).contiguous()  # [F, 24*3, 4]: [R | t] rows

    def eval_fn(bone_idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        poses = torch.randperm(skts.shape[0], generator=generator)[:POSES_PER_UPDATE].tolist()
        pick = torch.randint(0, len(poses), (n,), generator=generator).to(x.device)
        order = torch.argsort(pick, stable=True)  # points grouped by pose
        ends = torch.cumsum(torch.bincount(pick, minlength=len(poses)), 0).tolist()
        bone_s, x_s = bone_idx.index_select(0, order), x.index_select(0, order)
        sigma = torch.empty(n, dtype=x.dtype, device=x.device)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            x_local = torch.empty(stop - start, n_joints * 3, dtype=x.dtype, device=x.device)
            for k, frame in enumerate(poses):  # the pose runs overlapping [start, stop)
                lo, hi = max(ends[k - 1] if k else 0, start), min(ends[k], stop)
                if lo >= hi:
                    continue
                m = rows[frame]  # [24*3, 4]
                b, p = bone_s[lo:hi], x_s[lo:hi]
                own = m.view(n_joints, 3, 4).index_select(0, b)  # [h, 3, 4] world -> bone b
                world = ((p - own[:, :, 3])[:, :, None] * own[:, :, :3]).sum(dim=1)  # R^T (x - t)
                torch.addmm(m[:, 3], world, m[:, :3].T, out=x_local[lo - start : hi - start])
            x_local = x_local.view(-1, n_joints, 3)
            own_slot = torch.arange(stop - start, device=x.device) * n_joints + bone_s[start:stop]
            x_local.view(-1, 3).index_copy_(0, own_slot, x_s[start:stop])  # its own bone's slot exactly
            sigma[start:stop] = field.density(x_local, masked=False) * step_world
        out = torch.empty_like(sigma)
        out[order] = sigma
        return out

    return eval_fn
