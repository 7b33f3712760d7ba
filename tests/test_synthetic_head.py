"""SynthHead: determinism, fixed topology, rigid jaw, non-linearity, rasterizer, calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from npga.capture.cameras import Camera, look_at, nersemble_rig
from npga.capture.synthetic import (
    EXPRESSION_NAMES,
    EXPRESSION_RANGES,
    PART_NAMES,
    UNTRACKED_NAMES,
    UNTRACKED_RANGES,
    Identity,
    SynthHead,
    rasterize,
    render_mesh,
    sample_expression,
    sample_identity,
    head_pose,
    sequence_trajectory,
)
from npga.capture.synthetic.meshrender import interpolate, resolve

E, U = len(EXPRESSION_NAMES), len(UNTRACKED_NAMES)


def _z(**kw) -> np.ndarray:
    z = np.zeros(E)
    for k, v in kw.items():
        z[EXPRESSION_NAMES.index(k)] = v
    return z




# ----------------------------------------------------------------------------- identity / codes


def test_identities_deterministic_and_distinct():
    assert sample_identity(3, seed=1) == sample_identity(3, seed=1)
    ids = [sample_identity(p) for p in range(8)]
    assert len({json.dumps(i.to_dict(), sort_keys=True) for i in ids}) == 8
    assert sample_identity(3, seed=0) != sample_identity(3, seed=1)


def test_identity_dict_roundtrip_and_errors():
    idn = sample_identity(5)
    d = json.loads(json.dumps(idn.to_dict()))
    assert Identity.from_dict(d) == idn
    with pytest.raises(ValueError, match="unknown identity parameter"):
        Identity.from_dict({**d, "nose_size": 1.0})
    with pytest.raises(ValueError, match="skin_tone"):
        Identity.from_dict({**d, "skin_tone": [0.5, 0.5]})


def test_sample_expression_in_range():
    rng = np.random.default_rng(0)
    Z = np.stack([sample_expression(rng) for _ in range(100)])
    lo = np.array([EXPRESSION_RANGES[n][0] for n in EXPRESSION_NAMES])
    hi = np.array([EXPRESSION_RANGES[n][1] for n in EXPRESSION_NAMES])
    assert Z.shape == (100, E) and np.all(Z >= lo) and np.all(Z <= hi)
    assert np.all(np.abs(Z).max(0) > 0.5)  # every parameter gets exercised


def test_bad_codes_raise(head24):
    with pytest.raises(ValueError, match="z_exp"):
        head24.vertices(np.zeros(E + 1))
    with pytest.raises(ValueError, match="untracked"):
        head24.vertices(None, np.full(U, np.nan))


# ----------------------------------------------------------------------------- geometry


def test_same_seed_same_vertices_and_images():
    cams = nersemble_rig(22, 32)[:3]
    z, u = sequence_trajectory("FREE", 5, seed=2)
    a = SynthHead(sample_identity(2, seed=4), 24)
    b = SynthHead(sample_identity(2, seed=4), 24)
    np.testing.assert_array_equal(a.vertices(z[2], u[2]), b.vertices(z[2], u[2]))
    ia, aa = a.render(cams, z[2], u[2], supersample=2)
    ib, ab = b.render(cams, z[2], u[2], supersample=2)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(aa, ab)


def test_topology_fixed_across_identities_and_expressions():
    heads = [SynthHead(sample_identity(p), 24) for p in (0, 3, 6)]
    f0 = heads[0].faces
    for h in heads[1:]:
        np.testing.assert_array_equal(h.faces, f0)
        np.testing.assert_array_equal(h.part_of_vertex, heads[0].part_of_vertex)
        assert h.n_vertices == heads[0].n_vertices
    h = heads[1]
    rng = np.random.default_rng(1)
    V0 = h.vertices()
    for _ in range(3):
        V = h.vertices(sample_expression(rng), rng.uniform(-1, 1, U) * [1, 1, 0, 1, 1, 1, 1])
        assert V.shape == V0.shape and np.all(np.isfinite(V))
    assert f0.dtype == np.int64 and f0.min() >= 0 and f0.max() < h.n_vertices
    assert set(np.unique(h.part_of_vertex)) == set(range(len(PART_NAMES)))
    # a head of the right size around the origin, face towards +z
    skin = V0[h.part_of_vertex == PART_NAMES.index("skin")]
    head_part = skin[skin[:, 1] > -0.11]
    height = head_part[:, 1].max() - head_part[:, 1].min()
    assert 0.2 <= height <= 0.25, height
    assert np.linalg.norm(head_part.mean(0)) < 0.05
    assert skin[:, 2].max() > 0.09 and skin[:, 2].max() > -skin[:, 2].min() * 0.8


def test_resolution_changes_density_not_layout():
    small, large = SynthHead(Identity(), 16), SynthHead(Identity(), 32)
    assert large.n_vertices > 2 * small.n_vertices
    for h in (small, large):
        V = h.vertices()
        eye = V[h.part_of_vertex == PART_NAMES.index("eye_l")]
        assert eye[:, 0].mean() > 0.02  # subject's left eye at +x


def test_jaw_rigid_part_keeps_distances(head24):
    mask = head24.jaw_rigid_mask
    parts = set(head24.part_of_vertex[mask])
    assert {PART_NAMES.index("teeth_lower"), PART_NAMES.index("skin")} <= parts
    idx = np.nonzero(mask)[0]
    V0 = head24.vertices()[idx]
    for z in (_z(jaw_open=1.0), _z(jaw_open=0.4, jaw_side=-1.0)):
        V1 = head24.vertices(z)[idx]
        assert np.abs(V1 - V0).max() > 0.01  # the jaw did move
        d0 = np.linalg.norm(V0[:, None] - V0[None], axis=-1)
        d1 = np.linalg.norm(V1[:, None] - V1[None], axis=-1)
        assert np.abs(d1 - d0).max() < 1e-6  # metres
    # the upper teeth do not move with the jaw
    up = head24.part_of_vertex == PART_NAMES.index("teeth_upper")
    np.testing.assert_allclose(head24.vertices(_z(jaw_open=1.0))[up], head24.vertices()[up])


def test_untracked_effects_move_only_their_parts(head24):
    V0 = head24.vertices()
    p = head24.part_of_vertex
    u = np.zeros(U)
    u[UNTRACKED_NAMES.index("gaze_yaw")] = 1.0
    moved = np.linalg.norm(head24.vertices(None, u) - V0, axis=1) > 1e-9
    assert set(np.unique(p[moved])) == {PART_NAMES.index("eye_l"), PART_NAMES.index("eye_r")}
    u = np.zeros(U)
    u[UNTRACKED_NAMES.index("tongue_out")] = 1.0
    moved = np.linalg.norm(head24.vertices(None, u) - V0, axis=1) > 1e-9
    assert set(np.unique(p[moved])) == {PART_NAMES.index("tongue")}
    u = np.zeros(U)
    u[UNTRACKED_NAMES.index("head_yaw")] = 1.0
    d = np.linalg.norm(head24.vertices(None, u) - V0, axis=1)
    assert d[p == PART_NAMES.index("hair")].mean() > 0.01  # the head turns ...
    assert d.min() < 1e-9  # ... on a neck whose base stays put


def _pca_components_needed(D: np.ndarray, tol: float) -> tuple[int, float, np.ndarray]:
    n = D.shape[0]
    X = D.reshape(n, -1)
    X = X - X.mean(0)
    s2 = np.clip(np.sort(np.linalg.eigvalsh(X @ X.T))[::-1], 0, None)  # squared singular values
    nv = D.shape[1]
    rms = np.sqrt(np.cumsum(s2[::-1])[::-1] / (n * nv))  # rms[k]: error with k components
    rms = np.append(rms, 0.0)
    return int(np.argmax(rms < tol)), float(rms[E]), rms


def test_expressions_are_nonlinear():
    """PCA of 200 random expressions needs more components than E for 0.1 mm RMS.

    RMS = sqrt(mean over samples and ALL vertices of the squared 3D error). The
    control, a linear blendshape model (each parameter's finite-difference offset
    at neutral, combined linearly), needs at most E components: so the test can
    tell linear from non-linear.
    """
    h = SynthHead(sample_identity(0), 48)
    rng = np.random.default_rng(0)
    Z = np.stack([sample_expression(rng) for _ in range(200)])
    V0 = h.vertices()
    D = np.stack([h.vertices(z) - V0 for z in Z])
    need, rms_at_e, rms = _pca_components_needed(D, 1e-4)
    print(
        f"\nnon-linearity: E = {E} parameters; PCA needs {need} components for 0.1 mm RMS; "
        f"RMS with E components = {rms_at_e * 1e3:.3f} mm; with 2E = {rms[2 * E] * 1e3:.4f} mm; "
        f"total offset RMS = {rms[0] * 1e3:.2f} mm"
    )
    assert need > E
    assert rms_at_e > 1e-4
    # control: a linear blendshape model of the same head is captured by <= E components
    B = np.stack([(h.vertices(_z(**{n: 1e-3})) - V0) / 1e-3 for n in EXPRESSION_NAMES])
    D_lin = np.einsum("se,evc->svc", Z, B)
    need_lin, _, _ = _pca_components_needed(D_lin, 1e-4)
    assert need_lin <= E


def test_no_folds_at_expression_extremes(head24):
    """No skin triangle turns over at any single parameter's extreme."""
    f = head24.faces
    skin = head24.part_of_vertex[f[:, 0]] == PART_NAMES.index("skin")

    def normals(V):
        return np.cross(V[f[:, 1]] - V[f[:, 0]], V[f[:, 2]] - V[f[:, 0]])

    n0 = normals(head24.vertices())
    for i, name in enumerate(EXPRESSION_NAMES):
        for val in EXPRESSION_RANGES[name]:
            if val == 0:
                continue
            z = np.zeros(E)
            z[i] = val
            flipped = np.einsum("fc,fc->f", n0, normals(head24.vertices(z))) < 0
            assert not np.any(flipped & skin), f"{name}={val} folds {np.sum(flipped & skin)} faces"


