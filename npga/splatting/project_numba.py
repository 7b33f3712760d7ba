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
:func:`_backward_kernel`): conic -> cov2d -> (J, Sigma_c) -> (p, Sigma) -> (mu, M) -> (q, s).
Every 3 x 3 product is written out in scalars (:func:`_sandwich`): small numpy arrays
inside the loops would each be a heap allocation and a BLAS call, slower than the torch
projection they replace (measured: the first version, with them, took 2.5x as long).
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


@njit(cache=True, fastmath=False)
def _rotation(qw, qx, qy, qz):
    """The 9 entries (row-major) of R for the unit quaternion (w, x, y, z), as quat_to_rotmat."""
    return (1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy),
            2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx),
            2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy))


@njit(cache=True, fastmath=False)
def _unit(q):
    nrm = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    nrm = max(nrm, 1e-12)  # torch.nn.functional.normalize's eps
    return q[0] / nrm, q[1] / nrm, q[2] / nrm, q[3] / nrm, nrm


@njit(cache=True, fastmath=False)
def _sandwich(v00, v01, v02, v10, v11, v12, v20, v21, v22, s00, s01, s02, s11, s12, s22):
    """V S V^T for symmetric S (6 entries): its 6 entries (00, 01, 02, 11, 12, 22).

    Scalars only: no small arrays (each would be a heap allocation) and no BLAS call."""
    t00 = v00 * s00 + v01 * s01 + v02 * s02
    t01 = v00 * s01 + v01 * s11 + v02 * s12
    t02 = v00 * s02 + v01 * s12 + v02 * s22
    t10 = v10 * s00 + v11 * s01 + v12 * s02
    t11 = v10 * s01 + v11 * s11 + v12 * s12
    t12 = v10 * s02 + v11 * s12 + v12 * s22
    t20 = v20 * s00 + v21 * s01 + v22 * s02
    t21 = v20 * s01 + v21 * s11 + v22 * s12
    t22 = v20 * s02 + v21 * s12 + v22 * s22
    return (t00 * v00 + t01 * v01 + t02 * v02, t00 * v10 + t01 * v11 + t02 * v12,
            t00 * v20 + t01 * v21 + t02 * v22, t10 * v10 + t11 * v11 + t12 * v12,
            t10 * v20 + t11 * v21 + t12 * v22, t20 * v20 + t21 * v21 + t22 * v22)


@njit(cache=True, fastmath=False)
def _covariance(q, s):
    """Sigma = R diag(s)^2 R^T (6 entries), the rotation entries and the unit quaternion."""
    qw, qx, qy, qz, nrm = _unit(q)
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = _rotation(qw, qx, qy, qz)
    a0, a1, a2 = s[0] * s[0], s[1] * s[1], s[2] * s[2]
    S = (r00 * r00 * a0 + r01 * r01 * a1 + r02 * r02 * a2, r00 * r10 * a0 + r01 * r11 * a1 + r02 * r12 * a2,
         r00 * r20 * a0 + r01 * r21 * a1 + r02 * r22 * a2, r10 * r10 * a0 + r11 * r11 * a1 + r12 * r12 * a2,
         r10 * r20 * a0 + r11 * r21 * a1 + r12 * r22 * a2, r20 * r20 * a0 + r21 * r21 * a1 + r22 * r22 * a2)
    return S, (r00, r01, r02, r10, r11, r12, r20, r21, r22), (qw, qx, qy, qz, nrm)


@njit(cache=True, fastmath=False)
def _pair(mu, S, V, t, K, width, height, eps2d):
    """The forward quantities of one (camera, Gaussian) pair, all scalars: the camera-space
    centre, Sigma_c, the focal lengths, the clamped x/z and y/z (and whether they were
    inside the clamp), J's entries and cov2d (a, b; b, cc)."""
    x = V[0, 0] * mu[0] + V[0, 1] * mu[1] + V[0, 2] * mu[2] + t[0]
    y = V[1, 0] * mu[0] + V[1, 1] * mu[1] + V[1, 2] * mu[2] + t[1]
    z = V[2, 0] * mu[0] + V[2, 1] * mu[1] + V[2, 2] * mu[2] + t[2]
    c00, c01, c02, c11, c12, c22 = _sandwich(V[0, 0], V[0, 1], V[0, 2], V[1, 0], V[1, 1], V[1, 2],
                                             V[2, 0], V[2, 1], V[2, 2], S[0], S[1], S[2], S[3], S[4], S[5])
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lox, hix = -(cx / fx + FOV_MARGIN * tan_fovx), (width - cx) / fx + FOV_MARGIN * tan_fovx
    loy, hiy = -(cy / fy + FOV_MARGIN * tan_fovy), (height - cy) / fy + FOV_MARGIN * tan_fovy
    # J at the centre clamped to just outside the field of view; cov2d = J Sc J^T + eps I
    tx, ty = x / z, y / z
    in_x, in_y = lox <= tx <= hix, loy <= ty <= hiy
    tx, ty = min(max(tx, lox), hix), min(max(ty, loy), hiy)
    j00, j02 = fx / z, -fx * (z * tx) / (z * z)
    j11, j12 = fy / z, -fy * (z * ty) / (z * z)
    a = j00 * j00 * c00 + 2 * j00 * j02 * c02 + j02 * j02 * c22 + eps2d
    b = j00 * j11 * c01 + j00 * j12 * c02 + j02 * j11 * c12 + j02 * j12 * c22
    cc = j11 * j11 * c11 + 2 * j11 * j12 * c12 + j12 * j12 * c22 + eps2d
    return (x, y, z, (c00, c01, c02, c11, c12, c22), fx, fy, tx, ty, in_x, in_y,
            j00, j02, j11, j12, a, b, cc)


