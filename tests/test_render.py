"""npga.splatting.render.rasterize (torch backend) against gsplat's pure-torch reference and a
brute-force per-pixel compositor written plainly below. CPU only; never calls a gsplat
CUDA op (only gsplat.cuda._torch_impl, which is plain PyTorch)."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
import torch

from npga.capture.cameras import intrinsics_for, look_at
from npga.splatting import render_torch
from npga.splatting.render import rasterize
from npga.splatting.render_torch import project_gaussians

_torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")


# --------------------------------------------------------------------------- fixtures


def _cameras(C: int, width: int, height: int, dtype=torch.float64, distance: float = 1.0):
    """C cameras on a small arc around the origin, looking at it."""
    views, Ks = [], []
    for i in range(C):
        a = 0.5 * (i - (C - 1) / 2)
        eye = [distance * math.sin(a), 0.05 * i, distance * math.cos(a)]
        views.append(look_at(eye, [0.0, 0.0, 0.0]))
        K = intrinsics_for(width, height, focal_factor=1.6)
        K[0, 2] += 0.37 * i  # an off-centre principal point
        Ks.append(K)
    return torch.tensor(np.stack(views), dtype=dtype), torch.tensor(np.stack(Ks), dtype=dtype)


def _scene(N: int, D: int = 3, seed: int = 0, dtype=torch.float64, spread: float = 0.12):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(N, 3, generator=g, dtype=dtype) - 0.5) * 2 * spread
    quats = torch.randn(N, 4, generator=g, dtype=dtype)
    scales = torch.exp(torch.rand(N, 3, generator=g, dtype=dtype) * 1.5 - 4.5)  # 1 .. 5 cm
    opacities = torch.rand(N, generator=g, dtype=dtype) * 0.85 + 0.1
    colors = torch.rand(N, D, generator=g, dtype=dtype)
    return means, quats, scales, opacities, colors


def _with_outsiders(means: torch.Tensor) -> torch.Tensor:
    """Move a few Gaussians behind the cameras and far off screen."""
    means = means.clone()
    means[0] = torch.tensor([0.0, 0.0, 1.6])  # behind camera 0 (which sits at z = 1)
    means[1] = torch.tensor([0.02, 0.0, 1.0])  # at the camera centre's depth: z = 0
    means[2] = torch.tensor([3.0, 0.0, 0.0])  # far off screen to the side
    means[3] = torch.tensor([0.0, -2.5, 0.0])  # below the image
    return means


def _reference_projection(means, quats, scales, viewmats, Ks, width, height, eps2d=0.3):
    covars, _ = _torch_impl._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    return _torch_impl._fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=0.01, far_plane=1e10
    )


def _brute_force(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds=None):
    """Every Gaussian at every pixel, nearest first, with gsplat's compositing rules.

    Projection by gsplat's pure-torch reference; compositing written out plainly.
    Differentiable, so it also serves as the gradient reference.
    """
    _, means2d, depths, conics, _ = _reference_projection(means, quats, scales, viewmats, Ks, width, height)
    C, D = viewmats.shape[0], colors.shape[-1]
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=means.dtype) + 0.5, torch.arange(width, dtype=means.dtype) + 0.5, indexing="ij"
    )
    images, alphas = [], []
    for c in range(C):
        T = torch.ones(height, width, dtype=means.dtype)
        out = torch.zeros(height, width, D, dtype=means.dtype)
        done = torch.zeros(height, width, dtype=torch.bool)
        order = torch.sort(depths[c].detach(), stable=True).indices
        for n in order.tolist():
            if not 0.01 < float(depths[c, n].detach()) < 1e10:
                continue  # behind the near plane: never drawn
            dx, dy = means2d[c, n, 0] - xs, means2d[c, n, 1] - ys
            q = conics[c, n]
            sigma = 0.5 * (q[0] * dx * dx + q[2] * dy * dy) + q[1] * dx * dy
            alpha = torch.clamp(opacities[n] * torch.exp(-sigma), max=0.999)
            use = (sigma >= 0) & (alpha >= 1.0 / 255.0) & ~done
            next_T = T * (1.0 - alpha)
            stop = use & (next_T <= 1e-4)  # this Gaussian is not drawn, the pixel is done
            done = done | stop
            use = use & ~stop
            out = out + torch.where(use, alpha * T, 0.0)[..., None] * colors[n]
            T = torch.where(use, next_T, T)
        if backgrounds is not None:
            out = out + T[..., None] * backgrounds[c]
        images.append(out)
        alphas.append(1.0 - T[..., None])
    return torch.stack(images), torch.stack(alphas)


# --------------------------------------------------------------------------- projection


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_projection_matches_gsplat_reference(dtype, tol):
    W, H = 48, 64
    means, quats, scales, _, _ = _scene(300, dtype=dtype, spread=0.5)
    means = _with_outsiders(means)
    viewmats, Ks = _cameras(3, W, H, dtype=dtype)
    ours = project_gaussians(means, quats, scales, viewmats, Ks, W, H)
    radii, means2d, depths, conics, _ = _reference_projection(means, quats, scales, viewmats, Ks, W, H)
    assert ours.radii.dtype == torch.int32 and ours.radii.shape == (3, 300, 2)
    assert torch.equal(ours.radii, radii)
    valid = (radii > 0).all(-1)
    assert 0 < int(valid.sum()) < valid.numel()  # the scene has both visible and culled
    scale = means2d[valid].abs().max()
    assert torch.allclose(ours.means2d[valid], means2d[valid], rtol=0, atol=tol * scale)
    assert torch.allclose(ours.depths[valid], depths[valid], rtol=tol, atol=tol)
    assert torch.allclose(ours.conics[valid], conics[valid], rtol=100 * tol, atol=tol)
    # Culled entries are zero, not garbage.
    assert not ours.means2d[~valid].any() and not ours.conics[~valid].any()


def test_opacity_aware_radii():
    W, H = 64, 64
    means, quats, scales, opacities, _ = _scene(200, spread=0.2)
    opacities[:5] = 0.5 / 255.0  # too faint to ever reach alpha = 1/255
    viewmats, Ks = _cameras(2, W, H)
    ours = project_gaussians(means, quats, scales, viewmats, Ks, W, H, opacities=opacities)
    plain = project_gaussians(means, quats, scales, viewmats, Ks, W, H)
    assert not ours.radii[:, :5].any()
    # cov2d diagonal from the conic: cov = inverse(conic matrix)
    a, b, c = plain.conics.unbind(-1)
    det = a * c - b * b
    sigma = torch.stack([torch.sqrt(c / det), torch.sqrt(a / det)], -1)
    extend = torch.sqrt(2 * torch.log(255 * opacities)).clamp(max=3.33)
    expected = torch.ceil(extend[None, :, None] * sigma)
    keep = (ours.radii > 0).all(-1)
    assert keep[:, 5:].float().mean() > 0.8
    assert torch.equal(ours.radii[keep].double(), expected[keep])
    assert (ours.radii <= plain.radii).all()


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("D,with_bg", [(3, False), (5, True)])
def test_render_matches_brute_force(D, with_bg):
    W, H = 40, 36  # not multiples of the 16-pixel tile: Gaussians straddle tile borders
    means, quats, scales, opacities, colors = _scene(60, D=D, seed=D)
    means = _with_outsiders(means)
    viewmats, Ks = _cameras(2, W, H)
    bg = torch.rand(2, D, dtype=torch.float64) if with_bg else None
    img, alpha, meta = rasterize(
        means, quats, scales, opacities, colors, viewmats, Ks, W, H, backgrounds=bg, backend="torch"
    )
    ref_img, ref_alpha = _brute_force(means, quats, scales, opacities, colors, viewmats, Ks, W, H, bg)
    assert img.shape == (2, H, W, D) and alpha.shape == (2, H, W, 1)
    assert (ref_alpha > 0.5).float().mean() > 0.1  # the scene actually covers the image
    assert torch.allclose(img, ref_img, atol=1e-5, rtol=0)
    assert torch.allclose(alpha, ref_alpha, atol=1e-5, rtol=0)
    assert meta["radii"][0, 0].eq(0).all() and meta["radii"][:, 2].eq(0).all()  # culled


def test_render_float32_and_saturation():
    """Float32 inputs, dense opaque Gaussians: pixels reach the T <= 1e-4 stop."""
    W, H = 32, 32
    means, quats, scales, opacities, colors = _scene(150, seed=3, spread=0.05)
    opacities = opacities * 0 + 0.97
    viewmats, Ks = _cameras(1, W, H)
    ref_img, ref_alpha = _brute_force(means, quats, scales, opacities, colors, viewmats, Ks, W, H)
    assert (ref_alpha > 1 - 1.1e-4).any()  # some pixels did stop early
    args = [t.float() for t in (means, quats, scales, opacities, colors, viewmats, Ks)]
    img, alpha, _ = rasterize(*args, W, H, backend="torch")
    assert img.dtype == torch.float32
    assert (img.double() - ref_img).abs().max() < 2e-4
    assert (alpha.double() - ref_alpha).abs().max() < 2e-4


def test_small_pair_budget_gives_the_same_image(monkeypatch):
    W, H = 40, 36
    means, quats, scales, opacities, colors = _scene(60, seed=5)
    viewmats, Ks = _cameras(2, W, H)
    full, _, _ = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, W, H, backend="torch")
    monkeypatch.setattr(render_torch, "PAIR_BUDGET", 300)
    monkeypatch.setattr(render_torch, "CHANNEL_BUDGET", 50)
    sliced, _, _ = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, W, H, backend="torch")
    assert torch.allclose(full, sliced, atol=1e-12)


def test_nothing_visible_gives_background_and_zero_grads():
    W, H = 16, 12
    means, quats, scales, opacities, colors = _scene(10)
    means = means + torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64)  # all behind camera 0
    means.requires_grad_(True)
    viewmats, Ks = _cameras(1, W, H)
    bg = torch.tensor([[0.2, 0.4, 0.6]], dtype=torch.float64)
    img, alpha, meta = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, W, H, backgrounds=bg)
    assert torch.equal(img, bg.view(1, 1, 1, 3).expand(1, H, W, 3)) and not alpha.any()
    img.sum().backward()
    assert torch.equal(means.grad, torch.zeros_like(means))


# --------------------------------------------------------------------------- gradients


def test_gradients_match_brute_force_autograd():
    W, H = 36, 28
    D = 4
    leaves = [t.clone().requires_grad_(True) for t in _scene(40, D=D, seed=11)]
    bg = torch.rand(2, D, dtype=torch.float64, requires_grad=True)
    viewmats, Ks = _cameras(2, W, H)
    wc = torch.randn(2, H, W, D, dtype=torch.float64)  # a random loss L = <wc, img> + <wa, alpha>
    wa = torch.randn(2, H, W, 1, dtype=torch.float64)

    img, alpha, meta = rasterize(*leaves, viewmats, Ks, W, H, backgrounds=bg, backend="torch")
    meta["means2d"].retain_grad()
    ((img * wc).sum() + (alpha * wa).sum()).backward()
    ours = [t.grad.clone() for t in leaves] + [bg.grad.clone()]
    for t in leaves + [bg]:
        t.grad = None

    ref_img, ref_alpha = _brute_force(*leaves, viewmats, Ks, W, H, bg)
    ((ref_img * wc).sum() + (ref_alpha * wa).sum()).backward()
    ref = [t.grad for t in leaves] + [bg.grad]
    for name, a, b in zip(["means", "quats", "scales", "opacities", "colors", "backgrounds"], ours, ref):
        assert b.abs().max() > 0, name
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-8), (name, (a - b).abs().max())
    # The view-space positional gradient densification reads.
    g2d = meta["means2d"].grad
    assert g2d is not None and g2d.shape == (2, 40, 2)
    assert g2d.abs().sum() > 0 and not g2d[meta["radii"].eq(0).any(-1)].any()


def clamped_scene():
    """Two Gaussians, the first so opaque at pixel (5, 4) that its alpha is clamped (0.999).
    Returns (W, H, viewmats, Ks, [means, quats, scales, opacities, colors]), float64."""
    W, H = 11, 9
    viewmats = torch.eye(4, dtype=torch.float64)[None]
    Ks = torch.tensor([[[20.0, 0, 5.5], [0, 20.0, 4.5], [0, 0, 1]]], dtype=torch.float64)
    means = torch.tensor([[0.0, 0.0, 1.0], [0.05, 0.02, 1.2]], dtype=torch.float64)  # 1st on pixel (5, 4)
    quats = torch.tensor([[1.0, 0, 0, 0], [0.8, 0.1, 0.3, 0]], dtype=torch.float64)
    scales = torch.full((2, 3), 0.1, dtype=torch.float64)
    opacities = torch.tensor([1.0, 0.7], dtype=torch.float64)
    colors = torch.tensor([[0.2, 0.9, 0.4], [0.8, 0.1, 0.5]], dtype=torch.float64)
    return W, H, viewmats, Ks, [means, quats, scales, opacities, colors]


def test_clamped_alpha_passes_no_gradient():
    """Where o * exp(-sigma) > 0.999 alpha is clamped and, as in gsplat, does not move."""
    W, H, viewmats, Ks, (means, quats, scales, opacities, colors) = clamped_scene()
    leaves = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, colors)]
    w = torch.randn(1, H, W, 3, dtype=torch.float64)
    img, _, _ = rasterize(*leaves, viewmats, Ks, W, H)
    (img * w).sum().backward()
    ours = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    ref_img, _ = _brute_force(*leaves, viewmats, Ks, W, H)
    (ref_img * w).sum().backward()
    assert torch.allclose(img, ref_img, atol=1e-12)
    for a, t in zip(ours, leaves):
        assert torch.allclose(a, t.grad, rtol=1e-7, atol=1e-10)


def test_gradcheck_tiny_scene():
    W, H = 10, 8
    means = torch.tensor([[0.0, 0.0, 0.0], [0.01, -0.01, 0.02], [-0.015, 0.01, -0.01]], dtype=torch.float64)
    quats = torch.tensor([[1.0, 0.1, 0.2, 0.0], [0.9, -0.2, 0.1, 0.3], [0.5, 0.5, -0.1, 0.2]], dtype=torch.float64)
    scales = torch.tensor([[0.01, 0.012, 0.008], [0.008, 0.006, 0.01], [0.012, 0.007, 0.009]], dtype=torch.float64)
    opacities = torch.tensor([0.5, 0.4, 0.6], dtype=torch.float64)
    colors = torch.tensor([[0.9, 0.1, 0.2], [0.2, 0.8, 0.3], [0.1, 0.3, 0.7]], dtype=torch.float64)
    viewmats, Ks = _cameras(1, W, H)
    Ks[:, :2] *= 0.6  # the Gaussians span a few pixels each
    Ks[0, 0, 2], Ks[0, 1, 2] = W / 2, H / 2

    def f(m, q, s, o, c):
        img, alpha, _ = rasterize(m, q, s, o, c, viewmats, Ks, W, H, backend="torch")
        return img, alpha

    inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, colors)]
    img, alpha = f(*inputs)
    assert alpha.max() > 0.3 and alpha.max() < 0.99  # visible, far from the T stop
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_absgrad_is_filled():
    W, H = 24, 20
    leaves = [t.clone().requires_grad_(True) for t in _scene(20, seed=2)]
    viewmats, Ks = _cameras(1, W, H)
    img, alpha, meta = rasterize(*leaves, viewmats, Ks, W, H, absgrad=True, backend="torch")
    meta["means2d"].retain_grad()
    (img * torch.randn_like(img)).sum().backward()
    g, ag = meta["means2d"].grad, meta["means2d"].absgrad
    assert ag.shape == g.shape and (ag >= g.abs() - 1e-12).all() and (ag > g.abs() + 1e-9).any()


# --------------------------------------------------------------------------- modes, SH, API


def test_render_modes_rgb_ed_and_d():
    W, H = 30, 26
    means, quats, scales, opacities, colors = _scene(40, seed=4)
    viewmats, Ks = _cameras(2, W, H)
    args = (means, quats, scales, opacities, colors, viewmats, Ks, W, H)
    bg = torch.ones(2, 3, dtype=torch.float64)
    rgb, alpha, _ = rasterize(*args, backgrounds=bg)
    rgbed, alpha2, _ = rasterize(*args, backgrounds=bg, render_mode="RGB+ED")
    d, _, meta = rasterize(*args, render_mode="D")
    ed, _, _ = rasterize(*args, render_mode="ED")
    assert rgbed.shape == (2, H, W, 4) and d.shape == (2, H, W, 1) and ed.shape == (2, H, W, 1)
    assert torch.allclose(rgbed[..., :3], rgb) and torch.equal(alpha, alpha2)
    # D is the alpha-weighted depth: brute force with depths as the colour channel.
    _, _, depths_ref, _, _ = _reference_projection(means, quats, scales, viewmats, Ks, W, H)
    per_view = []
    for c in range(2):
        dimg, _ = _brute_force(means, quats, scales, opacities, depths_ref[c][:, None], viewmats[c:c + 1], Ks[c:c + 1], W, H)
        per_view.append(dimg[0])
    assert torch.allclose(d, torch.stack(per_view), atol=1e-6)
    covered = alpha > 0.05
    assert torch.allclose(ed[covered], (d / alpha)[covered]) and torch.allclose(rgbed[..., 3:], ed)
    z = meta["depths"][meta["radii"].gt(0).all(-1)]
    assert ed[covered].min() >= z.min() - 1e-9 and ed[covered].max() <= z.max() + 1e-9


def test_sh_colours_match_gsplat_reference():
    W, H = 24, 20
    means, quats, scales, opacities, _ = _scene(30, seed=6)
    coeffs = torch.randn(30, 16, 3, dtype=torch.float64) * 0.3
    viewmats, Ks = _cameras(2, W, H)
    img, _, _ = rasterize(means, quats, scales, opacities, coeffs, viewmats, Ks, W, H, sh_degree=2)
    campos = torch.linalg.inv(viewmats)[:, :3, 3]
    per_cam = torch.stack([
        torch.clamp_min(_torch_impl._spherical_harmonics(2, means - campos[c], coeffs) + 0.5, 0.0)
        for c in range(2)
    ])  # (C, N, 3)
    ref, _, _ = rasterize(means, quats, scales, opacities, per_cam, viewmats, Ks, W, H)
    assert torch.allclose(img, ref, atol=1e-10)


def test_per_camera_colours():
    """colors (C, N, D): camera c sees colours[c], as if rendered alone."""
    W, H = 20, 18
    means, quats, scales, opacities, _ = _scene(25, seed=8)
    colors = torch.rand(2, 25, 6, dtype=torch.float64)
    viewmats, Ks = _cameras(2, W, H)
    both, _, _ = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, W, H)
    for c in range(2):
        alone, _, _ = rasterize(means, quats, scales, opacities, colors[c], viewmats[c:c + 1], Ks[c:c + 1], W, H)
        assert torch.allclose(both[c], alone[0], atol=1e-12)
    assert not torch.allclose(both[0], both[1])


def test_auto_backend_on_cpu_is_numba_and_meta_keys():
    W, H = 20, 18
    means, quats, scales, opacities, colors = _scene(10)
    viewmats, Ks = _cameras(3, W, H)
    args = (means, quats, scales, opacities, colors, viewmats, Ks, W, H)
    # "auto" on CPU tensors: the compiled numba backend when numba imports, else torch
    # (tests/test_render_numba.py checks the fallback with numba hidden).
    expected = "numba" if importlib.util.find_spec("numba") is not None else "torch"
    for backend, want in (("auto", expected), ("torch", "torch")):
        _, _, meta = rasterize(*args, backend=backend)
        assert meta["backend"] == want, backend
        for key in ("means2d", "radii", "depths", "conics", "opacities"):
            assert meta[key].shape[:2] == (3, 10), key
        assert meta["radii"].dtype == torch.int32
        assert (meta["width"], meta["height"], meta["n_cameras"], meta["tile_size"]) == (W, H, 3, 16)
        assert (meta["tile_width"], meta["tile_height"]) == (2, 2)
        assert meta["gaussian_ids"] is None and meta["camera_ids"] is None


def test_gsplat_backend_refuses_cpu_tensors_without_importing_gsplat(monkeypatch):
    monkeypatch.setitem(sys.modules, "gsplat", None)  # any `import gsplat` would now fail
    means, quats, scales, opacities, colors = _scene(5)
    viewmats, Ks = _cameras(1, 16, 16)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 16, 16, backend="gsplat")


@pytest.mark.parametrize(
    "change,match",
    [
        ({"quats": torch.zeros(4, 4)}, "quats must be"),
        ({"colors": torch.zeros(6, 3)}, "colors must be"),
        ({"backend": "cuda"}, "backend must be"),
        ({"render_mode": "RGBD"}, "render_mode must be"),
        ({"width": 0}, "width and height"),
        ({"backgrounds": torch.zeros(1, 4)}, "backgrounds must be"),
    ],
)
def test_bad_input_is_named(change, match):
    means, quats, scales, opacities, colors = _scene(5, dtype=torch.float32)
    viewmats, Ks = _cameras(1, 16, 16, dtype=torch.float32)
    kw = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
              viewmats=viewmats, Ks=Ks, width=16, height=16)
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        rasterize(**kw)
