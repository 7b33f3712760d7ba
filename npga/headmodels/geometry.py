"""Triangle-mesh geometry shared by the head models: closest points, surface samples,
the *outer* surface of a multi-part mesh, signed distances, Chamfer distances and
marching cubes.

Why an "outer surface": SynthHead (like a registered FLAME or NPHM scan) is a
multi-part mesh -- skin, eyeballs, eyelids, teeth, tongue, mouth cavity, hair -- that
is neither watertight nor free of interior parts, and its parts do not quite meet (the
mouth cavity's rim stands millimetres off the lips). A signed distance needs an inside
and an outside, so we define the solid the way a 3D scanner sees the head:

* close the open bottom (the neck is a tube cut below the chin) with a cap;
* look at the mesh from many directions (virtual depth cameras on a sphere, rendered
  with SynthHead's own rasterizer);
* a triangle is on the *outer surface* when some view sees it, and its *orientation*
  is the side that view saw; a point is *exterior* when some view's ray reaches it
  before the surface does.

The signed distance of a point is its distance to the nearest outer triangle,
negative inside the solid. Near the surface (within a band of a few pixel sizes) the
sign comes from the oriented normal of the closest triangle, which is exact there;
farther away from the depth views, which are exact there. An open mouth's cavity is
seen (outside), a closed one is not (inside): what a scanner sees. Flood-filling a
voxel grid instead leaks through the gaps between parts and makes the whole head
interior "outside".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

# --------------------------------------------------------------------------- basics


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (F, 3) and areas (F,) of the triangles (right-hand rule)."""
    v = vertices[faces]
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    length = np.linalg.norm(n, axis=1)
    return n / np.maximum(length, 1e-20)[:, None], 0.5 * length


