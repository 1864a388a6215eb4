"""Background images for real video: a static camera's background from the frames, and a nearest-colour fill.

``data from-spin --background median`` stores ``static_background`` as the file's ``bkgds`` (A-NeRF estimates its
H36M backgrounds the same way: statistics of the pixels outside the person), so training composites the body
onto the real background instead of white.
"""

from __future__ import annotations

import numpy as np


def static_background(imgs: np.ndarray, covered: np.ndarray, max_frames: int = 200) -> np.ndarray:
    """A static camera's background: the per-pixel median of the frames where ``covered`` is False.

    Args:
        imgs: ``[N, H, W, 3]`` uint8 frames; covered: ``[N, H, W]`` bool (the dilated person masks).
        max_frames: at most this many frames, evenly spread, enter the median (memory: rows are done in blocks).

    Returns:
        ``[H, W, 3]`` uint8. Pixels covered in every frame (never seen: a person who barely moves) take the colour
        of the nearest seen pixels (``fill_from_neighbours``): training samples rays there, and white would be
        far off on a dark background. All white when no pixel is ever seen.
    """
    keep = np.unique(np.linspace(0, len(imgs) - 1, min(len(imgs), max_frames)).round().astype(int))
    covered = covered[keep]  # the frames are indexed per block below: never a copy of all kept frames
    n, (h, w) = len(keep), imgs.shape[1:3]
    out = np.full((h, w, 3), 255.0, np.float32)
    seen = ~covered.all(axis=0)  # [H, W]
    rows = max(1, (64 << 20) // max(n * w * 3 * 4, 1))  # ~64 MB of float32 per block
    for top in range(0, h, rows):
        block = imgs[keep, top : top + rows].astype(np.float32)
        block[covered[:, top : top + rows]] = np.nan
        block_seen = seen[top : top + rows]
        with np.errstate(all="ignore"):
            out[top : top + rows][block_seen] = np.nanmedian(block[:, block_seen], axis=0)  # [n_seen, 3]
    if seen.any():
        out = fill_from_neighbours(out, seen)
    return np.round(out).astype(np.uint8)


def fill_from_neighbours(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``image [H, W, C]`` with the pixels where ``known [H, W]`` is False filled, ring by ring, with the mean of
    their already-filled 4-neighbours (a nearest-colour fill). ``known`` must hold at least one True."""
    image, known = image.astype(np.float32).copy(), known.copy()
    while not known.all():
        total = np.zeros_like(image)
        count = np.zeros(known.shape, np.float32)
        padded_img = np.pad(image * known[..., None], ((1, 1), (1, 1), (0, 0)))
        padded_known = np.pad(known, 1).astype(np.float32)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):  # up, down, left, right neighbours
            total += padded_img[dy : dy + known.shape[0], dx : dx + known.shape[1]]
            count += padded_known[dy : dy + known.shape[0], dx : dx + known.shape[1]]
        ring = ~known & (count > 0)
        image[ring] = total[ring] / count[ring][:, None]
        known |= ring
    return image
