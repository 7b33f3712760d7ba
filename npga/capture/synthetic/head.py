"""SynthHead: a procedural head with fixed topology, identities and expressions.

Why a procedural head: NeRSemble, FLAME and NPHM are gated, yet every chapter needs a
multi-view capture with known ground truth. SynthHead is built so that the ideas
of NPGA make a visible difference on it:

* **Fixed topology** (as FLAME's): every identity and expression at one
  ``resolution`` has the same vertices and triangles, so registered meshes exist
  for fitting a 3DMM or a neural head model.
* **Parts**: skin (face, skull and neck as one surface with a slit mouth), hair
  cap, two eyeballs (sclera / iris / pupil live in the texture), eyelids that slide
  over the eyeballs, ears, upper and lower teeth, tongue and a mouth cavity that
  shows when the jaw opens (:data:`PART_NAMES`).
* **Non-linear expressions** (:data:`EXPRESSION_NAMES`): the jaw is a rotation
  about a hinge axis applied by linear-blend skinning; lip corners, brows and
  cheeks *slide along the curved skull* (the skin is a function
  ``S(theta, phi)`` of two surface angles, and an expression moves the angles,
  not the points); eyelids rotate over the eyeball. A linear model of vertex
  offsets cannot represent this exactly (tests measure how far from linear it is).
* **Untracked effects** (:data:`UNTRACKED_NAMES`): gaze, tongue and head/neck
  rotation, kept out of the expression code ``z_exp`` exactly as NPGA's
  limitations section lists them.

Geometry in metres, +y up, face towards +z, subject's left = +x, head centre near
the origin (see :mod:`npga.capture.cameras`).

The skin surface (one grid of rows x columns):
    rows 0..Nh   head, angle theta from the crown (row 0 is a single pole vertex)
                 down to a neck boundary theta_n(phi) (under the chin in front,
                 at the nape behind);
    rows Nh+1..  neck, a tube continuing down from that boundary;
    columns      azimuth phi, denser in front (``phi = u - 0.5 sin u``).
The mouth is a slit: along the mouth row, between the two corner columns, the
faces below the row use duplicated vertices, so the lower lip can leave the upper
lip. A point of the head part of the skin is

    p = c0 + (r_bone(theta', phi') + r_soft(theta, phi) + r_exp(theta, phi; z)) * d(theta', phi')
    (theta', phi') = (theta, phi) + slide(theta, phi; z)

where (theta, phi) are the vertex's *material* angles, ``r_bone`` the skull and
cartilage shape (identity), ``r_soft`` soft tissue that travels with the skin (lips,
cheek fat), ``slide`` the expression's motion along the surface, and ``d`` the unit
direction. Then jaw and head rotations are blended in (linear-blend skinning).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import numpy as np

from npga.capture.cameras import Camera

# ----------------------------------------------------------------------------- names

EXPRESSION_NAMES: tuple[str, ...] = (
    "jaw_open",
    "jaw_side",
    "smile",
    "frown",
    "lip_stretch",
    "pucker",
    "funnel",
    "cheek_puff",
    "brow_raise",
    "brow_frown",
    "blink_l",
    "blink_r",
    "squint",
    "nose_wrinkle",
)
# Valid range of each expression parameter (0 = neutral).
EXPRESSION_RANGES: dict[str, tuple[float, float]] = {
    name: ((-1.0, 1.0) if name == "jaw_side" else (0.0, 1.0)) for name in EXPRESSION_NAMES
}

UNTRACKED_NAMES: tuple[str, ...] = (
    "gaze_yaw",
    "gaze_pitch",
    "tongue_out",
    "tongue_side",
    "head_yaw",
    "head_pitch",
    "head_roll",
)
UNTRACKED_RANGES: dict[str, tuple[float, float]] = {
    name: ((0.0, 1.0) if name == "tongue_out" else (-1.0, 1.0)) for name in UNTRACKED_NAMES
}

PART_NAMES: tuple[str, ...] = (
    "skin",
    "hair",
    "eye_l",
    "eye_r",
    "eyelid_l",
    "eyelid_r",
    "ear_l",
    "ear_r",
    "teeth_upper",
    "teeth_lower",
    "tongue",
    "mouth_cavity",
)
PART = {name: i for i, name in enumerate(PART_NAMES)}
MOUTH_PARTS = ("teeth_upper", "teeth_lower", "tongue", "mouth_cavity")  # the mouth interior
# Closed, outward-facing parts are back-face culled; the rest is two-sided.
CULLED_PARTS = ("skin", "hair", "eye_l", "eye_r", "eyelid_l", "eyelid_r", "tongue")

# Angles of the motions at parameter value 1 (radians).
JAW_OPEN_MAX = 0.42
JAW_SIDE_MAX = 0.12
GAZE_YAW_MAX = 0.45
GAZE_PITCH_MAX = 0.35
TONGUE_SIDE_MAX = 0.25
HEAD_YAW_MAX = 0.45
HEAD_PITCH_MAX = 0.30
HEAD_ROLL_MAX = 0.20

HEAD_CENTRE = np.array([0.0, 0.005, -0.005])
JAW_PIVOT = np.array([0.0, -0.012, -0.010])  # hinge just in front of the ears
JAW_GLIDE = np.array([0.0, -0.003, 0.010])  # the condyles slide forward as the jaw opens
NECK_PIVOT = np.array([0.0, -0.11, -0.02])

_E = {name: i for i, name in enumerate(EXPRESSION_NAMES)}
_U = {name: i for i, name in enumerate(UNTRACKED_NAMES)}

# ----------------------------------------------------------------------------- small math


def _smoothstep(e0: float, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _g(x):
    return np.exp(-np.square(x))


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _look_rotation(yaw: float, pitch: float) -> np.ndarray:
    """Rotation turning +z towards +x by ``yaw`` and towards +y by ``pitch``."""
    return _rot_y(yaw) @ _rot_x(-pitch)


def _dirs(theta, phi) -> np.ndarray:
    st = np.sin(theta)
    return np.stack([st * np.sin(phi), np.cos(theta), st * np.cos(phi)], -1)


def _blend_rigid(p: np.ndarray, w: np.ndarray, R: np.ndarray, pivot: np.ndarray, shift=0.0) -> np.ndarray:
    """Linear-blend skinning with one bone: p + w * (R (p - pivot) + pivot + shift - p)."""
    moved = (p - pivot) @ R.T + pivot + shift
    return p + w[:, None] * (moved - p)


def _head_rotation(u: np.ndarray) -> np.ndarray:
    """(3, 3) rotation of the head about the neck pivot for untracked code ``u``."""
    return (
        _look_rotation(u[_U["head_yaw"]] * HEAD_YAW_MAX, u[_U["head_pitch"]] * HEAD_PITCH_MAX)
        @ _rot_z(u[_U["head_roll"]] * HEAD_ROLL_MAX)
    )


def head_pose(untracked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The rigid head pose of an untracked code: ``(R (3, 3), t (3,))``, head space to world.

    Every vertex above the neck moves as ``x_world = R x_head + t`` (a rotation about the
    neck pivot: t = pivot - R pivot), where ``x_head`` is the same vertex with the head
    rotation set to zero; the neck blends between this pose and the torso (it is outside
    the head model, as in NPGA). This is the per-frame head pose a tracker must estimate.
    """
    u = _check_code(untracked, UNTRACKED_NAMES, "untracked")
    R = _head_rotation(u)
    return R, NECK_PIVOT - R @ NECK_PIVOT


def _wrap(phi):
    return (phi + np.pi) % (2.0 * np.pi) - np.pi


def _phi_of_u(u):
    """Column angle -> azimuth; columns are twice as dense in front as at the back."""
    return u - 0.5 * np.sin(u)


def _theta_n(phi):
    """Polar angle of the head/neck boundary: under the chin in front, the nape behind."""
    return np.radians(141.5 + 8.0 * np.cos(phi) + 6.5 * np.cos(2.0 * phi))


def _theta_hairline(phi, recede: float):
    """Polar angle of the hairline (forehead, temples, above the ears, nape)."""
    return 1.3575 + recede - 0.635 * np.cos(phi) + 0.0575 * np.cos(2.0 * phi) - 0.06 * np.cos(3 * phi)


# ----------------------------------------------------------------------------- identity


