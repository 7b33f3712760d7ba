"""SynthHead.render_regions: ground-truth face-region and wrinkle masks for evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from npga.capture.cameras import nersemble_rig
from npga.capture.synthetic import EXPRESSION_NAMES, UNTRACKED_NAMES
from npga.capture.synthetic.meshrender import rasterize, resolve

E, U = len(EXPRESSION_NAMES), len(UNTRACKED_NAMES)
FRONT_UPPER, FRONT_LOWER = 6, 12  # nersemble_rig indices: azimuth 0, above / below eye level


# the expression helper of the SynthHead tests (the head24 fixture is in conftest.py)
from test_synthetic_head import _z  # noqa: E402


def test_region_alpha_matches_render(head24):
    cams = nersemble_rig(44, 64)[::3]
    z = _z(jaw_open=0.7, smile=0.8, brow_raise=0.5)
    u = np.zeros(U)
    u[UNTRACKED_NAMES.index("head_yaw")] = 0.4
    u[UNTRACKED_NAMES.index("tongue_out")] = 0.5
    _, alphas = head24.render(cams, z, u, supersample=2)
    r = head24.render_regions(cams, z, u, supersample=2)
    assert set(r) == {"alpha", "face", "wrinkle", "mouth"}
    for v in r.values():
        assert v.shape == (len(cams), 64, 44) and v.dtype == np.float32
        assert v.min() >= 0.0 and v.max() <= 1.0
    np.testing.assert_allclose(r["alpha"], alphas, atol=1e-6)
    # supersample is honoured: coverage fractions are multiples of 1 / 3**2
    r3 = head24.render_regions(cams[:1], z, u, supersample=3)
    alpha3 = head24.render(cams[:1], z, u, supersample=3)[1]
    np.testing.assert_allclose(r3["alpha"], alpha3, atol=1e-6)
    np.testing.assert_allclose(r3["face"] * 9, np.round(r3["face"] * 9), atol=1e-4)


def test_face_region_excludes_the_neck(head24):
    cam = nersemble_rig(44, 64)[FRONT_LOWER]  # looks up at the chin: sees the neck
    r = head24.render_regions([cam])
    a, f = r["alpha"][0], r["face"][0]
    assert np.all(f <= a + 1e-6) and f.max() == 1.0
    neck_px = a - f > 0.5
    assert neck_px.sum() > 50  # the neck is covered but not face
    assert 0.1 < 1.0 - f.sum() / a.sum() < 0.6
    # Independent of the per-sample labels: a triangle projects inside the span of
    # its vertices, so rows below every face-region vertex show only neck and rows
    # above every neck vertex show no neck.
    sk_head = np.ones(head24.n_vertices, bool)
    sk_head[: head24.part_slices["skin"].stop] = head24._sk_head
    neck_tri = ~np.all(sk_head[head24.faces], axis=1)
    y = cam.project(head24.vertices())[0][:, 1]
    face_vs = np.unique(head24.faces[~neck_tri])
    neck_vs = np.unique(head24.faces[neck_tri])
    below = int(np.ceil(y[face_vs].max())) + 1
    above = int(np.floor(y[neck_vs].min()))
    assert below < cam.height and above > 0
    assert a[below:].max() > 0 and np.all(f[below:] == 0)
    assert a[:above].max() > 0 and np.all(f[:above] == a[:above])
    # the documented rule: a skin triangle with any neck vertex is neck
    frags = rasterize(head24.vertices(), head24.faces, cam, 2, head24._face_culled())
    lab = (~neck_tri[frags.face]).astype(np.float32)
    np.testing.assert_allclose(f, resolve(frags, np.stack([lab] * 3, 1))[0][..., 0], atol=1e-6)


def test_wrinkle_mask_follows_the_expression(head24):
    cams = nersemble_rig(88, 128)
    cam = cams[FRONT_UPPER]
    for z in (None, _z(jaw_open=1.0, pucker=1.0, blink_l=1.0)):  # no wrinkle activation
        r = head24.render_regions([cam], z)
        assert np.all(r["wrinkle"] == 0) and r["face"].max() > 0
    z = _z(brow_raise=1.0)
    r = head24.render_regions([cam], z)
    w, f = r["wrinkle"][0], r["face"][0]
    assert np.all(w <= f + 1e-6)
    assert 0.005 < w.sum() / f.sum() < 0.15
    # forehead lines: every flagged pixel lies above both eyes
    rows = np.nonzero(w.max(1) > 0)[0]
    eye_y = min(cam.project(c[None])[0][0, 1] for c in head24.eye_centres.values())
    assert rows.max() < eye_y
    # the mask marks where the wrinkle maps darken the ground-truth image
    tex = head24.textures()["skin"]
    saved = tex["wrinkles"].copy()
    try:
        img_on, _ = head24.render([cam], z)
        tex["wrinkles"][:] = 0
        img_off, _ = head24.render([cam], z)
    finally:
        tex["wrinkles"][:] = saved
    dark = (img_off - img_on)[0].mean(-1)
    inside, outside = dark[w == 1].mean(), dark[(f == 1) & (w == 0)].mean()
    assert inside > 0.01 and inside > 5 * outside
    # the threshold is a depth in metres: deeper asks for less, beyond the deepest line nothing
    assert head24.render_regions([cam], z, wrinkle_threshold=3e-4)["wrinkle"].sum() < w.sum()
    assert head24.render_regions([cam], z, wrinkle_threshold=1e-2)["wrinkle"].max() == 0


def test_render_regions_bad_input(head24):
    cams = nersemble_rig(44, 64)[:1] + nersemble_rig(88, 128)[1:2]
    with pytest.raises(ValueError, match="one image size"):
        head24.render_regions(cams)
    with pytest.raises(ValueError, match="z_exp"):
        head24.render_regions(cams[:1], np.zeros(E + 1))


def test_mouth_region_is_the_visible_mouth_interior(head24):
    """Open jaw, frontal camera: teeth and cavity show inside the face region; closed: nothing."""
    from npga.capture.synthetic.head import MOUTH_PARTS, PART

    cam = nersemble_rig(44, 64)[FRONT_UPPER]
    open_ = head24.render_regions([cam], _z(jaw_open=1.0))
    closed = head24.render_regions([cam])
    m, f = open_["mouth"][0], open_["face"][0]
    assert (m > 0.5).sum() >= 4 and np.all(m <= f + 1e-6)  # inside the face region
    assert closed["mouth"].max() == 0.0  # lips closed: the interior is hidden
    # the same pixels from an independent rendering: the mouth parts' vertices project there
    mouth_v = np.isin(head24.part_of_vertex, [PART[n] for n in MOUTH_PARTS])
    uv = cam.project(head24.vertices(_z(jaw_open=1.0))[mouth_v])[0]
    ys, xs = np.nonzero(m > 0.5)
    assert uv[:, 1].min() - 1 <= ys.min() and ys.max() <= uv[:, 1].max() + 1
    assert uv[:, 0].min() - 1 <= xs.min() and xs.max() <= uv[:, 0].max() + 1