# ----------------------------------------------------------------------------- rasterizer


def _ortho_cam(width=16, height=16, f=1000.0, dist=10.0) -> Camera:
    """A camera on +z looking at the origin: x right, y down in the image."""
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    return Camera("t", look_at(np.array([0, 0, dist]), np.zeros(3)), K, width, height)


def _pix_to_world(cam: Camera, x: float, y: float, z_world: float = 0.0) -> np.ndarray:
    """World point on the plane z = z_world that projects to pixel (x, y)."""
    d = cam.center[2] - z_world
    return np.array([(x - cam.K[0, 2]) * d / cam.K[0, 0], -(y - cam.K[1, 2]) * d / cam.K[1, 1], z_world])


def test_single_triangle_coverage_and_edges():
    cam = _ortho_cam(16, 16)
    # a triangle whose vertical edge lies exactly on x = 8 (a pixel boundary) ...
    tri = np.stack([_pix_to_world(cam, 8, 2), _pix_to_world(cam, 8, 14), _pix_to_world(cam, 14, 14)])
    _, alpha = render_mesh(tri, np.array([[0, 1, 2]]), [cam], supersample=4, shade=False)
    a = alpha[0]
    assert np.all(a[:, :8] == 0)
    xy = cam.project(tri)[0]
    area = 0.5 * abs((xy[1, 0] - xy[0, 0]) * (xy[2, 1] - xy[0, 1]) - (xy[2, 0] - xy[0, 0]) * (xy[1, 1] - xy[0, 1]))
    assert abs(a.sum() - area) / area < 0.03
    # ... and an edge through pixel centres (x = 4.5) covers half of those pixels
    tri2 = np.stack([_pix_to_world(cam, 4.5, -20), _pix_to_world(cam, 4.5, 40), _pix_to_world(cam, 40, 10)])
    _, alpha2 = render_mesh(tri2, np.array([[0, 1, 2]]), [cam], supersample=4, shade=False)
    np.testing.assert_allclose(alpha2[0][:, 4], 0.5, atol=1e-6)
    assert np.all(alpha2[0][:, 5:] == 1.0) and np.all(alpha2[0][:, :4] == 0.0)


