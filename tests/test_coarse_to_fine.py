"""Coarse-to-fine hash levels (``FastField.update_schedule``): BARF's weights, applied alike in every path."""

import pytest
import torch

from fast_anerf.config import FastFieldConfig, RunConfig
from fast_anerf.data.synthetic import builtin_rest_pose
from fast_anerf.encoding.hashgrid_cpu import cpu_kernels_available, load_kernels
from fast_anerf.field import coarse_to_fine_weights
from fast_anerf.model import Character, load_character, save_checkpoint
from fast_anerf.skeleton import pose_skeleton

C2F = FastFieldConfig(coarse_to_fine_steps=100, coarse_to_fine_start=2)


def test_levels_fade_in_on_barfs_schedule():
    assert coarse_to_fine_weights(0, C2F).tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert coarse_to_fine_weights(50, C2F).tolist() == [1, 1, 1, 1, 1, 0, 0, 0]  # alpha = 2 + 6 * 0.5
    half = coarse_to_fine_weights(25, C2F)  # alpha = 3.5: level 3 half way up its cosine ramp
    torch.testing.assert_close(half, torch.tensor([1, 1, 1, 0.5, 0, 0, 0, 0]), rtol=0, atol=1e-6)
    assert coarse_to_fine_weights(100, C2F) is None and coarse_to_fine_weights(10**6, C2F) is None
    assert coarse_to_fine_weights(0, FastFieldConfig()) is None  # off by default


def _field(backend):
    torch.manual_seed(0)
    model = Character(RunConfig(fast=C2F), torch.as_tensor(builtin_rest_pose()), n_frame_codes=2, backend=backend)
    with torch.no_grad():
        model.field.grid.params.uniform_(-1, 1)
    g = torch.Generator().manual_seed(1)
    kp3d, skts = pose_skeleton(model.rest_pose, torch.randn(24, 3, generator=g) * 0.3, model.rest_pose[0])
    x = torch.randn(2000, 3, generator=g) * 0.25 + kp3d[0]
    x_local = torch.einsum("jab,nb->nja", skts[:, :3, :3], x) + skts[:, :3, 3]
    d_local = torch.einsum("jab,nb->nja", skts[:, :3, :3], torch.nn.functional.normalize(torch.randn_like(x), dim=-1))
    return model.field, x_local, d_local


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_faded_levels_scale_the_features_with_and_without_gradients(backend):
    if backend == "cpu" and not cpu_kernels_available():
        pytest.skip(f"C kernels unavailable: {load_kernels()[1]}")
    field, x_local, d_local = _field(backend)
    field.update_schedule(100)  # all levels on
    full = field._encode(x_local, d_local)[0]
    field.update_schedule(25)
    weights = coarse_to_fine_weights(25, C2F).repeat_interleave(2)
    assert torch.equal(field.level_weights, weights)
    with torch.no_grad():  # the fused C encoding on the cpu backend
        torch.testing.assert_close(field._encode(x_local, d_local)[0], full * weights, rtol=0, atol=1e-6)
    x_local.requires_grad_(True)
    feats = field._encode(x_local, d_local)[0]
    torch.testing.assert_close(feats.detach(), full * weights, rtol=0, atol=1e-6)
    feats.sum().backward()
    grad = field.grid.params.grad
    assert grad is not None and bool(grad.abs().sum() > 0)
    field.update_schedule(25, poses_refined=False)  # a run on fixed poses trains every level from the start
    assert field.level_weights is None


@pytest.mark.parametrize("refined", [True, False])
def test_a_checkpoint_renders_with_the_levels_of_its_step(tmp_path, refined):
    model = Character(RunConfig(fast=C2F), torch.as_tensor(builtin_rest_pose()), n_frame_codes=2, backend="torch")
    save_checkpoint(tmp_path / "c.pt", model, step=25, poses={"state": 1} if refined else None)
    loaded, _ = load_character(tmp_path / "c.pt", backend="torch")
    if refined:
        assert torch.equal(loaded.field.level_weights, coarse_to_fine_weights(25, C2F).repeat_interleave(2))
    else:
        assert loaded.field.level_weights is None


@pytest.mark.parametrize(
    "table, words",
    [("coarse_to_fine_start = 9", "coarse_to_fine_start = 9.0 must be within 0-8"),
     ("coarse_to_fine_steps = -1", "coarse_to_fine_steps = -1 must be >= 0")],
)  # fmt: skip
def test_a_schedule_no_run_can_use_is_one_line(tiny_data, tmp_path, capsys, table, words):
    from fast_anerf.cli import entrypoint

    (tmp_path / "bad.toml").write_text(f"[field]\n{table}\n")
    argv = ["train", "--data", str(tiny_data / "train.h5"), "--preset", str(tmp_path / "bad.toml"), "--out",
            str(tmp_path / "run"), "--steps", "1", "--device", "cpu"]  # fmt: skip
    assert entrypoint(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[field]" in err[0] and words in err[0], err
    assert not (tmp_path / "run").exists()
