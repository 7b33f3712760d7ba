"""Figure helpers for chapter 3: render head-model surfaces, colour errors, compare fits.

Not part of the method; the chapter calls these so that it shows package code only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from npga.capture.cameras import Camera, intrinsics_for, look_at
from npga.headmodels.evaluate import eval_linear, eval_nphm, prepare_target
from npga.headmodels.geometry import point_to_mesh
from npga.headmodels.linear3dmm import Linear3DMM
from npga.headmodels.nphm import NPHM
from npga.headmodels.scans import Scans


def front_camera(width: int = 150, height: int = 190, distance: float = 0.75, yaw_deg: float = 0.0) -> Camera:
    """A portrait camera looking at the face (optionally turned by ``yaw_deg``)."""
    a = np.radians(yaw_deg)
    eye = np.array([distance * np.sin(a), 0.0, distance * np.cos(a)])
    target = np.array([0.0, -0.025, 0.0])
    return Camera("figure", look_at(eye, target), intrinsics_for(width, height, 2.35 * distance / 0.75), width, height)


def render_surface(
    vertices: np.ndarray, faces: np.ndarray, camera: Camera, colors: np.ndarray | None = None,
    background: float = 1.0,
) -> np.ndarray:
    """Shaded render (H, W, 3) of a mesh over a plain background, for figures."""
    from npga.capture.synthetic import render_mesh

    if len(faces) == 0:
        return np.full((camera.height, camera.width, 3), background, np.float32)
    img, alpha = render_mesh(vertices, faces, [camera], colors, supersample=2)
    return img[0] + background * (1.0 - alpha[0, ..., None])


def error_colors(distance_m: np.ndarray, vmax_mm: float, cmap: str = "magma_r") -> np.ndarray:
    """Per-vertex RGB (N, 3) of distances, 0 .. ``vmax_mm`` millimetres."""
    import matplotlib

    x = np.clip(np.asarray(distance_m) * 1e3 / vmax_mm, 0.0, 1.0)
    return matplotlib.colormaps[cmap](0.1 + 0.85 * x)[:, :3]


@dataclass
class Comparison:
    """GT mesh and both models' fits to points of it, with per-GT-vertex errors (m)."""

    gt: np.ndarray  # (V, 3) cropped GT vertices
    faces: np.ndarray  # (F, 3)
    linear: np.ndarray  # (V, 3) 3DMM fit (same topology)
    nphm: tuple[np.ndarray, np.ndarray]  # marching-cubes (vertices, faces)
    err_linear: np.ndarray  # (V,) distance of each GT vertex to the 3DMM surface
    err_nphm: np.ndarray  # (V,) ... to the NPHM surface
    chamfer_linear: dict
    chamfer_nphm: dict
    visible: np.ndarray  # (V,) bool: GT vertex on the outer (scanner-visible) surface


def scan_identity_head(scans: Scans, index: int, resolution: int):
    """The :class:`npga.capture.synthetic.SynthHead` of scan identity ``index``."""
    from npga.capture.synthetic import Identity, SynthHead

    return SynthHead(Identity.from_dict(json.loads(scans.identities_json[index])), resolution)


def compare_fits(
    scans: Scans, linear: Linear3DMM, nphm: NPHM, identity: int, z_exp: np.ndarray,
    cfg, resolution: int, untracked: np.ndarray | None = None, seed: int = 0,
    region_faces: np.ndarray | None = None,
) -> Comparison:
    """Fit both models to points of training identity ``identity`` posed with ``z_exp`` (+ ``untracked``)."""
    rng = np.random.default_rng(seed)
    head = scan_identity_head(scans, identity, resolution)
    gt = head.vertices(z_exp, untracked)[scans.vertex_index]
    target = prepare_target(gt, scans.faces, cfg, rng, region_faces)
    A = linear.basis_id.numpy().reshape(linear.id_dims, -1).T
    zi = np.linalg.lstsq(A, (scans.vertices[identity, 0] - linear.mean.numpy()).reshape(-1), rcond=None)[0]
    _, pts, zl, ze = eval_linear(linear, [target], zi)
    v_lin = linear.vertices(zl, ze[0]).numpy()
    k = int(np.flatnonzero(scans.train_ids == identity)[0])
    err, _, _, meshes = eval_nphm(nphm, [target], scans.faces, nphm.id_codes[k].detach().numpy(), cfg, rng)
    vn, fn = meshes[0]
    e_lin = point_to_mesh(gt, v_lin, scans.faces)
    e_nphm = point_to_mesh(gt, vn, fn) if len(fn) else np.full(len(gt), np.nan)
    visible = np.zeros(len(gt), bool)
    visible[scans.faces[target.outer.outer_faces].reshape(-1)] = True
    return Comparison(gt, scans.faces, v_lin, (vn, fn), e_lin, e_nphm, pts[0], err[0], visible)


@torch.no_grad()
def nphm_code_directions(nphm: NPHM, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and the first ``k`` principal directions (k, d) of the training expression
    codes, scaled by their standard deviation: the natural axes for sliders."""
    codes = nphm.exp_codes.detach().reshape(-1, nphm.exp_dims).numpy()
    mean = codes.mean(0)
    _, s, vt = np.linalg.svd(codes - mean, full_matrices=False)
    sd = s / np.sqrt(max(len(codes) - 1, 1))
    return mean, vt[:k] * sd[:k, None]


__all__ = [
    "Comparison",
    "compare_fits",
    "error_colors",
    "front_camera",
    "nphm_code_directions",
    "render_surface",
    "scan_identity_head",
]
