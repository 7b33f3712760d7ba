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

Points below the models' neck cut are dropped (neither model has a neck).
Both trackers also estimate the **rigid head pose** of every frame, ``x_world = R x_head
+ t`` (:mod:`npga.headmodels.pose`): the 3DMM by alternating closed-form code solves and
weighted Procrustes from a multi-start initialisation (:func:`fit_3dmm_posed`), the
NPHM by refining that pose jointly with its codes (:func:`npga.headmodels.nphm.fit_nphm_posed`).
Points below ``pose_cut`` (the neck, which bends on its own) do not pull the pose; the
neck cut itself is made in head space.

The codes and poses go to ``ROOT/{pid:03d}/sequences/{SEQ}/tracking/{model}.npz``
(``z_exp`` (T, d), ``z_id`` (d_id,), ``rotation`` (T, 3, 3), ``translation`` (T, 3),
read by :meth:`npga.capture.dataset.Sequence.codes`), which later chapters use to
drive and pose avatars.

Tracking error (synthetic data only): the mean distance from ground-truth surface
points -- the vertices of the visible parts (skin, hair, ears, eyelids) above the
cut -- to the tracked, posed surface: exact point-to-mesh for the 3DMM, ``|f(B(x))|``
for the NPHM (an SDF trained with the eikonal term is a distance to first order);
and the pose error: degrees between R and the true rotation, millimetres between where
the two poses put the head centre.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from npga.config import Profile, get_profile
from npga.headmodels.colmap_points import PointCloud, triangulate_frame
from npga.headmodels.evaluate import EVAL_MARGIN
from npga.headmodels.geometry import closest_points_on_mesh, face_normals, point_to_mesh
from npga.headmodels.linear3dmm import Linear3DMM
from npga.headmodels.nphm import NPHM, fit_nphm_posed
from npga.headmodels.pose import (
    pose_step,
    relative_pose_errors,
    rot_x,
    rot_y,
    rotation_about,
    rotation_error_deg,
    translation_error_mm,
)
from npga.io import save_npz, write_json

SURFACE_PARTS = ("skin", "hair", "ear_l", "ear_r", "eyelid_l", "eyelid_r")


def frame_point_cloud(sequence, frame: int, seed: int = 0) -> PointCloud:
    """COLMAP points of frame number ``frame`` (an entry of ``sequence.frames``, not an index:
    subsampled captures skip numbers) of a :class:`npga.capture.dataset.Sequence`, all cameras."""
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
    for frame in sequence.frames:
        clouds.append(frame_point_cloud(sequence, frame))
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


# --------------------------------------------------------------------------- rigid head pose

# Start rotations of the pose search (radians, yaw x pitch, about the cloud's centroid):
# ICP from the identity finds a 10-degree turn, but not reliably a 25-degree one.
INIT_YAWS = (-0.4, -0.2, 0.0, 0.2, 0.4)
INIT_PITCHES = (-0.15, 0.0, 0.15)


