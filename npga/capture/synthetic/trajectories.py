"""NeRSemble-like expression sequences for SynthHead.

NeRSemble films each participant through named sequences (EXP-1-head ... FREE).
:func:`sequence_trajectory` gives each name a smooth path through expression
space, built from keyframes that are interpolated with a shape-preserving cubic
(PCHIP: smooth, and it never overshoots the keyframes, so values stay in range).
Keyframes sit at fixed fractions of the sequence, so a sequence with fewer
frames is a subsampled version of the same motion.

The untracked effects (gaze, tongue, head rotation) are mixed into every sequence
with per-sequence amplitudes; the tongue only comes out while the jaw is open.

Unknown names raise ``ValueError`` (listing the known names and patterns): a typo
should not silently produce a different capture.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
from scipy.interpolate import PchipInterpolator

from npga.capture.synthetic.head import (
    EXPRESSION_NAMES,
    UNTRACKED_NAMES,
    UNTRACKED_RANGES,
    clip_expression,
    sample_expression,
)

_E = {n: i for i, n in enumerate(EXPRESSION_NAMES)}
_U = {n: i for i, n in enumerate(UNTRACKED_NAMES)}


def _grp(*items: str) -> list[tuple[str, float, float]]:
    """``"smile:0.5:1"`` -> ("smile", 0.5, 1.0); a bare name means its full positive range."""
    out = []
    for it in items:
        parts = it.split(":")
        name = parts[0]
        lo, hi = (float(parts[1]), float(parts[2])) if len(parts) == 3 else (0.6, 1.0)
        out.append((name, lo, hi))
    return out


EMOTIONS = {
    "happy": {"smile": 0.9, "squint": 0.5, "jaw_open": 0.2},
    "sad": {"frown": 0.8, "brow_frown": 0.4, "squint": 0.1},
    "surprise": {"brow_raise": 1.0, "jaw_open": 0.55, "funnel": 0.35},
    "anger": {"brow_frown": 1.0, "nose_wrinkle": 0.5, "lip_stretch": 0.35, "squint": 0.4},
    "disgust": {"nose_wrinkle": 1.0, "frown": 0.4, "squint": 0.5, "brow_frown": 0.3},
    "fear": {"brow_raise": 0.7, "brow_frown": 0.4, "lip_stretch": 0.6, "jaw_open": 0.2},
}
_EMO_ORDER = ("happy", "sad", "surprise", "anger", "disgust", "fear")

# name -> (groups of keyframe actions, number of keyframes, head, gaze, tongue amplitudes)
_SPECS: dict[str, dict] = {
    "EXP-1-head": dict(groups=[[]], keys=7, head=1.0, gaze=0.3, tongue=0.0),
    "EXP-2-eyes": dict(
        groups=[_grp("blink_l:0.9:1", "blink_r:0.9:1"), _grp("squint"), _grp("brow_raise"),
                _grp("brow_frown"), _grp("blink_l:0.8:1"), _grp("blink_r:0.8:1")],
        keys=8, head=0.12, gaze=1.0, tongue=0.0),
    "EXP-3-cheeks+nose": dict(
        groups=[_grp("cheek_puff"), _grp("nose_wrinkle"), _grp("cheek_puff:0.4:0.8", "squint:0.2:0.5"),
                _grp("nose_wrinkle", "squint:0.3:0.6", "brow_frown:0.2:0.5")],
        keys=7, head=0.12, gaze=0.3, tongue=0.0),
    "EXP-4-lips": dict(
        groups=[_grp("smile"), _grp("frown"), _grp("pucker"), _grp("funnel"), _grp("lip_stretch"),
                _grp("smile:0.4:0.8", "lip_stretch:0.3:0.7")],
        keys=8, head=0.12, gaze=0.3, tongue=0.0),
    "EXP-5-mouth": dict(
        groups=[_grp("jaw_open:0.4:0.8", "funnel"), _grp("jaw_open:0.3:0.7", "lip_stretch"),
                _grp("pucker", "cheek_puff:0.3:0.7"), _grp("jaw_open:0.5:1", "smile:0.4:0.8"),
                _grp("jaw_side:-1:1", "jaw_open:0.2:0.5")],
        keys=8, head=0.15, gaze=0.3, tongue=0.5),
    "EXP-6-tongue-1": dict(groups=[_grp("jaw_open:0.6:1")], keys=7, head=0.12, gaze=0.2, tongue=1.0),
    "EXP-7-tongue-2": dict(groups=[_grp("jaw_open:0.5:0.9", "funnel:0.0:0.4")], keys=8, head=0.12,
                           gaze=0.2, tongue=1.0),
    "EXP-8-jaw-1": dict(
        groups=[_grp("jaw_open"), _grp("jaw_open:0.2:0.5", "jaw_side:-1:1"), _grp("jaw_side:-1:1"),
                _grp("jaw_open:0.8:1")],
        keys=7, head=0.12, gaze=0.3, tongue=0.0),
    "EXP-9-jaw-2": dict(
        groups=[_grp("jaw_side:-1:1"), _grp("jaw_open:0.4:0.9", "jaw_side:-1:1"),
                _grp("jaw_open:0.5:1", "funnel:0.3:0.7")],
        keys=7, head=0.12, gaze=0.3, tongue=0.3),
    "HAIR": dict(groups=[[]], keys=7, head=1.0, gaze=0.2, tongue=0.0),
}
_SEN_GROUPS = [
    _grp("jaw_open:0.1:0.4"),
    _grp("jaw_open:0.1:0.3", "pucker:0.3:0.7"),
    _grp("jaw_open:0.2:0.5", "lip_stretch:0.2:0.5"),
    _grp("funnel:0.3:0.7", "jaw_open:0.2:0.4"),
    _grp("smile:0.1:0.4", "jaw_open:0.1:0.3"),
    _grp("brow_raise:0.2:0.6", "jaw_open:0.1:0.3"),
]

SEQUENCE_KINDS: dict[str, str] = {
    **{name: "named NeRSemble sequence" for name in _SPECS},
    "EMO-<n>": "emotion ramps (1 happy, 2 sad, 3 surprise, 4 anger, 5 disgust, 6 fear, then cycling)",
    "SEN-<nn>": "speech: fast small jaw motion and lip shapes, a different sentence per number",
    "FREE": "free mix of every expression and untracked effect (the held-out sequence)",
}


def _spec(name: str) -> dict:
    if name in _SPECS:
        return _SPECS[name]
    m = re.fullmatch(r"EMO-(\d+)", name)
    if m:
        k = int(m.group(1))
        a = EMOTIONS[_EMO_ORDER[(k - 1) % len(_EMO_ORDER)]]
        b = EMOTIONS[_EMO_ORDER[k % len(_EMO_ORDER)]]
        grp_a = [(n, 0.6 * v, v) for n, v in a.items()]
        grp_b = [(n, 0.3 * v, 0.6 * v) for n, v in b.items()]
        return dict(groups=[grp_a, grp_a, grp_b, grp_a], keys=7, head=0.2, gaze=0.3, tongue=0.0,
                    ordered=True)
    if re.fullmatch(r"SEN-(\d+)", name):
        return dict(groups=_SEN_GROUPS, keys=14, head=0.25, gaze=0.3, tongue=0.0, background=0.08)
    if name == "FREE":
        return dict(free=True, keys=10, head=0.5, gaze=0.6, tongue=0.4)
    raise ValueError(
        f"unknown sequence name {name!r}: expected one of {sorted(_SPECS)}, 'EMO-<n>', 'SEN-<nn>' or 'FREE'"
    )


def sequence_trajectory(name: str, n_frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Expression and untracked codes of sequence ``name`` with ``n_frames`` frames.

    Returns z_exp (T, E) float32 (:data:`EXPRESSION_NAMES`) and untracked (T, U)
    float32 (:data:`UNTRACKED_NAMES`), both within their ranges and deterministic
    per ``(name, n_frames, seed)``. The first keyframe is close to neutral, as
    NeRSemble's sequences start from a neutral face.
    """
    if int(n_frames) != n_frames or n_frames < 1:
        raise ValueError(f"n_frames must be a positive integer, got {n_frames!r}")
    n_frames = int(n_frames)
    spec = _spec(name)
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    K = spec["keys"]
    E, U = len(EXPRESSION_NAMES), len(UNTRACKED_NAMES)
    Z = np.zeros((K, E))
    if spec.get("free"):
        for k in range(1, K):
            Z[k] = sample_expression(rng, 1.0)
    else:
        groups = spec["groups"]
        order = np.arange(len(groups)) if spec.get("ordered") else rng.permutation(len(groups))
        bg = spec.get("background", 0.04)
        for k in range(1, K):
            for pname, lo, hi in groups[order[(k - 1) % len(groups)]]:
                Z[k, _E[pname]] = rng.uniform(lo, hi)
            # a little of everything else, as no one holds a face perfectly still
            mix = rng.random(E) < 0.3
            Z[k] += np.where(mix & (Z[k] == 0), rng.uniform(0, bg, E), 0.0)
            if rng.random() < 0.15:  # an occasional natural blink
                Z[k, _E["blink_l"]] = Z[k, _E["blink_r"]] = rng.uniform(0.7, 1.0)
    Uk = np.zeros((K, U))
    ks = np.arange(1, K)
    if spec["head"]:
        alt = np.where(ks % 2 == 0, 1.0, -1.0)
        Uk[1:, _U["head_yaw"]] = spec["head"] * alt * rng.uniform(0.4, 1.0, K - 1)
        Uk[1:, _U["head_pitch"]] = spec["head"] * rng.uniform(-0.8, 0.8, K - 1)
        Uk[1:, _U["head_roll"]] = spec["head"] * rng.uniform(-0.6, 0.6, K - 1)
    if spec["gaze"]:
        Uk[1:, _U["gaze_yaw"]] = spec["gaze"] * rng.uniform(-1, 1, K - 1)
        Uk[1:, _U["gaze_pitch"]] = spec["gaze"] * rng.uniform(-0.8, 0.8, K - 1)
    if spec["tongue"]:
        Uk[1:, _U["tongue_out"]] = spec["tongue"] * rng.uniform(0.2, 1.0, K - 1)
        Uk[1:, _U["tongue_side"]] = spec["tongue"] * rng.uniform(-1, 1, K - 1)

    tk = np.linspace(0.0, 1.0, K)
    t = np.linspace(0.0, 1.0, n_frames) if n_frames > 1 else np.array([0.5])
    z = PchipInterpolator(tk, Z, axis=0)(t)
    u = PchipInterpolator(tk, Uk, axis=0)(t)
    z = clip_expression(z)
    # the tongue comes out only as far as the open jaw allows
    u[:, _U["tongue_out"]] = np.minimum(u[:, _U["tongue_out"]], 1.2 * z[:, _E["jaw_open"]])
    lo = np.array([UNTRACKED_RANGES[n][0] for n in UNTRACKED_NAMES])
    hi = np.array([UNTRACKED_RANGES[n][1] for n in UNTRACKED_NAMES])
    u = np.clip(u, lo, hi)
    return z.astype(np.float32), u.astype(np.float32)


__all__ = ["EMOTIONS", "SEQUENCE_KINDS", "sequence_trajectory"]
