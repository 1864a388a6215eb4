"""Image metrics (PSNR, SSIM; whole image, A-NeRF's body box, foreground-masked) and ``fast-anerf eval``.

Three regions per frame: the whole image (everything the camera sees, background included); A-NeRF's
``--eval`` region, the 2D box of the body's bounding cylinder (``cylinder_box``: the rendering cylinder of
``kp_to_valid_rays``, expands 1.6 / 1.1, projected and clipped), for numbers comparable with A-NeRF's; and the
pixels of the ground-truth mask only, the hardest number.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fast_anerf.data.rays import bounding_cylinder, project_points
from fast_anerf.data.split import Split, load_poses, load_split
from fast_anerf.errors import UserError, folder_holds


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of images in [0, 1] (``[..., 3]``); ``mask [...]`` restricts it to those pixels."""
    err = (pred - target).pow(2)
    mse = err[mask].mean() if mask is not None else err.mean()
    return float(-10.0 * torch.log10(mse.clamp_min(1e-10)))


def ssim_map(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5), mean over channels: ``[H, W]``.

    Windows that overhang the border see zeros there, as in the pytorch-msssim fork A-NeRF's ``--eval`` uses
    (``F.conv2d(..., padding=window // 2)``), so our numbers compare with its tables.
    """
    coords = torch.arange(window, dtype=pred.dtype) - window // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(3, 1, window, window).to(pred.device)
    x = pred.permute(2, 0, 1)[None]
    y = target.permute(2, 0, 1)[None]

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, kernel, padding=window // 2, groups=3)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s[0].mean(dim=0)


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean SSIM of ``[H, W, 3]`` images in [0, 1], over ``mask [H, W]`` pixels when given."""
    s = ssim_map(pred, target)
    return float(s[mask].mean() if mask is not None else s.mean())


def cylinder_box(kp3d: torch.Tensor, c2w: torch.Tensor, focal: float, center: tuple[float, float], height: int,
                 width: int, pad: float) -> tuple[slice, slice]:  # fmt: skip
    """Rows and columns of the image box around A-NeRF's rendering cylinder of the pose ``kp3d [24, 3]``.

    The cylinder (``bounding_cylinder`` with A-NeRF's rendering expands 1.6 / 1.1; ``pad`` = 250 mm in world
    units) is projected through its top and bottom circles (64 points each); the box is their pixel range,
    clipped to the image (the whole image when the cylinder is behind the camera).
    """
    cx, cz, radius, top, bottom = bounding_cylinder(kp3d.double(), pad, 1.6, 1.1).tolist()
    angle = torch.linspace(0, 2 * math.pi, 65, dtype=torch.float64)[:-1]
    ring_x, ring_z = cx + radius * torch.cos(angle), cz + radius * torch.sin(angle)
    points = torch.cat([torch.stack([ring_x, torch.full_like(ring_x, y), ring_z], dim=-1) for y in (top, bottom)])
    uv, depth = project_points(points, c2w.double(), focal, center)
    uv = uv[depth > 0]
    if len(uv) == 0:
        return slice(0, height), slice(0, width)
    u0, v0 = (int(c) for c in uv.amin(dim=0).floor().clamp_min(0))
    u1, v1 = int(uv[:, 0].max().ceil()) + 1, int(uv[:, 1].max().ceil()) + 1
    rows, cols = slice(min(v0, height - 1), max(min(v1, height), 1)), slice(min(u0, width - 1), max(min(u1, width), 1))
    return rows, cols


def evaluate_split(model, split: Split, settings, max_frames: int | None = None, chunk: int = 4096) -> dict:
    """Render frames of a split with its poses and cameras (mean appearance code) and score them.

    The ground truth is, as in A-NeRF's ``--eval``, the photo's foreground (its mask) over the file's background
    image when the file has one (``bkgds``: the model renders onto it, and the photo's own background differs
    from it by noise, light changes and passers-by no model can know); the photo itself otherwise.

    Returns a dict with mean ``psnr``, ``ssim``, ``psnr_fg``, ``ssim_fg``, ``frames``, ``seconds_per_frame``
    and per-frame lists, plus the first frame's ``(pred, gt)`` ``[H, W, 3]`` under ``_preview`` (only that one
    is kept: held-out splits of A-NeRF's data have hundreds of 512^2 frames).
    """
    from fast_anerf.renderer import render_image

    n = split.n_images
    count = n if max_frames is None else min(n, max_frames)
    frames = torch.linspace(0, n - 1, count).round().long().unique().tolist()
    per_frame: dict[str, list[float]] = {k: [] for k in ("psnr", "ssim", "psnr_box", "ssim_box", "psnr_fg", "ssim_fg")}
    pad = 250.0 * (split.ext_scale or 0.001)  # A-NeRF's cylinder margin: 250 mm
    preview = None
    start = time.perf_counter()
    for i in frames:
        skts = split.skts[split.pose_idxs[i]]
        out = render_image(
            model,
            split.c2ws[i],
            float(split.focals[i]),
            tuple(split.centers[i].tolist()),
            split.height,
            split.width,
            skts,
            code_id=-1,
            background=split.background(i),
            settings=settings,
            chunk=chunk,
        )
        pred = out["rgb"].cpu().clamp(0, 1)
        gt = split.image(i)
        mask = split.masks[i]
        if split.bkgds_u8 is not None:  # A-NeRF's --eval: the photo's body over the background the model renders on
            gt = torch.where(mask[..., None], gt, split.background(i))
        per_frame["psnr"].append(psnr(pred, gt))
        per_frame["ssim"].append(ssim(pred, gt))
        center = tuple(split.centers[i].tolist())
        rows, cols = cylinder_box(split.kp3d[split.pose_idxs[i]], split.c2ws[i], float(split.focals[i]), center,
                                  split.height, split.width, pad)  # fmt: skip
        per_frame["psnr_box"].append(psnr(pred[rows, cols], gt[rows, cols]))
        per_frame["ssim_box"].append(ssim(pred[rows, cols], gt[rows, cols]))
        per_frame["psnr_fg"].append(psnr(pred, gt, mask) if mask.any() else math.nan)
        per_frame["ssim_fg"].append(ssim(pred, gt, mask) if mask.any() else math.nan)
        preview = preview or (pred, gt)
    elapsed = time.perf_counter() - start
    result = {key: float(torch.tensor(values).nanmean()) for key, values in per_frame.items()}
    result.update(
        frames=len(frames),
        seconds_per_frame=elapsed / max(len(frames), 1),
        frame_indices=frames,
        per_frame=per_frame,
        _preview=preview,
    )
    return result


def find_eval_splits(data: Path) -> dict[str, Path]:
    """``{"test_view": ..., "test_pose": ...}`` in a data folder, or ``{"<stem>": file}`` for one .h5."""
    data = Path(data)
    if data.is_file():
        return {data.stem: data}
    if not data.is_dir():
        raise UserError(f"{data}: no such data folder or .h5 file; pass the folder with test_view.h5/test_pose.h5")
    splits = {name: data / f"{name}.h5" for name in ("test_view", "test_pose") if (data / f"{name}.h5").is_file()}
    if not splits:
        raise UserError(f"{data}: no test_view.h5 or test_pose.h5 in this folder{folder_holds(data)}; pass a "
                        "held-out .h5 file instead of the folder")  # fmt: skip
    return splits


def format_table(results: dict[str, dict]) -> str:
    """A small text table of split -> metrics."""
    lines = [f"{'split':<12} {'frames':>6} {'PSNR':>7} {'SSIM':>6} {'PSNR box':>9} {'SSIM box':>9} {'PSNR fg':>8} "
             f"{'SSIM fg':>8} {'s/frame':>8}"]  # fmt: skip
    for name, r in results.items():
        lines.append(
            f"{name:<12} {r['frames']:>6d} {r['psnr']:>7.2f} {r['ssim']:>6.3f} {r['psnr_box']:>9.2f} "
            f"{r['ssim_box']:>9.3f} {r['psnr_fg']:>8.2f} {r['ssim_fg']:>8.3f} {r['seconds_per_frame']:>8.2f}"
        )
    return "\n".join(lines)


def public(result: dict) -> dict:
    """The JSON-able part of an ``evaluate_split`` result."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def default_eval_data(ckpt: dict, ckpt_path: Path) -> Path:
    """The held-out data of a training run: its ``eval_data`` (what it evaluated while training), else the folder
    of its training .h5 (checkpoints written before ``eval_data`` existed); a UserError when it has none."""
    stored = ckpt.get("eval_data")
    if stored and not Path(stored).exists():  # moved or deleted since training
        raise UserError(f"{ckpt_path}: the run's held-out data {stored} (recorded in the checkpoint) is not there "
                        "any more; pass --data with where it is now")  # fmt: skip
    if stored:
        return Path(stored)
    train = str(ckpt.get("data") or "")
    if not train:
        raise UserError(f"{ckpt_path}: the checkpoint does not say which data it was trained on; pass --data")
    folder = Path(train).parent
    if "eval_data" in ckpt and not any((folder / f"{name}.h5").is_file() for name in ("test_view", "test_pose")):
        raise UserError(f"{ckpt_path}: the run had no held-out data (it trained on {train} alone); pass --data "
                        "with a folder holding test_view.h5 / test_pose.h5, or one .h5")  # fmt: skip
    return folder


def _is_eval_output(path: Path) -> bool:
    """Whether ``path`` may be replaced by ``--json``: empty, or an earlier ``fast-anerf eval --json`` output (a
    JSON object with ``checkpoint`` and ``splits``). Not a checkpoint or an .h5, nor a training run's own
    ``eval.json`` (its config and timings would be lost), nor any other JSON a user keeps. Reads small files only."""
    try:
        if path.stat().st_size == 0:
            return True
        if path.stat().st_size > 64 << 20:
            return False
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and "checkpoint" in obj and "splits" in obj


def run_eval(args) -> dict:
    """``fast-anerf eval``: metrics of a checkpoint on held-out splits, to screen and JSON."""
    from fast_anerf.model import load_character
    from fast_anerf.renderer import RenderSettings
    from fast_anerf.run_files import probe_writable, write_json_atomic
    from fast_anerf.run_setup import pick_device

    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"--max-frames {args.max_frames}: expected at least 1 frame per split (or leave it out)")
    if args.json is not None and Path(args.json).is_dir():  # found now, not after minutes of rendering
        raise UserError(f"{args.json}: is a folder; --json is the file the metrics go to, e.g. {args.json}/eval.json")
    if args.json is not None and Path(args.json).is_file() and not _is_eval_output(Path(args.json)):
        raise UserError(f"{args.json}: exists and is not an earlier output of eval --json (a checkpoint, data, a "
                        "run's eval.json?); --json would replace it — choose another path")  # fmt: skip
    if args.json is not None:
        probe_writable(Path(args.json))
    device = pick_device(args.device)
    model, ckpt = load_character(args.ckpt, device=device, backend=args.backend)
    model.eval()
    data_dir = args.data if args.data is not None else default_eval_data(ckpt, args.ckpt)
    settings = RenderSettings.from_train(model.config.train, training=False)
    results = {}
    for name, path in find_eval_splits(data_dir).items():
        results[name] = public(evaluate_split(model, load_split(path), settings, args.max_frames))
    print(f"{model.describe()}  step {ckpt.get('step', '?')}  device {device}")
    print(format_table(results))
    poses = refined_pose_errors(ckpt)
    if args.json is not None:
        summary = {"checkpoint": str(args.ckpt), "step": ckpt.get("step"), "splits": results}
        if poses is not None:
            summary["poses"] = poses
        write_json_atomic(args.json, summary)
        print(f"wrote {args.json}")
    return results


def refined_pose_errors(ckpt: dict) -> dict | None:
    """MPJPE / PA-MPJPE of the training data's poses before and after refinement, from a checkpoint.

    Needs the refined poses in the checkpoint (a run that refined them) and ``gt_kp3d`` in the training file
    it names; prints the table (or why there is none) and returns ``{"before", "after"}`` or None.
    """
    from fast_anerf.pose import RefinablePoses
    from fast_anerf.pose_metrics import refinement_errors

    state = (ckpt.get("poses") or {}).get("poses")
    if state is None:
        return None
    path = Path(str(ckpt.get("data", "")))
    if not path.is_file():
        print(f"pose errors: skipped, the training data {path} is not there any more")
        return None
    split = load_poses(path)  # the poses only: the images of a big training file are not needed here
    n_rows = state["root"].shape[0]
    if split.gt_kp3d is None or split.gt_kp3d.shape != split.kp3d.shape or split.kp3d.shape[0] != n_rows:
        print(f"pose errors: skipped, {path} has no gt_kp3d for its {n_rows} poses")
        return None
    poses = RefinablePoses(torch.zeros(n_rows, 24, 3), torch.zeros(n_rows, 3), state["rest_pose"], state["time_ids"])
    poses.load_state_dict(state)
    with torch.no_grad():
        refined = poses()[0]
    return refinement_errors(split, refined)
