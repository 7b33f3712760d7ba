"""Rigid head pose: the per-frame rotation and translation a tracker estimates.

A head model lives in *head space*; a captured head is that head moved by a rigid pose

    x_world = R x_head + t,        R in SO(3) (3, 3),  t (3,) metres,

one per frame (MonoNPHM's tracker, FLAME's global rotation + translation in
GaussianAvatars, the similarity transform of Gaussian Head Avatar). The pose is estimated
*outside* the networks: z_exp explains what moves relative to the skull, (R, t) the skull.

Pure helpers: weighted Procrustes (Kabsch/Umeyama without scale), rotation error,
axis-angle <-> matrix in torch (for gradient-based refinement), and validation of
rotation arrays read from files.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def procrustes(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The rigid (R, t) minimising ``sum_i w_i |R src_i + t - dst_i|^2`` (Kabsch 1976).

    ``src``, ``dst``: (N, 3); ``weights``: (N,) >= 0 or None. Closed form: centre both
    sets, SVD of the weighted cross-covariance, a sign flip of the last singular vector
    when the best orthogonal matrix would be a reflection. Needs three non-collinear points.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or w.shape != (len(src),):
        raise ValueError(f"procrustes: src {src.shape}, dst {dst.shape}, weights {w.shape} do not match (N, 3)")
    if (w > 0).sum() < 3:
        raise ValueError(f"procrustes: needs at least 3 weighted points, got {int((w > 0).sum())}")
    w = w / w.sum()
    cs, cd = w @ src, w @ dst
    H = (src - cs).T @ ((dst - cd) * w[:, None])  # (3, 3)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(Vt.T @ U.T)) or 1.0
    R = Vt.T @ np.diag([1.0, 1.0, d]) @ U.T
    return R, cd - R @ cs


def skew(v: np.ndarray) -> np.ndarray:
    """[v]_x (..., 3, 3): the matrix of the cross product v x ."""
    x, y, z = np.moveaxis(np.asarray(v, np.float64), -1, 0)
    o = np.zeros_like(x)
    return np.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(np.shape(v)[:-1] + (3, 3))


def exp_so3(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of the axis-angle vector w (3,) (Rodrigues)."""
    return axis_angle_to_matrix(torch.as_tensor(np.asarray(w, np.float64))).numpy()


