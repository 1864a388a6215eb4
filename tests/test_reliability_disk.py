"""Unwritable outputs, full disks and unusual paths (reliability, item 4).

Every command that writes (``data inspect``, ``train``, ``eval --json``, ``render``, ``refine``) must, when its
output cannot be written, stop with one line naming the path and the fix (exit 2, no traceback), leave earlier
outputs byte-for-byte as they were and leave no temporary files behind. A full disk is simulated twice: for real
on a tiny tmpfs (where this machine lets the test mount one) and with a patched writer (everywhere). Paths with
spaces and non-ASCII characters work end to end.
"""

import contextlib
import errno
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_inputs.py"
if "fuzz_inputs" not in sys.modules:  # shared with test_reliability.py: the fixture and the in-process runner
    _SPEC = importlib.util.spec_from_file_location("fuzz_inputs", _SCRIPT)
    sys.modules["fuzz_inputs"] = importlib.util.module_from_spec(_SPEC)
    _SPEC.loader.exec_module(sys.modules["fuzz_inputs"])
fuzz = sys.modules["fuzz_inputs"]

COMMANDS = ("inspect", "train", "eval", "render", "refine")


@pytest.fixture(scope="module")
def fx(tiny_data, tmp_path_factory):
    return fuzz.make_fixture(tmp_path_factory.mktemp("disk_fixture"), data=tiny_data)


def _argv(command: str, fx, out: Path, data: Path | None = None, ckpt: Path | None = None) -> list[str]:
    """``command`` on valid inputs, writing under ``out``."""
    data = data or fx.data
    ckpt = str(ckpt or fx.ckpt)
    train_h5, held_out = str(data / "train.h5"), str(data / "test_view.h5")
    argv = {
        "inspect": ["data", "inspect", train_h5, "--sheet", str(out / "sheet.png"), "--frames", "2"],
        "train": ["train", "--data", train_h5, "--out", str(out / "run"), "--preset", str(fx.preset), "--steps", "1"],
        "eval": ["eval", "--ckpt", ckpt, "--data", held_out, "--json", str(out / "metrics.json"), "--max-frames", "1"],
        "render": ["render", "--ckpt", ckpt, "--data", train_h5, "--out", str(out / "render"), "--n-views", "1"],
        "refine": ["refine", "--ckpt", ckpt, "--data", train_h5, "--out", str(out / "refine"), "--steps", "1"],
    }[command]
    extra = {
        "train": ["--eval-every", "0"],
        "render": ["--res", "16", "16"],
        "refine": ["--rays-per-batch=64", "--overwrite"],
    }
    return argv + extra.get(command, []) + ([] if command == "inspect" else ["--device", "cpu", "--backend", "torch"])


