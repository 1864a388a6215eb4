"""Built-in motions for the synthetic character, procedurally generated and deterministic.

Every motion is a function ``motion(n_frames) -> (bones [T, 24, 3], roots [T, 3])``:

* ``bones``: SMPL-24 local rotations, axis-angle in radians, relative to the parent joint
  (``bones[:, 0]`` = global orientation), in the **canonical SMPL frame**: y up, the person faces +z,
  the person's left is +x.
* ``roots``: pelvis position in metres in the same frame, relative to the standing rest pelvis
  (``0`` = standing upright at the origin).

Sign conventions that follow from that frame (checked by tests): knee flexion is a positive rotation about
x (the ankle moves to -z, backward); hip flexion is negative about x (the knee moves to +z, forward);
the left arm is lowered by a negative rotation about z, the right arm by a positive one.

Every motion starts and ends near the relaxed pose (arms hanging, legs straight, facing +z), so motions can
be concatenated without jumps (``turn`` ends rotated by a full turn, i.e. at the same orientation).
``walk``, ``arm_raise``, ``turn`` and ``squat`` make up the built-in training sequence;
``jumping_jacks`` and ``wave`` are kept for unseen-pose tests.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fast_anerf.skeleton import axis_angle_to_matrix, matrix_to_axis_angle

# Joint ids (SMPL-24 order, fast_anerf.skeleton.SMPL_JOINT_NAMES).
PELVIS, L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE, SPINE3 = range(10)
NECK, HEAD, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW = 12, 15, 16, 17, 18, 19

ARM_DOWN = 1.25  # rad about z from the T-pose: arms hang ~18 degrees away from the body
THIGH, SHIN = 0.38, 0.40  # m, the built-in character's leg segments; used to keep the feet on the floor
LEG = THIGH + SHIN

Motion = Callable[[int], tuple[np.ndarray, np.ndarray]]


def _axis(angle: np.ndarray, axis: int) -> np.ndarray:
    """Rotation about one canonical axis: ``angle [T]`` (rad) -> axis-angle ``[T, 3]``."""
    out = np.zeros((*np.shape(angle), 3))
    out[..., axis] = angle
    return out


def _compose(*rotvecs: np.ndarray) -> np.ndarray:
    """Axis-angle product ``R_1 @ R_2 @ ...`` (``[T, 3]`` each): the last is applied first."""
    mats = [axis_angle_to_matrix(torch.as_tensor(r, dtype=torch.float64)) for r in rotvecs]
    out = mats[0]
    for m in mats[1:]:
        out = out @ m
    return matrix_to_axis_angle(out).numpy()


def _time(n_frames: int) -> np.ndarray:
    """Normalised time ``[T]`` in [0, 1] (a single frame sits at 0)."""
    if n_frames < 1:
        raise ValueError(f"a motion needs n_frames >= 1, got {n_frames}")
    return np.linspace(0.0, 1.0, n_frames) if n_frames > 1 else np.zeros(1)


def _envelope(t: np.ndarray, ramp: float = 0.2) -> np.ndarray:
    """0 at both ends, 1 in the middle, smooth (cosine ramps of length ``ramp``): fades a cyclic motion
    in and out so that it starts and ends at the relaxed pose."""
    up = np.clip(t / ramp, 0, 1)
    down = np.clip((1 - t) / ramp, 0, 1)
    return (0.5 - 0.5 * np.cos(np.pi * up)) * (0.5 - 0.5 * np.cos(np.pi * down))


def _bump(t: np.ndarray, start: float, end: float) -> np.ndarray:
    """Smooth 0 -> 1 -> 0 over ``[start, end]`` (one cosine period), 0 outside."""
    x = np.clip((t - start) / (end - start), 0, 1)
    return 0.5 - 0.5 * np.cos(2 * np.pi * x)


def relaxed_pose(n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Standing, arms hanging at the sides with slightly bent elbows. ``([T, 24, 3], [T, 3])``."""
    bones = np.zeros((n_frames, 24, 3))
    bones[:, L_SHOULDER, 2] = -ARM_DOWN
    bones[:, R_SHOULDER, 2] = ARM_DOWN
    bones[:, L_ELBOW, 1] = -0.15  # elbow flexion brings the forearm forward (+z)
    bones[:, R_ELBOW, 1] = 0.15
    return bones, np.zeros((n_frames, 3))


