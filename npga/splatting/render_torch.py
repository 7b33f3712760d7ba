"""The pure-PyTorch backend of :func:`npga.splatting.render.rasterize` (any device, differentiable).

Two stages, the same as gsplat's CUDA pipeline (and the original 3DGS rasterizer of
Kerbl et al. 2023, Sec. 4 and 6):

1. :func:`project_gaussians` -- EWA splatting (Zwicker et al. 2001): each 3D Gaussian
   N(mu, Sigma) becomes a 2D Gaussian on the image with mean pi(mu) and covariance
   ``J W Sigma W^T J^T`` (3DGS Eq. 5), where W is the camera rotation and J the Jacobian
   of the perspective projection at the Gaussian's centre, clamped to ``FOV_MARGIN``
   beyond the image (as the reference code does). ``eps2d I`` is then added: a dilation
   from the 3DGS reference code, not part of Eq. 5 and not EWA's low-pass filter. Autograd
   handles its backward: it is a few (C, N)-sized tensors.
2. :func:`composite` -- front-to-back alpha compositing (3DGS Eq. 3) of every pixel's
   Gaussians, sorted by depth::

       C(p) = sum_i c_i alpha_i T_i + T_final * background,   T_i = prod_{j<i} (1 - alpha_j)
       alpha_i = min(0.999, o_i exp(-0.5 d^T Sigma'^-1 d)),   d = mu'_i - p

   Pairs with alpha < 1/255 are skipped, and a pixel stops *before* the Gaussian that
   would push its transmittance to 1e-4 or below -- gsplat's rules, so that both
   backends draw the same image.

The CPU has no tiles of threads sharing memory, so instead of gsplat's per-tile lists
this backend builds one flat list of (pixel, Gaussian) pairs: every pixel inside each
Gaussian's opacity-aware bounding box, kept when its alpha reaches 1/255. Gaussians are
ordered by depth once; a stable sort of the pairs by pixel then leaves each pixel's
pairs in depth order, and transmittance is a segmented cumulative sum of
``log(1 - alpha)``. The backward pass is written by hand (:class:`_Composite`), as
gsplat's is, because autograd through millions of pairs costs several times more.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0  # a pair whose alpha is below this is skipped (gsplat's ALPHA_THRESHOLD)
ALPHA_MAX = 0.999  # alpha is clamped here so that 1 - alpha never reaches 0
T_MIN = 1e-4  # a pixel stops before the Gaussian that would push T to this or below
EXTEND_3SIGMA = 3.33  # box half-size in sigmas when no opacity is given (gsplat's constant)
FOV_MARGIN = 0.3  # the Jacobian is evaluated at most 0.3 tan(fov) beyond the image edge
PAIR_BUDGET = 1 << 22  # candidate pairs generated at once (bounds transient memory)
CHANNEL_BUDGET = 1 << 23  # pair x channel elements handled at once for wide colours


class Projection(NamedTuple):
    """Per camera and Gaussian screen-space quantities; culled entries have radii 0."""

    radii: Tensor  # (C, N, 2) int32, half-size of the screen box in pixels (0 = culled)
    means2d: Tensor  # (C, N, 2) pixel coordinates of the projected centres
    depths: Tensor  # (C, N) camera-space z
    conics: Tensor  # (C, N, 3) upper triangle (a, b, c) of the inverse 2D covariance


# --------------------------------------------------------------------------- projection


def project_gaussians(
    means: Tensor,  # (N, 3)
    quats: Tensor,  # (N, 4) wxyz, unnormalised
    scales: Tensor,  # (N, 3) standard deviations (activated)
    viewmats: Tensor,  # (C, 4, 4) world-to-camera
    Ks: Tensor,  # (C, 3, 3) intrinsics in pixels
    width: int,
    height: int,
    *,
    opacities: Tensor | None = None,  # (N,) activated; enables opacity-aware radii
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> Projection:
    """EWA projection of 3D Gaussians into C pinhole cameras (3DGS Eq. 5).

    Matches gsplat 1.5.3: without ``opacities`` the radii are gsplat's pure-torch
    reference ``ceil(3.33 sigma)`` per axis; with them they are its CUDA kernel's
    opacity-aware radii ``ceil(min(3.33, sqrt(2 ln(255 o))) sigma)`` -- beyond that
    distance alpha < 1/255, so no pixel outside the box can receive the Gaussian -- and
    Gaussians with o < 1/255 are culled. A Gaussian is also culled when its depth is not
    in (near_plane, far_plane) or its box misses the image. Culled entries of means2d,
    depths and conics are 0 and receive no gradient.
    """
    from npga.splatting.gaussians import (
        quat_to_rotmat,  # late: gaussians.py may import this package
    )

    dtype = means.dtype
    R = viewmats[:, :3, :3]  # (C, 3, 3)
    t = viewmats[:, :3, 3]  # (C, 3)
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # (C, N, 3)
    M = quat_to_rotmat(quats) * scales[:, None, :]  # (N, 3, 3) = R_g S
    covars = M @ M.transpose(-1, -2)  # (N, 3, 3)
    covars_c = torch.einsum("cij,njk,clk->cnil", R, covars, R)  # (C, N, 3, 3)

    x, y, z = means_c.unbind(-1)  # (C, N)
    in_depth = (z > near_plane) & (z < far_plane)
    # Culled Gaussians may sit at z = 0; a safe z keeps their (discarded) values finite,
    # so that zero upstream gradients cannot turn into 0 * inf = NaN.
    zs = torch.where(in_depth, z, torch.ones_like(z))

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # (C, 1)
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    # The Jacobian is linearised at a point clamped to just outside the field of view:
    # far off-axis Gaussians would otherwise get huge, badly conditioned 2D covariances.
    xc = zs * torch.clamp(
        x / zs, min=-(cx / fx + FOV_MARGIN * tan_fovx), max=(width - cx) / fx + FOV_MARGIN * tan_fovx
    )
    yc = zs * torch.clamp(
        y / zs, min=-(cy / fy + FOV_MARGIN * tan_fovy), max=(height - cy) / fy + FOV_MARGIN * tan_fovy
    )
    # J = [[fx/z, 0, -fx x/z^2], [0, fy/z, -fy y/z^2]]; cov2d = J Sigma_c J^T, by hand.
    j00, j02 = fx / zs, -fx * xc / zs**2
    j11, j12 = fy / zs, -fy * yc / zs**2
    sxx, sxy, sxz = covars_c[..., 0, 0], covars_c[..., 0, 1], covars_c[..., 0, 2]
    syy, syz, szz = covars_c[..., 1, 1], covars_c[..., 1, 2], covars_c[..., 2, 2]
    a = j00 * j00 * sxx + 2 * j00 * j02 * sxz + j02 * j02 * szz + eps2d
    b = j00 * j11 * sxy + j00 * j12 * sxz + j02 * j11 * syz + j02 * j12 * szz
    c = j11 * j11 * syy + 2 * j11 * j12 * syz + j12 * j12 * szz + eps2d
    det = a * c - b * b
    det_safe = det.clamp(min=1e-10)
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # (C, N, 3)

    u = (Ks[:, None, 0, 0] * x + Ks[:, None, 0, 1] * y + Ks[:, None, 0, 2] * zs) / zs
    v = (Ks[:, None, 1, 0] * x + Ks[:, None, 1, 1] * y + Ks[:, None, 1, 2] * zs) / zs
    means2d = torch.stack([u, v], dim=-1)  # (C, N, 2)

    with torch.no_grad():
        valid = in_depth & (det > 0)
        if opacities is None:
            extend = torch.full_like(z, EXTEND_3SIGMA)
        else:
            o = opacities.detach().to(dtype).expand_as(z)
            valid &= o >= ALPHA_MIN
            extend = torch.sqrt(2.0 * torch.log(o.clamp(min=ALPHA_MIN) / ALPHA_MIN))
            extend = extend.clamp(max=EXTEND_3SIGMA)
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp(min=0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp(min=0)))
        ud, vd = u.detach(), v.detach()
        valid &= (ud + rx > 0) & (ud - rx < width) & (vd + ry > 0) & (vd - ry < height)
        radii = (torch.stack([rx, ry], dim=-1) * valid[..., None]).to(torch.int32)

    zero = torch.zeros((), dtype=dtype, device=means.device)
    return Projection(
        radii=radii,
        means2d=torch.where(valid[..., None], means2d, zero),
        depths=torch.where(valid, z, zero),
        conics=torch.where(valid[..., None], conics, zero),
    )


# --------------------------------------------------------------------------- pairs


class _Pairs(NamedTuple):
    """Contributing (pixel, Gaussian) pairs, sorted by pixel and, within a pixel, by depth.

    ``gid`` indexes the visible list (see :func:`_visible`); the ``seg_*`` fields
    describe each covered pixel's run of pairs.
    """

    gid: Tensor  # (M,) int64
    pix: Tensor  # (M,) int64 flat pixel index c * H * W + y * W + x
    alpha: Tensor  # (M,) 0 for the few pairs just outside the alpha >= 1/255 region
    dx: Tensor  # (M,) projected centre minus pixel centre, x
    dy: Tensor  # (M,)
    trans: Tensor  # (M,) transmittance T_i in front of the pair
    seg_len: Tensor  # (S,) number of pairs of each covered pixel
    seg_pix: Tensor  # (S,) flat index of each covered pixel
    seg_tfinal: Tensor  # (S,) transmittance behind the pixel's last pair


def _visible(radii: Tensor, depths: Tensor) -> Tensor:
    """Flat (C * N) indices of unculled entries, nearest first (ties: lower index first)."""
    flat = torch.nonzero(radii.reshape(-1, 2).gt(0).all(-1)).squeeze(1)
    order = torch.sort(depths.reshape(-1)[flat], stable=True).indices
    return flat[order]


def _expand(counts: Tensor) -> tuple[Tensor, Tensor]:
    """For runs of the given lengths: each element's run and its position in the run."""
    total = int(counts.sum())
    run = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts, output_size=total)
    starts = torch.cumsum(counts, 0) - counts
    return run, torch.arange(total, device=counts.device) - starts.index_select(0, run)


