"""What `train`, `refine` and `eval` refuse before they could lose or mix a user's results: a second run into the
same folder, preset values no field can be built with, the run's own data as an output, other data on --resume,
a JSON file that is not eval's own; and what a resumed run may change (where it runs)."""

import json
import shutil

import h5py
import pytest
import torch

from fast_anerf.cli import entrypoint
from fast_anerf.run_files import folder_lock, write_json_atomic

SMALL = """
[field]
n_levels = 4
log2_hashmap_size = 10
[train]
steps = 6
rays_per_batch = 256
images_per_batch = 8
ckpt_every = 3
log_every = 3
eval_every = 0
occupancy = false
pose_start = 2
step_size = 0.02
"""


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    return path


def _train(tiny_data, out, small, *extra, data=None):
    data = data if data is not None else tiny_data / "train.h5"
    argv = ["train", "--data", str(data), "--out", str(out), "--preset", str(small), "--device", "cpu", *extra]
    return entrypoint([str(a) for a in argv])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_a_second_run_into_a_busy_folder_is_refused(tiny_data, tiny_model, small, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    with folder_lock(out, "train"):  # another process training there (flock: one per open file, as across processes)
        assert _train(tiny_data, out, small) == 2
        assert _one_line(capsys).endswith(f"{out}: another fast-anerf run (train or refine) is writing to this "
                                          "folder; wait for it to end, or choose another --out")  # fmt: skip
        argv = ["refine", "--ckpt", tiny_model, "--data", tiny_data / "test_pose.h5", "--out", out, "--steps", "1"]
        assert entrypoint([str(a) for a in argv]) == 2
        assert "another fast-anerf run (train or refine) is writing" in _one_line(capsys)
    assert list(out.iterdir()) == []
    assert _train(tiny_data, out, small) == 0  # free again
    assert (out / "checkpoint.pt").is_file()


def test_a_run_started_on_a_gpu_resumes_on_this_cpu(tiny_data, small, tmp_path, capsys):
    out = tmp_path / "gpu_run"
    assert _train(tiny_data, out, small) == 0
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    ckpt["config"]["train"].update(device="cuda", backend="tcnn")  # as `train --device cuda` on a GPU wrote it
    torch.save(ckpt, out / "checkpoint.pt")
    capsys.readouterr()
    assert entrypoint(["train", "--out", str(out), "--resume", "--steps", "8"]) == 0  # device / backend: auto
    assert "trained 8 steps" in capsys.readouterr().out
    assert torch.load(out / "checkpoint.pt", weights_only=False)["config"]["train"]["device"] == "auto"


@pytest.mark.parametrize(
    "table, line, expect",
    [
        ("field", "base_resolution = 0", "[field] base_resolution = 0 must be >= 1"),
        ("field", "n_features_per_level = 3", "[field] n_features_per_level = 3 must be 1, 2, 4 or 8"),
        ("field", "sh_degree = 9", "[field] sh_degree = 9 must be in 1..4"),
        ("field", "framecode_dim = -1", "[field] framecode_dim = -1 must be >= 0"),
        ("field", "n_levels = 0", "[field] n_levels = 0 must be in 1..128"),
        ("field", "density_neurons = 0", "[field] density_neurons = 0 must be >= 1"),
    ],
)
def test_preset_values_no_field_can_use_are_one_line(tiny_data, tmp_path, capsys, table, line, expect):
    preset = tmp_path / "bad.toml"
    preset.write_text(f"[{table}]\n{line}\n")
    out = tmp_path / "never"
    assert _train(tiny_data, out, preset) == 2
    err = _one_line(capsys)
    assert f"{preset}: {expect}" in err and err.endswith("fix those values")
    assert not out.exists()


def test_the_run_never_writes_its_refined_poses_over_its_own_data(tiny_data, small, tmp_path, capsys):
    out = tmp_path / "self"
    out.mkdir()
    data = out / "refined_poses.h5"
    shutil.copy(tiny_data / "train.h5", data)
    before = data.read_bytes()
    assert _train(tiny_data, out, small, data=data) == 2
    assert _one_line(capsys).endswith(f"{data}: the run would write its refined poses over its own --data; copy "
                                      "the file elsewhere or choose another --out")  # fmt: skip
    assert data.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["refined_poses.h5"]


def test_resume_refuses_other_images(tiny_data, small, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_data, out, small) == 0
    inverted = tmp_path / "inverted.h5"  # the same poses, other pixels (re-extracted frames, say)
    shutil.copy(tiny_data / "train.h5", inverted)
    with h5py.File(inverted, "a") as f:
        f["imgs"][...] = 255 - f["imgs"][...]
    capsys.readouterr()
    resume = ["train", "--out", str(out), "--resume", "--steps", "8"]
    assert entrypoint([*resume, "--data", str(inverted)]) == 2
    assert f"{inverted} is not the data this run trained on (other images or masks)" in _one_line(capsys)
    assert entrypoint([*resume, "--preset", str(small)]) == 0  # the run's own preset, and --steps, are fine


def test_resume_with_an_edited_preset_names_what_it_does_not_use(tiny_data, small, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_data, out, small) == 0
    edited = tmp_path / "edited" / "small.toml"  # the same preset, its [train] edited after the run began
    edited.parent.mkdir()
    edited.write_text(SMALL.replace("steps = 6", "steps = 9").replace("log_every = 3", "log_every = 2"))
    capsys.readouterr()
    resume = ["train", "--out", str(out), "--resume", "--preset", str(edited)]
    assert entrypoint(resume) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"warning: --preset {edited}: [train] log_every = 2 (the run's: 3), steps = 9 "
                                    "(the run's: 6) not used: a resumed run keeps its own [train] values; pass "
                                    "--steps to change it")  # fmt: skip
    assert "trained 6 steps" in captured.out  # the run's own 6, not the preset's 9
    assert entrypoint([*resume, "--steps", "9"]) == 0  # the flag sets it; log_every is still named
    captured = capsys.readouterr()
    assert "log_every = 2" in captured.err and "steps = 9" not in captured.err and "trained 9 steps" in captured.out
    edited.write_text(SMALL + "seed = 7\ngt_poses = true\n")  # keys that define the model: refused as flags
    assert entrypoint(resume) == 2
    assert _one_line(capsys).endswith("its [train] differs in gt_poses, seed); drop the flag, or start a new run in "
                                      "another --out")  # fmt: skip


