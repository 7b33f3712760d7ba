"""Fit 3D Gaussians to one multi-view frame (3DGS, Kerbl et al. 2023) -- chapter 2.

The recipe is the original one: start from a point cloud, render random training
views, minimise ``(1 - lambda) L1 + lambda (1 - SSIM)`` with lambda = 0.2 (3DGS
Eq. 7) using Adam with one learning rate per parameter, and let adaptive density
control (:mod:`npga.splatting.densify`) add and remove Gaussians on the way.

Differences from 3DGS, all for a head captured on a black background:

* Without a point cloud we initialise inside the **visual hull** of the alpha masks
  (:func:`visual_hull_points`), sampled in a thin shell under its surface, and take
  colours from the images.
* Ground-truth images are premultiplied on black, so the background is black and
  the renders are compared to them directly.
* The position learning rate decays exponentially over the run's own length
  (3DGS: over 30k steps), so short CPU runs settle too.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from npga.capture.cameras import Camera, stack_cameras
from npga.config import StaticFitConfig
from npga.metrics import lpips, psnr, psnr_torch, ssim, ssim_torch
from npga.splatting.densify import (
    DensifyConfig,
    DensifyState,
    accumulate,
    densify_and_prune,
    reset_opacity,
)
from npga.splatting.gaussians import (
    GaussianParams,
    activate,
    check_params,
    init_from_points,
    num_gaussians,
)


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser settings; defaults are 3DGS's (``arguments/__init__.py``)."""

    lr_means: float = 1.6e-4  # times the scene extent
    lr_means_final: float = 1.6e-6  # times the scene extent, reached at the last step
    lr_quats: float = 1e-3
    lr_scales: float = 5e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    lr_features: float = 2.5e-3
    lambda_dssim: float = 0.2
    sh_degree: int = 3
    sh_degree_every: int = 1000  # raise the SH degree by one every this many steps
    cameras_per_step: int = 1
    # Initial scale = this x the mean distance to the 3 nearest points (3DGS: 1 x their
    # root-mean-square). Our
    # samples fill a shell volume rather than a surface, so neighbours overlap more;
    # half-size blobs fit the SynthHead frame better and make early steps cheaper.
    init_scale_factor: float = 0.5
    hull_shell: float = 0.1  # see visual_hull_points
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    backend: str = "auto"  # passed to npga.splatting.render.rasterize


@dataclass
class FitResult:
    """What :func:`fit_static` returns."""

    params: GaussianParams
    sh_degree: int  # the degree reached (use it to render)
    scene_extent: float
    history: dict[str, list]  # "step", "loss", "psnr" (training view), "n_gaussians"
    densify_log: list[dict]  # one entry per ADC round: step, clone, split, prune, ...
    wall_time: float  # seconds


# --------------------------------------------------------------------------- geometry


