"""Real spherical harmonics of a unit direction, as tiny-cuda-nn's ``SphericalHarmonics`` encoding.

tcnn maps its [0, 1]^3 input to ``d = 2x - 1``; here the caller passes the unit direction directly. The
basis is the standard real SH basis (degree ``n`` gives ``n^2`` outputs), with tcnn's constants and order.
"""

from __future__ import annotations

import torch


def spherical_harmonics(directions: torch.Tensor, degree: int = 4) -> torch.Tensor:
    """Real SH basis of unit directions.

    Args:
        directions: ``[..., 3]`` unit vectors (x, y, z).
        degree: 1 to 4 (``degree**2`` outputs: 1, 4, 9 or 16).

    Returns:
        ``[..., degree**2]``.
    """
    if not 1 <= degree <= 4:
        raise ValueError(f"spherical_harmonics: degree must be 1..4, got {degree}")
    x, y, z = directions.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            1.0925484305920792 * xy,
            -1.0925484305920792 * yz,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * xz,
            0.54627421529603959 * (xx - yy),
        ]
    if degree > 3:
        out += [
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * xy * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)
