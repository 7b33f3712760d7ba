"""Laplacian regularisers on a k-nearest-neighbour graph of the canonical Gaussians (NPGA, arXiv 2405.19331).

Per-Gaussian latent features f_i (chapter 5) let the detail network G move neighbouring
Gaussians in unrelated ways. Seen in training that is what the images ask for; at an
expression the avatar never saw, neighbouring Gaussians drift apart and the surface tears
(the "artefacts at extreme expressions" of the paper). NPGA counters this with Laplacian
terms that ask neighbours to agree.

The graph. Over the canonical means x_i we build the k-nearest-neighbour graph N(i)
(without i itself). Its (random-walk normalised) graph Laplacian applied to a per-Gaussian
field v is

    (L v)_i = v_i - 1/k sum_{j in N(i)} v_j,

the difference between a Gaussian's value and the mean of its neighbours. |L v|^2
penalises that deviation (a curvature-like measure, not the gradient) and grows with the
high-frequency part of v. L v = 0 means v is *harmonic* (every value the mean of its
neighbours'); a constant v is one such field, but on a directed k-NN graph not the only one.

The two terms (weights ``AvatarConfig.lap_features`` and ``AvatarConfig.lap_dynamics``):

    E_feat = mean_i |(L f)_i|^2,           f_i the per-Gaussian features
    E_dyn  = mean_i |(L delta(z))_i|^2,    delta_i(z) = G(x_i, f_i, z) the detail offsets

On the dynamics we regularise **G's offsets only, not F + G**. F is distilled from the head
model and is smooth by construction (an MLP on a low-frequency encoding of x_c); its
legitimate spatial variation (lips moving against a still chin) would be penalised too if
we regularised F + G, and fine-tuning F would be pulled away from the prior. G is the part
that the features make spatially rough, so that is where the term acts. The offsets are
taken in G's own units (position offsets divided by the head-sized length ``G.scale``),
so that position, rotation and log-scale offsets are of comparable size.

The canonical means move during training and adaptive density control adds and removes
Gaussians, so :class:`LaplacianRegularizer` rebuilds the graph whenever the ``means``
parameter is replaced (densification replaces it) and every ``rebuild_every`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

# --------------------------------------------------------------------------- the graph


def knn_graph(points: Tensor | np.ndarray, k: int) -> Tensor:
    """Indices (N, k) int64 of each point's k nearest other points (ascending distance).

    Uses scipy's cKDTree (O(N log N)); :func:`knn_graph_brute` is the reference. The point
    itself is never its own neighbour, even when duplicates exist (a clone sits exactly on
    its parent right after densification: the duplicate *is* a neighbour, at distance 0).
    """
    from scipy.spatial import cKDTree

    pts = _as_numpy_points(points)
    n = len(pts)
    _check_k(k, n)
    _, idx = cKDTree(pts).query(pts, k=k + 1)  # (N, k+1), usually self first
    idx = np.asarray(idx, dtype=np.int64).reshape(n, k + 1)
    own = np.arange(n)[:, None]
    is_self = idx == own
    # drop self where it was found; where it was not (ties with duplicates), drop the last
    drop = np.where(is_self.any(1), is_self.argmax(1), k)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(n), drop] = False
    return torch.from_numpy(idx[keep].reshape(n, k))


def knn_graph_brute(points: Tensor | np.ndarray, k: int, chunk: int = 2048) -> Tensor:
    """The same graph by brute force: pairwise squared distances, ``chunk`` rows at a time."""
    pts = torch.as_tensor(_as_numpy_points(points), dtype=torch.float64)
    n = len(pts)
    _check_k(k, n)
    out = []
    for s in range(0, n, chunk):
        d2 = torch.cdist(pts[s : s + chunk], pts).pow(2)  # (B, N)
        d2[torch.arange(len(d2)), torch.arange(s, s + len(d2))] = float("inf")  # not itself
        out.append(torch.topk(d2, k, dim=1, largest=False).indices)
    return torch.cat(out)


def _as_numpy_points(points) -> np.ndarray:
    pts = points.detach().cpu().numpy() if torch.is_tensor(points) else np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("points contain NaN or Inf: cannot build a k-NN graph")
    return pts.astype(np.float64)


def _check_k(k: int, n: int) -> None:
    if not 1 <= k < n:
        raise ValueError(f"k-NN graph needs 1 <= k < N, got k={k} for N={n} points")


# --------------------------------------------------------------------------- the Laplacian


def graph_laplacian(values: Tensor, nbrs: Tensor) -> Tensor:
    """(L v)_i = v_i - mean_{j in N(i)} v_j for values (N, D) on the graph nbrs (N, k) -> (N, D)."""
    if values.shape[0] != nbrs.shape[0]:
        raise ValueError(f"values hold {values.shape[0]} rows, the graph {nbrs.shape[0]} nodes")
    v = values.reshape(values.shape[0], -1)
    return v - v[nbrs.to(v.device)].mean(dim=1)


def laplacian_energy(values: Tensor, nbrs: Tensor) -> Tensor:
    """mean_i |(L v)_i|^2: zero for a locally constant field, positive for a rough one."""
    return graph_laplacian(values, nbrs).pow(2).sum(-1).mean()


def detail_offsets(avatar, z_exp: Tensor, render=None) -> Tensor:
    """G's offsets (N, 10) at code z_exp in G's units: position / G.scale, quaternion, log-scale.

    ``render``: an :class:`~npga.avatar.model.AvatarRender` of this z_exp, whose ``detail``
    already holds G's outputs (the trainer's case: G then runs once per step, not twice).
    """
    d = getattr(render, "detail", None)
    if d is None:
        g = avatar.gaussians
        d_means, d_quats, d_scales = avatar.detail(g["means"], g.get("features"), z_exp)
    else:
        d_means, d_quats, d_scales = d["means"], d["quats"], d["scales"]
    return torch.cat([d_means / avatar.detail.scale, d_quats, d_scales], dim=-1)


# --------------------------------------------------------------------------- the trainer hook


@dataclass
class LaplacianRegularizer:
    """Both Laplacian terms as a trainer loss: ``Hooks(losses={"laplacian": reg})``.

    Called as ``reg(avatar, render, batch, step) -> weighted loss``. The k-NN graph lives
    here and is rebuilt when the ``means`` parameter object changes (densification) or
    every ``rebuild_every`` steps. ``last`` holds the unweighted terms of the last call.
    """

    k: int = 8
    w_features: float = 1.0
    w_dynamics: float = 1.0
    rebuild_every: int = 100
    nbrs: Tensor | None = None
    last: dict = field(default_factory=dict)
    _built_for: object = None  # the means Parameter the graph was built on
    _built_at: int = -1

    @classmethod
    def from_config(cls, cfg) -> "LaplacianRegularizer":
        """From an :class:`npga.config.AvatarConfig` (knn_k, lap_features, lap_dynamics)."""
        return cls(k=cfg.knn_k, w_features=cfg.lap_features, w_dynamics=cfg.lap_dynamics,
                   rebuild_every=cfg.knn_rebuild_every)

    def state_dict(self) -> dict:
        """The graph and when it was built, so that a resumed run rebuilds it on the same steps."""
        return {"nbrs": None if self.nbrs is None else self.nbrs.cpu(), "built_at": self._built_at}

    def load_state_dict(self, sd: dict, device: str | torch.device = "cpu") -> None:
        self.nbrs = None if sd["nbrs"] is None else sd["nbrs"].to(device)
        self._built_at = sd["built_at"]
        self._built_for = "adopt"  # the restored graph belongs to the restored means, whatever object holds them

    def graph(self, avatar, step: int = 0) -> Tensor:
        means = avatar.gaussians["means"]
        if self._built_for == "adopt" and self.nbrs is not None and self.nbrs.shape[0] == means.shape[0]:
            self._built_for = means
        stale = (self.nbrs is None or self._built_for is not means or self.nbrs.shape[0] != means.shape[0]
                 or (self.rebuild_every and step - self._built_at >= self.rebuild_every))
        if stale:
            self.nbrs = knn_graph(means, self.k).to(means.device)
            self._built_for, self._built_at = means, step
        return self.nbrs

    def __call__(self, avatar, render, batch, step: int) -> Tensor:
        nbrs = self.graph(avatar, step)
        g = avatar.gaussians
        zero = g["means"].new_zeros(())
        e_feat = laplacian_energy(g["features"], nbrs) if "features" in g and self.w_features else zero
        e_dyn = zero
        if avatar.detail is not None and self.w_dynamics:
            e_dyn = laplacian_energy(detail_offsets(avatar, batch["z_exp"], render), nbrs)
        self.last = {"features": float(e_feat.detach()), "dynamics": float(e_dyn.detach())}
        return self.w_features * e_feat + self.w_dynamics * e_dyn


__all__ = [
    "LaplacianRegularizer",
    "detail_offsets",
    "graph_laplacian",
    "knn_graph",
    "knn_graph_brute",
    "laplacian_energy",
]
