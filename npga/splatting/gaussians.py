"""Gaussian parameters: storage, activations, initialisation and the 3DGS PLY file.

A set of N 3D Gaussians (Kerbl et al. 2023, "3D Gaussian Splatting", Sec. 4) is a
plain ``dict`` of ``torch.nn.Parameter``s, keyed as gsplat's strategies expect so
that the same dict can be handed to either backend and to :mod:`npga.splatting.densify`:

==============  ============  ==========================================================
key             shape         stored as
==============  ============  ==========================================================
``means``       (N, 3)        centres in metres
``quats``       (N, 4)        rotation quaternion w, x, y, z, *unnormalised*
``scales``      (N, 3)        log of the standard deviations along the local axes
``opacities``   (N,)          logit of the opacity
``sh0``         (N, 1, 3)     degree-0 spherical-harmonic colour coefficient
``shN``         (N, K-1, 3)   higher SH coefficients, K = (degree + 1)^2 (absent for 0)
``features``    (N, F)        optional per-Gaussian latent feature (NPGA, Sec. 4.2)
==============  ============  ==========================================================

Storing unconstrained values (logs, logits, unnormalised quaternions) lets Adam move
them freely; :func:`activate` maps them to what the rasterizer needs.

The colour convention is gsplat's and the original 3DGS code's: the SH expansion is
evaluated in the direction from the camera centre to the Gaussian, 0.5 is added and
negative values are clamped to 0 (:func:`colors_at_view`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from npga.io import atomic_write

GaussianParams = dict  # dict[str, torch.nn.Parameter]; see the module docstring

# Real spherical-harmonic normalisation constants (degree 0..3), the ones every
# 3DGS implementation uses (Sloan, "Stupid SH tricks", 2008).
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
MAX_SH_DEGREE = 3


def num_sh_bases(degree: int) -> int:
    """K = (degree + 1)^2 coefficients per colour channel."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    return (degree + 1) ** 2


def sh_degree_of(params: GaussianParams) -> int:
    """The SH degree stored in ``params`` (from the shape of ``shN``)."""
    k = 1 + (params["shN"].shape[1] if "shN" in params else 0)
    degree = int(round(math.sqrt(k))) - 1
    if (degree + 1) ** 2 != k:
        raise ValueError(f"shN holds {k - 1} coefficients: not (degree + 1)^2 - 1 for any degree")
    return degree


# --------------------------------------------------------------------------- activations


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) from wxyz quaternions (..., 4), normalised here."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(quats.shape[:-1] + (3, 3))