@dataclass
class Identity:
    """Identity parameters of one participant (shape factors are 1.0 on average).

    Colours are linear RGB in [0, 1]. ``texture_seed`` seeds the procedural
    albedo detail (pores, freckles, strands, iris).
    """

    pid: int = 0
    head_width: float = 1.0
    head_height: float = 1.0
    head_depth: float = 1.0
    jaw_width: float = 1.0
    chin: float = 1.0
    cheek_fullness: float = 1.0
    cheekbones: float = 1.0
    nose_length: float = 1.0
    nose_width: float = 1.0
    nose_projection: float = 1.0
    eye_spacing: float = 1.0
    eye_height: float = 0.0  # radians, + = lower
    eye_size: float = 1.0
    brow_ridge: float = 1.0
    brow_thickness: float = 1.0
    ear_size: float = 1.0
    ear_protrusion: float = 1.0
    lip_fullness: float = 1.0
    mouth_width: float = 1.0
    neck_width: float = 1.0
    hair_volume: float = 1.0
    hairline: float = 0.0  # radians, + = receding
    freckles: float = 0.0  # 0..1
    skin_tone: tuple[float, float, float] = (0.78, 0.56, 0.45)
    lip_color: tuple[float, float, float] = (0.70, 0.33, 0.32)
    hair_color: tuple[float, float, float] = (0.18, 0.11, 0.06)
    iris_color: tuple[float, float, float] = (0.30, 0.20, 0.10)
    texture_seed: int = 0

    def to_dict(self) -> dict:
        """A JSON-able dict (tuples become lists)."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = [float(x) for x in v]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Identity":
        """Inverse of :meth:`to_dict`; unknown or malformed keys raise ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"identity must be a dict, got {type(d).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown identity parameter(s) {unknown}; expected {sorted(known)}")
        kwargs = {}
        for k, v in d.items():
            default = known[k].default
            if isinstance(default, tuple):
                arr = np.asarray(v, dtype=float).ravel()
                if arr.shape != (len(default),) or not np.all(np.isfinite(arr)):
                    raise ValueError(f"identity parameter {k!r} must be {len(default)} finite numbers, got {v!r}")
                kwargs[k] = tuple(float(x) for x in arr)
            elif isinstance(default, int) and not isinstance(default, bool):
                kwargs[k] = int(v)
            else:
                x = float(v)
                if not math.isfinite(x):
                    raise ValueError(f"identity parameter {k!r} is not finite: {v!r}")
                kwargs[k] = x
        return cls(**kwargs)


_SKIN_TONES = np.array(
    [[0.88, 0.68, 0.58], [0.80, 0.58, 0.46], [0.70, 0.48, 0.36], [0.55, 0.36, 0.25], [0.36, 0.22, 0.15]]
)
_HAIR_COLOURS = np.array(
    [[0.05, 0.04, 0.035], [0.17, 0.10, 0.05], [0.35, 0.22, 0.11], [0.62, 0.48, 0.28], [0.45, 0.17, 0.07], [0.55, 0.55, 0.55]]
)
_IRIS_COLOURS = np.array([[0.22, 0.12, 0.05], [0.38, 0.25, 0.10], [0.25, 0.40, 0.55], [0.30, 0.42, 0.25], [0.12, 0.08, 0.05]])


def sample_identity(pid: int, seed: int = 0) -> Identity:
    """A participant's identity, deterministic per ``(pid, seed)``.

    Participant 0 of seed 0 is an average face (all shape factors 1) with mild
    colours, so the book's first figures show a typical head; every other pid
    varies proportions (about +-8 %), features and colours.
    """
    if pid < 0:
        raise ValueError(f"participant id must be >= 0, got {pid}")
    rng = np.random.default_rng([int(seed), int(pid), 7919])
    if pid == 0 and seed == 0:
        return Identity(pid=0, texture_seed=int(rng.integers(2**31)))

    def f(sd: float) -> float:
        return float(np.clip(1.0 + sd * rng.standard_normal(), 1.0 - 2.5 * sd, 1.0 + 2.5 * sd))

    tone = rng.uniform(0, len(_SKIN_TONES) - 1)
    lo = int(math.floor(tone))
    hi = min(lo + 1, len(_SKIN_TONES) - 1)
    skin = (1 - (tone - lo)) * _SKIN_TONES[lo] + (tone - lo) * _SKIN_TONES[hi]
    skin = skin * rng.uniform(0.95, 1.05, 3)
    lip = skin * np.array([0.85, 0.55, 0.58]) + np.array([0.06, 0.0, 0.0])
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
    iris = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * rng.uniform(0.85, 1.15)
    return Identity(
        pid=int(pid),
        head_width=f(0.05),
        head_height=f(0.04),
        head_depth=f(0.04),
        jaw_width=f(0.10),
        chin=f(0.25),
        cheek_fullness=f(0.35),
        cheekbones=f(0.3),
        nose_length=f(0.10),
        nose_width=f(0.15),
        nose_projection=f(0.15),
        eye_spacing=f(0.05),
        eye_height=float(rng.normal(0.0, 0.025)),
        eye_size=f(0.05),
        brow_ridge=f(0.3),
        brow_thickness=f(0.3),
        ear_size=f(0.08),
        ear_protrusion=f(0.25),
        lip_fullness=f(0.2),
        mouth_width=f(0.08),
        neck_width=f(0.06),
        hair_volume=f(0.3),
        hairline=float(np.clip(rng.normal(0.0, 0.08), -0.1, 0.25)),
        freckles=float(rng.uniform(0, 1) ** 2),
        skin_tone=tuple(float(x) for x in np.clip(skin, 0, 1)),
        lip_color=tuple(float(x) for x in np.clip(lip, 0, 1)),
        hair_color=tuple(float(x) for x in np.clip(hair, 0, 1)),
        iris_color=tuple(float(x) for x in np.clip(iris, 0, 1)),
        texture_seed=int(rng.integers(2**31)),
    )