def _rows(means2d: Tensor, conics: Tensor, opac: Tensor, radii: Tensor, cams: Tensor, width: int, height: int):
    """Every image row crossed by each visible Gaussian, with the row's pixel interval.

    The interval holds exactly the pixels where 0.5 d^T Q d <= ln(255 o), i.e. where
    alpha can reach 1/255 (widened a little against rounding; the exact test follows
    per pair). Scanning the ellipse row by row instead of its bounding box skips the
    box's corners, a third of the candidates for round splats and more for thin ones.
    """
    dtype = means2d.dtype
    mx, my = means2d.unbind(-1)
    ry = radii[:, 1].to(dtype)
    y0 = torch.ceil(my - ry - 0.5).clamp(min=0).long()
    y1 = torch.floor(my + ry - 0.5).clamp(max=height - 1).long()
    g, k = _expand((y1 - y0 + 1).clamp(min=0))  # row -> Gaussian, row offset
    y = y0.index_select(0, g) + k
    dy = my.index_select(0, g) - (y.to(dtype) + 0.5)
    q = conics.index_select(0, g)
    q0, q1, q2 = q.unbind(-1)
    smax = torch.log(opac.clamp(min=ALPHA_MIN) / ALPHA_MIN).index_select(0, g)
    # 0.5 (q0 dx^2 + 2 q1 dx dy + q2 dy^2) <= smax, solved for dx on this row.
    disc = (q1 * dy) ** 2 - q0 * (q2 * dy * dy - 2.0 * smax * (1 + 1e-5))
    half = torch.sqrt(disc.clamp(min=0)) / q0 + 1e-3
    xc = mx.index_select(0, g) + q1 * dy / q0 - 0.5  # pixel x + 0.5 = mean_x - dx
    x0 = torch.ceil(xc - half).clamp(min=0).long()
    x1 = torch.floor(xc + half).clamp(max=width - 1).long()
    n = torch.where(disc >= 0, (x1 - x0 + 1).clamp(min=0), torch.zeros_like(x0))
    base = (cams.index_select(0, g) * height + y) * width + x0
    ox = mx.index_select(0, g) - (x0.to(dtype) + 0.5)  # dx of the row's first pixel
    return g, n, base, ox, dy, q0, q1 * dy, 0.5 * q2 * dy * dy, opac.index_select(0, g)


