"""NeRF positional encoding and A-NeRF's distance cutoff (specs/anerf.md §2.4).

Positional encoding of ``x [..., D]`` with ``L`` frequencies, as NeRF/A-NeRF write it:

    [x, sin(2^0 x), cos(2^0 x), sin(2^1 x), cos(2^1 x), ..., sin(2^(L-1) x), cos(2^(L-1) x)]

Each block is ``D`` wide (frequency-major, component-minor), frequencies are exact powers of two and there
is **no pi factor**. The encoded width is ``D * (1 + 2L)`` with the input copy, ``2LD`` without.

The cutoff turns a joint's features off far from the joint: ``w_j = 1 - sigmoid(tau * (v_j - c))``, with
``v_j`` the distance to joint ``j`` (world units), ``c`` the cutoff distance (0.5 units = 500 mm) and a
sharpness ``tau`` that grows during training (``cutoff_tau``). Multiplying every block of the encoding by
``w`` (per component) lets the network ignore joints that are far away, which is what makes A-NeRF's
24-joint input generalise to unseen poses.
"""

from __future__ import annotations

import torch

TAU_START = 20.0  # A-NeRF's initial cutoff sharpness (per world unit)
TAU_MAX = 2000.0  # and its cap


def encoded_dim(in_dim: int, n_freqs: int, include_input: bool = True) -> int:
    """Width of ``positional_encoding`` for an ``in_dim``-wide input and ``n_freqs`` frequencies."""
    return in_dim * (int(include_input) + 2 * n_freqs)


def positional_encoding_blocks(x: torch.Tensor, n_freqs: int, include_input: bool = True) -> torch.Tensor:
    """The encoding as blocks, before flattening.

    Args:
        x: ``[..., D]`` input (any units; frequencies multiply it directly).
        n_freqs: number of frequencies ``L`` (``2^0 .. 2^(L-1)``); 0 gives only the input copy.
        include_input: put ``x`` itself in front.

    Returns:
        ``[..., B, D]`` with ``B = include_input + 2L`` blocks ordered ``[x, sin f0, cos f0, sin f1, ...]``.
        Keeping the block axis lets callers weight components (cutoff) with one broadcast multiply.
    """
    blocks = [x.unsqueeze(-2)] if include_input else []
    if n_freqs > 0:
        freqs = 2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)  # exact powers of two
        scaled = x.unsqueeze(-2) * freqs.unsqueeze(-1)  # [..., L, D]
        # One sin and one cos over all frequencies, interleaved to [sin f0, cos f0, sin f1, ...].
        sincos = torch.stack([torch.sin(scaled), torch.cos(scaled)], dim=-2)  # [..., L, 2, D]
        blocks.append(sincos.flatten(-3, -2))  # [..., 2L, D]
    if not blocks:
        raise ValueError("positional_encoding: n_freqs=0 with include_input=False encodes nothing; enable one")
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-2)


def positional_encoding(
    x: torch.Tensor,
    n_freqs: int,
    include_input: bool = True,
    weights: torch.Tensor | None = None,
    weight_input: bool = True,
) -> torch.Tensor:
    """Positional encoding ``[..., D] -> [..., D * (include_input + 2L)]``, optionally cut off.

    Args:
        x: ``[..., D]`` input.
        n_freqs: number of frequencies ``L``.
        include_input: put ``x`` itself in front.
        weights: optional ``[..., D]`` per-component weights (e.g. ``cutoff_weights`` repeated per joint
            component) multiplying every block.
        weight_input: whether ``weights`` also multiply the raw input copy (A-NeRF's ``cutoff_inputs``);
            when False only the sin/cos blocks are weighted.

    Returns:
        ``[..., D * B]`` in the layout described in the module docstring.
    """
    blocks = positional_encoding_blocks(x, n_freqs, include_input)  # [..., B, D]
    if weights is not None:
        w = weights.unsqueeze(-2)  # [..., 1, D]
        if include_input and not weight_input:
            blocks = torch.cat([blocks[..., :1, :], blocks[..., 1:, :] * w], dim=-2)
        else:
            blocks = blocks * w
    return blocks.flatten(-2)


def cutoff_weights(dist: torch.Tensor, tau: torch.Tensor | float, cutoff: float) -> torch.Tensor:
    """A-NeRF's per-joint cutoff ``w = 1 - sigmoid(tau * (dist - cutoff))``.

    Args:
        dist: ``[..., J]`` distances to the joints (world units).
        tau: sharpness (per world unit), a scalar or 0-d tensor.
        cutoff: distance where ``w = 0.5`` (world units).

    Returns:
        ``[..., J]`` weights in (0, 1): ~1 well inside the cutoff, ~0 well outside.
    """
    # 1 - sigmoid(z) == sigmoid(-z), which keeps precision where w is tiny.
    return torch.sigmoid(-tau * (dist - cutoff))


def cutoff_tau(step: int, rate: float = 10.0, cutoff_step: int = 250) -> float:
    """A-NeRF's sharpness schedule ``min(20 * rate^(step / (cutoff_step * 1000)), 2000)``.

    With the defaults: 20 at step 0, ~79.6 at 150k, 200 at 250k, 2000 from 500k on.
    """
    return min(TAU_START * rate ** (max(step, 0) / (cutoff_step * 1000.0)), TAU_MAX)