def sh_degree_at(step: int, opt: OptimConfig) -> int:
    """The SH degree in use at ``step``: 3DGS raises it by one every ``opt.sh_degree_every``
    steps, up to ``opt.sh_degree``."""
    return min(step // opt.sh_degree_every, opt.sh_degree)


def scene_extent(cameras: list[Camera]) -> float:
    """3DGS's scene radius: 1.1 x the largest distance of a camera centre from their mean."""
    centres = np.stack([c.center for c in cameras])
    return float(1.1 * np.linalg.norm(centres - centres.mean(0), axis=1).max())


def _axes_intersection(cameras: list[Camera]) -> np.ndarray:
    """The point closest (least squares) to all optical axes: what the rig looks at."""
    A, b = np.zeros((3, 3)), np.zeros(3)
    for c in cameras:
        d = c.R[2] / np.linalg.norm(c.R[2])  # camera z axis in world coordinates
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c.center
    return np.linalg.lstsq(A, b, rcond=None)[0]


def visual_hull_points(
    alphas: np.ndarray,
    cameras: list[Camera],
    n_points: int,
    *,
    threshold: float = 0.5,
    shell: float = 0.1,
    min_views: float = 0.5,
    seed: int = 0,
    max_rounds: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``n_points`` points (N, 3) inside the visual hull of the alpha masks.

    A point is in the hull when it projects to alpha > ``threshold`` in every camera
    whose image it falls into, and at least ``min_views`` of the cameras (a fraction;
    at least two) see it -- otherwise points beside the head, inside the field of view
    of only a few side cameras, would survive unchecked. Points deep inside
    the hull are never seen, so we keep only a shell under its surface: the depth of
    a point is estimated as the smallest, over cameras, distance from its pixel to
    the mask boundary, converted to metres at the point's depth; points deeper than
    ``shell`` x the hull's radius are rejected. Also returns, per point, the number
    of cameras that saw it (N,).
    """
    from scipy.ndimage import distance_transform_edt

    alphas = np.asarray(alphas, np.float32)
    if alphas.ndim == 4:
        alphas = alphas[..., 0]
    if alphas.shape[0] != len(cameras):
        raise ValueError(f"{alphas.shape[0]} alpha maps for {len(cameras)} cameras")
    masks = alphas > threshold
    if not masks.any():
        raise ValueError("alpha masks are empty: cannot carve a visual hull")
    inside_px = [distance_transform_edt(m) for m in masks]  # pixels to the boundary

    centre = _axes_intersection(cameras)
    # half-size of the sampling box: each mask's extent back-projected to the centre's depth
    radius = 0.0
    for cam, m in zip(cameras, masks):
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            continue
        uv, z = cam.project(centre[None])
        u0, v0 = uv[0]
        f = 0.5 * (cam.K[0, 0] + cam.K[1, 1])
        ext = max(abs(xs.min() - u0), abs(xs.max() + 1 - u0),
                  abs(ys.min() - v0), abs(ys.max() + 1 - v0))
        radius = max(radius, float(ext * z[0] / f))
    radius *= 1.1

    need = max(2, math.ceil(min_views * len(cameras)))
    rng = np.random.default_rng(seed)
    kept, seen_counts = [], []
    total = 0
    for _ in range(max_rounds):
        cand = centre + rng.uniform(-radius, radius, size=(max(4 * n_points, 4096), 3))
        ok = np.ones(len(cand), bool)
        seen = np.zeros(len(cand), np.int32)
        depth_in = np.full(len(cand), np.inf)
        for cam, m, d_px in zip(cameras, masks, inside_px):
            uv, z = cam.project(cand)
            px, py = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
            inside = (z > 0) & (px >= 0) & (py >= 0) & (px < cam.width) & (py < cam.height)
            idx = np.where(inside)[0]
            hit = m[py[idx], px[idx]]
            ok[idx[~hit]] = False
            seen[idx] += 1
            f = 0.5 * (cam.K[0, 0] + cam.K[1, 1])
            metres = d_px[py[idx], px[idx]] * z[idx] / f
            depth_in[idx] = np.minimum(depth_in[idx], metres)
        ok &= (seen >= need) & (depth_in <= shell * radius)
        kept.append(cand[ok])
        seen_counts.append(seen[ok])
        total += int(ok.sum())
        if total >= n_points:
            break
    pts = np.concatenate(kept)
    if len(pts) < n_points:
        raise RuntimeError(
            f"visual hull sampling found only {len(pts)} of {n_points} points in {max_rounds} "
            "rounds: are the cameras and alpha masks consistent?"
        )
    return pts[:n_points], np.concatenate(seen_counts)[:n_points]


def colours_from_images(
    points: np.ndarray, images: np.ndarray, cameras: list[Camera]
) -> np.ndarray:
    """Initial RGB (N, 3): the median image colour at each point's projections.

    Occlusion is ignored (a point on the back of the head takes colours from the
    front), which is good enough for a start: the fit corrects it within steps.
    """
    samples = np.full((len(cameras), len(points), 3), np.nan, np.float32)
    for i, cam in enumerate(cameras):
        uv, z = cam.project(points)
        px, py = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        inside = (z > 0) & (px >= 0) & (py >= 0) & (px < cam.width) & (py < cam.height)
        samples[i, inside] = images[i][py[inside], px[inside]]
    with warnings.catch_warnings():  # points no camera sees are all-NaN: grey below
        warnings.simplefilter("ignore", RuntimeWarning)
        rgb = np.nanmedian(samples, axis=0)
    return np.nan_to_num(rgb, nan=0.5).clip(0.0, 1.0)


# --------------------------------------------------------------------------- rendering


def render_static(
    params: GaussianParams,
    cameras: list[Camera],
    sh_degree: int,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, dict]:
    """Render Gaussians into cameras on black: colours (C, H, W, 3), alphas (C, H, W, 1), meta."""
    from npga.splatting.render import rasterize

    sizes = {(c.width, c.height) for c in cameras}
    if len(sizes) != 1:
        raise ValueError(f"cameras rendered together must share an image size, got {sorted(sizes)}")
    width, height = sizes.pop()
    device = params["means"].device
    viewmats, Ks = stack_cameras(cameras, device=device)
    a = activate(params)
    return rasterize(
        a["means"], a["quats"], a["scales"], a["opacities"], a["colors"], viewmats, Ks,
        width, height, sh_degree=sh_degree, backend=backend,
    )


# --------------------------------------------------------------------------- fitting


def _make_optimizers(params: GaussianParams, opt: OptimConfig, extent: float) -> dict:
    lrs = {
        "means": opt.lr_means * extent,
        "quats": opt.lr_quats,
        "scales": opt.lr_scales,
        "opacities": opt.lr_opacities,
        "sh0": opt.lr_sh0,
        "shN": opt.lr_shN,
        "features": opt.lr_features,
    }
    unknown = set(params) - set(lrs)
    if unknown:
        raise ValueError(f"no learning rate for parameters {sorted(unknown)}")
    # eps 1e-15 as 3DGS: gradients of tiny Gaussians are tiny but must still move them
    return {k: torch.optim.Adam([v], lr=lrs[k], eps=1e-15) for k, v in params.items()}


def _as_tensor_images(images, alphas, cameras) -> tuple[Tensor, Tensor]:
    imgs = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    alph = torch.as_tensor(np.asarray(alphas), dtype=torch.float32)
    if alph.dim() == 4:
        alph = alph[..., 0]
    C = len(cameras)
    if imgs.dim() != 4 or imgs.shape[0] != C or imgs.shape[-1] != 3:
        raise ValueError(f"images must be (C={C}, H, W, 3), got {tuple(imgs.shape)}")
    if tuple(alph.shape) != tuple(imgs.shape[:3]):
        raise ValueError(f"alphas must be {tuple(imgs.shape[:3])}, got {tuple(alph.shape)}")
    for i, cam in enumerate(cameras):
        if (cam.height, cam.width) != tuple(imgs.shape[1:3]):
            raise ValueError(
                f"camera {cam.serial} is {cam.width}x{cam.height} but image {i} is "
                f"{imgs.shape[2]}x{imgs.shape[1]}"
            )
    return imgs, alph


def fit_static(
    images,  # (C, H, W, 3) float in [0, 1], premultiplied on black
    alphas,  # (C, H, W) float in [0, 1]
    cameras: list[Camera],
    cfg: StaticFitConfig,
    *,
    init_points: np.ndarray | None = None,  # (N, 3); default: visual hull samples
    init_colors: np.ndarray | None = None,  # (N, 3); default: from the images
    densify: bool = True,
    seed: int = 0,
    progress: bool = True,
    opt: OptimConfig | None = None,
    device: str | torch.device = "cpu",
) -> FitResult:
    """Optimise Gaussians to reproduce ``images`` from ``cameras`` (3DGS's recipe).

    Each step renders ``opt.cameras_per_step`` random training cameras, takes one Adam
    step on ``(1 - lambda) L1 + lambda (1 - SSIM)``, and -- when ``densify`` -- feeds
    ADC, which runs every ``cfg.densify_every`` steps in
    [``cfg.densify_from``, ``cfg.densify_until``) and resets opacities every
    ``cfg.opacity_reset_every`` steps, growing to at most ``cfg.max_gaussians``.
    Raises FloatingPointError naming the step if the loss or a parameter turns NaN.
    """
    opt = opt or OptimConfig()
    imgs, alph = _as_tensor_images(images, alphas, cameras)
    imgs = imgs.to(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    extent = scene_extent(cameras)

    if init_points is None:
        init_points, _ = visual_hull_points(alph.numpy(), cameras, cfg.n_init_gaussians,
                                            shell=opt.hull_shell, seed=seed)
    if init_colors is None:
        init_colors = colours_from_images(np.asarray(init_points), imgs.cpu().numpy(), cameras)
    params = init_from_points(init_points, init_colors, sh_degree=opt.sh_degree, seed=seed,
                              scale_factor=opt.init_scale_factor, device=device)
    optimizers = _make_optimizers(params, opt, extent)
    dcfg = replace(opt.densify, max_gaussians=cfg.max_gaussians,
                   prune_big_from_step=cfg.opacity_reset_every)
    state = DensifyState.create(num_gaussians(params), extent, device)

    history: dict[str, list] = {"step": [], "loss": [], "psnr": [], "n_gaussians": []}
    log: list[dict] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, desc="static fit", leave=False)
    decay = math.log(opt.lr_means_final / opt.lr_means) / max(cfg.iterations - 1, 1)
    t0 = time.perf_counter()
    n_cams = min(opt.cameras_per_step, len(cameras))
    for step in range(cfg.iterations):
        optimizers["means"].param_groups[0]["lr"] = opt.lr_means * extent * math.exp(decay * step)
        degree = sh_degree_at(step, opt)
        ids = torch.randperm(len(cameras), generator=gen)[:n_cams].tolist()
        colors, _, meta = render_static(params, [cameras[i] for i in ids], degree, opt.backend)
        if densify:
            meta["means2d"].retain_grad()
        gt = imgs[ids]
        l1 = (colors - gt).abs().mean()
        loss = (1 - opt.lambda_dssim) * l1 + opt.lambda_dssim * (1 - ssim_torch(colors, gt).mean())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"static fit: loss is {loss.item()} at step {step}")
        for o in optimizers.values():
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in optimizers.values():
            o.step()

        if densify and step < cfg.densify_until:
            accumulate(state, meta)
            if step >= cfg.densify_from and (step + 1 - cfg.densify_from) % cfg.densify_every == 0:
                stats = densify_and_prune(params, optimizers, state, dcfg, step, generator=gen)
                log.append({"step": step, **stats})
            if step > 0 and (step + 1) % cfg.opacity_reset_every == 0:
                reset_opacity(params, optimizers, dcfg.reset_opacity_value)
                log.append({"step": step, "reset_opacity": True})

        with torch.no_grad():
            train_psnr = float(psnr_torch(colors.detach(), gt).mean())
        history["step"].append(step)
        history["loss"].append(float(loss.detach()))
        history["psnr"].append(train_psnr)
        history["n_gaussians"].append(num_gaussians(params))
        if bar is not None:
            bar.update(1)
            if step % 10 == 0 or step == cfg.iterations - 1:
                bar.set_postfix(loss=f"{float(loss):.4f}", psnr=f"{train_psnr:.2f}",
                                n=num_gaussians(params))
        if step % 50 == 0 or step == cfg.iterations - 1:
            try:
                check_params(params)
            except ValueError as err:
                raise FloatingPointError(f"static fit: {err} at step {step}") from None
    if bar is not None:
        bar.close()
    for v in params.values():
        v.requires_grad_(False)
    degree = sh_degree_at(cfg.iterations - 1, opt)
    return FitResult(params, degree, extent, history, log, time.perf_counter() - t0)


@torch.no_grad()
def evaluate_static(result: FitResult, images, alphas, cameras: list[Camera],
                    backend: str = "auto") -> dict:
    """Render ``cameras`` and compare with ``images``: PSNR, SSIM (full and masked), LPIPS.

    Masked scores use ``alphas > 0.5`` as the mask. LPIPS is ``None`` when its weights
    are not on disk. Also returns the renders, (C, H, W, 3) numpy, under ``"renders"``.
    """
    imgs, alph = _as_tensor_images(images, alphas, cameras)
    renders = []
    for cam in cameras:  # one at a time: memory stays flat for many cameras
        colors, _, _ = render_static(result.params, [cam], result.sh_degree, backend)
        renders.append(colors[0].clamp(0, 1).cpu())
    out = torch.stack(renders)
    mask = (alph > 0.5).float()
    return {
        "psnr": psnr(out, imgs),
        "ssim": ssim(out, imgs),
        "psnr_masked": psnr(out, imgs, mask),
        "ssim_masked": ssim(out, imgs, mask),
        "lpips": lpips(out, imgs),
        "renders": out.numpy(),
    }


__all__ = [
    "FitResult",
    "OptimConfig",
    "colours_from_images",
    "evaluate_static",
    "fit_static",
    "render_static",
    "scene_extent",
    "sh_degree_at",
    "visual_hull_points",
]
