"""A sparse point cloud of one multi-view frame with COLMAP (pycolmap), cameras known.

The trackers of :mod:`npga.headmodels.fitting` see a frame the way NPGA's
preprocessing does: not as ground-truth meshes but as images from calibrated
cameras. Structure from motion with *known* poses has three steps:

1. **features** -- SIFT keypoints and descriptors in every image
   (``pycolmap.FeatureExtractor``, COLMAP's CPU SIFT), only where the alpha map says
   the head is (the black background has no texture anyway);
2. **matching** -- for every pair of cameras that look at the head from similar
   directions, mutual nearest neighbours of the descriptors that pass Lowe's ratio
   test *and* lie within ``max_epipolar_px`` of the epipolar line that the known
   calibration predicts (the known poses make geometric verification exact, where
   COLMAP without poses has to estimate a fundamental matrix by RANSAC);
3. **triangulation** -- pairwise matches are chained into tracks (union-find), and
   each track's 3D point is estimated robustly by ``pycolmap.estimate_triangulation``
   (LO-RANSAC over the views) from the known cameras; points seen in fewer than three
   views, with a large reprojection error, a small triangulation angle or behind a
   camera are dropped.

Pixel convention: COLMAP's keypoints, like :mod:`npga.capture.cameras`, put the centre of
the top-left pixel at (0.5, 0.5), so no shift is needed.

Dense multi-view stereo (``pycolmap.patch_match_stereo``) needs CUDA and is not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from npga.capture.cameras import Camera


@dataclass
class PointCloud:
    """Triangulated points of one frame."""

    points: np.ndarray  # (N, 3) float64, world metres
    n_views: np.ndarray  # (N,) int, views in each point's track (inliers)
    reproj_px: np.ndarray  # (N,) mean reprojection error of the inliers in pixels
    colors: np.ndarray  # (N, 3) float32 mean image colour
    stats: dict = field(default_factory=dict)  # keypoints, matches, tracks per stage


def _gray_uint8(image: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    img = np.asarray(image, np.float32)
    gray = img if img.ndim == 2 else img[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.ascontiguousarray(np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8))


def sift_features(
    images: np.ndarray,
    alphas: np.ndarray | None = None,
    max_features: int = 4096,
    peak_threshold: float = 0.001,
    min_alpha: float = 0.99,
    border: float = 8.0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """SIFT per image: ``[(keypoints (n, 2) pixels, descriptors (n, 128) unit float32)]``.

    ``images`` (C, H, W, 3) in [0, 1]; keypoints where ``alphas`` < ``min_alpha`` are
    dropped (silhouette edges against the black background are not surface texture).
    ``peak_threshold`` is far lower than COLMAP's default (1/150) because small images of
    a smooth face have little contrast (at 88 x 128 pixels the default finds ~25 points
    per frame, this ~50).

    Keypoints closer than ``border`` pixels to the image edge are dropped: pycolmap 4.2's
    CPU SIFT returns run-to-run different descriptors for some of them (measured on a
    mini frame: 2 of 749 descriptors, a keypoint 5 px from the edge, 5 different results
    in 5 processes; with an 8 px border 5 of 5 identical), and one changed match changes
    the tracking downstream.
    """
    import pycolmap

    pycolmap.logging.minloglevel = max(int(pycolmap.logging.minloglevel), 1)  # no INFO line per image
    opts = pycolmap.FeatureExtractionOptions()
    opts.sift.max_num_features = int(max_features)
    opts.sift.peak_threshold = float(peak_threshold)
    opts.num_threads = 1
    extractor = pycolmap.FeatureExtractor.create(opts, pycolmap.Device.cpu)
    out = []
    for c, image in enumerate(images):
        kp, desc = extractor.extract_from_uint8_array(_gray_uint8(image, None))
        xy = np.asarray(pycolmap.keypoints_to_matrix(kp), np.float64).reshape(-1, 4)[:, :2]
        desc = np.asarray(desc.data, np.float32).reshape(len(xy), -1)
        H, W = image.shape[:2]
        inside = ((xy[:, 0] >= border) & (xy[:, 0] < W - border)
                  & (xy[:, 1] >= border) & (xy[:, 1] < H - border))
        xy, desc = xy[inside], desc[inside]
        if alphas is not None and len(xy):
            a = alphas[c]
            ix = np.clip(np.floor(xy[:, 0]).astype(int), 0, a.shape[1] - 1)
            iy = np.clip(np.floor(xy[:, 1]).astype(int), 0, a.shape[0] - 1)
            keep = a[iy, ix] >= min_alpha
            xy, desc = xy[keep], desc[keep]
        desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        out.append((xy, desc))
    return out


def fundamental(cam_a: Camera, cam_b: Camera) -> np.ndarray:
    """F with ``x_b^T F x_a = 0`` for homogeneous pixels of the same 3D point."""
    rel = cam_b.world_2_cam @ np.linalg.inv(cam_a.world_2_cam)
    R, t = rel[:3, :3], rel[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(cam_b.K).T @ tx @ R @ np.linalg.inv(cam_a.K)


def _epipolar_distance(F: np.ndarray, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Symmetric point-to-epipolar-line distance in pixels, (n,)."""
    ha = np.concatenate([xa, np.ones((len(xa), 1))], 1)
    hb = np.concatenate([xb, np.ones((len(xb), 1))], 1)
    la = ha @ F.T  # lines in b
    lb = hb @ F  # lines in a
    num = np.abs(np.einsum("ij,ij->i", hb, la))
    return 0.5 * (num / np.linalg.norm(la[:, :2], axis=1).clip(1e-12) + num / np.linalg.norm(lb[:, :2], axis=1).clip(1e-12))


