"""A linear 3D morphable model (Blanz & Vetter 1999; the linear part of FLAME, Li et al. 2017).

Every head with the template's topology is written as

    v(z_id, z_exp) = m + B_id z_id + B_exp z_exp                         (1)

with ``m`` the mean neutral head (V, 3), ``B_id`` the principal components of the
neutral heads of the training identities and ``B_exp`` the principal components of
the expression *offsets* (posed minus neutral, of the same identity). The expression
basis is not centred, so ``z_exp = 0`` is the neutral face. Columns are scaled by
the training data's standard deviation along them, so a coefficient of 1 is a
typical amount and a unit Gaussian is the natural prior.

Equation (1) is linear in the codes: the mesh of ``z_exp = a + b`` is the sum of the
offsets of ``a`` and ``b``. A jaw that rotates, lips that slide along the teeth, or
an offset that depends on the identity are not linear, so a linear basis of
``exp_dims`` columns leaves an error that only more columns reduce (chapter 3).

Fitting is least squares, and because (1) is linear it is closed-form:

* :meth:`Linear3DMM.fit_registered` -- known vertex correspondences (registered
  meshes): one linear solve for a shared ``z_id`` and per-frame ``z_exp``;
* :meth:`Linear3DMM.fit_points` -- unregistered points (a scan, a COLMAP point
  cloud): iterative closest point. Each iteration finds the closest point on the
  current mesh for every observation, which fixes a triangle and barycentric
  weights, so the model point is again linear in the codes and one linear solve
  updates them (point-to-plane plus a little point-to-point).

Both solves add the Gaussian prior ``lam * |z|^2`` and, for sequences, a temporal
smoothness term ``smooth * |z_t - z_{t-1}|^2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from npga.headmodels.geometry import closest_points_on_mesh, face_normals
from npga.io import load_saved, save_torch


class Linear3DMM(torch.nn.Module):
    """``v = mean + B_id z_id + B_exp z_exp`` on a fixed triangle topology; see the module doc."""

    def __init__(
        self,
        mean: torch.Tensor,  # (V, 3)
        basis_id: torch.Tensor,  # (k_id, V, 3)
        basis_exp: torch.Tensor,  # (k_exp, V, 3)
        faces: torch.Tensor,  # (F, 3) int64
        sigma_id: torch.Tensor | None = None,  # (k_id,) training std along each column
        sigma_exp: torch.Tensor | None = None,  # (k_exp,)
    ):
        super().__init__()
        f64 = torch.float64
        self.register_buffer("mean", torch.as_tensor(mean, dtype=f64))
        self.register_buffer("basis_id", torch.as_tensor(basis_id, dtype=f64))
        self.register_buffer("basis_exp", torch.as_tensor(basis_exp, dtype=f64))
        self.register_buffer("faces", torch.as_tensor(faces, dtype=torch.int64))
        k_id, k_exp = self.basis_id.shape[0], self.basis_exp.shape[0]
        self.register_buffer(
            "sigma_id", torch.ones(k_id, dtype=f64) if sigma_id is None else torch.as_tensor(sigma_id, dtype=f64)
        )
        self.register_buffer(
            "sigma_exp",
            torch.ones(k_exp, dtype=f64) if sigma_exp is None else torch.as_tensor(sigma_exp, dtype=f64),
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls,
        vertices: np.ndarray,
        faces: np.ndarray,
        id_dims: int | None = None,
        exp_dims: int | None = None,
        neutral_index: int = 0,
        rtol: float = 1e-9,
    ) -> "Linear3DMM":
        """PCA of registered meshes ``vertices`` (S identities, X expressions, V, 3).

        Expression ``neutral_index`` of each identity is its neutral face. ``id_dims`` /
        ``exp_dims``: number of columns kept; ``None`` (or more than the data's rank)
        keeps every column whose singular value exceeds ``rtol`` times the largest --
        the *full-rank* model, which reproduces its training meshes exactly.
        """
        vertices = np.asarray(vertices, np.float64)
        if vertices.ndim != 4 or vertices.shape[-1] != 3:
            raise ValueError(
                f"Linear3DMM.build: vertices must be (identities, expressions, V, 3), got {vertices.shape}"
            )
        S, X, V, _ = vertices.shape
        neutral = vertices[:, neutral_index]  # (S, V, 3)
        mean = neutral.mean(axis=0)
        basis_id, sigma_id = _pca((neutral - mean).reshape(S, -1), id_dims, rtol, centred=True)
        others = [j for j in range(X) if j != neutral_index]
        offsets = (vertices[:, others] - neutral[:, None]).reshape(S * len(others), -1)
        basis_exp, sigma_exp = _pca(offsets, exp_dims, rtol, centred=False)
        return cls(
            torch.from_numpy(mean),
            torch.from_numpy(basis_id.reshape(-1, V, 3)),
            torch.from_numpy(basis_exp.reshape(-1, V, 3)),
            torch.as_tensor(np.asarray(faces, np.int64)),
            torch.from_numpy(sigma_id),
            torch.from_numpy(sigma_exp),
        )

    def truncated(self, id_dims: int | None = None, exp_dims: int | None = None) -> "Linear3DMM":
        """The same model with only the leading columns (PCA columns are nested)."""
        ki = self.id_dims if id_dims is None else min(int(id_dims), self.id_dims)
        ke = self.exp_dims if exp_dims is None else min(int(exp_dims), self.exp_dims)
        return Linear3DMM(
            self.mean, self.basis_id[:ki], self.basis_exp[:ke], self.faces, self.sigma_id[:ki], self.sigma_exp[:ke]
        )

    @property
    def id_dims(self) -> int:
        return int(self.basis_id.shape[0])

    @property
    def exp_dims(self) -> int:
        return int(self.basis_exp.shape[0])

    @property
    def n_vertices(self) -> int:
        return int(self.mean.shape[0])

    # ------------------------------------------------------------------ evaluation

    def vertices(self, z_id: torch.Tensor | np.ndarray, z_exp: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Equation (1). ``z_id`` (k_id,) or (B, k_id); ``z_exp`` (k_exp,) or (B, k_exp) or None.

        Returns (V, 3), or (B, V, 3) when either code is batched. float64.
        """
        z_id = torch.as_tensor(z_id, dtype=self.mean.dtype)
        out = self.mean + torch.einsum("...k,kvd->...vd", z_id, self.basis_id)
        if z_exp is not None:
            z_exp = torch.as_tensor(z_exp, dtype=self.mean.dtype)
            out = out + torch.einsum("...k,kvd->...vd", z_exp, self.basis_exp)
        return out

    # ------------------------------------------------------------------ fitting

    def fit_registered(
        self,
        targets: np.ndarray | torch.Tensor,
        z_id: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        lam: float = 0.0,
        smooth: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Closed-form least squares for registered meshes ``targets`` (T, V, 3) of one identity.

        Solves for one ``z_id`` shared by all frames (or keeps the given one) and one
        ``z_exp`` per frame. ``weights`` (V,): per-vertex weights (e.g. 0 for parts to
        ignore). ``lam``: prior weight on the squared codes, relative to the summed squared
        vertex error in m^2; ``smooth``: weight on ``|z_t - z_{t-1}|^2``.
        Returns ``z_id`` (k_id,), ``z_exp`` (T, k_exp) as float64 arrays.
        """
        Y = np.asarray(targets, np.float64)
        if Y.ndim == 2:
            Y = Y[None]
        if Y.shape[1:] != (self.n_vertices, 3):
            raise ValueError(
                f"fit_registered: targets must be (T, {self.n_vertices}, 3), got {tuple(Y.shape)}"
            )
        w = np.ones(self.n_vertices) if weights is None else np.asarray(weights, np.float64)
        sw = np.repeat(np.sqrt(w), 3)
        J_id = self.basis_id.numpy().reshape(self.id_dims, -1).T * sw[:, None]
        J_exp = self.basis_exp.numpy().reshape(self.exp_dims, -1).T * sw[:, None]
        mean = self.mean.numpy().reshape(-1)
        blocks = [(J_id, J_exp, (y.reshape(-1) - mean) * sw) for y in Y]
        return solve_codes(blocks, self.id_dims, self.exp_dims, lam, lam, smooth, z_id=z_id)

    def fit_points(
        self,
        points: Sequence[np.ndarray],
        z_id: np.ndarray | None = None,
        iterations: int = 12,
        lam: float = 1e-6,
        smooth: float = 0.0,
        trim: Sequence[float] = (0.05, 0.03, 0.02, 0.01),
        point_to_point: float = 0.1,
        segments: Sequence[int] | None = None,
        z_exp_init: np.ndarray | None = None,
        z_id_init: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """Fit codes to unregistered point clouds, one (N_t, 3) array per frame (ICP).

        ``z_id`` given: kept fixed; else one shared ``z_id`` is solved for. Observations
        farther than ``trim[i]`` metres from the current surface are ignored in iteration
        ``i`` (the last value repeats): outliers of a COLMAP cloud must not pull the
        face. Each frame's data term is the *mean* squared distance (m^2) over its
        points, so ``lam`` reads as "a code of norm 1 must buy a mean squared distance
        improvement of ``lam`` m^2" whatever the point count. ``segments``:
        frame counts of consecutive sequences; smoothness never links two sequences.
        ``z_exp_init``/``z_id_init`` only place the first closest points (a warm start).
        Returns ``z_id`` (k_id,), ``z_exp`` (T, k_exp) and the mean distance (m) of
        the kept points after each iteration.
        """
        T = len(points)
        if T == 0:
            raise ValueError("fit_points: no frames")
        faces = self.faces.numpy()
        zi = np.asarray(z_id if z_id is not None else (np.zeros(self.id_dims) if z_id_init is None else z_id_init),
                        np.float64)
        ze = np.zeros((T, self.exp_dims)) if z_exp_init is None else np.asarray(z_exp_init, np.float64).copy()
        Bid = self.basis_id.numpy()
        Bexp = self.basis_exp.numpy()
        mean = self.mean.numpy()
        history: list[float] = []
        for it in range(iterations):
            tau = trim[min(it, len(trim) - 1)]
            blocks = []
            dists = []
            verts = self.vertices(zi, ze).numpy()
            for t in range(T):
                p = np.asarray(points[t], np.float64)
                cp = closest_points_on_mesh(p, verts[t], faces)
                keep = cp.distance < tau
                dists.append(cp.distance[keep])
                p, f, b = p[keep], faces[cp.face[keep]], cp.bary[keep]
                n, _ = face_normals(verts[t], faces)
                n = n[cp.face[keep]]
                # model point c(z) = sum_k b_k v_{f_k}(z): linear in (z_id, z_exp)
                Jid = np.einsum("nk,cnkd->ncd", b, Bid[:, f]).transpose(0, 2, 1)  # (n, 3, k_id)
                Jex = np.einsum("nk,cnkd->ncd", b, Bexp[:, f]).transpose(0, 2, 1)
                c0 = np.einsum("nk,nkd->nd", b, mean[f])
                # rows: point-to-plane (1 per obs) and weighted point-to-point (3 per obs);
                # each frame's data term is a mean over its observations
                scale = 1.0 / np.sqrt(max(len(p), 1))
                rows_id = [np.einsum("nd,ndk->nk", n, Jid), np.sqrt(point_to_point) * Jid.reshape(-1, self.id_dims)]
                rows_ex = [np.einsum("nd,ndk->nk", n, Jex), np.sqrt(point_to_point) * Jex.reshape(-1, self.exp_dims)]
                rhs = [np.einsum("nd,nd->n", n, p - c0), np.sqrt(point_to_point) * (p - c0).reshape(-1)]
                blocks.append(
                    (np.concatenate(rows_id) * scale, np.concatenate(rows_ex) * scale, np.concatenate(rhs) * scale)
                )
            zi, ze = solve_codes(
                blocks, self.id_dims, self.exp_dims, lam, lam, smooth, z_id=z_id, segments=segments
            )
            history.append(float(np.concatenate(dists).mean()) if dists else float("nan"))
        return zi, ze, history

    # ------------------------------------------------------------------ I/O

    def save(self, path: str | Path) -> None:
        """Write the model atomically (``npga.io.save_torch``)."""
        save_torch(path, {"kind": "linear3dmm", "state": {k: v.cpu() for k, v in self.state_dict().items()}})

    @classmethod
    def load(cls, path: str | Path) -> "Linear3DMM":
        obj = load_saved(path, "linear3dmm", "Linear3DMM")
        s = obj["state"]
        return cls(s["mean"], s["basis_id"], s["basis_exp"], s["faces"], s["sigma_id"], s["sigma_exp"])


# --------------------------------------------------------------------------- helpers


def _pca(data: np.ndarray, k: int | None, rtol: float, centred: bool) -> tuple[np.ndarray, np.ndarray]:
    """Columns (k, D) scaled by the std along them, and those stds (k,)."""
    n = data.shape[0]
    if n == 0:
        return np.zeros((0, data.shape[1])), np.zeros(0)
    _, s, vt = np.linalg.svd(data, full_matrices=False)
    rank = int(np.sum(s > rtol * max(s[0], 1e-300))) if len(s) else 0
    k = rank if k is None else min(int(k), rank)
    # PCA of centred data divides by n - 1; the uncentred (expression) basis by n
    sigma = s[:k] / np.sqrt(max(n - 1 if centred else n, 1))
    return vt[:k] * sigma[:, None], sigma


def solve_codes(
    blocks: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    k_id: int,
    k_exp: int,
    lam_id: float,
    lam_exp: float,
    smooth: float = 0.0,
    z_id: np.ndarray | None = None,
    segments: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise ``sum_t |J_id,t z_id + J_exp,t z_t - y_t|^2 + lam_id |z_id|^2 + lam_exp sum_t |z_t|^2
    + smooth sum_t |z_t - z_{t-1}|^2`` over ``z_id`` (unless given) and ``z_1..z_T``.

    ``blocks[t] = (J_id (m, k_id), J_exp (m, k_exp), y (m,))``. A dense solve of the
    normal equations (k_id + T k_exp unknowns: a few thousand at most here);
    ``lstsq`` when they are singular (full-rank models without a prior).
    """
    T = len(blocks)
    fixed = z_id is not None
    n_id = 0 if fixed else k_id
    n = n_id + T * k_exp
    A = np.zeros((n, n))
    rhs = np.zeros(n)
    zi_fixed = None if not fixed else np.asarray(z_id, np.float64)
    for t, (Ji, Je, y) in enumerate(blocks):
        e = slice(n_id + t * k_exp, n_id + (t + 1) * k_exp)
        if fixed:
            y = y - Ji @ zi_fixed
        else:
            A[:n_id, :n_id] += Ji.T @ Ji
            A[:n_id, e] += Ji.T @ Je
            A[e, :n_id] += Je.T @ Ji
            rhs[:n_id] += Ji.T @ y
        A[e, e] += Je.T @ Je
        rhs[e] += Je.T @ y
    A[:n_id, :n_id] += lam_id * np.eye(n_id)
    A[n_id:, n_id:] += lam_exp * np.eye(T * k_exp)
    if smooth > 0 and T > 1:
        bounds = np.cumsum([0, *(segments or [T])])
        starts = set(bounds[:-1].tolist())
        for t in range(1, T):
            if t in starts:
                continue  # first frame of a new sequence
            a = slice(n_id + (t - 1) * k_exp, n_id + t * k_exp)
            b = slice(n_id + t * k_exp, n_id + (t + 1) * k_exp)
            I = smooth * np.eye(k_exp)
            A[a, a] += I
            A[b, b] += I
            A[a, b] -= I
            A[b, a] -= I
    try:
        if lam_exp <= 0 or (not fixed and lam_id <= 0):
            raise np.linalg.LinAlgError
        x = np.linalg.solve(A, rhs)
    except np.linalg.LinAlgError:
        x = np.linalg.lstsq(A, rhs, rcond=None)[0]
    zi = zi_fixed if fixed else x[:n_id]
    return np.asarray(zi, np.float64).copy(), x[n_id:].reshape(T, k_exp)


__all__ = ["Linear3DMM", "solve_codes"]
