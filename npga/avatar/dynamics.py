"""The detail network G: expression-dependent corrections on top of the forward field F.

NPGA (Giebenhain et al. 2024, Sec. 4.2) moves each canonical Gaussian in two parts, the
dynamics module D = F + G:

* F(x_c, z_exp), the forward deformation distilled from the head model's backward field
  (:mod:`npga.deformation`), carries the coarse motion of the head model: jaw, lips, cheeks.
  It is shared by all Gaussians and smooth in space, because the head model is.
* G(x_c, f_i, z_exp), a small MLP, adds what the head model cannot express: wrinkles,
  the inside of the mouth, eyelid folds, hair that moves with the face.

G's output per Gaussian is an offset of its position (metres), of its (unnormalised)
rotation quaternion and of its log-scales, and -- with ``appearance=True``
(``AvatarConfig.dynamic_appearance``) -- of its colour (RGB, added to the SH colour) and
of its opacity logit. Why appearance: much of what an expression changes on a face is
not geometry but shading -- a wrinkle is a dark line and a bump in the normal, far finer
than the Gaussians that would have to fold to cast it. Geometry offsets alone cannot
draw it, and the static SH colours and per-Gaussian features cannot change with the
expression. Gaussian Head Avatar (Xu et al. 2024) conditions colour and opacity on the
expression in exactly this way; NPGA says its per-Gaussian features govern each
primitive's *dynamic behaviour* without listing the outputs, so this is our reading,
switchable for the experiment that tests it (chapter 5).

Per-Gaussian features f_i
-------------------------
An MLP on positions alone must represent a function that changes abruptly across the
face (a crease on one side of a line, none on the other) from a smooth encoding of x_c.
With a handful of Fourier octaves it cannot: the result is a blur of neighbouring
details. NPGA gives every Gaussian a learned latent vector f_i (dimension
``AvatarConfig.feature_dim``), optimised jointly with the Gaussians: a *learned
positional encoding* that can differ arbitrarily between neighbours. ``feature_dim = 0``
is the "vanilla" variant where G sees only

    gamma(x) = [x, sin(2^k pi x), cos(2^k pi x)]_{k < L},  x = (x_c - c) / s,

NeRF's encoding of the canonical position, centred on the head (c) and divided by a
head-sized length s (0.1 m), with L = ``AvatarConfig.detail_freqs`` octaves.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from npga.headmodels.linear import Linear
from npga.headmodels.nphm import positional_encoding


class DetailNetwork(nn.Module):
    """G(x_c, f, z_exp) -> (d_means (N, 3) metres, d_quats (N, 4), d_log_scales (N, 3)).

    ``exp_dims``: size of z_exp; ``feature_dim``: size of the per-Gaussian features (0:
    vanilla); ``hidden``/``layers``: the MLP; ``n_freqs``: octaves of the positional
    encoding; ``center``/``scale``: normalisation of x_c; ``appearance``: also predict
    colour and opacity offsets (:meth:`outputs`). The last layer starts at zero, so D = F
    and the appearance is the static one at initialisation: G only learns what F misses.
    """

    N_GEOMETRY = 10  # 3 position + 4 quaternion + 3 log-scale
    N_APPEARANCE = 4  # 3 colour + 1 opacity logit

    def __init__(
        self,
        exp_dims: int,
        feature_dim: int = 0,
        hidden: int = 64,
        layers: int = 3,
        n_freqs: int = 4,
        center: tuple[float, float, float] = (0.0, 0.0, 0.0),
        scale: float = 0.1,
        appearance: bool = False,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"DetailNetwork needs at least 1 hidden layer, got {layers}")
        self.hparams: dict[str, Any] = dict(
            exp_dims=exp_dims, feature_dim=feature_dim, hidden=hidden, layers=layers,
            n_freqs=n_freqs, center=tuple(float(c) for c in center), scale=float(scale),
            appearance=bool(appearance),
        )
        self.appearance = bool(appearance)
        self.exp_dims, self.feature_dim, self.n_freqs = exp_dims, feature_dim, n_freqs
        self.scale = float(scale)
        d_in = 3 + 6 * n_freqs + feature_dim + exp_dims
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [Linear(d_in if i == 0 else hidden, hidden), nn.SiLU()]
        self.mlp = nn.Sequential(*mods)
        self.out = Linear(hidden, self.N_GEOMETRY + (self.N_APPEARANCE if appearance else 0))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("center", torch.tensor(center, dtype=torch.float32))
        self.register_buffer("exp_mean", torch.zeros(exp_dims))
        self.register_buffer("exp_std", torch.ones(exp_dims))

    @torch.no_grad()
    def set_code_stats(self, exp_codes: Tensor) -> None:
        """Standardise z_exp with the training codes' mean and std (tracked codes are small).

        A dimension that hardly varies in the training frames keeps a floor of a tenth of
        the largest std: dividing by its tiny std would turn an unseen test expression
        into an input of size 10^5 and G's output into nonsense.
        """
        e = torch.as_tensor(exp_codes, dtype=torch.float32).reshape(-1, self.exp_dims)
        self.exp_mean.copy_(e.mean(0))
        std = e.std(0) if len(e) > 1 else torch.zeros(self.exp_dims)
        floor = 0.1 * float(std.max()) if float(std.max()) > 0 else 1.0
        self.exp_std.copy_(std.clamp_min(floor))

    def encode(self, x_c: Tensor) -> Tensor:
        """gamma((x_c - c) / s): (N, 3) -> (N, 3 + 6 L)."""
        return positional_encoding((x_c - self.center) / self.scale, self.n_freqs)

    def forward(
        self, x_c: Tensor, features: Tensor | None, z_exp: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The geometry offsets (d_means, d_quats, d_log_scales)."""
        o = self.outputs(x_c, features, z_exp)
        return o["means"], o["quats"], o["scales"]

    def outputs(self, x_c: Tensor, features: Tensor | None, z_exp: Tensor) -> dict[str, Tensor]:
        """Every offset: ``means`` (N, 3) m, ``quats`` (N, 4), ``scales`` (N, 3) log, and with
        ``appearance`` also ``colors`` (N, 3) RGB and ``opacities`` (N,) logit."""
        n = x_c.shape[0]
        if z_exp.shape[-1] != self.exp_dims:
            raise ValueError(f"z_exp must have {self.exp_dims} entries, got shape {tuple(z_exp.shape)}")
        z = ((z_exp - self.exp_mean) / self.exp_std).reshape(-1, self.exp_dims).expand(n, -1)
        parts = [self.encode(x_c)]
        if self.feature_dim:
            if features is None or features.shape != (n, self.feature_dim):
                got = None if features is None else tuple(features.shape)
                raise ValueError(f"features must have shape ({n}, {self.feature_dim}), got {got}")
            parts.append(features)
        parts.append(z)
        # (N, 10 or 14); in x_c's dtype also when the products ran in bfloat16 (bf16_products)
        out = self.out(self.mlp(torch.cat(parts, dim=-1))).to(x_c.dtype)
        # Position offsets in metres: the network works in units of the head size.
        res = {"means": out[:, :3] * self.scale, "quats": out[:, 3:7], "scales": out[:, 7:10]}
        if self.appearance:
            res["colors"] = out[:, 10:13]
            res["opacities"] = out[:, 13]
        return res

    def to_state(self) -> dict[str, Any]:
        return {"hparams": dict(self.hparams), "state_dict": self.state_dict()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "DetailNetwork":
        try:
            net = cls(**state["hparams"])
            net.load_state_dict(state["state_dict"])
        except (KeyError, RuntimeError, TypeError) as err:
            raise ValueError(f"not a DetailNetwork state: {err}") from err
        return net


__all__ = ["DetailNetwork"]
