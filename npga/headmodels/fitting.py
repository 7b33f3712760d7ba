"""Tracking: head-model codes for every frame of a multi-view capture, from COLMAP points.

For each participant, every frame of every sequence gets a sparse point cloud
(:func:`npga.headmodels.colmap_points.triangulate_frame`, known cameras), and then
both head models are fitted to all of the participant's frames at once:

* one identity code ``z_id`` shared by all frames, one ``z_exp`` per frame;
* a Gaussian prior on the codes and a temporal smoothness term
  ``smooth |z_t - z_{t-1}|^2`` inside each sequence (never across two);
* the **3DMM** by iterative closest point with closed-form solves
  (:meth:`Linear3DMM.fit_points`); the **NPHM** by Adam on
  ``|f(B(p, z_id, z_t), z_id)|`` over the points (:func:`fit_nphm`), the networks
  frozen -- NPHM's and MonoNPHM's tracking objective, with points in place of depth.

Points below the models' neck cut are dropped first (neither model has a neck).
The codes go to ``ROOT/{pid:03d}/sequences/{SEQ}/tracking/{model}.npz`` (``z_exp``
(T, d), ``z_id`` (d_id,), read by :meth:`npga.capture.dataset.Sequence.codes`), which later
chapters use to drive avatars.

Tracking error (synthetic data only): the mean distance from ground-truth surface
points -- the vertices of the visible parts (skin, hair, ears, eyelids) above the
cut -- to the tracked surface: exact point-to-mesh for the 3DMM, ``|f(B(x))|`` for the
NPHM (an SDF trained with the eikonal term is a distance to first order).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from npga.config import Profile, get_profile
from npga.headmodels.colmap_points import PointCloud, triangulate_frame
from npga.headmodels.evaluate import EVAL_MARGIN
from npga.headmodels.geometry import point_to_mesh
from npga.headmodels.linear3dmm import Linear3DMM
from npga.headmodels.nphm import NPHM, fit_nphm
from npga.io import save_npz, write_json

SURFACE_PARTS = ("skin", "hair", "ear_l", "ear_r", "eyelid_l", "eyelid_r")


def frame_point_cloud(sequence, frame: int, seed: int = 0) -> PointCloud:
    """COLMAP points of frame ``frame`` (index) of a :class:`npga.capture.dataset.Sequence`, all cameras."""
    cams = sequence.cameras()
    images = np.stack([sequence.load_image(frame, c.serial) for c in cams])
    alphas = np.stack([sequence.load_alpha(frame, c.serial) for c in cams])
    return triangulate_frame(images, cams, alphas)


def points_path(sequence) -> Path:
    """``ROOT/{pid}/sequences/{SEQ}/colmap/points.npz``: the sequence's cached COLMAP points.

    Kept inside the dataset, so regenerating the dataset also discards them.
    """
    return sequence.path / "colmap" / "points.npz"


def sequence_points(sequence, progress=None) -> list[np.ndarray]:
    """Per-frame COLMAP points (N_t, 3) of a sequence, computed once and cached (:func:`points_path`)."""
    path = points_path(sequence)
    T = len(sequence.frames)
    if path.is_file():
        with np.load(path) as z:
            if int(z["n_frames"]) == T:
                counts = z["counts"]
                pts = np.split(z["points"], np.cumsum(counts)[:-1])
                return [p.astype(np.float64) for p in pts]
    clouds = []
    for t in range(T):
        clouds.append(frame_point_cloud(sequence, t))
        if progress is not None:
            progress.update(1)
    pts = [c.points for c in clouds]
    save_npz(
        path,
        points=np.concatenate(pts).reshape(-1, 3).astype(np.float32),
        counts=np.array([len(p) for p in pts], np.int64),
        n_frames=np.int64(T),
        reproj_px=np.concatenate([c.reproj_px for c in clouds]).astype(np.float32),
        colors=np.concatenate([c.colors for c in clouds]).reshape(-1, 3).astype(np.float32),
    )
    return [p.astype(np.float32).astype(np.float64) for p in pts]


def _select(points: np.ndarray, cut: float, n: int, rng: np.random.Generator) -> np.ndarray:
    p = points[points[:, 1] >= cut]
    if len(p) > n:
        p = p[rng.choice(len(p), n, replace=False)]
    return p


def track_participant(
    profile: Profile, participant, linear: Linear3DMM, nphm: NPHM,
    smooth_linear: float = 1e-5, smooth_nphm: float = 1e-3, progress=None, write: bool = True,
) -> dict:
    """Fit both models to all frames of one participant; write the tracking files.

    Returns ``{model: {"z_id", "z_exp": {seq: (T, d)}}, "points": {seq: [..]}}``.
    """
    cfg = profile.head_model
    rng = np.random.default_rng(profile.seed + participant.pid)
    seqs = [participant.sequence(name) for name in participant.sequences]
    obs, segments = [], []
    points = {}
    for s in seqs:
        pts = sequence_points(s, progress)
        points[s.name] = pts
        obs += [_select(p, cfg.neck_cut, cfg.track_points, rng) for p in pts]
        segments.append(len(pts))
    empty = [k for k, p in enumerate(obs) if len(p) < 10]
    if len(empty) == len(obs):
        raise RuntimeError(f"participant {participant.pid}: COLMAP found no points in any frame")
    for k in empty:  # a frame without points borrows its neighbour's (smoothness does the rest)
        near = min((j for j in range(len(obs)) if j not in empty), key=lambda j: abs(j - k))
        obs[k] = obs[near]

    zi_l, ze_l, _ = linear.fit_points(obs, iterations=10, lam=1e-5, smooth=smooth_linear, segments=segments)
    zi_n, ze_n, _ = fit_nphm(
        nphm, obs, iterations=cfg.fit_iterations * 2, points_per_step=max(64, 8192 // len(obs)),
        smooth=smooth_nphm, segments=segments, seed=profile.seed,
    )
    out = {"3dmm": {"z_id": zi_l, "z_exp": {}}, "nphm": {"z_id": zi_n, "z_exp": {}}, "points": points}
    start = 0
    for s, T in zip(seqs, segments):
        for name, zi, ze in (("3dmm", zi_l, ze_l), ("nphm", zi_n, ze_n)):
            codes = ze[start : start + T].astype(np.float32)
            out[name]["z_exp"][s.name] = codes
            if write:
                save_npz(
                    s.path / "tracking" / f"{name}.npz",
                    z_exp=codes, z_id=np.asarray(zi, np.float32),
                    frames=np.asarray(s.frames, np.int64),
                    points_per_frame=np.array([len(o) for o in obs[start : start + T]], np.int64),
                )
        start += T
    return out


def tracked(profile: Profile) -> bool:
    """True when ``tracking.json`` exists and every sequence has both models' tracking files."""
    from npga.capture.dataset import open_dataset
    from npga.headmodels.store import models_dir

    if not (models_dir(profile) / "tracking.json").is_file() or not (profile.data_root / "dataset.json").is_file():
        return False
    ds = open_dataset(profile.data_root)
    for pid in ds.participants:
        part = ds.participant(pid)
        for name in part.sequences:
            folder = part.path / "sequences" / name / "tracking"
            if not all((folder / f"{m}.npz").is_file() for m in ("3dmm", "nphm")):
                return False
    return True


