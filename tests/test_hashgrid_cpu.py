"""The ``cpu`` backend's fused C kernels against the plain-PyTorch twin and the per-point Python reference."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from test_hashgrid import POW2, SMALL, make_points, ref_forward

from fast_anerf.encoding.backend import resolve_backend
from fast_anerf.encoding.hashgrid import HashGridConfig, MultiBoneHashGrid, hashgrid_torch
from fast_anerf.encoding.hashgrid_cpu import MIN_POINTS_PER_THREAD, cpu_kernels_available, hashgrid_cpu, load_kernels

needs_kernels = pytest.mark.skipif(not cpu_kernels_available(), reason=f"C kernels unavailable: {load_kernels()[1]}")
CONFIGS = [SMALL, POW2] + [HashGridConfig(4, f, 12, 4, 1.6) for f in (1, 4, 8)] + [HashGridConfig(8, 2, 14, 4, 1.5)]
IDS = ["small", "pow2", "F1", "F4", "F8", "demo"]


@needs_kernels
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_forward_matches_python_reference_and_torch_twin(cfg):
    x = torch.cat([make_points(40), torch.tensor([[-0.3, 0.2, 1.2], [1.7, 2.5, -0.9]])])  # edges, out of domain
    bone_ids = torch.arange(len(x)) % 3
    params = torch.empty(3, cfg.n_params).uniform_(-1, 1)
    y = hashgrid_cpu(x, bone_ids, params, cfg)
    torch.testing.assert_close(y.double(), ref_forward(x, bone_ids, params, cfg), rtol=0, atol=1e-6)
    torch.testing.assert_close(y, hashgrid_torch(x, bone_ids, params, cfg), rtol=0, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_gradients_match_torch_twin(cfg, threads, one_torch_thread):
    torch.set_num_threads(threads)  # 2: the points and levels are split across two calls
    n = 2 * MIN_POINTS_PER_THREAD + 37
    x = make_points(n, seed=3).requires_grad_(True)
    bone_ids = torch.randint(0, 4, (len(x),), generator=torch.Generator().manual_seed(4))
    params = torch.empty(4, cfg.n_params).uniform_(-1, 1).requires_grad_(True)
    grad_out = torch.randn(len(x), cfg.n_output_dims, generator=torch.Generator().manual_seed(5))
    gx, gp = torch.autograd.grad(hashgrid_cpu(x, bone_ids, params, cfg), [x, params], grad_out)
    gx_t, gp_t = torch.autograd.grad(hashgrid_torch(x, bone_ids, params, cfg), [x, params], grad_out)
    torch.testing.assert_close(gp, gp_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, gx_t, rtol=1e-4, atol=1e-5 * float(gx_t.abs().max()))
    assert gp.abs().max() > 0.1 and gx.abs().max() > 0.1  # the comparison is not between zeros
    # Deterministic: a second run gives the same bits (levels own disjoint table ranges, no atomics).
    gx2, gp2 = torch.autograd.grad(hashgrid_cpu(x, bone_ids, params, cfg), [x, params], grad_out)
    assert torch.equal(gp, gp2) and torch.equal(gx, gx2)


@needs_kernels
def test_module_backends_share_parameters_and_inplace_grad():
    """One set of parameters gives the same features on the torch and cpu backends (checkpoints move)."""
    torch.manual_seed(0)
    grid_cpu = MultiBoneHashGrid(3, SMALL, backend="cpu", init_scale=1.0, inplace_grad=True)
    grid_torch = MultiBoneHashGrid(3, SMALL, backend="torch", init_scale=1.0, inplace_grad=True)
    grid_torch.load_state_dict(grid_cpu.state_dict())
    assert grid_cpu.backend_name == "cpu" and grid_torch.backend_name == "torch"
    x, bone_ids = torch.rand(500, 3), torch.randint(0, 3, (500,))
    torch.testing.assert_close(grid_cpu(x, bone_ids), grid_torch(x, bone_ids), rtol=0, atol=1e-6)
    for grid in (grid_cpu, grid_torch):
        grid(x, bone_ids).square().sum().backward()
        buffer = grid.params.grad
        grid(x, bone_ids).square().sum().backward()  # added into the existing .grad, in place
        assert grid.params.grad is buffer
    torch.testing.assert_close(grid_cpu.params.grad, grid_torch.params.grad, rtol=1e-5, atol=1e-6)


@needs_kernels
def test_auto_picks_the_kernels_on_cpu_and_names_them():
    if not torch.cuda.is_available():
        assert resolve_backend("auto") == "cpu"
    assert resolve_backend("auto", "cpu") == "cpu"
    assert MultiBoneHashGrid(2, SMALL).backend_name == "cpu"


@needs_kernels
def test_cpu_backend_builds_on_a_cuda_machine_and_refuses_cuda_tensors_when_run(monkeypatch):
    """Models are built on the CPU and moved later: on a machine with CUDA, ``--device cpu --backend cpu`` must
    work, and the device is checked where the backend runs (a one-line error on CUDA tensors)."""
    from fast_anerf.encoding.mlp import TcnnMLP
    from fast_anerf.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    grid, mlp = MultiBoneHashGrid(2, SMALL, backend="cpu"), TcnnMLP(4, 2, backend="cpu")  # no error
    assert grid.backend_name == "cpu" and mlp.backend_name == "torch"  # params on the CPU
    with pytest.raises(UserError, match="backend 'cpu' runs on the CPU but the device is CUDA: pass --backend auto"):
        resolve_backend("cpu", "cuda")


def test_without_a_compiler_auto_falls_back_and_explicit_cpu_is_a_user_error(tmp_path):
    """A fresh process with CC pointing nowhere: auto gives torch, --backend cpu a one-line error."""
    code = (
        "from fast_anerf.encoding.backend import resolve_backend\n"
        "from fast_anerf.errors import UserError\n"
        "print(resolve_backend('auto', 'cpu'))\n"
        "try:\n    resolve_backend('cpu', 'cpu')\nexcept UserError as e:\n    print('ERR', e)\n"
    )
    env = {"CC": "no-such-compiler-xyz", "FAST_ANERF_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "torch"
    assert lines[1].startswith("ERR backend 'cpu' was requested but its C kernels are unavailable")
    assert "no-such-compiler-xyz" in lines[1] and "--backend torch" in lines[1]


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_no_grad_encoding_equals_the_fields_torch_path(threads, monkeypatch):
    """``blend_encode_cpu`` (no-grad encoding of the fast field) gives the PyTorch path's numbers exactly."""
    from fast_anerf.config import RunConfig
    from fast_anerf.data.synthetic import builtin_rest_pose
    from fast_anerf.model import Character
    from fast_anerf.skeleton import pose_skeleton

    monkeypatch.setattr("fast_anerf.encoding.hashgrid_cpu.MIN_SAMPLES_PER_THREAD", 64)  # several chunks
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        rest = torch.as_tensor(builtin_rest_pose())
        field = Character(RunConfig(), rest, n_frame_codes=3, backend="cpu").field
        assert field.backend_name == "cpu"
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            field.grid.params.uniform_(-1, 1, generator=g)
        kp3d, skts = pose_skeleton(rest, torch.randn(24, 3, generator=g) * 0.3, rest[0])
        x = torch.randn(3000, 3, generator=g) * 0.25 + kp3d[0]
        x_local = torch.einsum("jab,nb->nja", skts[:, :3, :3], x) + skts[:, :3, 3]
        x_local[:50, 3] = field.box_min[3]  # on a box face: weight 0 but inside
        d = torch.nn.functional.normalize(torch.randn(3000, 3, generator=g), dim=-1)
        d_local = torch.einsum("jab,nb->nja", skts[:, :3, :3], d)
        codes = torch.randint(-1, 3, (3000,), generator=g)
        occupancy = field.blend_mask  # the model's grids: a random half of the cells occupied
        occupancy.binaries.copy_(torch.rand(occupancy.binaries.shape, generator=g) < 0.5)
        with torch.no_grad():
            fused = (field._encode(x_local, d_local), field(x_local, d_local, codes), field.density(x_local))
            unmasked_fused = field.density(x_local, masked=False)
            field.fuse_no_grad = False
            plain = (field._encode(x_local, d_local), field(x_local, d_local, codes), field.density(x_local))
            assert torch.equal(unmasked_fused, field.density(x_local, masked=False))
            assert not torch.equal(plain[2], field.density(x_local, masked=False))  # the mask matters here
        inside = fused[0][1] > 0
        assert 0.2 < float(inside.float().mean()) < 0.95  # samples inside and outside the boxes
        for got, want in zip([*fused[0], *fused[1], fused[2]], [*plain[0], *plain[1], plain[2]], strict=True):
            assert torch.equal(got, want)
        empty = field._encode(x_local[:0], d_local[:0])
        assert [tuple(t.shape) for t in empty] == [(0, field.grid.n_output_dims), (0,), (0, 3)]
    finally:
        torch.set_num_threads(previous)
