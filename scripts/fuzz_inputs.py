"""Feed damaged A-NeRF .h5 files and checkpoints to every fast-anerf command; check each fails cleanly.

A clean failure is what a user should see for bad input: exit code 2, one stderr line ``error: ...`` that names
the damaged file, the key or problem and a fix, no traceback, and nothing new or changed in the folder that
holds the output (so a failed run never leaves a half-written result). Damage that a command does not depend
on (e.g. empty masks for ``render``, which only needs cameras and poses) must instead let it run (exit 0).

The damaged variants: the valid file truncated at random offsets, each required key missing, wrong shapes and
dtypes, NaN/Inf in poses and cameras, zero focal, degenerate cameras and skeletons, empty masks, image counts
that disagree with pose counts, non-square and tiny images, corrupted compressed chunks, files that are not
HDF5 at all; checkpoints truncated, of other versions, from the other field type, with missing or non-finite
weights, bad configs. Everything runs in-process through ``fast_anerf.cli.entrypoint`` (no interpreter start).

The damaged files themselves are built in ``fuzz_variants.py``. ``tests/test_reliability.py`` runs a fixed
corpus from these generators in CI; this script runs longer ones (more truncation offsets, random byte flips)
on the built-in character:

    python scripts/fuzz_inputs.py --truncations 200 --flips 200 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fuzz_variants.py, also when loaded by path
import fuzz_variants  # noqa: E402
from fuzz_variants import CKPT_COMMANDS, H5_COMMANDS, Variant, ckpt_variants, h5_variants  # noqa: E402

read_raw, valid_controls = fuzz_variants.read_raw, fuzz_variants.valid_controls  # the tests use them from here

# A small model so that hundreds of cases load it in seconds. Written next to the corpus, passed as --preset.
SMALL_PRESET = """
[field]
n_levels = 4
log2_hashmap_size = 10
density_neurons = 16
color_neurons = 16
[anerf]
netdepth = 2
netwidth = 32
skips = []
view_width = 16
[train]
rays_per_batch = 256
images_per_batch = 8
step_size = 0.02
n_samples = 0
log_every = 1
ckpt_every = 2
eval_frames = 1
occ_resolution = 8
"""
FIX_WORDS = re.compile(
    r"\b(pass|fix|regenerate|re-download|retrain|use|choose|check|add|drop|remove|lower|free|run|convert|"
    r"rewrite|start|delete|give|make)\b",
    re.I,
)


# -------------------------------------------------------------------------------------------------
# Running and judging
# -------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    variant: str
    command: str  # "<kind> <command>", e.g. "h5 train", "ckpt resume"
    clean: bool
    why: str  # "error" / "ran" when clean; the problem otherwise
    message: str


class _Served(Exception):
    """Raised instead of starting the viewer's server: the checkpoint was accepted."""


