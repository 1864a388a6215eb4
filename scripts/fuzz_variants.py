"""The damaged inputs of ``fuzz_inputs.py``: A-NeRF .h5 files and checkpoints, each broken in one way.

``Variant`` names one damaged file, how to write it and what the error line must name; ``h5_variants`` and
``ckpt_variants`` build the corpora from a valid file, ``valid_controls`` the files every command must accept.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

H5_COMMANDS = ("inspect", "train", "eval", "render", "refine", "subset", "to-spin")
CKPT_COMMANDS = ("eval", "render", "refine", "view", "resume")
TRAINING = frozenset({"train", "refine"})  # commands that draw training rays inside the masks
NEEDS_IMAGES = frozenset({"inspect", "train", "eval", "refine", "subset"})  # render: only cameras and poses


@dataclass(frozen=True)
class Variant:
    """One damaged input. ``build(path)`` writes it; the error line must contain one of ``words`` (the key or
    the problem, case-insensitive). ``fatal``: commands that must refuse it (None: all); the others must run.
    ``may_pass``: random damage that can leave a valid file (byte flips): exit 0 is then fine too."""

    name: str
    kind: str  # "h5" or "ckpt"
    build: Callable[[Path], None]
    words: tuple[str, ...]
    fatal: frozenset[str] | None = None
    may_pass: bool = False

    @property
    def filename(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.name) + (".h5" if self.kind == "h5" else ".pt")

    def must_fail(self, command: str) -> bool:
        return self.fatal is None or command in self.fatal


# -------------------------------------------------------------------------------------------------
# .h5 variants
# -------------------------------------------------------------------------------------------------
def read_raw(path: Path) -> dict[str, np.ndarray]:
    """Every top-level dataset of an .h5 as stored (no validation)."""
    with h5py.File(path, "r") as f:
        return {key: f[key][()] for key in f}


def write_raw(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write datasets as given (no validation, no compression: the reader must catch everything)."""
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


