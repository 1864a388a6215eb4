"""Where fast-anerf keeps what it can rebuild: ``$FAST_ANERF_CACHE``, else ``~/.cache/fast_anerf``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(name: str) -> Path:
    """The cache folder ``name`` (``builtin``: the built-in data; ``kernels``: compiled C; ``images``: disk
    copies of images that do not fit in memory). Not created here."""
    root = os.environ.get("FAST_ANERF_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "fast_anerf") / name
