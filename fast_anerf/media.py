"""Writing render outputs: an all-or-nothing output folder, PNG frames, mp4 + gif videos, labels, skeleton
overlays, progress.

``OutputDir`` collects everything in a hidden sibling folder (``.<name>.partial-<pid>``) and renames it to the
final name only when the render succeeded, so an interrupted or failed render never leaves a half-written
folder (and never touches an existing one). A folder is recognised as an earlier render by its
``render.json``; only such a folder is replaced, anything else at that path is refused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from fast_anerf.errors import OutputError, UserError, output_error, writing
from fast_anerf.skeleton import SMPL_PARENTS

MARKER = "render.json"


class OutputDir:
    """Usage: ``out = OutputDir(path)`` (checks only) ... ``with out: write into out.tmp ...; out.commit()``."""

    def __init__(self, final: Path) -> None:
        self.final = Path(final)
        if self.final.exists():
            if not self.final.is_dir():
                raise UserError(f"{self.final}: exists and is not a folder; choose another --out")
            if any(self.final.iterdir()) and not (self.final / MARKER).is_file():
                raise UserError(
                    f"{self.final}: folder exists and does not hold an earlier render (no {MARKER}); "
                    "choose another --out or remove it"
                )
            foreign = sorted(p.name for p in self.final.iterdir() if not _render_output(p))
            if foreign:  # replacing the folder would delete them
                raise UserError(f"{self.final}: holds files a render did not write ({', '.join(foreign[:3])}); "
                                "move them out or choose another --out")  # fmt: skip
        self.tmp = self.final.parent / f".{self.final.name}.partial-{os.getpid()}"
        self.committed = False

    def __enter__(self) -> OutputDir:
        with writing(self.final):
            if self.tmp.exists():  # left by a crashed run with our pid: never ours to keep
                shutil.rmtree(self.tmp)
            self.tmp.mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk or a read-only folder while writing: one line naming --out
            raise output_error(self.final, exc) from None
        if isinstance(exc, OutputError) and exc.os_error is not None:  # name --out, not the hidden temp folder
            raise output_error(self.final, exc.os_error) from None
        return False

    def commit(self) -> Path:
        """Move the finished folder into place (replacing an earlier render at that path)."""
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
            os.replace(self.final, old)
        try:
            os.replace(self.tmp, self.final)
        except OSError:
            if old is not None:  # put the earlier render back: a failed render never loses the previous one
                os.replace(old, self.final)
            raise
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final


def _render_output(path: Path) -> bool:
    """Whether ``path`` (inside an earlier render's folder) is something a render writes."""
    if path.is_dir():
        return path.name == "frames" and all(p.suffix == ".png" for p in path.iterdir())
    return path.name == MARKER or path.suffix in (".mp4", ".gif", ".ply")


def to_uint8(image) -> np.ndarray:
    """``[H, W, 3]`` float in [0, 1] (tensor or array) -> uint8."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    return np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)


def write_png(path: Path, image: np.ndarray) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    # Encode in memory, write the bytes ourselves: on a full disk imageio's plugin raises again from __del__.
    path.write_bytes(iio.imwrite("<bytes>", image, extension=".png"))


def write_videos(frames: list[np.ndarray], folder: Path, stem: str = "video", fps: int = 12) -> list[Path]:
    """``<stem>.mp4`` (H.264 via imageio-ffmpeg) and ``<stem>.gif`` of uint8 ``[H, W, 3]`` frames.

    H.264 in yuv420p needs even sizes: odd frames get one replicated row/column for the mp4 only.
    """
    import imageio.v2 as iio2
    import imageio.v3 as iio

    height, width = frames[0].shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    mp4, gif = folder / f"{stem}.mp4", folder / f"{stem}.gif"
    writer = iio2.get_writer(
        mp4, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1
    )
    try:
        for frame in frames:
            writer.append_data(np.pad(frame, pad, mode="edge"))
    finally:
        writer.close()
    gif.write_bytes(iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0))
    return [mp4, gif]


def count_video_frames(path: Path) -> int:
    """Decode a video and count its frames (tests and sanity checks)."""
    import imageio.v2 as iio2

    reader = iio2.get_reader(path, format="FFMPEG")
    try:
        return sum(1 for _ in reader)
    finally:
        reader.close()


def label(image: np.ndarray, text: str, short: str | None = None) -> np.ndarray:
    """Draw ``text`` in the top-left corner of a uint8 ``[H, W, 3]`` image (black on a white box); ``short``
    instead when ``text`` does not fit the width."""
    from PIL import Image, ImageDraw

    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    box = draw.textbbox((2, 1), text)
    if short is not None and box[2] > image.shape[1]:
        text, box = short, draw.textbbox((2, 1), short)
    draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(255, 255, 255))
    draw.text((2, 1), text, fill=(0, 0, 0))
    return np.asarray(pil)


def draw_segment(image: np.ndarray, start: np.ndarray, end: np.ndarray, color, width: int = 1) -> None:
    """Draw a straight line ``width`` pixels wide between pixel positions ``start``/``end`` ``[2]`` (u column,
    v row; floats) into ``image`` uint8 ``[H, W, 3]`` in place, clipped to the image. A segment with a
    non-finite end or one reaching far off screen (a joint behind or beside the camera) is skipped."""
    height, width_px = image.shape[:2]
    if not (np.isfinite(start).all() and np.isfinite(end).all()):
        return
    n = int(np.ceil(np.abs(end - start).max())) + 1
    if n > 4 * (height + width_px):
        return
    points = start + np.linspace(0.0, 1.0, n)[:, None] * (end - start)
    for du in range(-(width // 2), width - width // 2):
        for dv in range(-(width // 2), width - width // 2):
            u = np.round(points[:, 0]).astype(np.int64) + du
            v = np.round(points[:, 1]).astype(np.int64) + dv
            inside = (u >= 0) & (u < width_px) & (v >= 0) & (v < height)
            image[v[inside], u[inside]] = color


def draw_skeleton(image: np.ndarray, uv: np.ndarray, depth: np.ndarray, color=(255, 40, 40)) -> np.ndarray:
    """Draw bones (joint to parent) onto ``image`` uint8 ``[H, W, 3]`` in place, ``2 * (side // 200) - 1``
    pixels wide (at least 1; ``side`` = the image's shorter side).

    Args:
        uv: ``[24, 2]`` pixel coordinates (u column, v row) of the joints; depth: ``[24]`` (> 0 in front).
    """
    width = 2 * max(1, min(image.shape[:2]) // 200) - 1
    for joint, parent in enumerate(SMPL_PARENTS):
        if parent >= 0 and depth[joint] > 0 and depth[parent] > 0:
            draw_segment(image, uv[parent], uv[joint], color, width)
    return image


def progress_bar():
    """A rich progress bar on stderr (stdout keeps the one-line summary)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
    )
