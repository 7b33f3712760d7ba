"""Rigid head pose: Procrustes, pose tracking with codes, posing the avatar, pose files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npga.headmodels.pose import (
    axis_angle_to_matrix,
    check_pose,
    matrix_to_quat,
    procrustes,
    quat_multiply,
    rot_x,
    rot_y,
    rotation_error_deg,
    translation_error_mm,
)


def _random_pose(rng, max_deg=20.0):
    w = rng.normal(size=3)
    w *= np.radians(max_deg) * rng.uniform(0.3, 1.0) / np.linalg.norm(w)
    R = axis_angle_to_matrix(torch.tensor(w)).numpy()
    return R, rng.normal(scale=0.02, size=3)


def test_procrustes_recovers_a_known_pose_from_noisy_points():
    rng = np.random.default_rng(0)
    src = rng.normal(scale=0.08, size=(300, 3))
    R, t = _random_pose(rng)
    dst = src @ R.T + t + rng.normal(scale=0.001, size=src.shape)  # 1 mm noise
    R_est, t_est = procrustes(src, dst)
    assert rotation_error_deg(R, R_est) < 0.3
    assert translation_error_mm(R, t, R_est, t_est, np.zeros(3)) < 0.5
    # outliers with zero weight do not count; with weight they pull the estimate away
    bad = dst.copy()
    bad[:30] += 0.05
    w = np.ones(len(src))
    w[:30] = 0
    assert rotation_error_deg(R, procrustes(src, bad, w)[0]) < 0.3
    assert rotation_error_deg(R, procrustes(src, bad)[0]) > 0.5
    with pytest.raises(ValueError, match="at least 3"):
        procrustes(src[:2], dst[:2])


def test_rotation_helpers_agree():
    rng = np.random.default_rng(1)
    w = torch.tensor(rng.normal(size=(5, 3)) * 0.5)
    R = axis_angle_to_matrix(w)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=R.dtype).expand(5, 3, 3), atol=1e-12)
    # the quaternion of R rotates a vector as R does
    q = matrix_to_quat(R)
    v = torch.tensor(rng.normal(size=(5, 3)))
    vq = torch.cat([torch.zeros(5, 1, dtype=v.dtype), v], -1)
    conj = q * torch.tensor([1.0, -1, -1, -1], dtype=q.dtype)
    rotated = quat_multiply(quat_multiply(q, vq), conj)[:, 1:]
    torch.testing.assert_close(rotated, (R @ v[..., None])[..., 0])
    # near-180-degree rotations take another branch of Shepperd's method
    R180 = torch.tensor(rot_y(np.pi - 1e-3) @ rot_x(0.1))
    q = matrix_to_quat(R180)
    assert abs(float(q.norm()) - 1) < 1e-9 and float(q[0]) >= 0
    # axis-angle at zero: identity and a finite gradient
    w0 = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    axis_angle_to_matrix(w0).sum().backward()
    assert torch.isfinite(w0.grad).all()


def test_check_pose_names_the_file_and_the_frame():
    R = np.tile(np.eye(3), (4, 1, 1))
    t = np.zeros((4, 3))
    check_pose(R, t, 4, "x.npz")
    with pytest.raises(ValueError, match=r"x\.npz: rotation has shape \(3, 3, 3\)"):
        check_pose(R[:3], t, 4, "x.npz")
    with pytest.raises(ValueError, match=r"x\.npz: translation has shape"):
        check_pose(R, t[:, :2], 4, "x.npz")
    bad = R.copy()
    bad[2] *= 1.1
    with pytest.raises(ValueError, match=r"x\.npz: rotation of frame index 2 is not a rotation"):
        check_pose(bad, t, 4, "x.npz")
    refl = R.copy()
    refl[1] = np.diag([1.0, 1.0, -1.0])
    with pytest.raises(ValueError, match="frame index 1"):
        check_pose(refl, t, 4, "x.npz")
    nan = t.copy()
    nan[3, 0] = np.nan
    with pytest.raises(ValueError, match="frame index 3 contains NaN"):
        check_pose(R, nan, 4, "x.npz")


def _synthhead_3dmm():
    """A small linear 3DMM built from SynthHead meshes: 3 identities x 3 expressions."""
    from npga.capture.synthetic import EXPRESSION_NAMES, SynthHead, sample_identity
    from npga.headmodels.linear3dmm import Linear3DMM

    exprs = []
    for name in (None, "smile", "jaw_open"):
        z = np.zeros(len(EXPRESSION_NAMES))
        if name:
            z[EXPRESSION_NAMES.index(name)] = 0.8
        exprs.append(z)
    heads = [SynthHead(sample_identity(pid, seed=0), 24) for pid in range(3)]
    verts = np.stack([np.stack([h.vertices(z) for z in exprs]) for h in heads])  # (3, 3, V, 3)
    keep = verts[0, 0, :, 1] >= -0.16  # the head above the neck cut, as the book's models
    faces = heads[0].faces
    faces = faces[keep[faces].all(1)]
    remap = -np.ones(len(keep), np.int64)
    remap[keep] = np.arange(keep.sum())
    return Linear3DMM.build(verts[:, :, keep], remap[faces], id_dims=2, exp_dims=2)


def _posed_points(model, angles, rng):
    """Points of posed 3DMM faces (1 mm noise, 5% outliers, a neck that does not follow)."""
    from npga.headmodels.geometry import sample_surface

    T = len(angles)
    zi0 = 0.5 * rng.standard_normal(2)
    ze0 = 0.5 * rng.standard_normal((T, 2))
    pivot = np.array([0.0, -0.11, -0.02])
    faces = model.faces.numpy()
    pts, Rs, ts = [], [], []
    for k in range(T):
        R = rot_y(angles[k][0]) @ rot_x(angles[k][1])
        t = pivot - R @ pivot
        v = model.vertices(zi0, ze0[k]).numpy()
        p, _, _ = sample_surface(v, faces, 600, rng)
        p = p[(p[:, 2] > -0.02)]  # the cameras see the front of the head
        p = p @ R.T + t + rng.normal(scale=0.001, size=p.shape)
        neck = np.c_[rng.uniform(-0.04, 0.04, 40), rng.uniform(-0.2, -0.14, 40), rng.uniform(-0.02, 0.05, 40)]
        outliers = rng.uniform(-0.15, 0.15, (len(p) // 20, 3))
        pts.append(np.concatenate([p, neck, outliers]))
        Rs.append(R)
        ts.append(t)
    return pts, np.array(Rs), np.array(ts)


CENTRE = np.array([0.0, 0.005, -0.005])


@pytest.fixture(scope="module")
def head_3dmm():
    return _synthhead_3dmm()


def test_pose_tracking_recovers_known_poses_jointly_with_codes(head_3dmm):
    from npga.headmodels.fitting import fit_3dmm_posed

    rng = np.random.default_rng(0)
    angles = [(0.35, 0.0), (0.3, 0.1), (0.2, 0.15), (0.0, 0.0), (-0.2, -0.1), (-0.35, 0.05)]  # yaw, pitch
    pts, Rs, ts = _posed_points(head_3dmm, angles, rng)
    T = len(angles)
    # no temporal pull: these frames are far apart (the pull is tested below)
    _, _, R, t = fit_3dmm_posed(head_3dmm, pts, segments=[T], cut=-0.16, pose_cut=-0.10, lam=1e-7, smooth=0.0,
                                pose_smooth=0.0)
    rot = rotation_error_deg(Rs, R)
    tr = translation_error_mm(Rs, ts, R, t, CENTRE)
    assert rot.mean() < 0.8 and rot.max() < 1.5, rot
    assert tr.max() < 1.0, tr
    # the poses are far from the identity: a tracker that ignored them would fail above
    identity = np.tile(np.eye(3), (T, 1, 1))
    assert rotation_error_deg(Rs, identity).max() > 15


def test_temporal_smoothing_does_not_hold_back_a_fast_turn(head_3dmm):
    """A head still, turned 20 degrees, still again: the robust pull lets the turn through;
    a quadratic pull (a huge smooth_scale_deg) drags the turned frame back towards its
    neighbours, because trimmed data no longer pulls once the pose is off."""
    from npga.headmodels.fitting import fit_3dmm_posed

    rng = np.random.default_rng(1)
    angles = [(0.0, 0.0), (0.0, 0.0), (0.35, 0.05), (0.0, 0.0), (0.0, 0.0)]
    pts, Rs, _ = _posed_points(head_3dmm, angles, rng)
    kw = dict(segments=[len(angles)], cut=-0.16, pose_cut=-0.10, lam=1e-7, smooth=0.0)  # default pose_smooth
    robust = rotation_error_deg(Rs, fit_3dmm_posed(head_3dmm, pts, **kw)[2])
    quadratic = rotation_error_deg(Rs, fit_3dmm_posed(head_3dmm, pts, smooth_scale_deg=1e6, **kw)[2])
    assert robust.max() < 4.0, robust  # the pull still costs the turned frame a little (0.2 deg without)
    assert quadratic[2] > 10.0, (robust, quadratic)


def test_relative_pose_errors_remove_one_constant_offset_only():
    from npga.headmodels.pose import relative_pose_errors

    rng = np.random.default_rng(2)
    poses = [_random_pose(rng) for _ in range(8)]
    R_gt = np.array([p[0] for p in poses])
    t_gt = np.array([p[1] for p in poses])
    B, b = _random_pose(rng, max_deg=6.0)  # the tracker's head space, off by a rigid transform
    R = R_gt @ B
    t = t_gt + np.einsum("tij,j->ti", R_gt, b)
    centre = np.array([0.0, 0.005, -0.005])
    assert rotation_error_deg(R_gt, R).min() > 1.0  # the absolute error sees the offset
    rot, trans = relative_pose_errors(R_gt, t_gt, R, t, centre)
    assert rot.max() < 1e-6 and trans.max() < 1e-6
    # a frame-to-frame error is not removed
    R[3] = axis_angle_to_matrix(torch.tensor([0.0, 0.05, 0.0], dtype=torch.float64)).numpy() @ R[3]
    rot, _ = relative_pose_errors(R_gt, t_gt, R, t, centre)
    assert rot[3] > 2.0