def to_head_space(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """World points (N, 3) into head space: ``R^T (p - t)``."""
    return (np.asarray(points, np.float64) - t) @ R


class MeshIndex:
    """One mesh prepared for many closest-point queries: centroid KD-tree and face normals.

    Built once per mesh, it serves every start of :func:`initial_pose` and every pose
    step of a round (building the tree is what a single query costs most).
    """

    def __init__(self, verts: np.ndarray, faces: np.ndarray) -> None:
        from scipy.spatial import cKDTree

        self.verts, self.faces = np.asarray(verts, np.float64), np.asarray(faces, np.int64)
        self.normals, _ = face_normals(self.verts, self.faces)
        self.tree = cKDTree(self.verts[self.faces].mean(axis=1))

    def closest(self, points: np.ndarray):
        return closest_points_on_mesh(points, self.verts, self.faces, tree=self.tree)


def _correspondences(p_world, index: MeshIndex, R, t, trim, pose_cut):
    """For the world points that count for the pose: closest model points and normals (head
    space), the points, their weights (trimmed) and distances."""
    h = to_head_space(p_world, R, t)
    keep = h[:, 1] >= pose_cut  # the neck bends on its own: it must not drag the head
    cp = index.closest(h[keep])
    w = (cp.distance < trim).astype(np.float64)
    return cp.point, index.normals[cp.face], p_world[keep], w, cp.distance


def rigid_icp(p_world, index: MeshIndex, R, t, *, iterations=4, trim=0.02, pose_cut=-0.1):
    """Rigid ICP of one frame (Gauss-Newton point-to-plane steps): (R, t, score), score =
    mean min(distance, trim) in metres before the last step."""
    score = np.inf
    for _ in range(iterations):
        c, n, p, w, dist = _correspondences(p_world, index, R, t, trim, pose_cut)
        score = float(np.minimum(dist, trim).mean()) if len(dist) else np.inf
        if w.sum() < 6:
            break
        R, t = pose_step(R, t, c, n, p, w)
    return R, t, score


def initial_pose(p_world, index: MeshIndex, *, pose_cut=-0.1) -> tuple[np.ndarray, np.ndarray]:
    """Best of :data:`INIT_YAWS` x :data:`INIT_PITCHES` starts, each refined by rigid ICP.

    Robust initialisation: ICP converges to the nearest local minimum, and a head turned
    by 25 degrees is nearer a wrong one (the face slid sideways) than the right one.
    """
    c = np.asarray(p_world, np.float64).mean(0)
    best = (np.eye(3), np.zeros(3), np.inf)
    for yaw in INIT_YAWS:
        for pitch in INIT_PITCHES:
            R0, t0 = rotation_about(rot_y(yaw) @ rot_x(pitch), c)
            R, t, _ = rigid_icp(p_world, index, R0, t0, iterations=4, trim=0.03, pose_cut=pose_cut)
            _, _, score = rigid_icp(p_world, index, R, t, iterations=1, trim=0.03, pose_cut=pose_cut)
            if score < best[2]:
                best = (R, t, score)
    return best[0], best[1]


def _smooth_weight(R_j: np.ndarray, R_k: np.ndarray, weight: float, scale_deg: float) -> float:
    """Cauchy-robust weight of the pull of frame k's pose towards frame j's."""
    return weight / (1.0 + (float(rotation_error_deg(R_j, R_k)) / scale_deg) ** 2)


def fit_3dmm_posed(
    linear: Linear3DMM,
    points: list[np.ndarray],
    *,
    segments: list[int],
    cut: float,
    pose_cut: float,
    rounds: int = 8,
    lam: float = 1e-5,
    smooth: float = 1e-5,
    pose_smooth: float = 0.1,
    smooth_scale_deg: float = 2.0,
    trims: tuple[float, ...] = (0.03, 0.02, 0.015, 0.01),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Codes and per-frame head pose of the 3DMM from world-space points: ICP, alternating.

    Each round (1) takes every frame's points to head space with the current pose, keeps
    those above the model's neck cut and solves the codes in closed form
    (:meth:`Linear3DMM.fit_points`, two ICP steps, warm-started); (2) re-estimates each
    frame's pose by three Gauss-Newton point-to-plane steps (:func:`npga.headmodels.pose.pose_step`)
    towards its points, pulled towards the poses of the neighbouring frames of the same
    sequence (temporal smoothing), the points below ``pose_cut`` (the neck) left out and
    those farther than the round's trim ignored. The pull is robust: its weight
    ``pose_smooth / (1 + (angle / smooth_scale_deg)^2)`` fades for neighbours that differ by
    more than a few degrees, because a quadratic pull towards a frame 20 degrees away wins
    against a data term whose trimmed points no longer see the true pose (measured on the cpu
    profile's EXP-1-head: 17 degrees of error with a quadratic pull, 1 without). Even robust,
    a pull much stronger than the default collapses a fast turn onto its neighbours (the
    weight grows as the difference shrinks); at the default it helps the noisy mini clouds
    (mean rotation error 2.6 against 3.6 degrees without) and costs clean data little.
    The first pose of every frame comes from :func:`initial_pose` on the mean head.
    Returns ``z_id``, ``z_exp`` (T, k), ``rotation`` (T, 3, 3), ``translation`` (T, 3).
    """
    T = len(points)
    faces = linear.faces.numpy()
    mean = MeshIndex(linear.vertices(np.zeros(linear.id_dims)).numpy(), faces)
    R = np.empty((T, 3, 3))
    t = np.empty((T, 3))
    for k, p in enumerate(points):
        R[k], t[k] = initial_pose(p, mean, pose_cut=pose_cut)
    seg_of = np.repeat(np.arange(len(segments)), segments)
    zi = ze = None
    for r in range(rounds):
        trim = trims[min(r, len(trims) - 1)]
        head = []
        for k, p in enumerate(points):
            h = to_head_space(p, R[k], t[k])
            head.append(h[h[:, 1] >= cut])
        zi, ze, _ = linear.fit_points(
            head, iterations=2, lam=lam, smooth=smooth, segments=segments, trim=(trim,),
            z_exp_init=ze, z_id_init=zi,
        )
        verts = linear.vertices(zi, ze).numpy()
        index = [MeshIndex(v, faces) for v in verts]
        for _ in range(3):
            corr = [_correspondences(p, index[k], R[k], t[k], trim, pose_cut) for k, p in enumerate(points)]
            newR, newt = R.copy(), t.copy()
            for k in range(T):
                c, n, p, w, _ = corr[k]
                near = [(R[j], t[j], _smooth_weight(R[j], R[k], pose_smooth, smooth_scale_deg))
                        for j in (k - 1, k + 1) if 0 <= j < T and seg_of[j] == seg_of[k]]
                if (w > 0).sum() >= 6:
                    newR[k], newt[k] = pose_step(R[k], t[k], c, n, p, w / len(w), neighbours=near)
            R, t = newR, newt
    return zi, ze, R, t


def track_participant(
    profile: Profile, participant, linear: Linear3DMM, nphm: NPHM,
    smooth_linear: float = 1e-5, smooth_nphm: float = 1e-3, progress=None, write: bool = True,
) -> dict:
    """Fit both models and the head pose to all frames of one participant; write the tracking files.

    The 3DMM tracker (:func:`fit_3dmm_posed`) estimates the pose; the NPHM fit starts from
    it and refines it jointly with its codes (:func:`npga.headmodels.nphm.fit_nphm_posed`).
    Returns ``{model: {"z_id", "z_exp": {seq: (T, d)}, "rotation": {seq: (T, 3, 3)},
    "translation": {seq: (T, 3)}}, "points": {seq: [..]}}``.
    """
    cfg = profile.head_model
    rng = np.random.default_rng(profile.seed + participant.pid)
    seqs = [participant.sequence(name) for name in participant.sequences]
    obs, segments = [], []
    points = {}
    for s in seqs:
        pts = sequence_points(s, progress)
        points[s.name] = pts
        # generous world-space cut: the exact one is made in head space, once the pose is known
        obs += [_select(p, cfg.neck_cut - 0.05, cfg.track_points, rng) for p in pts]
        segments.append(len(pts))
    empty = [k for k, p in enumerate(obs) if len(p) < 10]
    if len(empty) == len(obs):
        raise RuntimeError(f"participant {participant.pid}: COLMAP found no points in any frame")
    for k in empty:  # a frame without points borrows its neighbour's (smoothness does the rest)
        near = min((j for j in range(len(obs)) if j not in empty), key=lambda j: abs(j - k))
        obs[k] = obs[near]

    zi_l, ze_l, R_l, t_l = fit_3dmm_posed(
        linear, obs, segments=segments, cut=cfg.neck_cut, pose_cut=cfg.pose_cut, smooth=smooth_linear,
    )
    head_obs = []
    for k, p in enumerate(obs):
        h = to_head_space(p, R_l[k], t_l[k])
        head_obs.append(p[h[:, 1] >= cfg.neck_cut])
    zi_n, ze_n, R_n, t_n, _ = fit_nphm_posed(
        nphm, head_obs, R_l, t_l, iterations=cfg.fit_iterations * 2,
        points_per_step=max(64, 8192 // len(obs)), smooth=smooth_nphm, segments=segments, seed=profile.seed,
    )
    out = {
        "3dmm": {"z_id": zi_l, "z_exp": {}, "rotation": {}, "translation": {}},
        "nphm": {"z_id": zi_n, "z_exp": {}, "rotation": {}, "translation": {}},
        "points": points,
    }
    start = 0
    for s, T in zip(seqs, segments):
        for name, zi, ze, R, t in (("3dmm", zi_l, ze_l, R_l, t_l), ("nphm", zi_n, ze_n, R_n, t_n)):
            sl = slice(start, start + T)
            codes = ze[sl].astype(np.float32)
            out[name]["z_exp"][s.name] = codes
            out[name]["rotation"][s.name] = R[sl]
            out[name]["translation"][s.name] = t[sl]
            if write:
                s.write_tracking(name, codes, zi, R[sl], t[sl],
                                 points_per_frame=np.array([len(o) for o in obs[sl]], np.int64))
        start += T
    return out


def tracked(profile: Profile) -> bool:
    """True when ``tracking.json`` exists and every sequence has both models' tracking files, with pose.

    Tracking files written before the head pose was tracked (no ``rotation``) count as
    missing, so the data step re-tracks instead of the chapters failing on them.
    """
    from npga.capture.dataset import open_dataset
    from npga.headmodels.store import models_dir

    if not (models_dir(profile) / "tracking.json").is_file() or not (profile.data_root / "dataset.json").is_file():
        return False
    ds = open_dataset(profile.data_root)
    for pid in ds.participants:
        part = ds.participant(pid)
        for name in part.sequences:
            folder = part.path / "sequences" / name / "tracking"
            for m in ("3dmm", "nphm"):
                path = folder / f"{m}.npz"
                if not path.is_file():
                    return False
                with np.load(path) as z:
                    if "rotation" not in z.files:
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
        errs, pose_errs = _errors_full_template(P, part, res, linear, nphm, crop)
        report["participants"][str(pid)] = {
            "points_per_frame": {s: [int(len(p)) for p in res["points"][s]] for s in res["points"]},
            "error_mm": errs,
            "pose_error": pose_errs,
        }
    bar.close()
    report["seconds"] = time.perf_counter() - t0
    for name in ("3dmm", "nphm"):
        vals = [e for p in report["participants"].values() for s in p["error_mm"].get(name, {}).values() for e in s]
        report[f"mean_error_mm_{name}"] = float(np.mean(vals)) if vals else float("nan")
        for key in ("rotation_deg", "translation_mm", "relative_rotation_deg", "relative_translation_mm"):
            vals = [e for p in report["participants"].values()
                    for s in p["pose_error"].get(name, {}).get(key, {}).values() for e in s]
            report[f"mean_pose_error_{key}_{name}"] = float(np.mean(vals)) if vals else float("nan")
    counts = [c for p in report["participants"].values() for s in p["points_per_frame"].values() for c in s]
    report["mean_points_per_frame"] = float(np.mean(counts)) if counts else 0.0
    write_json(models_dir(P) / "tracking.json", report)
    return report


def _errors_full_template(P, participant, result, linear, nphm, crop) -> tuple[dict, dict]:
    """Per-frame tracking errors against ground truth: surface (mm), rotation (deg), translation (mm).

    Surface: GT vertices (above the cut in GT head space) taken into the *tracked* head
    space with the tracked pose, then point-to-mesh distances to the tracked surface, so a
    pose error counts as surface error. For the 3DMM that surface is its mesh; for NPHM the
    marching-cubes mesh of its posed SDF f(B(x)) (``HeadModelConfig.mc_resolution``), as
    the held-out evaluation does -- not ``|f(B(x))|``, which is the very quantity NPHM's
    fit minimised and only a distance to first order. Rotation: angle of ``R_gt^T R``;
    translation: distance between where the two poses put the head centre.
    """
    from npga.capture.synthetic.head import HEAD_CENTRE

    if crop["part_mask"] is None:
        return {}, {}
    out: dict = {m: {} for m in ("3dmm", "nphm")}
    pose: dict = {m: {k: {} for k in ("rotation_deg", "translation_mm", "relative_rotation_deg",
                                        "relative_translation_mm")} for m in ("3dmm", "nphm")}
    all_poses: dict = {m: ([], [], [], []) for m in ("3dmm", "nphm")}  # the participant's frames
    faces = linear.faces.numpy()
    zi_n = torch.tensor(result["nphm"]["z_id"], dtype=torch.float32)
    for name in participant.sequences:
        s = participant.sequence(name)
        try:
            gt = s.ground_truth()
        except ValueError:  # no ground truth (real data)
            return {}, {}
        T = len(s.frames)
        R_gt = gt.head_rotation if gt.head_rotation is not None else np.tile(np.eye(3), (T, 1, 1))
        t_gt = gt.head_translation if gt.head_translation is not None else np.zeros((T, 3))
        e_l, e_n = [], []
        for t in range(T):
            v_gt = np.asarray(s.ground_truth_vertices(t), np.float64)
            v_head = to_head_space(v_gt, R_gt[t], t_gt[t])
            keep = crop["part_mask"] & (v_head[:, 1] >= crop["cut"] + EVAL_MARGIN)
            x_w = v_gt[keep]
            x = to_head_space(x_w, result["3dmm"]["rotation"][name][t], result["3dmm"]["translation"][name][t])
            v = linear.vertices(result["3dmm"]["z_id"], result["3dmm"]["z_exp"][name][t]).numpy()
            e_l.append(float(1e3 * point_to_mesh(x, v, faces).mean()))
            x = to_head_space(x_w, result["nphm"]["rotation"][name][t], result["nphm"]["translation"][name][t])
            vm, fm = nphm.extract_mesh(zi_n, torch.tensor(result["nphm"]["z_exp"][name][t], dtype=torch.float32),
                                       resolution=P.head_model.mc_resolution)
            e_n.append(float(1e3 * point_to_mesh(x, vm, fm).mean()))
        out["3dmm"][name] = e_l
        out["nphm"][name] = e_n
        for m in ("3dmm", "nphm"):
            R, tr = result[m]["rotation"][name], result[m]["translation"][name]
            pose[m]["rotation_deg"][name] = rotation_error_deg(R_gt, R).tolist()
            pose[m]["translation_mm"][name] = translation_error_mm(R_gt, t_gt, R, tr, HEAD_CENTRE).tolist()
            for acc, v in zip(all_poses[m], (R_gt, t_gt, R, tr)):
                acc.append(v)
    # the offset is one per participant (one head space per identity), so it is fitted on all its frames
    for m, (Rg, tg, R, tr) in all_poses.items():
        rot, trans = relative_pose_errors(*(np.concatenate(a) for a in (Rg, tg, R, tr)), HEAD_CENTRE)
        start = 0
        for name, n in zip(participant.sequences, (len(a) for a in Rg)):
            pose[m]["relative_rotation_deg"][name] = rot[start : start + n].tolist()
            pose[m]["relative_translation_mm"][name] = trans[start : start + n].tolist()
            start += n
    return out, pose


__all__ = ["SURFACE_PARTS", "fit_3dmm_posed", "frame_point_cloud", "MeshIndex", "initial_pose", "rigid_icp", "to_head_space", "points_path", "sequence_points", "track_dataset", "track_participant", "tracked"]