def track_dataset(profile: Profile | str | None = None, progress: bool = True) -> dict:
    """Track every participant and sequence of the profile's dataset with both head models.

    Writes the tracking files and ``cache_root/headmodels/tracking.json`` (per-frame
    errors, point counts, times); returns the latter.
    """
    from tqdm import tqdm

    from npga.capture.dataset import open_dataset
    from npga.capture.synthetic import PART_NAMES
    from npga.capture.synthetic.writer import ensure_dataset
    from npga.headmodels.store import load_or_train, models_dir

    P = profile if isinstance(profile, Profile) else get_profile(profile)
    if P.variant_key("head_model"):
        # tracking files live in the dataset, shared by every head-model setting
        raise ValueError(
            f"track_dataset: this profile's head_model settings differ from profile {P.name!r}'s; "
            f"its tracking would overwrite the codes in {P.data_root} that the book's chapters use. "
            "Track with the profile's own head models, or point NPGA_DATA at a copy of the dataset."
        )
    linear = load_or_train(P, "3dmm", progress)
    nphm = load_or_train(P, "nphm", progress)
    ds = open_dataset(ensure_dataset(P))
    part_ids = [PART_NAMES.index(p) for p in SURFACE_PARTS if p in PART_NAMES]
    report: dict = {"profile": P.name, "participants": {}, "image_size": [P.data.width, P.data.height]}
    n_frames = sum(len(ds.participant(p).sequence(s).frames) for p in ds.participants for s in ds.participant(p).sequences)
    bar = tqdm(total=n_frames, desc="COLMAP points", disable=not progress, leave=False)
    t0 = time.perf_counter()
    for pid in ds.participants:
        part = ds.participant(pid)
        res = track_participant(P, part, linear, nphm, progress=bar)
        # GT vertices are in full-template order: the part labels come from the scans
        try:
            pv = np.asarray(ds.scans().part_of_vertex, np.int64)
            mask = np.isin(pv, part_ids) if len(pv) else None
        except ValueError:  # real data: no scans, no part labels, no ground truth
            mask = None
        crop = {"cut": P.head_model.neck_cut, "part_mask": mask}
        errs = _errors_full_template(P, part, res, linear, nphm, crop)
        report["participants"][str(pid)] = {
            "points_per_frame": {s: [int(len(p)) for p in res["points"][s]] for s in res["points"]},
            "error_mm": errs,
        }
    bar.close()
    report["seconds"] = time.perf_counter() - t0
    for name in ("3dmm", "nphm"):
        vals = [e for p in report["participants"].values() for s in p["error_mm"].get(name, {}).values() for e in s]
        report[f"mean_error_mm_{name}"] = float(np.mean(vals)) if vals else float("nan")
    counts = [c for p in report["participants"].values() for s in p["points_per_frame"].values() for c in s]
    report["mean_points_per_frame"] = float(np.mean(counts)) if counts else 0.0
    write_json(models_dir(P) / "tracking.json", report)
    return report


