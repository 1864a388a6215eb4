"""A data split (one A-NeRF .h5) in memory as tensors, and the training ray pool drawn from it.

The built-in character and typical A-NeRF subsets are small enough (100 frames at 128^2 = 5 MB) to hold in
memory; every ray a batch may draw (pixels inside the dilated sampling masks, A-NeRF §1.5) is precomputed
once, so drawing a batch is pure indexing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fast_anerf.data.anerf_h5 import open_anerf_h5
from fast_anerf.data.rays import pixel_rays
from fast_anerf.errors import DataError


@dataclass
class Split:
    """One .h5 in memory. Images ``[N, H, W, 3]`` float in [0, 1]; poses per pose row ``P``."""

    path: Path
    images: torch.Tensor  # [N, H, W, 3]
    masks: torch.Tensor  # [N, H, W] bool
    sampling_masks: torch.Tensor  # [N, H, W] bool
    backgrounds: torch.Tensor  # [N, H, W, 3] (a view of the few distinct backgrounds)
    c2ws: torch.Tensor  # [N, 4, 4]
    focals: torch.Tensor  # [N]
    centers: torch.Tensor  # [N, 2]
    pose_idxs: torch.Tensor  # [N] long: row of kp3d/bones/skts of each image
    kp3d: torch.Tensor  # [P, 24, 3]
    bones: torch.Tensor  # [P, 24, 3] axis-angle
    skts: torch.Tensor  # [P, 24, 4, 4]
    rest_pose: torch.Tensor | None  # [24, 3] when the file has it
    gt_kp3d: torch.Tensor | None
    gt_skts: torch.Tensor | None  # [P, 24, 4, 4] true poses, when the file has them (built-in character)
    ext_scale: float | None
    img_paths: list[str]

    @property
    def n_images(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]


def load_split(path: Path) -> Split:
    """Read and validate an A-NeRF .h5 into memory (``DataError`` on bad files)."""
    with open_anerf_h5(path) as data:
        everything = data.load_all()
        arrays = data.arrays
        n, h, w = data.n_images, data.height, data.width
        if everything["bkgds"] is not None:
            bg_idx = arrays.get("bkgd_idxs", np.zeros(n, np.int64)).astype(np.int64)
            if bg_idx.min() < 0 or bg_idx.max() >= everything["bkgds"].shape[0]:
                raise DataError(
                    f"{path}: key 'bkgd_idxs' points past the {everything['bkgds'].shape[0]} "
                    "backgrounds in 'bkgds'; fix the indices"
                )
            bkgds = torch.from_numpy(everything["bkgds"]).float() / 255.0
            backgrounds = bkgds[torch.from_numpy(bg_idx)]
        else:  # A-NeRF's Mixamo files: white background set in memory
            backgrounds = torch.ones(1, h, w, 3).expand(n, h, w, 3)
        centers = np.array([data.center(i) for i in range(n)], np.float32)
        focals = np.array(arrays["focals"], np.float32).reshape(n)  # the reader gives one camera per image
        c2ws = np.array(arrays["c2ws"], np.float32).reshape(n, 4, 4)
        img_paths = [str(p) for p in arrays.get("img_paths", [])]
        ext = arrays.get("ext_scale")
        return Split(
            path=Path(path),
            images=torch.from_numpy(everything["imgs"]).float() / 255.0,
            masks=torch.from_numpy(everything["masks"]),
            sampling_masks=torch.from_numpy(everything["sampling_masks"]),
            backgrounds=backgrounds,
            c2ws=torch.from_numpy(c2ws),
            focals=torch.from_numpy(focals),
            centers=torch.from_numpy(centers),
            pose_idxs=torch.as_tensor(np.asarray(data.pose_idxs), dtype=torch.long),
            kp3d=torch.as_tensor(arrays["kp3d"], dtype=torch.float32),
            bones=torch.as_tensor(arrays["bones"], dtype=torch.float32),
            skts=torch.as_tensor(arrays["skts"], dtype=torch.float32),
            rest_pose=torch.as_tensor(arrays["rest_pose"], dtype=torch.float32) if "rest_pose" in arrays else None,
            gt_kp3d=torch.as_tensor(arrays["gt_kp3d"], dtype=torch.float32) if "gt_kp3d" in arrays else None,
            gt_skts=torch.as_tensor(arrays["gt_skts"], dtype=torch.float32) if "gt_skts" in arrays else None,
            ext_scale=float(np.asarray(ext).reshape(-1)[0]) if ext is not None else None,
            img_paths=img_paths,
        )


class RayPool:
    """Every trainable ray of a split, precomputed, with A-NeRF's batch sampling.

    A batch takes ``images_per_batch`` distinct images (a random permutation cycled so every image is used
    once per epoch, as A-NeRF's ``RayImageSampler``) and ``rays_per_batch // images_per_batch`` pixels of
    each, uniformly inside its sampling mask. All randomness comes from ``generator``, whose state (with
    ``state_dict``) makes resumed runs identical to uninterrupted ones.
    """

    def __init__(self, split: Split, rays_per_batch: int, images_per_batch: int, generator: torch.Generator):
        self.split = split
        self.generator = generator
        self.images_per_batch = min(images_per_batch, split.n_images)
        self.rays_per_image = max(1, rays_per_batch // self.images_per_batch)
        flat_masks = split.sampling_masks.reshape(split.n_images, -1)
        counts = flat_masks.sum(dim=1)
        if int(counts.min()) == 0:
            empty = int((counts == 0).nonzero()[0])
            raise DataError(
                f"{split.path}: key 'sampling_masks' (or 'masks') of image {empty} is empty; "
                "every training image needs foreground pixels — fix or drop that frame"
            )
        image_idx, pixel_ids = flat_masks.nonzero(as_tuple=True)  # sorted by image
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts
        self.image_idx = image_idx
        self.rays_o, self.rays_d = pixel_rays(
            split.c2ws[image_idx], split.focals[image_idx], split.centers[image_idx], pixel_ids, split.width
        )
        self.rgb = split.images.reshape(split.n_images, -1, 3)[image_idx, pixel_ids]
        self.background = split.backgrounds.reshape(split.n_images, -1, 3)[image_idx, pixel_ids]
        self._perm = torch.randperm(split.n_images, generator=generator)
        self._cursor = 0

    def __len__(self) -> int:
        return self.image_idx.numel()

    def next_batch(self) -> dict[str, torch.Tensor]:
        """``rays_o, rays_d, rgb, background [B, 3]``, ``image_idx [B]`` (B = images x rays per image)."""
        if self._cursor + self.images_per_batch > self.split.n_images:
            self._perm = torch.randperm(self.split.n_images, generator=self.generator)
            self._cursor = 0
        images = self._perm[self._cursor : self._cursor + self.images_per_batch].sort().values
        self._cursor += self.images_per_batch
        u = torch.rand(images.numel(), self.rays_per_image, generator=self.generator)
        local = (u * self.counts[images, None]).long().clamp_max(self.counts[images, None] - 1)
        idx = (self.starts[images, None] + local).reshape(-1)
        return {
            "rays_o": self.rays_o[idx],
            "rays_d": self.rays_d[idx],
            "rgb": self.rgb[idx],
            "background": self.background[idx],
            "image_idx": self.image_idx[idx],
        }

    def state_dict(self) -> dict:
        return {"perm": self._perm.clone(), "cursor": self._cursor, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        n = self.split.n_images
        perm = state["perm"]
        if not isinstance(perm, torch.Tensor) or not torch.equal(perm.sort().values, torch.arange(n)):
            raise ValueError(f"the saved ray pool draws from {len(perm)} images but this data has {n}")
        self._perm = perm.clone()
        self._cursor = int(state["cursor"])
        self.generator.set_state(state["generator"])
