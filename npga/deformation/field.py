"""The forward deformation field F: canonical space -> posed space (NPGA, Sec. 3).

NPGA's avatar keeps its Gaussians in a canonical (neutral) space and must move them to
the posed space of each frame before rasterization, so it needs a *forward* map

    x_p = F(x_c, z_exp, z_id) = x_c + MLP([x_c / s, z_exp, z_id]) * s

where ``s`` is a length scale (about a head's radius) that makes the network's inputs and
outputs of order one. The offset form with a zero-initialised last layer starts F at the
identity, which is already a fair guess for a face: most points move by millimetres.

The architecture mirrors the backward deformation MLP of MonoNPHM (an MLP with one skip
connection that re-injects the input halfway), so that F can represent whatever B does.
Codes are standardised with statistics of the training codes (:meth:`set_code_stats`):
auto-decoded latent codes often have a spread of 0.01-0.1, and an MLP learns faster from
inputs of unit scale.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from npga.headmodels.linear import Linear, linear


def _broadcast_code(code: Tensor | None, n: int, dims: int, name: str) -> Tensor | None:
    """Codes come as one code (d,) for all points or one per point (N, d)."""
    if dims == 0:
        return None
    if code is None:
        raise ValueError(f"this field is conditioned on {name} ({dims} dims) but got None")
    if code.dim() == 1:
        code = code[None].expand(n, -1)
    if code.shape != (n, dims):
        raise ValueError(f"{name} must have shape ({dims},) or ({n}, {dims}), got {tuple(code.shape)}")
    return code


class _SiluTangent(torch.autograd.Function):
    """SiLU on a pre-activation z (N, H) and on its tangents dz (3, N, H), fused.

    Forward: h = SiLU(z) = z s, s = sigmoid(z), and dh = SiLU'(z) dz with
    SiLU'(z) = s (1 + z (1 - s)). Backward, for output gradients gh (N, H), gdh (3, N, H):

        grad_dz = SiLU'(z) gdh,   grad_z = SiLU'(z) gh + SiLU''(z) sum_k gdh_k dz_k,
        SiLU''(z) = s (1 - s) (2 + z (1 - 2 s)).

    The same numbers as autograd's graph of the unfused expression (tests), with fewer
    passes over memory: autograd keeps a dozen (N, H) intermediates and reduces the
    broadcast factor's gradient over the tangent axis, this keeps four and reduces with
    three contiguous multiply-adds (benchmarks/jacobian_step.py times both). Not twice
    differentiable (nothing needs it).
    """

    @staticmethod
    def forward(ctx, z: Tensor, dz: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.sigmoid(z)
        d1 = (1.0 - s).mul_(z).add_(1.0).mul_(s)  # SiLU'(z)
        ctx.save_for_backward(z, dz, s, d1)
        return z * s, dz * d1

    @staticmethod
    @once_differentiable
    def backward(ctx, gh: Tensor | None, gdh: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        z, dz, s, d1 = ctx.saved_tensors
        g_z = gh * d1 if gh is not None else torch.zeros_like(z)
        g_dz = None
        if gdh is not None:
            g_dz = gdh * d1
            q = gdh[0] * dz[0]  # sum_k gdh_k dz_k
            for k in range(1, dz.shape[0]):
                q.addcmul_(gdh[k], dz[k])
            d2 = (1.0 - 2.0 * s).mul_(z).add_(2.0).mul_(s).mul_(1.0 - s)  # SiLU''(z)
            g_z.addcmul_(q, d2)
        return g_z, g_dz


class ForwardField(nn.Module):
    """F(x_c, z_exp[, z_id]) -> x_p, an MLP predicting an offset (see the module docstring).

    ``exp_dims``/``id_dims`` are the code sizes of the head model whose backward field F is
    distilled from (``id_dims=0``: not conditioned on identity); ``hidden``/``layers``
    come from :class:`npga.config.DeformConfig`; ``scale`` is the length (metres) that
    normalises coordinates and offsets.
    """

    def __init__(
        self,
        exp_dims: int,
        id_dims: int = 0,
        hidden: int = 128,
        layers: int = 4,
        scale: float = 0.1,
        n_freqs: int = 0,
    ) -> None:
        super().__init__()
        if layers < 2:
            raise ValueError(f"ForwardField needs at least 2 layers, got {layers}")
        self.hparams: dict[str, Any] = dict(
            exp_dims=exp_dims, id_dims=id_dims, hidden=hidden, layers=layers, scale=scale,
            n_freqs=n_freqs,
        )
        self.exp_dims, self.id_dims, self.scale = exp_dims, id_dims, float(scale)
        self.n_freqs = n_freqs
        d_in = 3 + 6 * n_freqs + exp_dims + id_dims
        self.skip_at = layers // 2  # layer that sees the input again (MonoNPHM-style skip)
        self.linears = nn.ModuleList()
        for i in range(layers):
            fan_in = d_in if i == 0 else hidden + (d_in if i == self.skip_at else 0)
            self.linears.append(Linear(fan_in, hidden))
        self.out = Linear(hidden, 3)
        # Zero last layer: F starts as the identity map.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.act = nn.SiLU()  # smooth, so F's Jacobian (used on covariances) is smooth too
        self.register_buffer("exp_mean", torch.zeros(exp_dims))
        self.register_buffer("exp_std", torch.ones(exp_dims))
        self.register_buffer("id_mean", torch.zeros(id_dims))
        self.register_buffer("id_std", torch.ones(id_dims))

    @torch.no_grad()
    def set_code_stats(self, exp_codes: Tensor, id_codes: Tensor | None = None) -> None:
        """Standardise codes with the mean/std of the training codes (any leading shape)."""
        e = exp_codes.reshape(-1, self.exp_dims).float()
        self.exp_mean.copy_(e.mean(0))
        self.exp_std.copy_(e.std(0).clamp_min(1e-6) if len(e) > 1 else torch.ones_like(e[0]))
        if self.id_dims and id_codes is not None:
            c = id_codes.reshape(-1, self.id_dims).float()
            self.id_mean.copy_(c.mean(0))
            self.id_std.copy_(c.std(0).clamp_min(1e-6) if len(c) > 1 else torch.ones_like(c[0]))

    def _encode(self, x_c: Tensor, z_exp: Tensor, z_id: Tensor | None) -> tuple[Tensor, Tensor]:
        """The MLP's input (N, D_in) and the frequencies of its Fourier features."""
        n = x_c.shape[0]
        z_exp = _broadcast_code(z_exp, n, self.exp_dims, "z_exp")
        z_id = _broadcast_code(z_id, n, self.id_dims, "z_id") if self.id_dims else None
        x = x_c / self.scale
        parts = [x, (z_exp - self.exp_mean) / self.exp_std]
        freqs = (2.0 ** torch.arange(self.n_freqs, device=x.device, dtype=x.dtype)) * torch.pi
        if self.n_freqs:
            # Low-frequency Fourier features of the position (NeRF's positional encoding):
            # they let a small MLP fit position-dependent motion with fewer steps.
            ang = (x[..., None] * freqs).flatten(-2)  # (N, 3 * n_freqs)
            parts += [torch.sin(ang), torch.cos(ang)]
        if z_id is not None:
            parts.append((z_id - self.id_mean) / self.id_std)
        return torch.cat(parts, dim=-1), freqs  # (N, 3 + E [+ 6 n_freqs] [+ I])

    def offset(self, x_c: Tensor, z_exp: Tensor, z_id: Tensor | None = None) -> Tensor:
        """x_p - x_c in metres, (N, 3)."""
        inp, _ = self._encode(x_c, z_exp, z_id)
        h = inp
        for i, lin in enumerate(self.linears):
            if i == self.skip_at:
                h = torch.cat([h, inp], dim=-1)
            h = self.act(lin(h))
        return self.out(h) * self.scale

    def forward_and_jacobian(
        self, x_c: Tensor, z_exp: Tensor, z_id: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x_p = F(x_c) (N, 3) and its Jacobian J = dx_p/dx_c (N, 3, 3), in one forward pass.

        Forward-mode differentiation written out layer by layer: next to every activation
        h (N, H) we carry its derivatives with respect to the three input coordinates,
        dh (3, N, H), slab k the derivative along x_c[k]. A linear layer maps them like h
        (dh W^T), SiLU multiplies them by SiLU'(z) (:class:`_SiluTangent`), and the skip
        concatenates them like h. The cost is that of a forward pass with four columns
        instead of one, and J is an ordinary differentiable tensor: training
        backpropagates through it once, without the double-backward graph that
        autograd's Jacobian needs (three vector-Jacobian products with
        ``create_graph=True``). Equal to the autograd Jacobian to rounding
        (tests/test_deformation.py).
        """
        if x_c.dim() != 2 or x_c.shape[-1] != 3:
            raise ValueError(f"x_c must have shape (N, 3), got {tuple(x_c.shape)}")
        if not isinstance(self.act, nn.SiLU):
            raise NotImplementedError("forward_and_jacobian is written for SiLU activations")
        inp, freqs = self._encode(x_c, z_exp, z_id)
        n = inp.shape[0]
        # Only the position columns of the input depend on x_c (x and its Fourier
        # features; the codes do not), so the tangents are kept for those P columns only:
        # d_pos (3, N, P). A layer that reads the input multiplies d_pos by its P matching
        # weight columns instead of a mostly zero (3, N, D_in) block.
        lo, F = 3 + self.exp_dims, self.n_freqs
        pos_cols = torch.cat([torch.arange(3, device=inp.device),
                              torch.arange(lo, lo + 6 * F, device=inp.device)])
        d_pos = inp.new_zeros(3, n, 3 + 6 * F)
        for a in range(3):
            d_pos[a, :, a] = 1.0 / self.scale
        if F:
            # feature (axis a, freq f) sits at column 3 + a * F + f of d_pos (sin), and
            # 3 * F further (cos); it depends on x_c[a] only
            ang = (x_c / self.scale)[..., None] * freqs  # (N, 3, F)
            d_sin = (torch.cos(ang) * freqs / self.scale).transpose(0, 1)  # (3, N, F)
            d_cos = (-torch.sin(ang) * freqs / self.scale).transpose(0, 1)
            for a in range(3):
                d_pos[a, :, 3 + a * F:3 + (a + 1) * F] = d_sin[a]
                d_pos[a, :, 3 + (3 + a) * F:3 + (4 + a) * F] = d_cos[a]
        h, dh = inp, None
        for i, lin in enumerate(self.linears):
            W = lin.weight  # (H, fan_in)
            if i == 0:
                dz = linear(d_pos, W[:, pos_cols])  # (3, N, H): the bias does not depend on x_c
            elif i == self.skip_at:  # the layer sees [h, inp]
                hidden = h.shape[-1]
                dz = linear(dh, W[:, :hidden]) + linear(d_pos, W[:, hidden + pos_cols])
                h = torch.cat([h, inp], dim=-1)
            else:
                dz = linear(dh, W)
            h, dh = _SiluTangent.apply(lin(h), dz)  # (N, H), (3, N, H)
        x_p = x_c + self.out(h) * self.scale
        J_t = linear(dh, self.out.weight) * self.scale  # (3 in, N, 3 out) = (dx_p / dx_c)^T - I
        return x_p, torch.eye(3, dtype=inp.dtype, device=inp.device) + J_t.permute(1, 2, 0)

    def forward(self, x_c: Tensor, z_exp: Tensor, z_id: Tensor | None = None) -> Tensor:
        """x_p (N, 3) from canonical points x_c (N, 3); codes (d,) or (N, d)."""
        if x_c.dim() != 2 or x_c.shape[-1] != 3:
            raise ValueError(f"x_c must have shape (N, 3), got {tuple(x_c.shape)}")
        return x_c + self.offset(x_c, z_exp, z_id)

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Any]:
        """Everything needed to rebuild the field: hyper-parameters and weights."""
        return {"hparams": dict(self.hparams), "state_dict": self.state_dict()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ForwardField":
        try:
            field = cls(**state["hparams"])
            field.load_state_dict(state["state_dict"])
        except (KeyError, RuntimeError, TypeError) as err:
            raise ValueError(f"not a ForwardField state: {err}") from err
        return field
