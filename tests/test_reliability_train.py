"""Interrupted and numerically faulty training (reliability, items 2 and 3).

* SIGKILL at random moments (mid-step, mid-save) never leaves an unreadable checkpoint, and ``--resume`` from
  whatever is on disk ends with exactly the parameters of an uninterrupted run (same seed, CPU).
* Ctrl-C (SIGINT) saves a checkpoint, prints its path and exits 130 (as render and refine on Ctrl-C).
* A non-finite loss or gradient skips its step (logged with the step number) without touching parameters,
  poses or optimiser state; after ``max_bad_steps`` consecutive bad steps the run stops in one line, exit 2,
  with the last good checkpoint intact.
"""

import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from processes import ONE_THREAD_ENV, run_until

import fast_anerf.train as train_module
from fast_anerf.cli import Train, entrypoint
from fast_anerf.model import read_checkpoint
from fast_anerf.train import Trainer

STEPS = 24
# Small and quick (~30 ms a step on CPU); poses move from step 4 so that their state is resumed too.
PRESET = """
[field]
n_levels = 4
log2_hashmap_size = 10
density_neurons = 16
color_neurons = 16
[train]
rays_per_batch = 256
images_per_batch = 8
step_size = 0.02
log_every = 1
ckpt_every = 2
eval_every = 0
occ_update_every = 4
occ_warmup_steps = 8
pose_start = 4
max_bad_steps = 3
"""


