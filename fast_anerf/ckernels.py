"""Build and load the project's small C kernels (CPU fast paths), with a clear reason when that is impossible.

Each kernel file (``encoding/hashgrid_cpu.c``, ``sampling/march_cpu.c``) is compiled on first use with the
system C compiler (``$CC``, default ``cc``; ``-O3 -std=c99``, which also rules out fused multiply-adds, so the
float results equal the PyTorch twins'), with ``ckernels.h`` force-included and with OpenMP when the compiler
has it, into a shared library cached under ``$FAST_ANERF_CACHE/kernels`` (default ``~/.cache/fast_anerf/kernels``),
named by a hash of sources, compiler and flags and written atomically (concurrent first uses are safe). ~0.3 s
per file. Loaded with ``ctypes``.

Threads: every exported kernel takes ``(pieces, start, stop, ...)`` and runs ``pieces`` parts of its range on
OpenMP threads, which are torch's own (``ckernels.h`` says why that matters); ``pieces_for`` picks how many.
A compiler without OpenMP gives kernels that run on the caller's thread alone (``openmp(lib)`` is then False).

No compiler, or a failed build: ``load_library`` returns ``(None, why)``; each caller then uses its
plain-PyTorch twin (``auto``) or raises a one-line ``UserError`` (an explicit request).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from fast_anerf.cache import cache_dir

FLAGS = ("-O3", "-shared", "-fPIC", "-std=c99")
OPENMP_FLAG = "-fopenmp"
HEADER = Path(__file__).with_name("ckernels.h")

# ctypes argument types, for the signatures the callers declare.
PTR, I64, INT, FLOAT, DOUBLE = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_double


@functools.cache
def load_library(source: Path, signatures: tuple[tuple[str, tuple], ...]) -> tuple[ctypes.CDLL | None, str]:
    """Build (once per source version) and load ``source``; returns (library or None, why it is unavailable).

    Args:
        source: the C file.
        signatures: ``((function name, ctypes argument types), ...)``; every function returns void.
    """
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        return None, f"no C compiler ({compiler!r} not found; set CC or install gcc)"
    why = ""
    for flags in ((*FLAGS, OPENMP_FLAG), FLAGS):  # OpenMP when the compiler has it; else one thread per call
        lib, why = _build_and_load(compiler, flags, source)
        if lib is not None:
            break
    if lib is None:
        return None, why
    for name, argtypes in signatures:
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = list(argtypes), None
    lib.kernels_openmp.argtypes, lib.kernels_openmp.restype = [], ctypes.c_int
    return lib, ""


def _build_and_load(compiler: str, flags: tuple[str, ...], source: Path) -> tuple[ctypes.CDLL | None, str]:
    """Compile ``source`` (with ``ckernels.h``) unless the cache holds it, and load it: (library or None, why)."""
    key = source.read_bytes() + HEADER.read_bytes() + " ".join([compiler, *flags, sys.platform]).encode()
    target = cache_dir("kernels") / f"{source.stem}_{hashlib.sha256(key).hexdigest()[:16]}.so"
    try:
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                built = Path(tmp) / target.name
                cmd = [compiler, *flags, "-include", str(HEADER), "-o", str(built), str(source), "-lm"]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                if done.returncode != 0:
                    first = (done.stderr.strip().splitlines() or ["no output"])[0]
                    return None, f"building {source.name} failed ({first})"
                os.replace(built, target)  # atomic: a concurrent build just replaces it with the same bytes
        return ctypes.CDLL(str(target)), ""
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"building or loading {source.name} failed ({type(err).__name__}: {err})"


def openmp(lib: ctypes.CDLL) -> bool:
    """Whether ``lib``'s kernels run their pieces in parallel (built with OpenMP)."""
    return bool(lib.kernels_openmp())


def pieces_for(lib: ctypes.CDLL, items: int, min_items_per_piece: int) -> int:
    """How many pieces to split ``items`` into: one per torch thread, at least ``min_items_per_piece`` each
    (below that, waking a thread costs more than it saves); 1 without OpenMP."""
    if not openmp(lib):
        return 1
    return max(1, min(torch.get_num_threads(), items // max(1, min_items_per_piece)))
