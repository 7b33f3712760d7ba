"""An analytic stand-in for a head model's backward field, with a known exact inverse.

To test distillation and root finding we need a backward field B whose inverse F* is
known in closed form. :class:`AnalyticHeadWarp` builds the forward warp F* as a chain of
*triangular* maps, each of which moves some coordinates by an amount that depends only on
coordinates it leaves unchanged, so each step is inverted exactly by undoing it:

1. twist about the vertical axis by an angle that depends on the height y
   (a rotation about y keeps y and the radius sqrt(x^2 + z^2), so the angle is known);
2. a jaw-like push along z of the points below a mouth line, fading out sideways (x, y kept);
3. a brow-like lift along y of a frontal bump (x, z kept);
4. a cheek-like sideways shift along x of a bump (y, z kept).

The amplitudes are non-linear (tanh) functions of the expression code and, weakly, of the
identity code; the canonical "surface" is an ellipsoid whose radii depend on the identity.
The composition is a smooth bijection with displacements of 1-3 cm on a head-sized shape,
large enough that "negate the backward offset" is visibly wrong. It exposes the same
interface as :class:`npga.headmodels.NPHM` where the distillation needs it (``backward``,
``canonical_surface_points``, ``id_codes``, ``exp_codes``, ``id_dims``, ``exp_dims``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Amplitudes (radians / metres) and geometry of the four steps, in a head-sized frame.
_TWIST_RAD = 0.22
_JAW_M = 0.02
_BROW_M = 0.012
_CHEEK_M = 0.012


def _codes(code: Tensor, n: int, dims: int, name: str, like: Tensor) -> Tensor:
    code = torch.as_tensor(code, dtype=like.dtype, device=like.device)
    if code.dim() == 1:
        code = code[None].expand(n, -1)
    if code.shape != (n, dims):
        raise ValueError(f"{name} must have shape ({dims},) or ({n}, {dims}), got {tuple(code.shape)}")
    return code


class AnalyticHeadWarp:
    """Backward field B(x_p, z_id, z_exp) with exact inverse (see the module docstring).

    ``n_ids`` x ``n_exps`` training codes are drawn from N(0, 1) with ``seed``; held-out
    codes come from :meth:`sample_codes` with another seed.
    """

    def __init__(self, id_dims: int, exp_dims: int, n_ids: int = 8, n_exps: int = 20, seed: int = 0):
        if id_dims < 1 or exp_dims < 1:
            raise ValueError(f"code sizes must be positive, got id_dims={id_dims}, exp_dims={exp_dims}")
        self.id_dims, self.exp_dims = id_dims, exp_dims
        g = torch.Generator().manual_seed(1000 + seed)
        # Four amplitudes, each tanh(w_exp . z_exp + w_id . z_id); unit-variance arguments
        # for N(0, 1) codes so that tanh is used in its non-linear range.
        self.w_exp = torch.randn(4, exp_dims, generator=g, dtype=torch.float64) / math.sqrt(exp_dims)
        self.w_id = 0.3 * torch.randn(4, id_dims, generator=g, dtype=torch.float64) / math.sqrt(id_dims)
        self.w_shape = 0.1 * torch.randn(3, id_dims, generator=g, dtype=torch.float64) / math.sqrt(id_dims)
        self.id_codes, self.exp_codes = self.sample_codes(n_ids, n_exps, seed=seed)

    @classmethod
    def from_profile(cls, profile, seed: int | None = None) -> "AnalyticHeadWarp":
        """Code sizes from ``profile.head_model``, training set sizes from ``profile.data``."""
        return cls(
            profile.head_model.id_dims,
            profile.head_model.exp_dims,
            n_ids=profile.data.scan_identities,
            n_exps=profile.data.scan_expressions,
            seed=profile.seed if seed is None else seed,
        )

    def sample_codes(self, n_ids: int, n_exps: int, seed: int) -> tuple[Tensor, Tensor]:
        """Codes ``(n_ids, id_dims)`` and ``(n_ids, n_exps, exp_dims)`` (float32), from N(0, 1)."""
        g = torch.Generator().manual_seed(seed)
        return (
            torch.randn(n_ids, self.id_dims, generator=g),
            torch.randn(n_ids, n_exps, self.exp_dims, generator=g),
        )

    # ------------------------------------------------------------------ the warp
    def _amplitudes(self, z_id: Tensor, z_exp: Tensor) -> Tensor:
        """(N, 4) signed amplitudes of the four steps."""
        arg = z_exp @ self.w_exp.to(z_exp).T + z_id @ self.w_id.to(z_id).T
        scale = torch.tensor([_TWIST_RAD, _JAW_M, _BROW_M, _CHEEK_M]).to(arg)
        return torch.tanh(arg) * scale

    @staticmethod
    def _steps(x: Tensor, a: Tensor, inverse: bool) -> Tensor:
        """Apply the four triangular steps (forward order) or undo them (reverse order)."""
        sign = -1.0 if inverse else 1.0

        def twist(p: Tensor) -> Tensor:
            x_, y_, z_ = p.unbind(-1)
            theta = sign * a[:, 0] * torch.exp(-(((y_ - 0.0) / 0.06) ** 2))
            c, s = torch.cos(theta), torch.sin(theta)
            return torch.stack([c * x_ + s * z_, y_, -s * x_ + c * z_], -1)

        def jaw(p: Tensor) -> Tensor:
            x_, y_, z_ = p.unbind(-1)
            w = torch.sigmoid((-0.03 - y_) / 0.012) * torch.exp(-0.5 * (x_ / 0.05) ** 2)
            return torch.stack([x_, y_, z_ + sign * a[:, 1] * w], -1)

        def brow(p: Tensor) -> Tensor:
            x_, y_, z_ = p.unbind(-1)
            w = torch.exp(-0.5 * ((x_ / 0.04) ** 2 + ((z_ - 0.08) / 0.03) ** 2))
            return torch.stack([x_, y_ + sign * a[:, 2] * w, z_], -1)

        def cheek(p: Tensor) -> Tensor:
            x_, y_, z_ = p.unbind(-1)
            w = torch.exp(-0.5 * (((y_ + 0.01) / 0.035) ** 2 + ((z_ - 0.06) / 0.035) ** 2))
            return torch.stack([x_ + sign * a[:, 3] * w, y_, z_], -1)

        steps = [twist, jaw, brow, cheek]
        for step in reversed(steps) if inverse else steps:
            x = step(x)
        return x

    def forward_exact(self, x_c: Tensor, z_id: Tensor, z_exp: Tensor) -> Tensor:
        """The exact forward map F*: canonical (N, 3) -> posed (N, 3)."""
        n = x_c.shape[0]
        a = self._amplitudes(
            _codes(z_id, n, self.id_dims, "z_id", x_c), _codes(z_exp, n, self.exp_dims, "z_exp", x_c)
        )
        return self._steps(x_c, a, inverse=False)

    def backward(self, x_p: Tensor, z_id: Tensor, z_exp: Tensor) -> Tensor:
        """B: posed (N, 3) -> canonical (N, 3), the inverse of :meth:`forward_exact`."""
        if x_p.dim() != 2 or x_p.shape[-1] != 3:
            raise ValueError(f"x_p must have shape (N, 3), got {tuple(x_p.shape)}")
        n = x_p.shape[0]
        a = self._amplitudes(
            _codes(z_id, n, self.id_dims, "z_id", x_p), _codes(z_exp, n, self.exp_dims, "z_exp", x_p)
        )
        return self._steps(x_p, a, inverse=True)

    __call__ = backward

    # ------------------------------------------------------------------ canonical shape
    def radii(self, z_id: Tensor) -> Tensor:
        """Ellipsoid semi-axes (3,) in metres of identity ``z_id`` (id_dims,)."""
        base = torch.tensor([0.075, 0.10, 0.09], dtype=torch.float64)
        z = torch.as_tensor(z_id, dtype=torch.float64)
        return (base * (1.0 + torch.tanh(self.w_shape @ z))).float()

    def canonical_surface_points(self, z_id: Tensor, n: int, seed: int = 0) -> Tensor:
        """(n, 3) points on the identity's canonical ellipsoid (directions uniform on the sphere)."""
        g = torch.Generator().manual_seed(seed)
        d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
        return d * self.radii(z_id)
