"""Damaged inputs across the whole CLI (reliability, item 1).

Every damaged .h5 fed to ``data inspect``, ``train``, ``eval``, ``render`` and ``refine``, and every damaged
checkpoint fed to ``eval``, ``render``, ``refine``, ``view`` and ``train --resume``, must end with one stderr line
that names the file, the key or problem and a fix, exit code 2, no traceback, and nothing new or changed in the
folder that holds the output. Damage a command does not depend on must let it run. The corpus comes from
``scripts/fuzz_inputs.py`` with a fixed seed (the script runs longer random corpora); cases run in-process,
a few through a real interpreter to prove the exit code and the absence of a traceback.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_inputs.py"
_SPEC = importlib.util.spec_from_file_location("fuzz_inputs", _SCRIPT)
fuzz = importlib.util.module_from_spec(_SPEC)
sys.modules["fuzz_inputs"] = fuzz  # dataclasses look their module up while the class is built
_SPEC.loader.exec_module(fuzz)

SEED = 8
H5_TRUNCATIONS = 40
H5_FLIPS = 24  # random bytes flipped: any clean error, or a file that is still valid
CKPT_TRUNCATIONS = 12


@pytest.fixture(scope="module")
def fx(tiny_data, tmp_path_factory):
    """The built-in character, a small preset and two 2-step checkpoints (fast and A-NeRF field), ~3 s."""
    return fuzz.make_fixture(tmp_path_factory.mktemp("fuzz_fixture"), data=tiny_data)


@pytest.fixture(scope="module")
def h5_corpus(fx):
    return fuzz.h5_variants(fx.data / "train.h5", np.random.default_rng(SEED), H5_TRUNCATIONS, H5_FLIPS)


@pytest.fixture(scope="module")
def ckpt_corpus(fx):
    return fuzz.ckpt_variants(fx.ckpt, fx.anerf_ckpt, np.random.default_rng(SEED), CKPT_TRUNCATIONS)


def _run(variants, fx, workdir, commands) -> list:
    outcomes = []
    for variant in variants:
        outcomes += fuzz.run_variant(variant, fx, workdir, commands)
    return outcomes


def _run_damaged(corpus, fx, workdir, commands, kind: str) -> set[tuple[str, str]]:
    """Every variant of ``corpus`` through every command: all must end cleanly. Returns the (variant,
    command) pairs that ran (exit 0) rather than failing with the one-line error."""
    outcomes = _run(corpus, fx, workdir, commands)
    print("\n" + fuzz.summarize(outcomes))
    assert len(outcomes) == len(commands) * len(corpus)  # every command on every variant
    assert all(o.clean for o in outcomes), fuzz.summarize(outcomes)
    return {(o.variant, o.command.removeprefix(kind + " ")) for o in outcomes if o.why == "ran"}


def test_corpus_covers_every_kind_of_damage(h5_corpus, ckpt_corpus):
    names = [v.name for v in h5_corpus + ckpt_corpus]
    assert len(names) == len(set(names))
    assert sum(not v.may_pass for v in h5_corpus + ckpt_corpus) >= 200, len(names)  # certainly damaged
    kinds = (
        "truncated-", "missing-imgs", "missing-focals", "shape-", "dtype-", "nonfinite-kp3d", "nonfinite-c2ws",
        "focal-zero", "masks-all-empty", "img_shape-more-images", "poses-fewer", "non-square", "tiny-images",
        "corrupt-chunk", "ckpt-truncated-", "version-", "other-field-type", "weight-nan",
    )  # fmt: skip
    for kind in kinds:
        assert any(name.startswith(kind) for name in names), kind
    assert sum(name.startswith("missing-") for name in names) == 8  # each required key


def test_valid_inputs_run_through_every_command(fx, tmp_path):
    # The harness itself: files every command must accept (original, non-square, required keys only, fewer
    # poses than images mapped by kp_idxs) do run.
    base = fuzz.read_raw(fx.data / "train.h5")
    outcomes = _run(fuzz.valid_controls(base), fx, tmp_path, fuzz.H5_COMMANDS)
    assert [o.why for o in outcomes] == ["ran"] * 4 * len(fuzz.H5_COMMANDS), fuzz.summarize(outcomes)


def test_damaged_h5_files_fail_cleanly_in_every_command(fx, h5_corpus, tmp_path):
    ran = _run_damaged(h5_corpus, fx, tmp_path, fuzz.H5_COMMANDS, "h5")
    # Only damage a command does not read lets it run (e.g. empty masks for render and eval).
    assert ("masks-all-empty", "render") in ran and ("masks-all-empty", "train") not in ran
    ran_damaged = {v.name for v in h5_corpus if any((v.name, c) in ran for c in fuzz.H5_COMMANDS)}
    assert all(v.fatal is not None or v.may_pass for v in h5_corpus if v.name in ran_damaged)


def test_damaged_checkpoints_fail_cleanly_in_every_command(fx, ckpt_corpus, tmp_path):
    ran = _run_damaged(ckpt_corpus, fx, tmp_path, fuzz.CKPT_COMMANDS, "ckpt")
    assert ran == {(v.name, c) for v in ckpt_corpus if v.fatal for c in fuzz.CKPT_COMMANDS if c not in v.fatal}


def test_judge_rejects_what_is_not_clean(tmp_path):
    # The corpus is only as strict as its judge: a traceback, two lines, the wrong code or a written file fail.
    bad = tmp_path / "bad.h5"
    variant = fuzz.Variant("x", "h5", lambda p: None, ("kp3d",))
    good = "error: /x/bad.h5: key 'kp3d' is missing — regenerate the file\n"
    assert fuzz.judge(variant, "train", 2, good, bad, {}, {}).clean
    cases = {
        "crash": (None, "Traceback (most recent call last):\n  ...\nKeyError: 'kp3d'\n", {}),
        "exit 1": (1, good, {}),
        "2 stderr lines": (2, "warning: x\n" + good, {}),
        "does not name the file": (2, "error: key 'kp3d' is missing — regenerate the file\n", {}),
        "names none": (2, "error: /x/bad.h5: something is off — regenerate the file\n", {}),
        "suggests no fix": (2, "error: /x/bad.h5: key 'kp3d' is missing\n", {}),
        "wrote into the output folder": (2, good, {"out/checkpoint.pt": (1, 1)}),
        "accepted damaged input": (0, "", {}),
    }
    for why, (code, stderr, after) in cases.items():
        outcome = fuzz.judge(variant, "train", code, stderr, bad, {}, after)
        assert not outcome.clean and why in outcome.why, (why, outcome)


@pytest.mark.parametrize("variant_name,command", [("truncated", "train"), ("missing-skts", "inspect"),
                         ("ckpt-truncated", "eval"), ("other-field-type-config", "render")])  # fmt: skip
def test_real_process_exit_2_one_line_no_traceback(fx, h5_corpus, ckpt_corpus, tmp_path, variant_name, command):
    variant = next(v for v in h5_corpus + ckpt_corpus if v.name.startswith(variant_name))
    bad = tmp_path / variant.filename
    variant.build(bad)
    out = tmp_path / "out"
    argv = fuzz.command_argv(command, fx, bad, out)
    result = subprocess.run([sys.executable, "-m", "fast_anerf.cli", *argv], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and bad.name in lines[0], result.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [bad.name]
