"""The numba backend (npga.splatting.render_numba) against the brute-force per-pixel compositor of
test_render.py, against the torch backend, and for determinism across thread counts.

Small scenes: the cost is dominated by compiling the kernels once per dtype (cached on
disk by numba after the first run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

numba = pytest.importorskip("numba")

from npga.splatting import render, render_numba  # noqa: E402
from npga.splatting.render import rasterize  # noqa: E402
from npga.splatting.render_numba import TILE, composite  # noqa: E402
from npga.splatting.render_torch import project_gaussians  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_render import _brute_force, _cameras, _scene, _with_outsiders  # noqa: E402

NAMES = ("means", "quats", "scales", "opacities", "colors", "backgrounds")


# --------------------------------------------------------------------------- helpers


def _grads(backend, leaves, bg, viewmats, Ks, W, H, wc, wa, absgrad=False):
    """Image, alpha, meta and the gradients of L = <wc, img> + <wa, alpha>."""
    for t in leaves + ([bg] if bg is not None else []):
        t.grad = None
    if backend == "brute":
        img, alpha = _brute_force(*leaves, viewmats, Ks, W, H, bg)
        meta = None
    else:
        img, alpha, meta = rasterize(*leaves, viewmats, Ks, W, H, backgrounds=bg, backend=backend, absgrad=absgrad)
        meta["means2d"].retain_grad()
    ((img * wc).sum() + (alpha * wa).sum()).backward()
    grads = [t.grad.clone() for t in leaves] + ([bg.grad.clone()] if bg is not None else [])
    return img.detach(), alpha.detach(), meta, grads


def _close(ours, ref, tol, what):
    """|ours - ref| <= tol * max(1, max |ref|): absolute for images, scale-relative for gradients."""
    assert ours.shape == ref.shape, what
    assert torch.isfinite(ours).all(), what
    scale = max(1.0, float(ref.abs().max()))
    err = float((ours.double() - ref.double()).abs().max()) if ref.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} x {scale:.3g}"


def _leaves(scene, dtype):
    # float32 runs use the float32 values, the reference their exact float64 upcast.
    return [t.to(dtype).clone().requires_grad_(True) for t in scene]


def _compare_with_brute_force(scene, viewmats, Ks, W, H, bg, dtype, tol, seed=0):
    C, D = viewmats.shape[0], scene[4].shape[-1]
    g = torch.Generator().manual_seed(seed)
    wc = torch.randn(C, H, W, D, generator=g, dtype=torch.float64)
    wa = torch.randn(C, H, W, 1, generator=g, dtype=torch.float64)
    scene = [t.to(dtype).double() for t in scene]  # values representable in dtype
    bg = bg.to(dtype).double() if bg is not None else None
    ref_leaves = _leaves(scene, torch.float64)
    ref_bg = bg.clone().requires_grad_(True) if bg is not None else None
    ref_img, ref_alpha, _, ref_grads = _grads("brute", ref_leaves, ref_bg, viewmats, Ks, W, H, wc, wa)

    leaves = _leaves(scene, dtype)
    our_bg = bg.to(dtype).clone().requires_grad_(True) if bg is not None else None
    img, alpha, meta, grads = _grads(
        "numba", leaves, our_bg, viewmats.to(dtype), Ks.to(dtype), W, H, wc.to(dtype), wa.to(dtype)
    )
    assert meta["backend"] == "numba"
    assert img.dtype == dtype and alpha.dtype == dtype and all(gr.dtype == dtype for gr in grads)
    _close(img, ref_img, tol, "image")
    _close(alpha, ref_alpha, tol, "alpha")
    for name, a, b in zip(NAMES, grads, ref_grads):
        assert b.abs().max() > 0, name  # the reference gradient is not trivially zero
        _close(a, b, tol, f"grad {name}")
    return meta, ref_alpha


# --------------------------------------------------------------------------- brute force


@pytest.mark.parametrize(
    "dtype,tol,D,with_bg",
    [
        (torch.float64, 1e-5, 3, True),
        (torch.float64, 1e-5, 32, False),
        (torch.float32, 1e-4, 3, False),
        (torch.float32, 1e-4, 32, True),
    ],
)
def test_matches_brute_force(dtype, tol, D, with_bg):
    """Culled (behind, at z = 0, off-screen), tile-straddling Gaussians, 37 x 29 pixels."""
    W, H = 37, 29  # not multiples of 16: partial tiles at the right and bottom
    means, quats, scales, opacities, colors = _scene(60, D=D, seed=D + with_bg)
    means = _with_outsiders(means)
    viewmats, Ks = _cameras(2, W, H)
    bg = torch.rand(2, D, dtype=torch.float64, generator=torch.Generator().manual_seed(D)) if with_bg else None
    meta, ref_alpha = _compare_with_brute_force(
        [means, quats, scales, opacities, colors], viewmats, Ks, W, H, bg, dtype, tol
    )
    # The scene exercises what it claims to.
    radii, m2d = meta["radii"], meta["means2d"].detach()
    assert radii[0, 0].eq(0).all() and radii[:, 1].eq(0).all() and radii[:, 2].eq(0).all()  # culled
    vis = radii.gt(0).all(-1)
    lo = torch.floor((m2d - radii) / TILE)
    hi = torch.floor((m2d + radii) / TILE)
    assert ((lo != hi).any(-1) & vis).sum() >= 10  # boxes crossing tile borders
    assert (ref_alpha > 0.5).float().mean() > 0.1  # the image is covered


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_saturation_and_early_stop_match_brute_force(dtype, tol):
    """Many opaque layers: alpha clamps at 0.999 and pixels hit the T <= 1e-4 stop."""
    W, H = 33, 30
    means, quats, scales, opacities, colors = _scene(120, seed=3, spread=0.05)
    scales = scales * 4  # large, overlapping splats: 10-20 opaque layers per pixel
    opacities = torch.where(torch.arange(120) % 2 == 0, 1.0, 0.97).double()
    viewmats, Ks = _cameras(1, W, H)
    bg = torch.tensor([[0.3, 0.6, 0.9]], dtype=torch.float64)
    meta, ref_alpha = _compare_with_brute_force(
        [means, quats, scales, opacities, colors], viewmats, Ks, W, H, bg, dtype, tol, seed=4
    )
    assert (ref_alpha > 1 - 1.1e-4).float().mean() > 0.1  # many pixels stopped early
    # Some pairs are clamped: o exp(-sigma) >= 0.999 at the pixel centre nearest a mean.
    m2d, con = meta["means2d"].detach().double()[0], meta["conics"].detach().double()[0]
    d = m2d - (torch.floor(m2d) + 0.5)
    sigma = 0.5 * (con[:, 0] * d[:, 0] ** 2 + con[:, 2] * d[:, 1] ** 2) + con[:, 1] * d[:, 0] * d[:, 1]
    raw = opacities.to(dtype).double() * torch.exp(-sigma)
    assert ((raw >= 0.999) & meta["radii"][0].gt(0).all(-1)).sum() >= 3


def test_equal_depths_keep_the_lower_index_first():
    """Ties in depth: the lower flat index is composited first (a stable sort)."""
    W, H = 19, 17
    viewmats = torch.eye(4, dtype=torch.float64)[None]
    Ks = torch.tensor([[[30.0, 0, 9.5], [0, 30.0, 8.5], [0, 0, 1]]], dtype=torch.float64)
    means = torch.tensor([[0.01, 0.0, 1.0], [-0.01, 0.01, 1.0], [0.0, -0.01, 1.0]], dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0.2, 0], [0.8, 0, 0.3, 0.1]], dtype=torch.float64)
    scales = torch.full((3, 3), 0.05, dtype=torch.float64)
    opacities = torch.tensor([0.8, 0.7, 0.9], dtype=torch.float64)
    colors = torch.eye(3, dtype=torch.float64)
    ours, _, meta = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, W, H, backend="numba")
    assert meta["depths"][0].unique().numel() == 1  # all three at the same depth
    ref, _ = _brute_force(means, quats, scales, opacities, colors, viewmats, Ks, W, H)
    assert torch.allclose(ours, ref, atol=1e-12)
    flipped, _, _ = rasterize(means.flip(0), quats.flip(0), scales, opacities.flip(0), colors.flip(0),
                              viewmats, Ks, W, H, backend="numba")
    assert (flipped - ours).abs().max() > 0.1  # the order matters in this scene


def test_nothing_visible_gives_background_and_zero_grads():
    W, H = 20, 17
    means, quats, scales, opacities, colors = _scene(10)
    means = (means + torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64)).requires_grad_(True)
    viewmats, Ks = _cameras(1, W, H)
    bg = torch.tensor([[0.2, 0.4, 0.6]], dtype=torch.float64, requires_grad=True)
    img, alpha, meta = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, W, H,
                                 backgrounds=bg, backend="numba")
    assert torch.equal(img, bg.detach().view(1, 1, 1, 3).expand(1, H, W, 3)) and not alpha.any()
    img.sum().backward()
    assert torch.equal(means.grad, torch.zeros_like(means))
    assert torch.equal(bg.grad, torch.full_like(bg, W * H))


# --------------------------------------------------------------------------- torch backend


def _random_scene(N, W, H, C, D, seed, dtype):
    means, quats, scales, opacities, colors = _scene(N, D=D, seed=seed, spread=0.15)
    scales = scales * 0.6
    viewmats, Ks = _cameras(C, W, H)
    return [t.to(dtype) for t in (means, quats, scales, opacities, colors)], viewmats.to(dtype), Ks.to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_matches_torch_backend_on_a_bigger_scene(dtype, tol, monkeypatch):
    """The numba backend equals the torch backend: end to end in float64; in float32 its
    compositor alone, fed the torch projection. (End to end in float32 the two projections
    round differently, and a pair whose alpha sits at the 1/255 threshold may flip: a
    jump of ~1/255 at that pixel, legitimately. test_numba_projection_equals_torch's
    checks the projections themselves.)"""
    W, H, C, D = 100, 84, 2, 3
    scene, viewmats, Ks = _random_scene(3000, W, H, C, D, seed=21, dtype=dtype)
    if dtype == torch.float32:
        from npga.splatting import project_numba, render_torch

        monkeypatch.setattr(project_numba, "project_gaussians", render_torch.project_gaussians)
    g = torch.Generator().manual_seed(5)
    wc = torch.randn(C, H, W, D, generator=g, dtype=dtype)
    wa = torch.randn(C, H, W, 1, generator=g, dtype=dtype)
    bg = torch.rand(C, D, generator=g, dtype=dtype)
    out = {}
    for backend in ("torch", "numba"):
        leaves = _leaves(scene, dtype)
        b = bg.clone().requires_grad_(True)
        img, alpha, meta, grads = _grads(backend, leaves, b, viewmats, Ks, W, H, wc, wa)
        assert meta["backend"] == backend
        out[backend] = (img, alpha, grads, meta["means2d"].grad)
    (img_t, alpha_t, grads_t, g2d_t), (img_n, alpha_n, grads_n, g2d_n) = out["torch"], out["numba"]
    assert float(alpha_t.mean()) > 0.3
    _close(img_n, img_t, tol, "image")
    _close(alpha_n, alpha_t, tol, "alpha")
    for name, a, b in zip(NAMES, grads_n, grads_t):
        _close(a, b, tol, f"grad {name}")
    _close(g2d_n, g2d_t, tol, "means2d.grad")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_numba_projection_equals_torch(dtype, tol):
    """project_numba.project_gaussians against render_torch's (autograd): radii, centres,
    depths and conics, and the gradients of a loss on all three, with Gaussians behind
    the cameras, at z = 0, off screen and below the opacity threshold (culled, no
    gradient); one camera looks through a non-square pixel with skew."""
    from npga.splatting import project_numba, render_torch

    W, H, C = 64, 48, 3
    scene, viewmats, Ks = _random_scene(400, W, H, C, 3, seed=4, dtype=dtype)
    means, quats, scales, opac, _ = scene
    means = _with_outsiders(means)
    opac = opac.clone()
    opac[5] = 0.002  # below 1/255: culled
    Ks = Ks.clone()
    Ks[2, 0, 1], Ks[2, 1, 1] = 3.0, 1.2 * Ks[2, 1, 1]
    g = torch.Generator().manual_seed(1)
    w2d, wd, wc = (torch.randn(*shape, generator=g, dtype=dtype) for shape in ((C, 400, 2), (C, 400), (C, 400, 3)))
    res = []
    for impl in (render_torch, project_numba):
        leaves = [t.clone().requires_grad_(True) for t in (means, quats, scales)]
        pr = impl.project_gaussians(*leaves, viewmats, Ks, W, H, opacities=opac)
        loss = (pr.means2d * w2d).sum() + (pr.depths * wd).sum() + (pr.conics * wc * 1e-3).sum()
        loss.backward()
        res.append((pr, [t.grad for t in leaves]))
    (pt, gt_), (pn, gn) = res
    assert torch.equal(pt.radii, pn.radii) and pn.radii.dtype == torch.int32
    assert pt.radii[:, :4].eq(0).all() and pt.radii[:, 5].eq(0).all()  # the outsiders and the faint one
    assert pt.radii.gt(0).all(-1).float().mean() > 0.5
    for name in ("means2d", "depths", "conics"):
        _close(getattr(pn, name).detach(), getattr(pt, name).detach(), tol, name)
    for name, a, b in zip(("means", "quats", "scales"), gn, gt_):
        assert b.abs().max() > 0 and a[:4].eq(0).all() and a[5].eq(0).all(), name
        _close(a, b, tol, f"grad {name}")


def test_absgrad_matches_torch_backend():
    W, H, C = 45, 38, 2
    scene, viewmats, Ks = _random_scene(300, W, H, C, 3, seed=8, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    wc = torch.randn(C, H, W, 3, generator=g, dtype=torch.float64)
    wa = torch.randn(C, H, W, 1, generator=g, dtype=torch.float64)
    res = {}
    for backend in ("torch", "numba"):
        _, _, meta, _ = _grads(backend, _leaves(scene, torch.float64), None, viewmats, Ks, W, H, wc, wa, absgrad=True)
        res[backend] = (meta["means2d"].grad, meta["means2d"].absgrad)
    (g_t, ag_t), (g_n, ag_n) = res["torch"], res["numba"]
    assert ag_n.shape == (C, 300, 2) and ag_n.dtype == torch.float64
    assert (ag_n > g_n.abs() + 1e-9).any() and (ag_n >= g_n.abs() - 1e-12).all()
    _close(ag_n, ag_t, 1e-9, "absgrad")
    _close(g_n, g_t, 1e-9, "means2d.grad")


def test_expanded_colours_equal_a_contiguous_copy():
    """(C, N, D) colours may be a broadcast view; the result must not depend on it."""
    W, H, C = 30, 22, 3
    scene, viewmats, Ks = _random_scene(80, W, H, C, 5, seed=9, dtype=torch.float64)
    means, quats, scales, opacities, colors = scene
    proj = project_gaussians(means, quats, scales, viewmats, Ks, W, H, opacities=opacities)
    opac = opacities[None].expand(C, -1)
    runs = []
    for cols in (colors[None].expand(C, -1, -1), colors[None].expand(C, -1, -1).contiguous()):
        cols = cols.detach().requires_grad_(True)
        img, alpha = composite(proj.means2d.detach(), proj.conics.detach(), cols, opac, proj.radii, proj.depths, W, H)
        img.sum().backward()
        runs.append((img, alpha, cols.grad))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- determinism


def _determinism_run(threads: int) -> list[np.ndarray]:
    """Outputs and every gradient of one float32 composite on ``threads`` numba threads.

    composite() is called directly on fixed (detached) projections, so that only numba
    kernels and fixed-order numpy sums are involved (torch's own multi-threaded
    reductions in the projection's backward are not bitwise thread-independent).
    """
    W, H, C, D = 70, 53, 2, 4
    scene, viewmats, Ks = _random_scene(1500, W, H, C, D, seed=13, dtype=torch.float32)
    means, quats, scales, opacities, colors = scene
    proj = project_gaussians(means, quats, scales, viewmats, Ks, W, H, opacities=opacities)
    g = torch.Generator().manual_seed(3)
    wc = torch.randn(C, H, W, D, generator=g)
    wa = torch.randn(C, H, W, 1, generator=g)
    leaves = [t.detach().clone().requires_grad_(True) for t in (
        proj.means2d, proj.conics, colors[None].expand(C, -1, -1), opacities[None].expand(C, -1),
        torch.rand(C, D, generator=g))]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)  # numba uses min(torch threads, its pool)
    try:
        img, alpha = composite(leaves[0], leaves[1], leaves[2], leaves[3], proj.radii, proj.depths, W, H,
                               backgrounds=leaves[4], absgrad=True)
        ((img * wc).sum() + (alpha * wa).sum()).backward()
    finally:
        torch.set_num_threads(old)
    return [t.detach().numpy().copy() for t in [img, alpha, leaves[0].absgrad] + [t.grad for t in leaves]]


def _check_determinism() -> None:
    """1 vs 2 numba threads and two repeated calls: bit-identical (run here or in a child)."""
    used = []
    real_set = numba.set_num_threads

    def spy(n):
        used.append(n)
        real_set(n)

    numba.set_num_threads = spy
    try:
        one_a = _determinism_run(1)
        assert set(used[::2]) == {1}, used  # every kernel call ran on one thread
        used.clear()
        one_b = _determinism_run(1)
        two = _determinism_run(2)
        assert 2 in used, used  # the two-thread run really used two threads
    finally:
        numba.set_num_threads = real_set
    assert float(np.abs(one_a[2]).max()) > 0
    for a, b, c in zip(one_a, one_b, two):
        assert a.tobytes() == b.tobytes()  # repeated call
        assert a.tobytes() == c.tobytes()  # 1 vs 2 threads


def test_deterministic_for_thread_counts_and_repeats():
    if numba.config.NUMBA_NUM_THREADS >= 2:
        _check_determinism()
        return
    # This process's numba pool has one thread (NUMBA_NUM_THREADS=1): check in a child.
    env = dict(os.environ, NUMBA_NUM_THREADS="2", OMP_NUM_THREADS="1")
    here = Path(__file__).resolve()
    code = (f"import sys; sys.path.insert(0, {str(here.parent)!r}); "
            "import test_render_numba as t; t._check_determinism(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_torch_thread_count_survives_numba(tmp_path):
    """Starting numba's OpenMP pool resets omp's thread count, which torch reads as its
    own: a fresh process on one torch thread must stay on one after numba calls."""
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import test_render_numba as t\n"
        "from npga.splatting.render import rasterize\n"
        "scene, viewmats, Ks = t._random_scene(40, 24, 20, 1, 3, seed=1, dtype=torch.float64)\n"
        "img, _, _ = rasterize(*t._leaves(scene, torch.float64), viewmats, Ks, 24, 20, backend='numba')\n"
        "n1 = torch.get_num_threads(); img.sum().backward()\n"
        "print('threads', n1, torch.get_num_threads())\n"
    )
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "threads 1 1"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_clamped_alpha_passes_no_gradient(dtype):
    """Where o exp(-sigma) > 0.999 alpha is clamped and, as in gsplat, does not move."""
    from test_render import clamped_scene

    W, H, viewmats, Ks, tensors = clamped_scene()
    tol = 1e-5 if dtype == torch.float64 else 1e-4
    _compare_with_brute_force(tensors, viewmats, Ks, W, H, None, dtype, tol)


@pytest.mark.parametrize("dtype,eps", [(np.float32, 2.0**-23), (np.float64, 2.0**-52)])
def test_kernel_exponential_is_accurate(dtype, eps):
    """The kernels' exp(-s) (plain arithmetic, for SIMD): relative error below 2^-p on [0, 80]."""
    s = np.concatenate([np.linspace(0, 80, 200_001), np.random.default_rng(0).uniform(0, 6, 100_000)]).astype(dtype)
    ours = render_numba.exp_neg_array(s)
    assert ours.dtype == dtype
    exact = np.exp(-s.astype(np.longdouble))  # 64-bit mantissa on x86; float64 judges float32 well
    rel = np.abs(ours.astype(np.longdouble) - exact) / exact
    # Without extended precision (long double = double) the float64 reference has its own ulp.
    tol = eps if np.finfo(np.longdouble).eps < eps else 2 * eps
    assert float(rel.max()) <= tol, float(rel.max()) / eps


# --------------------------------------------------------------------------- dispatch and errors


def test_auto_picks_numba_on_cpu_and_torch_without_numba(monkeypatch):
    W, H = 20, 18
    scene, viewmats, Ks = _random_scene(10, W, H, 1, 3, seed=0, dtype=torch.float64)
    _, _, meta = rasterize(*scene, viewmats, Ks, W, H)
    assert meta["backend"] == "numba"
    assert render._choose_backend("auto", torch.zeros(1, 3, dtype=torch.float16)) == "torch"  # numba: f32/f64
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` now fails
    _, _, meta = rasterize(*scene, viewmats, Ks, W, H)
    assert meta["backend"] == "torch"


def test_numba_backend_refuses_cuda_tensors():
    fake = torch.empty(0, device="meta")  # only .device is read before the error

    class OnCuda:
        device = torch.device("cuda", 0)

    with pytest.raises(ValueError, match="backend='numba' needs CPU tensors, got tensors on cuda:0"):
        render._choose_backend("numba", OnCuda())
    with pytest.raises(ValueError, match="needs CPU tensors, got means2d on meta"):
        composite(fake.new_zeros(1, 2, 2), fake.new_zeros(1, 2, 3), fake.new_zeros(1, 2, 3),
                  fake.new_zeros(1, 2), fake.new_zeros(1, 2, 2, dtype=torch.int32), fake.new_zeros(1, 2), 8, 8)


def _inputs(C=2, N=5, D=3, dtype=torch.float32):
    return dict(
        means2d=torch.rand(C, N, 2, dtype=dtype) * 8, conics=torch.ones(C, N, 3, dtype=dtype) * torch.tensor(
            [1.0, 0.0, 1.0], dtype=dtype), colors=torch.rand(C, N, D, dtype=dtype),
        opacities=torch.full((C, N), 0.5, dtype=dtype), radii=torch.full((C, N, 2), 3, dtype=torch.int32),
        depths=torch.rand(C, N, dtype=dtype) + 1, width=8, height=8,
    )


@pytest.mark.parametrize(
    "change,match",
    [
        ({"means2d": torch.zeros(2, 5, 2, dtype=torch.float16)}, "float32 and float64, got means2d of dtype torch.float16"),
        ({"means2d": torch.zeros(2, 5, 2, dtype=torch.bfloat16)}, "got means2d of dtype torch.bfloat16"),
        ({"colors": torch.zeros(2, 5, 3, dtype=torch.float64)}, "colors has dtype torch.float64"),
        ({"conics": torch.zeros(2, 5, 2)}, r"conics must be \(2, 5, 3\), got \(2, 5, 2\)"),
        ({"colors": torch.zeros(2, 6, 3)}, r"colors must be \(2, 5, D\), got \(2, 6, 3\)"),
        ({"opacities": torch.zeros(5)}, r"opacities must be \(2, 5\), got \(5,\)"),
        ({"radii": torch.zeros(2, 5, 2)}, "radii must be an integer tensor"),
        ({"depths": torch.zeros(2, 4)}, r"depths must be \(2, 5\)"),
        ({"backgrounds": torch.zeros(2, 4)}, r"backgrounds must be \(2, 3\), got \(2, 4\)"),
        ({"width": 0}, "width and height must be positive ints, got 0 x 8"),
    ],
)
def test_bad_input_is_named(change, match):
    kw = _inputs()
    composite(**kw)  # the unchanged inputs are fine
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        composite(**kw)


def test_numba_threads_follow_torch(monkeypatch):
    """min(torch threads, numba pool): a one-thread torch process stays on one thread."""
    seen = []
    real = numba.set_num_threads
    monkeypatch.setattr(numba, "set_num_threads", lambda n: (seen.append(n), real(n)))
    kw = _inputs(dtype=torch.float64)
    composite(**kw)
    assert seen and seen[0] == 1
