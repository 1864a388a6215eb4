"""The C kernels' build and threads (``ckernels.py``, ``ckernels.h``): OpenMP when the compiler has it, the same
bits for any number of pieces, the caller's denormal flushing on every worker thread, and a serial fallback."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch
from test_hashgrid import make_points

from fast_anerf import ckernels
from fast_anerf.encoding.hashgrid import HashGridConfig
from fast_anerf.encoding.hashgrid_cpu import (
    _SIGNATURES,
    MIN_POINTS_PER_THREAD,
    SOURCE,
    _level_args,
    cpu_kernels_available,
    hashgrid_cpu,
    load_kernels,
)

needs_kernels = pytest.mark.skipif(not cpu_kernels_available(), reason=f"C kernels unavailable: {load_kernels()[1]}")
CFG = HashGridConfig(8, 2, 14, 4, 1.5)  # the demo preset's grid: dense and hashed levels


def _compiler_has_openmp(tmp_path) -> bool:
    compiler = shutil.which("cc")
    if compiler is None:
        return False
    src = tmp_path / "omp.c"
    src.write_text("#include <omp.h>\nint f(void) { return omp_get_max_threads(); }\n")
    cmd = [compiler, "-fopenmp", "-shared", "-fPIC", "-o", str(tmp_path / "omp.so"), str(src)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def _inputs(n: int):
    x = make_points(n - 5, seed=11).requires_grad_(True)  # (5 edge points + n - 5 random ones)
    bone_ids = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(12))
    params = torch.empty(3, CFG.n_params).uniform_(-1, 1, generator=torch.Generator().manual_seed(13))
    grad_out = torch.randn(n, CFG.n_output_dims, generator=torch.Generator().manual_seed(14))
    return x, bone_ids, params.requires_grad_(True), grad_out


@needs_kernels
def test_kernels_use_openmp_when_the_compiler_has_it(tmp_path):
    if not _compiler_has_openmp(tmp_path):
        pytest.skip("the C compiler has no OpenMP: the kernels run on one thread (tested below)")
    lib = load_kernels()[0]
    assert ckernels.openmp(lib)
    assert ckernels.pieces_for(lib, 10 * MIN_POINTS_PER_THREAD, MIN_POINTS_PER_THREAD) == torch.get_num_threads()
    assert ckernels.pieces_for(lib, MIN_POINTS_PER_THREAD - 1, MIN_POINTS_PER_THREAD) == 1


@needs_kernels
def test_any_number_of_threads_gives_the_same_bits(one_torch_thread):
    """Points (forward, x gradient) and levels (table gradient) split into 1, 2 or 3 pieces: equal results."""
    x, bone_ids, params, grad_out = _inputs(3 * MIN_POINTS_PER_THREAD + 5)
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        y = hashgrid_cpu(x, bone_ids, params, CFG)
        results.append((y, *torch.autograd.grad(y, [x, params], grad_out)))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))
    assert all(t.abs().max() > 0.1 for t in results[0])  # not a comparison of zeros


@needs_kernels
@pytest.mark.parametrize("flush", [True, False])
def test_worker_threads_flush_denormals_as_the_caller_does(flush, one_torch_thread):
    """A table of denormal values read by two pieces (one of them on a worker thread): with the caller flushing
    denormals every feature is exactly 0, without it none is; a worker that kept its own setting would differ."""
    torch.set_num_threads(2)
    x, bone_ids, _, _ = _inputs(2 * MIN_POINTS_PER_THREAD + 5)
    params = torch.full((3, CFG.n_params), 1e-39)  # denormal in float32
    if not torch.set_flush_denormal(flush):
        pytest.skip("this CPU cannot flush denormals")
    try:
        y = hashgrid_cpu(x.detach(), bone_ids, params, CFG)
    finally:
        torch.set_flush_denormal(False)  # the process default (each Trainer sets its own)
    if flush:
        assert torch.equal(y, torch.zeros_like(y))
    else:
        assert bool((y != 0).all())


@needs_kernels
def test_without_openmp_the_kernels_run_serially_with_equal_results(tmp_path, monkeypatch):
    monkeypatch.setenv("FAST_ANERF_CACHE", str(tmp_path))
    monkeypatch.setattr(ckernels, "OPENMP_FLAG", "-fno-such-flag-for-this-test")  # the OpenMP build fails
    lib, why = ckernels.load_library.__wrapped__(SOURCE, _SIGNATURES)
    assert lib is not None, why
    assert not ckernels.openmp(lib) and ckernels.pieces_for(lib, 10**6, 1) == 1
    x, bone_ids, params, _ = _inputs(500)
    order = torch.argsort(bone_ids)
    xs = x.detach().index_select(0, order).contiguous()
    base = (bone_ids.index_select(0, order) * CFG.n_entries).contiguous()
    out = torch.empty(len(xs), CFG.n_output_dims)
    table = params.detach().contiguous()
    ptrs = (xs.data_ptr(), base.data_ptr(), table.data_ptr())
    lib.hg_forward(2, 0, len(xs), *ptrs, *_level_args(CFG), out.data_ptr(), None)  # (no derivatives)
    expected = hashgrid_cpu(x.detach(), bone_ids, table, CFG).index_select(0, order)
    assert torch.equal(out, expected)
