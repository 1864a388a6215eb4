"""Tests of the built-in character: motions, mannequin <-> FK agreement, the generated A-NeRF files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from fast_anerf.data import motions
from fast_anerf.data.anerf_h5 import dilate_mask, open_anerf_h5
from fast_anerf.data.rays import project_points
from fast_anerf.data.synthetic import (
    EXT_SCALE,
    SPLITS,
    Character,
    builtin_rest_pose,
    canonical_to_world,
    default_data_dir,
    generate_dataset,
)
from fast_anerf.skeleton import pose_skeleton

TINY = {"n_frames": 6, "resolution": 48}
TORSO_JOINTS = (0, 1, 2, 3, 6, 9, 12, 13, 14, 16, 17)  # pelvis, hips, spine, neck, collars, shoulders


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return generate_dataset(out, seed=0, verbose=False, **TINY)


def _read_all(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


def _fk(rest, bones, roots):
    t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float64)  # noqa: E731
    kp3d, skts = pose_skeleton(t(rest), t(bones), t(roots))
    return kp3d.numpy(), skts.numpy()


# ------------------------------------------------------------------------------------------------- motions
@pytest.mark.parametrize("name", motions.list_motions())
def test_motions_finite_and_shaped(name):
    for n in (1, 7, 48):
        bones, roots = motions.MOTIONS[name](n)
        assert bones.shape == (n, 24, 3) and roots.shape == (n, 3)
        assert np.isfinite(bones).all() and np.isfinite(roots).all()
        assert np.linalg.norm(bones, axis=-1).max() <= np.pi + 1e-6  # wrapped axis-angle
    again = motions.MOTIONS[name](20)
    np.testing.assert_array_equal(again[0], motions.MOTIONS[name](20)[0])  # deterministic


def test_required_motions_exist():
    assert {"walk", "arm_raise", "turn", "squat", "jumping_jacks", "wave"} <= set(motions.list_motions())


def test_knees_bend_forward():
    """Canonical frame: the person faces +z, so a flexing knee moves the ankle to -z (backward)."""
    rest = builtin_rest_pose()
    assert rest[10, 2] > rest[7, 2] and rest[11, 2] > rest[8, 2]  # toes point to +z
    bones = np.zeros((1, 24, 3))
    straight, _ = _fk(rest, bones, np.zeros((1, 3)))
    bones[0, 4, 0] = bones[0, 5, 0] = 0.6
    bent, _ = _fk(rest, bones, np.zeros((1, 3)))
    assert (bent[0, [7, 8], 2] < straight[0, [7, 8], 2] - 0.1).all()
    # Every motion keeps the knee flexion non-negative (no hyper-extension) ...
    for name in motions.list_motions():
        b, _ = motions.MOTIONS[name](48)
        assert (b[:, [4, 5], 0] >= -1e-9).all(), name
    # ... and in the deepest squat the knees are in front of the ankles and the feet stay put.
    b, r = motions.squat(48)
    kp, _ = _fk(rest, b, r)
    deep = np.argmax(b[:, 4, 0])
    assert (kp[deep, [4, 5], 2] > kp[deep, [7, 8], 2] + 0.05).all()
    assert np.abs(kp[:, [7, 8]] - kp[:1, [7, 8]]).max() < 0.03


def test_each_motion_does_what_its_name_says():
    """Joint positions (canonical frame: y up, facing +z, the person's left is +x; metres) of each motion."""
    rest = builtin_rest_pose()

    def joints(name):
        return _fk(rest, *motions.MOTIONS[name](96))[0]

    head, l_wrist, r_wrist, l_shoulder, r_shoulder, l_ankle, r_ankle = 15, 20, 21, 16, 17, 7, 8
    walk = joints("walk")  # the ankles swing forward and back in turn, twice each
    lead = walk[:, l_ankle, 2] - walk[:, r_ankle, 2]
    assert lead.max() > 0.15 and lead.min() < -0.15
    assert int((np.diff(np.sign(lead[np.abs(lead) > 0.05])) != 0).sum()) >= 3
    raise_ = joints("arm_raise")  # each wrist in turn above its shoulder, then both
    above = raise_[:, [l_wrist, r_wrist], 1] > raise_[:, [l_shoulder, r_shoulder], 1] + 0.2
    assert above[:32, 0].any() and not above[:32, 1].any() and above[32:64, 1].any() and above[64:].all(axis=1).any()
    turn = joints("turn")  # the facing direction (left shoulder -> right shoulder, rotated) sweeps a full turn
    across = turn[:, r_shoulder] - turn[:, l_shoulder]
    yaw = np.unwrap(np.arctan2(across[:, 2], across[:, 0]))
    assert abs(abs(yaw[-1] - yaw[0]) - 2 * np.pi) < 0.2
    squat = joints("squat")  # the head drops by a good part of a leg, twice
    drop = squat[0, head, 1] - squat[:, head, 1]
    assert drop.max() > 0.3 and drop[len(drop) // 2] < 0.05
    jacks = joints("jumping_jacks")  # hands overhead with the feet apart, then back
    spread = jacks[:, l_ankle, 0] - jacks[:, r_ankle, 0]
    overhead = (jacks[:, [l_wrist, r_wrist], 1] > jacks[:, [head], 1]).all(axis=1)
    assert overhead.sum() > 10 and spread[overhead].mean() > spread[~overhead].mean() + 0.15
    wave = joints("wave")  # the right hand goes up and swings sideways; the left arm stays down
    up = wave[:, r_wrist, 1] > wave[:, r_shoulder, 1]
    assert up.sum() > 30 and np.ptp(wave[up, r_wrist, 0]) > 0.1
    assert (wave[:, l_wrist, 1] < wave[:, l_shoulder, 1] - 0.3).all()


# ------------------------------------------------------------------------------------------------- character
def test_mannequin_joints_match_fk():
    char = Character()
    bones, roots = motions.concatenate(motions.list_motions(), 6)
    bones, roots = canonical_to_world(bones, roots)
    roots = roots + np.random.default_rng(0).normal(0, 0.5, roots.shape)
    kp3d, _ = _fk(char.rest_pose, bones, roots)
    for i in range(len(bones)):
        _, joints = char.pose(bones[i], roots[i])
        assert np.abs(joints[:22] - kp3d[i, :22]).max() < 1e-3


def test_rest_pose():
    rest = builtin_rest_pose()
    assert rest.shape == (24, 3) and np.allclose(rest[0], 0)
    assert 1.0 < rest[15, 1] - rest[7, 1] < 1.8  # ankle to head, metres, y up
    for hand, wrist in ((22, 20), (23, 21)):
        assert 0.07 < np.linalg.norm(rest[hand] - rest[wrist]) < 0.11


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FAST_ANERF_CACHE", str(tmp_path))
    assert default_data_dir() == tmp_path / "builtin"


# ------------------------------------------------------------------------------------------------- files
def test_files_open_and_keys(tiny):
    for split in SPLITS:
        with open_anerf_h5(tiny[split]) as d:
            a = d.arrays
            assert d.height == d.width == TINY["resolution"]
            for key in ("gt_kp3d", "gt_bones", "gt_skts", "cyls", "rest_pose", "betas", "bkgd_idxs"):
                assert key in a, key
            assert np.isclose(float(a["ext_scale"]), EXT_SCALE)
            assert (d.background(0) == 255).all()
            assert a["img_paths"][0].startswith(f"synth/{split}/cam")
            # World up is -y: the head is above (smaller y than) the pelvis.
            assert (a["gt_kp3d"][:, 15, 1] < a["gt_kp3d"][:, 0, 1]).all()
    with open_anerf_h5(tiny["train"]) as d:
        assert d.n_images == TINY["n_frames"]
        assert (d.arrays["kp_idxs"] == np.arange(TINY["n_frames"])).all()


@pytest.mark.parametrize("split", SPLITS)
def test_fk_reproduces_stored_poses(tiny, split):
    a = _read_all(tiny[split])
    kp3d, skts = _fk(a["rest_pose"], a["gt_bones"], a["gt_kp3d"][:, 0])
    np.testing.assert_allclose(kp3d, a["gt_kp3d"], atol=1e-5)
    np.testing.assert_allclose(skts, a["gt_skts"], atol=1e-5)
    kp3d, skts = _fk(a["rest_pose"], a["bones"], a["kp3d"][:, 0])
    np.testing.assert_allclose(kp3d, a["kp3d"], atol=1e-5)
    np.testing.assert_allclose(skts, a["skts"], atol=1e-5)
    # Each joint sits at the origin of its own frame.
    homog = np.concatenate([a["kp3d"], np.ones_like(a["kp3d"][..., :1])], -1)
    local = np.einsum("pjab,pjb->pja", a["skts"], homog)[..., :3]
    np.testing.assert_allclose(local, 0, atol=1e-5)
    if split != "train":
        for key in ("kp3d", "bones", "skts"):
            np.testing.assert_array_equal(a[key], a[f"gt_{key}"])


@pytest.mark.parametrize("split", SPLITS)
def test_torso_joints_project_into_mask(tiny, split):
    with open_anerf_h5(tiny[split]) as d:
        gt, c2ws, focals = d.arrays["gt_kp3d"], d.arrays["c2ws"], d.arrays["focals"]
        for i in range(d.n_images):
            mask = dilate_mask(d.mask(i), kernel=3, iterations=1)
            kp = torch.as_tensor(gt[i], dtype=torch.float64)
            uv, depth = project_points(kp, c2ws[i], focals[i], d.center(i))
            assert (depth > 0).all()
            u, v = np.round(uv.numpy()[list(TORSO_JOINTS)]).astype(int).T
            assert mask[v, u].all(), f"{split} image {i}: joints {np.array(TORSO_JOINTS)[~mask[v, u]]}"
            assert 0.02 < d.mask(i).mean() < 0.6


def test_noisy_mpjpe(tiny):
    a = _read_all(tiny["train"])
    mpjpe_mm = np.linalg.norm(a["kp3d"] - a["gt_kp3d"], axis=-1).mean() / float(a["ext_scale"])
    assert 30 < mpjpe_mm < 80


def test_deterministic_and_seeded(tiny, tmp_path):
    again = generate_dataset(tmp_path / "same", seed=0, verbose=False, **TINY)
    for split in SPLITS:
        a, b = _read_all(tiny[split]), _read_all(again[split])
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{split}/{key}")
    other = generate_dataset(tmp_path / "other", seed=1, verbose=False, **TINY)
    assert not np.array_equal(_read_all(tiny["train"])["kp3d"], _read_all(other["train"])["kp3d"])


def test_cache_hit(tiny):
    mtimes = {s: p.stat().st_mtime_ns for s, p in tiny.items()}
    assert generate_dataset(tiny["train"].parent, seed=0, verbose=False, **TINY) == tiny
    assert {s: p.stat().st_mtime_ns for s, p in tiny.items()} == mtimes


def test_synth_never_replaces_a_users_files_unasked(tiny, tmp_path, capsys):
    from fast_anerf.cli import entrypoint

    own = tmp_path / "mine"
    own.mkdir()
    (own / "train.h5").write_bytes(b"my own data")
    assert entrypoint(["data", "synth", "--out", str(own), "--frames", "4", "--res", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {own / 'train.h5'}: exists and is not a built-in set (or a damaged or changed copy); "
                   "choose another --out, or pass --force to replace it")  # fmt: skip
    assert (own / "train.h5").read_bytes() == b"my own data"
    folder = tiny["train"].parent  # a built-in set a run may have trained on, asked for with other settings
    before = tiny["train"].read_bytes()
    assert entrypoint(["data", "synth", "--out", str(folder), "--frames", "5", "--res", "16"]) == 2
    assert "exists and is a built-in set made with other settings (n_frames" in capsys.readouterr().err
    assert tiny["train"].read_bytes() == before
    assert entrypoint(["data", "synth", "--out", str(own), "--frames", "4", "--res", "16", "--force"]) == 0
    assert (own / "train.h5").read_bytes() != b"my own data"


def test_synth_knows_a_changed_copy_of_its_files(tiny, tmp_path, capsys):
    """A subset of a built-in split (it carries ``synth_params``) is the user's file, not the cached set."""
    from fast_anerf.cli import entrypoint

    folder = tmp_path / "copy"
    folder.mkdir()
    for split in ("test_view", "test_pose"):
        (folder / f"{split}.h5").write_bytes(tiny[split].read_bytes())
    assert entrypoint(["data", "subset", str(tiny["train"]), "--select", "0:2", "--out", str(folder / "train.h5")]) == 0
    before = (folder / "train.h5").read_bytes()
    capsys.readouterr()
    assert entrypoint(["data", "synth", "--out", str(folder), "--frames", "4", "--res", "16"]) == 2
    assert "train.h5: exists and is not a built-in set (or a damaged or changed copy)" in capsys.readouterr().err
    assert (folder / "train.h5").read_bytes() == before


def test_synth_keeps_a_users_report_and_refuses_a_file_as_out(tmp_path, capsys):
    from fast_anerf.cli import entrypoint

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "report.txt").write_text("my experiment notes")
    assert entrypoint(["data", "synth", "--out", str(folder), "--frames", "4", "--res", "16"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {folder / 'report.txt'}: exists and is not this command's report (your notes?); choose another "
        "--out, or pass --force to replace it"
    )
    assert (folder / "report.txt").read_text() == "my experiment notes" and not (folder / "train.h5").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert entrypoint(["data", "synth", "--out", str(afile), "--frames", "4", "--res", "16"]) == 2
    assert "afile: is a file; --out is the folder the three split files go to" in capsys.readouterr().err


def test_synth_completes_its_own_incomplete_set(tmp_path):
    paths = generate_dataset(tmp_path / "set", seed=0, verbose=False, **TINY)
    train = paths["train"].read_bytes()
    paths["test_pose"].unlink()
    assert generate_dataset(tmp_path / "set", seed=0, verbose=False, **TINY)["test_pose"].is_file()
    assert paths["train"].read_bytes() == train  # the same set, made again
