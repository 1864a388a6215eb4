"""Shared fixtures: a tiny built-in data set generated once per test session."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The built-in character at 48x48, 8 training frames (+ test_view / test_pose), ~4 s to make."""
    from fast_anerf.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("tiny_data")
    generate_dataset(out, n_frames=8, resolution=48, seed=0, verbose=False)
    return out