def match_pair(
    feats_a: tuple[np.ndarray, np.ndarray],
    feats_b: tuple[np.ndarray, np.ndarray],
    F: np.ndarray,
    ratio: float = 0.85,
    max_epipolar_px: float = 1.5,
) -> np.ndarray:
    """Indices (m, 2) of matched keypoints: mutual nearest neighbours, ratio test, epipolar check."""
    (xa, da), (xb, db) = feats_a, feats_b
    if len(xa) < 2 or len(xb) < 2:
        return np.zeros((0, 2), np.int64)
    # Epipolar gating first: candidates off the predicted line cannot match, which
    # makes the ratio test meaningful among the remaining ones.
    ha = np.concatenate([xa, np.ones((len(xa), 1))], 1)
    hb = np.concatenate([xb, np.ones((len(xb), 1))], 1)
    la = ha @ F.T  # (na, 3) epipolar lines in b
    dist_line = np.abs(la @ hb.T) / np.linalg.norm(la[:, :2], axis=1, keepdims=True).clip(1e-12)
    sim = da @ db.T
    d2 = np.maximum(2.0 - 2.0 * sim, 0.0)
    big = 1e9
    d2_gated = np.where(dist_line <= 4.0 * max_epipolar_px, d2, big)
    order = np.argsort(d2_gated, axis=1)[:, :2]
    best = order[:, 0]
    rows = np.arange(len(xa))
    d_best = d2_gated[rows, best]
    d_second = d2_gated[rows, order[:, 1]] if d2.shape[1] > 1 else np.full(len(xa), big)
    ok = (d_best < big) & (d_best < (ratio**2) * d_second)
    back = np.argmin(np.where(dist_line <= 4.0 * max_epipolar_px, d2, big), axis=0)
    ok &= back[best] == rows
    pairs = np.stack([rows[ok], best[ok]], 1)
    if len(pairs):
        e = _epipolar_distance(F, xa[pairs[:, 0]], xb[pairs[:, 1]])
        pairs = pairs[e <= max_epipolar_px]
    return pairs.astype(np.int64)


def _tracks(n_per_cam: Sequence[int], matches: dict[tuple[int, int], np.ndarray]) -> list[np.ndarray]:
    """Union-find over (camera, keypoint) nodes; tracks as arrays of (cam, kp) rows."""
    offsets = np.concatenate([[0], np.cumsum(n_per_cam)])
    parent = np.arange(offsets[-1])

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    for (a, b), pairs in matches.items():
        for ia, ib in pairs:
            ra, rb = find(offsets[a] + ia), find(offsets[b] + ib)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(offsets[-1])], dtype=np.int64)
    cam_of = np.searchsorted(offsets, np.arange(offsets[-1]), side="right") - 1
    order = np.argsort(roots, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(roots[order])) + 1)
    tracks = []
    for g in groups:
        if len(g) < 2:
            continue
        cams = cam_of[g]
        if len(np.unique(cams)) != len(cams):
            continue  # two keypoints of one image: an inconsistent track
        tracks.append(np.stack([cams, g - offsets[cams]], 1))
    return tracks


