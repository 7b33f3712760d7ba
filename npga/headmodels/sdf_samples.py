"""Training samples for the neural parametric head model, drawn from registered meshes.

Two kinds, as in NPHM (Giebenhain et al., CVPR 2023, sec. 4):

* **SDF samples** of a canonical mesh, for the identity network ``f(x_c, z_id)``:
  points on the outer surface with their outward normals, points near it (the
  surface jittered by Gaussian noise of two widths) and points anywhere in a box
  around the head, each with its signed distance to the *outer surface*
  (:mod:`npga.headmodels.geometry` defines it: what a scanner sees, with an open
  mouth's cavity outside and a closed one inside).
* **Correspondences** between a posed mesh and the canonical mesh of the same
  identity, for the backward deformation ``B(x_p, z_id, z_exp) -> x_c``. Registration
  gives them for free: a point with barycentric weights ``b`` on triangle ``f`` of the
  posed mesh corresponds to the point with the same ``(f, b)`` on the canonical mesh.
  To define ``B`` in a shell around the surface too (an SDF is queried off the
  surface), each pair is also pushed a small signed step along the two meshes'
  normals: ``x_p + d n_p -> x_c + d n_c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npga.headmodels.geometry import face_normals, outer_surface, sample_surface


@dataclass
class SDFSamples:
    """SDF supervision for one mesh (float32 arrays, metres)."""

    surface: np.ndarray  # (n_s, 3) points on the outer surface
    normals: np.ndarray  # (n_s, 3) outward unit normals there
    points: np.ndarray  # (n_p, 3) near-surface and space points
    sdf: np.ndarray  # (n_p,) signed distance to the outer surface


def sdf_samples(
    vertices: np.ndarray,
    faces: np.ndarray,
    n_surface: int,
    n_near: int,
    n_space: int,
    rng: np.random.Generator,
    sigmas: tuple[float, float] = (0.002, 0.01),
    voxel: float = 0.002,
    box_margin: float = 0.03,
    box: tuple[np.ndarray, np.ndarray] | None = None,
) -> SDFSamples:
    """Sample the outer surface of a (multi-part) mesh and signed distances around it.

    ``n_near`` points are surface samples moved by isotropic Gaussian noise, half with
    std ``sigmas[0]`` and half ``sigmas[1]`` (metres); ``n_space`` are uniform in
    ``box`` = (lo, hi), by default the mesh's bounding box grown by ``box_margin``. Use
    the box that marching cubes will search: an SDF network is unconstrained where it
    never saw a sample, and grows stray surfaces there. ``voxel``: grid of the flood fill that
    decides inside/outside (see :func:`npga.headmodels.geometry.outer_surface`).
    """
    surf = outer_surface(vertices, faces, voxel=voxel)
    s_pts, s_nrm, _, _ = surf.sample_outer(n_surface, rng)
    base, _, _, _ = surf.sample_outer(n_near, rng)
    sig = np.where(np.arange(n_near) < n_near // 2, sigmas[0], sigmas[1])[:, None]
    near = base + sig * rng.standard_normal(base.shape)
    lo, hi = (vertices.min(0) - box_margin, vertices.max(0) + box_margin) if box is None else box
    space = rng.uniform(lo, hi, size=(n_space, 3))
    pts = np.concatenate([near, space])
    return SDFSamples(
        s_pts.astype(np.float32),
        s_nrm.astype(np.float32),
        pts.astype(np.float32),
        surf.sdf(pts).astype(np.float32),
    )


def correspondence_samples(
    posed: np.ndarray,
    canonical: np.ndarray,
    faces: np.ndarray,
    n: int,
    rng: np.random.Generator,
    shell: float = 0.003,
    shell_fraction: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` corresponding points (x_p, x_c), each (n, 3) float32, of two registered meshes.

    Points are area-uniform on the posed mesh. A fraction ``shell_fraction`` of them is
    moved by ``d ~ N(0, shell^2)`` metres along the posed normal, and its partner by the
    same ``d`` along the canonical normal.
    """
    if posed.shape != canonical.shape:
        raise ValueError(
            f"correspondence_samples: posed {posed.shape} and canonical {canonical.shape} "
            "meshes must be registered (same vertex count)"
        )
    x_p, face, bary = sample_surface(posed, faces, n, rng)
    x_c = np.einsum("nk,nkd->nd", bary, canonical[faces[face]])
    n_p, _ = face_normals(posed, faces)
    n_c, _ = face_normals(canonical, faces)
    d = shell * rng.standard_normal(n) * (rng.random(n) < shell_fraction)
    x_p = x_p + d[:, None] * n_p[face]
    x_c = x_c + d[:, None] * n_c[face]
    return x_p.astype(np.float32), x_c.astype(np.float32)


__all__ = ["SDFSamples", "correspondence_samples", "sdf_samples"]
