"""SPIN / VIBE per-frame output + frames + masks -> an A-NeRF ``.h5`` (specs/anerf.md §1.4, §8).

Input ``.npz`` (``np.savez``; no pickled objects). ``N`` = number of frames; SPIN / VIBE / A-NeRF names are
accepted for each key (first match wins):

* ``pred_rotmat | pred_rot_mat | rotmat`` ``[N, 24, 3, 3]`` SMPL local joint rotations (relative to the parent;
  joint 0 = global orientation in SPIN's OpenCV camera frame), or axis-angle ``pose | pred_pose``
  ``[N, 72]`` / ``[N, 24, 3]`` (VIBE) in radians.
* ``pred_camera | pred_cam`` ``[N, 3]`` weak-perspective camera ``(s, tx, ty)`` of the 224x224 crop.
* ``bboxes | bbox`` ``[N, 4]`` crop box ``(cx, cy, w, h)`` in pixels of the original frame (VIBE's layout), the
  crop side being ``max(w, h)``; or ``[N, 3]`` ``(cx, cy, side)``. ``--bbox-scale`` multiplies the side, for
  pipelines that enlarge the box before cropping (SPIN's demo: 1.2, VIBE: 1.1).
* optional ``pred_betas | betas`` ``[N, 10]`` or ``[10]`` (default: zeros = mean shape; stored as ``betas``).
* optional ``pred_joints | joints3d`` ``[N, 49, 3]`` (SPIN's joints; index 8 "OP MidHip" is SMPL's pelvis, as
  A-NeRF uses) or ``[N, 24, 3]`` (index 0): gives the pelvis position in SMPL's model frame.
* optional ``frame_ids`` ``[N]`` ints: which frame of ``--images`` (and ``--masks``) each row belongs to
  (VIBE's per-person tracks). Without it, the image count must equal ``N``.
* optional ``masks`` ``[N, H, W]``: used when ``--masks`` is not given.

Frames: a folder of images (sorted by name, digit runs compared as numbers) or a video (imageio). Masks: the
same, 0-255 grey (colour: max over RGB), foreground = value >= 2 as A-NeRF; a mask whose maximum is 1 is
taken as {0, 1}.

Conversion (A-NeRF's ``process_spin.py``, VIBE's ``convert_crop_cam_to_orig_img``):

* Camera: SPIN projects with focal ``5000`` px in the 224 crop and the body at depth ``tz = 2*5000/(224 s)``.
  In the full frame (principal point ``(W/2, H/2)``) this is focal ``f = side/224 * 5000`` and the body
  translation ``t = (tx + 2(cx - W/2)/(s side), ty + 2(cy - H/2)/(s side), tz)``: a camera tens of metres
  away with a long lens, nearly orthographic (``--focal spin``, as A-NeRF). Any other focal ``F`` moves the
  camera along its axis, ``tz *= F / f``, so the person keeps its image size: a known ``--focal F`` (A-NeRF's
  ``new_focal``), or by default the file's ``focal`` (``to-spin`` writes it), else the frame's diagonal
  ``sqrt(W^2 + H^2)`` (CLIFF's guess for unknown cameras). A file without ``pred_camera`` but with ``transl``
  and ``focal`` (``to-spin``'s output) gives its full-frame camera directly: ``t = transl``.
  Why not SPIN's: pose refinement (scripts/bench_spin_loop.py) took MPJPE -49 / -51 % with the diagonal (two
  runs), -51 % with the true focal, -45 % with 0.8x it, +4.5 % with SPIN's camera (the poses fake perspective).
* World = SMPL's model frame with the axes of SPIN's OpenCV camera (x right, y down, z forward), so "up" is
  -y as in A-NeRF; SPIN places the body at ``X_cam = X_model + t``, so the camera sits at ``-t`` with the
  identity rotation, and OpenCV -> OpenGL flips its y and z axes: ``c2w = [diag(1, -1, -1) | -t]``. The body
  stays near the origin and the camera moves with the person's translation (A-NeRF's choice).
* Joints: FK of the rest skeleton with the SPIN rotations, the root at the SMPL pelvis in the model frame
  (global orientation rotates SMPL about its pelvis, so the pelvis is ``J_0(betas)``, fixed per frame):
  from ``pred_joints`` if given, else from the SMPL file (``--smpl``), else ``SMPL_MEAN_PELVIS``.
* Rest skeleton: without ``--smpl``, our built-in mean rest skeleton (``synthetic.builtin_rest_pose``); with
  ``--smpl`` (needs ``pip install smplx``), SMPL's rest joints of each frame's betas, root-centred and averaged
  over frames (A-NeRF's ``get_keypoints_from_betas``).
* Units: metres, ``ext_scale = 0.001`` (as the built-in character: mm x 0.001 = world units). A-NeRF instead
  rescales the skeleton to its reference size; we keep metres and store ``pose_scale = 1``.

Output keys: ``imgs, masks, sampling_masks`` (5x5 dilation twice), ``img_shape, kp3d, bones`` (axis-angle)
``, skts, cyls, c2ws, focals, centers, rest_pose, betas, ext_scale, pose_scale, img_paths`` (frame file
paths, or ``<video>/<frame:06d>``, so consecutive frames are found for the temporal loss), ``kp_idxs`` (the
frame index), and the background (``--background``): ``median`` (default, a static camera) stores ``bkgds`` = the
per-pixel median of the frames outside the dilated masks (as A-NeRF's H36M backgrounds) with ``bkgd_idxs`` = 0,
so training composites the body onto the real background; ``white`` (a moving camera) paints the frames white
outside the masks; ``none`` keeps the frames as they are (already on white). Without a background the trainer
composites onto white, and a real background inside the dilated masks would be a colour the body has to fake.
No ``gt_*`` keys.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from fast_anerf.data.anerf_h5 import dilate_mask
from fast_anerf.data.background import static_background
from fast_anerf.data.frames import MASK_THRESHOLD, as_rgb, binarize_mask, read_frames
from fast_anerf.data.h5_write import write_anerf_h5
from fast_anerf.data.rays import OPENCV_TO_OPENGL, bounding_cylinder
from fast_anerf.data.spin_npz import bad_key, load_spin_npz
from fast_anerf.errors import DataError, UserError, refuse_to_replace
from fast_anerf.skeleton import matrix_to_axis_angle

SPIN_FOCAL = 5000.0  # px, SPIN's fixed focal length in the crop
SPIN_CROP = 224  # px, SPIN's crop size
# SMPL neutral mean-shape pelvis J_0 = J_regressor[0] @ v_template, metres, model frame. Only used when neither
# pred_joints nor an SMPL file gives it; an error of d metres shifts the body by f*d/tz px in the image.
SMPL_MEAN_PELVIS = np.array([-0.0018, -0.2233, 0.0282])
EXT_SCALE = 0.001
BACKGROUND_MODES = ("median", "white", "none")
FOCAL_MODES = ("diagonal", "spin")
FOCAL_SOURCES = {"diagonal": "the frame's diagonal", "spin": "SPIN's crop focal"}


def crop_camera_to_full(
    cameras: np.ndarray, bboxes: np.ndarray, center: np.ndarray, focal: float | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """SPIN's weak-perspective crop camera -> a full-frame perspective camera (VIBE's conversion).

    Args:
        cameras: ``[N, 3]`` (s, tx, ty); bboxes: ``[N, 3]`` (cx, cy, side) px of the crop in the frame;
        center: principal point ``[2]`` or ``[N, 2]`` px (``from-spin``: the frame's centre); focal: optional
        known focal px (one, or ``[N]``).
    Returns:
        focals ``[N]`` px, translations ``[N, 3]`` m: SMPL model frame -> OpenCV camera, ``X_cam = X + t``.
    """
    s, tx, ty = cameras[:, 0], cameras[:, 1], cameras[:, 2]
    cx, cy, side = bboxes[:, 0], bboxes[:, 1], bboxes[:, 2]
    focals = side / SPIN_CROP * SPIN_FOCAL
    tz = 2 * SPIN_FOCAL / (SPIN_CROP * s)
    # The crop maps normalised [-1, 1] to side pixels around (cx, cy): a shift of the box centre from the
    # principal point is a body shift of 2 * offset / (s * side) metres.
    px, py = np.broadcast_to(center, (len(cameras), 2)).T
    t = np.stack([tx + 2 * (cx - px) / (s * side), ty + 2 * (cy - py) / (s * side), tz], axis=-1)
    if focal is not None:
        t[:, 2] *= focal / focals  # keep f / tz, i.e. the person's image size, at the new focal
        focals = np.broadcast_to(focal, focals.shape).astype(np.float64)
    return focals, t


def spin_c2ws(translations: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world ``[N, 4, 4]`` for world = SMPL model frame: camera at ``-t``, OpenCV axes
    flipped to OpenGL (y up, looking down -z)."""
    c2w = np.tile(np.eye(4), (len(translations), 1, 1))
    c2w[:, :3, :3] = OPENCV_TO_OPENGL
    c2w[:, :3, 3] = -translations
    return c2w


def smpl_rest_joints(smpl_path: str | os.PathLike, betas: np.ndarray) -> np.ndarray:
    """SMPL rest joints ``[N, 24, 3]`` (metres, model frame, zero pose) for ``betas [N, B]``, via ``smplx``.

    ``smpl_path`` is an SMPL ``.pkl`` or a folder holding ``SMPL_NEUTRAL.pkl``. At zero pose LBS leaves the
    joints at ``J_regressor @ (v_template + shapedirs @ betas)``, which is all this needs.
    """
    try:
        import smplx
        from smplx.lbs import blend_shapes, vertices2joints
    except ImportError:
        raise UserError("--smpl needs the smplx package: pip install smplx (or drop --smpl to use the built-in "
                        "mean rest skeleton)") from None  # fmt: skip
    path = Path(smpl_path)
    model_file = path / "SMPL_NEUTRAL.pkl" if path.is_dir() else path
    if not model_file.is_file():
        raise DataError(f"{model_file}: SMPL model file not found — pass SMPL_NEUTRAL.pkl (or its folder) to --smpl")
    try:
        model = smplx.SMPL(str(model_file), gender="neutral", num_betas=betas.shape[1])
    except Exception as e:  # pickle/chumpy/shape problems inside a third-party loader: report them in one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{model_file}: cannot load the SMPL model ({type(e).__name__}: {msg}) — pass an SMPL .pkl "
                        "(a chumpy-free copy if chumpy is not installed)") from None  # fmt: skip
    with torch.no_grad():
        nb = min(betas.shape[1], model.shapedirs.shape[-1])
        b = torch.as_tensor(betas[:, :nb], dtype=model.v_template.dtype)
        v_shaped = model.v_template + blend_shapes(b, model.shapedirs[..., :nb])
        joints = vertices2joints(model.J_regressor, v_shaped)[:, :24]
    if joints.shape[1] != 24:
        raise DataError(f"{model_file}: the model has {joints.shape[1]} joints — expected SMPL's 24")
    return joints.double().numpy()