def _edited(base: dict[str, np.ndarray], edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        d = {k: np.array(v, copy=True) for k, v in base.items()}  # scalars too: edits assign in place
        edit(d)
        write_raw(path, d)

    return build


def _put(key: str, index, value) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        if d[key].dtype.kind != "f" and not float(value).is_integer():  # NaN into an int array: store floats
            d[key] = d[key].astype(np.float32)
        d[key][index] = value

    return edit


def _resize_images(d: dict, h: int, w: int, shape: tuple[int, int] | None = None) -> None:
    """Resample every image-like key to ``h x w`` (nearest pixels); ``img_shape`` says ``shape`` (default h, w)."""
    n, h0, w0, _ = (int(s) for s in d["img_shape"])
    ys, xs = np.linspace(0, h0 - 1, h).round().astype(int), np.linspace(0, w0 - 1, w).round().astype(int)
    for key in ("imgs", "masks", "sampling_masks", "bkgds"):
        if key in d:
            a = d[key].reshape(len(d[key]), h0, w0, -1)[:, ys][:, :, xs]
            d[key] = np.ascontiguousarray(a.reshape(len(a), h * w, -1))
    d["img_shape"] = np.array([n, *(shape or (h, w)), 3])


def h5_edits(base: dict[str, np.ndarray]) -> list[tuple]:
    """Deterministic damage to a valid file's datasets: ``(name, words, edit(dict), fatal)`` tuples."""
    from fast_anerf.data.anerf_h5 import REQUIRED_KEYS

    n, h, w, _ = (int(s) for s in base["img_shape"])
    edits: list = []

    def add(name, words, edit, fatal=None):
        edits.append((name, tuple(words), edit, fatal))

    def reshape(key, fn):
        return lambda d: d.__setitem__(key, fn(d[key]))

    for key in REQUIRED_KEYS:
        add(f"missing-{key}", [key], lambda d, k=key: d.pop(k))
    widen = lambda a: np.concatenate([a, a[..., :1]], -1)  # noqa: E731 one more channel / column
    shapes = {
        "imgs": [lambda a: a[:-1], lambda a: a[:, :-1], widen, lambda a: a.reshape(n, -1), lambda a: a[0]],
        "masks": [lambda a: a[:-1], lambda a: a[:, :5], widen, lambda a: a[0]],
        "sampling_masks": [lambda a: a[:-1], lambda a: a[:, :-1]],
        "bkgds": [lambda a: a[:0], lambda a: a[:, :-1], lambda a: a[..., :2]],
        "kp3d": [lambda a: a[:, :17], lambda a: a[..., :2], lambda a: a.reshape(len(a), -1), lambda a: a[None]],
        "bones": [lambda a: a[:-1], lambda a: a[:, :17], widen, lambda a: a.reshape(len(a), -1)],
        "skts": [lambda a: a[:-1], lambda a: a[:, :, :3], lambda a: a.reshape(len(a), 24, 16), lambda a: a[:, :17]],
        "c2ws": [lambda a: a[:-1], lambda a: a[:, :2], lambda a: a.transpose(1, 2, 0), lambda a: a.reshape(n, 16)],
        "focals": [lambda a: a[:-1], lambda a: np.stack([a, a], 1), lambda a: a[:, None, None]],
        "centers": [lambda a: a[:, :1], widen, lambda a: a[:-1]],
        "cyls": [lambda a: a[..., :4]],
        "rest_pose": [lambda a: a[:17], lambda a: a[:, :2], lambda a: np.stack([a, a])],
        "kp_idxs": [lambda a: a[:-1], lambda a: a[:, None]],
        "cam_idxs": [lambda a: a[:-1]],
        "bkgd_idxs": [lambda a: a[:-1]],
        "gt_skts": [lambda a: a[:, :, :3]],
    }
    for key, fns in shapes.items():
        for i, fn in enumerate(fns):
            if key in base:
                add(f"shape-{key}-{i}", [key], reshape(key, fn))
    # Image counts that disagree with pose counts and with img_shape.
    pose_keys = ("kp3d", "bones", "skts", "gt_kp3d", "gt_bones", "gt_skts")
    add("poses-fewer-than-images", ["kp_idxs"], lambda d: d.update({k: d[k][:-1] for k in pose_keys if k in d}))
    add("poses-fewer-no-kp_idxs", ["kp3d"],
        lambda d: (d.update({k: d[k][:-1] for k in pose_keys if k in d}), d.pop("kp_idxs", None)))  # fmt: skip
    add("img_shape-more-images", ["imgs"], lambda d: d.update(img_shape=np.array([n + 1, h, w, 3])))
    add("img_shape-fewer-images", ["imgs"], lambda d: d.update(img_shape=np.array([n - 1, h, w, 3])))
    add("img_shape-no-images", ["img_shape"], lambda d: d.update(img_shape=np.array([0, h, w, 3])))
    add("img_shape-negative", ["img_shape"], lambda d: d.update(img_shape=np.array([-n, h, w, 3])))
    add("img_shape-3-ints", ["img_shape"], lambda d: d.update(img_shape=np.array([n, h, w])))
    add("img_shape-rgba", ["img_shape"], lambda d: d.update(img_shape=np.array([n, h, w, 4])))
    add("img_shape-scalar", ["img_shape"], lambda d: d.update(img_shape=np.array(n)))
    add("c2ws-3-cameras-for-8", ["c2ws"], lambda d: d.update(c2ws=d["c2ws"][:3]))
    add("key-name-not-utf8", ["kp3d"], lambda d: d.update({b"kp\xff3d": d.pop("kp3d")}))  # h5py gives it as bytes
    # Dtypes.
    add("dtype-imgs-float", ["imgs"], lambda d: d.update(imgs=d["imgs"].astype(np.float32) / 255))
    add("dtype-imgs-uint16", ["imgs"], lambda d: d.update(imgs=d["imgs"].astype(np.uint16) * 256))
    add("dtype-imgs-int64", ["imgs"], lambda d: d.update(imgs=d["imgs"].astype(np.int64)))
    add("dtype-bkgds-float", ["bkgds"], lambda d: d.update(bkgds=d["bkgds"].astype(np.float32)))
    add("dtype-img_shape-float", ["img_shape"], lambda d: d.update(img_shape=d["img_shape"].astype(np.float64)))
    for key in ("kp3d", "bones", "skts", "c2ws", "focals", "centers", "rest_pose", "ext_scale", "cyls"):
        if key in base:
            add(f"dtype-{key}-strings", [key], lambda d, k=key: d.update({k: d[k].astype("S8")}))
    add("dtype-c2ws-complex", ["c2ws"], lambda d: d.update(c2ws=d["c2ws"].astype(np.complex64)))
    for key in ("kp_idxs", "bkgd_idxs", "cam_idxs"):
        add(f"dtype-{key}-float", [key], lambda d, k=key: d.update({k: d[k].astype(np.float32) + 0.5}))
    # Non-finite poses and cameras.
    spots = {"kp3d": (1, 5, 2), "bones": (2, 3, 0), "skts": (0, 4, 1, 3), "c2ws": (4, 0, 3), "focals": 2,
             "centers": (3, 1), "cyls": (1, 2), "rest_pose": (7, 1), "ext_scale": (),
             "gt_skts": (1, 2, 0, 0)}  # fmt: skip
    for key, spot in spots.items():
        for value in (np.nan, np.inf, -np.inf):
            add(f"nonfinite-{key}-{value}", [key], _put(key, spot, value))
    # Values that are finite but unusable.
    add("focal-zero", ["focals"], _put("focals", 3, 0.0))
    add("focal-negative", ["focals"], _put("focals", 0, -500.0))
    add("focals-all-zero", ["focals"], _put("focals", slice(None), 0.0))
    add("c2ws-rotation-zero", ["c2ws"], _put("c2ws", (2, slice(0, 3), slice(0, 3)), 0.0))
    add("c2ws-rotation-scaled", ["c2ws"], lambda d: d["c2ws"][:, :3, :3].__imul__(3.0))
    add("skts-rotation-zero", ["skts"], _put("skts", (1, slice(None), slice(0, 3), slice(0, 3)), 0.0))
    add("skts-all-zero", ["skts"], _put("skts", slice(None), 0.0))
    add("kp3d-collapsed-pose", ["kp3d"], _put("kp3d", 2, 0.0))
    add("rest_pose-collapsed", ["rest_pose"], _put("rest_pose", slice(None), 0.0))
    add("ext_scale-zero", ["ext_scale"], lambda d: d.update(ext_scale=np.float32(0.0)))
    add("bkgd_idxs-out-of-range", ["bkgd_idxs"], _put("bkgd_idxs", 3, 5))
    add("bkgd_idxs-negative", ["bkgd_idxs"], lambda d: d["bkgd_idxs"].__setitem__(0, -1))

    # kp_idxs maps images to pose rows only where there are fewer poses than images (else it may hold frame ids).
    def half_poses(d: dict, bad_row: int, value: int) -> None:
        d.update({k: d[k][: n // 2] for k in pose_keys if k in d}, kp_idxs=np.arange(n) % (n // 2))
        d["kp_idxs"][bad_row] = value

    add("kp_idxs-out-of-range", ["kp_idxs"], lambda d: half_poses(d, 0, 99))
    add("kp_idxs-negative", ["kp_idxs"], lambda d: half_poses(d, 1, -3))
    # Masks and sizes.
    add("masks-all-empty", ["mask"], lambda d: (d["masks"].fill(0), d["sampling_masks"].fill(0)), TRAINING)
    add("masks-one-frame-empty", ["mask"], lambda d: (d["masks"][5].fill(0), d["sampling_masks"][5].fill(0)), TRAINING)
    add("sampling_masks-empty", ["mask"], lambda d: d["sampling_masks"].fill(0), TRAINING)
    add("tiny-images-4x4", ["img_shape"], lambda d: _resize_images(d, 4, 4))
    add("tiny-images-1x1", ["img_shape"], lambda d: _resize_images(d, 1, 1))
    add("tiny-images-7x48", ["img_shape"], lambda d: _resize_images(d, 7, w))
    add("non-square-img_shape-lies", ["imgs"], lambda d: _resize_images(d, h, w - 8, shape=(h, w)))
    return edits


def valid_controls(base: dict[str, np.ndarray]) -> list[Variant]:
    """Valid files every command must accept: the original, non-square images, only the required keys."""
    from fast_anerf.data.anerf_h5 import REQUIRED_KEYS

    n, h, w, _ = (int(s) for s in base["img_shape"])
    only_required = lambda d: [d.pop(k) for k in list(d) if k not in REQUIRED_KEYS]  # noqa: E731
    pose_keys = ("kp3d", "bones", "skts", "gt_kp3d", "gt_bones", "gt_skts")
    half_poses = lambda d: d.update({k: d[k][: n // 2] for k in pose_keys}, kp_idxs=np.arange(n) % (n // 2))  # noqa: E731
    controls = [("valid-original", lambda d: None), ("valid-non-square", lambda d: _resize_images(d, h, w - 8)),
                ("valid-required-keys-only", only_required), ("valid-kp_idxs-half-poses", half_poses)]  # fmt: skip
    return [Variant(name, "h5", _edited(base, edit), (), frozenset()) for name, edit in controls]


def _truncate(source: bytes, size: int) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(source[:size])


def _flip(source: bytes, offsets: np.ndarray, values: np.ndarray) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        data = bytearray(source)
        for o, v in zip(offsets.tolist(), values.tolist(), strict=True):
            data[o] ^= v or 0xFF
        path.write_bytes(bytes(data))

    return build


def _corrupt_chunk(source: Path, key: str) -> Callable[[Path], None]:
    """Scramble the middle of the first stored (compressed) chunk of ``key``."""

    def build(path: Path) -> None:
        shutil.copyfile(source, path)
        with h5py.File(path, "r") as f:
            info = f[key].id.get_chunk_info(0)
        with open(path, "r+b") as handle:
            handle.seek(info.byte_offset + info.size // 3)
            handle.write(bytes(range(7, 7 + min(64, info.size // 3))))

    return build


def _not_hdf5(content: bytes | None) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)

    return build


def h5_variants(valid: Path, rng: np.random.Generator, n_truncations: int = 40, n_flips: int = 0) -> list[Variant]:
    """The damaged .h5 corpus from a valid compressed file (``write_anerf_h5``'s layout)."""
    base = read_raw(valid)
    source = valid.read_bytes()
    out = [Variant(name, "h5", _edited(base, edit), words, fatal) for name, words, edit, fatal in h5_edits(base)]
    unreadable = ("not a readable HDF5", "damaged", "corrupt", "cannot read")
    missing = ("not found", "no such", "not there")
    out += [
        Variant("empty-file", "h5", _not_hdf5(b""), unreadable),
        Variant("text-file", "h5", _not_hdf5(b"this is not an HDF5 file\n" * 10), unreadable),
        Variant("random-bytes", "h5", _not_hdf5(rng.bytes(4096)), unreadable),
        Variant("npz-renamed", "h5", _not_hdf5(b"PK\x03\x04" + bytes(200)), unreadable),
        Variant("a-directory", "h5", _not_hdf5(None), ("directory", "folder", "train.h5")),
        Variant("no-such-file", "h5", lambda path: None, missing),
    ]
    # What reads which key: render never reads images or masks; inspect never reads sampling masks.
    reads = {"imgs": NEEDS_IMAGES, "masks": NEEDS_IMAGES, "sampling_masks": TRAINING | {"eval", "subset"}}
    for key in ("imgs", "masks", "sampling_masks", "kp3d", "c2ws"):
        fatal = reads.get(key)
        out.append(Variant(f"corrupt-chunk-{key}", "h5", _corrupt_chunk(valid, key), (key, *unreadable), fatal))
    sizes = np.unique(rng.integers(1, len(source), n_truncations))
    out += [Variant(f"truncated-{s}", "h5", _truncate(source, int(s)), unreadable) for s in sizes]
    for i in range(n_flips):
        k = int(rng.integers(1, 17))
        offsets, values = rng.integers(0, len(source), k), rng.integers(0, 256, k)
        # Flips damage anything (a header, a key's name or values): any clean error will do, or a valid file.
        out.append(Variant(f"flip-{i}-{k}", "h5", _flip(source, offsets, values), (), may_pass=True))
    return out


# -------------------------------------------------------------------------------------------------
# Checkpoint variants
# -------------------------------------------------------------------------------------------------
def _ckpt_edit(ckpt: dict, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        import copy

        c = copy.deepcopy(ckpt)
        edit(c)
        torch.save(c, path)

    return build


def ckpt_variants(valid: Path, anerf: Path, rng: np.random.Generator, n_truncations: int = 16) -> list[Variant]:
    """Damaged checkpoints from a valid fast-field one (``valid``) and an A-NeRF-field one (``anerf``)."""
    ckpt = torch.load(valid, map_location="cpu", weights_only=False)
    other = torch.load(anerf, map_location="cpu", weights_only=False)
    source = valid.read_bytes()
    damaged = ("damaged", "cannot read", "not a fast-anerf checkpoint")
    resume_only = frozenset({"resume"})
    first_weight = w0 = next(k for k in ckpt["model"] if k.startswith("field."))

    def model_edit(fn):
        return lambda c: fn(c["model"])

    def put(key, value):
        return model_edit(lambda m: m[key].view(-1).__setitem__(0, value))

    ANERF = "anerf"  # noqa: N806
    edits = [
        ("junk-keys-only", damaged, lambda c: c.clear() or c.update(junk=True)),
        ("no-version", damaged + ("version",), lambda c: c.pop("version")),
        ("version-0", ("version",), lambda c: c.update(version=0)),
        ("version-99", ("version",), lambda c: c.update(version=99)),
        ("version-string", ("version",), lambda c: c.update(version="1")),
        ("no-model", damaged + ("model",), lambda c: c.pop("model")),
        ("no-config", ("config",), lambda c: c.pop("config")),
        ("config-not-a-dict", ("config",), lambda c: c.update(config=[1, 2])),
        ("config-unknown-key", ("unknown", "config"), lambda c: c["config"]["train"].update(warp_speed=9)),
        ("config-wrong-type", ("n_levels", "config"), lambda c: c["config"]["fast"].update(n_levels="eight")),
        ("config-bad-value", ("netdepth", "config", "anerf"), lambda c: c["config"]["anerf"].update(netdepth=0)),
        ("no-n_frame_codes", ("n_frame_codes",), lambda c: c.pop("n_frame_codes")),
        ("n_frame_codes-wrong", ("n_frame_codes", "weights", "match"), lambda c: c.update(n_frame_codes=1000)),
        ("n_frame_codes-string", ("n_frame_codes",), lambda c: c.update(n_frame_codes="8")),
        ("other-field-type-config", ("field", "weights", "match"), lambda c: c["config"]["train"].update(field=ANERF)),
        ("field_type-disagrees", ("field",), lambda c: c.update(field_type="anerf")),
        ("field_type-unknown", ("field",), lambda c: c.update(field_type="nerfacto")),
        ("no-rest_pose", ("rest_pose",), model_edit(lambda m: m.pop("rest_pose"))),
        ("rest_pose-nan", ("rest_pose", "non-finite"), put("rest_pose", float("nan"))),
        ("ckpt-rest_pose-collapsed", ("rest_pose",), model_edit(lambda m: m["rest_pose"].zero_())),
        ("weight-missing", ("weights", "match", "missing"), model_edit(lambda m: m.pop(first_weight))),
        ("weight-wrong-shape", ("weights", "match", "size"), model_edit(lambda m: m.update({w0: m[w0][:1]}))),
        ("weight-nan", ("non-finite",), put(first_weight, float("nan"))),
        ("weight-inf", ("non-finite",), put(first_weight, float("inf"))),
        ("model-not-a-dict", ("model", "weights"), lambda c: c.update(model=[1, 2])),
        ("no-optimizer", ("optimizer", "resume"), lambda c: c.pop("optimizer"), resume_only),
        ("no-pool", ("pool", "resume"), lambda c: c.pop("pool"), resume_only),
        ("no-step", ("step", "resume"), lambda c: c.pop("step"), resume_only),
        ("rng-garbage", ("rng", "resume"), lambda c: c.update(torch_rng=torch.zeros(3)), resume_only),
    ]
    out = [Variant(e[0], "ckpt", _ckpt_edit(ckpt, e[2]), e[1], e[3] if len(e) > 3 else None) for e in edits]
    claims_fast = _ckpt_edit(other, lambda c: c["config"]["train"].update(field="fast"))
    out.append(Variant("anerf-claims-fast", "ckpt", claims_fast, ("field", "weights", "match")))
    out.append(Variant("list-pickle", "ckpt", lambda p: torch.save([1, 2, 3], p), damaged))
    unreadable = ("damaged", "cannot read", "not a fast-anerf checkpoint", "not found")
    out += [
        Variant("ckpt-empty-file", "ckpt", _not_hdf5(b""), unreadable),
        Variant("ckpt-text-file", "ckpt", _not_hdf5(b"checkpoint\n"), unreadable),
        Variant("ckpt-random-bytes", "ckpt", _not_hdf5(rng.bytes(4096)), unreadable),
        Variant("ckpt-is-an-h5", "ckpt", lambda p: write_raw(p, {"imgs": np.zeros((1, 3))}), unreadable),
        Variant("ckpt-a-directory", "ckpt", _not_hdf5(None), ("not found", "directory", "folder")),
        Variant("ckpt-missing", "ckpt", lambda path: None, ("not found", "no checkpoint")),
    ]
    sizes = np.unique(rng.integers(1, len(source), n_truncations))
    out += [Variant(f"ckpt-truncated-{s}", "ckpt", _truncate(source, int(s)), unreadable) for s in sizes]
    return out