def _errors_full_template(P, participant, result, linear, nphm, crop) -> dict:
    """Tracking errors, with the 3DMM's cropped mesh compared to full-template GT vertices."""
    if crop["part_mask"] is None:
        return {}
    out: dict = {"3dmm": {}, "nphm": {}}
    faces = linear.faces.numpy()
    zi_n = torch.tensor(result["nphm"]["z_id"], dtype=torch.float32)
    for name in participant.sequences:
        s = participant.sequence(name)
        e_l, e_n = [], []
        for t in range(len(s.frames)):
            try:
                v_gt = np.asarray(s.ground_truth_vertices(t), np.float64)
            except ValueError:  # no ground truth (real data)
                return {}
            keep = crop["part_mask"] & (v_gt[:, 1] >= crop["cut"] + EVAL_MARGIN)
            x = v_gt[keep]
            v = linear.vertices(result["3dmm"]["z_id"], result["3dmm"]["z_exp"][name][t]).numpy()
            e_l.append(float(1e3 * point_to_mesh(x, v, faces).mean()))
            with torch.no_grad():
                f = nphm.posed_sdf(torch.tensor(x, dtype=torch.float32), zi_n,
                                   torch.tensor(result["nphm"]["z_exp"][name][t], dtype=torch.float32))
            e_n.append(float(1e3 * f.abs().mean()))
        out["3dmm"][name] = e_l
        out["nphm"][name] = e_n
    return out


__all__ = ["SURFACE_PARTS", "frame_point_cloud", "points_path", "sequence_points", "track_dataset", "track_participant", "tracked"]