def _same_or_inside(path: Path, other: Path) -> bool:
    """Whether ``path`` is ``other`` or lies inside the folder ``other`` (symlinks resolved)."""
    path, other = path.resolve(), other.resolve()
    return path == other or other in path.parents


def check_mask_coverage(fg: np.ndarray, names: list[str], source) -> None:
    """Masks ``fg [n, H, W]`` bool must show the person: all empty is an error (a black folder, the wrong
    channel), some empty frames a warning (training refuses images without foreground pixels)."""
    empty = np.flatnonzero(~fg.reshape(len(fg), -1).any(1))
    if len(empty) == len(fg):
        raise DataError(f"{source}: every mask is empty (no pixel >= {MASK_THRESHOLD} on 0-255, nor an alpha "
                        "channel) — pass masks where the person is the bright part")  # fmt: skip
    if len(empty):
        print(f"warning: {len(empty)} of {len(fg)} masks are empty (first: {names[empty[0]]}); training refuses "
              "those images — drop them with `fast-anerf data subset` or fix the masks", file=sys.stderr)  # fmt: skip


def convert_spin(
    spin_path: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    masks: str | os.PathLike | None = None,
    smpl: str | os.PathLike | None = None,
    focal: float | str | None = None,
    bbox_scale: float = 1.0,
    background: str = "median",
    overwrite: bool = False,
) -> dict:
    """Convert SPIN output + frames + masks into an A-NeRF ``.h5`` at ``out`` (module docstring).

    Everything is read and validated before anything is written; the write is atomic. Returns a summary dict
    (``frames, height, width``, ``focal`` px and ``camera_distance`` m (min, max), the ``focal_source``,
    ``rest_pose`` and ``pelvis`` sources, ``background``). ``focal``: px or ``FOCAL_MODES``, or None (the file's
    ``focal``, else "diagonal"); ``background``: ``BACKGROUND_MODES``.
    """
    from fast_anerf.data.synthetic import builtin_rest_pose, pose_arrays

    spin_path, out = Path(spin_path), Path(out)
    if isinstance(focal, str) and focal not in FOCAL_MODES:
        raise UserError(f"--focal {focal}: expected a focal length in pixels or one of {FOCAL_MODES}")
    if focal is not None and not isinstance(focal, str) and not (np.isfinite(focal) and focal > 0):
        raise UserError(f"--focal is {focal}; expected a focal length > 0 in pixels (or leave it out)")
    if not (np.isfinite(bbox_scale) and bbox_scale > 0):
        raise UserError(f"--bbox-scale is {bbox_scale}; expected a factor > 0 (1 = the boxes as stored)")
    if out.is_dir():
        raise UserError(f"{out}: is a directory — pass the path of the .h5 file to write")
    for given, what in ((spin_path, "the SPIN .npz"), (Path(images), "--images"), (masks, "--masks")):
        if given is not None and Path(given).exists() and _same_or_inside(out, Path(given)):
            raise UserError(f"{out}: is {what} (or inside it) — pass another --out for the .h5")
    refuse_to_replace(out, overwrite)
    if background not in BACKGROUND_MODES:
        raise UserError(f"--background {background}: expected one of {BACKGROUND_MODES}")
    spin = load_spin_npz(spin_path)
    n = spin.n
    imgs, img_paths = read_frames(Path(images), "frames", spin.frame_ids, n, as_rgb)  # [n, h, w, 3] uint8
    h, w = imgs.shape[1:3]
    if masks is not None:

        def mask_of_frame(mask: np.ndarray, name: str) -> np.ndarray:
            if np.shape(mask)[:2] != (h, w):
                raise DataError(f"{name}: mask of shape {np.shape(mask)[:2]}, frames are {h}x{w} — masks must "
                                "match frames")  # fmt: skip
            return binarize_mask(mask)

        fg, mask_names = read_frames(Path(masks), "masks", spin.frame_ids, n, mask_of_frame)
    elif spin.masks is not None:
        fg, mask_names = spin.masks, [f"{spin_path} key 'masks' [{i}]" for i in range(n)]
        if fg.shape[1:] != (h, w):
            raise bad_key(spin_path, "masks", f"has shape {fg.shape}, frames are {h}x{w}", "masks must match frames")
    else:
        raise DataError(f"{spin_path}: no masks — pass --masks (a folder or video of 0-255 masks) or add key 'masks'")

    if smpl is not None:
        rest_all = smpl_rest_joints(smpl, spin.betas)  # [N, 24, 3]
        rest = (rest_all - rest_all[:, :1]).mean(0)
        pelvis, rest_source, pelvis_source = rest_all[:, 0], f"SMPL ({smpl})", "SMPL J_0(betas)"
    else:
        rest = builtin_rest_pose().astype(np.float64)
        pelvis, rest_source, pelvis_source = np.tile(SMPL_MEAN_PELVIS, (n, 1)), "built-in mean", "SMPL mean pelvis"
    if spin.pelvis is not None:
        pelvis, pelvis_source = spin.pelvis, "pred_joints"

    if focal is None:
        focal = "file" if spin.focals is not None else "diagonal"
    known = {"diagonal": float(np.hypot(w, h)), "spin": None, "file": spin.focals}.get(focal, focal)
    if spin.cameras is not None:
        boxes = spin.bboxes.copy()
        boxes[:, 2] *= bbox_scale
        focals, trans = crop_camera_to_full(spin.cameras, boxes, np.array([w / 2, h / 2]), known)
    elif known is None:
        raise UserError(f"--focal spin: {spin_path} has no SPIN crop camera (pred_camera) to take it from — pass "
                        "a focal length in px or leave --focal out")  # fmt: skip
    else:  # to-spin's full-frame camera; another focal moves it along its axis (the person keeps its size)
        focals = np.broadcast_to(np.asarray(known, np.float64), (n,)).copy()
        trans = spin.transl.copy()
        trans[:, 2] *= focals / spin.focals
    c2ws = spin_c2ws(trans)
    bones = matrix_to_axis_angle(torch.as_tensor(spin.rotmats)).numpy()
    poses = pose_arrays(rest.astype(np.float32), bones, pelvis)
    check_mask_coverage(fg, mask_names, masks if masks is not None else spin_path)
    if fg.mean() > 0.5:  # a person rarely fills half of every frame: white-background masks, say
        print(f"warning: the masks cover {fg.mean():.0%} of the frames — are they inverted? (the person must be "
              f"the bright part: value >= {MASK_THRESHOLD} on 0-255)", file=sys.stderr)  # fmt: skip
    sampling = dilate_mask(fg)
    backgrounds = {}
    if background == "median":
        backgrounds = {"bkgds": static_background(imgs, sampling)[None], "bkgd_idxs": np.zeros(n, np.int64)}
    elif background == "white":
        np.copyto(imgs, np.uint8(255), where=~fg[..., None])  # in place: no second copy, no index arrays
    data = {
        "imgs": imgs,
        "masks": fg,
        "sampling_masks": sampling,
        **backgrounds,
        "img_shape": np.array([n, h, w, 3]),
        **poses,
        "cyls": bounding_cylinder(poses["kp3d"]),
        "c2ws": c2ws.astype(np.float32),
        "focals": focals.astype(np.float32),
        "centers": np.tile(np.array([w / 2, h / 2], np.float32), (n, 1)),
        "rest_pose": rest.astype(np.float32),
        "betas": spin.betas.astype(np.float32),
        "ext_scale": np.float32(EXT_SCALE),
        "pose_scale": np.float32(1.0),
        "img_paths": np.array(img_paths),
        "kp_idxs": spin.frame_ids if spin.frame_ids is not None else np.arange(n),
    }
    write_anerf_h5(out, data)
    dist = np.linalg.norm(trans + pelvis, axis=-1)  # camera to pelvis
    return {
        "out": str(out),
        "background": background,
        "frames": n,
        "height": h,
        "width": w,
        "focal": (float(focals.min()), float(focals.max())),
        "focal_source": FOCAL_SOURCES.get(focal, f"{spin_path.name}'s focal" if focal == "file" else "--focal"),
        "camera_distance": (float(dist.min()), float(dist.max())),
        "rest_pose": rest_source,
        "pelvis": pelvis_source,
    }
