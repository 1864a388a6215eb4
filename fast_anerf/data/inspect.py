"""Look at an A-NeRF ``.h5``: a text report and a contact sheet with the projected skeleton.

``inspect_file`` reads any file with A-NeRF's required keys (ours or the authors'), prints what is in it
(every key with shape and dtype, pose and camera statistics, MPJPE against ``gt_kp3d`` when present) and
draws up to ``n_frames`` evenly spread frames: the image, the mask outline (magenta), the bones of
``kp3d`` projected through ``c2ws``/``focals``/``centers`` (left side green, right side blue, spine yellow)
and the joints as red dots, each tile labelled with its image index. Pure numpy drawing; PIL (a dependency
of imageio) writes the labels and the PNG.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from fast_anerf.data.anerf_h5 import open_anerf_h5
from fast_anerf.data.image_cache import human_size
from fast_anerf.data.rays import project_points
from fast_anerf.data.split import least_memory
from fast_anerf.errors import OutputError
from fast_anerf.media import draw_segment
from fast_anerf.run_files import atomic_path
from fast_anerf.skeleton import SMPL_JOINT_NAMES, SMPL_PARENTS, bone_lengths

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JOINT_COLOUR = (255, 0, 0)
OUTLINE_COLOUR = (255, 0, 255)
LEFT_COLOUR, RIGHT_COLOUR, CENTRE_COLOUR = (0, 170, 0), (0, 80, 255), (230, 190, 0)
LABEL_HEIGHT = 14  # px above each tile for its label
TILE_TARGET = 256  # small images are enlarged (nearest neighbour) towards this size so markers are visible


def _stats(values: np.ndarray) -> str:
    return f"min {values.min():.3f}, mean {values.mean():.3f}, max {values.max():.3f}"


def _mpjpe_lines(arrays: dict[str, np.ndarray], pose_idxs: np.ndarray, scale: float | None) -> list[str]:
    """MPJPE of kp3d against gt_kp3d (no alignment), in data units and in mm when ext_scale is known."""
    if "gt_kp3d" not in arrays:
        return ["  MPJPE: no gt_kp3d in the file"]
    kp3d, gt = arrays["kp3d"], arrays["gt_kp3d"]
    if gt.ndim != 3 or gt.shape[1:] != kp3d.shape[1:]:
        return [f"  MPJPE: gt_kp3d has shape {gt.shape}, not comparable with kp3d {kp3d.shape}"]
    if len(gt) != len(kp3d):
        if len(gt) != len(pose_idxs):
            return [f"  MPJPE: gt_kp3d has {len(gt)} rows for {len(kp3d)} poses; not compared"]
        kp3d = kp3d[pose_idxs]
    err = np.linalg.norm(kp3d - gt, axis=-1)  # [P, 24]
    line = f"  MPJPE kp3d vs gt_kp3d: {err.mean():.4f} units"
    if scale is not None:
        line += f" = {err.mean() / scale:.1f} mm (ext_scale {scale:g}); max {err.max() / scale:.1f} mm"
    return [line]


def _outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask, bool ``[H, W]``."""
    pad = np.pad(mask, 1)
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return mask & ~inner


def _tile(data, i: int, scale: int) -> np.ndarray:
    """Image ``i`` enlarged ``scale`` times, mask outline and skeleton drawn: uint8 ``[sH, sW, 3]``."""
    img = data.image(i).repeat(scale, 0).repeat(scale, 1).copy()
    outline = _outline(data.mask(i)).repeat(scale, 0).repeat(scale, 1)
    img[outline] = OUTLINE_COLOUR
    kp = torch.as_tensor(data.arrays["kp3d"][data.pose_index(i)], dtype=torch.float64)
    c2w = torch.as_tensor(data.arrays["c2ws"][i], dtype=torch.float64)
    uv, depth = project_points(kp, c2w, float(data.arrays["focals"][i]), data.center(i))
    # Pixel u covers [u*s, u*s + s) once enlarged; its centre is u*s + (s - 1)/2.
    xy = uv.numpy() * scale + (scale - 1) / 2
    visible = depth.numpy() > 0
    width = 2 if scale >= 2 else 1
    for j, p in enumerate(SMPL_PARENTS):
        if p < 0 or not (visible[j] and visible[p]):
            continue
        name = SMPL_JOINT_NAMES[j]
        colour = LEFT_COLOUR if "left" in name else RIGHT_COLOUR if "right" in name else CENTRE_COLOUR
        draw_segment(img, xy[p], xy[j], colour, width)
    r = max(1, scale)  # dot radius: a (2r+1)^2 square
    for j in np.flatnonzero(visible):
        x, y = np.round(xy[j]).astype(np.int64)
        img[max(y - r, 0) : max(y + r + 1, 0), max(x - r, 0) : max(x + r + 1, 0)] = JOINT_COLOUR
    return img


