"""Measuring a head model against a ground-truth scan: fit its codes, compare surfaces.

Both models are fitted to the same thing -- points sampled on the scan's outer
surface, unregistered -- and compared with the same symmetric Chamfer distance
(point-to-surface both ways, in mm) on the part of the head above
``neck_cut + EVAL_MARGIN`` (the cut itself is not the model's business): once on the
*expression region* (:func:`moving_faces`: where expressions move the surface at
all) and once on the whole head. The linear
3DMM also gets a *registered* fit, the best its basis can do (closed-form least
squares on the known vertices): the gap between it and the point fit is the price
of not knowing correspondences; the gap between it and zero is the basis's
expressiveness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from npga.config import HeadModelConfig
from npga.headmodels.geometry import (
    OuterSurface,
    closest_points_on_mesh,
    outer_surface,
    sample_surface,
)
from npga.headmodels.linear3dmm import Linear3DMM
from npga.headmodels.nphm import NPHM, fit_nphm

EVAL_MARGIN = 0.02  # metres above the neck cut that the comparison ignores


@dataclass
class ScanTarget:
    """One ground-truth mesh prepared for evaluation."""

    vertices: np.ndarray  # (V, 3)
    outer: OuterSurface
    observed: np.ndarray  # (n, 3) points the models are fitted to (whole head above the cut)
    eval_points: np.ndarray  # (m, 3) points the error is measured on
    eval_face: np.ndarray  # (m,) their faces (for registered models)
    eval_bary: np.ndarray  # (m, 3)
    in_region: np.ndarray  # (m,) bool: in the expression region
    region_faces: np.ndarray  # (F,) bool


def moving_faces(vertices: np.ndarray, faces: np.ndarray, threshold: float = 0.002) -> np.ndarray:
    """The *expression region*: faces with a vertex that moves more than ``threshold`` m.

    ``vertices`` (S, X, V, 3) registered scans, expression 0 neutral. Whole-head
    averages are dominated by skull, hair and neck, which no expression moves; errors
    on this region measure the expression model.
    """
    disp = np.linalg.norm(vertices - vertices[:, :1], axis=-1).max(axis=(0, 1))  # (V,)
    return (disp > threshold)[faces].any(axis=1)


def prepare_target(
    vertices: np.ndarray, faces: np.ndarray, cfg: HeadModelConfig, rng: np.random.Generator,
    region_faces: np.ndarray | None = None, n_observed: int = 2000, n_eval: int = 3000,
) -> ScanTarget:
    """Outer surface of a GT mesh, points to fit to and (independent) points to measure on.

    Half of the measuring points lie in ``region_faces`` (the expression region), half
    anywhere on the outer surface above the cut.
    """
    outer = outer_surface(vertices, faces, voxel=cfg.voxel)
    region = np.ones(len(faces), bool) if region_faces is None else np.asarray(region_faces, bool)
    y_min = cfg.neck_cut + EVAL_MARGIN
    is_outer = outer.orientation != 0

    def draw(n, face_mask):
        w = (is_outer & face_mask).astype(np.float64)
        pts, face, bary = sample_surface(vertices, faces, 2 * n, rng, w)
        keep = pts[:, 1] >= y_min
        return pts[keep][:n], face[keep][:n], bary[keep][:n]

    obs, _, _ = draw(n_observed, np.ones(len(faces), bool))
    e1 = draw(n_eval // 2, np.ones(len(faces), bool))
    e2 = draw(n_eval // 2, region)
    ev, face, bary = (np.concatenate([a, b]) for a, b in zip(e1, e2))
    return ScanTarget(vertices, outer, obs, ev, face, bary, region[face], region)


def _error_registered(target: ScanTarget, model_vertices: np.ndarray, faces: np.ndarray) -> dict:
    """Chamfer between the GT outer surface and a mesh of the same topology, in mm."""
    gt_to_model = closest_points_on_mesh(target.eval_points, model_vertices, faces).distance
    model_pts = np.einsum("nk,nkd->nd", target.eval_bary, model_vertices[faces[target.eval_face]])
    outer = target.outer.outer_faces
    model_to_gt = closest_points_on_mesh(model_pts, target.vertices, faces[outer]).distance
    return _summary(gt_to_model, model_to_gt, target.in_region, target.in_region)


def _error_mesh(target: ScanTarget, verts: np.ndarray, faces_m: np.ndarray, faces: np.ndarray,
                y_min: float, rng: np.random.Generator) -> dict:
    """Chamfer between the GT outer surface and any mesh (marching cubes), in mm."""
    if len(faces_m) == 0:
        nan = float("nan")
        return {k: nan for k in ("chamfer_mm", "chamfer_all_mm", "gt_to_model_mm", "model_to_gt_mm")}
    gt_to_model = closest_points_on_mesh(target.eval_points, verts, faces_m).distance
    pts, _, _ = sample_surface(verts, faces_m, 4 * len(target.eval_points), rng)
    pts = pts[pts[:, 1] >= y_min][: 2 * len(target.eval_points)]
    outer = target.outer.outer_faces
    cp = closest_points_on_mesh(pts, target.vertices, faces[outer])
    return _summary(gt_to_model, cp.distance, target.in_region, target.region_faces[outer][cp.face])


def _summary(a: np.ndarray, b: np.ndarray, a_region: np.ndarray, b_region: np.ndarray) -> dict:
    """Symmetric Chamfer (mm) in the expression region (``chamfer_mm``) and on the whole head."""

    def mean(x):
        return float(x.mean()) if len(x) else float("nan")

    return {
        "chamfer_mm": 500.0 * (mean(a[a_region]) + mean(b[b_region])),
        "chamfer_all_mm": 500.0 * (mean(a) + mean(b)),
        "gt_to_model_mm": 1e3 * mean(a[a_region]),
        "model_to_gt_mm": 1e3 * mean(b[b_region]),
    }


def eval_linear(
    model: Linear3DMM, targets: list[ScanTarget], z_id: np.ndarray | None, lam: float = 1e-6
) -> tuple[list[dict], list[dict], np.ndarray, np.ndarray]:
    """Registered and point fits of one identity's frames ``targets`` (shared ``z_id`` or fitted).

    Returns per-frame errors (registered, points) and the point fit's codes.
    """
    faces = model.faces.numpy()
    zi_r, ze_r = model.fit_registered(np.stack([t.vertices for t in targets]), z_id=z_id, lam=lam)
    reg = [_error_registered(t, v, faces) for t, v in zip(targets, model.vertices(zi_r, ze_r).numpy())]
    zi, ze, _ = model.fit_points([t.observed for t in targets], z_id=z_id, lam=lam)
    pts = [_error_registered(t, v, faces) for t, v in zip(targets, model.vertices(zi, ze).numpy())]
    return reg, pts, zi, ze


def eval_nphm(
    model: NPHM, targets: list[ScanTarget], faces: np.ndarray, z_id: np.ndarray | None,
    cfg: HeadModelConfig, rng: np.random.Generator, frames: list[int] | None = None,
) -> tuple[list[dict], np.ndarray, np.ndarray, list]:
    """Fit NPHM codes to the targets' points and measure frames ``frames`` (default all).

    Returns per-measured-frame errors, the codes and the marching-cubes meshes.
    """
    zi, ze, _ = fit_nphm(
        model, [t.observed for t in targets], z_id=z_id, iterations=cfg.fit_iterations,
        points_per_step=512,
    )
    out, meshes = [], []
    y_min = cfg.neck_cut + EVAL_MARGIN
    for k in frames if frames is not None else range(len(targets)):
        verts, fm = model.extract_mesh(torch.tensor(zi, dtype=torch.float32),
                                       torch.tensor(ze[k], dtype=torch.float32), cfg.mc_resolution)
        out.append(_error_mesh(targets[k], verts, fm, faces, y_min, rng))
        meshes.append((verts, fm))
    return out, zi, ze, meshes


__all__ = ["EVAL_MARGIN", "ScanTarget", "eval_linear", "eval_nphm", "moving_faces", "prepare_target"]