def covariance(quats: Tensor, log_scales: Tensor) -> Tensor:
    """World-space covariances Sigma = R S S^T R^T (3DGS Eq. 6), shape (N, 3, 3).

    ``quats`` (N, 4) wxyz unnormalised, ``log_scales`` (N, 3). Building Sigma from a
    rotation and a diagonal scale keeps it symmetric positive semi-definite whatever
    the optimiser does to the raw numbers.
    """
    M = quat_to_rotmat(quats) * torch.exp(log_scales)[..., None, :]  # R S
    return M @ M.transpose(-1, -2)


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Real SH basis functions (..., K) at unit directions ``dirs`` (..., 3).

    Ordering and signs follow the original 3DGS CUDA code (and gsplat), so that
    coefficients can be exchanged with PLY files written by either.
    """
    K = num_sh_bases(degree)
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3 * yy),
        ]
    basis = torch.stack(out, dim=-1)
    assert basis.shape[-1] == K
    return basis


def eval_sh(coeffs: Tensor, dirs: Tensor, degree: int) -> Tensor:
    """Evaluate SH colour (..., 3) from coefficients (..., K', 3) in directions (..., 3).

    Only the first (degree + 1)^2 coefficients are used (K' may be larger), which is
    how 3DGS raises the degree progressively during training. ``dirs`` need not be unit.
    """
    K = num_sh_bases(degree)
    if coeffs.shape[-2] < K:
        raise ValueError(f"degree {degree} needs {K} SH coefficients, got {coeffs.shape[-2]}")
    d = torch.nn.functional.normalize(dirs, dim=-1)
    return (sh_basis(d, degree)[..., None] * coeffs[..., :K, :]).sum(dim=-2)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """The degree-0 coefficient that renders as ``rgb`` (inverse of :func:`sh0_to_rgb`)."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    return sh0 * SH_C0 + 0.5


def sh_coeffs(params: GaussianParams) -> Tensor:
    """All SH coefficients (N, K, 3): ``sh0`` and ``shN`` concatenated."""
    if "shN" in params and params["shN"].shape[1] > 0:
        return torch.cat([params["sh0"], params["shN"]], dim=1)
    return params["sh0"]


def colors_at_view(params: GaussianParams, cam_center: Tensor, degree: int | None = None) -> Tensor:
    """RGB (N, 3) of each Gaussian seen from a camera centre (3,), gsplat's convention.

    colour = max(SH(d) + 0.5, 0) with d the direction from the camera to the Gaussian.
    """
    degree = sh_degree_of(params) if degree is None else degree
    dirs = params["means"] - cam_center.to(params["means"])
    return torch.clamp_min(eval_sh(sh_coeffs(params), dirs, degree) + 0.5, 0.0)


def activate(params: GaussianParams) -> dict[str, Tensor]:
    """What a rasterizer takes: normalised quats, scales = exp, opacities = sigmoid.

    Returns ``means`` (N, 3), ``quats`` (N, 4) unit, ``scales`` (N, 3), ``opacities``
    (N,) and ``colors`` (N, K, 3) SH coefficients (pass ``sh_degree`` to the renderer).
    """
    return {
        "means": params["means"],
        "quats": torch.nn.functional.normalize(params["quats"], dim=-1),
        "scales": torch.exp(params["scales"]),
        "opacities": torch.sigmoid(params["opacities"]),
        "colors": sh_coeffs(params),
    }


# --------------------------------------------------------------------------- initialisation


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def knn_mean_distance(points: np.ndarray | Tensor, k: int = 3) -> np.ndarray:
    """Mean distance (N,) from each point to its ``k`` nearest other points.

    Scales start from this distance so that neighbouring Gaussians just overlap (3DGS
    uses the root-mean-square of the three distances instead of their mean; for points
    of a surface the two differ little). Coincident points get a tiny positive floor.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(_numpy(points), np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    if len(pts) < 2:
        raise ValueError(f"need at least 2 points for k-NN scales, got {len(pts)}")
    kk = min(k, len(pts) - 1)
    dist, _ = cKDTree(pts).query(pts, k=kk + 1)  # column 0 is the point itself
    return np.maximum(dist[:, 1:].mean(axis=1), 1e-7)


def init_from_points(
    points: np.ndarray | Tensor,
    colors: np.ndarray | Tensor | None = None,
    *,
    sh_degree: int = 3,
    feature_dim: int = 0,
    init_opacity: float = 0.1,
    random_quats: bool = False,
    scale_factor: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> GaussianParams:
    """Gaussians (one per point) ready to optimise, as 3DGS initialises them.

    points (N, 3); colors (N, 3) RGB in [0, 1] or None for mid grey. Scales are
    isotropic: ``scale_factor`` times the mean distance to the 3 nearest neighbours
    (stored as its log); opacity ``init_opacity`` (stored as its logit); rotations
    identity, or uniformly random when ``random_quats``; higher SH zero; features
    drawn from N(0, 0.01^2) when ``feature_dim`` > 0 (small, so they start neutral).
    """
    pts = torch.as_tensor(_numpy(points), dtype=torch.float32)
    n = pts.shape[0]
    if colors is None:
        rgb = torch.full((n, 3), 0.5)
    else:
        rgb = torch.as_tensor(_numpy(colors), dtype=torch.float32)
        if rgb.shape != (n, 3):
            raise ValueError(
                f"colors must have shape ({n}, 3) like the points, got {tuple(rgb.shape)}"
            )
    if not 0.0 < init_opacity < 1.0:
        raise ValueError(f"init_opacity must be in (0, 1), got {init_opacity}")
    gen = torch.Generator().manual_seed(seed)
    dist = torch.as_tensor(knn_mean_distance(pts, 3), dtype=torch.float32) * scale_factor
    if random_quats:
        quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1)
    else:
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
    K = num_sh_bases(sh_degree)
    tensors = {
        "means": pts,
        "quats": quats,
        "scales": torch.log(dist)[:, None].repeat(1, 3),
        "opacities": torch.full((n,), math.log(init_opacity / (1.0 - init_opacity))),
        "sh0": rgb_to_sh0(rgb)[:, None, :],
        "shN": torch.zeros(n, K - 1, 3),
    }
    if feature_dim > 0:
        tensors["features"] = 0.01 * torch.randn(n, feature_dim, generator=gen)
    return {k: torch.nn.Parameter(v.to(device)) for k, v in tensors.items()}


def num_gaussians(params: GaussianParams) -> int:
    return int(params["means"].shape[0])


def check_params(params: GaussianParams) -> None:
    """Raise ValueError naming the first key with a wrong shape or a non-finite value."""
    n = num_gaussians(params)
    expected = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,)}
    for key, shape in expected.items():
        if key not in params:
            raise ValueError(f"Gaussian parameters lack {key!r}")
        if tuple(params[key].shape) != shape:
            got = tuple(params[key].shape)
            raise ValueError(f"params[{key!r}] has shape {got}, expected {shape}")
    for key, value in params.items():
        if value.shape[0] != n:
            raise ValueError(
                f"params[{key!r}] has {value.shape[0]} rows but there are {n} Gaussians"
            )
        if not torch.isfinite(value).all():
            raise ValueError(f"params[{key!r}] contains NaN or Inf")


# --------------------------------------------------------------------------- PLY


def _ply_columns(n_rest: int, feature_dim: int) -> list[str]:
    # The order the original 3DGS writes and web/desktop viewers read.
    cols = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    cols += [f"f_rest_{i}" for i in range(n_rest)]
    cols += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    cols += [f"feat_{i}" for i in range(feature_dim)]  # ours; viewers ignore extra columns
    return cols


def save_ply(path: str | os.PathLike, params: GaussianParams) -> None:
    """Write Gaussians in the standard 3DGS PLY layout (binary little endian), atomically.

    Values are stored raw, as 3DGS does: log-scales, opacity logits, unnormalised
    wxyz quaternions, normals zero. ``f_rest_*`` is channel-major (all R coefficients,
    then G, then B). Per-Gaussian ``features`` go into extra ``feat_*`` columns.
    """
    from plyfile import PlyData, PlyElement

    check_params(params)
    n = num_gaussians(params)
    get = lambda key: params[key].detach().cpu().to(torch.float32).numpy()  # noqa: E731
    shN = get("shN") if "shN" in params else np.zeros((n, 0, 3), np.float32)
    f_rest = shN.transpose(0, 2, 1).reshape(n, -1)  # (N, 3, K-1) -> channel-major
    feats = get("features") if "features" in params else np.zeros((n, 0), np.float32)
    data = np.concatenate(
        [
            get("means"),
            np.zeros((n, 3), np.float32),
            get("sh0").reshape(n, 3),
            f_rest,
            get("opacities")[:, None],
            get("scales"),
            get("quats"),
            feats,
        ],
        axis=1,
    )
    cols = _ply_columns(f_rest.shape[1], feats.shape[1])
    records = np.empty(n, dtype=[(c, "<f4") for c in cols])
    for i, c in enumerate(cols):
        records[c] = data[:, i]
    with atomic_write(path, "wb") as f:
        PlyData([PlyElement.describe(records, "vertex")], text=False).write(f)


def load_ply(path: str | os.PathLike, device: str | torch.device = "cpu") -> GaussianParams:
    """Read a 3DGS PLY (ours or any 3DGS-compatible writer's) into Gaussian parameters."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    try:
        ply = PlyData.read(str(path))
        v = ply["vertex"]
    except Exception as err:  # plyfile raises several types for bad files
        raise ValueError(f"{path}: not a readable PLY with a 'vertex' element ({err})") from None
    names = set(v.data.dtype.names)
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    required += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(f"{path}: not a 3DGS PLY, missing properties {missing}")

    def cols(prefix: str) -> np.ndarray:
        keys = [c for c in names if c.startswith(prefix)]
        keys.sort(key=lambda c: int(c[len(prefix):]))
        return np.stack([np.asarray(v[c], np.float32) for c in keys], axis=1) if keys else None

    n = len(v.data)
    n_rest = len([c for c in names if c.startswith("f_rest_")])
    if n_rest % 3:
        raise ValueError(f"{path}: {n_rest} f_rest_* properties is not a multiple of 3")
    k1 = n_rest // 3
    if int(round(math.sqrt(k1 + 1))) ** 2 != k1 + 1:
        raise ValueError(f"{path}: {k1} SH coefficients per channel is not (degree + 1)^2 - 1")
    f_rest = cols("f_rest_") if n_rest else np.zeros((n, 0), np.float32)
    tensors = {
        "means": np.stack([np.asarray(v[c], np.float32) for c in "xyz"], axis=1),
        "quats": cols("rot_"),
        "scales": cols("scale_"),
        "opacities": np.asarray(v["opacity"], np.float32),
        "sh0": cols("f_dc_")[:, None, :],
        "shN": f_rest.reshape(n, 3, k1).transpose(0, 2, 1),
    }
    feats = cols("feat_")
    if feats is not None:
        tensors["features"] = feats
    return {
        k: torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(a)).to(device))
        for k, a in tensors.items()
    }


__all__ = [
    "GaussianParams",
    "MAX_SH_DEGREE",
    "activate",
    "check_params",
    "colors_at_view",
    "covariance",
    "eval_sh",
    "init_from_points",
    "knn_mean_distance",
    "load_ply",
    "num_gaussians",
    "num_sh_bases",
    "quat_to_rotmat",
    "rgb_to_sh0",
    "save_ply",
    "sh0_to_rgb",
    "sh_basis",
    "sh_coeffs",
    "sh_degree_of",
]