def sheet_layout(n_tiles: int, height: int, width: int) -> tuple[int, int, int, tuple[int, int]]:
    """Contact-sheet geometry: ``(rows, cols, scale, (sheet_height, sheet_width))`` in pixels."""
    cols = max(1, math.ceil(math.sqrt(n_tiles)))
    rows = max(1, math.ceil(n_tiles / cols))
    scale = max(1, TILE_TARGET // max(height, width))
    return rows, cols, scale, (rows * (height * scale + LABEL_HEIGHT), cols * width * scale)


def check_sheet_path(sheet_path: Path) -> None:
    """Refuse a sheet path that holds something else: the sheet may replace an earlier sheet (a PNG), never a
    user's data file, notes or the inspected ``.h5`` itself. Raises ``OutputError`` (one line)."""
    if sheet_path.is_dir():
        raise OutputError(f"{sheet_path}: is a folder; --sheet is the PNG file to write, e.g. {sheet_path}/sheet.png")
    if sheet_path.is_file():
        with open(sheet_path, "rb") as handle:
            head = handle.read(len(PNG_SIGNATURE))
        if head and head != PNG_SIGNATURE:
            raise OutputError(f"{sheet_path}: exists and is not a PNG (data, notes?); the contact sheet would "
                              "replace it — pass --sheet with another path")  # fmt: skip


def write_contact_sheet(data, sheet_path: Path, n_frames: int = 16) -> list[int]:
    """Write the contact sheet PNG of an opened file (atomically); returns the image indices drawn."""
    from PIL import Image, ImageDraw  # pillow comes with imageio

    n = data.n_images
    idxs = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(n_frames, n))}) if n_frames > 0 else []
    rows, cols, scale, (sh, sw) = sheet_layout(len(idxs), data.height, data.width)
    th, tw = data.height * scale, data.width * scale
    sheet = np.full((sh, sw, 3), 255, np.uint8)
    for k, i in enumerate(idxs):
        r, c = divmod(k, cols)
        y0 = r * (th + LABEL_HEIGHT) + LABEL_HEIGHT
        sheet[y0 : y0 + th, c * tw : (c + 1) * tw] = _tile(data, i, scale)
    image = Image.fromarray(sheet)
    draw = ImageDraw.Draw(image)
    for k, i in enumerate(idxs):
        r, c = divmod(k, cols)
        draw.text((c * tw + 2, r * (th + LABEL_HEIGHT) + 1), f"#{i}", fill=(0, 0, 0))
    sheet_path = Path(sheet_path)
    with atomic_path(sheet_path) as tmp:  # a full disk or a read-only folder: one line naming the file
        image.save(tmp, format="PNG")
    return idxs


def inspect_file(
    path: str | os.PathLike, sheet_path: Path | None = None, n_frames: int = 16, sheet_required: bool = True
) -> str:
    """Describe an A-NeRF ``.h5`` and optionally draw a contact sheet.

    Args:
        path: the ``.h5`` file (raises ``DataError`` with a one-line fix if it is unreadable or invalid).
        sheet_path: where to write the contact-sheet PNG (``None``: no sheet).
        n_frames: at most this many evenly spread images on the sheet.
        sheet_required: False when ``sheet_path`` is only a default (next to a data file, perhaps on a
            read-only disk): a sheet that cannot be written is then a line of the report, not an error.
    Returns:
        The multi-line report.
    """
    sheet_refused = None
    if sheet_path is not None:
        try:
            check_sheet_path(Path(sheet_path))
        except OutputError as error:
            if sheet_required:
                raise
            sheet_refused, sheet_path = error, None
    with open_anerf_h5(path) as data:
        a = data.arrays
        kp3d = a["kp3d"]  # [P, 24, 3]
        lines = [
            f"{data.path}",
            f"  frames: {data.n_images} images, {data.height}x{data.width} px, {data.n_poses} poses",
            f"  training holds at least {human_size(least_memory(data.n_images, data.height, data.width, False))} in "
            "memory (the images as uint8; mapped from a copy on disk when they do not fit)",
            "  keys:",
        ]
        lines += [f"    {k:<16} {str(shape):<22} {dtype}" for k, (shape, dtype) in sorted(data.keys.items())]
        roots = kp3d[:, 0]
        extent = roots.max(0) - roots.min(0)
        lengths = bone_lengths(torch.as_tensor(kp3d, dtype=torch.float64))[:, 1:].mean().item()
        if "rest_pose" in a:
            rest_lengths = f" (rest_pose {bone_lengths(torch.as_tensor(a['rest_pose']))[1:].mean():.4f})"
        else:
            rest_lengths = ""
        spread = (kp3d.max(1) - kp3d.min(1)).mean(0)  # mean per-pose joint bounding box
        cam_pos = a["c2ws"][:, :3, 3]
        dist = np.linalg.norm(cam_pos - kp3d[data.pose_idxs, 0], axis=-1)
        lines += [
            "  poses (world units):",
            f"    root trajectory extent x/y/z: {extent[0]:.3f} / {extent[1]:.3f} / {extent[2]:.3f}",
            f"    mean bone length: {lengths:.4f}{rest_lengths}",
            f"    joint spread (mean box) x/y/z: {spread[0]:.3f} / {spread[1]:.3f} / {spread[2]:.3f}",
            "  cameras:",
            f"    focal (px): {_stats(a['focals'])}",
            f"    camera-to-root distance: {_stats(dist)}",
        ]
        lines += _mpjpe_lines(a, data.pose_idxs, data.ext_scale)
        if sheet_refused is not None:
            lines.append(f"  contact sheet: not written ({sheet_refused})")
        if sheet_path is not None:
            try:
                idxs = write_contact_sheet(data, Path(sheet_path), n_frames)
                lines.append(f"  contact sheet: {sheet_path} ({len(idxs)} frames: {idxs})")
            except OutputError as error:
                if sheet_required:
                    raise
                lines.append(f"  contact sheet: not written ({error}); pass --sheet PATH to write it elsewhere")
    return "\n".join(lines)