def test_resume_messages_name_the_real_problem(tiny_data, small, tmp_path, capsys):
    assert entrypoint(["train", "--out", str(tmp_path / "typo"), "--resume"]) == 2
    assert _one_line(capsys).endswith(f"{tmp_path / 'typo'}: no such run folder to resume; pass the --out of the "
                                      "run (the folder holding checkpoint.pt)")  # fmt: skip
    data = tmp_path / "moving.h5"
    shutil.copy(tiny_data / "train.h5", data)
    out = tmp_path / "run"
    assert _train(tiny_data, out, small, data=data) == 0
    data.rename(tmp_path / "moved.h5")
    capsys.readouterr()
    assert entrypoint(["train", "--out", str(out), "--resume", "--steps", "8"]) == 2
    assert _one_line(capsys).endswith(f"the run's data {data} is gone (moved?); pass its new place with --data")
    argv = ["train", "--out", str(out), "--resume", "--steps", "8", "--data", str(tmp_path / "moved.h5")]
    assert entrypoint(argv) == 0
    assert _train(tiny_data, tmp_path / "decay", small, "--pose-lr-decay", "0") == 2
    assert _one_line(capsys).endswith("pose_lr_decay_rate = 0.0 must be > 0 (set by --pose-lr-decay); fix that value")


def test_eval_json_replaces_only_its_own_output(tiny_data, tiny_model, tmp_path, capsys):
    run_eval = tmp_path / "eval.json"  # a training run's metrics, config and timings
    run_eval.write_text(json.dumps({"step": 40, "config": {}, "splits": {}, "train_seconds": 12.0}))
    argv = ["eval", "--ckpt", str(tiny_model), "--data", str(tiny_data / "test_pose.h5"), "--max-frames", "1"]
    assert entrypoint([*argv, "--json", str(run_eval)]) == 2
    assert "eval.json: exists and is not an earlier output of eval --json" in _one_line(capsys)
    (tmp_path / "a_file").write_text("x")
    assert entrypoint([*argv, "--json", str(tmp_path / "a_file" / "m.json")]) == 2
    assert capsys.readouterr().out == ""  # refused before evaluating, not after
    mine = tmp_path / "mine.json"
    assert entrypoint([*argv, "--json", str(mine)]) == 0
    assert entrypoint([*argv, "--json", str(mine)]) == 0  # its own earlier output: replaced
    assert json.loads(mine.read_text())["splits"]["test_pose"]["frames"] == 1


def test_json_outputs_hold_null_for_undefined_metrics(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"psnr_fg": float("nan"), "ok": [1.5, float("inf")]})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"psnr_fg": None, "ok": [1.5, None]}