def run_cli(argv: list[str]) -> tuple[int | None, str, str]:
    """Run the CLI in-process: ``(exit code or None on an uncaught exception, stdout, stderr)``."""
    from fast_anerf import viewer_server
    from fast_anerf.cli import entrypoint

    out, err = io.StringIO(), io.StringIO()
    real_app, threads = viewer_server.ViewerApp, torch.get_num_threads()
    # Hundreds of tiny commands: on a shared machine OpenMP wake-ups make each small torch op ~10 ms on 2+ threads.
    torch.set_num_threads(1)
    viewer_server.ViewerApp = lambda *a, **k: (_ for _ in ()).throw(_Served())  # never serve: the test would hang
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("always")  # every case shows its own warnings (no once-per-process)
            try:
                code = entrypoint(argv)
            except _Served:
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except Exception:
                traceback.print_exc(file=err)
                code = None
    finally:
        viewer_server.ViewerApp = real_app
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative path -> (size, mtime_ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def judge(variant: Variant, command: str, code, stderr: str, bad_path: Path, before: dict, after: dict) -> Outcome:
    lines = [line for line in stderr.splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    errors = [line for line in lines if line.startswith("error: ")]

    def result(clean: bool, why: str) -> Outcome:
        shown = message if not clean or why == "error" else ""
        return Outcome(variant.name, f"{variant.kind} {command}", clean, why, shown)

    if "Traceback" in stderr or code is None:
        return result(False, f"crash: {message}")
    if code == 0:
        if variant.must_fail(command) and not variant.may_pass:
            return result(False, "accepted damaged input (exit 0)")
        return result(True, "ran")
    if not variant.must_fail(command):
        return result(False, f"refused usable input (exit {code})")
    if code != 2 or len(errors) != 1:
        return result(False, f"exit {code}, {len(errors)} error lines")
    if len(lines) != 1:
        return result(False, f"{len(lines)} stderr lines")
    line = errors[0]
    if bad_path.name not in line:
        return result(False, "does not name the file")
    if variant.words and not any(word.lower() in line.lower() for word in variant.words):
        return result(False, f"names none of {variant.words}")
    if not FIX_WORDS.search(line):
        return result(False, "suggests no fix")
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        return result(False, f"wrote into the output folder: {changed[:3]}")
    return result(True, "error")


@dataclass
class Fixture:
    """What the corpus runs against: valid data, a small preset, a fast and an A-NeRF checkpoint."""

    data: Path  # folder with train.h5 / test_view.h5 / test_pose.h5
    preset: Path
    ckpt: Path
    anerf_ckpt: Path


def make_fixture(folder: Path, data: Path | None = None) -> Fixture:
    """Generate the built-in character (unless ``data``), write the small preset, train 2 steps of each field."""
    from fast_anerf.cli import Train
    from fast_anerf.train import Trainer

    folder.mkdir(parents=True, exist_ok=True)
    if data is None:
        from fast_anerf.data.synthetic import generate_dataset

        data = folder / "data"
        generate_dataset(data, n_frames=8, resolution=48, seed=0, verbose=False)
    preset = folder / "small.toml"
    preset.write_text(SMALL_PRESET)
    ckpts, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # see run_cli
    try:
        for field in ("fast", "anerf"):
            args = Train(data=data / "train.h5", out=folder / f"run_{field}", preset=str(preset), field=field,
                         steps=2, eval_every=0, device="cpu", backend="torch")  # fmt: skip
            with contextlib.redirect_stdout(io.StringIO()):
                Trainer(args).run()
            ckpts.append(folder / f"run_{field}" / "checkpoint.pt")
    finally:
        torch.set_num_threads(threads)
    return Fixture(data, preset, *ckpts)


def command_argv(command: str, fx: Fixture, bad: Path, out: Path) -> list[str]:
    """The command line that feeds ``bad`` (an .h5 for H5_COMMANDS, a checkpoint for CKPT_COMMANDS)."""
    cpu = ["--device", "cpu", "--backend", "torch"]
    train_h5 = str(fx.data / "train.h5")
    if bad.suffix == ".h5":
        ckpt, data = str(fx.ckpt), str(bad)
    else:
        ckpt, data = str(bad), train_h5
    held_out = data if bad.suffix == ".h5" else str(fx.data / "test_view.h5")
    argv = {
        "inspect": ["data", "inspect", str(bad), "--sheet", str(out / "sheet.png"), "--frames", "2"],
        "subset": ["data", "subset", str(bad), "--out", str(out / "sub.h5"), "--select", "::2"],
        "to-spin": ["data", "to-spin", str(bad), "--out", str(out / "poses.npz")],
        "train": ["train", "--data", data, "--out", str(out), "--preset", str(fx.preset), "--steps", "1"],
        "eval": ["eval", "--ckpt", ckpt, "--data", held_out, "--json", str(out / "metrics.json"), "--max-frames", "1"],
        "render": ["render", "--ckpt", ckpt, "--data", data, "--out", str(out), "--n-views", "1", "--res", "16", "16"],
        "refine": ["refine", "--ckpt", ckpt, "--data", data, "--out", str(out), "--steps", "1", "--rays-per-batch=64"],
        "view": ["view", "--ckpt", ckpt, "--data", data, "--port", "0"],
        "resume": ["train", "--data", data, "--out", str(out), "--resume", "--steps", "3"],
    }
    device_flags = [] if command in ("inspect", "subset", "to-spin") else cpu
    return argv[command] + device_flags + (["--eval-every", "0"] if command == "train" else [])


def run_variant(variant: Variant, fx: Fixture, workdir: Path, commands: tuple[str, ...]) -> list[Outcome]:
    """Build ``variant`` in a fresh folder and feed it to each command; one ``Outcome`` per command."""
    outcomes = []
    for command in commands:
        case = workdir / f"{variant.filename}.{command}"
        case.mkdir(parents=True)
        out = case / "out"
        if command == "resume":  # the damaged checkpoint is the run folder's own checkpoint.pt
            out.mkdir()
            bad = out / "checkpoint.pt"
        else:
            bad = case / variant.filename
        variant.build(bad)
        before = snapshot(case)
        code, _, stderr = run_cli(command_argv(command, fx, bad, out))
        outcomes.append(judge(variant, command, code, stderr, bad, before, snapshot(case)))
        shutil.rmtree(case, ignore_errors=True)
    return outcomes


def summarize(outcomes: list[Outcome]) -> str:
    """Per command: cases, clean errors, clean runs, not clean; then every not-clean case."""
    lines = [f"{'input command':<14} {'cases':>6} {'errors':>7} {'ran':>5} {'NOT CLEAN':>10}"]
    for command in dict.fromkeys(o.command for o in outcomes):
        mine = [o for o in outcomes if o.command == command]
        count = Counter("bad" if not o.clean else o.why for o in mine)
        lines.append(f"{command:<14} {len(mine):>6} {count['error']:>7} {count['ran']:>5} {count['bad']:>10}")
    total_bad = sum(not o.clean for o in outcomes)
    lines.append(f"{'total':<14} {len(outcomes):>6} {'':>7} {'':>5} {total_bad:>10}")
    lines += [f"  NOT CLEAN {o.command} {o.variant}: {o.why} | {o.message}" for o in outcomes if not o.clean]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truncations", type=int, default=200, help="random truncation offsets of the .h5")
    parser.add_argument("--flips", type=int, default=200, help=".h5 variants with random bytes flipped")
    parser.add_argument("--ckpt-truncations", type=int, default=40)
    parser.add_argument("--commands", default=",".join(dict.fromkeys(H5_COMMANDS + CKPT_COMMANDS)))
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    chosen = tuple(args.commands.split(","))
    known = tuple(dict.fromkeys(H5_COMMANDS + CKPT_COMMANDS))
    if unknown := [c for c in chosen if c not in known]:  # a typo would test nothing and report "all clean"
        parser.error(f"--commands: unknown {', '.join(unknown)}; choose from {','.join(known)}")
    rng = np.random.default_rng(args.seed)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="fuzz_inputs_"))
    start = time.perf_counter()
    fx = make_fixture(workdir / "fixture")
    variants = h5_variants(fx.data / "train.h5", rng, args.truncations, args.flips)
    variants += ckpt_variants(fx.ckpt, fx.anerf_ckpt, rng, args.ckpt_truncations)
    print(f"{len(variants)} damaged variants ({sum(v.kind == 'h5' for v in variants)} .h5); running ...", flush=True)
    outcomes = []
    for variant in variants:
        commands = tuple(c for c in (H5_COMMANDS if variant.kind == "h5" else CKPT_COMMANDS) if c in chosen)
        outcomes += run_variant(variant, fx, workdir / "cases", commands)
    print(summarize(outcomes))
    print(f"{time.perf_counter() - start:.0f} s")
    if args.keep is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(o.clean for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
