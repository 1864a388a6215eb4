"""Choose between the pure-PyTorch encodings, the fused CPU hash-grid kernels and tiny-cuda-nn.

tinycudann is optional: it is not on the package registry and needs CUDA. On a CPU-only machine
``import tinycudann`` raises ``OSError`` ("Unknown compute capability"), not ``ImportError``, so the
guard catches both. ``"cpu"`` is the hash grid's fused C kernels (``hashgrid_cpu.py``, built with the system C
compiler on first use; the MLPs stay plain PyTorch). ``"auto"`` picks tcnn when it is importable and the
tensors live on CUDA, the C kernels for CPU tensors when they build, otherwise torch; an explicit ``"tcnn"`` or
``"cpu"`` that cannot run is a ``UserError``, never a silent fallback.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Literal

import torch

from fast_anerf.encoding.hashgrid_cpu import cpu_kernels_available, load_kernels
from fast_anerf.errors import UserError

Backend = Literal["auto", "torch", "cpu", "tcnn"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "cpu", "tcnn")


@functools.cache
def _import_tcnn() -> tuple[ModuleType | None, str]:
    """Import tinycudann once; returns (module or None, reason it is unavailable)."""
    try:
        import tinycudann  # optional; raises OSError without a GPU

        return tinycudann, ""
    except (ImportError, OSError) as err:  # OSError: CPU-only torch or no matching extension
        return None, f"{type(err).__name__}: {err}"


def tcnn_module() -> ModuleType | None:
    """The ``tinycudann`` module, or None when it cannot be imported here."""
    return _import_tcnn()[0]


def tcnn_available() -> bool:
    """True when tinycudann imports (which implies CUDA is available)."""
    return tcnn_module() is not None


def check_backend(requested: str) -> None:
    """Whether ``requested`` can run on this machine at all, whatever the device (models are built on the CPU
    and moved later): a one-line ``UserError`` for an unknown name, ``"cpu"`` without its C kernels, ``"tcnn"``
    without tinycudann. Which device it needs is checked when it runs (``resolve_backend``)."""
    if requested not in BACKENDS:
        raise UserError(f"unknown backend {requested!r}: expected one of {', '.join(BACKENDS)}")
    if requested == "cpu":
        _, why = load_kernels()
        if why:
            raise UserError(f"backend 'cpu' was requested but its C kernels are unavailable: {why}; "
                            "pass --backend torch (or auto)")  # fmt: skip
    if requested == "tcnn":
        mod, why = _import_tcnn()
        if mod is None:
            raise UserError(
                f"backend 'tcnn' was requested but tinycudann is unavailable ({why}): pass --backend torch "
                "(or auto), or install tinycudann: TCNN_CUDA_ARCHITECTURES=<cc> pip install --no-build-isolation "
                "git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"
            )


def resolve_backend(requested: str, device: torch.device | str | None = None) -> str:
    """Resolve a backend request to the one that will actually run: ``"torch"``, ``"cpu"`` or ``"tcnn"``.

    Args:
        requested: ``"auto"`` (tcnn when importable and ``device`` is CUDA; on a CPU device the C kernels
            when they build; else torch), ``"torch"``, ``"cpu"`` or ``"tcnn"``.
        device: where the module's tensors live; None means "CUDA if available".

    Raises:
        UserError: ``check_backend``'s errors, or ``"cpu"`` on a CUDA device, ``"tcnn"`` on a CPU device.
    """
    check_backend(requested)
    if requested == "torch":
        return "torch"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = torch.device(device).type == "cuda"
    if requested == "auto":
        # Only try the (slow, noisy) import or the build when it could be used at all.
        if on_cuda:
            return "tcnn" if tcnn_available() else "torch"
        return "cpu" if cpu_kernels_available() else "torch"
    if requested == "cpu":
        if on_cuda:
            raise UserError("backend 'cpu' runs on the CPU but the device is CUDA: pass --backend auto or tcnn")
        return "cpu"
    if not on_cuda:
        raise UserError(
            f"backend 'tcnn' needs a CUDA device but the device is {torch.device(device)}: "
            "pass --backend torch (or auto), or move the model to a GPU"
        )
    return "tcnn"