def _arms(bones: np.ndarray, left_swing: np.ndarray, right_swing: np.ndarray) -> None:
    """Swing hanging arms about the world x axis (positive = hand backward), in place."""
    t = len(bones)
    bones[:, L_SHOULDER] = _compose(_axis(left_swing, 0), _axis(np.full(t, -ARM_DOWN), 2))
    bones[:, R_SHOULDER] = _compose(_axis(right_swing, 0), _axis(np.full(t, ARM_DOWN), 2))


def walk(n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Walking in place (treadmill-like): legs and arms swing in opposition, pelvis bobs; 2 strides."""
    t = _time(n_frames)
    env = _envelope(t)
    phase = 2 * np.pi * 2 * t
    bones, roots = relaxed_pose(n_frames)
    for hip, knee, ankle, sign in ((L_HIP, L_KNEE, L_ANKLE, 1), (R_HIP, R_KNEE, R_ANKLE, -1)):
        swing = sign * np.sin(phase)  # > 0: this leg is in front
        forward_speed = sign * np.cos(phase)  # > 0: swing phase, the knee folds to clear the floor
        bones[:, hip, 0] = -0.45 * swing * env
        bones[:, knee, 0] = (0.08 + 0.75 * np.clip(forward_speed, 0, None) ** 1.5) * env
        bones[:, ankle, 0] = 0.12 * swing * env
    _arms(bones, 0.35 * np.sin(phase) * env, -0.35 * np.sin(phase) * env)
    bones[:, L_ELBOW, 1] -= 0.25 * np.clip(-np.sin(phase), 0, None) * env  # forward arm bends more
    bones[:, R_ELBOW, 1] += 0.25 * np.clip(np.sin(phase), 0, None) * env
    bones[:, SPINE2, 1] = 0.08 * np.sin(phase) * env  # torso counter-rotation
    roots[:, 1] = -0.025 * (0.5 - 0.5 * np.cos(2 * phase)) * env
    return bones, roots


def arm_raise(n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Lateral arm raises: left arm, then right arm, then both, up to nearly vertical."""
    t = _time(n_frames)
    bones, roots = relaxed_pose(n_frames)
    left = _bump(t, 0.0, 1 / 3) + _bump(t, 2 / 3, 1.0)  # both arms in the last third
    right = _bump(t, 1 / 3, 2 / 3) + _bump(t, 2 / 3, 1.0)
    lift = ARM_DOWN + 1.5  # from hanging to well above the shoulders
    bones[:, L_SHOULDER, 2] = -ARM_DOWN + lift * left
    bones[:, R_SHOULDER, 2] = ARM_DOWN - lift * right
    bones[:, L_ELBOW, 1] *= 1 - left  # straight arm while raised
    bones[:, R_ELBOW, 1] *= 1 - right
    bones[:, SPINE3, 2] = 0.06 * (left - right)  # lean slightly away from the raised arm
    return bones, roots


def turn(n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A full turn in place about the vertical axis, with small stepping legs."""
    t = _time(n_frames)
    env = _envelope(t)
    bones, roots = relaxed_pose(n_frames)
    yaw = 2 * np.pi * (t - np.sin(2 * np.pi * t) / (2 * np.pi))  # smooth start and stop
    bones[:, PELVIS] = _compose(_axis(yaw, 1))  # wrapped to angles in [0, pi]
    phase = 2 * np.pi * 4 * t
    for hip, knee, ankle, sign in ((L_HIP, L_KNEE, L_ANKLE, 1), (R_HIP, R_KNEE, R_ANKLE, -1)):
        lift = np.clip(sign * np.sin(phase), 0, None) * env
        bones[:, hip, 0] = -0.35 * lift
        bones[:, knee, 0] = 0.6 * lift
        bones[:, ankle, 0] = -0.1 * lift
    bones[:, HEAD, 1] = 0.15 * np.sin(2 * np.pi * t)  # the head leads the turn
    return bones, roots


def squat(n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Two squats, feet flat on the floor, arms reaching forward for balance."""
    t = _time(n_frames)
    depth = _bump(t, 0.0, 0.5) + _bump(t, 0.5, 1.0)  # 0 standing .. 1 deepest
    knee = 1.8 * depth
    hip = -0.75 * knee  # thigh forward (flexion is negative about x)
    shin = hip + knee  # shin tilt from vertical (> 0: knee over the toes)
    bones, roots = relaxed_pose(n_frames)
    for h, k, a in ((L_HIP, L_KNEE, L_ANKLE), (R_HIP, R_KNEE, R_ANKLE)):
        bones[:, h, 0] = hip
        bones[:, k, 0] = knee
        bones[:, a, 0] = -shin  # hip + knee + ankle = 0 keeps the foot flat
    bones[:, SPINE1, 0] = 0.35 * depth  # torso leans forward
    bones[:, NECK, 0] = -0.2 * depth  # eyes stay on the horizon
    _arms(bones, -1.4 * depth, -1.4 * depth)  # arms forward
    # Keep the ankles fixed: the pelvis drops and moves back by the leg's geometry.
    roots[:, 1] = -(THIGH * (1 - np.cos(hip)) + SHIN * (1 - np.cos(shin)))
    roots[:, 2] = -(THIGH * np.sin(-hip) - SHIN * np.sin(shin))
    return bones, roots


def jumping_jacks(n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Three jumping jacks: arms from the sides to overhead, legs apart, small hops."""
    t = _time(n_frames)
    phase = 2 * np.pi * 3 * t
    open_ = 0.5 - 0.5 * np.cos(phase)  # 0 closed, 1 open
    bones, roots = relaxed_pose(n_frames)
    lift = ARM_DOWN + 1.5
    bones[:, L_SHOULDER, 2] = -ARM_DOWN + lift * open_
    bones[:, R_SHOULDER, 2] = ARM_DOWN - lift * open_
    bones[:, L_ELBOW, 1] *= 1 - open_
    bones[:, R_ELBOW, 1] *= 1 - open_
    spread = 0.3 * open_
    bones[:, L_HIP, 2] = spread  # abduction: the left leg moves to +x
    bones[:, R_HIP, 2] = -spread
    bones[:, L_ANKLE, 2] = -spread  # feet stay parallel to the floor
    bones[:, R_ANKLE, 2] = spread
    bend = 0.25 * np.sin(phase / 2) ** 2 * (1 - open_)  # knees absorb the landing when closing
    for h, k, a in ((L_HIP, L_KNEE, L_ANKLE), (R_HIP, R_KNEE, R_ANKLE)):
        bones[:, h, 0] = -0.5 * bend
        bones[:, k, 0] = bend
        bones[:, a, 0] = -0.5 * bend
    hop = 0.06 * np.sin(phase) ** 2  # airborne between the open and closed stances
    roots[:, 1] = hop - LEG * (1 - np.cos(spread)) - 0.1 * bend
    return bones, roots


def wave(n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Right arm raised to the side, forearm up, waving the hand side to side; then lowered."""
    t = _time(n_frames)
    up = np.clip(t / 0.2, 0, 1) * np.clip((1 - t) / 0.2, 0, 1)
    up = 0.5 - 0.5 * np.cos(np.pi * up)  # smooth raise and lower
    bones, roots = relaxed_pose(n_frames)
    bones[:, R_SHOULDER] = _compose(_axis(0.3 * up, 1), _axis(ARM_DOWN - (ARM_DOWN + 0.15) * up, 2))
    swing = 0.35 * np.sin(2 * np.pi * 4 * t) * up
    bones[:, R_ELBOW] = _compose(_axis(-(1.6 + swing) * up, 2), _axis(0.15 * (1 - up), 1))
    bones[:, HEAD, 1] = -0.2 * up  # look at the waving hand
    bones[:, SPINE3, 2] = 0.05 * up
    return bones, roots


MOTIONS: dict[str, Motion] = {
    "walk": walk,
    "arm_raise": arm_raise,
    "turn": turn,
    "squat": squat,
    "jumping_jacks": jumping_jacks,
    "wave": wave,
}
TRAIN_MOTIONS = ("walk", "arm_raise", "turn", "squat")
UNSEEN_MOTIONS = ("jumping_jacks", "wave")


def list_motions() -> list[str]:
    """Names of the built-in motions."""
    return list(MOTIONS)


def concatenate(names: tuple[str, ...] | list[str], frames_each: int) -> tuple[np.ndarray, np.ndarray]:
    """Motions played one after the other, ``frames_each`` frames each: ``([T, 24, 3], [T, 3])``."""
    parts = [MOTIONS[n](frames_each) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
