"""EWA projection (3DGS Eq. 5) in compiled CPU kernels, forward and backward by hand.

The same function as :func:`npga.splatting.render_torch.project_gaussians` -- which stays
the readable reference -- for CPU tensors: per camera and Gaussian the projected centre,
depth, conic (inverse 2D covariance) and opacity-aware screen radius, with gsplat's
culling rules. PyTorch runs that as ~150 small tensor operations, serial on a few
thousand elements each; here one kernel loops over the Gaussians in parallel (``prange``)
and over the cameras inside, so the numba backend's whole render scales with threads.

Forward, per camera (R_v, t_v, K) and Gaussian (mu, q, s)::

    Sigma = M M^T, M = R(q / |q|) diag(s);   p = R_v mu + t_v = (x, y, z)
    Sigma_c = R_v Sigma R_v^T;   J = [[fx/z, 0, -fx x'/z^2], [0, fy/z, -fy y'/z^2]]
    (x', y' = x, y clamped to FOV_MARGIN beyond the image);   cov2d = J Sigma_c J^T + eps I
    conic = cov2d^-1 as (c, -b, a) / det;   (u, v) = (K p) / z

The backward pass applies the chain rule to each line in reverse (the formulas are in
:func:`_backward_one`): conic -> cov2d -> (J, Sigma_c) -> (p, Sigma) -> (mu, M) -> (q, s).
Each Gaussian's gradient sums its cameras in camera order inside one iteration, so the
result does not depend on the thread count. Computed in float64 whatever the input dtype
and rounded once at the end. Not differentiable with respect to the cameras (``rasterize``
uses the torch projection when viewmats or Ks require gradients).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor
from torch.autograd.function import once_differentiable

from npga.splatting.render_numba import _numba_threads
from npga.splatting.render_torch import ALPHA_MIN, EXTEND_3SIGMA, FOV_MARGIN, Projection

DET_MIN = 1e-10  # the torch reference divides by det clamped here


@njit(cache=True, fastmath=False, inline="always")
def _rotation(qw, qx, qy, qz):
    """R (3, 3) of the unit quaternion (w, x, y, z) -- the rows of quat_to_rotmat."""
    R = np.empty((3, 3))
    R[0, 0], R[0, 1], R[0, 2] = 1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy)
    R[1, 0], R[1, 1], R[1, 2] = 2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx)
    R[2, 0], R[2, 1], R[2, 2] = 2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)
    return R


@njit(cache=True, fastmath=False, inline="always")
def _unit(q):
    nrm = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    nrm = max(nrm, 1e-12)  # torch.nn.functional.normalize's eps
    return q[0] / nrm, q[1] / nrm, q[2] / nrm, q[3] / nrm, nrm


@njit(cache=True, fastmath=False, inline="always")
def _camera_terms(p, Kc, width, height):
    """tan limits of the clamped Jacobian point, as in project_gaussians."""
    fx, fy, cx, cy = Kc[0, 0], Kc[1, 1], Kc[0, 2], Kc[1, 2]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lox, hix = -(cx / fx + FOV_MARGIN * tan_fovx), (width - cx) / fx + FOV_MARGIN * tan_fovx
    loy, hiy = -(cy / fy + FOV_MARGIN * tan_fovy), (height - cy) / fy + FOV_MARGIN * tan_fovy
    return fx, fy, lox, hix, loy, hiy


@njit(parallel=True, cache=True, fastmath=False)
def _forward_kernel(means, quats, scales, opac, has_opac, viewmats, Ks, width, height, eps2d, near, far,
                    means2d, depths, conics, radii):
    N, C = means.shape[0], viewmats.shape[0]
    for n in prange(N):
        qw, qx, qy, qz, _ = _unit(quats[n])
        R = _rotation(qw, qx, qy, qz)
        M = np.empty((3, 3))
        for i in range(3):
            for j in range(3):
                M[i, j] = R[i, j] * scales[n, j]
        S = M @ M.T
        extend = EXTEND_3SIGMA
        ok_o = True
        if has_opac:
            o = float(opac[n])
            ok_o = o >= ALPHA_MIN
            extend = min(math.sqrt(2.0 * math.log(max(o, ALPHA_MIN) / ALPHA_MIN)), EXTEND_3SIGMA)
        mu = means[n].astype(np.float64)
        for c in range(C):
            Rv = viewmats[c, :3, :3].astype(np.float64)
            Kc = Ks[c].astype(np.float64)
            p = Rv @ mu + viewmats[c, :3, 3].astype(np.float64)
            x, y, z = p[0], p[1], p[2]
            means2d[c, n, 0] = 0.0
            means2d[c, n, 1] = 0.0
            depths[c, n] = 0.0
            conics[c, n, 0] = 0.0
            conics[c, n, 1] = 0.0
            conics[c, n, 2] = 0.0
            radii[c, n, 0] = 0
            radii[c, n, 1] = 0
            if not (z > near and z < far) or not ok_o:
                continue
            Sc = Rv @ S @ Rv.T
            fx, fy, lox, hix, loy, hiy = _camera_terms(p, Kc, width, height)
            xc = z * min(max(x / z, lox), hix)
            yc = z * min(max(y / z, loy), hiy)
            j00, j02 = fx / z, -fx * xc / (z * z)
            j11, j12 = fy / z, -fy * yc / (z * z)
            a = j00 * j00 * Sc[0, 0] + 2 * j00 * j02 * Sc[0, 2] + j02 * j02 * Sc[2, 2] + eps2d
            b = j00 * j11 * Sc[0, 1] + j00 * j12 * Sc[0, 2] + j02 * j11 * Sc[1, 2] + j02 * j12 * Sc[2, 2]
            cc = j11 * j11 * Sc[1, 1] + 2 * j11 * j12 * Sc[1, 2] + j12 * j12 * Sc[2, 2] + eps2d
            det = a * cc - b * b
            if not det > 0:
                continue
            u = (Kc[0, 0] * x + Kc[0, 1] * y + Kc[0, 2] * z) / z
            v = (Kc[1, 0] * x + Kc[1, 1] * y + Kc[1, 2] * z) / z
            rx = math.ceil(extend * math.sqrt(max(a, 0.0)))
            ry = math.ceil(extend * math.sqrt(max(cc, 0.0)))
            if not (u + rx > 0 and u - rx < width and v + ry > 0 and v - ry < height):
                continue
            d = max(det, DET_MIN)
            means2d[c, n, 0], means2d[c, n, 1] = u, v
            depths[c, n] = z
            conics[c, n, 0], conics[c, n, 1], conics[c, n, 2] = cc / d, -b / d, a / d
            radii[c, n, 0], radii[c, n, 1] = int(rx), int(ry)


@njit(cache=True, fastmath=False, inline="always")
def _backward_one(mu, S, Rv, tv, Kc, width, height, eps2d, gu, gv, gA, gB, gC, gz_depth, g_mu, g_S):
    """One (camera, Gaussian) pair, visible: adds dL/dmu to g_mu (3,) and dL/dSigma to g_S (3, 3)."""
    p = Rv @ mu + tv
    x, y, z = p[0], p[1], p[2]
    Sc = Rv @ S @ Rv.T
    fx, fy, lox, hix, loy, hiy = _camera_terms(p, Kc, width, height)
    tx, ty = x / z, y / z
    in_x, in_y = lox <= tx <= hix, loy <= ty <= hiy
    tx, ty = min(max(tx, lox), hix), min(max(ty, loy), hiy)
    xc, yc = z * tx, z * ty
    j00, j02 = fx / z, -fx * xc / (z * z)
    j11, j12 = fy / z, -fy * yc / (z * z)
    a = j00 * j00 * Sc[0, 0] + 2 * j00 * j02 * Sc[0, 2] + j02 * j02 * Sc[2, 2] + eps2d
    b = j00 * j11 * Sc[0, 1] + j00 * j12 * Sc[0, 2] + j02 * j11 * Sc[1, 2] + j02 * j12 * Sc[2, 2]
    cc = j11 * j11 * Sc[1, 1] + 2 * j11 * j12 * Sc[1, 2] + j12 * j12 * Sc[2, 2] + eps2d
    det = a * cc - b * b
    # conic = (cc, -b, a) / d with d = max(det, DET_MIN)
    if det > DET_MIN:
        d = det
        num = gA * cc - gB * b + gC * a
        ga = gC / d - num * cc / (d * d)
        gb = -gB / d + 2.0 * b * num / (d * d)
        gc = gA / d - num * a / (d * d)
    else:
        d = DET_MIN
        ga, gb, gc = gC / d, -gB / d, gA / d
    # cov2d = J Sc J^T: dL/dSc = J^T G J, dL/dJ = 2 G J Sc, G = [[ga, gb/2], [gb/2, gc]]
    J = np.zeros((2, 3))
    J[0, 0], J[0, 2], J[1, 1], J[1, 2] = j00, j02, j11, j12
    G = np.empty((2, 2))
    G[0, 0], G[0, 1], G[1, 0], G[1, 1] = ga, 0.5 * gb, 0.5 * gb, gc
    g_Sc = J.T @ G @ J
    gJ = 2.0 * (G @ J @ Sc)
    gx, gy, gz = 0.0, 0.0, 0.0
    # j00 = fx / z, j11 = fy / z
    gz += -fx / (z * z) * gJ[0, 0] - fy / (z * z) * gJ[1, 1]
    # j02 = -fx xc / z^2, xc = z tx, tx = clamp(x / z)
    g_xc = -fx / (z * z) * gJ[0, 2]
    gz += 2.0 * fx * xc / (z * z * z) * gJ[0, 2] + tx * g_xc
    if in_x:
        g_tx = z * g_xc
        gx += g_tx / z
        gz += -x / (z * z) * g_tx
    g_yc = -fy / (z * z) * gJ[1, 2]
    gz += 2.0 * fy * yc / (z * z * z) * gJ[1, 2] + ty * g_yc
    if in_y:
        g_ty = z * g_yc
        gy += g_ty / z
        gz += -y / (z * z) * g_ty
    # (u, v) = (K p) / z
    gx += Kc[0, 0] / z * gu + Kc[1, 0] / z * gv
    gy += Kc[0, 1] / z * gu + Kc[1, 1] / z * gv
    gz += -(Kc[0, 0] * x + Kc[0, 1] * y) / (z * z) * gu - (Kc[1, 0] * x + Kc[1, 1] * y) / (z * z) * gv
    gz += gz_depth
    # p = Rv mu + t, Sc = Rv S Rv^T
    g_p = np.empty(3)
    g_p[0], g_p[1], g_p[2] = gx, gy, gz
    g_mu += Rv.T @ g_p
    g_S += Rv.T @ g_Sc @ Rv


@njit(parallel=True, cache=True, fastmath=False)
def _backward_kernel(means, quats, scales, viewmats, Ks, width, height, eps2d, radii,
                     v_m2d, v_depth, v_conic, g_means, g_quats, g_scales):
    N, C = means.shape[0], viewmats.shape[0]
    for n in prange(N):
        qw, qx, qy, qz, nrm = _unit(quats[n])
        R = _rotation(qw, qx, qy, qz)
        s = scales[n].astype(np.float64)
        M = np.empty((3, 3))
        for i in range(3):
            for j in range(3):
                M[i, j] = R[i, j] * s[j]
        S = M @ M.T
        mu = means[n].astype(np.float64)
        g_mu = np.zeros(3)
        g_S = np.zeros((3, 3))
        seen = False
        for c in range(C):
            if radii[c, n, 0] <= 0 or radii[c, n, 1] <= 0:
                continue
            seen = True
            _backward_one(mu, S, viewmats[c, :3, :3].astype(np.float64), viewmats[c, :3, 3].astype(np.float64),
                          Ks[c].astype(np.float64), width, height, eps2d,
                          float(v_m2d[c, n, 0]), float(v_m2d[c, n, 1]), float(v_conic[c, n, 0]),
                          float(v_conic[c, n, 1]), float(v_conic[c, n, 2]), float(v_depth[c, n]), g_mu, g_S)
        for i in range(3):
            g_means[n, i] = g_mu[i]
        if not seen:
            for i in range(4):
                g_quats[n, i] = 0.0
            for i in range(3):
                g_scales[n, i] = 0.0
            continue
        # Sigma = M M^T (g_S symmetric): dL/dM = (g_S + g_S^T) M
        gM = (g_S + g_S.T) @ M
        gR = np.empty((3, 3))
        for j in range(3):
            acc = 0.0
            for i in range(3):
                gR[i, j] = gM[i, j] * s[j]
                acc += gM[i, j] * R[i, j]
            g_scales[n, j] = acc
        # R(q) of the unit quaternion, then through q / |q|
        gw = 2 * (-qz * gR[0, 1] + qy * gR[0, 2] + qz * gR[1, 0] - qx * gR[1, 2] - qy * gR[2, 0] + qx * gR[2, 1])
        gx = 2 * (qy * gR[0, 1] + qz * gR[0, 2] + qy * gR[1, 0] - 2 * qx * gR[1, 1] - qw * gR[1, 2]
                  + qz * gR[2, 0] + qw * gR[2, 1] - 2 * qx * gR[2, 2])
        gy = 2 * (-2 * qy * gR[0, 0] + qx * gR[0, 1] + qw * gR[0, 2] + qx * gR[1, 0] + qz * gR[1, 2]
                  - qw * gR[2, 0] + qz * gR[2, 1] - 2 * qy * gR[2, 2])
        gz = 2 * (-2 * qz * gR[0, 0] - qw * gR[0, 1] + qx * gR[0, 2] + qw * gR[1, 0] - 2 * qz * gR[1, 1]
                  + qy * gR[1, 2] + qx * gR[2, 0] + qy * gR[2, 1])
        dot = gw * qw + gx * qx + gy * qy + gz * qz
        g_quats[n, 0] = (gw - qw * dot) / nrm
        g_quats[n, 1] = (gx - qx * dot) / nrm
        g_quats[n, 2] = (gy - qy * dot) / nrm
        g_quats[n, 3] = (gz - qz * dot) / nrm


def _np(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy())


class _ProjectNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near, far):
        C, N = viewmats.shape[0], means.shape[0]
        dtype = means.detach().numpy().dtype
        means2d = np.empty((C, N, 2), dtype)
        depths = np.empty((C, N), dtype)
        conics = np.empty((C, N, 3), dtype)
        radii = np.empty((C, N, 2), np.int32)
        has_opac = opacities is not None
        opac = _np(opacities) if has_opac else np.zeros(1, dtype)
        args = [_np(t) for t in (means, quats, scales)]
        cams = [_np(viewmats), _np(Ks)]
        with _numba_threads():
            _forward_kernel(*args, opac, has_opac, *cams, width, height, eps2d, near, far,
                            means2d, depths, conics, radii)
        ctx.save_for_backward(means, quats, scales, viewmats, Ks)
        ctx.consts = (width, height, eps2d)
        r = torch.from_numpy(radii)
        ctx.mark_non_differentiable(r)
        ctx.radii = radii
        return r, torch.from_numpy(means2d), torch.from_numpy(depths), torch.from_numpy(conics)

    @staticmethod
    @once_differentiable
    def backward(ctx, _g_radii, g_m2d, g_depths, g_conics):
        means, quats, scales, viewmats, Ks = ctx.saved_tensors
        width, height, eps2d = ctx.consts
        C, N = viewmats.shape[0], means.shape[0]
        dtype = means.detach().numpy().dtype

        def grad(g, shape):
            return np.zeros(shape, dtype) if g is None else _np(g.to(means.dtype))

        out = [np.empty((N, 3), dtype), np.empty((N, 4), dtype), np.empty((N, 3), dtype)]
        with _numba_threads():
            _backward_kernel(*(_np(t) for t in (means, quats, scales, viewmats, Ks)), width, height, eps2d,
                             ctx.radii, grad(g_m2d, (C, N, 2)), grad(g_depths, (C, N)), grad(g_conics, (C, N, 3)),
                             *out)
        g_means, g_quats, g_scales = (torch.from_numpy(a) for a in out)
        need = ctx.needs_input_grad
        return (g_means if need[0] else None, g_quats if need[1] else None, g_scales if need[2] else None,
                None, None, None, None, None, None, None, None)


def project_gaussians(
    means: Tensor,  # (N, 3)
    quats: Tensor,  # (N, 4) wxyz, unnormalised
    scales: Tensor,  # (N, 3) standard deviations (activated)
    viewmats: Tensor,  # (C, 4, 4) world-to-camera, no gradient
    Ks: Tensor,  # (C, 3, 3) intrinsics in pixels, no gradient
    width: int,
    height: int,
    *,
    opacities: Tensor | None = None,  # (N,) activated; enables opacity-aware radii
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> Projection:
    """:func:`npga.splatting.render_torch.project_gaussians` in numba kernels (CPU, float32/64);
    differentiable in means, quats and scales."""
    dtype = means.dtype
    if dtype not in (torch.float32, torch.float64) or means.device.type != "cpu":
        raise ValueError(f"the numba projection needs float32/float64 CPU tensors, got {dtype} on {means.device}")
    like = dict(dtype=dtype)
    radii, means2d, depths, conics = _ProjectNumba.apply(
        means, quats.to(**like), scales.to(**like), None if opacities is None else opacities.detach().to(**like),
        viewmats.detach().to(**like), Ks.detach().to(**like), int(width), int(height), float(eps2d),
        float(near_plane), float(far_plane),
    )
    return Projection(radii=radii, means2d=means2d, depths=depths, conics=conics)


__all__ = ["project_gaussians"]