def _again(command: str, argv: list[str]) -> list[str]:
    """The same command once more over its earlier output (train continues its run by one step)."""
    if command == "train":
        return [a if a != "1" else "2" for a in argv] + ["--resume"]
    return argv


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(code, stderr: str, *words: str) -> str:
    """Exit 2, no traceback, and the run ends with one ``error:`` line (progress bars may come before it)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith("error: ") and sum(x.startswith("error: ") for x in lines) == 1, stderr
    assert all(x.startswith(("error: ", "render ")) for x in lines), stderr  # render's progress bar, nothing else
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    return lines[-1]


@pytest.mark.parametrize("command", (*COMMANDS, "synth"))
def test_output_path_under_a_file_is_one_line(fx, tmp_path, command):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    synth = ["data", "synth", "--out", str(blocker / "data"), "--frames", "1", "--res", "16"]
    code, _, err = fuzz.run_cli(synth if command == "synth" else _argv(command, fx, blocker))
    _one_line_error(code, err, str(blocker), "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"] and blocker.read_text() == "not a folder"


@pytest.mark.parametrize("command", COMMANDS)
def test_failing_writer_keeps_earlier_outputs(fx, tmp_path, command, monkeypatch):
    # Every writer saves under a temporary name and renames: a disk that fills up (here: at the rename, after
    # the data went out) must leave the earlier output as it was and no temporary file.
    out = tmp_path / "out"
    argv = _argv(command, fx, out)
    assert fuzz.run_cli(argv)[0] == 0
    before = _contents(out)
    real_replace = os.replace

    def full_disk(src, dst, *args, **kwargs):
        if Path(dst).is_relative_to(out) or Path(src).is_relative_to(out):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk)
    code, _, err = fuzz.run_cli(_again(command, argv))
    monkeypatch.setattr(os, "replace", real_replace)
    _one_line_error(code, err, "No space left on device", "free some disk space")
    after = _contents(out)
    assert [k for k in after.keys() - before.keys() if not k.startswith("run/tb/")] == []  # TensorBoard may log
    assert {k: v for k, v in after.items() if k in before} == before  # earlier outputs byte-for-byte
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp" in p.name or ".partial-" in p.name or ".old-" in p.name]
    assert leftovers == []


@pytest.mark.parametrize("command", COMMANDS)
def test_outputs_get_the_usual_permissions(fx, tmp_path, command):
    # A checkpoint or an eval.json that only its owner can read is no use on a shared server: the temporary name
    # an atomic write renames must take the umask's permissions (tempfile.mkstemp would make it 0600).
    out = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        assert fuzz.run_cli(_argv(command, fx, out))[0] == 0
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
    assert modes and {name: mode for name, mode in modes.items() if mode != "0o644"} == {}


def test_inspect_reports_a_file_on_a_read_only_disk(fx, tmp_path, monkeypatch):
    # Data often sits on a read-only share: the default sheet (next to the file) then cannot be written, but
    # the report must still come, saying so; a --sheet the user asked for stays an error.
    data = tmp_path / "share"
    data.mkdir()
    shutil.copy(fx.data / "train.h5", data / "train.h5")
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self == data or self.is_relative_to(data):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, out, err = fuzz.run_cli(["data", "inspect", str(data / "train.h5"), "--frames", "2"])
    assert code == 0, err
    assert "frames: 8 images" in out and "contact sheet: not written" in out and "pass --sheet PATH" in out
    code, _, err = fuzz.run_cli(["data", "inspect", str(data / "train.h5"), "--sheet", str(data / "s.png")])
    _one_line_error(code, err, str(data / "s.png"), "Read-only file system")


def test_refine_never_replaces_its_earlier_output_unasked(fx, tmp_path):
    argv = _argv("refine", fx, tmp_path)
    assert fuzz.run_cli(argv)[0] == 0
    refined = tmp_path / "refine" / "refined.h5"
    before = refined.read_bytes()
    code, _, err = fuzz.run_cli([a for a in argv if a != "--overwrite"])
    _one_line_error(code, err, str(refined), "exists — choose another --out, or pass --overwrite")
    assert refined.read_bytes() == before


@pytest.mark.parametrize("command", ["train", "refine"])
def test_unwritable_folder_is_one_line(fx, tmp_path, command, monkeypatch):
    # No write permission (root ignores permission bits, so the refusal is simulated where the OS says it).
    out = tmp_path / "out"
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self.is_relative_to(out):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, _, err = fuzz.run_cli(_argv(command, fx, out))
    _one_line_error(code, err, str(out), "Permission denied", "choose an output folder you can write to")
    assert not out.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_folder_for_real(fx, tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    try:
        for command in COMMANDS:
            code, _, err = fuzz.run_cli(_argv(command, fx, out))
            _one_line_error(code, err, str(out), "Permission denied")
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o700)


@contextlib.contextmanager
def _tmpfs(path: Path, *options: str):
    """A small tmpfs at ``path`` (skips the test where mounting is not allowed, e.g. unprivileged CI)."""
    if shutil.which("mount") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_failing_writer_keeps_earlier_outputs covers a full disk")
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path) -> None:
    """Write a file until the filesystem is full."""
    with open(folder / "filler", "wb") as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()


def _real_process_fails_cleanly(command: str, fx, out: Path) -> None:
    """In a real process nothing may print a traceback, not even at exit (writer threads, files' finalizers)."""
    argv = [sys.executable, "-m", "fast_anerf.cli", *_again(command, _argv(command, fx, out))]
    result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    _one_line_error(result.returncode, result.stderr, "No space left on device")
    assert "Exception ignored" not in result.stderr and "Exception in thread" not in result.stderr


# In a real process these would print tracebacks to stderr (at garbage collection, from a writer thread).
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_full_tmpfs_for_real_keeps_earlier_outputs(fx, tmp_path):
    with _tmpfs(tmp_path / "disk", "size=16m") as disk:
        out = disk / "out"
        for command in COMMANDS:  # earlier outputs of every command, while there is room
            assert fuzz.run_cli(_argv(command, fx, out))[0] == 0, command
        before = _contents(out)
        _fill(disk)
        for command in COMMANDS:
            code, _, err = fuzz.run_cli(_again(command, _argv(command, fx, out)))
            _one_line_error(code, err, "No space left on device")
        _real_process_fails_cleanly("render", fx, out)
        # Room for small files (TensorBoard's log) but not a checkpoint: training fails inside torch.save.
        filler = disk / "filler"
        os.truncate(filler, filler.stat().st_size - 65536)
        code, _, err = fuzz.run_cli(_again("train", _argv("train", fx, out)))
        _one_line_error(code, err, "No space left on device", "checkpoint.pt")
        _real_process_fails_cleanly("train", fx, out)
        after = _contents(out)
        assert {k: v for k, v in after.items() if k in before} == before
        assert [k for k in after.keys() - before.keys() if not k.startswith("run/tb/")] == []
        leftovers = [p.name for p in disk.rglob("*") if ".tmp" in p.name or ".partial-" in p.name]
        assert leftovers == []


def test_read_only_tmpfs_for_real(fx, tmp_path):
    with _tmpfs(tmp_path / "ro", "size=1m", "ro") as disk:
        for command in COMMANDS:
            code, _, err = fuzz.run_cli(_argv(command, fx, disk / "out"))
            _one_line_error(code, err, str(disk / "out"), "Read-only file system")


def test_paths_with_spaces_and_non_ascii_work_end_to_end(fx, tmp_path):
    data = tmp_path / "dätä 空 x"
    shutil.copytree(fx.data, data, ignore=shutil.ignore_patterns("*.png", "*.txt"))
    out = tmp_path / "öut ü z"
    for command in COMMANDS:
        code, _, err = fuzz.run_cli(_argv(command, fx, out, data=data))
        assert code == 0, (command, err)
    # The new run's checkpoint, under the unusual path, feeds the other commands too.
    ckpt = out / "run" / "checkpoint.pt"
    for command in ("eval", "render", "refine"):
        code, _, err = fuzz.run_cli(_argv(command, fx, out / "again", data=data, ckpt=ckpt))
        assert code == 0, (command, err)
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    for name in ("sheet.png", "run/checkpoint.pt", "metrics.json", "render/render.json", "refine/refined.h5",
                 "again/metrics.json", "again/render/video.mp4", "again/refine/refined.h5"):  # fmt: skip
        assert name in written, (name, sorted(written))
