"""Moving 3D Gaussians with the forward field: means through F, shapes through its Jacobian.

A Gaussian with mean mu and covariance Sigma_c, pushed through a smooth map F, is to first
order the Gaussian with mean F(mu) and covariance

    Sigma_p = J Sigma_c J^T,   J = dF/dx_c (mu)                                  (1)

(the same linearisation EWA splatting uses for the projection to the image). The avatar
stores a Gaussian as a rotation R (quaternion) and log-scales s, Sigma = R diag(e^s)^2 R^T,
so (1) has to be turned back into a rotation and scales. Two ways:

* ``mode="exact"`` (default): eigendecompose Sigma_p = V diag(lambda) V^T and read R_p = V,
  s_p = log(lambda) / 2. This is (1) exactly. The textbook gradient of an eigendecomposition
  divides by eigenvalue gaps, 1 / (lambda_j - lambda_i), and is infinite for a round Gaussian
  (equal scales: how 3DGS initialises every Gaussian). :class:`_SafeEigh` replaces that
  factor by (lambda_j - lambda_i) / ((lambda_j - lambda_i)^2 + delta^2), a Lorentzian
  broadening that leaves well-separated eigenvalues untouched and gives zero rotation
  gradient where the axes are undetermined anyway.
* ``mode="polar"``: split J = U P into a rotation U and a symmetric stretch P (polar
  decomposition); rotate the Gaussian by U, R_p = U R, and scale each local axis r_i by how
  much J stretches it, e^{s_p,i} = e^{s_i} |J r_i|. No eigendecomposition; exact when J is
  a rotation times a uniform scale, otherwise it drops the shear of J inside the Gaussian's
  frame, an error of first order in that shear (tests measure it: a few percent of the
  covariance for |grad F - I| ~ 0.02, tens of percent for 0.2, e.g. an opening jaw). U comes
  from Newton's iteration U <- (U + U^-T) / 2, smooth and free of SVD's gradient trouble.

Jacobians, three ways (their cost is measured in chapter 4 and ``benchmarks/forward_field.py``):

* ``jacobian="analytic"`` (the avatar's default): the field computes J with its own forward
  pass, carrying derivatives through every layer (forward mode by hand,
  :meth:`~npga.deformation.field.ForwardField.forward_and_jacobian`); exact, one pass with
  four columns, and training backpropagates through it with one ordinary backward pass.
* ``jacobian="autograd"``: one forward and three backward passes through F
  (:func:`npga.deformation.baselines.pointwise_jacobian`); training then needs their
  double-backward graph. Works for any field.
* ``jacobian="fd"``: six extra forward passes (central differences, step ``fd_eps``
  metres); approximate (error ~ fd_eps^2), works for any field.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from npga.deformation.baselines import pointwise_jacobian
from npga.splatting.gaussians import quat_to_rotmat


def rotmat_to_quat(R: Tensor) -> Tensor:
    """Unit wxyz quaternions (..., 4) with w >= 0 from rotation matrices (..., 3, 3).

    Shepperd's method: pick, per matrix, the largest of 4 candidate denominators
    (trace and the three diagonal entries) so that no branch divides by a small number.
    """
    m = R
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    tr = m00 + m11 + m22
    cands = torch.stack([tr, m00, m11, m22], dim=-1)
    k = cands.argmax(dim=-1)
    # Four candidate quaternions (up to scale), each well conditioned in its own branch.
    q_w = torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1)
    q_x = torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1)
    q_y = torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22, m[..., 1, 2] + m[..., 2, 1]], -1)
    q_z = torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22], -1)
    allq = torch.stack([q_w, q_x, q_y, q_z], dim=-2)  # (..., 4 branches, 4)
    q = torch.take_along_dim(allq, k[..., None, None].expand(*k.shape, 1, 4), dim=-2).squeeze(-2)
    q = torch.nn.functional.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def polar_rotation(J: Tensor, iterations: int = 8) -> Tensor:
    """The rotation U of the polar decomposition J = U P, (N, 3, 3), by Newton's iteration.

    U_{k+1} = (U_k + U_k^{-T}) / 2 converges quadratically to U from U_0 = J for any
    invertible J with det J > 0 (a fold, det J <= 0, has no rotation part: garbage in).
    """
    U = J
    for _ in range(iterations):
        U = 0.5 * (U + torch.linalg.inv(U).transpose(-1, -2))
    return U


def deform_gaussians(
    field: Callable[..., Tensor],
    means: Tensor,
    quats: Tensor,
    log_scales: Tensor,
    z_exp: Tensor,
    z_id: Tensor | None = None,
    *,
    mode: str = "exact",
    jacobian: str = "autograd",
    fd_eps: float = 1e-4,
) -> tuple[Tensor, Tensor, Tensor]:
    """Push canonical Gaussians through a forward field, eq. (1).

    field: ``field(x_c (N, 3), z_exp, z_id) -> x_p (N, 3)``, e.g. a
    :class:`~npga.deformation.field.ForwardField` (called without ``z_id`` when it is None).
    means (N, 3) metres; quats (N, 4) wxyz, unnormalised; log_scales (N, 3); z_exp (E,) or
    (N, E); z_id (I,) or (N, I) or None.
    Returns ``(means_p (N, 3), quats_p (N, 4) unit wxyz, log_scales_p (N, 3))``; gradients
    flow to the inputs and to the field's parameters when grad mode is on.
    """
    if means.dim() != 2 or means.shape[-1] != 3:
        raise ValueError(f"means must have shape (N, 3), got {tuple(means.shape)}")
    n = means.shape[0]
    if quats.shape != (n, 4) or log_scales.shape != (n, 3):
        raise ValueError(
            f"quats (N, 4) and log_scales (N, 3) must match means ({n}, 3): got "
            f"{tuple(quats.shape)} and {tuple(log_scales.shape)}"
        )
    if mode not in ("polar", "exact"):
        raise ValueError(f"mode must be 'polar' or 'exact', got {mode!r}")

    def F(x: Tensor) -> Tensor:
        return field(x, z_exp) if z_id is None else field(x, z_exp, z_id)

    if jacobian == "analytic":
        if not hasattr(field, "forward_and_jacobian"):
            raise ValueError(
                f"jacobian='analytic' needs a field with forward_and_jacobian (a ForwardField), "
                f"got {type(field).__name__}; use 'autograd' or 'fd'"
            )
        means_p, J = field.forward_and_jacobian(means, z_exp, z_id)  # (N, 3), (N, 3, 3)
    else:
        means_p, J = field_jacobian(F, means, method=jacobian, fd_eps=fd_eps)
    R = quat_to_rotmat(quats)  # (N, 3, 3), columns are the Gaussian's axes
    if mode == "polar":
        U = polar_rotation(J)
        quats_p = rotmat_to_quat(U @ R)
        stretch = (J @ R).norm(dim=-2)  # (N, 3): |J r_i|
        log_scales_p = log_scales + torch.log(stretch)
    else:
        M = J @ R * torch.exp(log_scales)[:, None, :]  # J R S
        evals, V = _SafeEigh.apply(M @ M.transpose(-1, -2))
        # eigh may return a reflection; flipping one axis of a Gaussian changes nothing.
        flip = torch.linalg.det(V) < 0
        V = torch.where(flip[:, None, None], V * torch.tensor([1.0, 1.0, -1.0]).to(V), V)
        quats_p = rotmat_to_quat(V)
        log_scales_p = 0.5 * torch.log(evals.clamp_min(1e-30))
    return means_p, quats_p, log_scales_p


class _SafeEigh(torch.autograd.Function):
    """``torch.linalg.eigh`` of symmetric (N, 3, 3) matrices with a gradient that stays finite
    for repeated eigenvalues (see the module docstring; delta = 1e-3 x the mean eigenvalue)."""

    @staticmethod
    def forward(ctx, A: Tensor):
        evals, V = torch.linalg.eigh(A)
        ctx.save_for_backward(evals, V)
        return evals, V

    @staticmethod
    def backward(ctx, g_evals: Tensor, g_V: Tensor):
        evals, V = ctx.saved_tensors
        gap = evals[..., None, :] - evals[..., :, None]  # (N, 3, 3): lambda_j - lambda_i
        delta = 1e-3 * evals.abs().mean(-1, keepdim=True)[..., None] + 1e-30
        Fm = gap / (gap.square() + delta.square())
        inner = torch.diag_embed(g_evals) if g_evals is not None else torch.zeros_like(V)
        if g_V is not None:
            inner = inner + Fm * (V.transpose(-1, -2) @ g_V)
        gA = V @ inner @ V.transpose(-1, -2)
        return 0.5 * (gA + gA.transpose(-1, -2))


def field_jacobian(
    F: Callable[[Tensor], Tensor], x: Tensor, method: str = "autograd", fd_eps: float = 1e-4
) -> tuple[Tensor, Tensor]:
    """F(x) (N, 3) and dF/dx (N, 3, 3) for a pointwise map; differentiable in grad mode."""
    if method == "autograd":
        return pointwise_jacobian(F, x, create_graph=torch.is_grad_enabled())
    if method == "fd":
        y = F(x)
        eye = torch.eye(3, dtype=x.dtype, device=x.device) * fd_eps
        cols = [(F(x + eye[i]) - F(x - eye[i])) / (2 * fd_eps) for i in range(3)]
        return y, torch.stack(cols, dim=-1)
    raise ValueError(f"jacobian must be 'autograd' or 'fd', got {method!r}")