def _row_pairs(rows, lo: int, hi: int) -> tuple[Tensor, ...]:
    """Pairs of rows lo..hi in row (so depth) order: row, pixel, alpha, dx.

    The few pairs just outside the exact alpha >= 1/255 region get alpha = 0 instead
    of being removed: such a pair changes neither the image nor any gradient, and
    masking is cheaper than compacting every array for a handful of them.
    """
    _, n, base, ox, _, a2, b, c, o = (t[lo:hi] for t in rows)
    r, k = _expand(n)
    dx = ox.index_select(0, r) - k.to(ox.dtype)
    # sigma = 0.5 q0 dx^2 + q1 dx dy + 0.5 q2 dy^2, with the dy terms precomputed per row
    sigma = dx * (0.5 * a2.index_select(0, r) * dx + b.index_select(0, r)) + c.index_select(0, r)
    alpha = torch.clamp(o.index_select(0, r) * torch.exp(-sigma), max=ALPHA_MAX)
    alpha.masked_fill_((sigma < 0) | (alpha < ALPHA_MIN), 0.0)
    return r + lo, base.index_select(0, r) + k, alpha, dx


@torch.no_grad()
def _build_pairs(
    means2d: Tensor, conics: Tensor, opac: Tensor, radii: Tensor, cams: Tensor, width: int, height: int
) -> _Pairs:
    """All contributing pairs of the visible Gaussians (inputs already in depth order)."""
    device, dtype = means2d.device, means2d.dtype
    rows = _rows(means2d, conics, opac, radii, cams, width, height)
    # Generate in slices of rows so that huge splats cannot exhaust memory at once.
    cum, R, parts, lo = torch.cumsum(rows[1], 0), rows[1].numel(), [], 0
    while lo < R:
        done = int(cum[lo - 1]) if lo > 0 else 0
        hi = min(R, max(lo + 1, int(torch.searchsorted(cum, done + PAIR_BUDGET, right=True))))
        parts.append(_row_pairs(rows, lo, hi))
        lo = hi
    if parts:
        r, pix, alpha, dx = (torch.cat(p) if len(p) > 1 else p[0] for p in zip(*parts))
    else:
        r = pix = torch.zeros(0, dtype=torch.long, device=device)
        alpha = dx = torch.zeros(0, dtype=dtype, device=device)

    # Pairs were made nearest Gaussian first: a stable sort by pixel keeps that order.
    # (int32 keys sort several times faster than int64 ones on the CPU.)
    small = int(cams.max()) + 1 < 2**31 // (width * height) if cams.numel() else True
    sorted_pix, order = torch.sort(pix.to(torch.int32) if small else pix, stable=True)
    pix = sorted_pix.long()
    r, alpha, dx = (t.index_select(0, order) for t in (r, alpha, dx))

    # Transmittance: a segmented exclusive cumulative sum of log(1 - alpha), accumulated
    # in float64 -- the running sum over all pixels grows large and float32 would lose
    # the increments.
    seg_pix, seg_len = torch.unique_consecutive(pix, return_counts=True)
    S, M = seg_pix.numel(), pix.numel()
    seg_of = torch.repeat_interleave(torch.arange(S, device=device), seg_len, output_size=M)
    seg_first = torch.cumsum(seg_len, 0) - seg_len
    log1m = torch.log1p(-alpha)
    cs = torch.cumsum(log1m, 0, dtype=torch.float64)
    before_seg = cs.index_select(0, seg_first) - log1m.index_select(0, seg_first)  # (S,)
    log_after = cs - before_seg.index_select(0, seg_of)
    trans = torch.exp(log_after - log1m).to(dtype)
    # A pixel stops before the pair that would bring T to T_MIN or below; T only falls,
    # so the kept pairs are a prefix of each pixel's run (never empty: alpha <= 0.999).
    keep = log_after > math.log(T_MIN)
    if bool(keep.all()):
        kept_len = seg_len
    else:
        kept_len = torch.zeros(S, dtype=torch.long, device=device).index_add_(0, seg_of, keep.long())
        idx = torch.nonzero(keep).squeeze(1)
        r, pix, alpha, dx, trans = (t.index_select(0, idx) for t in (r, pix, alpha, dx, trans))
    seg_tfinal = torch.exp(log_after.index_select(0, seg_first + kept_len - 1)).to(dtype)
    gid, dy = rows[0].index_select(0, r), rows[4].index_select(0, r)
    return _Pairs(gid, pix, alpha, dx, dy, trans, kept_len, seg_pix, seg_tfinal)


