"""Training smoke tests on CPU: the loss falls, resume equals an uninterrupted run, eval writes metrics."""

import json
from dataclasses import replace
from pathlib import Path

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
    # Better than drawing the background alone (measured: 15.4 dB whole image, 4.0 dB on the body; the 40 steps
    # reached 21.4 / 11.6 dB), so the field has learnt a body where the held-out views show one.
    from fast_anerf.data.split import load_split
    from fast_anerf.evaluate import psnr

    held_out = load_split(tiny_data / "test_view.h5")
    frames = range(held_out.n_images)
    empty = sum(psnr(held_out.background(i), held_out.image(i)) for i in frames) / len(frames)
    empty_fg = sum(psnr(held_out.background(i), held_out.image(i), held_out.masks[i]) for i in frames) / len(frames)
    assert summary["splits"]["test_view"]["psnr"] > empty + 4.0, (summary["splits"]["test_view"]["psnr"], empty)
    assert summary["splits"]["test_view"]["psnr_fg"] > empty_fg + 5.0


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


def test_resume_mid_pose_window_equals_uninterrupted(tiny_data, tmp_path, monkeypatch, one_torch_thread):
    # A-NeRF steps the poses every 20-50 iterations with the gradients summed in between: a checkpoint taken
    # inside such a window must carry the partial sum (steps 1-5, window of 4: checkpoint at 5 holds step 5's).
    import fast_anerf.train as train_module

    small = train_module.load_preset

    def windowed(name):
        cfg = small(name)
        return replace(cfg, train=replace(cfg.train, pose_start=0, pose_step_every=4))

    monkeypatch.setattr(train_module, "load_preset", windowed)
    straight = Trainer(_args(tiny_data, tmp_path / "a", steps=10))
    straight.run()
    Trainer(_args(tiny_data, tmp_path / "b", steps=5)).run()
    resumed = Trainer(_args(tiny_data, tmp_path / "b", steps=10, resume=True))
    resumed.run()
    assert straight.refiner is not None
    poses_a, poses_b = straight.refiner.poses.state_dict(), resumed.refiner.poses.state_dict()
    assert not torch.equal(poses_a["root"], poses_a["anchor_root"])  # the poses did move (steps 4 and 8)
    for name in poses_a:
        assert torch.equal(poses_a[name], poses_b[name]), name
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
    # Resumed with its training .h5 named again (not its folder): still its own held-out data, not none.
    argv = ["train", "--data", str(tiny_data / "train.h5"), "--out", str(tmp_path / "single_eval"), "--resume",
            "--steps", "3", "--device", "cpu"]  # fmt: skip
    assert entrypoint(argv) == 0
    summary = json.loads((tmp_path / "single_eval" / "eval.json").read_text())
    assert summary["step"] == 3 and set(summary["splits"]) == {"test_view"}
    assert torch.load(tmp_path / "single_eval" / "checkpoint.pt", weights_only=False)["eval_data"] == str(
        (tiny_data / "test_view.h5").resolve()
    )


