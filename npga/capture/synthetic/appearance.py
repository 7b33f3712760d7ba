"""SynthHead's appearance: procedural albedo, expression wrinkles and fixed lighting.

Textures are images over each part's (u, v) coordinates (``SynthHead.uv``), built
once per identity from seeded value noise:

* skin: tone with blotches, pores, freckles and moles, redness on cheeks and nose,
  lips with vertical lines, eyebrows made of strands, nostrils, a fuzzy hairline;
* hair: strands (noise stretched along the direction of growth);
* eyes: sclera, an iris of radial fibres with a limbus ring, the pupil;
* eyelids with lashes and a crease; ears, teeth (with gaps and gums), tongue and
  the dark mouth cavity.

Because the texture lives on the skin's *material* coordinates, it slides with the
skin (a smiling lip corner takes its lip colour with it).

Expression-dependent detail: five wrinkle height maps (forehead, frown lines,
crow's feet, nasolabial folds, nose bridge) are switched on by the matching
expression parameters (:func:`wrinkle_activations`). A wrinkle darkens the albedo
and tilts the shading normal (bump mapping with the skin grid's tangents), so it
appears only when the expression is on: information no expression-independent
colour can hold, which is what NPGA's per-Gaussian features and detail network
are for.

Lighting is fixed in the world: ambient + two directional lights (key and fill)
with Lambert diffuse and a Blinn-Phong specular term, so appearance depends on the
view direction.
"""

from __future__ import annotations

import numpy as np

from npga.capture.synthetic.head import (
    EXPRESSION_NAMES,
    PART,
    PART_NAMES,
    _g,
    _phi_of_u,
    _smoothstep,
    _theta_hairline,
    _theta_n,
)

# ----------------------------------------------------------------------------- lighting

AMBIENT = np.array([0.30, 0.30, 0.33])
LIGHTS = (  # (direction towards the light, colour)
    (np.array([0.45, 0.55, 0.85]), np.array([0.78, 0.74, 0.68])),
    (np.array([-0.75, 0.10, 0.55]), np.array([0.30, 0.32, 0.36])),
)
# Per part: (specular strength, shininess)
SPECULAR = {
    "skin": (0.10, 18.0),
    "hair": (0.12, 10.0),
    "eye_l": (0.9, 150.0),
    "eye_r": (0.9, 150.0),
    "eyelid_l": (0.10, 18.0),
    "eyelid_r": (0.10, 18.0),
    "ear_l": (0.06, 12.0),
    "ear_r": (0.06, 12.0),
    "teeth_upper": (0.25, 40.0),
    "teeth_lower": (0.25, 40.0),
    "tongue": (0.35, 30.0),
    "mouth_cavity": (0.05, 10.0),
}

WRINKLE_NAMES = ("forehead", "glabella", "crows_feet", "nasolabial", "nose")
BUMP_GAIN = 1.0
WRINKLE_DARKEN = 700.0  # albedo factor 1 + WRINKLE_DARKEN * height (height < 0 in a crease)


def wrinkle_activations(z_exp: np.ndarray) -> np.ndarray:
    """How strongly each wrinkle map (:data:`WRINKLE_NAMES`) shows for ``z_exp`` (K,)."""
    z = {n: float(z_exp[i]) for i, n in enumerate(EXPRESSION_NAMES)}
    a = np.array(
        [
            z["brow_raise"],
            z["brow_frown"],
            z["squint"] + 0.6 * z["smile"],
            z["smile"] + 0.3 * z["squint"] + 0.4 * z["nose_wrinkle"] + 0.3 * z["lip_stretch"],
            z["nose_wrinkle"] + 0.25 * z["brow_frown"],
        ]
    )
    return np.clip(a, 0.0, 1.0) ** 0.8


# ----------------------------------------------------------------------------- noise


