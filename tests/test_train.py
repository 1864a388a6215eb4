"""Training smoke tests on CPU: the loss falls, resume equals an uninterrupted run, eval writes metrics."""

import json
from dataclasses import replace

import pytest
import torch

from fast_anerf.cli import Train, entrypoint
from fast_anerf.train import Trainer


def _args(data, out, **kw):
    base = Train(data=data, out=out, preset="demo", steps=30, eval_every=0, device="cpu", backend="torch")
    return replace(base, **kw)


@pytest.fixture(autouse=True)
def _small_batches(monkeypatch):
    # Tests train tiny configurations for seconds: small batches, frequent logs and checkpoints.
    import fast_anerf.train as train_module

    original = train_module.load_preset

    def small(name):
        cfg = original(name)
        return replace(
            cfg,
            train=replace(cfg.train, rays_per_batch=256, images_per_batch=8, log_every=1, ckpt_every=5, step_size=0.01),
        )

    monkeypatch.setattr(train_module, "load_preset", small)


def test_loss_falls(tiny_data, tmp_path):
    trainer = Trainer(_args(tiny_data, tmp_path / "run", steps=40))
    trainer.run()
    losses = [h["loss"] for h in trainer.history]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    summary = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert summary["step"] == 40
    assert set(summary["splits"]) == {"test_view", "test_pose"}
    assert summary["splits"]["test_view"]["psnr"] > 10.0


def test_resume_equals_uninterrupted(tiny_data, tmp_path, one_torch_thread):
    # Cross-process SIGKILL resume is in tests/test_reliability_train.py.
    straight = Trainer(_args(tiny_data, tmp_path / "a", steps=12))
    straight.run()
    first = Trainer(_args(tiny_data, tmp_path / "b", steps=7))
    first.run()
    resumed = Trainer(_args(tiny_data, tmp_path / "b", steps=12, resume=True))
    assert resumed.step == 7
    resumed.run()
    for (name, p), (_, q) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_existing_run_needs_resume_flag(tiny_data, tmp_path, capsys):
    Trainer(_args(tiny_data, tmp_path / "run", steps=2)).run()
    code = entrypoint(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--steps", "2"])
    assert code == 2
    assert "exists; pass --resume" in capsys.readouterr().err


def test_resume_keeps_the_held_out_evaluation_and_eval_data_adds_one(tiny_data, tmp_path):
    """`fast-anerf train --out RUN --resume` (no --data) evaluates the run's held-out splits as the run did (its
    checkpoint names the training .h5 alone); --eval-data gives a run trained on a single .h5 its held-out data."""
    Trainer(_args(tiny_data, tmp_path / "run", steps=3)).run()
    assert entrypoint(["train", "--out", str(tmp_path / "run"), "--resume", "--steps", "5", "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert summary["step"] == 5 and set(summary["splits"]) == {"test_view", "test_pose"}

    single = _args(tiny_data / "train.h5", tmp_path / "single", steps=2)
    assert Trainer(single).run()["splits"] == {}  # one .h5: nothing held out
    held_out = Trainer(replace(single, out=tmp_path / "single_eval", eval_data=tiny_data / "test_view.h5")).run()
    assert set(held_out["splits"]) == {"test_view"} and held_out["splits"]["test_view"]["psnr"] > 5.0