def sample_expression(rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """A random plausible expression (E,) float64 within :data:`EXPRESSION_RANGES`.

    Each parameter is active with probability 1/2 and then uniform in
    ``scale`` x its range, so samples cover single actions and mixtures; the eyes
    blink together half of the time.
    """
    E = len(EXPRESSION_NAMES)
    z = np.zeros(E)
    active = rng.random(E) < 0.5
    u = rng.random(E)
    for i, name in enumerate(EXPRESSION_NAMES):
        lo, hi = EXPRESSION_RANGES[name]
        if lo < 0:
            z[i] = (2.0 * u[i] - 1.0) * hi
        else:
            z[i] = u[i] * hi
    z = np.where(active, z * scale, 0.0)
    if rng.random() < 0.5:
        z[_E["blink_r"]] = z[_E["blink_l"]]
    return clip_expression(z)


def clip_expression(z: np.ndarray) -> np.ndarray:
    lo = np.array([EXPRESSION_RANGES[n][0] for n in EXPRESSION_NAMES])
    hi = np.array([EXPRESSION_RANGES[n][1] for n in EXPRESSION_NAMES])
    return np.clip(z, lo, hi)


def _check_code(z, names: Sequence[str], what: str) -> np.ndarray:
    if z is None:
        return np.zeros(len(names))
    arr = np.asarray(z, dtype=np.float64)
    if arr.shape != (len(names),):
        raise ValueError(f"{what} must have shape ({len(names)},) ({', '.join(names)}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or Inf: {arr}")
    return arr


# ----------------------------------------------------------------------------- topology


@dataclass
class _Topology:
    """Everything that depends on the resolution only (shared by every identity)."""

    resolution: int
    faces: np.ndarray  # (F, 3) int64
    face_group: np.ndarray  # (F,) int64, orientation group
    groups: list  # per group: (part, how to orient: "out", "in" or None)
    part_of_vertex: np.ndarray  # (V,) int64
    uv: np.ndarray  # (V, 2) texture coordinates per part
    is_pole: np.ndarray  # (V,) bool, uv u undefined
    slices: dict  # part -> slice of vertices
    dims: dict  # grid sizes per part
    oriented: bool = False
    face_uv: np.ndarray | None = None  # (F, 3, 2) seam-free uv per face corner


def _grid(idx: np.ndarray, periodic: bool) -> np.ndarray:
    """Triangles of a vertex-index grid ``idx`` (rows, cols)."""
    if periodic:
        nxt = np.roll(idx, -1, axis=1)
        a, b, c, d = idx[:-1], nxt[:-1], idx[1:], nxt[1:]
    else:
        a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    t1 = np.stack([a, c, b], -1).reshape(-1, 3)
    t2 = np.stack([b, c, d], -1).reshape(-1, 3)
    return np.concatenate([t1, t2])


def _fan(pole: int, ring: np.ndarray) -> np.ndarray:
    nxt = np.roll(ring, -1)
    return np.stack([np.full_like(ring, pole), ring, nxt], -1)


class _Builder:
    def __init__(self) -> None:
        self.n = 0
        self.parts: list[np.ndarray] = []
        self.uvs: list[np.ndarray] = []
        self.poles: list[np.ndarray] = []
        self.faces: list[np.ndarray] = []
        self.face_group: list[np.ndarray] = []
        self.groups: list = []
        self.slices: dict = {}
        self.periodic: dict = {}

    def vertices(self, part: str, uv: np.ndarray, pole: np.ndarray | None = None) -> int:
        start = self.n
        m = len(uv)
        self.parts.append(np.full(m, PART[part], np.int64))
        self.uvs.append(np.asarray(uv, np.float64).reshape(m, 2))
        self.poles.append(np.zeros(m, bool) if pole is None else pole)
        self.n += m
        s = self.slices.get(part)
        self.slices[part] = slice(s.start if s else start, self.n)
        return start

    def tris(self, faces: np.ndarray, part: str, orient: str | None) -> None:
        self.faces.append(np.asarray(faces, np.int64).reshape(-1, 3))
        self.face_group.append(np.full(len(self.faces[-1]), len(self.groups), np.int64))
        self.groups.append((part, orient))


def _add_grid_part(b: _Builder, part: str, n_rows: int, n_cols: int, orient, with_pole=True,
                   periodic=True, pole_at_end=False, v_range=(0.0, 1.0)) -> dict:
    """A (pole +) rows x cols grid; uv u = column / cols, v = row / rows."""
    r = np.arange(1, n_rows + 1) if with_pole else np.arange(n_rows)
    v = v_range[0] + (v_range[1] - v_range[0]) * r / max(n_rows, 1)
    ncu = n_cols if periodic else max(n_cols - 1, 1)
    uu, vv = np.meshgrid(np.arange(n_cols) / ncu, v)
    info = {}
    if with_pole:
        info["pole"] = b.vertices(part, np.array([[0.0, v_range[0]]]), np.array([True]))
    start = b.vertices(part, np.stack([uu.ravel(), vv.ravel()], -1))
    idx = start + np.arange(n_rows * n_cols).reshape(n_rows, n_cols)
    info["grid"] = idx
    b.tris(_grid(idx, periodic), part, orient)
    if with_pole:
        b.tris(_fan(info["pole"], idx[0]), part, orient)
    if pole_at_end:
        info["pole_end"] = b.vertices(part, np.array([[0.0, v_range[1] + 1.0 / max(n_rows, 1)]]), np.array([True]))
        b.tris(_fan(info["pole_end"], idx[-1]), part, orient)
    return info


def _skin_dims(R: int) -> dict:
    Nu = 2 * R
    Nh = R + R // 2
    Nn = max(4, R // 4)
    u = 2 * np.pi * np.arange(Nu) / Nu - np.pi  # column angles, u = 0 at column Nu // 2
    s_mouth = 2.08 / float(_theta_n(0.0))
    i_m = int(round(s_mouth * Nh))
    # Corner columns: the slit spans |phi| < 0.27 rad (before the identity's mouth width).
    m = int(np.argmin(np.abs(np.abs(_phi_of_u(u[Nu // 2 :])) - 0.27)))
    j0 = Nu // 2
    return dict(Nu=Nu, Nh=Nh, Nn=Nn, u=u, i_m=i_m, j_a=j0 - m, j_b=j0 + m)


@functools.lru_cache(maxsize=8)
def _topology(resolution: int) -> _Topology:
    R = int(resolution)
    if R < 16:
        raise ValueError(f"mesh resolution must be >= 16, got {resolution}")
    b = _Builder()
    dims: dict = {}

    # -- skin: pole, head rows, neck rows, slit copies
    sd = _skin_dims(R)
    Nu, Nh, Nn, i_m, j_a, j_b = sd["Nu"], sd["Nh"], sd["Nn"], sd["i_m"], sd["j_a"], sd["j_b"]
    rows = Nh + Nn
    pole = b.vertices("skin", np.array([[0.0, 0.0]]), np.array([True]))
    uu, vv = np.meshgrid(np.arange(Nu) / Nu, np.arange(1, rows + 1) / rows)
    start = b.vertices("skin", np.stack([uu.ravel(), vv.ravel()], -1))
    idx = start + np.arange(rows * Nu).reshape(rows, Nu)
    slit_cols = np.arange(j_a + 1, j_b)
    copies = b.vertices("skin", np.stack([slit_cols / Nu, np.full(len(slit_cols), i_m / rows)], -1))
    lower_idx = idx.copy()
    lower_idx[i_m - 1, slit_cols] = copies + np.arange(len(slit_cols))  # row i_m is idx[i_m - 1]
    # Faces between grid rows a and a+1: the quads just below the mouth row use the copies.
    faces_above = _grid(idx[: i_m], True)
    faces_below = _grid(lower_idx[i_m - 1 :], True)
    b.tris(np.concatenate([faces_above, faces_below]), "skin", "out")
    b.tris(_fan(pole, idx[0]), "skin", "out")
    sd.update(pole=pole, idx=idx, copies=copies + np.arange(len(slit_cols)), slit_cols=slit_cols)
    dims["skin"] = sd

    # -- hair cap over the same columns
    Nhr = max(8, R // 2)
    dims["hair"] = dict(_add_grid_part(b, "hair", Nhr, Nu, "out"), Nhr=Nhr, Nu=Nu)

    # -- eyeballs: pole in front, polar rows to 2.0 rad
    ne_r, ne_c = max(8, R // 4), max(16, R // 2)
    for part in ("eye_l", "eye_r"):
        dims[part] = dict(_add_grid_part(b, part, ne_r, ne_c, "out"), rows=ne_r, cols=ne_c)

    # -- eyelids: upper and lower shell per eye, rows from the lid margin outwards
    na, nk = max(12, R // 3), max(6, R // 8)
    for part in ("eyelid_l", "eyelid_r"):
        info = {}
        for lid, vr in (("upper", (0.0, 0.5)), ("lower", (0.5, 1.0))):
            info[lid] = _add_grid_part(b, part, nk + 1, na, "out", with_pole=False, periodic=False,
                                       v_range=vr)
        dims[part] = dict(info, na=na, nk=nk)

    # -- ears: disc with a centre pole
    nr_e, nc_e = max(6, R // 6), max(16, R // 2)
    for part in ("ear_l", "ear_r"):
        dims[part] = dict(_add_grid_part(b, part, nr_e, nc_e, None), rows=nr_e, cols=nc_e)

    # -- teeth: tubes along the dental arch; u runs around the tube (periodic), v along the arch
    n_arc, n_ring = max(16, R // 2), 8
    for part in ("teeth_upper", "teeth_lower"):
        vv_t, uu_t = np.meshgrid(np.arange(n_arc) / (n_arc - 1), np.arange(n_ring) / n_ring, indexing="ij")
        st = b.vertices(part, np.stack([uu_t.ravel(), vv_t.ravel()], -1))
        g = st + np.arange(n_arc * n_ring).reshape(n_arc, n_ring)
        b.tris(_grid(g, True), part, None)
        dims[part] = dict(grid=g, n_arc=n_arc, n_ring=n_ring)

    # -- tongue: ellipsoid, poles at the back and the tip
    nt_r, nt_c = max(8, R // 5), 16
    dims["tongue"] = dict(_add_grid_part(b, "tongue", nt_r, nt_c, "out", pole_at_end=True,
                                         v_range=(0.0, 1.0 - 1.0 / (nt_r + 1))), rows=nt_r, cols=nt_c)

    # -- mouth cavity: a sack open towards the lips, seen from inside
    nc_r, nc_c = max(8, R // 5), 24
    dims["mouth_cavity"] = dict(_add_grid_part(b, "mouth_cavity", nc_r, nc_c, "in"), rows=nc_r, cols=nc_c)

    return _Topology(
        resolution=R,
        faces=np.concatenate(b.faces),
        face_group=np.concatenate(b.face_group),
        groups=b.groups,
        part_of_vertex=np.concatenate(b.parts),
        uv=np.concatenate(b.uvs),
        is_pole=np.concatenate(b.poles),
        slices=b.slices,
        dims=dims,
    )


_PERIODIC_U = ("skin", "hair", "eye_l", "eye_r", "ear_l", "ear_r", "teeth_upper", "teeth_lower",
               "tongue", "mouth_cavity")


def _face_uv(topo: _Topology) -> np.ndarray:
    """(F, 3, 2) uv per face corner with seams unwrapped and pole u filled in."""
    f = topo.faces
    uv = topo.uv[f].copy()
    periodic = np.isin(topo.part_of_vertex[f[:, 0]], [PART[p] for p in _PERIODIC_U])
    pole = topo.is_pole[f]
    u = uv[..., 0]
    # unwrap: faces spanning more than half a turn cross the seam
    ref = np.where(pole, np.nan, u)
    span = np.nanmax(ref, 1) - np.nanmin(ref, 1)
    wrap = periodic & (span > 0.5)
    u = np.where(wrap[:, None] & (u < 0.5) & ~pole, u + 1.0, u)
    mean = np.nanmean(np.where(pole, np.nan, u), axis=1)
    u = np.where(pole, mean[:, None], u)
    uv[..., 0] = u
    return uv


# ----------------------------------------------------------------------------- the head


class SynthHead:
    """One participant's procedural head at a mesh ``resolution``.

    ``faces`` (F, 3) and ``part_of_vertex`` (V,) depend on the resolution only.
    :meth:`vertices` evaluates the mesh for an expression and untracked effects;
    :meth:`render` renders it with the ground-truth mesh rasterizer.
    """

    def __init__(self, identity: Identity, resolution: int):
        if not isinstance(identity, Identity):
            raise TypeError(f"identity must be an Identity, got {type(identity).__name__}")
        self.identity = identity
        self.resolution = int(resolution)
        self._topo = _topology(self.resolution)
        self._setup_skin()
        self._setup_features()
        if not self._topo.oriented:
            _orient(self._topo, Identity())  # the same flips hold for every identity
        self.faces: np.ndarray = self._topo.faces
        self.part_of_vertex: np.ndarray = self._topo.part_of_vertex
        self.n_vertices: int = len(self.part_of_vertex)
        self.uv = self._topo.uv
        self.face_uv = self._topo.face_uv
        self.part_slices: dict[str, slice] = dict(self._topo.slices)
        self._textures = None

    # ------------------------------------------------------------ identity setup
    def _setup_skin(self) -> None:
        idn = self.identity
        sd = self._topo.dims["skin"]
        Nu, Nh, Nn, i_m = sd["Nu"], sd["Nh"], sd["Nn"], sd["i_m"]
        n_sk = self._topo.slices["skin"].stop
        row = np.zeros(n_sk)
        col = np.zeros(n_sk, np.int64)
        grid = sd["idx"]
        rr, cc = np.meshgrid(np.arange(1, Nh + Nn + 1), np.arange(Nu), indexing="ij")
        row[grid.ravel()] = rr.ravel()
        col[grid.ravel()] = cc.ravel()
        row[sd["copies"]] = i_m
        col[sd["copies"]] = sd["slit_cols"]
        slit = np.zeros(n_sk)
        slit[grid[i_m - 1, sd["slit_cols"]]] = 1.0
        slit[sd["copies"]] = -1.0
        self._sk_row, self._sk_col, self._sk_slit = row, col, slit
        self._sk_head = row <= Nh
        self._sk_neck_u = np.clip((row - Nh) / Nn, 0.0, 1.0)

        phi0 = _phi_of_u(sd["u"][col])
        tn = _theta_n(phi0)
        theta0 = np.minimum(row, Nh) / Nh * tn
        # Mouth row in material angles; dm = 0 exactly on the slit.
        self._sk_dm = (row - i_m) / Nh * tn
        self._sk_dtheta_row = tn / Nh
        # Identity warp: the mouth width widens the lip region around the mouth.
        g_mouth = _g((theta0 - i_m / Nh * tn) / 0.25) * _g(phi0 / 0.5)
        phi1 = phi0 * (1.0 + (idn.mouth_width - 1.0) * g_mouth)
        self._sk_theta, self._sk_phi = theta0, phi1
        self._sk_side = np.where(slit < 0, -1.0, np.where(row <= i_m, 1.0, -1.0))
        corner = grid[i_m - 1, sd["j_b"]]
        self.mouth_corner_phi = float(phi1[corner])

    def _setup_features(self) -> None:
        idn = self.identity
        # Face landmarks in surface angles.
        self.th_eye = 1.47 + idn.eye_height
        self.ph_eye = 0.335 * idn.eye_spacing
        self.th_brow = self.th_eye - 0.20
        self.th_nose_root = self.th_eye - 0.03
        self.th_nose_tip = self.th_nose_root + 0.36 * idn.nose_length
        self.th_mouth = float(self._topo.dims["skin"]["i_m"] / self._topo.dims["skin"]["Nh"] * _theta_n(0.0))
        self.th_chin = self.th_mouth + 0.42

        self.r_eye = 0.0118 * idn.eye_size
        self.eye_centres = {}
        for part, sgn in (("eye_l", 1.0), ("eye_r", -1.0)):
            th, ph = np.array([self.th_eye]), np.array([sgn * self.ph_eye])
            p0 = HEAD_CENTRE + self._bone_radius(th, ph, socket=False)[:, None] * _dirs(th, ph)
            self.eye_centres[part] = p0[0] - np.array([0.0, 0.0, self.r_eye - 0.0022])

        # Neck tube (rest; expression only moves it through skinning).
        self._setup_neck()
        # Jaw and neck skinning weights of the skin.
        self._w_jaw_skin = self._jaw_weights()
        self._w_head_skin = np.where(self._sk_head, 1.0, 1.0 - _smoothstep(0.15, 0.9, self._sk_neck_u))
        # Mouth interior placed from the neutral lips.
        sd = self._topo.dims["skin"]
        centre_v = sd["idx"][sd["i_m"] - 1, sd["Nu"] // 2]
        th = self._sk_theta[centre_v : centre_v + 1]
        ph = self._sk_phi[centre_v : centre_v + 1]
        r = self._bone_radius(th, ph) + self._soft_radius(th, ph, np.zeros(1), np.ones(1))
        self.mouth_point = (HEAD_CENTRE + r[:, None] * _dirs(th, ph))[0]

    def _setup_neck(self) -> None:
        idn = self.identity
        sd = self._topo.dims["skin"]
        phi = _phi_of_u(sd["u"])  # ring columns (no mouth warp this far down)
        tn = _theta_n(phi)
        B = HEAD_CENTRE + self._bone_radius(tn, phi)[:, None] * _dirs(tn, phi)
        eps = 1e-4
        B2 = HEAD_CENTRE + self._bone_radius(tn + eps, phi)[:, None] * _dirs(tn + eps, phi)
        TB = (B2 - B) / eps
        TB /= np.linalg.norm(TB, axis=1, keepdims=True)
        rx, rz = 0.056 * idn.neck_width, 0.058 * idn.neck_width
        N1 = np.stack([rx * np.sin(phi), np.full_like(phi, -0.15), -0.014 + rz * np.cos(phi)], -1)
        N2 = N1 + np.array([0.0, -0.20, -0.01])
        L = np.linalg.norm(N1 - B, axis=1, keepdims=True)
        u1 = 0.55
        rows = []
        for k in range(1, sd["Nn"] + 1):
            u = k / sd["Nn"]
            if u <= u1:
                t = u / u1
                h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
                h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
                p = h00 * B + h10 * L * TB + h01 * N1 + h11 * L * np.array([0.0, -1.0, 0.0])
            else:
                t = (u - u1) / (1 - u1)
                p = (1 - t) * N1 + t * N2
            rows.append(p)
        self._neck_rest = np.stack(rows)  # (Nn, Nu, 3)

    def _jaw_weights(self) -> np.ndarray:
        th, ph, dm = self._sk_theta, self._sk_phi, self._sk_dm
        aph = np.abs(_wrap(ph))
        pc = self.mouth_corner_phi
        # The jaw boundary runs along the mouth line, then rises towards the ear lobe.
        bo = -0.23 * _smoothstep(pc, 1.45, aph)
        d = 0.5 * self._sk_dtheta_row
        e = np.where(self._sk_slit > 0, -d, np.where(self._sk_slit < 0, d, dm - bo))
        tau = d + 0.12 * _smoothstep(0.5 * pc, 1.4 * pc, aph)
        w = _smoothstep(-tau, tau, e) * (1.0 - _smoothstep(1.2, 1.7, aph))
        # where the jaw line meets the neck the skin stretches rather than rotating
        w *= 1.0 - 0.6 * _smoothstep(_theta_n(ph) - 0.3, _theta_n(ph), th) * _smoothstep(0.2, 0.9, aph)
        # Neck rows follow the jaw near the chin only.
        sd = self._topo.dims["skin"]
        neck = ~self._sk_head
        ring = sd["idx"][sd["Nh"] - 1]  # boundary row
        w_ring = w[ring]
        w[neck] = w_ring[self._sk_col[neck]] * (1.0 - _smoothstep(0.0, 0.75, self._sk_neck_u[neck]))
        return w

    # ------------------------------------------------------------ surface functions
    def _bone_radius(self, th, ph, socket: bool = True):
        """Radius of skull + cartilage along the direction (theta, phi): identity only."""
        idn = self.identity
        ph = _wrap(ph)
        aph = np.abs(ph)
        d = _dirs(th, ph)
        lower = _smoothstep(1.8, 2.6, th)
        a = 0.074 * idn.head_width * (1.0 - (0.10 - 0.10 * (idn.jaw_width - 1.0)) * lower)
        b = np.where(d[:, 1] > 0, 0.118, 0.112) * idn.head_height
        c = np.where(d[:, 2] > 0, 0.098, 0.106) * idn.head_depth
        # a superellipsoid above the ears: the skull's top is rounder than an ellipsoid's
        p = 2.0 + 0.5 * _smoothstep(1.5, 0.5, th)
        r = (np.abs(d[:, 0] / a) ** p + np.abs(d[:, 1] / b) ** p + np.abs(d[:, 2] / c) ** p) ** (-1.0 / p)
        # brow ridge, cheekbones, muzzle, chin, temples, occiput
        r += 0.0035 * idn.brow_ridge * _g((th - self.th_brow) / 0.08) * _g(ph / 0.55)
        r += 0.005 * idn.cheekbones * _g((th - self.th_eye - 0.25) / 0.12) * _g((aph - 0.75) / 0.22)
        r += 0.007 * _g((th - self.th_mouth) / 0.22) * _g(ph / 0.38)
        r += 0.010 * idn.chin * _g((th - self.th_chin) / 0.13) * _g(ph / 0.30)
        r -= 0.004 * _g((th - 1.2) / 0.2) * _g((aph - 1.15) / 0.25)
        r += 0.006 * _g((th - 1.6) / 0.45) * _g((aph - np.pi) / 0.7)
        # nose: a ridge growing from the root to the tip, then the nostril wings
        t = (th - self.th_nose_root) / (self.th_nose_tip - self.th_nose_root)
        P = 0.021 * idn.nose_projection
        sig = (0.055 + 0.065 * np.clip(t, 0, 1)) * idn.nose_width
        ridge = np.where(
            t < 0, 0.35 * _g(t / 0.35), np.where(t <= 1, 0.35 + 0.65 * np.clip(t, 0, 1) ** 1.5,
                                                 _g((th - self.th_nose_tip) / 0.045))
        )
        r += P * ridge * _g(ph / sig)
        r += 0.0065 * _g((th - self.th_nose_tip - 0.015) / 0.05) * _g((aph - 0.12 * idn.nose_width) / 0.06)
        if socket:
            r -= 0.0095 * _g((th - self.th_eye) / 0.095) * _g((aph - self.ph_eye) / 0.16)
        return r

    def _soft_radius(self, th, ph, dm, side):
        """Soft tissue that travels with the skin (material angles): lips, cheek fat."""
        idn = self.identity
        aph = np.abs(_wrap(ph))
        wl = np.exp(-((ph / (0.85 * self.mouth_corner_phi)) ** 4))
        r = 0.0036 * idn.lip_fullness * _g((dm + 0.05) / 0.032) * wl
        r += 0.0044 * idn.lip_fullness * _g((dm - 0.055) / 0.038) * wl
        r -= 0.0035 * _g(dm / 0.02) * wl  # lips roll into the mouth at the slit
        r += 0.006 * idn.cheek_fullness * _g((th - self.th_eye - 0.42) / 0.18) * _g((aph - 0.62) / 0.25)
        return r

    def _expression_fields(self, th, ph, dm, side, z):
        """Slide (dtheta, dphi) and radial offset of the skin for expression ``z``."""
        zz = {n: float(z[i]) for n, i in _E.items()}
        ph = _wrap(ph)
        aph = np.abs(ph)
        sg = np.sign(ph)
        pc = self.mouth_corner_phi
        dth = np.zeros_like(th)
        dph = np.zeros_like(th)
        dr = np.zeros_like(th)
        # Lip-corner window: 0 at the mouth centre, 1 at the corners, fading into the cheeks.
        wc = _g(dm / 0.12) * np.where(aph < pc, aph / pc, _g((aph - pc) / 0.18))
        wlip = _g(dm / 0.10) * np.exp(-((ph / 0.45) ** 4))
        wopen = _g(dm / 0.07) * np.clip(1.0 - (ph / pc) ** 2, 0.0, None)
        if zz["jaw_open"]:
            # opening the mouth drags the cheeks down and pulls the corners inwards;
            # (the rotation itself is skinning, applied after the slide)
            j = zz["jaw_open"]
            dth += 0.05 * j * _g((th - self.th_eye - 0.45) / 0.2) * _g((aph - 0.55) / 0.3)
            dph -= 0.06 * j * j * sg * wc
        if zz["smile"]:
            s = zz["smile"]
            # the corner first widens, then rises: a curved path on the cheek
            dth -= 0.11 * s * s * wc
            dph += 0.07 * s * sg * wc
            # the cheeks bunch up first and outwards later
            cheek = _g((th - self.th_eye - 0.32) / 0.16) * _g((aph - 0.52) / 0.25)
            dth -= 0.05 * s * cheek
            dph += 0.05 * s * s * sg * cheek
            dr += 0.003 * s * cheek
            dr -= 0.0022 * s * s * self._nasolabial(th, aph)
        if zz["frown"]:
            f = zz["frown"]
            dth += 0.075 * f**1.5 * wc
            dph -= 0.01 * f * sg * wc
            dr += 0.003 * f * _g((th - self.th_chin) / 0.1) * _g(ph / 0.25)
        if zz["lip_stretch"]:
            ls = zz["lip_stretch"]
            dph += 0.09 * ls * sg * wc
            dth += 0.02 * ls * ls * wc
            dr -= 0.5 * ls * (self._soft_radius(th, ph, dm, side) * (aph < 1.0))
        if zz["pucker"]:
            p = zz["pucker"]
            dph -= 0.45 * p**1.5 * ph * wlip
            dth -= 0.3 * p * dm * wlip
            dr += 0.009 * math.sin(0.5 * math.pi * p) * _g(dm / 0.09) * _g(ph / 0.3)
        if zz["funnel"]:
            f = zz["funnel"]
            dph -= 0.25 * f * ph * wlip
            dth -= 0.05 * f * f * side * wopen
            dr += 0.007 * f * _g(dm / 0.09) * _g(ph / 0.3)
        if zz["cheek_puff"]:
            c = zz["cheek_puff"]
            dr += 0.011 * math.sin(0.5 * math.pi * c) * _g((dm + 0.03) / 0.15) * _g((aph - 0.5) / 0.22)
            dph -= 0.03 * c * sg * wc
            dph += 0.04 * c * c * sg * _g((dm + 0.03) / 0.18) * _g((aph - 0.6) / 0.25)  # bulges sideways
            dr += 0.003 * c * c * _g(dm / 0.08) * _g(ph / 0.3)  # air pushes the lips forward
        if zz["brow_raise"]:
            b = zz["brow_raise"]
            x = th - self.th_brow
            wb = np.where(x < 0, _g(x / 0.3), _g(x / 0.09))
            # inner and outer frontalis: the inner brows lead, the outer ones follow
            dth -= 0.08 * (b * _g(ph / 0.35) + b**2.5 * _g((aph - 0.55) / 0.3)) * wb
        if zz["brow_frown"]:
            fr = zz["brow_frown"]
            wib = _g((th - self.th_brow) / 0.12) * _g((aph - 0.16) / 0.16)
            dth += 0.05 * fr * wib
            dph -= 0.07 * fr * fr * sg * wib * np.minimum(aph / 0.15, 1.0)  # no crossing at the midline
            dr += 0.0015 * fr * _g((th - self.th_brow) / 0.08) * _g(ph / 0.08)
        for name, sgn in (("blink_l", 1.0), ("blink_r", -1.0)):
            if zz[name]:
                dth += 0.03 * zz[name] * _g((th - self.th_eye + 0.12) / 0.07) * _g((ph - sgn * self.ph_eye) / 0.15)
        if zz["squint"]:
            sq = zz["squint"]
            dth -= 0.04 * sq**1.5 * _g((th - self.th_eye - 0.15) / 0.1) * _g((aph - self.ph_eye) / 0.18)
            dth += 0.015 * sq * _g((th - self.th_brow) / 0.1) * _g((aph - self.ph_eye) / 0.2)
            dth -= 0.04 * sq * sq * _g((th - self.th_eye - 0.35) / 0.15) * _g((aph - 0.5) / 0.25)
        if zz["nose_wrinkle"]:
            nw = zz["nose_wrinkle"]
            dth -= 0.045 * nw**1.5 * _g((th - self.th_eye - 0.12) / 0.12) * _g(ph / 0.16)
            dth -= 0.02 * nw * _g((dm + 0.05) / 0.05) * (side > 0) * np.exp(-((ph / pc) ** 4))
            dr += 0.0025 * nw * nw * _g((th - self.th_nose_tip) / 0.08) * _g((aph - 0.13) / 0.06)
        return dth, dph, dr

    def _nasolabial(self, th, aph):
        """A band from the nostril wing down to beyond the mouth corner."""
        t = np.clip((th - self.th_nose_tip) / (self.th_mouth + 0.1 - self.th_nose_tip), 0, 1)
        line = 0.17 + 0.16 * t  # phi of the fold at this height
        inside = (th > self.th_nose_tip - 0.02) & (th < self.th_mouth + 0.14)
        return _g((aph - line) / 0.035) * inside

    # ------------------------------------------------------------ vertices
    def _skin_vertices(self, z: np.ndarray) -> np.ndarray:
        th, ph, dm, side = self._sk_theta, self._sk_phi, self._sk_dm, self._sk_side
        head = self._sk_head
        th_h, ph_h, dm_h, sd_h = th[head], ph[head], dm[head], side[head]
        if np.any(z):
            dth, dph, dr = self._expression_fields(th_h, ph_h, dm_h, sd_h, z)
        else:
            dth = dph = dr = 0.0
        th2 = np.clip(th_h + dth, 0.0, np.pi)
        ph2 = ph_h + dph
        r = self._bone_radius(th2, ph2) + self._soft_radius(th_h, ph_h, dm_h, sd_h) + dr
        out = np.empty((len(th), 3))
        out[head] = HEAD_CENTRE + r[:, None] * _dirs(th2, ph2)
        if np.any(z):
            self._curl_lips(out, z)
        neck = ~head
        nrow = (self._sk_row[neck] - self._topo.dims["skin"]["Nh"] - 1).astype(np.int64)
        out[neck] = self._neck_rest[nrow, self._sk_col[neck]]
        return out

    def _curl_lips(self, out: np.ndarray, z: np.ndarray) -> None:
        """Roll the lips about the mouth line (in place): out (flare) or in (press).

        Each lip vertex turns about the x axis through the mouth-line vertex of its
        column by an angle that fades from the lip margin to the lip border: a
        rotation of tissue, not an offset, so it is non-linear in the parameters.
        """
        zz = {n: float(z[i]) for n, i in _E.items()}
        up = 0.55 * zz["funnel"] + 0.35 * zz["pucker"] - 0.35 * zz["lip_stretch"] - 0.15 * zz["smile"]
        lo = 0.55 * zz["funnel"] + 0.35 * zz["pucker"] - 0.35 * zz["lip_stretch"] + 0.35 * zz["frown"]
        if up == 0 and lo == 0:
            return
        sel, pivot, upper = self._lip_curl_setup
        w = self._lip_curl_weight
        ang = np.where(upper, up, -lo) * w
        d = out[sel] - out[pivot]
        c, s_ = np.cos(ang), np.sin(ang)
        out[sel, 1] = out[pivot, 1] + c * d[:, 1] - s_ * d[:, 2]
        out[sel, 2] = out[pivot, 2] + s_ * d[:, 1] + c * d[:, 2]

    @functools.cached_property
    def _lip_curl_setup(self):
        sd = self._topo.dims["skin"]
        dm, ph = self._sk_dm, self._sk_phi
        wl = np.exp(-((ph / (0.95 * self.mouth_corner_phi)) ** 4))
        w = _smoothstep(0.12, 0.03, np.abs(dm)) * wl * self._sk_head
        sel = np.nonzero(w > 1e-4)[0]
        upper = self._sk_side[sel] > 0
        row_mouth = sd["idx"][sd["i_m"] - 1]
        pivot = row_mouth[self._sk_col[sel]].copy()
        lower_copy = np.full(sd["Nu"], -1)
        lower_copy[sd["slit_cols"]] = sd["copies"]
        lc = lower_copy[self._sk_col[sel]]
        pivot = np.where(~upper & (lc >= 0), lc, pivot)
        self._lip_curl_weight = w[sel]
        return sel, pivot, upper

    def _hair_vertices(self) -> np.ndarray:
        idn = self.identity
        dh = self._topo.dims["hair"]
        Nhr, Nu = dh["Nhr"], dh["Nu"]
        phi = _phi_of_u(self._topo.dims["skin"]["u"])
        s = np.arange(1, Nhr + 1)[:, None] / Nhr
        th = s * _theta_hairline(phi, idn.hairline)[None, :]
        ph = np.broadcast_to(phi, th.shape)
        th, ph, s = th.ravel(), ph.ravel(), np.broadcast_to(s, (Nhr, Nu)).ravel()
        back = 0.5 * (1.0 - np.cos(ph))  # 0 in front, 1 behind
        thick = 0.0065 * idn.hair_volume * (0.7 + 0.6 * back) * (1.0 - _smoothstep(0.72, 1.0, s)) + 0.0018
        r = self._bone_radius(th, ph) + thick
        grid = HEAD_CENTRE + r[:, None] * _dirs(th, ph)
        top = HEAD_CENTRE + (self._bone_radius(np.zeros(1), np.zeros(1)) + thick[:1])[:, None] * _dirs(np.zeros(1), np.zeros(1))
        return np.concatenate([top, grid])

    def _eye_vertices(self, part: str, gaze: np.ndarray) -> np.ndarray:
        d = self._topo.dims[part]
        rows, cols = d["rows"], d["cols"]
        rho = np.arange(1, rows + 1)[:, None] / rows * 2.0
        om = np.arange(cols)[None, :] / cols * 2 * np.pi
        rho, om = np.broadcast_arrays(rho, om)
        local = np.stack([np.sin(rho) * np.cos(om), np.sin(rho) * np.sin(om), np.cos(rho)], -1).reshape(-1, 3)
        local = np.concatenate([[[0.0, 0.0, 1.0]], local]) * self.r_eye
        R = _look_rotation(gaze[0] * GAZE_YAW_MAX, gaze[1] * GAZE_PITCH_MAX)
        return local @ R.T + self.eye_centres[part]

    def lid_elevations(self, blink: float, squint: float, gaze_pitch: float, brow_raise: float = 0.0,
                       smile: float = 0.0):
        """Upper/lower lid margin elevations at the eye's centre line (radians)."""
        pitch = gaze_pitch * GAZE_PITCH_MAX
        up = 0.30 + (-0.50 - 0.30) * blink - 0.12 * squint + 0.7 * pitch + 0.06 * brow_raise
        lo = -0.42 + 0.22 * squint + 0.4 * pitch + 0.10 * smile**2
        return up, lo

    def _lid_vertices(self, part: str, z: np.ndarray, gaze_pitch: float) -> np.ndarray:
        d = self._topo.dims[part]
        na, nk = d["na"], d["nk"]
        sgn = 1.0 if part.endswith("_l") else -1.0
        eye = self.eye_centres["eye_" + part[-1]]
        a_max, a_c, c_e = 1.45, 1.15, -0.06
        a = np.linspace(-a_max, a_max, na)
        up, lo = self.lid_elevations(z[_E["blink_" + part[-1]]], z[_E["squint"]], gaze_pitch,
                                     z[_E["brow_raise"]], z[_E["smile"]])
        inside = np.abs(a) < a_c
        cosw = np.cos(0.5 * np.pi * np.clip(a / a_c, -1, 1))
        E_up = np.where(inside, c_e + (up - c_e) * cosw, c_e - 0.6 * (np.abs(a) - a_c))
        E_lo = np.where(inside, c_e + (lo - c_e) * cosw, c_e + 0.6 * (np.abs(a) - a_c))
        out = []
        for E, far, extra in ((E_up, 1.35, 0.0014), (E_lo, -1.35, 0.0010)):
            k = np.arange(nk + 1)[:, None]
            sgn_far = np.sign(far)
            margin = np.minimum(k, 1) * 0.03 * sgn_far
            el = E[None, :] + margin + (far - E[None, :] - 0.03 * sgn_far) * np.clip((k - 1) / (nk - 1), 0, 1)
            rad = np.where(k == 0, self.r_eye + 0.0003, self.r_eye + extra)
            el, az = np.broadcast_arrays(el, a[None, :] * sgn)
            rad = np.broadcast_to(rad, el.shape)
            p = np.stack([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], -1) * rad[..., None]
            out.append(p.reshape(-1, 3) + eye)
        return np.concatenate(out)

    def _ear_vertices(self, part: str) -> np.ndarray:
        idn = self.identity
        d = self._topo.dims[part]
        rows, cols = d["rows"], d["cols"]
        sgn = 1.0 if part == "ear_l" else -1.0
        th_e, ph_e = np.array([1.62 + 0.5 * idn.eye_height]), np.array([sgn * 1.62])
        A = HEAD_CENTRE + self._bone_radius(th_e, ph_e)[:, None] * _dirs(th_e, ph_e)
        e1 = np.array([0.0, 1.0, 0.0])
        e2 = np.array([0.0, 0.0, -1.0])
        e3 = np.array([sgn, 0.0, 0.0])
        D = A[0] + e2 * 0.011 - e3 * 0.002
        rho = np.arange(1, rows + 1)[:, None] / rows
        om = np.arange(cols)[None, :] / cols * 2 * np.pi
        rho, om = np.broadcast_arrays(rho, om)
        h = 0.030 * idn.ear_size
        w = 0.017 * idn.ear_size * np.where(np.sin(om) < 0, 0.75, 1.0)
        px = rho * w * np.cos(om)  # along e2 (backwards)
        py = rho * h * np.sin(om)
        f = 0.0045 * _g((rho - 0.88) / 0.1) - 0.004 * _g((rho - 0.3) / 0.25) + 0.0015 * _g((rho - 0.62) / 0.1)
        gam = 0.45 * idn.ear_protrusion
        e2r = math.cos(gam) * e2 + math.sin(gam) * e3
        e3r = -math.sin(gam) * e2 + math.cos(gam) * e3
        grid = D + px.reshape(-1, 1) * e2r + py.reshape(-1, 1) * e1 + f.reshape(-1, 1) * e3r
        centre = D + (-0.004 * _g(-0.3 / 0.25)) * e3r
        return np.concatenate([centre[None], grid])

    def _teeth_vertices(self, part: str) -> np.ndarray:
        d = self._topo.dims[part]
        n_arc, n_ring = d["n_arc"], d["n_ring"]
        M = self.mouth_point
        mw = self.identity.mouth_width
        psi = np.linspace(-1.3, 1.3, n_arc)[:, None]
        om = np.arange(n_ring)[None, :] / n_ring * 2 * np.pi
        Rx, Rz = 0.0245 * mw, 0.030
        if part == "teeth_upper":
            z_front, y_top, y_bot, half_t = M[2] - 0.0040, M[1] + 0.010, M[1] - 0.0015, 0.00275
        else:
            z_front, y_top, y_bot, half_t = M[2] - 0.0058, M[1] - 0.0005, M[1] - 0.011, 0.0025
        # centre line of the tube along the arch
        zc = z_front - half_t - Rz
        cx = (Rx - half_t) * np.sin(psi)
        cz = zc + (Rz - half_t) * np.cos(psi)
        nx, nz = np.sin(psi) * Rz, np.cos(psi) * Rx  # outward normal of the arch (unnormalised)
        nn = np.sqrt(nx**2 + nz**2)
        nx, nz = nx / nn, nz / nn
        # rounded-rectangle cross-section; the biting edge is thinner
        co, so = np.cos(om), np.sin(om)
        sx = np.sign(co) * np.abs(co) ** 0.4
        sy = np.sign(so) * np.abs(so) ** 0.4
        edge_up = part == "teeth_lower"
        taper = 1.0 - 0.45 * ((sy > 0) if edge_up else (sy < 0)) * np.abs(sy)
        off = sx * half_t * taper
        ymid, yh = 0.5 * (y_top + y_bot), 0.5 * (y_top - y_bot)
        x = cx + off * nx
        z = cz + off * nz
        y = ymid + sy * yh + 0 * psi
        x, y, z = np.broadcast_arrays(x, y, z)
        return np.stack([x, y, z], -1).reshape(-1, 3)

    def _tongue_vertices(self, tongue_out: float, tongue_side: float) -> np.ndarray:
        d = self._topo.dims["tongue"]
        rows, cols = d["rows"], d["cols"]
        M = self.mouth_point
        mw = self.identity.mouth_width
        rx, ry, rz = 0.019 * mw, 0.0075, 0.027
        T0 = np.array([0.0, M[1] - 0.0095, M[2] - 0.0058 - 0.027])
        # rows run from the back pole (v=0) to the tip pole; column angle around the long axis
        al = np.arange(1, rows + 1)[:, None] / (rows + 1) * np.pi
        om = np.arange(cols)[None, :] / cols * 2 * np.pi
        al, om = np.broadcast_arrays(al, om)
        zeta = -np.cos(al)  # -1 back .. +1 tip
        local = np.stack([np.sin(al) * np.cos(om), np.sin(al) * np.sin(om), zeta], -1).reshape(-1, 3)
        local = np.concatenate([[[0.0, 0.0, -1.0]], local, [[0.0, 0.0, 1.0]]])
        p = local * np.array([rx, ry, rz])
        zeta = local[:, 2]
        # flatten the underside a little so it rests on the floor of the mouth
        p[:, 1] = np.where(p[:, 1] < 0, 0.6 * p[:, 1], p[:, 1])
        w = _smoothstep(-1.0, 1.0, zeta)
        if tongue_out:
            p[:, 2] += 0.030 * tongue_out * w
            p[:, 0] *= 1.0 - 0.25 * tongue_out * w
            p[:, 1] += 0.004 * tongue_out * w * zeta
        if tongue_side:
            ang = tongue_side * TONGUE_SIDE_MAX * w
            root = -rz
            zr = p[:, 2] - root
            c, s = np.cos(ang), np.sin(ang)
            x_new = c * p[:, 0] + s * zr
            z_new = -s * p[:, 0] + c * zr + root
            p[:, 0], p[:, 2] = x_new, z_new
        return p + T0

    def _cavity(self) -> tuple[np.ndarray, np.ndarray]:
        d = self._topo.dims["mouth_cavity"]
        rows, cols = d["rows"], d["cols"]
        M = self.mouth_point
        mw = self.identity.mouth_width
        C = np.array([0.0, M[1] - 0.002, M[2] - 0.034])
        radii = np.array([0.029 * mw, 0.018, 0.034])
        be = np.arange(1, rows + 1)[:, None] / rows * 2.0
        om = np.arange(cols)[None, :] / cols * 2 * np.pi
        be, om = np.broadcast_arrays(be, om)
        local = np.stack([np.sin(be) * np.cos(om), np.sin(be) * np.sin(om), -np.cos(be)], -1).reshape(-1, 3)
        local = np.concatenate([[[0.0, 0.0, -1.0]], local])
        w_jaw = _smoothstep(0.3, -0.3, local[:, 1])
        return local * radii + C, w_jaw

    def vertices(self, z_exp: np.ndarray | None = None, untracked: np.ndarray | None = None) -> np.ndarray:
        """Mesh vertices (V, 3) float64 in metres; ``None`` means neutral / zero."""
        z = _check_code(z_exp, EXPRESSION_NAMES, "z_exp")
        u = _check_code(untracked, UNTRACKED_NAMES, "untracked")
        return self._vertices(z, u)[0]

    def _vertices(self, z: np.ndarray, u: np.ndarray):
        topo = self._topo
        sl = topo.slices
        V = np.empty((len(topo.part_of_vertex), 3))
        w_jaw = np.zeros(len(V))
        V[sl["skin"]] = self._skin_vertices(z)
        w_jaw[sl["skin"]] = self._w_jaw_skin
        V[sl["hair"]] = self._hair_vertices()
        gaze = np.array([u[_U["gaze_yaw"]], u[_U["gaze_pitch"]]])
        for side in ("l", "r"):
            V[sl["eye_" + side]] = self._eye_vertices("eye_" + side, gaze)
            V[sl["eyelid_" + side]] = self._lid_vertices("eyelid_" + side, z, u[_U["gaze_pitch"]])
            V[sl["ear_" + side]] = self._ear_vertices("ear_" + side)
        V[sl["teeth_upper"]] = self._teeth_vertices("teeth_upper")
        V[sl["teeth_lower"]] = self._teeth_vertices("teeth_lower")
        w_jaw[sl["teeth_lower"]] = 1.0
        V[sl["tongue"]] = self._tongue_vertices(u[_U["tongue_out"]], u[_U["tongue_side"]])
        w_jaw[sl["tongue"]] = 1.0
        V[sl["mouth_cavity"]], w_jaw[sl["mouth_cavity"]] = self._cavity()

        if z[_E["jaw_open"]] or z[_E["jaw_side"]]:
            Rj = _rot_y(JAW_SIDE_MAX * z[_E["jaw_side"]]) @ _rot_x(JAW_OPEN_MAX * z[_E["jaw_open"]])
            # the condyles glide forward in the second half of the opening
            glide = JAW_GLIDE * float(_smoothstep(0.3, 1.0, z[_E["jaw_open"]]))
            V = _blend_rigid(V, w_jaw, Rj, JAW_PIVOT, glide)
        if u[_U["head_yaw"]] or u[_U["head_pitch"]] or u[_U["head_roll"]]:
            Rh = _head_rotation(u)
            w_head = np.ones(len(V))
            w_head[sl["skin"]] = self._w_head_skin
            V = _blend_rigid(V, w_head, Rh, NECK_PIVOT)
        return V, w_jaw

    @property
    def jaw_weights(self) -> np.ndarray:
        """(V,) jaw skinning weight of every vertex (1 = moves rigidly with the jaw)."""
        return self._vertices(np.zeros(len(EXPRESSION_NAMES)), np.zeros(len(UNTRACKED_NAMES)))[1]

    @property
    def jaw_rigid_mask(self) -> np.ndarray:
        """(V,) bool: the jaw's rigid part: lower teeth and the skin over the chin/jaw bone.

        Skin counts when its jaw weight is 1 and opening the jaw does not also
        slide it (the cheeks and lip corners stretch as the mouth opens).
        """
        w = self.jaw_weights
        p = self.part_of_vertex
        head = self._sk_head
        moved = np.zeros(len(self._sk_theta))
        for name in ("jaw_open", "jaw_side"):
            z = np.zeros(len(EXPRESSION_NAMES))
            z[_E[name]] = 1.0
            f = self._expression_fields(self._sk_theta[head], self._sk_phi[head], self._sk_dm[head],
                                        self._sk_side[head], z)
            moved[head] += sum(np.abs(x) for x in f)
        still = np.zeros(len(p), bool)
        still[self._topo.slices["skin"]] = moved < 1e-7
        return (p == PART["teeth_lower"]) | ((p == PART["skin"]) & (w >= 1.0) & still)

    # ------------------------------------------------------------ rendering
    def textures(self):
        """The identity's procedural texture maps (built on first use)."""
        if self._textures is None:
            from npga.capture.synthetic.appearance import build_textures

            self._textures = build_textures(self)
        return self._textures

    def render(
        self,
        cameras: Sequence[Camera],
        z_exp: np.ndarray | None = None,
        untracked: np.ndarray | None = None,
        supersample: int = 2,
        return_depth: bool = False,
    ):
        """Ground-truth images of one frame seen by ``cameras``.

        Returns images (C, H, W, 3) float32 in [0, 1], premultiplied on black, and
        alphas (C, H, W) float32 (covered fraction of each pixel); H, W from the
        cameras. With ``return_depth=True`` also the per-pixel depth (C, H, W) of
        the nearest surface (minimum over the pixel's samples, +inf where empty),
        which tells which vertices are visible.
        """
        from npga.capture.synthetic.appearance import shade
        from npga.capture.synthetic.meshrender import rasterize, resolve

        z = _check_code(z_exp, EXPRESSION_NAMES, "z_exp")
        u = _check_code(untracked, UNTRACKED_NAMES, "untracked")
        cameras = list(cameras)
        sizes = {(c.width, c.height) for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"render needs cameras of one image size, got {sorted(sizes)}")
        V = self._vertices(z, u)[0]
        frame = self.frame_attributes(V, z)
        cull = self._face_culled()
        images, alphas, depths = [], [], []
        for cam in cameras:
            frags = rasterize(V, self.faces, cam, supersample, cull)
            col = shade(self, frame, frags, cam)
            img, a = resolve(frags, col)
            images.append(img)
            alphas.append(a)
            if return_depth:
                ss = frags.supersample
                dm = frags.depth_map().reshape(cam.height, ss, cam.width, ss).min(axis=(1, 3))
                depths.append(dm.astype(np.float32))
        out = (np.stack(images).astype(np.float32), np.stack(alphas).astype(np.float32))
        if return_depth:
            return out + (np.stack(depths),)
        return out

    def render_regions(
        self,
        cameras: Sequence[Camera],
        z_exp: np.ndarray | None = None,
        untracked: np.ndarray | None = None,
        supersample: int = 2,
        wrinkle_threshold: float = 1e-4,
    ) -> dict[str, np.ndarray]:
        """Ground-truth region masks of one frame seen by ``cameras`` (for evaluation).

        Same cameras, codes, rasterizer and supersampling as :meth:`render`, so the
        masks line up with its images pixel for pixel. Returns, each (C, H, W)
        float32 in [0, 1] (the covered fraction of each pixel, box-filtered over
        its ``supersample``**2 samples exactly like :meth:`render`'s alphas):

        * ``"alpha"``: every visible sample (equals ``render(...)[1]``);
        * ``"face"``: samples whose visible triangle belongs to the *face region*,
          the head without neck (SynthHead has no torso). NPGA reports its
          metrics on the face region; this is that region, exact, from the mesh.
          Every part counts (skin, hair, eyes, lids, ears, mouth interior) except
          the neck of the skin: a skin triangle is neck when *any* of its
          vertices is a neck vertex (rows below the head/neck boundary
          ``theta_n``, ``~_sk_head``), so the region ends exactly on that
          boundary curve (under the chin in front, at the nape behind);
        * ``"wrinkle"``: face samples where the expression wrinkles show in this
          frame, derived from the ground truth: the strength
          ``sum_k act_k |h_k|`` of the wrinkle activations
          (:func:`~npga.capture.synthetic.appearance.wrinkle_activations`) times
          the height maps of the skin's wrinkle texture, sampled at the sample's
          uv exactly as :func:`~npga.capture.synthetic.appearance.shade` does,
          must exceed ``wrinkle_threshold`` (metres). The default 1e-4 m is where
          a crease becomes visible: ``shade`` darkens the albedo by
          ``WRINKLE_DARKEN * |h|`` = 7% there (and tilts the normal). A fully
          active line is 2.4-9e-4 m deep at its centre (forehead 2.4-6e-4,
          nasolabial fold 9e-4) with a Gaussian cross-section, so the mask is the
          core of each crease, about 2-3 Gaussian widths across, not its faint
          tails (at 1e-4 a brow raise flags about 3% of the face region in a
          frontal view). The neutral expression (all activations 0), and any
          expression that drives no wrinkle map, gives an all-zero mask;
        * ``"mouth"``: samples whose visible triangle belongs to the mouth interior
          (teeth, tongue, mouth cavity), the region only open-mouth frames show.
        """
        from npga.capture.synthetic.appearance import sample_texture, wrinkle_activations
        from npga.capture.synthetic.meshrender import rasterize, resolve

        z = _check_code(z_exp, EXPRESSION_NAMES, "z_exp")
        u = _check_code(untracked, UNTRACKED_NAMES, "untracked")
        cameras = list(cameras)
        sizes = {(c.width, c.height) for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"render_regions needs cameras of one image size, got {sorted(sizes)}")
        V = self._vertices(z, u)[0]
        cull = self._face_culled()
        # face region per triangle: no neck vertex (skin vertices are 0..n_sk-1)
        neck_v = np.zeros(self.n_vertices, bool)
        neck_v[: self._topo.slices["skin"].stop] = ~self._sk_head
        face_tri = ~np.any(neck_v[self.faces], axis=1)
        # shade() takes a triangle's part from its first vertex
        skin_tri = self.part_of_vertex[self.faces[:, 0]] == PART["skin"]
        mouth_tri = np.isin(self.part_of_vertex[self.faces[:, 0]], [PART[n] for n in MOUTH_PARTS])
        act = wrinkle_activations(z)
        wr = self.textures()["skin"]["wrinkles"][..., 0] if np.any(act > 0) else None  # (Tv, Tu, K)
        out = {"alpha": [], "face": [], "wrinkle": [], "mouth": []}
        for cam in cameras:
            frags = rasterize(V, self.faces, cam, supersample, cull)
            vals = np.zeros((len(frags.face), 3), np.float32)
            face = face_tri[frags.face]
            vals[:, 0] = face
            vals[:, 2] = mouth_tri[frags.face]
            if wr is not None:
                sel = np.nonzero(face & skin_tri[frags.face])[0]
                if len(sel):
                    uv = np.einsum("nk,nkc->nc", frags.bary[sel], self.face_uv[frags.face[sel]])
                    h = sample_texture(wr, uv)  # (n, K) heights, as in shade()
                    strength = np.abs(h) @ act
                    vals[sel, 1] = strength > wrinkle_threshold
            img, a = resolve(frags, vals)
            out["alpha"].append(a)
            out["face"].append(img[..., 0])
            out["wrinkle"].append(img[..., 1])
            out["mouth"].append(img[..., 2])
        return {k: np.clip(np.stack(v), 0.0, 1.0).astype(np.float32) for k, v in out.items()}

    def frame_attributes(self, V: np.ndarray, z: np.ndarray) -> dict:
        """Per-vertex quantities shared by every camera of one frame."""
        from npga.capture.synthetic.meshrender import vertex_normals

        return {"vertices": V, "normals": vertex_normals(V, self.faces), "z": z,
                "tangents": self._skin_tangents(V)}

    def _skin_tangents(self, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """dP/du and dP/dv of the skin grid (metres per unit texture coordinate)."""
        sd = self._topo.dims["skin"]
        idx = sd["idx"]
        rows = idx.shape[0]
        P = V[idx]  # (rows, Nu, 3)
        Tu = (np.roll(P, -1, axis=1) - np.roll(P, 1, axis=1)) * (sd["Nu"] / 2.0)
        Tv = np.empty_like(P)
        Tv[1:-1] = (P[2:] - P[:-2]) * (rows / 2.0)
        Tv[0] = (P[1] - P[0]) * rows
        Tv[-1] = (P[-1] - P[-2]) * rows
        n = self._topo.slices["skin"].stop
        tu = np.zeros((n, 3))
        tv = np.zeros((n, 3))
        tu[idx.ravel()] = Tu.reshape(-1, 3)
        tv[idx.ravel()] = Tv.reshape(-1, 3)
        orig = idx[sd["i_m"] - 1, sd["slit_cols"]]
        tu[sd["copies"]] = tu[orig]
        tv[sd["copies"]] = tv[orig]
        return tu, tv

    @functools.cached_property
    def _face_culled_mask(self) -> np.ndarray:
        culled = np.isin(self.part_of_vertex[self.faces[:, 0]], [PART[p] for p in CULLED_PARTS])
        return culled

    def _face_culled(self) -> np.ndarray:
        return self._face_culled_mask


def _orient(topo: _Topology, identity: Identity) -> None:
    """Flip face groups so culled parts face outwards (the cavity inwards)."""
    head = SynthHead.__new__(SynthHead)
    head.identity = identity
    head.resolution = topo.resolution
    head._topo = topo
    head._setup_skin()
    head._setup_features()
    V = head._vertices(np.zeros(len(EXPRESSION_NAMES)), np.zeros(len(UNTRACKED_NAMES)))[0]
    f = topo.faces
    n = np.cross(V[f[:, 1]] - V[f[:, 0]], V[f[:, 2]] - V[f[:, 0]])
    cen = V[f].mean(1)
    for g, (part, how) in enumerate(topo.groups):
        if how is None:
            continue
        sel = topo.face_group == g
        if part in ("skin", "hair"):
            ref = np.stack([np.zeros(sel.sum()), np.clip(cen[sel, 1], -0.08, 0.04), np.full(sel.sum(), -0.01)], -1)
        elif part.startswith("eyelid"):
            ref = head.eye_centres["eye_" + part[-1]][None]
        else:
            ref = V[topo.slices[part]].mean(0)[None]
        score = np.einsum("fc,fc->f", n[sel], cen[sel] - ref)
        if (np.sum(score > 0) < np.sum(score < 0)) == (how == "out"):
            topo.faces[sel] = topo.faces[sel][:, ::-1]
    topo.face_uv = _face_uv(topo)
    topo.oriented = True


__all__ = [
    "CULLED_PARTS",
    "EXPRESSION_NAMES",
    "EXPRESSION_RANGES",
    "PART_NAMES",
    "UNTRACKED_NAMES",
    "head_pose",
    "UNTRACKED_RANGES",
    "Identity",
    "SynthHead",
    "clip_expression",
    "sample_expression",
    "sample_identity",
]