@njit(parallel=True, cache=True, fastmath=False)
def _forward_kernel(means, quats, scales, opac, has_opac, Vs, ts, Ks, width, height, eps2d, near, far,
                    means2d, depths, conics, radii):
    N, C = means.shape[0], Vs.shape[0]
    for n in prange(N):
        S, _, _ = _covariance(quats[n], scales[n])
        extend = EXTEND_3SIGMA
        ok_o = True
        if has_opac:
            o = float(opac[n])
            ok_o = o >= ALPHA_MIN
            extend = min(math.sqrt(2.0 * math.log(max(o, ALPHA_MIN) / ALPHA_MIN)), EXTEND_3SIGMA)
        mu = means[n]
        for c in range(C):
            means2d[c, n, 0] = 0.0
            means2d[c, n, 1] = 0.0
            depths[c, n] = 0.0
            conics[c, n, 0] = 0.0
            conics[c, n, 1] = 0.0
            conics[c, n, 2] = 0.0
            radii[c, n, 0] = 0
            radii[c, n, 1] = 0
            K = Ks[c]
            z = Vs[c, 2, 0] * mu[0] + Vs[c, 2, 1] * mu[1] + Vs[c, 2, 2] * mu[2] + ts[c, 2]
            if not (z > near and z < far) or not ok_o:
                continue
            x, y, z, _, _, _, _, _, _, _, _, _, _, _, a, b, cc = _pair(mu, S, Vs[c], ts[c], K, width, height, eps2d)
            det = a * cc - b * b
            if not det > 0:
                continue
            u = (K[0, 0] * x + K[0, 1] * y + K[0, 2] * z) / z
            v = (K[1, 0] * x + K[1, 1] * y + K[1, 2] * z) / z
            rx = math.ceil(extend * math.sqrt(max(a, 0.0)))
            ry = math.ceil(extend * math.sqrt(max(cc, 0.0)))
            if not (u + rx > 0 and u - rx < width and v + ry > 0 and v - ry < height):
                continue
            d = max(det, DET_MIN)
            means2d[c, n, 0], means2d[c, n, 1] = u, v
            depths[c, n] = z
            conics[c, n, 0], conics[c, n, 1], conics[c, n, 2] = cc / d, -b / d, a / d
            radii[c, n, 0], radii[c, n, 1] = int(rx), int(ry)


