"""A data split (one A-NeRF .h5) in memory, and the training ray pool drawn from it.

Memory is what limits the data a user can train on: A-NeRF's SURREAL file holds 10,800 images of 512^2 and
its Mixamo and H36M frames are ~1000^2 (specs/anerf.md §1.3). So a split keeps the images as the file stores
them (uint8, 3 bytes per pixel), the foreground masks as bool, and of the sampling masks only the flat ids
of their pixels (int32, for the ~15 % of pixels rays are drawn from); rays and float colours are made per
batch; training does not keep the masks at all. ``scripts/bench_data_memory.py`` measures it: ~1.1 MB per
512^2 image, where float images and precomputed rays took ~8. Images that do not fit in the free memory even
so are mapped from an uncompressed copy on disk (``image_cache.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fast_anerf.data.anerf_h5 import AnerfData, dilate_mask, open_anerf_h5
from fast_anerf.data.image_cache import human_size, mapped_images
from fast_anerf.data.rays import pixel_rays
from fast_anerf.errors import DataError

_READ_BLOCK = 64  # images per read of the masks: bounds the transient uint8 copy of big files


@dataclass
class Split:
    """One .h5 in memory. ``N`` images of ``H x W``; poses per pose row ``P``.

    Colours are uint8 as stored; ``image``, ``background``, ``rgb_at`` and ``background_at`` give floats in
    [0, 1]. Trainable pixels (A-NeRF's dilated sampling masks) are ``sample_pixels``, flat ``v * W + u``,
    image-major: image ``i`` owns ``sample_counts[i]`` consecutive entries.
    """

    path: Path
    images_u8: torch.Tensor  # [N, H, W, 3] uint8, in memory or mapped from a disk copy
    masks: torch.Tensor | None  # [N, H, W] bool foreground; None when loaded for training only
    sample_pixels: torch.Tensor  # [R] int32, flat pixel ids inside the sampling masks, image-major
    sample_counts: torch.Tensor  # [N] long
    bkgds_u8: torch.Tensor | None  # [N_bg, H, W, 3] uint8 distinct backgrounds; None = white
    bkgd_idxs: torch.Tensor  # [N] long row of bkgds_u8 of each image
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
        return self.images_u8.shape[0]

    @property
    def height(self) -> int:
        return self.images_u8.shape[1]

    @property
    def width(self) -> int:
        return self.images_u8.shape[2]

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as float ``[H, W, 3]`` in [0, 1]."""
        return self.images_u8[i].float() / 255.0

    def background(self, i: int) -> torch.Tensor:
        """Background of image ``i``, float ``[H, W, 3]`` in [0, 1] (white when the file has none)."""
        if self.bkgds_u8 is None:  # A-NeRF's Mixamo files: white background set in memory
            return torch.ones(self.height, self.width, 3)
        return self.bkgds_u8[self.bkgd_idxs[i]].float() / 255.0

    def rgb_at(self, image_idx: torch.Tensor, pixel_ids: torch.Tensor) -> torch.Tensor:
        """Colours ``[B, 3]`` in [0, 1] of pixels ``pixel_ids [B]`` (flat) of images ``image_idx [B]``."""
        return self.images_u8.view(self.n_images, -1, 3)[image_idx, pixel_ids].float() / 255.0

    def background_at(self, image_idx: torch.Tensor, pixel_ids: torch.Tensor) -> torch.Tensor:
        """Background colours ``[B, 3]`` in [0, 1] behind the same pixels as ``rgb_at``."""
        if self.bkgds_u8 is None:
            return torch.ones(image_idx.numel(), 3)
        flat = self.bkgds_u8.view(self.bkgds_u8.shape[0], -1, 3)
        return flat[self.bkgd_idxs[image_idx], pixel_ids].float() / 255.0


def available_memory() -> int | None:
    """Bytes the system can still give this process (Linux ``MemAvailable``); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def least_memory(n: int, h: int, w: int, masks: bool) -> int:
    """Bytes a split of ``n`` images of ``h x w`` holds at least: RGB uint8, 3 per pixel, and with ``masks`` a
    bool mask, 1 more (the trainable pixels' ids add 4 bytes each, ~15 % of the built-in character's pixels)."""
    return n * h * w * (4 if masks else 3)


def load_split(path: Path, keep_masks: bool = True) -> Split:
    """Read and validate an A-NeRF .h5 into memory (``DataError`` on bad files); images that do not fit in the
    free memory are mapped from a disk copy instead (``image_cache.py``).

    ``keep_masks=False`` (training, refinement: only the trainable pixels are needed) leaves ``masks`` None.
    """
    with open_anerf_h5(path) as data:
        arrays = data.arrays
        n, h, w = data.n_images, data.height, data.width
        images = _images(data, keep_masks)
        bkgds = data.read("bkgds").reshape(-1, h, w, 3) if "bkgds" in data.keys else None
        bkgd_idxs = np.asarray(arrays.get("bkgd_idxs", np.zeros(n, np.int64)), np.int64)
        if bkgds is not None and (bkgd_idxs.min() < 0 or bkgd_idxs.max() >= bkgds.shape[0]):
            raise DataError(
                f"{path}: key 'bkgd_idxs' points past the {bkgds.shape[0]} backgrounds in 'bkgds'; fix the indices"
            )
        has_sampling = "sampling_masks" in data.keys
        masks = np.empty((n, h, w), bool) if keep_masks else None
        pixels, counts = [], np.empty(n, np.int64)
        for a in range(0, n, _READ_BLOCK):  # masks in blocks: never a whole-file uint8 copy beside the bools
            b = min(n, a + _READ_BLOCK)
            # Read even when not kept: a damaged file fails here, at start-up, not at the first render of it.
            block = data.read("masks", slice(a, b)).reshape(b - a, h, w) != 0
            if masks is not None:
                masks[a:b] = block
            if has_sampling:
                sampling = data.read("sampling_masks", slice(a, b)).reshape(b - a, -1) != 0
            else:  # A-NeRF's rule for files without them: the mask dilated 5x5 twice
                sampling = dilate_mask(block).reshape(b - a, -1)
            counts[a:b] = sampling.sum(axis=1)
            pixels.append(np.nonzero(sampling)[1].astype(np.int32))  # row-major: image-major, as promised
        centers = np.array([data.center(i) for i in range(n)], np.float32)
        focals = np.array(arrays["focals"], np.float32).reshape(n)  # the reader gives one camera per image
        c2ws = np.array(arrays["c2ws"], np.float32).reshape(n, 4, 4)
        img_paths = [str(p) for p in arrays.get("img_paths", [])]
        return Split(
            path=Path(path),
            images_u8=torch.from_numpy(images),
            masks=torch.from_numpy(masks) if masks is not None else None,
            sample_pixels=torch.from_numpy(np.concatenate(pixels)),
            sample_counts=torch.from_numpy(counts),
            bkgds_u8=torch.from_numpy(bkgds) if bkgds is not None else None,
            bkgd_idxs=torch.from_numpy(bkgd_idxs if bkgds is not None else np.zeros(n, np.int64)),
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
            ext_scale=data.ext_scale,
            img_paths=img_paths,
        )


def _images(data: AnerfData, keep_masks: bool) -> np.ndarray:
    """uint8 ``[N, H, W, 3]``: read into memory, or mapped from a disk copy when they do not fit in it."""
    n, h, w = data.n_images, data.height, data.width
    need, free = least_memory(n, h, w, keep_masks), available_memory()
    if free is None or need <= free:
        return data.read("imgs").reshape(n, h, w, 3)
    images, copy, built = mapped_images(data)
    print(f"{data.path}: {n} images of {w}x{h} need {human_size(need)} but {human_size(free)} of memory are "
          f"free: reading them from {'a new' if built else 'the'} uncompressed copy {copy} "
          f"({human_size(images.nbytes)}, kept while the file is unchanged)")  # fmt: skip
    return images


@dataclass
class FilePoses:
    """The poses of an A-NeRF .h5 without its images (what pose errors need): ``kp3d [P, 24, 3]``, ``gt_kp3d``
    (or None) and ``ext_scale`` (A-NeRF's scale of positions, e.g. 0.001 for millimetres to metres; or None)."""

    kp3d: torch.Tensor
    gt_kp3d: torch.Tensor | None
    ext_scale: float | None


def load_poses(path: Path) -> FilePoses:
    """Read the poses of an A-NeRF .h5, validated, without reading a pixel."""
    with open_anerf_h5(path) as data:
        gt = data.arrays.get("gt_kp3d")
        return FilePoses(
            kp3d=torch.as_tensor(data.arrays["kp3d"], dtype=torch.float32),
            gt_kp3d=torch.as_tensor(gt, dtype=torch.float32) if gt is not None else None,
            ext_scale=data.ext_scale,
        )


def check_sampling_masks(split: Split, images: torch.Tensor | None = None) -> None:
    """One line naming the first of ``images [M]`` (default all) with no pixel to draw rays from."""
    counts = split.sample_counts if images is None else split.sample_counts[images]
    if int(counts.min()) == 0:
        empty = int((counts == 0).nonzero()[0]) if images is None else int(images[counts == 0][0])
        raise DataError(
            f"{split.path}: key 'sampling_masks' (or 'masks') of image {empty} is empty; "
            "every training image needs foreground pixels — fix or drop that frame"
        )


class RayPool:
    """Every trainable ray of a split, with A-NeRF's batch sampling.

    A batch takes ``images_per_batch`` distinct images (a random permutation cycled so every image is used
    once per epoch, as A-NeRF's ``RayImageSampler``) and ``rays_per_batch // images_per_batch`` pixels of
    each, uniformly inside its sampling mask. Rays and colours are made for the batch's pixels only (a few
    thousand per step), not stored for every trainable pixel. All randomness comes from ``generator``, whose
    state (with ``state_dict``) makes resumed runs identical to uninterrupted ones. ``images [M]``: draw from these
    images of the split only (``fast-anerf refine``'s windows of consecutive frames); default all.
    """

    def __init__(self, split: Split, rays_per_batch: int, images_per_batch: int, generator: torch.Generator,
                 images: torch.Tensor | None = None) -> None:  # fmt: skip
        self.split = split
        self.generator = generator
        self.images = torch.arange(split.n_images) if images is None else torch.as_tensor(images, dtype=torch.long)
        self.images_per_batch = min(images_per_batch, self.images.numel())
        self.rays_per_image = max(1, rays_per_batch // self.images_per_batch)
        check_sampling_masks(split, self.images)
        counts = split.sample_counts
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts
        self._perm = self.images[torch.randperm(self.images.numel(), generator=generator)]
        self._cursor = 0

    def __len__(self) -> int:
        return self.split.sample_pixels.numel()

    def next_batch(self) -> dict[str, torch.Tensor]:
        """``rays_o, rays_d, rgb, background [B, 3]``; ``image_idx``, ``pixel_ids`` (flat) ``[B]`` long.

        B = images per batch x rays per image, grouped by image in increasing order."""
        if self._cursor + self.images_per_batch > self.images.numel():
            self._perm = self.images[torch.randperm(self.images.numel(), generator=self.generator)]
            self._cursor = 0
        images = self._perm[self._cursor : self._cursor + self.images_per_batch].sort().values
        self._cursor += self.images_per_batch
        u = torch.rand(images.numel(), self.rays_per_image, generator=self.generator)
        local = (u * self.counts[images, None]).long().clamp_max(self.counts[images, None] - 1)
        pixel_ids = self.split.sample_pixels[(self.starts[images, None] + local).reshape(-1)].long()
        image_idx = images.repeat_interleave(self.rays_per_image)
        split = self.split
        rays_o, rays_d = pixel_rays(
            split.c2ws[image_idx], split.focals[image_idx], split.centers[image_idx], pixel_ids, split.width
        )
        return {
            "rays_o": rays_o,
            "rays_d": rays_d,
            "rgb": split.rgb_at(image_idx, pixel_ids),
            "background": split.background_at(image_idx, pixel_ids),
            "image_idx": image_idx,
            "pixel_ids": pixel_ids,
        }

    def state_dict(self) -> dict:
        return {"perm": self._perm.clone(), "cursor": self._cursor, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        n = self.images.numel()
        perm = state["perm"]
        if not isinstance(perm, torch.Tensor) or not torch.equal(perm.sort().values, self.images.sort().values):
            raise ValueError(f"the saved ray pool draws from {len(perm)} images but this one from {n}")
        self._perm = perm.clone()
        self._cursor = int(state["cursor"])
        self.generator.set_state(state["generator"])