def pose_step(
    R: np.ndarray, t: np.ndarray, model_points: np.ndarray, model_normals: np.ndarray, observed: np.ndarray,
    weights: np.ndarray, point_to_point: float = 0.1, damping: float = 1e-9,
    neighbours: list[tuple[np.ndarray, np.ndarray, float]] = (), length: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """One Gauss-Newton step of the pose (R, t) towards ``observed`` (world) points.

    ``model_points``/``model_normals`` (N, 3): the closest model points and their normals
    in head space. Residuals: point-to-plane ``n_w . (c_w - p)`` plus
    ``sqrt(point_to_point)`` times point-to-point ``c_w - p``, with ``c_w = R c + t``,
    linearised in a rotation increment w (world frame, ``R <- exp(w) R``) and a
    translation increment d. Point-to-plane lets the points slide along the surface, so
    it converges in a few steps where point-to-point ICP (Procrustes) needs tens.

    Temporal smoothing: for each ``(R_j, t_j, weight)`` in ``neighbours`` the rows
    ``sqrt(weight) (length (w - log(R_j R^T)), (t + d) - t_j)`` pull the pose towards the
    neighbouring frames' (``length`` turns radians into metres at the scale of a head).
    """
    c = model_points @ R.T + t  # (N, 3) world
    n = model_normals @ R.T
    r = observed - c  # we want c + w x (c - t) + d = p (rotation about the current t)
    lever = c - t
    # point-to-plane rows: n . (w x lever + d) = n . r  ->  [(lever x n), n] . [w, d]
    A1 = np.concatenate([np.cross(lever, n), n], 1)  # (N, 6)
    b1 = np.einsum("nd,nd->n", n, r)
    # point-to-point rows: -[lever]_x w + d = r
    A2 = np.concatenate([-skew(lever), np.broadcast_to(np.eye(3), (len(c), 3, 3))], 2).reshape(-1, 6)
    b2 = r.reshape(-1)
    sw = np.sqrt(np.asarray(weights, np.float64))
    A = [A1 * sw[:, None], np.sqrt(point_to_point) * A2 * np.repeat(sw, 3)[:, None]]
    b = [b1 * sw, np.sqrt(point_to_point) * b2 * np.repeat(sw, 3)]
    for R_j, t_j, weight in neighbours:
        s = np.sqrt(weight)
        A.append(s * np.diag([length] * 3 + [1.0] * 3))
        b.append(s * np.concatenate([length * log_so3(R_j @ R.T), t_j - t]))
    A, b = np.concatenate(A), np.concatenate(b)
    x = np.linalg.solve(A.T @ A + damping * np.eye(6), A.T @ b)
    # the increment rotates about t (c_w - t = R x): R <- exp(w) R, t <- t + d
    return exp_so3(x[:3]) @ R, t + x[3:]


def log_so3(R: np.ndarray) -> np.ndarray:
    """Axis-angle vector (3,) of a rotation matrix (the inverse of :func:`exp_so3`, angle < pi)."""
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if angle < 1e-6:
        return 0.5 * v
    return angle / (2.0 * np.sin(angle)) * v


def rotation_error_deg(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Angle (degrees) of ``R_a^T R_b``: (..., 3, 3) x2 -> (...,)."""
    rel = np.einsum("...ji,...jk->...ik", np.asarray(R_a, np.float64), np.asarray(R_b, np.float64))
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def translation_error_mm(R_a, t_a, R_b, t_b, point: np.ndarray) -> np.ndarray:
    """Distance (mm) between where two poses put ``point`` (head space, (3,)): (T,).

    The translation of a pose alone depends on where head space has its origin; the
    displacement of a point on the head (its centre) does not.
    """
    p = np.asarray(point, np.float64)
    a = np.einsum("...ij,j->...i", R_a, p) + t_a
    b = np.einsum("...ij,j->...i", R_b, p) + t_b
    return 1e3 * np.linalg.norm(a - b, axis=-1)


def relative_pose_errors(R_gt, t_gt, R, t, point) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (deg) and translation (mm) errors after removing one constant head-space offset.

    A tracker's head space may differ from the true one by a fixed rigid transform
    (``R = R_gt B``, ``t = R_gt b + t_gt``): a canonical avatar absorbs it, since it is
    built in the tracker's head space. B is the chordal mean of ``R_gt^T R`` and b the
    mean of ``R_gt^T (t - t_gt)``; what remains is the frame-to-frame error an avatar sees.
    """
    R_gt, R = np.asarray(R_gt, np.float64), np.asarray(R, np.float64)
    U, _, Vt = np.linalg.svd(np.einsum("tji,tjk->ik", R_gt, R))
    B = U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt
    b = np.einsum("tji,tj->ti", R_gt, np.asarray(t) - t_gt).mean(0)
    R_fix = R @ B.T  # = R_gt if the error were only the offset
    t_fix = np.asarray(t) - np.einsum("tij,j->ti", R_gt, b)
    return rotation_error_deg(R_gt, R_fix), translation_error_mm(R_gt, t_gt, R_fix, t_fix, point)


def rotation_about(R: np.ndarray, pivot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pose (R, t) that rotates by R about ``pivot``: t = pivot - R pivot."""
    pivot = np.asarray(pivot, np.float64)
    return np.asarray(R, np.float64), pivot - np.asarray(R) @ pivot


def rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def axis_angle_to_matrix(w: Tensor) -> Tensor:
    """Rodrigues' formula, (..., 3) -> (..., 3, 3), differentiable also at w = 0."""
    theta2 = (w * w).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < 1e-8
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    # sin(x)/x and (1 - cos x)/x^2 with their Taylor series near 0
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / torch.where(small, 1.0, theta2))
    x, y, z = w.unbind(-1)
    o = torch.zeros_like(x)
    K = torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(w.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(K)
    return eye + a * K + b * (K @ K)


def matrix_to_quat(R: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) -> unit quaternions wxyz (..., 4) (Shepperd's method)."""
    m = R
    t = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack(
        [
            torch.stack([1 + t, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - t, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - t, m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 + 2 * m[..., 2, 2] - t], -1),
        ],
        -2,
    )  # (..., 4, 4): row k is 4 q_k q scaled; pick the best-conditioned row
    diag = torch.stack([1 + t, 1 + 2 * m[..., 0, 0] - t, 1 + 2 * m[..., 1, 1] - t, 1 + 2 * m[..., 2, 2] - t], -1)
    k = diag.argmax(-1, keepdim=True)
    q = torch.gather(cands, -2, k[..., None].expand(k.shape[:-1] + (1, 4))).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return q * torch.where(q[..., :1] < 0, -1.0, 1.0)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product of wxyz quaternions (..., 4): the rotation b, then a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


def check_pose(rotation: np.ndarray, translation: np.ndarray, n_frames: int, where: str, tol: float = 1e-3) -> None:
    """Refuse a pose array that is not (T, 3, 3) rotations + (T, 3) translations.

    ``where`` names the file in the message; a bad frame is named by its index.
    """
    R, t = np.asarray(rotation), np.asarray(translation)
    if R.shape != (n_frames, 3, 3):
        raise ValueError(f"{where}: rotation has shape {R.shape}, expected ({n_frames}, 3, 3)")
    if t.shape != (n_frames, 3):
        raise ValueError(f"{where}: translation has shape {t.shape}, expected ({n_frames}, 3)")
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
        bad = int(np.nonzero(~(np.isfinite(R).all((1, 2)) & np.isfinite(t).all(1)))[0][0])
        raise ValueError(f"{where}: the pose of frame index {bad} contains NaN or Inf")
    err = np.abs(np.einsum("tji,tjk->tik", R, R) - np.eye(3)).max((1, 2))
    det = np.linalg.det(R) if len(R) else np.zeros(0)
    bad = np.nonzero((err > tol) | (det < 0))[0]
    if len(bad):
        k = int(bad[0])
        raise ValueError(
            f"{where}: rotation of frame index {k} is not a rotation matrix "
            f"(|R^T R - I| = {err[k]:.2g}, det = {det[k]:.3f})"
        )


__all__ = [
    "axis_angle_to_matrix",
    "check_pose",
    "exp_so3",
    "log_so3",
    "matrix_to_quat",
    "pose_step",
    "procrustes",
    "quat_multiply",
    "relative_pose_errors",
    "rot_x",
    "rot_y",
    "rotation_about",
    "rotation_error_deg",
    "translation_error_mm",
]
