"""Pose metrics against ground-truth joints: MPJPE and PA-MPJPE, in data units and millimetres.

* ``mpjpe``: mean per-joint position error after aligning the roots (pelvis-centred, the usual protocol).
* ``abs_mpjpe``: without any alignment (root placement errors count too).
* ``pa_mpjpe``: after a per-frame similarity (Procrustes with scale, ``roma.rigid_points_registration``).

Millimetres: A-NeRF files store positions as "mm x ext_scale" (``ext_scale = 0.001`` for its SPIN/SURREAL data
and for our built-in character, whose units are metres), so ``mm = error / ext_scale``. A-NeRF additionally
rescales SPIN skeletons to a reference size (``pose_scale``), so for such files millimetres are nominal.
Without ``ext_scale`` only data units are reported.
"""

from __future__ import annotations

import roma
import torch

from fast_anerf.skeleton import SMPL_JOINT_NAMES


def per_joint_errors(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-frame, per-joint errors ``[P, J]`` of ``pred``/``gt [P, J, 3]`` under the three protocols."""
    pred, gt = pred.double(), gt.double()
    absolute = (pred - gt).norm(dim=-1)
    centred = ((pred - pred[:, :1]) - (gt - gt[:, :1])).norm(dim=-1)
    rot, trans, scale = roma.rigid_points_registration(pred, gt, compute_scaling=True)
    aligned = scale[:, None, None] * pred @ rot.transpose(-1, -2) + trans[:, None]
    return {"mpjpe": centred, "abs_mpjpe": absolute, "pa_mpjpe": (aligned - gt).norm(dim=-1)}


def pose_metrics(pred: torch.Tensor, gt: torch.Tensor, ext_scale: float | None) -> dict:
    """Mean errors (data units and mm) and the per-joint table of ``pred``/``gt [P, 24, 3]``."""
    if pred.shape != gt.shape:
        raise ValueError(f"pose_metrics: predicted joints {tuple(pred.shape)} vs ground truth {tuple(gt.shape)}")
    errors = per_joint_errors(pred, gt)
    to_mm = (1.0 / ext_scale) if ext_scale else None
    result: dict = {"frames": int(pred.shape[0]), "ext_scale": ext_scale}
    for name, err in errors.items():
        result[name] = float(err.mean())
        if to_mm:
            result[f"{name}_mm"] = float(err.mean()) * to_mm
    per_joint = errors["mpjpe"].mean(dim=0) * (to_mm or 1.0)
    result["per_joint_mpjpe"] = {SMPL_JOINT_NAMES[j]: float(v) for j, v in enumerate(per_joint)}
    result["unit"] = "mm" if to_mm else "data units"
    return result


def format_pose_table(before: dict, after: dict | None = None) -> str:
    """Text table of the three metrics (and the per-joint MPJPE), before and optionally after refinement."""
    unit = before["unit"]
    suffix = "_mm" if unit == "mm" else ""
    lines = [f"{'pose error (' + unit + ')':<22} {'before':>9}" + (f" {'after':>9} {'change':>8}" if after else "")]
    for name, label in (("mpjpe", "MPJPE"), ("pa_mpjpe", "PA-MPJPE"), ("abs_mpjpe", "MPJPE (no alignment)")):
        b = before[name + suffix]
        row = f"{label:<22} {b:>9.1f}"
        if after:
            a = after[name + suffix]
            # A change relative to an error of ~0 (the estimates were the truth) means nothing: n/a.
            change = f"{100 * (a - b) / b:>7.1f}%" if b > (1e-3 if unit == "mm" else 1e-6) else f"{'n/a':>8}"
            row += f" {a:>9.1f} {change}"
        lines.append(row)
    lines.append("per joint MPJPE: " + ", ".join(
        f"{name} {before['per_joint_mpjpe'][name]:.0f}" + (f"->{after['per_joint_mpjpe'][name]:.0f}" if after else "")
        for name in SMPL_JOINT_NAMES[1:]
    ))  # fmt: skip
    return "\n".join(lines)


def refinement_errors(split, refined_kp3d: torch.Tensor) -> dict | None:
    """Errors of a split's estimated poses and of ``refined_kp3d [P, 24, 3]`` against its ``gt_kp3d``.

    ``split``: has ``kp3d``, ``gt_kp3d`` (or None) and ``ext_scale`` (``data.split.Split``). Prints the
    before/after table and returns ``{"before", "after"}`` (``pose_metrics`` dicts); None, printing nothing,
    when the split has no ground truth of the same shape.
    """
    gt = split.gt_kp3d
    if gt is None or gt.shape != split.kp3d.shape:
        return None
    result = {
        "before": pose_metrics(split.kp3d, gt, split.ext_scale),
        "after": pose_metrics(refined_kp3d, gt, split.ext_scale),
    }
    print(format_pose_table(result["before"], result["after"]))
    return result
