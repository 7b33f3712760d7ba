"""An independent ground-truth mesh rasterizer (CPU, vectorised).

The synthetic capture must not be rendered by the method it is meant to test, so
the ground-truth images come from a classic triangle rasterizer, not from
Gaussians:

1. vertices are projected with the OpenCV pinhole model (``npga.capture.cameras``);
2. every triangle is expanded into the samples of its bounding box on a
   ``supersample`` x finer grid (sample centres at integer + 0.5) and kept where
   all three edge functions are non-negative;
3. a z-buffer keeps the nearest triangle per sample: the key
   ``(quantised depth << 26) | face`` is reduced with a scatter-min, so ties are
   broken deterministically and no per-pair data has to be kept;
4. barycentrics of the winning triangle are made perspective-correct
   (``b_i / z_i`` renormalised: 1/z is affine in screen space);
5. :func:`resolve` box-filters the shaded samples back to pixels. Empty samples are
   black, so the result is premultiplied on black and ``alpha`` is the covered
   fraction of each pixel.

Triangles with a vertex closer than ``near`` to the camera plane are dropped (no
clipping): fine for a head seen from a metre away, documented for other uses.

Public: :class:`Fragments`, :func:`rasterize`, :func:`interpolate`,
:func:`resolve`, :func:`vertex_normals`, :func:`render_mesh`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from npga.capture.cameras import Camera

_FACE_BITS = 26  # faces per mesh < 2**26 = 67M
_DEPTH_LEVELS = 2**36  # depth quantisation; (2**36 << 26) < 2**63


@dataclass
class Fragments:
    """The visible surface of one camera, one entry per covered sample.

    Samples live on the supersampled grid of ``height`` x ``width``
    (``= camera size * supersample``); ``pixel`` indexes that grid row-major.
    """

    height: int
    width: int
    supersample: int
    pixel: np.ndarray  # (N,) int64 flat sample index
    face: np.ndarray  # (N,) int64 winning triangle
    bary: np.ndarray  # (N, 3) float64 perspective-correct barycentrics
    depth: np.ndarray  # (N,) float64 camera-space z (metres)

    def to_image(self, values: np.ndarray, background: float = 0.0) -> np.ndarray:
        """Scatter per-sample ``values`` (N, ...) into a (height, width, ...) grid."""
        values = np.asarray(values)
        out = np.full((self.height * self.width,) + values.shape[1:], background, values.dtype)
        out[self.pixel] = values
        return out.reshape((self.height, self.width) + values.shape[1:])

    def depth_map(self) -> np.ndarray:
        """(height, width) float64 depth of the supersampled grid, +inf where empty."""
        return self.to_image(self.depth, background=np.inf)


def _camera_space(vertices: np.ndarray, camera: Camera) -> np.ndarray:
    return vertices @ camera.R.T + camera.t


def project(vertices: np.ndarray, camera: Camera, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (V, 2) on the ``supersample`` grid and camera depths (V,)."""
    p = _camera_space(np.asarray(vertices, dtype=np.float64), camera)
    z = p[:, 2]
    uv = (p @ camera.K.T)[:, :2] / np.where(np.abs(z) < 1e-12, 1e-12, z)[:, None]
    return uv * supersample, z