@pytest.fixture
def preset(tmp_path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(PRESET)
    return path


# One thread everywhere: bitwise equality needs the same thread count in every process, and on a shared CPU
# OpenMP's thread hand-offs make each small op ~10 ms on 2+ threads (100x slower training steps).


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cli(data: Path, out: Path, preset: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--preset", str(preset), "--steps", str(steps),
            "--device", "cpu", "--backend", "torch", *extra]  # fmt: skip


def _trainer(data: Path, out: Path, preset: Path, steps: int) -> Trainer:
    args = Train(data=data, out=out, preset=str(preset), steps=steps, device="cpu", backend="torch")
    return Trainer(args)


def _finished(data: Path, out: Path) -> Trainer:
    """A trainer holding the state of OUT's final checkpoint (as ``--resume`` loads it)."""
    return Trainer(Train(data=data, out=out, resume=True, device="cpu", backend="torch"))


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Model weights and buffers, refined poses and Adam moments, cloned."""
    state = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    if trainer.refiner is not None:
        state.update({f"poses.{k}": v.clone() for k, v in trainer.refiner.poses.state_dict().items()})
    for i, s in enumerate(trainer.optimizer.state_dict()["state"].values()):
        state.update({f"adam.{i}.{k}": v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)})
    return state


def _equal(a: dict, b: dict) -> list[str]:
    """Names of the tensors that differ (empty: identical)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


class _CheckpointWatcher(threading.Thread):
    """Reads OUT/checkpoint.pt over and over while a run is killed and resumed: it must always load."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.reads, self.failures = path, 0, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.path.exists():
                try:
                    read_checkpoint(self.path)
                    self.reads += 1
                except Exception as error:  # noqa: BLE001 any failure to load is the bug this looks for
                    self.failures.append(repr(error))
            time.sleep(0.02)


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tiny_data, tmp_path, preset):
    data = tiny_data / "train.h5"
    # The uninterrupted run in its own process too, like the killed ones: nothing else in this process can matter.
    straight = [sys.executable, "-m", "fast_anerf.cli", *_cli(data, tmp_path / "straight", preset, STEPS)]
    subprocess.run(straight, capture_output=True, timeout=120, env=ONE_THREAD_ENV, check=True)
    reference = _params(_finished(data, tmp_path / "straight"))

    out = tmp_path / "killed rün"  # spaces and non-ASCII in the path too
    ckpt = out / "checkpoint.pt"
    rng = random.Random(1234)
    watcher = _CheckpointWatcher(ckpt)
    watcher.start()
    killed_at, saved_steps = [], []
    try:
        for _ in range(3):
            resume = ["--resume"] if ckpt.is_file() else []
            done = read_checkpoint(ckpt)["step"] if resume else 0
            if done >= STEPS - 6:
                break
            target = rng.randint(done + 1, STEPS - 6)  # a step to reach, then a random moment after it
            cmd = [sys.executable, "-m", "fast_anerf.cli", *_cli(data, out, preset, STEPS, *resume)]
            proc, _ = run_until(cmd, rf"^step\s+{target}/{STEPS}\b")
            time.sleep(rng.uniform(0.0, 0.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            assert proc.returncode in (-signal.SIGKILL, 0)  # 0: it finished before the signal landed
            killed_at.append(target)
            if ckpt.is_file():  # killed before the first save: the next attempt starts afresh
                saved_steps.append(read_checkpoint(ckpt)["step"])
        final = subprocess.run([sys.executable, "-m", "fast_anerf.cli", *_cli(data, out, preset, STEPS, "--resume")],
                               capture_output=True, text=True, timeout=120, env=ONE_THREAD_ENV)  # fmt: skip
    finally:
        watcher.stop.set()
        watcher.join()
    assert final.returncode == 0, final.stdout + final.stderr
    assert watcher.failures == [] and watcher.reads > 0, watcher.failures
    assert saved_steps == sorted(saved_steps) and all(s % 2 == 0 for s in saved_steps), saved_steps
    assert saved_steps and saved_steps[-1] < STEPS, "no run was killed after a checkpoint: resume went untested"
    assert not list(out.glob(".checkpoint.pt.*")), "a temporary file of a killed save was left behind"

    resumed = _finished(data, out)
    assert resumed.step == STEPS
    assert _equal(reference, _params(resumed)) == [], (killed_at, saved_steps)


def test_ctrl_c_saves_a_checkpoint_and_exits_130_with_its_path(tiny_data, tmp_path, preset):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fast_anerf.cli", *_cli(tiny_data / "train.h5", out, preset, 100000)]
    proc, lines = run_until(cmd, r"^step\s+3/")
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    text = "".join(lines) + rest
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    match = re.search(r"interrupted at step (\d+); checkpoint saved to (.+) \(continue with --resume\)", text)
    assert match, text
    assert Path(match.group(2)) == out / "checkpoint.pt"
    assert read_checkpoint(out / "checkpoint.pt")["step"] == int(match.group(1)) >= 3
    assert not (out / "eval.json").exists()  # an interrupted run is not a finished one


class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _fault_on(trainer: Trainer, bad_steps: set[int], kind: str, monkeypatch) -> None:
    """Make training steps ``bad_steps`` (1-based) produce a NaN loss (kind "loss"), NaN gradients everywhere
    ("gradient") or NaN gradients of the refined poses only ("pose-gradient")."""
    real = train_module.photometric_loss
    if kind == "pose-gradient":
        real_skts = trainer.refiner.skts

        def skts(rows, step):
            out, reg = real_skts(rows, step)
            return (_NanGradient.apply(out), reg) if step in bad_steps else (out, reg)

        monkeypatch.setattr(trainer.refiner, "skts", skts)
        return

    def loss(pred, target, how):
        if trainer.step + 1 in bad_steps:  # trainer.step counts the steps already taken
            if kind == "loss":
                return real(pred, target, how) * float("nan")
            return real(_NanGradient.apply(pred), target, how)
        return real(pred, target, how)

    monkeypatch.setattr(train_module, "photometric_loss", loss)


@pytest.mark.parametrize("kind", ["loss", "gradient", "pose-gradient"])
def test_non_finite_step_is_skipped_and_changes_nothing(tiny_data, tmp_path, preset, monkeypatch, capsys, kind):
    trainer = _trainer(tiny_data / "train.h5", tmp_path / "run", preset, 8)
    assert trainer.refiner is not None  # the tiny data's poses are estimates: poses are refined as well
    _fault_on(trainer, {5, 6}, kind, monkeypatch)  # poses move from step 5 (pose_start 4)
    after, stats = {}, {}
    real_step = trainer.train_step

    def step():
        number = trainer.step + 1
        stats[number] = real_step()
        after[number] = _params(trainer)
        return stats[number]

    trainer.train_step = step
    trainer.run()
    log = capsys.readouterr().out
    for s in (5, 6):
        assert f"step {s}: non-finite loss or gradient, step skipped" in log
        # The occupancy grid is re-derived from the (unchanged) field every 4 steps (step 5 here): not a parameter.
        changed = [k for k in _equal(after[s], after[4]) if not k.startswith("model.occupancy.")]
        assert stats[s] is None and changed == [], (s, changed)
    assert stats[7] is not None and len(_equal(after[7], after[6])) > 10  # training goes on from there
    assert all(bool(torch.isfinite(v.float()).all()) for v in after[8].values())
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 8


def test_consecutive_bad_steps_stop_the_run_with_the_last_good_checkpoint(tiny_data, tmp_path, preset, monkeypatch,
                                                                           capsys):  # fmt: skip
    out = tmp_path / "run"
    created = []
    real_init = Trainer.__init__

    def init(self, args):
        real_init(self, args)
        created.append(self)
        _fault_on(self, set(range(5, 100)), "loss", monkeypatch)  # every step from 5 on

    monkeypatch.setattr(Trainer, "__init__", init)
    code = entrypoint(_cli(tiny_data / "train.h5", out, preset, 20))
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert "3 consecutive non-finite steps" in lines[0] and "up to step 7" in lines[0]
    assert str(out / "checkpoint.pt") in lines[0]
    for s in (5, 6, 7):
        assert f"step {s}: non-finite loss or gradient, step skipped" in captured.out
    ckpt = read_checkpoint(out / "checkpoint.pt")  # written at step 6 from unchanged (good) parameters
    good = created[0]
    assert ckpt["step"] in (4, 6)
    for name, value in ckpt["model"].items():
        assert torch.equal(value, good.model.state_dict()[name]), name
        assert bool(torch.isfinite(value.float()).all()), name
    assert not (out / "eval.json").exists()


def test_refine_skips_non_finite_steps_and_stops_after_too_many(tiny_data, tmp_path, preset, monkeypatch, capsys):
    from fast_anerf.data.anerf_h5 import open_anerf_h5

    trainer = _trainer(tiny_data / "train.h5", tmp_path / "run", preset, 2)
    trainer.run()
    ckpt = tmp_path / "run" / "checkpoint.pt"
    real, calls = train_module.photometric_loss, []

    def loss(pred, target, how):  # refine imports it from fast_anerf.train when it runs
        calls.append(1)
        return real(pred, target, how) * (float("nan") if len(calls) in bad else 1.0)

    monkeypatch.setattr(train_module, "photometric_loss", loss)
    argv = ["refine", "--ckpt", str(ckpt), "--data", str(tiny_data / "train.h5"), "--rays-per-batch", "64",
            "--device", "cpu", "--backend", "torch", "--steps", "6"]  # fmt: skip
    bad = {2, 3}  # two bad steps in a row (max_bad_steps 3): skipped, the run finishes
    assert entrypoint([*argv, "--out", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert "step 2: non-finite loss or gradient, step skipped" in out and "step 3: non-finite" in out
    with open_anerf_h5(tmp_path / "ok" / "refined.h5") as refined:  # the reader refuses non-finite poses
        assert refined.n_poses == 8
    calls.clear()
    bad = {3, 4, 5, 6}  # three in a row: stop, write nothing
    code = entrypoint([*argv, "--out", str(tmp_path / "stopped")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "3 consecutive non-finite steps up to step 5" in err[0], err
    assert not (tmp_path / "stopped").exists()