def test_checkpoint_names_its_data_absolutely_and_eval_finds_the_runs_held_out_data(tiny_data, tmp_path, monkeypatch,
                                                                                     capsys):  # fmt: skip
    """A run started with a relative --data is evaluated from any folder; `eval` without --data uses the run's
    --eval-data; a run without held-out data says so in one line."""
    import shutil

    shutil.copytree(tiny_data, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    Trainer(_args(Path("data/train.h5"), Path("run"), steps=2, eval_data=Path("data/test_view.h5"))).run()
    Trainer(_args(Path("data/train.h5"), Path("alone"), steps=2)).run()
    monkeypatch.chdir(tmp_path / "data")
    capsys.readouterr()
    assert entrypoint(["eval", "--ckpt", "../run/checkpoint.pt", "--device", "cpu", "--max-frames", "2"]) == 0
    out = capsys.readouterr().out
    assert "test_view" in out and "test_pose" not in out  # the run's --eval-data, not the training folder
    assert entrypoint(["eval", "--ckpt", "../alone/checkpoint.pt", "--device", "cpu"]) == 0  # data/ has both
    assert "test_pose" in capsys.readouterr().out
    shutil.move(tmp_path / "data" / "test_pose.h5", tmp_path / "test_pose.h5")
    shutil.move(tmp_path / "data" / "test_view.h5", tmp_path / "test_view.h5")
    assert entrypoint(["eval", "--ckpt", "../alone/checkpoint.pt", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "had no held-out data" in err and "--data" in err
    # The run's recorded --eval-data moved away: the line says the path came from the checkpoint.
    assert entrypoint(["eval", "--ckpt", "../run/checkpoint.pt", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"held-out data {tmp_path / 'data' / 'test_view.h5'} (recorded in the checkpoint) is not there" in err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--steps", "-1"], ["steps = -1 must be > 0", "--steps"]),
        (["--steps", "0"], ["steps = 0 must be > 0", "--steps"]),
        (["--pose-lr-decay", "-0.5"], ["pose_lr_decay_rate = -0.5 must be > 0"]),  # was a traceback at pose_start
        (["--pose-lr-decay", "0"], ["pose_lr_decay_rate = 0.0 must be > 0"]),  # froze the poses silently
        (["--gt-poses", "--refine-poses", "on"], ["--gt-poses", "drop one"]),
        (["--preset", "BAD_PRESET"], ["step_size = 0", "[train]", "bad.toml"]),
        (["--preset", "TYPO_PRESET"], ["unknown key(s) ['hiden'] in [field]", "typo.toml"]),  # the file's own name
    ],
)
def test_unusable_settings_are_one_line_before_training(tiny_data, tmp_path, capsys, argv, words):
    (tmp_path / "bad.toml").write_text("[train]\nstep_size = 0\n")
    (tmp_path / "typo.toml").write_text("[field]\nhiden = 32\n")
    presets = {"BAD_PRESET": str(tmp_path / "bad.toml"), "TYPO_PRESET": str(tmp_path / "typo.toml")}
    argv = [presets.get(a, a) for a in argv]
    out = tmp_path / "run"
    assert entrypoint(["train", "--data", str(tiny_data), "--out", str(out), "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for word in words:
        assert word in err, err
    assert not (out / "checkpoint.pt").exists()


def test_a_damaged_held_out_file_fails_before_training(tiny_data, tmp_path, capsys):
    import shutil

    shutil.copytree(tiny_data, tmp_path / "data")
    damaged = tmp_path / "data" / "test_view.h5"
    damaged.write_bytes(damaged.read_bytes()[:50000])
    assert entrypoint(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--steps", "3",
                       "--device", "cpu"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "test_view.h5" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_resuming_a_run_that_used_its_time_limit_asks_for_more_minutes(tiny_data, tmp_path, capsys):
    Trainer(_args(tiny_data, tmp_path / "run", steps=50, max_minutes=1e-5)).run()  # stops after one step
    argv = ["train", "--out", str(tmp_path / "run"), "--resume", "--steps", "60", "--device", "cpu"]
    assert entrypoint(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "time limit" in err and "--max-minutes" in err
    assert entrypoint([*argv, "--max-minutes", "0"]) == 0
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["step"] == 60


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--field", "anerf"], ["--field anerf would change", "its field is fast"]),
        (["--seed", "7"], ["--seed 7 would change", "its seed is 0"]),
        (["--preset", "gpu"], ["--preset gpu would change", "its preset is demo"]),
        (["--preset", "{other}/demo.toml"], ["{other}/demo.toml would change", "[field] differs in", "color_neurons"]),
        (["--gt-poses"], ["--gt-poses would change", "its gt_poses is False"]),
        (["--refine-poses", "off"], ["(--refine-poses off) would drop them", "refined_poses.h5 --refine-poses off"]),
        (["--steps", "3"], ["has done 4 steps, more than --steps 3", "pass --steps 4 or more"]),
    ],
)
def test_resume_refuses_flags_that_would_train_another_model(tiny_data, tmp_path, capsys, argv, words):
    """A resumed run keeps its model: flags that would change it are one line naming the flag, and the
    checkpoint (with its refined poses) is left as it was."""
    out = tmp_path / "run"
    Trainer(_args(tiny_data, out, steps=4)).run()
    saved = (out / "checkpoint.pt").read_bytes()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["poses"] is not None  # the run refined its poses
    other = tmp_path / "elsewhere"  # a preset named like the run's, with another field
    other.mkdir()
    (other / "demo.toml").write_text("[field]\ncolor_neurons = 32\n")
    argv = [a.format(other=other) for a in (argv if "--steps" in argv else [*argv, "--steps", "6"])]
    words = [w.format(other=other) for w in words]
    assert entrypoint(["train", "--out", str(out), "--resume", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for word in words:
        assert word in err, err
    assert (out / "checkpoint.pt").read_bytes() == saved


def test_resuming_a_finished_run_evaluates_it_and_the_runs_own_flags_are_accepted(tiny_data, tmp_path, capsys):
    """A job script that always passes --resume: a finished run is evaluated again (exit 0, eval.json as before,
    checkpoint untouched); flags equal to the run's own (preset, field, seed) are accepted."""
    out = tmp_path / "run"
    Trainer(_args(tiny_data, out, steps=4)).run()
    saved = (out / "checkpoint.pt").read_bytes()
    first = json.loads((out / "eval.json").read_text())
    base = ["train", "--out", str(out), "--resume", "--device", "cpu"]
    capsys.readouterr()
    assert entrypoint(base) == 0
    assert "has done its 4 steps; evaluating only" in capsys.readouterr().out
    assert (out / "checkpoint.pt").read_bytes() == saved
    again = json.loads((out / "eval.json").read_text())
    assert again["step"] == 4 and again["train_psnr_last"] == pytest.approx(first["train_psnr_last"], abs=1e-3)
    assert again["splits"]["test_view"]["psnr"] == pytest.approx(first["splits"]["test_view"]["psnr"], abs=1e-4)
    assert entrypoint([*base, "--steps", "6", "--preset", "demo", "--field", "fast", "--seed", "0"]) == 0
    assert json.loads((out / "eval.json").read_text())["step"] == 6


def test_resuming_a_true_pose_run_with_refinement_on_names_the_run(tiny_data, tmp_path, capsys):
    Trainer(_args(tiny_data, tmp_path / "run", steps=2, gt_poses=True)).run()
    argv = ["train", "--out", str(tmp_path / "run"), "--resume", "--steps", "3", "--refine-poses", "on"]
    assert entrypoint([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trains on the file's true poses (gt_poses)" in err
    assert "drop --refine-poses on" in err and "drop one of the two flags" not in err


def test_a_folder_without_train_h5_names_the_files_it_holds(tiny_data, tmp_path, capsys):
    """A-NeRF's folders name their files surreal_train_h5py.h5 / surreal_val_h5py.h5: the error says which files
    are there and how to pass them."""
    import shutil

    folder = tmp_path / "surreal"
    folder.mkdir()
    shutil.copy(tiny_data / "train.h5", folder / "surreal_train_h5py.h5")
    shutil.copy(tiny_data / "test_view.h5", folder / "surreal_val_h5py.h5")
    assert entrypoint(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {folder}: no train.h5 in this folder (it holds surreal_train_h5py.h5, "
                   "surreal_val_h5py.h5); pass the training file as --data FILE.h5 and a held-out one as "
                   "--eval-data FILE.h5")  # fmt: skip
    # The same folder as held-out data: it has no test_view.h5 / test_pose.h5.
    argv = ["train", "--data", str(folder / "surreal_train_h5py.h5"), "--eval-data", str(folder), "--out",
            str(tmp_path / "run"), "--device", "cpu"]  # fmt: skip
    assert entrypoint(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {folder}: no test_view.h5 or test_pose.h5 in this folder (it holds "
        "surreal_train_h5py.h5, surreal_val_h5py.h5); pass a held-out .h5 file instead of the folder"
    )
    assert not (tmp_path / "run").exists()


def test_resume_refuses_other_data_and_refinement_switched_on(tiny_data, tmp_path, capsys):
    import shutil

    import h5py

    out = tmp_path / "run"
    Trainer(_args(tiny_data, out, steps=4, refine_poses="off")).run()
    saved = (out / "checkpoint.pt").read_bytes()
    other = tmp_path / "other.h5"  # as many images, other poses
    shutil.copy(tiny_data / "train.h5", other)
    with h5py.File(other, "r+") as f:
        f["kp3d"][...] = f["kp3d"][...] + 0.01
    resume = ["train", "--out", str(out), "--resume", "--steps", "6", "--device", "cpu"]
    for argv, words in (
        (["--refine-poses", "on"], ["trains on fixed poses", "(--refine-poses on) would start moving them"]),
        (["--data", str(other)], [f"{other} is not the data this run trained on", str(tiny_data / "train.h5")]),
    ):
        assert entrypoint([*resume, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert (out / "checkpoint.pt").read_bytes() == saved
    assert entrypoint(resume) == 0  # its own data and settings


def test_train_without_held_out_data_and_with_a_pose_row_no_image_uses(tiny_data, tmp_path):
    """A folder holding train.h5 alone trains without evaluation; a pose row that no image uses (kp_idxs
    skips it) is refined as a row without temporal neighbours (it was a KeyError)."""
    import h5py
    import numpy as np

    folder = tmp_path / "data"
    folder.mkdir()
    import shutil

    shutil.copy(tiny_data / "train.h5", folder / "train.h5")
    with h5py.File(folder / "train.h5", "r+") as f:
        n = f["kp3d"].shape[0]
        for key in ("kp3d", "bones", "skts", "cyls", "gt_kp3d", "gt_bones", "gt_skts"):
            if key in f:
                value = f[key][...]
                del f[key]
                f.create_dataset(key, data=np.concatenate([value, value[-1:]]))  # one more row, unused
        if "kp_idxs" in f:
            del f["kp_idxs"]
        f.create_dataset("kp_idxs", data=np.arange(n))
    trainer = Trainer(_args(folder, tmp_path / "run", steps=6, refine_poses="on"))
    assert trainer.eval_dir is None and trainer.refiner is not None and trainer.refiner.poses.n_poses == n + 1
    assert trainer.refiner.valid[n].item() is False
    trainer.run()
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["splits"] == {}


def test_the_anerf_preset_uses_anerfs_adam():
    from fast_anerf.config import load_preset
    from fast_anerf.data.synthetic import builtin_rest_pose
    from fast_anerf.model import Character
    from fast_anerf.train import build_optimizer

    rest = torch.as_tensor(builtin_rest_pose(), dtype=torch.float32)
    for preset, betas, eps in (("anerf", (0.9, 0.999), 1e-8), ("demo", (0.9, 0.99), 1e-15)):
        config = load_preset(preset)
        optimizer = build_optimizer(Character(config, rest, n_frame_codes=2, backend="torch"), config.train)
        assert {(g["betas"], g["eps"]) for g in optimizer.param_groups} == {(betas, eps)}, preset
