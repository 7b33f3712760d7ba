"""Differentiable Gaussian rasterization: one entry point, three backends.

:func:`rasterize` takes the arguments of gsplat 1.5.3's ``gsplat.rasterization`` (the
subset NPGA needs, non-packed mode) and returns the same outputs, so every caller in
the book works unchanged on a laptop CPU and on a CUDA GPU:

* ``backend="torch"`` -- :mod:`npga.splatting.render_torch`, pure PyTorch, any device: the
  readable reference. Same math as gsplat (EWA projection, opacity-aware boxes,
  alpha >= 1/255, T > 1e-4 rules).
* ``backend="numba"`` -- :mod:`npga.splatting.project_numba` (the same projection in a
  compiled kernel; the torch one when the cameras require gradients) and
  :mod:`npga.splatting.render_numba` (compositing in compiled tile kernels, 3DGS's tiled
  rasterizer on the CPU); CPU tensors only,
  float32/float64, deterministic for any thread count. Its kernels compile on first
  use (seconds) and are cached on disk afterwards.
* ``backend="auto"`` -- gsplat for CUDA tensors when it imports (torch otherwise);
  numba for float32/float64 CPU tensors when numba imports (torch otherwise).

gsplat is never touched for CPU tensors: on these machines a gsplat CUDA op called
with CPU tensors starts a multi-minute JIT compile and then fails.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from npga.splatting import render_torch
from npga.splatting.render_torch import project_gaussians

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
BACKENDS = ("auto", "torch", "numba", "gsplat")


def rasterize(
    means: Tensor,  # (N, 3) centres, world space
    quats: Tensor,  # (N, 4) wxyz, unnormalised
    scales: Tensor,  # (N, 3) standard deviations (activated, not log)
    opacities: Tensor,  # (N,) in [0, 1] (activated)
    colors: Tensor,  # (N, D) or (C, N, D); or SH coefficients (N, K, 3) / (C, N, K, 3)
    viewmats: Tensor,  # (C, 4, 4) world-to-camera, OpenCV axes
    Ks: Tensor,  # (C, 3, 3) intrinsics in pixels
    width: int,
    height: int,
    *,
    backgrounds: Tensor | None = None,  # (C, D)
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    render_mode: str = "RGB",
    sh_degree: int | None = None,
    backend: str = "auto",
    tile_size: int = 16,
    absgrad: bool = False,
) -> tuple[Tensor, Tensor, dict]:
    """Render N 3D Gaussians into C cameras (3DGS, Kerbl et al. 2023, Eq. 3 and 5).

    Returns ``(render_colors, render_alphas, meta)``:

    * ``render_colors`` (C, H, W, X): X = D for "RGB", 1 for "D"/"ED", D + 1 for
      "RGB+D"/"RGB+ED" (depth last). "D" is the alpha-weighted sum of z-depths, "ED"
      that sum divided by the alpha (expected depth). With ``sh_degree`` set, ``colors``
      are SH coefficients and D = 3 (colour = max(SH(dir) + 0.5, 0), gsplat's rule).
    * ``render_alphas`` (C, H, W, 1): accumulated opacity 1 - T_final.
    * ``meta``: gsplat's non-packed info -- ``means2d`` (C, N, 2) (its ``.grad`` after
      backward is the screen-space positional gradient used for densification; call
      ``meta["means2d"].retain_grad()`` before backward, and with ``absgrad=True``
      ``meta["means2d"].absgrad`` is filled too), ``radii`` (C, N, 2) int32 (0 =
      culled), ``depths`` (C, N), ``conics`` (C, N, 3), ``opacities`` (C, N),
      ``width``, ``height``, ``n_cameras``, ``tile_size``, ``tile_width``,
      ``tile_height``, ``gaussian_ids``/``camera_ids`` (None: not packed).

    ``meta["backend"]`` names the backend that ran ("torch", "numba" or "gsplat"; see
    the module docstring for what "auto" picks).

    ``tile_size`` only matters to the gsplat backend (and is reported in ``meta``; the
    numba backend always uses 16 x 16 tiles internally). Backgrounds receive gradients
    if they require them.
    """
    C, N = _check_inputs(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        backgrounds, render_mode, sh_degree, backend,
    )
    chosen = _choose_backend(backend, means)
    if chosen == "gsplat":
        return _rasterize_gsplat(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            backgrounds=backgrounds, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
            render_mode=render_mode, sh_degree=sh_degree, tile_size=tile_size, absgrad=absgrad,
        )

    # the numba backend projects in its own kernels too, unless the cameras are optimised
    project = project_gaussians
    if chosen == "numba" and not (viewmats.requires_grad or Ks.requires_grad):
        from npga.splatting.project_numba import project_gaussians as project
    proj = project(
        means, quats, scales, viewmats, Ks, width, height,
        opacities=opacities, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
    )
    means2d = proj.means2d
    opac = opacities[None, :].expand(C, N)  # (C, N)

    if sh_degree is not None:
        colors = _sh_colors(colors, means, viewmats, sh_degree, C)  # (C, N, 3)
    elif colors.dim() == 2:
        colors = colors[None].expand(C, N, colors.shape[-1])  # (C, N, D), no copy
    if render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, proj.depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        colors = proj.depths[..., None]
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(C, 1)

    composite = render_torch.composite if chosen == "torch" else _numba_composite()
    render_colors, render_alphas = composite(
        means2d, proj.conics, colors, opac, proj.radii, proj.depths, width, height,
        backgrounds=backgrounds, absgrad=absgrad,
    )
    if render_mode in ("ED", "RGB+ED"):
        # Expected depth: normalise the alpha-weighted depth sum by the accumulated alpha.
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1
        )

    meta = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": proj.radii,
        "means2d": means2d,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": opac,
        "width": width,
        "height": height,
        "n_cameras": C,
        "tile_size": tile_size,
        "tile_width": math.ceil(width / tile_size),
        "tile_height": math.ceil(height / tile_size),
        "backend": chosen,
    }
    return render_colors, render_alphas, meta


def visibility(meta: dict) -> tuple[Tensor, Tensor]:
    """How much of each Gaussian a rendering shows: ``(weight, visible_fraction)``, both (C, N).

    ``weight`` is the Gaussian's total blending weight in camera c, sum over pixels of
    T_p alpha_p(i) (3DGS Eq. 3): how many pixels' worth of colour it contributes (0 when
    culled, off-screen or hidden). ``visible_fraction`` divides it by the weight the
    Gaussian would have with nothing in front of it, o_i 2 pi sqrt(det Sigma'_i) (the
    integral of its 2D footprint): about 1 for a Gaussian in plain view, about 0 for one
    behind an opaque surface, whatever its size (chapter 7's visibility rule).

    Computed from ``meta`` of :func:`rasterize` (every input detached) by compositing a
    constant channel of ones once more and differentiating the image's sum with respect
    to that channel: d(sum_p I_p)/d c_i = sum_p T_p alpha_p(i). The numba backend composites
    on CPU tensors, the PyTorch reference on any other device (gsplat's meta has the same
    fields).
    """
    m2d = meta["means2d"].detach()
    C, N = m2d.shape[:2]
    opac = meta["opacities"].detach()
    opac = opac.expand(C, N) if opac.dim() == 1 else opac
    conics = meta["conics"].detach()
    ones = torch.ones(C, N, 1, dtype=m2d.dtype, device=m2d.device, requires_grad=True)
    composite = _numba_composite() if m2d.device.type == "cpu" else render_torch.composite
    with torch.enable_grad():
        img, _ = composite(m2d, conics, ones, opac, meta["radii"], meta["depths"].detach(),
                           meta["width"], meta["height"])
        (grad,) = torch.autograd.grad(img.sum(), ones)
    weight = grad[..., 0]
    # conic = Sigma'^-1 as (a, b, c): det Sigma' = 1 / (a c - b^2)
    det_conic = (conics[..., 0] * conics[..., 2] - conics[..., 1] ** 2).clamp_min(1e-12)
    unoccluded = opac * 2 * math.pi / det_conic.sqrt()
    radii = meta["radii"]
    shown = (radii.max(dim=-1).values if radii.dim() == 3 else radii) > 0
    fraction = torch.where(shown, weight / unoccluded.clamp_min(1e-12), torch.zeros_like(weight))
    return weight, fraction.clamp(0.0, 1.0)


# --------------------------------------------------------------------------- helpers


def _check_inputs(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height,
    backgrounds, render_mode, sh_degree, backend,
) -> tuple[int, int]:
    """Validate shapes and options; return (C, N). Errors name the offending value."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(f"rasterize: {msg}")

    need(backend in BACKENDS, f"backend must be one of {BACKENDS}, got {backend!r}")
    need(render_mode in RENDER_MODES, f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    need(isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0,
         f"width and height must be positive ints, got {width!r} x {height!r}")
    need(means.dim() == 2 and means.shape[-1] == 3, f"means must be (N, 3), got {tuple(means.shape)}")
    N = means.shape[0]
    need(quats.shape == (N, 4), f"quats must be ({N}, 4), got {tuple(quats.shape)}")
    need(scales.shape == (N, 3), f"scales must be ({N}, 3), got {tuple(scales.shape)}")
    need(opacities.shape == (N,), f"opacities must be ({N},), got {tuple(opacities.shape)}")
    need(viewmats.dim() == 3 and viewmats.shape[1:] == (4, 4),
         f"viewmats must be (C, 4, 4), got {tuple(viewmats.shape)}")
    C = viewmats.shape[0]
    need(Ks.shape == (C, 3, 3), f"Ks must be ({C}, 3, 3), got {tuple(Ks.shape)}")
    if sh_degree is None:
        need(colors.dim() in (2, 3) and colors.shape[:-1] in ((N,), (C, N)),
             f"colors must be ({N}, D) or ({C}, {N}, D), got {tuple(colors.shape)}"
             " (SH coefficients need sh_degree)")
    else:
        need(colors.dim() in (3, 4) and colors.shape[:-2] in ((N,), (C, N)) and colors.shape[-1] == 3,
             f"with sh_degree, colors must be ({N}, K, 3) or ({C}, {N}, K, 3), got {tuple(colors.shape)}")
        need((sh_degree + 1) ** 2 <= colors.shape[-2],
             f"sh_degree {sh_degree} needs {(sh_degree + 1) ** 2} coefficients, colors has {colors.shape[-2]}")
    if backgrounds is not None:
        D = 3 if sh_degree is not None else colors.shape[-1]
        need(backgrounds.shape == (C, D), f"backgrounds must be ({C}, {D}), got {tuple(backgrounds.shape)}")
    devices = {t.device for t in (means, quats, scales, opacities, colors, viewmats, Ks)}
    need(len(devices) == 1, f"all tensors must be on one device, got {sorted(map(str, devices))}")
    for name, t in (("means", means), ("scales", scales), ("opacities", opacities)):
        need(bool(torch.isfinite(t).all()), f"{name} contains NaN or inf")
    return C, N


def _choose_backend(backend: str, means: Tensor) -> str:
    if backend == "torch":
        return "torch"
    if backend == "numba":
        if means.device.type != "cpu":
            raise ValueError(
                f"rasterize: backend='numba' needs CPU tensors, got tensors on {means.device}; "
                "use backend='gsplat' (or 'auto') for CUDA tensors"
            )
        return "numba"
    if backend == "gsplat":
        if means.device.type != "cuda":
            # Checked before gsplat is imported: a gsplat CUDA op on CPU tensors starts a
            # long JIT compile of its extension and then fails.
            raise ValueError(
                f"rasterize: backend='gsplat' needs CUDA tensors, got tensors on {means.device}; "
                "use backend='numba', 'torch' or 'auto' on the CPU"
            )
        return "gsplat"
    if means.device.type == "cuda":  # auto
        try:
            import gsplat  # noqa: F401
        except Exception:
            return "torch"
        return "gsplat"
    if means.device.type == "cpu" and means.dtype in (torch.float32, torch.float64):
        try:
            import numba  # noqa: F401
        except Exception:  # not installed, or broken against this numpy: the reference still works
            return "torch"
        return "numba"
    return "torch"  # other devices (mps, meta, ...) and dtypes (float16, ...): the torch backend


def _numba_composite():
    """render_numba.composite, imported late: numba's import takes about a second."""
    from npga.splatting.render_numba import composite

    return composite


def _sh_colors(coeffs: Tensor, means: Tensor, viewmats: Tensor, sh_degree: int, C: int) -> Tensor:
    """RGB (C, N, 3) of SH coefficients seen from each camera: max(SH(dir) + 0.5, 0)."""
    from npga.splatting.gaussians import eval_sh  # late: gaussians.py may import this module

    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # (C, 3) camera centres
    dirs = means[None, :, :] - campos[:, None, :]  # (C, N, 3), camera -> Gaussian
    if coeffs.dim() == 3:
        coeffs = coeffs[None].expand((C,) + coeffs.shape)
    return torch.clamp_min(eval_sh(coeffs, dirs, sh_degree) + 0.5, 0.0)


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kw):
    """gsplat's fused CUDA rasterizer, non-packed so ``meta`` has the (C, N, ...) layout."""
    import gsplat

    render_colors, render_alphas, meta = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, packed=False, **kw
    )
    meta.setdefault("n_cameras", viewmats.shape[0])
    meta["backend"] = "gsplat"
    return render_colors, render_alphas, meta


__all__ = ["BACKENDS", "RENDER_MODES", "rasterize", "visibility"]
