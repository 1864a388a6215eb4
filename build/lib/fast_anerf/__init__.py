"""fast-anerf: fast articulated neural radiance fields (A-NeRF) with per-bone hash grids."""

__version__ = "0.1.0"