def closest_point_on_triangles(
    p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Closest point to ``p`` on triangle ``(a, b, c)``, row by row.

    All inputs (N, 3); returns the points (N, 3) and their barycentric weights (N, 3).
    Voronoi-region test of Ericson, *Real-Time Collision Detection*, sec. 5.1.5,
    vectorised: each region's formula is evaluated for every row and the first
    region that applies wins.
    """
    ab, ac, ap = b - a, c - a, p - a
    d1 = np.einsum("ij,ij->i", ab, ap)
    d2 = np.einsum("ij,ij->i", ac, ap)
    bp = p - b
    d3 = np.einsum("ij,ij->i", ab, bp)
    d4 = np.einsum("ij,ij->i", ac, bp)
    cp = p - c
    d5 = np.einsum("ij,ij->i", ab, cp)
    d6 = np.einsum("ij,ij->i", ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2

    def safe(num, den):
        return num / np.where(np.abs(den) < 1e-30, 1e-30, den)

    # interior first; every later assignment overrides, so the order below is the
    # reverse of the precedence (vertex regions win over edges, edges over the face)
    denom = va + vb + vc
    v = safe(vb, denom)
    w = safe(vc, denom)
    bary = np.stack([1.0 - v - w, v, w], axis=1)

    def put(mask, values):
        bary[mask] = values[mask]

    t = np.clip(safe(d4 - d3, (d4 - d3) + (d5 - d6)), 0.0, 1.0)
    put((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), np.stack([0 * t, 1 - t, t], 1))
    t = np.clip(safe(d2, d2 - d6), 0.0, 1.0)
    put((vb <= 0) & (d2 >= 0) & (d6 <= 0), np.stack([1 - t, 0 * t, t], 1))
    t = np.clip(safe(d1, d1 - d3), 0.0, 1.0)
    put((vc <= 0) & (d1 >= 0) & (d3 <= 0), np.stack([1 - t, t, 0 * t], 1))
    one = np.ones_like(d1)
    zero = np.zeros_like(d1)
    put((d6 >= 0) & (d5 <= d6), np.stack([zero, zero, one], 1))
    put((d3 >= 0) & (d4 <= d3), np.stack([zero, one, zero], 1))
    put((d1 <= 0) & (d2 <= 0), np.stack([one, zero, zero], 1))
    closest = bary[:, :1] * a + bary[:, 1:2] * b + bary[:, 2:] * c
    return closest, bary


@dataclass
class ClosestPoints:
    """Result of :func:`closest_points_on_mesh` (all rows match the query points)."""

    distance: np.ndarray  # (N,)
    face: np.ndarray  # (N,) int index into the faces searched
    bary: np.ndarray  # (N, 3)
    point: np.ndarray  # (N, 3)


def closest_points_on_mesh(
    points: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    k: int = 12,
    chunk: int = 65536,
    tree: cKDTree | None = None,
) -> ClosestPoints:
    """Closest point on the mesh for every query point (N, 3).

    Candidate triangles are the ``k`` whose centroids are nearest (a KD-tree), and the
    exact point-triangle distance picks among them. Exact for meshes whose triangles
    are small compared with their spacing to other parts (true for SynthHead); ``k``
    trades speed for safety on irregular meshes. ``face`` indexes ``faces``. ``tree``:
    a prebuilt KD-tree of the triangle centroids, for many queries on one mesh.
    """
    points = np.asarray(points, np.float64)
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    if len(faces) == 0:
        raise ValueError("closest_points_on_mesh: the mesh has no faces")
    tri = vertices[faces]
    if tree is None:
        tree = cKDTree(tri.mean(axis=1))
    k = min(k, len(faces))
    out_d, out_f, out_b, out_p = [], [], [], []
    for start in range(0, len(points), chunk):
        p = points[start : start + chunk]
        _, cand = tree.query(p, k=k)
        cand = cand.reshape(len(p), k)
        pr = np.repeat(p, k, axis=0)
        t = tri[cand.reshape(-1)]
        cp, bary = closest_point_on_triangles(pr, t[:, 0], t[:, 1], t[:, 2])
        d = np.linalg.norm(cp - pr, axis=1).reshape(len(p), k)
        best = d.argmin(axis=1)
        rows = np.arange(len(p))
        out_d.append(d[rows, best])
        out_f.append(cand[rows, best])
        out_b.append(bary.reshape(len(p), k, 3)[rows, best])
        out_p.append(cp.reshape(len(p), k, 3)[rows, best])
    return ClosestPoints(
        np.concatenate(out_d), np.concatenate(out_f), np.concatenate(out_b), np.concatenate(out_p)
    )


def sample_surface(
    vertices: np.ndarray,
    faces: np.ndarray,
    n: int,
    rng: np.random.Generator,
    face_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` points uniformly by area on the mesh (optionally only where ``face_weights`` > 0).

    Returns points (n, 3), their faces (n,) and barycentric weights (n, 3); the same
    (face, bary) pairs give corresponding points on any mesh with the same topology.
    """
    _, area = face_normals(vertices, faces)
    w = area if face_weights is None else area * np.asarray(face_weights, np.float64)
    if w.sum() <= 0:
        raise ValueError("sample_surface: no face has positive (weighted) area")
    face = rng.choice(len(faces), size=n, p=w / w.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)
    points = np.einsum("nk,nkd->nd", bary, vertices[faces[face]])
    return points, face, bary


# --------------------------------------------------------------------------- outer surface


@dataclass
class DepthView:
    """One virtual scanner view: a camera and its depth map (+inf where empty)."""

    camera: object  # npga.capture.cameras.Camera
    depth: np.ndarray  # (H, W)


@dataclass
class OuterSurface:
    """The scanner's view of a multi-part mesh: oriented outer faces and depth views.

    Build with :func:`outer_surface`; query with :meth:`sdf` and :meth:`is_exterior`.
    """

    vertices: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3)
    orientation: np.ndarray  # (F,) +1 seen on the normal's side, -1 opposite, 2 both, 0 never seen
    views: list  # [DepthView]
    band: float  # metres: closer than this to the surface, the sign comes from the normal

    @property
    def outer_faces(self) -> np.ndarray:
        """Indices of the faces some view sees."""
        return np.flatnonzero(self.orientation != 0)

    def is_exterior(self, points: np.ndarray) -> np.ndarray:
        """True where some view's ray reaches the point before the surface does."""
        points = np.asarray(points, np.float64)
        out = np.zeros(len(points), bool)
        for view in self.views:
            cam = view.camera
            uv, z = cam.project(points)
            H, W = view.depth.shape
            ix = np.floor(uv[:, 0]).astype(np.int64)
            iy = np.floor(uv[:, 1]).astype(np.int64)
            inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H) & (z > 0)
            d = np.full(len(points), np.inf)
            d[inside] = view.depth[iy[inside], ix[inside]]
            out |= ~inside | (z < d - self.band)
        return out

    def sdf(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (N,) to the outer surface, negative inside the solid."""
        points = np.asarray(points, np.float64)
        outer = self.outer_faces
        cp = closest_points_on_mesh(points, self.vertices, self.faces[outer])
        normals, _ = face_normals(self.vertices, self.faces[outer])
        orient = self.orientation[outer][cp.face]
        side = np.einsum("ij,ij->i", points - cp.point, normals[cp.face])
        near_sign = np.where(orient == 2, 1.0, np.sign(side * np.where(orient == 2, 1, orient)))
        near_sign[near_sign == 0] = 1.0
        far = cp.distance >= 2.0 * self.band
        sign = near_sign.copy()
        if far.any():
            sign[far] = np.where(self.is_exterior(points[far]), 1.0, -1.0)
        return sign * cp.distance

    def sample_outer(
        self, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``n`` area-uniform samples on the outer faces: points, outward normals, faces, bary."""
        weights = (self.orientation != 0).astype(np.float64)
        points, face, bary = sample_surface(self.vertices, self.faces, n, rng, weights)
        normals, _ = face_normals(self.vertices, self.faces)
        o = self.orientation[face]
        normals = normals[face] * np.where(o == -1, -1.0, 1.0)[:, None]
        return points, normals, face, bary


def sphere_directions(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors (a Fibonacci sphere), (n, 3)."""
    i = np.arange(n) + 0.5
    y = 1.0 - 2.0 * i / n
    r = np.sqrt(np.clip(1.0 - y * y, 0.0, 1.0))
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), y, r * np.sin(phi)], axis=1)


def outer_surface(
    vertices: np.ndarray, faces: np.ndarray, voxel: float = 0.002, n_views: int = 60,
    cap_height: float = 0.015,
) -> OuterSurface:
    """What a 3D scanner would see of a (multi-part, possibly open) mesh; see the module doc.

    ``n_views`` virtual depth cameras on a sphere around the mesh; ``voxel`` (metres)
    is their pixel size and the width of the band around the surface in which signs
    come from the oriented normals. An open bottom (the neck cut) is closed by a cap
    first (see :func:`bottom_cap`), so no view looks into the neck.
    """
    from npga.capture.cameras import Camera, look_at
    from npga.capture.synthetic.meshrender import rasterize

    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"outer_surface: vertices must be (V, 3), got {vertices.shape}")
    cap_v, cap_f = bottom_cap(vertices, faces, cap_height)
    all_v = np.concatenate([vertices, cap_v])
    all_f = np.concatenate([faces, cap_f]) if len(cap_f) else faces
    lo, hi = vertices.min(0), vertices.max(0)
    centre = 0.5 * (lo + hi)
    radius = 0.5 * float(np.linalg.norm(hi - lo)) * 1.05
    distance = 4.0 * radius
    res = int(np.ceil(2.0 * radius / voxel))
    # the image plane at the centre's depth spans 2 radius: focal = res * distance / (2 radius)
    f = res * distance / (2.0 * radius)
    K = np.array([[f, 0.0, res / 2.0], [0.0, f, res / 2.0], [0.0, 0.0, 1.0]])
    normals, _ = face_normals(vertices, faces)
    seen_front = np.zeros(len(faces), bool)
    seen_back = np.zeros(len(faces), bool)
    views = []
    for k, d in enumerate(sphere_directions(n_views)):
        eye = centre + distance * d
        up = (0.0, 0.0, 1.0) if abs(d[1]) > 0.99 else (0.0, 1.0, 0.0)
        cam = Camera(f"scan{k}", look_at(eye, centre, up), K, res, res)
        frags = rasterize(all_v, all_f, cam)
        views.append(DepthView(cam, frags.depth_map()))
        hit = np.unique(frags.face[frags.face < len(faces)])
        towards = np.einsum("ij,ij->i", normals[hit], eye - vertices[faces[hit, 0]]) > 0
        seen_front[hit[towards]] = True
        seen_back[hit[~towards]] = True
    orientation = np.where(seen_front & seen_back, 2, np.where(seen_front, 1, np.where(seen_back, -1, 0)))
    orientation = _fill_slivers(vertices, faces, normals, orientation)
    # the band must exceed the depth error of a pixel-sized sample on a slanted surface
    return OuterSurface(vertices, faces, orientation, views, band=1.5 * voxel)


def _fill_slivers(vertices, faces, normals, orientation):
    """Faces too small for any view's pixels, with every vertex on seen faces, join them.

    Their orientation follows the oriented normals of the seen faces around them.
    """
    seen = orientation != 0
    oriented = normals * np.where(orientation == -1, -1.0, 1.0)[:, None] * seen[:, None]
    vn = np.zeros_like(vertices)
    np.add.at(vn, faces.reshape(-1), np.repeat(oriented, 3, axis=0))
    on_seen = np.zeros(len(vertices), bool)
    on_seen[faces[seen].reshape(-1)] = True
    fill = ~seen & on_seen[faces].all(axis=1)
    agree = np.einsum("ij,ij->i", normals[fill], vn[faces[fill]].sum(axis=1))
    out = orientation.copy()
    out[fill] = np.where(agree >= 0, 1, -1)
    return out


def boundary_vertices(faces: np.ndarray) -> np.ndarray:
    """Indices of vertices on an edge used by exactly one face (the mesh's open borders)."""
    return np.unique(boundary_edges(faces))


def boundary_edges(faces: np.ndarray) -> np.ndarray:
    """Edges (E, 2) used by exactly one face."""
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(e, axis=0, return_counts=True)
    return uniq[counts == 1]


def bottom_cap(vertices: np.ndarray, faces: np.ndarray, cap_height: float = 0.015) -> tuple[np.ndarray, np.ndarray]:
    """A triangle fan (one new vertex (1, 3); faces (k, 3) that call it index ``V``) that
    closes the mesh's lowest open border -- the neck cut; empty arrays when there is none.

    Border edges with both ends within ``cap_height`` of the lowest vertex form the cut.
    """
    edges = boundary_edges(faces)
    if len(edges) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    y0 = vertices[:, 1].min() + cap_height
    low = edges[np.all(vertices[edges, 1] <= y0, axis=1)]
    if len(low) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    centre = vertices[np.unique(low)].mean(0, keepdims=True)
    fan = np.stack([low[:, 0], low[:, 1], np.full(len(low), len(vertices))], axis=1)
    return centre, fan.astype(np.int64)


# --------------------------------------------------------------------------- comparisons


def point_to_mesh(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Distance (N,) of each point to the mesh."""
    return closest_points_on_mesh(points, vertices, faces).distance


def chamfer(
    points_a: np.ndarray, verts_a: np.ndarray, faces_a: np.ndarray,
    points_b: np.ndarray, verts_b: np.ndarray, faces_b: np.ndarray,
) -> tuple[float, float]:
    """Symmetric Chamfer distance between two surfaces, given samples on each.

    Returns (mean of the two one-sided mean distances, its A->B part). Samples of A are
    measured against B's triangles and vice versa (point-to-surface, not
    point-to-point, so the sample density does not bias it).
    """
    ab = point_to_mesh(points_a, verts_b, faces_b).mean()
    ba = point_to_mesh(points_b, verts_a, faces_a).mean()
    return float(0.5 * (ab + ba)), float(ab)


def marching_cubes(
    fn, lo: np.ndarray, hi: np.ndarray, resolution: int, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Zero level set of ``fn`` (points (N, 3) numpy -> values (N,)) in the box [lo, hi].

    Returns vertices (V, 3) in world units and faces (F, 3), oriented so that normals
    point to positive values (outwards for an SDF). Empty arrays when the box holds
    no zero crossing.
    """
    from skimage import measure

    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    axes = [np.linspace(lo[i], hi[i], resolution) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    values = np.concatenate([np.asarray(fn(grid[s : s + chunk])) for s in range(0, len(grid), chunk)])
    values = values.reshape(resolution, resolution, resolution)
    if not (values.min() < 0 < values.max()):
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    spacing = tuple((hi - lo) / (resolution - 1))
    verts, faces, _, _ = measure.marching_cubes(values, level=0.0, spacing=spacing)
    # skimage's default winding (gradient "descent") gives normals towards larger values
    return verts + lo, faces.astype(np.int64)


__all__ = [
    "ClosestPoints",
    "OuterSurface",
    "chamfer",
    "closest_point_on_triangles",
    "closest_points_on_mesh",
    "face_normals",
    "marching_cubes",
    "outer_surface",
    "point_to_mesh",
    "sample_surface",
]