@njit(parallel=True, cache=True, fastmath=False)
def _backward_kernel(means, quats, scales, Vs, ts, Ks, width, height, eps2d, radii,
                     v_m2d, v_depth, v_conic, g_means, g_quats, g_scales):
    N, C = means.shape[0], Vs.shape[0]
    for n in prange(N):
        s = scales[n]
        S, R, Q = _covariance(quats[n], s)
        mu = means[n]
        gm0, gm1, gm2 = 0.0, 0.0, 0.0
        gS00, gS01, gS02, gS11, gS12, gS22 = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        seen = False
        for c in range(C):
            if radii[c, n, 0] <= 0 or radii[c, n, 1] <= 0:
                continue
            seen = True
            V, K = Vs[c], Ks[c]
            (x, y, z, Sc, fx, fy, tx, ty, in_x, in_y,
             j00, j02, j11, j12, a, b, cc) = _pair(mu, S, V, ts[c], K, width, height, eps2d)
            xc, yc = z * tx, z * ty
            gu, gv = float(v_m2d[c, n, 0]), float(v_m2d[c, n, 1])
            gA, gB, gC = float(v_conic[c, n, 0]), float(v_conic[c, n, 1]), float(v_conic[c, n, 2])
            det = a * cc - b * b
            # conic = (cc, -b, a) / d, d = max(det, DET_MIN)
            if det > DET_MIN:
                num = gA * cc - gB * b + gC * a
                ga = gC / det - num * cc / (det * det)
                gb = -gB / det + 2.0 * b * num / (det * det)
                gc = gA / det - num * a / (det * det)
            else:
                ga, gb, gc = gC / DET_MIN, -gB / DET_MIN, gA / DET_MIN
            # cov2d = J Sc J^T with G = [[ga, h], [h, gc]]: dL/dSc = J^T G J, dL/dJ = 2 G J Sc
            h = 0.5 * gb
            p0, p1, p2 = ga * j00, h * j11, ga * j02 + h * j12  # row 0 of G J
            q0, q1, q2 = h * j00, gc * j11, h * j02 + gc * j12  # row 1 of G J
            g00, g01, g02 = j00 * p0, j00 * p1, j00 * p2
            g11, g12 = j11 * q1, j11 * q2
            g22 = j02 * p2 + j12 * q2
            gJ00 = 2.0 * (p0 * Sc[0] + p1 * Sc[1] + p2 * Sc[2])
            gJ02 = 2.0 * (p0 * Sc[2] + p1 * Sc[4] + p2 * Sc[5])
            gJ11 = 2.0 * (q0 * Sc[1] + q1 * Sc[3] + q2 * Sc[4])
            gJ12 = 2.0 * (q0 * Sc[2] + q1 * Sc[4] + q2 * Sc[5])
            gx, gy = 0.0, 0.0
            gz = -fx / (z * z) * gJ00 - fy / (z * z) * gJ11
            # j02 = -fx xc / z^2, xc = z tx, tx = clamp(x / z) (the same for y)
            g_xc = -fx / (z * z) * gJ02
            gz += 2.0 * fx * xc / (z * z * z) * gJ02 + tx * g_xc
            if in_x:
                gx += g_xc
                gz += -x / z * g_xc
            g_yc = -fy / (z * z) * gJ12
            gz += 2.0 * fy * yc / (z * z * z) * gJ12 + ty * g_yc
            if in_y:
                gy += g_yc
                gz += -y / z * g_yc
            # (u, v) = (K p) / z, and the depth itself
            gx += K[0, 0] / z * gu + K[1, 0] / z * gv
            gy += K[0, 1] / z * gu + K[1, 1] / z * gv
            gz += -(K[0, 0] * x + K[0, 1] * y) / (z * z) * gu - (K[1, 0] * x + K[1, 1] * y) / (z * z) * gv
            gz += float(v_depth[c, n])
            # p = V mu + t: dL/dmu = V^T g_p; Sc = V S V^T: dL/dS = V^T dL/dSc V
            gm0 += V[0, 0] * gx + V[1, 0] * gy + V[2, 0] * gz
            gm1 += V[0, 1] * gx + V[1, 1] * gy + V[2, 1] * gz
            gm2 += V[0, 2] * gx + V[1, 2] * gy + V[2, 2] * gz
            e = _sandwich(V[0, 0], V[1, 0], V[2, 0], V[0, 1], V[1, 1], V[2, 1], V[0, 2], V[1, 2], V[2, 2],
                          g00, g01, g02, g11, g12, g22)
            gS00 += e[0]
            gS01 += e[1]
            gS02 += e[2]
            gS11 += e[3]
            gS12 += e[4]
            gS22 += e[5]
        g_means[n, 0], g_means[n, 1], g_means[n, 2] = gm0, gm1, gm2
        if not seen:
            for i in range(4):
                g_quats[n, i] = 0.0
            for i in range(3):
                g_scales[n, i] = 0.0
            continue
        # Sigma = M M^T, M = R diag(s): dL/dM = 2 gS M, i.e. gM_ij = 2 s_j sum_k gS_ik R_kj
        r00, r01, r02, r10, r11, r12, r20, r21, r22 = R
        gR = np.empty((3, 3))  # one small array per Gaussian (not per camera)
        for j in range(3):
            rk0, rk1, rk2 = (r00, r10, r20) if j == 0 else ((r01, r11, r21) if j == 1 else (r02, r12, r22))
            m0 = 2.0 * s[j] * (gS00 * rk0 + gS01 * rk1 + gS02 * rk2)
            m1 = 2.0 * s[j] * (gS01 * rk0 + gS11 * rk1 + gS12 * rk2)
            m2 = 2.0 * s[j] * (gS02 * rk0 + gS12 * rk1 + gS22 * rk2)
            g_scales[n, j] = m0 * rk0 + m1 * rk1 + m2 * rk2
            gR[0, j], gR[1, j], gR[2, j] = m0 * s[j], m1 * s[j], m2 * s[j]
        # R(q) of the unit quaternion, then through q / |q|
        qw, qx, qy, qz, nrm = Q
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


def _f64(t: Tensor) -> np.ndarray:
    """The kernels read every input in float64 (one vectorised conversion per call)."""
    return np.ascontiguousarray(t.detach().numpy(), dtype=np.float64)


def _cameras(viewmats: Tensor, Ks: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotations (C, 3, 3), translations (C, 3) and intrinsics (C, 3, 3) in float64."""
    vm = viewmats.detach().double().numpy()
    return (np.ascontiguousarray(vm[:, :3, :3]), np.ascontiguousarray(vm[:, :3, 3]),
            np.ascontiguousarray(Ks.detach().double().numpy()))


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
        args = [_f64(t) for t in (means, quats, scales)]
        with _numba_threads():
            _forward_kernel(*args, opac, has_opac, *_cameras(viewmats, Ks), width, height, eps2d, near, far,
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
            _backward_kernel(*(_f64(t) for t in (means, quats, scales)), *_cameras(viewmats, Ks), width, height, eps2d,
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