def test_front_triangle_wins_regardless_of_order():
    cam = _ortho_cam(16, 16)
    near = np.stack([_pix_to_world(cam, x, y, 1.0) for x, y in ((0, 0), (16, 0), (0, 16))])
    far = np.stack([_pix_to_world(cam, x, y, -1.0) for x, y in ((0, 0), (16, 0), (16, 16))])
    V = np.concatenate([near, far])
    cols = np.array([[1, 0, 0]] * 3 + [[0, 0, 1]] * 3, float)
    for faces in (np.array([[0, 1, 2], [3, 4, 5]]), np.array([[3, 4, 5], [0, 1, 2]])):
        img, alpha = render_mesh(V, faces, [cam], vertex_colors=cols, supersample=2, shade=False)
        img = img[0]
        assert np.all(img[2, 10] == [1, 0, 0])  # both cover (row 2, col 10): red is in front
        assert np.all(img[13, 14] == [0, 0, 1])  # only the far one covers this pixel
        assert alpha[0][2, 10] == 1.0 and alpha[0][13, 14] == 1.0


def test_perspective_correct_interpolation():
    """Interpolated world positions on a slanted quad lie on the camera rays."""
    K = np.array([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]])
    cam = Camera("p", look_at(np.array([0.0, 0.0, 2.0]), np.zeros(3)), K, 32, 32)
    quad = np.array([[-1.0, -1.0, -1.5], [1.0, -1.0, -1.5], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    frags = rasterize(quad, faces, cam, supersample=1)
    assert len(frags.pixel) > 200
    P = interpolate(frags, faces, quad)
    uv, depth = cam.project(P)
    x = frags.pixel % frags.width + 0.5
    y = frags.pixel // frags.width + 0.5
    np.testing.assert_allclose(uv[:, 0], x, atol=1e-6)
    np.testing.assert_allclose(uv[:, 1], y, atol=1e-6)
    np.testing.assert_allclose(depth, frags.depth, atol=1e-9)


def test_resolve_is_premultiplied():
    cam = _ortho_cam(8, 8)
    tri = np.stack([_pix_to_world(cam, 4.5, -20), _pix_to_world(cam, 4.5, 40), _pix_to_world(cam, 40, 10)])
    frags = rasterize(tri, np.array([[0, 1, 2]]), cam, supersample=4)
    img, alpha = resolve(frags, np.full((len(frags.pixel), 3), 0.8, np.float32))
    np.testing.assert_allclose(img[..., 1], 0.8 * alpha, atol=1e-6)


# ----------------------------------------------------------------------------- rendering


def test_render_shapes_and_calibration(head24):
    """Visible GT vertices project inside the rendered alpha (what A2 checks on files).

    Visible: the vertex normal faces the camera and no surface lies in front of it
    (depth test against the rendered depth). A vertex on the silhouette may fall in
    a pixel none of whose samples are covered, so "inside" allows one pixel of
    slack (alpha dilated by 3 x 3); a calibration error moves vertices by far more.
    """
    cams = nersemble_rig(44, 64)[::3]
    z, u = sequence_trajectory("EXP-8-jaw-1", 4)
    images, alphas, depth = head24.render(cams, z[2], u[2], supersample=2, return_depth=True)
    assert images.shape == (len(cams), 64, 44, 3) and alphas.shape == (len(cams), 64, 44)
    assert images.dtype == np.float32 and alphas.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1 and 0 <= alphas.min() and alphas.max() <= 1
    assert np.all(images <= alphas[..., None] + 1e-6)  # premultiplied on black
    from scipy.ndimage import maximum_filter

    from npga.capture.synthetic import vertex_normals

    V = head24.vertices(z[2], u[2])
    N = vertex_normals(V, head24.faces)
    for cam, a, d in zip(cams, alphas, depth):
        uv, zc = cam.project(V)
        ix = np.floor(uv[:, 0]).astype(int)
        iy = np.floor(uv[:, 1]).astype(int)
        ok = (ix >= 0) & (ix < cam.width) & (iy >= 0) & (iy < cam.height)
        ok &= np.einsum("vc,vc->v", N, cam.center - V) > 0
        vis = ok.copy()
        vis[ok] = zc[ok] <= d[iy[ok], ix[ok]] + 0.004  # not hidden behind another surface
        frac = np.mean(maximum_filter(a, size=3)[iy[vis], ix[vis]] > 0)
        assert vis.sum() > 100 and frac >= 0.99, (cam.serial, frac)


def test_wrinkles_appear_only_with_their_expression(head24):
    from npga.capture.synthetic.appearance import wrinkle_activations

    cam = nersemble_rig(88, 128)[6]  # frontal, upper row
    assert np.all(wrinkle_activations(np.zeros(E)) == 0)
    assert wrinkle_activations(_z(brow_raise=1.0))[0] == 1.0
    tex = head24.textures()["skin"]
    saved = tex["wrinkles"].copy()
    try:
        img_on, _ = head24.render([cam], _z(brow_raise=1.0))
        tex["wrinkles"][:] = 0
        img_off, _ = head24.render([cam], _z(brow_raise=1.0))
        neutral_with, _ = head24.render([cam])
    finally:
        tex["wrinkles"][:] = saved
    neutral_without, _ = head24.render([cam])
    assert np.abs(img_on - img_off).max() > 0.04  # the wrinkle maps change the image ...
    np.testing.assert_array_equal(neutral_with, neutral_without)  # ... only when switched on


def test_view_dependent_specular(head24):
    from npga.capture.synthetic import appearance

    cams = nersemble_rig(44, 64)[:2]
    img, _ = head24.render(cams)
    saved = dict(appearance.SPECULAR)
    try:
        for k in appearance.SPECULAR:
            appearance.SPECULAR[k] = (0.0, 1.0)
        img_diffuse, _ = head24.render(cams)
    finally:
        appearance.SPECULAR.update(saved)
    assert np.abs(img - img_diffuse).max() > 0.05


# ----------------------------------------------------------------------------- trajectories


@pytest.mark.parametrize("name", ["EXP-1-head", "EXP-2-eyes", "EXP-3-cheeks+nose", "EXP-4-lips", "EXP-5-mouth",
                                  "EXP-6-tongue-1", "EXP-8-jaw-1", "EMO-2", "SEN-07", "FREE", "HAIR"])
def test_sequence_trajectories(name):
    z, u = sequence_trajectory(name, 48, seed=3)
    assert z.shape == (48, E) and u.shape == (48, U)
    assert z.dtype == np.float32 and u.dtype == np.float32
    for arr, names, ranges in ((z, EXPRESSION_NAMES, EXPRESSION_RANGES), (u, UNTRACKED_NAMES, UNTRACKED_RANGES)):
        lo = np.array([ranges[n][0] for n in names])
        hi = np.array([ranges[n][1] for n in names])
        assert np.all(arr >= lo - 1e-6) and np.all(arr <= hi + 1e-6)
    assert np.abs(np.diff(z, axis=0)).max() < 0.45  # smooth (speech is the fastest)
    z2, u2 = sequence_trajectory(name, 48, seed=3)
    np.testing.assert_array_equal(z, z2)
    tongue = u[:, UNTRACKED_NAMES.index("tongue_out")]
    assert np.all(tongue <= 1.2 * z[:, EXPRESSION_NAMES.index("jaw_open")] + 1e-6)


def test_sequences_differ_in_content():
    def energy(name, names):
        z, u = sequence_trajectory(name, 24)
        both = np.concatenate([z, u], 1)
        return np.abs(both[:, [(EXPRESSION_NAMES + UNTRACKED_NAMES).index(n) for n in names]]).max()

    assert energy("EXP-8-jaw-1", ["jaw_open"]) > 0.5
    assert energy("EXP-4-lips", ["jaw_open"]) < 0.2
    assert energy("EXP-1-head", ["head_yaw"]) > 0.5 > energy("EXP-4-lips", ["head_yaw"])
    assert energy("EXP-2-eyes", ["blink_l", "blink_r"]) > 0.7
    assert energy("EXP-6-tongue-1", ["tongue_out"]) > 0.3
    assert not np.allclose(sequence_trajectory("FREE", 8, 0)[0], sequence_trajectory("FREE", 8, 1)[0])


def test_fewer_frames_subsample_the_same_motion():
    z7, _ = sequence_trajectory("EXP-4-lips", 7)
    z13, _ = sequence_trajectory("EXP-4-lips", 13)
    np.testing.assert_allclose(z7, z13[::2], atol=1e-6)


def test_unknown_sequence_raises():
    with pytest.raises(ValueError, match="unknown sequence name 'EXP-99'"):
        sequence_trajectory("EXP-99", 10)
    with pytest.raises(ValueError, match="n_frames"):
        sequence_trajectory("FREE", 0)


def test_head_pose_is_the_rigid_motion_of_everything_above_the_neck(head24):
    """Ground-truth head pose (issue 13): x_world = R x_head + t for every vertex that does
    not blend with the neck, where x_head is the same expression with no head rotation; the
    pose is a proper rotation and the identity without head rotation."""
    z = _z(jaw_open=0.6, smile=0.4)
    u = np.zeros(U)
    for k, v in (("head_yaw", 0.8), ("head_pitch", -0.5), ("head_roll", 0.3), ("gaze_yaw", 0.2)):
        u[UNTRACKED_NAMES.index(k)] = v
    u_still = u.copy()
    for k in ("head_yaw", "head_pitch", "head_roll"):
        u_still[UNTRACKED_NAMES.index(k)] = 0.0
    R, t = head_pose(u)
    assert R.shape == (3, 3) and t.shape == (3,)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(R) - 1.0) < 1e-12
    angle = np.degrees(np.arccos((np.trace(R) - 1) / 2))
    assert angle > 10  # a real rotation, not a no-op
    posed, still = head24.vertices(z, u), head24.vertices(z, u_still)
    rigid = np.linalg.norm(still @ R.T + t - posed, axis=1) < 1e-9
    p = head24.part_of_vertex
    assert rigid[p == PART_NAMES.index("hair")].all() and rigid[p == PART_NAMES.index("eye_l")].all()
    assert 0.5 < rigid.mean() < 1.0  # most of the head is rigid; the neck blends
    R0, t0 = head_pose(np.zeros(U))
    np.testing.assert_allclose(R0, np.eye(3), atol=1e-15)
    np.testing.assert_allclose(t0, 0.0, atol=1e-15)