def _csr(
    rows: int, cols: int, row_of: Tensor | None, col_idx: Tensor, values: Tensor, row_len: Tensor | None = None
) -> Tensor:
    """A (rows x cols) CSR matrix from entries already grouped by row (``row_of`` sorted)."""
    counts = torch.bincount(row_of, minlength=rows) if row_len is None else row_len
    crow = torch.zeros(rows + 1, dtype=torch.long, device=values.device)
    torch.cumsum(counts, 0, out=crow[1:])
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we use only CSR @ dense
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col_idx, values, (rows, cols), check_invariants=False)


# --------------------------------------------------------------------------- compositing


class _Composite(torch.autograd.Function):
    """Front-to-back compositing with a hand-written backward (gsplat's, over flat pairs).

    The per-pixel sums over pairs are sparse matrix products: the image is W @ colours
    with W the (pixels x Gaussians) matrix of weights alpha_i T_i, and the colour
    gradient is W^T @ dL/dimage.
    """

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, radii, depths, width, height, absgrad):
        # means2d (C, N, 2), conics (C, N, 3), colors (C, N, D), opacities (C, N),
        # backgrounds (C, D) or None, radii (C, N, 2), depths (C, N)
        C, N, D = colors.shape
        dtype, device = means2d.dtype, means2d.device
        vid = _visible(radii, depths)  # (V,) flat C * N indices, nearest first
        cam, gauss = vid // N, vid % N
        m2d = means2d.detach().reshape(-1, 2).index_select(0, vid)
        con = conics.detach().reshape(-1, 3).index_select(0, vid)
        opa = opacities.detach()[cam, gauss]
        col = colors.detach()[cam, gauss]  # (V, D); works on expanded (broadcast) colours
        pairs = _build_pairs(m2d, con, opa, radii.reshape(-1, 2).index_select(0, vid), cam, width, height)

        P, V = C * height * width, vid.numel()
        weight = pairs.alpha * pairs.trans  # (M,) alpha_i T_i
        W = _csr(pairs.seg_pix.numel(), V, None, pairs.gid, weight, row_len=pairs.seg_len)
        image = torch.zeros(P, D, dtype=dtype, device=device)
        if V and pairs.gid.numel():
            image[pairs.seg_pix] = W @ col
        t_final = torch.ones(P, dtype=dtype, device=device)
        t_final[pairs.seg_pix] = pairs.seg_tfinal
        if backgrounds is not None:
            image = image.view(C, height * width, D).add_(
                t_final.view(C, -1, 1) * backgrounds.detach()[:, None, :]
            ).view(P, D)

        ctx.save_for_backward(
            means2d, vid, col, opa, con, t_final, backgrounds if backgrounds is not None else torch.empty(0),
            *pairs,
        )
        ctx.meta = (C, N, D, width, height, backgrounds is not None, absgrad)
        return image.view(C, height, width, D), (1.0 - t_final).view(C, height, width, 1)

    @staticmethod
    def backward(ctx, v_image, v_alpha_img):
        C, N, D, width, height, has_bg, absgrad = ctx.meta
        means2d, vid, col, opa, con, t_final, bg, *rest = ctx.saved_tensors
        p = _Pairs(*rest)
        dtype, device = col.dtype, col.device
        V, P, M = vid.numel(), C * height * width, p.gid.numel()
        g_img = v_image.reshape(P, D).to(dtype).contiguous()
        g_a = v_alpha_img.reshape(P).to(dtype)
        weight = p.alpha * p.trans

        # Colour gradient W^T g: regroup the pairs by Gaussian (stable int32 sort) to
        # build W^T in CSR form; a transposed product of W itself is far slower on CPU.
        by_g = torch.sort(p.gid.to(torch.int32), stable=True).indices
        Wt = _csr(V, P, p.gid.index_select(0, by_g), p.pix.index_select(0, by_g), weight.index_select(0, by_g))
        v_col = Wt @ g_img if M else torch.zeros(V, D, dtype=dtype, device=device)

        dot = torch.empty(M, dtype=dtype, device=device)  # (M,) c_i . dL/dC(p)
        for i, j in _pair_chunks(M, D):
            dot[i:j] = (col.index_select(0, p.gid[i:j]) * g_img.index_select(0, p.pix[i:j])).sum(-1)

        # dC/dalpha_i = T_i c_i - (sum_{j>i} w_j c_j + T_final bg) / (1 - alpha_i);
        # dA/dalpha_i = T_final / (1 - alpha_i). The suffix sums are segmented, in float64.
        seg_of = torch.repeat_interleave(torch.arange(p.seg_len.numel(), device=device), p.seg_len, output_size=M)
        cs = torch.cumsum((weight * dot).double(), 0)
        last = torch.cumsum(p.seg_len, 0) - 1
        behind = (cs.index_select(0, last).index_select(0, seg_of) - cs).to(dtype)
        seg_g = g_a.index_select(0, p.seg_pix)
        if has_bg:
            cam_of = torch.div(p.seg_pix, height * width, rounding_mode="floor")
            seg_g = seg_g - (g_img.index_select(0, p.seg_pix) * bg.index_select(0, cam_of)).sum(-1)
        v_alpha = p.trans * dot + ((p.seg_tfinal * seg_g).index_select(0, seg_of) - behind) / (1.0 - p.alpha)

        # A clamped alpha (0.999) does not move with the Gaussian: no gradient, as in gsplat.
        # Unclamped, alpha = o exp(-sigma): d alpha / d sigma = -alpha, d alpha / d o = alpha / o.
        live = p.alpha < ALPHA_MAX
        v_sigma = torch.where(live, -p.alpha * v_alpha, 0.0)
        q0, q1, q2 = (t.index_select(0, p.gid) for t in con.unbind(-1))
        pair_x = v_sigma * (q0 * p.dx + q1 * p.dy)
        pair_y = v_sigma * (q1 * p.dx + q2 * p.dy)

        def per_gaussian(values: Tensor) -> Tensor:  # (M,) -> (V,), summed over pairs
            return torch.zeros(V, dtype=dtype, device=device).index_add_(0, p.gid, values)

        def scatter(values: Tensor, shape: tuple[int, ...]) -> Tensor:  # (V, ...) -> (C, N, ...)
            out = torch.zeros((C * N,) + values.shape[1:], dtype=dtype, device=device)
            out[vid] = values
            return out.view(shape)

        grads = [None] * 10
        if ctx.needs_input_grad[0]:
            grads[0] = scatter(torch.stack([per_gaussian(pair_x), per_gaussian(pair_y)], -1), (C, N, 2))
        if absgrad:
            abs_xy = torch.stack([per_gaussian(pair_x.abs()), per_gaussian(pair_y.abs())], -1)
            means2d.absgrad = scatter(abs_xy, (C, N, 2))
        if ctx.needs_input_grad[1]:
            v_con = torch.stack(
                [per_gaussian(0.5 * v_sigma * p.dx * p.dx), per_gaussian(v_sigma * p.dx * p.dy),
                 per_gaussian(0.5 * v_sigma * p.dy * p.dy)], -1,
            )
            grads[1] = scatter(v_con, (C, N, 3))
        if ctx.needs_input_grad[2]:
            grads[2] = scatter(v_col, (C, N, D))
        if ctx.needs_input_grad[3]:
            vis = p.alpha / opa.index_select(0, p.gid)
            grads[3] = scatter(per_gaussian(torch.where(live, vis * v_alpha, 0.0)), (C, N))
        if has_bg and ctx.needs_input_grad[4]:
            grads[4] = (g_img.view(C, -1, D) * t_final.view(C, -1, 1)).sum(1)
        return tuple(grads)