def rasterize(
    vertices: np.ndarray,
    faces: np.ndarray,
    camera: Camera,
    supersample: int = 1,
    cull_backfaces: bool | np.ndarray = False,
    near: float = 1e-3,
    max_pairs: int = 3_000_000,
) -> Fragments:
    """Visible triangle and perspective-correct barycentrics per sample.

    vertices: (V, 3) world positions; faces: (F, 3) vertex indices.
    cull_backfaces: bool for all faces, or an (F,) bool mask of faces that are
    dropped when they face away from the camera (front = counter-clockwise seen
    from outside, i.e. ``(v1 - v0) x (v2 - v0)`` points towards the viewer).
    max_pairs bounds memory: faces are processed in chunks of at most that many
    (triangle, sample) candidate pairs.
    """
    faces = np.asarray(faces, dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {faces.shape}")
    if len(faces) >= 2**_FACE_BITS:
        raise ValueError(f"too many faces for the rasterizer: {len(faces)} >= {2**_FACE_BITS}")
    vertices = np.asarray(vertices, dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not np.all(np.isfinite(vertices)):
        raise ValueError(f"vertices must be a finite (V, 3) array, got shape {vertices.shape}")
    ss = int(supersample)
    if ss < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    Hs, Ws = camera.height * ss, camera.width * ss

    xy, z = project(vertices, camera, ss)
    p_cam = _camera_space(vertices, camera)
    fz = z[faces]  # (F, 3)
    keep = np.all(fz > near, axis=1)
    # Back-face test in 3D: the face normal against the ray to its first vertex.
    e1 = p_cam[faces[:, 1]] - p_cam[faces[:, 0]]
    e2 = p_cam[faces[:, 2]] - p_cam[faces[:, 0]]
    facing = np.einsum("fi,fi->f", np.cross(e1, e2), -p_cam[faces[:, 0]]) > 0
    cull = np.broadcast_to(np.asarray(cull_backfaces, dtype=bool), (len(faces),))
    keep &= facing | ~cull

    fxy = xy[faces]  # (F, 3, 2)
    x0, y0 = fxy[:, 0, 0], fxy[:, 0, 1]
    x1, y1 = fxy[:, 1, 0], fxy[:, 1, 1]
    x2, y2 = fxy[:, 2, 0], fxy[:, 2, 1]
    area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    keep &= np.abs(area2) > 1e-12
    # Sample (j, i) has centre (j + 0.5, i + 0.5): bounding boxes in sample indices.
    xmin = np.ceil(fxy[..., 0].min(1) - 0.5).clip(0, Ws)
    xmax = np.floor(fxy[..., 0].max(1) - 0.5).clip(-1, Ws - 1)
    ymin = np.ceil(fxy[..., 1].min(1) - 0.5).clip(0, Hs)
    ymax = np.floor(fxy[..., 1].max(1) - 0.5).clip(-1, Hs - 1)
    keep &= (xmax >= xmin) & (ymax >= ymin)
    fid = np.nonzero(keep)[0]
    empty = Fragments(Hs, Ws, ss, np.zeros(0, np.int64), np.zeros(0, np.int64),
                      np.zeros((0, 3)), np.zeros(0))
    if len(fid) == 0:
        return empty

    # Edge functions in coordinates local to each face's bounding box, so that
    # float32 keeps sub-sample precision at any image size:
    # lambda_k(lx, ly) = A_k lx + B_k ly + C_k for the sample (bx0 + lx, by0 + ly).
    bx0 = xmin[fid].astype(np.int64)
    by0 = ymin[fid].astype(np.int64)
    ox, oy = bx0 + 0.5, by0 + 0.5
    inv = 1.0 / area2[fid]
    X = fxy[fid, :, 0] - ox[:, None]  # (F', 3)
    Y = fxy[fid, :, 1] - oy[:, None]
    table = np.empty((len(fid), 9), np.float64)
    for k in range(2):  # the third barycentric is 1 - the other two
        i, j = (k + 1) % 3, (k + 2) % 3
        table[:, 3 * k] = (Y[:, i] - Y[:, j]) * inv
        table[:, 3 * k + 1] = (X[:, j] - X[:, i]) * inv
        table[:, 3 * k + 2] = (X[:, i] * Y[:, j] - X[:, j] * Y[:, i]) * inv
    table[:, 6:9] = 1.0 / fz[fid]
    table32 = table.astype(np.float32)
    zlo = float(fz[fid].min())
    zspan = float(fz[fid].max()) - zlo + 1e-9
    bw = (xmax[fid] - xmin[fid] + 1).astype(np.int64)
    bh = (ymax[fid] - ymin[fid] + 1).astype(np.int64)
    counts = bw * bh
    zbuf = np.full(Hs * Ws, np.iinfo(np.int64).max, np.int64)

    # Chunk the faces so that no chunk expands into more than max_pairs samples.
    ends = np.cumsum(counts)
    start = 0
    while start < len(fid):
        base = ends[start - 1] if start > 0 else 0
        stop = max(int(np.searchsorted(ends, base + max_pairs, side="right")), start + 1)
        cnt = counts[start:stop]
        rows = np.repeat(np.arange(start, stop), cnt)
        k = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        w = bw[rows]
        ly = k // w
        lx = (k - ly * w).astype(np.float32)
        ly32 = ly.astype(np.float32)
        t = table32[rows]
        l0 = t[:, 0] * lx + t[:, 1] * ly32 + t[:, 2]
        l1 = t[:, 3] * lx + t[:, 4] * ly32 + t[:, 5]
        l2 = 1.0 - l0 - l1
        eps = -1e-6  # closed edges: a sample on a shared edge belongs to both faces
        inside = np.nonzero((l0 >= eps) & (l1 >= eps) & (l2 >= eps))[0]
        t = t[inside]
        invz = l0[inside] * t[:, 6] + l1[inside] * t[:, 7] + l2[inside] * t[:, 8]
        q = ((1.0 / invz.astype(np.float64) - zlo) * ((_DEPTH_LEVELS - 1) / zspan))
        q = np.clip(q, 0, _DEPTH_LEVELS - 1).astype(np.int64)
        r = rows[inside]
        key = (q << _FACE_BITS) | fid[r]
        pix = (by0[r] + ly[inside]) * Ws + bx0[r] + (k[inside] - ly[inside] * w[inside])
        np.minimum.at(zbuf, pix, key)
        start = stop

    pixel = np.nonzero(zbuf != np.iinfo(np.int64).max)[0]
    if len(pixel) == 0:
        return empty
    face = zbuf[pixel] & ((1 << _FACE_BITS) - 1)
    # Barycentrics of the winner only, recomputed in float64 from its edge functions.
    r = np.searchsorted(fid, face)
    t = table[r]
    lx = (pixel % Ws - bx0[r]).astype(np.float64)
    ly = (pixel // Ws - by0[r]).astype(np.float64)
    l0 = t[:, 0] * lx + t[:, 1] * ly + t[:, 2]
    l1 = t[:, 3] * lx + t[:, 4] * ly + t[:, 5]
    lam = np.clip(np.stack([l0, l1, 1.0 - l0 - l1], 1), 0.0, None)
    w_persp = lam * t[:, 6:9]
    s = w_persp.sum(1, keepdims=True)
    return Fragments(Hs, Ws, ss, pixel, face, w_persp / s, 1.0 / s[:, 0])


def interpolate(frags: Fragments, faces: np.ndarray, vertex_values: np.ndarray) -> np.ndarray:
    """Perspective-correct interpolation of per-vertex values (V, C) -> (N, C)."""
    vals = np.asarray(vertex_values)
    tri = vals[np.asarray(faces)[frags.face]]  # (N, 3, C)
    return np.einsum("nk,nkc->nc", frags.bary, tri.reshape(tri.shape[0], 3, -1)).reshape(
        (len(frags.face),) + vals.shape[1:]
    )


def resolve(frags: Fragments, colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box-filter shaded samples to pixels: premultiplied image (H, W, 3), alpha (H, W).

    colors: (N, 3) linear colours of the covered samples. Uncovered samples count
    as black with zero alpha, so ``image = alpha * mean colour of the covered part``.
    """
    ss = frags.supersample
    H, W = frags.height // ss, frags.width // ss
    buf = np.zeros((frags.height * frags.width, 4), np.float32)
    buf[frags.pixel, :3] = colors
    buf[frags.pixel, 3] = 1.0
    buf = buf.reshape(H, ss, W, ss, 4).mean(axis=(1, 3))
    return buf[..., :3], buf[..., 3]


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3) (zero for unreferenced vertices)."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 * area
    n = np.zeros_like(v)
    for k in range(3):
        for c in range(3):
            n[:, c] += np.bincount(f[:, k], weights=fn[:, c], minlength=len(v))
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(norm < 1e-20, 1.0, norm)


# A fixed studio light for figures: direction towards the light, colour.
DEFAULT_LIGHTS: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((0.45, 0.55, 0.85), (0.75, 0.72, 0.68)),
    ((-0.7, 0.1, 0.6), (0.30, 0.31, 0.34)),
)
DEFAULT_AMBIENT = (0.28, 0.28, 0.30)


def render_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    cameras: Sequence[Camera],
    vertex_colors: np.ndarray | None = None,
    supersample: int = 2,
    shade: bool = True,
    cull_backfaces: bool | np.ndarray = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a coloured triangle mesh into every camera.

    vertices: (V, 3) world metres; faces: (F, 3); vertex_colors: (V, 3) in [0, 1]
    (default light grey). ``shade=True`` applies a fixed two-light Lambert model
    with two-sided normals (good for showing a mesh); ``shade=False`` shows the
    colours flat (good for part or error maps).
    Returns images (C, H, W, 3) float32, premultiplied on black, and alphas
    (C, H, W) float32 = covered fraction of each pixel.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if vertex_colors is None:
        vertex_colors = np.full((len(vertices), 3), 0.8)
    vertex_colors = np.asarray(vertex_colors, dtype=np.float64)
    if vertex_colors.shape != vertices.shape:
        raise ValueError(
            f"vertex_colors must have shape {vertices.shape} (one RGB per vertex), "
            f"got {vertex_colors.shape}"
        )
    normals = vertex_normals(vertices, faces) if shade else None
    images, alphas = [], []
    for cam in cameras:
        frags = rasterize(vertices, faces, cam, supersample, cull_backfaces)
        col = interpolate(frags, faces, vertex_colors)
        if shade and len(col):
            n = interpolate(frags, faces, normals)
            n /= np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)
            pos = interpolate(frags, faces, vertices)
            view = cam.center - pos
            n *= np.where(np.einsum("nc,nc->n", n, view) < 0, -1.0, 1.0)[:, None]  # two-sided
            light = np.broadcast_to(np.asarray(DEFAULT_AMBIENT), col.shape).copy()
            for d, c in DEFAULT_LIGHTS:
                d = np.asarray(d) / np.linalg.norm(d)
                light += np.clip(n @ d, 0, None)[:, None] * np.asarray(c)
            col = col * light
        img, a = resolve(frags, np.clip(col, 0.0, 1.0).astype(np.float32))
        images.append(img)
        alphas.append(a)
    return np.stack(images).astype(np.float32), np.stack(alphas).astype(np.float32)


__all__ = [
    "Fragments",
    "interpolate",
    "project",
    "rasterize",
    "render_mesh",
    "resolve",
    "vertex_normals",
]
