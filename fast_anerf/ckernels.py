"""Build and load the project's small C kernels (CPU fast paths), with a clear reason when that is impossible.

Each kernel file (``encoding/hashgrid_cpu.c``, ``sampling/march_cpu.c``) is compiled on first use with the
system C compiler (``$CC``, default ``cc``; ``-O3 -std=c99``, which also rules out fused multiply-adds, so the
float results equal the PyTorch twins') into a shared library cached under ``$FAST_ANERF_CACHE/kernels``
(default ``~/.cache/fast_anerf/kernels``), named by a hash of source, compiler and flags and written atomically
(concurrent first uses are safe). ~0.3 s per file. Loaded with ``ctypes``, which releases the GIL during calls,
so callers can split work across Python threads.

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

FLAGS = ("-O3", "-shared", "-fPIC", "-std=c99")

# ctypes argument types, for the signatures the callers declare.
PTR, I64, INT, FLOAT, DOUBLE = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_double


def cache_dir() -> Path:
    root = os.environ.get("FAST_ANERF_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "fast_anerf") / "kernels"


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
    digest = hashlib.sha256(source.read_bytes() + " ".join([compiler, *FLAGS, sys.platform]).encode()).hexdigest()
    target = cache_dir() / f"{source.stem}_{digest[:16]}.so"
    try:
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                built = Path(tmp) / target.name
                cmd = [compiler, *FLAGS, "-o", str(built), str(source), "-lm"]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                if done.returncode != 0:
                    first = (done.stderr.strip().splitlines() or ["no output"])[0]
                    return None, f"building {source.name} failed ({first})"
                os.replace(built, target)  # atomic: a concurrent build just replaces it with the same bytes
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"building or loading {source.name} failed ({type(err).__name__}: {err})"
    for name, argtypes in signatures:
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = list(argtypes), None
    return lib, ""


_POOL: dict[tuple[int, int], ThreadPoolExecutor] = {}  # per (pid, threads): forked children get new ones


def thread_pool() -> ThreadPoolExecutor | None:
    """Worker threads for CPU kernels and the hash grid's per-level scatters (None with one torch thread)."""
    n = torch.get_num_threads()
    if n < 2:
        return None
    key = (os.getpid(), n)
    if key not in _POOL:
        # Every worker flushes denormals like the trainer's main thread (the flag is per thread): otherwise a
        # level's scatter rounds differently depending on which worker runs it, and runs stop being repeatable.
        _POOL[key] = ThreadPoolExecutor(
            max_workers=n, thread_name_prefix="fast_anerf", initializer=torch.set_flush_denormal, initargs=(True,)
        )
    return _POOL[key]


def split_range(total: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` bounds of ``parts`` near-equal, non-empty pieces of ``range(total)``."""
    bounds = [total * k // parts for k in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def run_calls(calls: list) -> None:
    """Run ``(fn, args)`` kernel calls on the thread pool, the last one on this thread; wait for all."""
    pool = thread_pool() if len(calls) > 1 else None
    futures = [pool.submit(fn, *args) for fn, args in calls[:-1]] if pool else []
    for fn, args in calls if pool is None else calls[-1:]:
        fn(*args)
    for fut in futures:
        fut.result()