def _pair_chunks(m: int, channels: int) -> list[tuple[int, int]]:
    """Ranges of pairs so that (pairs x channels) temporaries stay under CHANNEL_BUDGET."""
    step = max(1, CHANNEL_BUDGET // max(1, channels))
    return [(i, min(m, i + step)) for i in range(0, m, step)]


def composite(
    means2d: Tensor,  # (C, N, 2)
    conics: Tensor,  # (C, N, 3)
    colors: Tensor,  # (C, N, D) (an expanded view is fine)
    opacities: Tensor,  # (C, N)
    radii: Tensor,  # (C, N, 2) int, 0 = culled
    depths: Tensor,  # (C, N), sets the compositing order
    width: int,
    height: int,
    backgrounds: Tensor | None = None,  # (C, D)
    absgrad: bool = False,
) -> tuple[Tensor, Tensor]:
    """Alpha-composite projected Gaussians front to back (3DGS Eq. 3, gsplat's rules).

    Returns ``colors`` (C, H, W, D) and ``alphas`` (C, H, W, 1) = 1 - final transmittance.
    Differentiable in means2d, conics, colors, opacities and backgrounds. With
    ``absgrad`` the backward pass also stores ``means2d.absgrad``, the per-Gaussian sum
    of absolute per-pixel gradients (AbsGS), as gsplat does.
    """
    return _Composite.apply(means2d, conics, colors, opacities, backgrounds, radii, depths, width, height, absgrad)


__all__ = ["Projection", "composite", "project_gaussians"]
