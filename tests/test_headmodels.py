"""Head models: linear 3DMM, geometry helpers, NPHM (on a toy head family, fast).

The toy family: an ellipsoid "head" whose identity scales its axes and grows a nose,
and whose expression rotates the lower part about a jaw axis (non-linear) and
raises two cheek bumps. Registered by construction (one template).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npga.headmodels.geometry import (
    chamfer,
    closest_point_on_triangles,
    closest_points_on_mesh,
    marching_cubes,
    outer_surface,
    sample_surface,
)
from npga.headmodels.linear3dmm import Linear3DMM
from npga.headmodels.nphm import NPHM, NPHMData, NPHMSpec, fit_nphm, train_nphm
from npga.headmodels.sdf_samples import correspondence_samples, sdf_samples

AXES = np.array([0.08, 0.11, 0.09])




def ellipsoid(res: int = 24, axes=AXES):
    return marching_cubes(
        lambda p: np.linalg.norm(p / axes, axis=1) - 1.0, [-0.12] * 3, [0.12] * 3, res
    )


def toy_head(v: np.ndarray, ident: np.ndarray, exp: np.ndarray) -> np.ndarray:
    a, b, c, nose = ident
    x = v * np.array([1 + a, 1 + b, 1 + c])
    w = np.exp(-(x[:, 0] ** 2 + x[:, 1] ** 2) / (2 * 0.015**2)) * (x[:, 2] > 0)
    x = x + np.stack([0 * w, 0 * w, nose * w], 1)
    jaw, smile = exp
    ang = jaw / (1 + np.exp((x[:, 1] + 0.02) / 0.008))  # lower part rotates
    yy, zz = x[:, 1], x[:, 2] + 0.03
    x = np.stack([x[:, 0], np.cos(ang) * yy - np.sin(ang) * zz, np.sin(ang) * yy + np.cos(ang) * zz - 0.03], 1)
    ws = np.exp(-((np.abs(x[:, 0]) - 0.04) ** 2 + (x[:, 1] + 0.02) ** 2) / (2 * 0.015**2)) * (x[:, 2] > 0)
    return x + smile * 0.01 * ws[:, None] * np.array([0, 1, 0.3])


def toy_scans(S=4, X=6, seed=0, res=24):
    rng = np.random.default_rng(seed)
    v, f = ellipsoid(res)
    ids = np.concatenate([rng.uniform(-0.1, 0.1, (S, 3)), rng.uniform(0.005, 0.02, (S, 1))], 1)
    exps = np.zeros((S, X, 2))
    exps[:, 1:, 0] = rng.uniform(0, 0.5, (S, X - 1))
    exps[:, 1:, 1] = rng.uniform(-1, 1, (S, X - 1))
    verts = np.stack([np.stack([toy_head(v, ids[s], exps[s, j]) for j in range(X)]) for s in range(S)])
    canon = np.stack([toy_head(v, ids[s], (0.25, 0.0)) for s in range(S)])
    return verts, canon, f, ids, exps


def smooth_scans(S=6, X=8, seed=0):
    """Registered meshes whose variations are smooth bumps (well-posed for point fitting)."""
    rng = np.random.default_rng(seed)
    base, faces = ellipsoid(22)

    def bump():
        c = rng.uniform(-0.1, 0.1, 3)
        w = np.exp(-np.sum((base - c) ** 2, 1) / (2 * 0.05**2))
        return 0.01 * w[:, None] * rng.standard_normal(3)

    verts = np.zeros((S, X, len(base), 3))
    for s in range(S):
        verts[s, 0] = base + bump() + bump()
        for j in range(1, X):
            verts[s, j] = verts[s, 0] + bump() + bump()
    return verts, faces


# --------------------------------------------------------------------------- geometry


def test_closest_point_matches_brute_force():
    rng = np.random.default_rng(1)
    v, f = ellipsoid(14)
    q = rng.uniform(-0.15, 0.15, (150, 3))
    fast = closest_points_on_mesh(q, v, f, k=12)
    tri = v[f]
    qq = np.repeat(q, len(f), 0)
    tt = np.tile(tri, (len(q), 1, 1))
    cp, _ = closest_point_on_triangles(qq, tt[:, 0], tt[:, 1], tt[:, 2])
    brute = np.linalg.norm(cp - qq, axis=1).reshape(len(q), len(f)).min(1)
    np.testing.assert_allclose(fast.distance, brute, atol=1e-12)
    # the returned point is on the returned face with the returned barycentrics
    rec = np.einsum("nk,nkd->nd", fast.bary, v[f[fast.face]])
    np.testing.assert_allclose(rec, fast.point, atol=1e-12)


def test_outer_surface_sdf_and_interior_part():
    """SDF of an ellipsoid is right; a part hidden inside is not 'outer' and does not count."""
    outer_v, outer_f = ellipsoid(30)
    inner_v, inner_f = marching_cubes(lambda p: np.linalg.norm(p, axis=1) - 0.03, [-0.05] * 3, [0.05] * 3, 14)
    v = np.concatenate([outer_v, inner_v])
    f = np.concatenate([outer_f, inner_f + len(outer_v)])
    surf = outer_surface(v, f, voxel=0.003)
    assert np.all(surf.orientation[: len(outer_f)] != 0)
    assert np.all(surf.orientation[len(outer_f) :] == 0)
    rng = np.random.default_rng(0)
    q = rng.uniform(-0.13, 0.13, (3000, 3))
    sd = surf.sdf(q)
    inside = np.linalg.norm(q / AXES, axis=1) < 1
    near = np.abs(np.linalg.norm(q / AXES, axis=1) - 1) < 0.02
    assert np.mean((sd < 0) == inside) > 0.999
    assert np.all((sd[~near] < 0) == inside[~near])
    # near the inner sphere the distance is to the OUTER surface, not to the inner one
    p = np.array([[0.0, 0.0, 0.031]])
    assert surf.sdf(p)[0] < -0.04


def test_outer_surface_open_bottom_tube():
    """A head on an open neck tube: the flood must not enter from below."""
    head_v, head_f = ellipsoid(26)  # a jagged cut: marching-cubes vertices at varied heights
    surf = outer_surface(head_v[head_v[:, 1] > -0.08], _faces_above(head_v, head_f, -0.08), voxel=0.003)
    sd = surf.sdf(np.array([[0.0, 0.0, 0.0], [0.0, -0.05, 0.0], [0.0, 0.3, 0.0], [0.12, 0.0, 0.0]]))
    assert sd[0] < 0 and sd[1] < 0
    assert sd[2] > 0 and sd[3] > 0


def _faces_above(v, f, y):
    keep = np.flatnonzero(v[:, 1] > y)
    remap = -np.ones(len(v), int)
    remap[keep] = np.arange(len(keep))
    g = remap[f]
    return g[np.all(g >= 0, 1)]


# --------------------------------------------------------------------------- linear 3DMM


def test_linear_full_rank_reproduces_training_meshes():
    rng = np.random.default_rng(0)
    v, f = ellipsoid(12)
    S, X = 5, 6
    verts = v[None, None] + 0.004 * rng.standard_normal((S, X, len(v), 3))
    model = Linear3DMM.build(verts, f)  # all columns
    assert model.id_dims == S - 1 and model.exp_dims == S * (X - 1)
    for s in range(S):
        zi, ze = model.fit_registered(verts[s])
        err = np.abs(model.vertices(zi, ze).numpy() - verts[s]).max()
        assert err < 1e-6, f"identity {s}: max error {err}"


def test_linear_fit_registered_recovers_known_codes():
    verts, f = smooth_scans()
    model = Linear3DMM.build(verts, f, id_dims=3, exp_dims=4)
    rng = np.random.default_rng(3)
    zi0, ze0 = rng.standard_normal(3), rng.standard_normal((5, 4))
    zi, ze = model.fit_registered(model.vertices(zi0, ze0).numpy())
    np.testing.assert_allclose(zi, zi0, atol=1e-8)
    np.testing.assert_allclose(ze, ze0, atol=1e-8)
    # truncation keeps the leading columns
    small = model.truncated(exp_dims=2)
    assert small.exp_dims == 2 and torch.equal(small.basis_exp, model.basis_exp[:2])
    # with z_id given, only expressions are solved for
    _, ze2 = model.fit_registered(model.vertices(zi0, ze0).numpy(), z_id=zi0)
    np.testing.assert_allclose(ze2, ze0, atol=1e-8)


def test_linear_fit_points_recovers_known_codes():
    """ICP on unregistered points (with 10% outliers) recovers the codes."""
    verts, f = smooth_scans()
    model = Linear3DMM.build(verts, f, id_dims=3, exp_dims=4)
    rng = np.random.default_rng(4)
    zi0, ze0 = 0.5 * rng.standard_normal(3), 0.5 * rng.standard_normal((4, 4))
    target = model.vertices(zi0, ze0).numpy()
    pts = []
    for t in range(4):
        p, _, _ = sample_surface(target[t], f, 1500, rng)
        outliers = rng.uniform(-0.15, 0.15, (150, 3))
        pts.append(np.concatenate([p, outliers]))
    zi, ze, hist = model.fit_points(pts, iterations=10, lam=1e-9)
    assert hist[-1] < hist[0]
    assert np.abs(zi - zi0).max() < 0.02
    assert np.abs(ze - ze0).max() < 0.05
    rec = model.vertices(zi, ze).numpy()
    assert np.abs(rec - target).max() < 5e-4  # metres


def test_linear_smoothness_and_save_load(tmp_path):
    verts, f = smooth_scans()
    model = Linear3DMM.build(verts, f, id_dims=3, exp_dims=4)
    rng = np.random.default_rng(5)
    target = model.vertices(rng.standard_normal(3), rng.standard_normal((6, 4))).numpy()
    _, rough = model.fit_registered(target, lam=1e-6)
    _, smooth = model.fit_registered(target, lam=1e-6, smooth=10.0)
    assert np.abs(np.diff(smooth, axis=0)).sum() < 0.5 * np.abs(np.diff(rough, axis=0)).sum()
    model.save(tmp_path / "m.pt")
    back = Linear3DMM.load(tmp_path / "m.pt")
    z = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    assert torch.equal(back.vertices(*z), model.vertices(*z))
    with pytest.raises(ValueError, match="vertices must be"):
        Linear3DMM.build(verts[0], f)


# --------------------------------------------------------------------------- NPHM


@pytest.fixture(scope="module")
def toy_nphm():
    torch.manual_seed(0)
    verts, canon, f, _, _ = toy_scans(S=4, X=6)
    rng = np.random.default_rng(0)
    train_ids, train_exps = [0, 1, 2], [0, 1, 2, 3, 4]
    ss = [sdf_samples(canon[i], f, 1500, 2000, 1000, rng, voxel=0.003) for i in train_ids]
    corr = [[correspondence_samples(verts[i, j], canon[i], f, 800, rng) for j in train_exps] for i in train_ids]
    data = NPHMData(
        *(torch.from_numpy(np.stack([getattr(s, k) for s in ss])) for k in ("surface", "normals", "points", "sdf")),
        torch.from_numpy(np.stack([[c[0] for c in row] for row in corr])),
        torch.from_numpy(np.stack([[c[1] for c in row] for row in corr])),
    )
    spec = NPHMSpec(id_dims=4, exp_dims=4, n_train_ids=3, n_train_exps=5, hidden=48, layers=4,
                    sdf_freqs=2, deform_freqs=1, scale=0.13)
    model = NPHM(spec)
    log = train_nphm(model, data, 150, 150, 1024, progress=False)
    return model.eval(), verts, f, log


def test_nphm_interface_shapes(toy_nphm, tmp_path):
    model, _, _, log = toy_nphm
    assert log.loss[-1] < log.loss[0]
    x = torch.randn(7, 3) * 0.05
    zi, ze = model.id_codes[0].detach(), model.exp_codes[0, 1].detach()
    assert model.sdf(x, zi).shape == (7,)
    assert model.sdf(x, zi.expand(7, -1)).shape == (7,)
    assert model.backward(x, zi, ze).shape == (7, 3)
    pts = model.canonical_surface_points(zi, 200, seed=0, resolution=40)
    assert pts.shape == (200, 3)
    assert model.sdf(pts, zi).abs().max() < 1e-3  # on the zero level set
    model.save(tmp_path / "n.pt")
    back = NPHM.load(tmp_path / "n.pt")
    assert torch.equal(back.posed_sdf(x, zi, ze), model.posed_sdf(x, zi, ze))
    with pytest.raises(FileNotFoundError):
        NPHM.load(tmp_path / "missing.pt")


def test_nphm_backward_maps_posed_surface_to_canonical_surface(toy_nphm):
    """|f(B(x_p))| on posed training surfaces: well below the 3 mm voxel of the sign grid."""
    model, verts, f, _ = toy_nphm
    rng = np.random.default_rng(1)
    errs = []
    with torch.no_grad():
        for i in range(3):
            for j in range(5):
                p, _, _ = sample_surface(verts[i, j], f, 500, rng)  # a closed toy mesh: all outer
                val = model.posed_sdf(torch.tensor(p, dtype=torch.float32), model.id_codes[i], model.exp_codes[i, j])
                errs.append(float(val.abs().mean()))
    print(f"toy NPHM: mean |f(B(x_p))| on posed training surfaces = {1e3 * np.mean(errs):.2f} mm")
    assert np.mean(errs) < 1.5e-3


def test_nphm_heldout_expression_chamfer(toy_nphm):
    """Fitting z_exp to points of a held-out expression gives a surface close to the GT.

    Threshold 2 mm: the toy head is ~0.2 m tall, the jaw rotation moves the chin by
    up to ~25 mm; a model that ignored the expression (z_exp = 0, canonical mouth) is
    measured alongside and must be clearly worse.
    """
    model, verts, f, _ = toy_nphm
    rng = np.random.default_rng(2)
    target = verts[0, 5]  # expression 5 was held out
    obs, _, _ = sample_surface(target, f, 1500, rng)  # a closed toy mesh: all of it is outer
    zi = model.id_codes[0].detach().numpy()
    _, ze, hist = fit_nphm(model, [obs], z_id=zi, iterations=100, points_per_step=1000)
    assert hist[-1] < hist[0]
    ev, _, _ = sample_surface(target, f, 1500, rng)

    def chamfer_of(z_exp):
        vv, ff = model.extract_mesh(torch.tensor(zi, dtype=torch.float32), torch.tensor(z_exp, dtype=torch.float32), 48)
        sb, _, _ = sample_surface(vv, ff, 1500, rng)
        return chamfer(ev, target, f, sb, vv, ff)[0]

    fitted = chamfer_of(ze[0])
    zero = chamfer_of(np.zeros(model.exp_dims))
    print(f"toy NPHM held-out expression Chamfer: fitted {1e3 * fitted:.2f} mm, z_exp=0 {1e3 * zero:.2f} mm")
    assert fitted < 2e-3
    assert fitted < 0.6 * zero


# --------------------------------------------------------------------------- mini profile, end to end


@pytest.mark.slow
def test_mini_profile_end_to_end():
    """Dataset -> both head models -> evaluation -> tracking files, in the mini profile.

    Checks the mini data the chapters read (``make test`` builds it first with ``make data``;
    trained and tracked here, into the same place, where it is missing: about 4 minutes on
    two idle cores). An earlier version retrained everything in a temporary folder, which
    repeated ``make data`` inside CI's time for nothing. Thresholds, from measurements on
    the mini profile (chapter 3 prints them): NPHM's held-out-expression Chamfer in the
    expression region measured 1.45 mm (1.45-1.69 over the expression sizes of the
    sweep), the 3DMM's 0.72 mm, so 2.5 mm leaves room for other machines' float noise but
    catches a broken model (the broken flood-fill SDF of an earlier version gave 5 mm).
    |f(B(x_p))| on posed training surfaces measured 0.42 mm, limit 1 mm. Tracking errors
    measured 2.25 mm (3DMM) and 3.37 mm (NPHM).
    """
    import json

    from npga.capture.dataset import open_dataset
    from npga.config import get_profile
    from npga.headmodels import load_eval, load_or_train
    from npga.headmodels.fitting import track_dataset, tracked
    from npga.headmodels.scans import load_scans
    from npga.headmodels.store import models_dir

    P = get_profile("mini")
    nphm = load_or_train(P, "nphm", progress=False)
    linear = load_or_train(P, "3dmm", progress=False)
    ev = load_eval(P)
    d = str(P.head_model.exp_dims)
    nphm_err = ev["heldout_expressions"][d]["nphm_points"]["chamfer_mm"]
    lin_err = ev["heldout_expressions"][d]["3dmm_points"]["chamfer_mm"]
    print(f"\nmini held-out expressions: NPHM {nphm_err:.2f} mm, 3DMM {lin_err:.2f} mm")
    assert nphm_err < 2.5 and lin_err < 2.5

    scans = load_scans(P)
    rng = np.random.default_rng(0)
    errs = []
    with torch.no_grad():
        for k, i in enumerate(scans.train_ids[:2]):
            for e, j in enumerate(scans.train_exps[:3]):
                p, _, _, _ = outer_surface(scans.vertices[i, j], scans.faces).sample_outer(800, rng)
                p = p[p[:, 1] > P.head_model.neck_cut + 0.02]
                f = nphm.posed_sdf(torch.tensor(p, dtype=torch.float32), nphm.id_codes[k], nphm.exp_codes[k, e])
                errs.append(float(f.abs().mean()))
    print(f"mini NPHM: mean |f(B(x_p))| on posed training surfaces {1e3 * np.mean(errs):.2f} mm")
    assert np.mean(errs) < 1e-3

    if tracked(P):
        report = json.loads((models_dir(P) / "tracking.json").read_text())
    else:
        report = track_dataset(P, progress=False)
    ds = open_dataset(P.data_root)
    seq = ds.participant(0).sequence(P.data.sequences[0])
    for model, dims in (("3dmm", linear.exp_dims), ("nphm", nphm.exp_dims)):
        codes = seq.codes(model)
        assert codes.z_exp.shape == (len(seq.frames), dims)
        assert np.isfinite(codes.z_exp).all()
    print(f"mini tracking: {report['mean_points_per_frame']:.0f} points/frame, error 3DMM "
          f"{report['mean_error_mm_3dmm']:.2f} mm, NPHM {report['mean_error_mm_nphm']:.2f} mm")
    assert report["mean_error_mm_3dmm"] < 5.0 and report["mean_error_mm_nphm"] < 6.0