def _view_angle(a: Camera, b: Camera) -> float:
    za, zb = a.R[2], b.R[2]
    return float(np.degrees(np.arccos(np.clip(za @ zb, -1, 1))))


def triangulate_frame(
    images: np.ndarray,
    cameras: Sequence[Camera],
    alphas: np.ndarray | None = None,
    max_pair_angle: float = 45.0,
    max_reproj_px: float = 1.0,
    min_angle_deg: float = 2.0,
    features: dict | None = None,
    ratio: float = 0.85,
    max_epipolar_px: float = 1.5,
    min_views: int = 3,
) -> PointCloud:
    """Sparse points of one frame seen by calibrated ``cameras``; see the module docstring.

    ``images`` (C, H, W, 3) in [0, 1], ``alphas`` (C, H, W) or None. Cameras whose
    viewing directions differ by more than ``max_pair_angle`` degrees are not matched
    (a face looks too different). ``features``: keyword arguments of
    :func:`sift_features`. ``min_views``: a point must be an inlier in this many images;
    two-view points are often wrong matches that happen to lie on the epipolar line (a
    third view rules them out), so the default is 3.
    """
    import pycolmap

    images = np.asarray(images)
    if images.ndim != 4 or len(images) != len(cameras):
        raise ValueError(
            f"triangulate_frame: images must be (C, H, W, 3) with C = {len(cameras)} cameras, "
            f"got {images.shape}"
        )
    feats = sift_features(images, alphas, **(features or {}))
    matches = {}
    C = len(cameras)
    for a in range(C):
        for b in range(a + 1, C):
            if _view_angle(cameras[a], cameras[b]) > max_pair_angle:
                continue
            m = match_pair(feats[a], feats[b], fundamental(cameras[a], cameras[b]), ratio, max_epipolar_px)
            if len(m):
                matches[a, b] = m
    tracks = _tracks([len(f[0]) for f in feats], matches)

    pc_cams = []
    pc_poses = []
    for cam in cameras:
        K = cam.K
        pc_cams.append(
            pycolmap.Camera(
                model="PINHOLE", width=cam.width, height=cam.height,
                params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]],
            )
        )
        pc_poses.append(pycolmap.Rigid3d(cam.world_2_cam[:3, :4]))
    opts = pycolmap.EstimateTriangulationOptions()
    opts.residual_type = pycolmap.TriangulationResidualType.REPROJECTION_ERROR
    opts.ransac.max_error = float(max_reproj_px) * 2.0
    opts.ransac.random_seed = 0
    opts.min_tri_angle = float(np.radians(min_angle_deg))

    pts, nv, err, cols = [], [], [], []
    for tr in tracks:
        xy = np.stack([feats[c][0][k] for c, k in tr])
        res = pycolmap.estimate_triangulation(
            xy, [pc_poses[c] for c, _ in tr], [pc_cams[c] for c, _ in tr], opts
        )
        if res is None:
            continue
        X = np.asarray(res["xyz"], np.float64).reshape(3)
        inl = np.asarray(res["inliers"], bool)
        if inl.sum() < max(2, min_views):
            continue
        e_all = []
        ok = True
        for (c, k), use in zip(tr, inl):
            if not use:
                continue
            uv, z = cameras[c].project(X[None])
            if z[0] <= 0:
                ok = False
                break
            e_all.append(np.linalg.norm(uv[0] - feats[c][0][k]))
        if not ok or np.mean(e_all) > max_reproj_px:
            continue
        pts.append(X)
        nv.append(int(inl.sum()))
        err.append(float(np.mean(e_all)))
        col = []
        for (c, k), use in zip(tr, inl):
            if use:
                x, y = feats[c][0][k]
                H, W = images.shape[1:3]
                col.append(images[c, min(int(y), H - 1), min(int(x), W - 1), :3])
        cols.append(np.mean(col, axis=0))
    stats = {
        "keypoints": int(sum(len(f[0]) for f in feats)),
        "pairs": len(matches),
        "matches": int(sum(len(m) for m in matches.values())),
        "tracks": len(tracks),
        "points": len(pts),
    }
    return PointCloud(
        np.asarray(pts, np.float64).reshape(-1, 3),
        np.asarray(nv, np.int64),
        np.asarray(err, np.float64),
        np.asarray(cols, np.float32).reshape(-1, 3),
        stats,
    )


__all__ = ["PointCloud", "fundamental", "match_pair", "sift_features", "triangulate_frame"]