def _hash(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic pseudo-random float in [0, 1) per integer lattice point."""
    h = (ix.astype(np.int64) * 374761393 + iy.astype(np.int64) * 668265263 + seed * 1442695041) & 0xFFFFFFFF
    h = (h ^ (h >> 13)) * 1274126177 & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).astype(np.float64) / float(0x1000000)


def value_noise(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 2D value noise in [0, 1] with unit lattice spacing."""
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    a = _hash(x0, y0, seed)
    b = _hash(x0 + 1, y0, seed)
    c = _hash(x0, y0 + 1, seed)
    d = _hash(x0 + 1, y0 + 1, seed)
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def fbm(x: np.ndarray, y: np.ndarray, seed: int, octaves: int = 4) -> np.ndarray:
    """Fractal sum of value noise, normalised to about [0, 1]."""
    total, amp, norm = 0.0, 1.0, 0.0
    for o in range(octaves):
        total = total + amp * value_noise(x * 2**o, y * 2**o, seed + 101 * o)
        norm += amp
        amp *= 0.5
    return total / norm


# ----------------------------------------------------------------------------- textures


def _texel_grid(Tv: int, Tu: int) -> tuple[np.ndarray, np.ndarray]:
    u = (np.arange(Tu) + 0.5) / Tu
    v = (np.arange(Tv) + 0.5) / Tv
    return np.meshgrid(u, v)


def _skin_textures(head) -> dict:
    idn = head.identity
    sd = head._topo.dims["skin"]
    Nu, Nh, Nn, i_m = sd["Nu"], sd["Nh"], sd["Nn"], sd["i_m"]
    Tu, Tv = 4 * Nu, 4 * (Nh + Nn)
    U, Vv = _texel_grid(Tv, Tu)
    phi0 = _phi_of_u(2 * np.pi * U - np.pi)
    tn = _theta_n(phi0)
    r = Vv * (Nh + Nn)
    th = np.minimum(r, Nh) / Nh * tn
    dm = (r - i_m) / Nh * tn
    g_mouth = _g((th - i_m / Nh * tn) / 0.25) * _g(phi0 / 0.5)
    ph = phi0 * (1.0 + (idn.mouth_width - 1.0) * g_mouth)
    aph = np.abs(ph)
    neck = r > Nh
    seed = idn.texture_seed % 100000
    X = ph * 0.09  # metres along the face, roughly
    Y = np.where(neck, 0.1 * tn + (r - Nh) / Nn * 0.2, th * 0.1)

    tone = np.asarray(idn.skin_tone)
    alb = np.broadcast_to(tone, U.shape + (3,)).copy()
    alb *= (0.93 + 0.14 * fbm(X / 0.015, Y / 0.015, seed + 1, 3))[..., None]
    # redness: cheeks, nose tip, around the mouth
    red = (
        0.5 * _g((th - head.th_eye - 0.35) / 0.12) * _g((aph - 0.5) / 0.18)
        + 0.6 * _g((th - head.th_nose_tip) / 0.08) * _g(ph / 0.12)
        + 0.2 * _g(dm / 0.15) * _g(ph / 0.4)
    ) * ~neck
    alb = alb * (1 - 0.18 * red[..., None]) + 0.18 * red[..., None] * tone * np.array([1.15, 0.62, 0.6])
    # pores: sparse dark dots, and a fine grain
    pores = value_noise(X / 0.0009, Y / 0.0009, seed + 2)
    alb *= (1.0 - 0.10 * _smoothstep(0.72, 0.95, pores) - 0.03 * value_noise(X / 0.0004, Y / 0.0004, seed + 3))[..., None]
    # under-eye shadow
    alb *= (1 - 0.10 * _g((th - head.th_eye - 0.1) / 0.05) * _g((aph - head.ph_eye) / 0.12))[..., None]
    # freckles on nose and cheeks
    fr_region = _g((th - head.th_eye - 0.25) / 0.2) * _g(ph / 0.7) * ~neck
    fr = _smoothstep(1.0 - 0.22 * idn.freckles, 1.02 - 0.22 * idn.freckles, value_noise(X / 0.0025, Y / 0.0025, seed + 4))
    fr = fr * fr_region * (idn.freckles > 0.02)
    alb = alb * (1 - 0.35 * fr[..., None]) + 0.35 * fr[..., None] * tone * np.array([0.75, 0.5, 0.35])
    # a few moles
    rng = np.random.default_rng(seed + 5)
    for _ in range(3):
        mt, mp = rng.uniform(head.th_eye - 0.3, head.th_mouth + 0.3), rng.uniform(-1.0, 1.0)
        m = _g((th - mt) / 0.012) * _g((ph - mp) / 0.012) * ~neck
        alb *= (1 - 0.55 * m)[..., None]
    # eyebrows: an arched band of strands
    ap = (aph - 0.30) / 0.30
    th_b = head.th_brow - 0.02 + 0.05 * ap**2
    band = _g((th - th_b) / (0.026 * idn.brow_thickness * (1.0 - 0.4 * np.clip(ap, 0, 1))))
    band *= _smoothstep(0.05, 0.1, aph) * _smoothstep(0.66, 0.55, aph)
    strands = value_noise((X + 0.3 * Y) / 0.004, (Y - 0.25 * np.sign(ph) * X) / 0.00035, seed + 6)
    brow = np.clip(band * (0.45 + 0.8 * strands), 0, 1)[..., None]
    hair_col = np.asarray(idn.hair_color)
    alb = alb * (1 - 0.85 * brow) + 0.85 * brow * (0.8 * hair_col)
    # lips: vermilion with vertical lines; a dark line where the lips meet
    pc = head.mouth_corner_phi
    q = np.clip(1 - (ph / pc) ** 2, 0, 1)
    top = -0.075 * q**0.6 + 0.010 * _g((aph - 0.07) / 0.035) * q
    bot = 0.085 * q**0.5
    lips = _smoothstep(top - 0.008, top + 0.004, dm) * _smoothstep(bot + 0.008, bot - 0.004, dm) * (aph < pc)
    lines = value_noise(X / 0.0006, Y / 0.004, seed + 7)
    lip_col = np.asarray(idn.lip_color)[None, None] * (0.9 + 0.18 * lines)[..., None]
    alb = alb * (1 - lips[..., None]) + lips[..., None] * lip_col
    alb *= (1 - 0.6 * _g(dm / 0.012) * (aph < pc))[..., None]
    # nostrils
    nos = _g((th - head.th_nose_tip - 0.07) / 0.018) * _g((aph - 0.06 * idn.nose_width) / 0.028)
    alb *= (1 - 0.85 * nos)[..., None]
    # a fuzzy hairline: short hairs below the hair cap's edge
    hl = _theta_hairline(ph, idn.hairline)
    fuzz = _smoothstep(hl + 0.06, hl - 0.01, th) * (0.4 + 0.6 * value_noise(X / 0.0006, Y / 0.003, seed + 8))
    fuzz *= ~neck
    alb = alb * (1 - 0.7 * fuzz[..., None]) + 0.7 * fuzz[..., None] * hair_col
    alb *= np.where(neck, 0.92, 1.0)[..., None]

    spec = 1.0 + 0.6 * _g((th - head.th_nose_tip + 0.1) / 0.25) * _g(ph / 0.15) + 2.0 * lips
    spec -= 0.5 * neck

    # wrinkle height maps (metres, negative in the crease)
    H = np.zeros((len(WRINKLE_NAMES),) + U.shape)
    wob = value_noise(X / 0.01, Y / 0.01, seed + 9) - 0.5
    for k in range(4):  # forehead: broken horizontal lines
        line = head.th_brow - 0.12 - 0.085 * k + 0.012 * np.sin(6 * ph + k) + 0.02 * wob
        strength = _smoothstep(0.3, 0.6, value_noise(X / 0.02, np.full_like(X, k), seed + 10))
        H[0] -= 0.0006 * _g((th - line) / 0.012) * _g(ph / (0.5 - 0.05 * k)) * (0.4 + 0.6 * strength)
    vert = _g((aph - 0.05) / 0.010) * _smoothstep(head.th_brow - 0.12, head.th_brow - 0.04, th)
    vert *= _smoothstep(head.th_eye + 0.02, head.th_eye - 0.05, th)
    H[1] -= 0.0007 * vert
    H[1] -= 0.0004 * _g((th - head.th_nose_root - 0.03) / 0.012) * _g(ph / 0.07)
    # crow's feet: lines fanning out from the outer eye corner, and under-eye lines
    c_th, c_ph = head.th_eye + 0.01, head.ph_eye + 0.21
    dy, dx = th - c_th, aph - c_ph
    ang = np.arctan2(dy, dx)
    dist = np.hypot(dx, dy)
    for a0 in (-0.55, -0.15, 0.25, 0.6):
        off = dist * np.sin(ang - a0)
        H[2] -= 0.0005 * _g(off / 0.008) * _smoothstep(0.02, 0.05, dist) * _smoothstep(0.16, 0.09, dist) * (
            np.cos(ang - a0) > 0
        )
    und = head.th_eye + 0.14 + 0.5 * (aph - head.ph_eye) ** 2
    H[2] -= 0.0004 * _g((th - und) / 0.012) * _g((aph - head.ph_eye) / 0.11)
    H[3] -= 0.0009 * _naso(head, th, aph, width=0.018)
    for k in range(3):
        H[4] -= 0.0005 * _g((th - head.th_eye - 0.03 - 0.045 * k) / 0.011) * _g(ph / 0.085)
    H *= ~neck
    Hu = np.gradient(H, axis=2) * Tu
    Hv = np.gradient(H, axis=1) * Tv
    wr = np.ascontiguousarray(np.stack([H, Hu, Hv], -1).transpose(1, 2, 0, 3), dtype=np.float32)
    return {"albedo": np.clip(alb, 0, 1).astype(np.float32), "spec": spec.astype(np.float32), "wrinkles": wr}


def _naso(head, th, aph, width: float):
    t = np.clip((th - head.th_nose_tip) / (head.th_mouth + 0.1 - head.th_nose_tip), 0, 1)
    line = 0.17 + 0.16 * t
    inside = _smoothstep(head.th_nose_tip - 0.03, head.th_nose_tip + 0.02, th) * _smoothstep(
        head.th_mouth + 0.16, head.th_mouth + 0.08, th
    )
    return _g((aph - line) / width) * inside


def _hair_texture(head) -> dict:
    idn = head.identity
    dh = head._topo.dims["hair"]
    Tu, Tv = 4 * dh["Nu"], 8 * dh["Nhr"]
    U, Vv = _texel_grid(Tv, Tu)
    seed = idn.texture_seed % 100000 + 20
    Y = Vv * 0.2
    X = U * 2 * np.pi * 0.09 + 0.003 * np.sin(Y * 90)
    strands = 0.6 * fbm(X / 0.0007, Y / 0.012, seed, 3) + 0.4 * value_noise(X / 0.0003, Y / 0.02, seed + 1)
    col = np.asarray(idn.hair_color) * (0.45 + 1.0 * strands)[..., None]
    # sparse near the hairline: the skin shows through
    edge = _smoothstep(0.8, 1.0, Vv)
    skin = np.asarray(idn.skin_tone)
    mix = np.clip(edge * (1.2 - strands), 0, 1)[..., None] * 0.7
    col = col * (1 - mix) + mix * skin
    return {"albedo": np.clip(col, 0, 1).astype(np.float32), "spec": (0.6 + 0.8 * strands).astype(np.float32)}


def _eye_texture(head) -> dict:
    idn = head.identity
    U, Vv = _texel_grid(96, 192)
    seed = idn.texture_seed % 100000 + 30
    rho = Vv * 2.0
    om = U * 2 * np.pi
    sclera = np.array([0.90, 0.88, 0.84]) * (1 - 0.25 * _smoothstep(1.0, 1.9, rho))[..., None]
    veins = _smoothstep(0.78, 0.9, value_noise(om * 12, rho * 40, seed)) * _smoothstep(0.8, 1.4, rho)
    sclera = sclera * (1 - 0.3 * veins[..., None]) + 0.3 * veins[..., None] * np.array([0.8, 0.3, 0.3])
    fib = fbm(om * 60 / (2 * np.pi) * 2, rho * 6, seed + 1, 3)
    iris = np.asarray(idn.iris_color) * (0.55 + 0.9 * fib)[..., None]
    iris *= (1 + 0.35 * _g((rho - 0.28) / 0.04))[..., None]  # collarette
    iris *= (1 - 0.6 * _smoothstep(0.40, 0.52, rho))[..., None]  # dark limbus ring
    ri, rp = 0.52, 0.19
    t_iris = _smoothstep(ri + 0.02, ri - 0.02, rho)[..., None]
    t_pupil = _smoothstep(rp + 0.015, rp - 0.015, rho)[..., None]
    col = sclera * (1 - t_iris) + iris * t_iris
    col = col * (1 - t_pupil) + 0.02 * t_pupil
    return {"albedo": np.clip(col, 0, 1).astype(np.float32), "spec": np.ones(U.shape, np.float32)}


def _lid_texture(head) -> dict:
    idn = head.identity
    U, Vv = _texel_grid(64, 64)
    seed = idn.texture_seed % 100000 + 40
    nk = head._topo.dims["eyelid_l"]["nk"]
    tone = np.asarray(idn.skin_tone) * np.array([0.95, 0.86, 0.86])
    col = np.broadcast_to(tone, U.shape + (3,)).copy()
    upper = Vv < 0.5
    k = np.where(upper, Vv / 0.5, (Vv - 0.5) / 0.5) * (nk + 1)  # row coordinate from the margin
    lash_n = value_noise(U * 90, k * 2, seed)
    lash_up = upper * _smoothstep(1.6, 0.6, k) * (0.6 + 0.4 * lash_n)
    lash_lo = ~upper * _smoothstep(1.2, 0.4, k) * (0.3 + 0.3 * lash_n)
    lash = (lash_up + lash_lo)[..., None]
    col = col * (1 - lash) + lash * 0.25 * np.asarray(idn.hair_color)
    crease = upper * _g((k - 0.45 * (nk + 1)) / 0.5)
    col *= (1 - 0.25 * crease)[..., None]
    col *= (1 - 0.15 * (k > 0.7 * (nk + 1)))[..., None]
    return {"albedo": np.clip(col, 0, 1).astype(np.float32), "spec": np.ones(U.shape, np.float32)}


def _ear_texture(head) -> dict:
    idn = head.identity
    U, Vv = _texel_grid(32, 64)
    tone = np.asarray(idn.skin_tone) * np.array([1.0, 0.9, 0.9])
    shade_ = 0.65 + 0.35 * _smoothstep(0.2, 0.7, Vv) - 0.1 * _g((Vv - 0.75) / 0.06)
    col = tone * shade_[..., None]
    return {"albedo": np.clip(col, 0, 1).astype(np.float32), "spec": np.ones(U.shape, np.float32)}


def _teeth_texture(head, upper: bool) -> dict:
    U, Vv = _texel_grid(128, 32)
    psi = (Vv - 0.5) * 2.6
    col = np.broadcast_to(np.array([0.92, 0.88, 0.78]), U.shape + (3,)).copy()
    gaps = np.zeros_like(psi)
    for b in (0.0, 0.16, 0.30, 0.46, 0.62, 0.80, 1.0, 1.2):
        gaps = np.maximum(gaps, _g((np.abs(psi) - b) / 0.02))
    col *= (1 - 0.55 * gaps)[..., None]
    col *= (1 - 0.6 * np.abs(psi) / 1.3)[..., None]
    sy = np.sin(2 * np.pi * U)
    gum = _smoothstep(0.55, 0.8, sy if upper else -sy)[..., None]
    col = col * (1 - gum) + gum * np.array([0.72, 0.36, 0.36]) * (1 - 0.5 * np.abs(psi) / 1.3)[..., None]
    return {"albedo": np.clip(col, 0, 1).astype(np.float32), "spec": np.ones(U.shape, np.float32)}


def _tongue_texture(head) -> dict:
    seed = head.identity.texture_seed % 100000 + 50
    U, Vv = _texel_grid(64, 64)
    pap = value_noise(U * 80, Vv * 60, seed)
    col = np.array([0.70, 0.34, 0.34]) * (0.8 + 0.3 * pap)[..., None]
    col *= (0.45 + 0.55 * _smoothstep(0.0, 0.7, Vv))[..., None]
    groove = _g(np.minimum(np.abs(U - 0.25), np.abs(U - 0.25 + 1)) / 0.02)
    col *= (1 - 0.25 * groove)[..., None]
    return {"albedo": np.clip(col, 0, 1).astype(np.float32), "spec": np.ones(U.shape, np.float32)}


def _cavity_texture(head) -> dict:
    U, Vv = _texel_grid(32, 32)
    col = np.array([0.40, 0.12, 0.12]) * (0.12 + 0.88 * Vv**2)[..., None]
    return {"albedo": col.astype(np.float32), "spec": np.ones(U.shape, np.float32)}


def build_textures(head) -> dict[str, dict]:
    """All texture maps of ``head``'s identity: ``{part: {"albedo", "spec"[, "wrinkles"]}}``.

    albedo (Tv, Tu, 3) float32 linear RGB; spec (Tv, Tu) multiplies the part's
    specular strength; the skin also has wrinkles (Tv, Tu, K, 3): height (metres)
    and its derivatives along u and v.
    """
    skin = _skin_textures(head)
    eye = _eye_texture(head)
    lid = _lid_texture(head)
    ear = _ear_texture(head)
    out = {
        "skin": skin,
        "hair": _hair_texture(head),
        "eye_l": eye,
        "eye_r": eye,
        "eyelid_l": lid,
        "eyelid_r": lid,
        "ear_l": ear,
        "ear_r": ear,
        "teeth_upper": _teeth_texture(head, True),
        "teeth_lower": _teeth_texture(head, False),
        "tongue": _tongue_texture(head),
        "mouth_cavity": _cavity_texture(head),
    }
    for t in out.values():  # albedo and specular packed for a single lookup
        t["rgbs"] = np.ascontiguousarray(np.concatenate([t["albedo"], t["spec"][..., None]], -1))
    return out


# ----------------------------------------------------------------------------- shading


def sample_texture(tex: np.ndarray, uv: np.ndarray, wrap_u: bool = True) -> np.ndarray:
    """Bilinear lookup of ``tex`` (Tv, Tu, ...) at uv (N, 2); u wraps, v clamps."""
    Tv, Tu = tex.shape[:2]
    x = uv[:, 0] * Tu - 0.5
    y = np.clip(uv[:, 1] * Tv - 0.5, 0, Tv - 1)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    if wrap_u:
        xa, xb = x0 % Tu, (x0 + 1) % Tu
    else:
        xa, xb = np.clip(x0, 0, Tu - 1), np.clip(x0 + 1, 0, Tu - 1)
    ya, yb = y0, np.minimum(y0 + 1, Tv - 1)
    flat = tex.reshape(Tv, Tu, -1)
    out = (flat[ya, xa] * (1 - fx) + flat[ya, xb] * fx) * (1 - fy) + (flat[yb, xa] * (1 - fx) + flat[yb, xb] * fx) * fy
    return out.reshape((len(uv),) + tex.shape[2:])


def shade(head, frame: dict, frags, camera) -> np.ndarray:
    """Colour (N, 3) float32 of every covered sample of ``frags``.

    frame: :meth:`SynthHead.frame_attributes` (vertices, normals, z, tangents).
    """
    N = len(frags.face)
    if N == 0:
        return np.zeros((0, 3), np.float32)
    tex = head.textures()
    faces = head.faces
    tri = faces[frags.face]  # (N, 3)
    bary = frags.bary

    def interp(values: np.ndarray) -> np.ndarray:
        return np.einsum("nk,nkc->nc", bary, values)

    pos = interp(frame["vertices"][tri])
    nrm = interp(frame["normals"][tri])
    uv = interp(head.face_uv[frags.face])
    part = head.part_of_vertex[tri[:, 0]]
    view = camera.center[None] - pos
    view /= np.linalg.norm(view, axis=1, keepdims=True)

    albedo = np.zeros((N, 3))
    ks = np.zeros(N)
    shin = np.ones(N)
    act = wrinkle_activations(frame["z"])
    for name in PART_NAMES:
        sel = np.nonzero(part == PART[name])[0]
        if len(sel) == 0:
            continue
        t = tex[name]
        wrap = name not in ("eyelid_l", "eyelid_r")
        rgbs = sample_texture(t["rgbs"], uv[sel], wrap)
        albedo[sel] = rgbs[:, :3]
        s0, n0 = SPECULAR[name]
        ks[sel] = s0 * rgbs[:, 3]
        shin[sel] = n0
        if name == "skin" and np.any(act > 0):
            w = sample_texture(t["wrinkles"], uv[sel])  # (n, K, 3)
            h = np.einsum("nkc,k->nc", w, act)
            albedo[sel] *= np.clip(1.0 + WRINKLE_DARKEN * h[:, :1], 0.35, 1.0)
            tu_v, tv_v = frame["tangents"]
            Tu = np.einsum("nk,nkc->nc", bary[sel], tu_v[tri[sel]])
            Tv = np.einsum("nk,nkc->nc", bary[sel], tv_v[tri[sel]])
            gu = Tu / np.maximum(np.einsum("nc,nc->n", Tu, Tu), 1e-12)[:, None]
            gv = Tv / np.maximum(np.einsum("nc,nc->n", Tv, Tv), 1e-12)[:, None]
            grad = h[:, 1:2] * gu + h[:, 2:3] * gv
            nrm[sel] = nrm[sel] - BUMP_GAIN * grad
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    # two-sided: shade the side that faces the camera
    nrm *= np.where(np.einsum("nc,nc->n", nrm, view) < 0, -1.0, 1.0)[:, None]

    light = np.broadcast_to(AMBIENT, (N, 3)).copy()
    spec = np.zeros((N, 3))
    for d, c in LIGHTS:
        L = d / np.linalg.norm(d)
        ndl = nrm @ L
        light += np.clip(ndl, 0, None)[:, None] * c
        h = view + L
        h /= np.linalg.norm(h, axis=1, keepdims=True)
        ndh = np.clip(np.einsum("nc,nc->n", nrm, h), 0, None)
        spec += ((ndl > 0) * ks * ndh**shin)[:, None] * c
    col = albedo * light + spec
    return np.clip(col, 0.0, 1.0).astype(np.float32)


__all__ = [
    "AMBIENT",
    "LIGHTS",
    "WRINKLE_NAMES",
    "build_textures",
    "fbm",
    "sample_texture",
    "shade",
    "value_noise",
    "wrinkle_activations",
]
