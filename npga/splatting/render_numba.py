"""A compiled CPU backend for :func:`npga.splatting.render.rasterize`: tile-based compositing in numba.

:mod:`npga.splatting.render_torch` composites a flat list of (pixel, Gaussian) pairs with tensor
operations; that is readable, but every pair costs a dozen memory round trips through
temporaries. This module does the same work the way the 3DGS CUDA rasterizer does
(Kerbl et al. 2023, Sec. 6 "Fast differentiable rasterizer for Gaussians") and its
re-implementation gsplat (``rasterize_to_pixels_fwd.cu`` / ``_bwd.cu``): one compiled
loop per image tile that keeps each pixel's running state in registers and cache.
Projection (EWA splatting, 3DGS Eq. 5) has its own compiled kernels in
:mod:`npga.splatting.project_numba`; this module replaces :func:`composite`.

The algorithm, step by step
---------------------------

1. **Binning** (:func:`_bin_gaussians`). The image of every camera is cut into 16 x 16
   pixel tiles. Each visible Gaussian (radii > 0) covers the pixels whose centres lie in
   its box ``|x + 0.5 - mean_x| <= radius_x`` (same for y); beyond that box its alpha is
   below 1/255 (the radii are opacity-aware, see ``project_gaussians``), so no other
   pixel can receive it. The Gaussian is entered into every tile its box touches. The
   Gaussians are first put in depth order (a stable sort, so equal depths keep the lower
   index first), and a stable counting sort by tile id then gives every tile its own
   list, still nearest first -- gsplat sorts (tile, depth) keys with one radix sort;
   the result is the same.

2. **Forward** (:func:`_forward_kernel`), ``prange`` over all tiles of all cameras. A
   tile owns its pixels, so threads never write to the same memory. Inside a tile the
   list is walked front to back, and each pixel applies 3DGS Eq. 3 with gsplat's rules::

       sigma = 0.5 (a dx^2 + c dy^2) + b dx dy,  d = mean2d - (x + 0.5, y + 0.5)
       alpha = min(0.999, o exp(-sigma)); skip if sigma < 0 or alpha < 1/255
       T' = T (1 - alpha); if T' <= 1e-4 the pixel is done (this Gaussian not drawn)
       C += alpha T c;  T = T'

   Every pixel meets its Gaussians in list order, so this is exactly the per-pixel
   front-to-back loop of the paper; a tile stops as soon as all its pixels are done
   (early stop). For the backward pass each pixel stores its final transmittance
   ``T_final`` and ``last``, the number of list entries up to its last drawn Gaussian.

3. **Backward** (:func:`_backward_kernel`), again one tile per task, walking the list
   back to front from the largest ``last`` of the tile (gsplat's approach). A pixel
   starts from ``T_final`` and recovers the transmittance in front of each Gaussian by
   dividing by ``1 - alpha`` (alpha is recomputed with the same code as in the
   forward pass, so the same pairs are skipped), and keeps the running suffix sum
   ``S = sum_{j behind} alpha_j T_j c_j``. With ``g = dL/dC(p)``::

       dL/dc_i     = alpha_i T_i g
       dL/dalpha_i = (T_i c_i - S / (1 - alpha_i)) . g
                     + T_final / (1 - alpha_i) (dL/dA(p) - background . g)
       dL/dsigma   = -alpha_i dL/dalpha_i,  dL/do = exp(-sigma) dL/dalpha_i  (0 if clamped)
       dL/dmean2d  = dL/dsigma (a dx + b dy, b dx + c dy)
       dL/dconic   = dL/dsigma (dx^2 / 2, dx dy, dy^2 / 2)

4. **Determinism.** On the GPU gsplat adds every pixel's contribution to its Gaussian's
   gradient with atomic adds, so the summation order -- and the last bits -- depend on
   thread timing. Here no two threads ever add into the same number: a tile's task sums
   the contributions of its pixels (in a fixed order) into one row of a
   per-intersection buffer (one row per (tile, list entry)), and
   :func:`_reduce_kernel` then sums each Gaussian's rows in tile order. The result is
   bit-identical for any number of threads and any scheduling.

Making it fast on a CPU
-----------------------

A GPU runs one thread per pixel; a CPU core has instead SIMD units (8 float32 lanes with
AVX2) and punishes unpredictable branches. So, for one Gaussian in one tile, the kernels
work on its *patch*: the tile rows its box covers, in one or both 8-column halves of the
tile (the 256 pixels are stored as two 8 x 16 blocks of lanes, so a patch is one
contiguous lane range ``i0 .. i0 + n``). For one Gaussian the pixels are independent,
so :func:`_forward_patch` and :func:`_backward_patch` give every lane of the patch the
same arithmetic, in loops over the lanes that LLVM turns into SIMD code:

a. no branches inside a lane loop, only selects: a lane that does not take part (outside
   the box's columns, alpha < 1/255, pixel stopped, or in the backward pass not reached)
   computes too and keeps its state. The exponential is written out in plain arithmetic
   (:func:`_exp_neg`: a libm call can be neither vectorised nor inlined); its relative
   error stays below 2^-23 (float32) and 2^-52 (float64), i.e. within one ulp.
b. pixel state in flat (lanes,) arrays, per-channel state as (D, lanes): the channel loop
   outside, the contiguous lane loop inside.
c. the backward's per-Gaussian sums cannot be vectorised without reordering their
   floating-point additions, which would change the bits: each lane's contributions go
   to scratch rows, and a scalar loop adds those of the lanes that take part, in lane
   order (as the per-pixel loop did), twelve running sums at a time.

What kept LLVM from vectorising these loops (numba 0.68, LLVM 22), and the remedy: a libm
call (math.floor: the :func:`_floor` intrinsic); a division, which numba guards with a
ZeroDivisionError test (``error_model="numpy"``: alpha <= 0.999, no division by zero);
int64 arithmetic, numba's type for integer sums, which halves the vector width (int32
flags instead of counts); the wraparound test of negative indices (unsigned ``i0``,
``n``); numba-inlining a function that calls an overload (:func:`_patch_alpha` is a
plain jitted function, which LLVM inlines). Array slices and views in the per-patch code
cost atomic reference-count updates, so the patch functions index the tile arrays.

Measured on the benchmark scene (12k Gaussians, 176 x 256, 1 thread) this halves the
kernels' time against the previous layout (SIMD alpha, then scalar per-pixel work on the
compacted lanes that take part): forward 14.4 -> 7.2 ms, backward 19.9 -> 12.5 ms, with
bit-identical results (benchmarks/render_backends.py for the whole render).

Arithmetic is done in the input dtype (float32 or float64), as gsplat does in float32;
constants are handed to the kernels in that dtype so that float32 inputs are not
silently promoted. ``fastmath`` is off: it would let LLVM reassociate sums and fuse
multiply-adds differently in different loops, so that the backward's recomputed alpha
could differ from the forward's and results could depend on the build.

Kernels are compiled on first use for each dtype and cached on disk (``cache=True``:
numba writes them to ``__pycache__`` beside this file, or to ``NUMBA_CACHE_DIR``). Every
call runs on ``min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)`` threads, so a
process limited to one torch thread is not oversubscribed by numba.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload
from torch import Tensor
from torch.autograd.function import once_differentiable

from npga.splatting.render_torch import ALPHA_MAX, ALPHA_MIN, T_MIN

# Start numba's thread pool now: its OpenMP layer sets omp's thread count to the pool
# size on start-up, and torch (same OpenMP runtime) would take that as its own count.
_torch_threads = torch.get_num_threads()
numba.get_num_threads()
torch.set_num_threads(_torch_threads)

TILE = 16  # tile side in pixels (gsplat's default tile_size)
HALF = 8  # a tile's lanes are two blocks of HALF columns (see _tile_setup)
BLOCK = TILE * HALF
CHUNK = 2  # tiles per scheduling chunk: tiles differ a lot in cost, so hand them out dynamically
SMAX_MARGIN = 1e-3  # slack on the sigma pre-test; alpha's own rounding is ~1e-7 relative
# _exp_neg is valid for arguments up to here; sigma > 80 would need o > 1e32 to draw.
EXP_ARG_MAX = 80.0
FAR = 1e30  # pixel centre of lanes outside the image: no Gaussian reaches it

# Column layout of the per-Gaussian parameter rows (V, 8) handed to the kernels.
P_MX, P_MY, P_A, P_B, P_C, P_O, P_SMAX = range(7)
# Column layout of the per-intersection gradient rows (M, 8 + D).
G_X, G_Y, G_A, G_B, G_C, G_O, G_ABSX, G_ABSY = range(8)
N_GRAD = 8
# Rows of the backward pass's per-lane scratch (_backward_patch).
SC_ALPHA, SC_VIS, SC_RA, SC_T, SC_FAC, SC_VA = range(6)


# --------------------------------------------------------------------------- kernels


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose IEEE bit pattern is the int32 ``bits`` (an LLVM bitcast)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _f64_from_bits(typingctx, bits):
    """The float64 whose IEEE bit pattern is the int64 ``bits`` (an LLVM bitcast)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@intrinsic
def _floor(typingctx, x):
    """floor(x) in the dtype of x, as LLVM's floor intrinsic.

    numba lowers math.floor to a call of libm's floorf / floor, which stops LLVM from
    vectorising any loop that contains it; the intrinsic becomes one SIMD rounding
    instruction (and rounds exactly like libm).
    """
    sig = x(x)

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.floor", [args[0].type])
        return builder.call(fn, args)

    return sig, codegen


def _exp_neg(s):
    """exp(-s) for 0 <= s <= EXP_ARG_MAX in the dtype of s (compiled by the overload below)."""
    return math.exp(-s)


@overload(_exp_neg, jit_options={"cache": True})
def _exp_neg_impl(s):
    """exp(-s) in plain arithmetic, so that LLVM can vectorise the loops that call it.

    A call to libm's exp can neither be vectorised nor inlined (and every live register
    is spilled around it). Cody-Waite reduction: n = round(s / ln 2), r = n ln 2 - s in
    [-ln2/2, ln2/2] with ln 2 split in a high part (exact products with small n) and a
    low part; exp(r) by its Taylor polynomial (degree 7 for float32, 13 for float64,
    truncation error below half an ulp); 2^-n built directly in the exponent bits.
    Measured relative error below 0.81 x 2^-23 (float32) and 0.78 x 2^-52 (float64), i.e.
    within an ulp (tests/test_render_numba.py).
    """
    if s == types.float32:
        def impl(s):
            n = _floor(s * np.float32(1.4426950408889634) + np.float32(0.5))
            r = (n * np.float32(0.693359375) - s) + n * np.float32(-2.12194440e-4)
            p = np.float32(1.0 / 5040)
            p = p * r + np.float32(1.0 / 720)
            p = p * r + np.float32(1.0 / 120)
            p = p * r + np.float32(1.0 / 24)
            p = p * r + np.float32(1.0 / 6)
            p = p * r + np.float32(0.5)
            p = p * r + np.float32(1.0)
            p = p * r + np.float32(1.0)
            return p * _f32_from_bits((np.int32(127) - np.int32(n)) << np.int32(23))
        return impl
    if s == types.float64:
        def impl(s):
            n = _floor(s * 1.4426950408889634 + 0.5)
            r = (n * 6.93147180369123816490e-01 - s) + n * 1.90821492927058770002e-10
            p = 1.0 / 6227020800
            p = p * r + 1.0 / 479001600
            p = p * r + 1.0 / 39916800
            p = p * r + 1.0 / 3628800
            p = p * r + 1.0 / 362880
            p = p * r + 1.0 / 40320
            p = p * r + 1.0 / 5040
            p = p * r + 1.0 / 720
            p = p * r + 1.0 / 120
            p = p * r + 1.0 / 24
            p = p * r + 1.0 / 6
            p = p * r + 0.5
            p = p * r + 1.0
            p = p * r + 1.0
            return p * _f64_from_bits((np.int64(1023) - np.int64(n)) << np.int64(52))
        return impl


@njit(cache=True, fastmath=False)
def exp_neg_array(s):
    """exp(-s) elementwise with the kernels' exponential (for the tests)."""
    out = np.empty_like(s)
    for i in range(s.size):
        out[i] = _exp_neg(s[i])
    return out


@njit(cache=True, fastmath=False)
def _patch_alpha(mx, my, a, b, c, o, smax, xs, ys, cs, xlo, xhi, half, zero, amin, amax, j):
    """sigma, alpha and exp(-sigma) of lane j of a patch, and whether the pair counts.

    Written without branches (selects only) so that the loops calling it vectorise;
    forward and backward call exactly this code, so they agree on every pair. Not
    ``inline="always"``: numba-inlined, it left the calling loops scalar (numba 0.68,
    LLVM reports "call instruction cannot be vectorized"); as a jitted function of its
    own it is compiled first and then inlined by LLVM, and the loops vectorise.
    """
    dx = mx - xs[j]
    dy = my - ys[j]
    sigma = half * (a * dx * dx + c * dy * dy) + b * dx * dy
    # exp of sigma where it lies in [0, smax] (smax <= EXP_ARG_MAX), of 0 elsewhere (NaN
    # included): those lanes are rejected below anyway (sigma > smax = ln(255 o) + margin
    # already means alpha < 1/255), and the exponential never sees an invalid argument.
    in_range = (sigma >= zero) & (sigma <= smax)
    vis = _exp_neg(sigma if in_range else zero)
    alpha = min(amax, o * vis)
    ok = (cs[j] >= xlo) & (cs[j] < xhi) & in_range & (alpha >= amin)
    return alpha, vis, ok


@njit(cache=True, fastmath=False)
def _bin_gaussians(box, cam, tiles_x, tiles_y, n_cameras):
    """Per-tile lists of Gaussian indices, each in the order of ``box`` (depth order).

    box (V, 4) int32: inclusive pixel box x0, x1, y0, y1 (empty when x0 > x1), rows in
    depth order; cam (V,) camera of each row. Returns
    tile_start (T + 1,) offsets into isect_v (M,) (row of each intersection, grouped by
    tile), and for the backward reduction g_start (V + 1,) / g_pos (M,): the
    intersections of row v are isect positions g_pos[g_start[v]:g_start[v + 1]], in
    tile order.
    """
    V = box.shape[0]
    per_cam = tiles_x * tiles_y
    n_tiles = n_cameras * per_cam
    g_start = np.zeros(V + 1, np.int64)
    tile_start = np.zeros(n_tiles + 1, np.int64)
    for v in range(V):  # count: intersections per Gaussian and per tile
        x0, x1, y0, y1 = box[v, 0], box[v, 1], box[v, 2], box[v, 3]
        n = 0
        if x0 <= x1 and y0 <= y1:
            base = cam[v] * per_cam
            for ty in range(y0 // TILE, y1 // TILE + 1):
                for tx in range(x0 // TILE, x1 // TILE + 1):
                    tile_start[base + ty * tiles_x + tx + 1] += 1
                    n += 1
        g_start[v + 1] = g_start[v] + n
    for t in range(n_tiles):
        tile_start[t + 1] += tile_start[t]
    M = g_start[V]
    fill = tile_start[:-1].copy()
    isect_v = np.empty(M, np.int32)
    g_pos = np.empty(M, np.int64)
    j = 0
    # Stable counting sort: Gaussians are visited in depth order, so each tile's list
    # comes out nearest first.
    for v in range(V):
        x0, x1, y0, y1 = box[v, 0], box[v, 1], box[v, 2], box[v, 3]
        if x0 <= x1 and y0 <= y1:
            base = cam[v] * per_cam
            for ty in range(y0 // TILE, y1 // TILE + 1):
                for tx in range(x0 // TILE, x1 // TILE + 1):
                    t = base + ty * tiles_x + tx
                    isect_v[fill[t]] = v
                    g_pos[j] = fill[t]
                    fill[t] += 1
                    j += 1
    return tile_start, isect_v, g_start, g_pos


@njit(cache=True, fastmath=False, inline="always")
def _tile_setup(t, tiles_x, per_cam, W, H, cx, cy, big, xcf, ycf, colf):
    """Tile t's camera and pixel range; fills the flat per-lane pixel centres and columns.

    The tile's 256 pixels are 256 lanes in two blocks of 8 columns x 16 rows (see
    _lane): a Gaussian whose box covers only one half of the tile touches only that
    block. Lanes outside the image get centre ``big`` (no Gaussian reaches them) and
    column TILE (outside every box).
    """
    c = t // per_cam
    ty = (t - c * per_cam) // tiles_x
    tx = t - c * per_cam - ty * tiles_x
    px0, py0 = tx * TILE, ty * TILE
    px1, py1 = min(px0 + TILE, W), min(py0 + TILE, H)  # exclusive
    for i in range(TILE * TILE):
        col = (i // BLOCK) * HALF + i % HALF
        x, y = px0 + col, py0 + (i % BLOCK) // HALF
        inside = x < W and y < H
        xcf[i] = cx[x] if inside else big
        ycf[i] = cy[y] if inside else big
        colf[i] = col if inside else TILE
    return c, px0, py0, px1, py1


@njit(cache=True, fastmath=False, inline="always")
def _lane(dx, dy):
    """Lane of the tile pixel (dx, dy): block dx // 8, then row-major 8-wide rows."""
    return (dx // HALF) * BLOCK + dy * HALF + dx % HALF


@njit(cache=True, fastmath=False, inline="always")
def _forward_patch(
    params, v, cols, consts, xlo, xhi, entry, i0, n, xcf, ycf, colf, T_tile, done, last_tile, acc, w_l,
):
    """Composite Gaussian v (list entry ``entry``) onto the patch of lanes i0 .. i0 + n;
    returns whether one of its pixels stopped.

    Tile state (see _forward_kernel): xcf, ycf, colf (lanes,) pixel centres and
    columns; T_tile, done, last_tile (lanes,) transmittance, stopped flag and number of
    entries up to the last drawn one, updated in place; acc (D, lanes) colour, updated.
    xlo, xhi: the box's columns. w_l (lanes,) scratch. i0 and n are unsigned, so that
    numba indexes without the wraparound test of negative indices (which would stop
    vectorisation).

    One Gaussian's pixels are independent, so every lane does the same arithmetic and
    the loops below are SIMD loops: no branches (selects only), contiguous lanes, the
    channel loop outside the lane loop, and 32-bit integers only (numba widens integer
    sums to int64, which would halve the vector width, so a stop is reported as a flag,
    not counted). A lane that does not take part computes too, and keeps its state.
    """
    half, one, amin, amax, tmin = consts[0], consts[1], consts[2], consts[3], consts[4]
    zero = half - half
    mx, my, a, b, cc = params[v, P_MX], params[v, P_MY], params[v, P_A], params[v, P_B], params[v, P_C]
    o, smax = params[v, P_O], params[v, P_SMAX]
    # 1) every lane: alpha, then the pixel's step. A lane takes part if the pair counts
    #    and the pixel has not stopped; then it stops (Gaussian not drawn) if
    #    T' = T (1 - alpha) <= T_MIN, else it draws with weight w = alpha T and T = T'.
    #    w > 0 for a drawn lane (alpha >= 1/255, T > T_MIN), w = 0 marks the others.
    stopped = False
    for j in range(n):
        i = i0 + j
        alpha, _, ok = _patch_alpha(mx, my, a, b, cc, o, smax, xcf, ycf, colf, xlo, xhi, half, zero,
                                    amin, amax, i)
        T = T_tile[i]
        next_T = T * (one - alpha)
        live = ok & (done[i] == np.int32(0))
        sat = next_T <= tmin
        stop = live & sat
        draw = live & (sat ^ True)
        w_l[j] = alpha * T if draw else zero
        T_tile[i] = next_T if draw else T
        done[i] = np.int32(1) if stop else done[i]
        last_tile[i] = entry if draw else last_tile[i]
        stopped |= stop
    # 2) C += w c, channel by channel over the contiguous lanes; lanes that do not draw
    #    keep their value (a select, not + 0).
    for d in range(cols.shape[1]):
        cd = cols[v, d]
        for j in range(n):
            i = i0 + j
            w = w_l[j]
            acc[d, i] = acc[d, i] + w * cd if w != zero else acc[d, i]
    return stopped


@njit(parallel=True, cache=True, fastmath=False)
def _forward_kernel(
    params, box, cols, tile_start, isect_v, cx, cy, bg, has_bg, consts, tiles_x, tiles_y,
    img, t_final, last,
):
    """Front-to-back compositing, one tile per task; fills img, t_final and last in place.

    params (V, 8) [mx, my, a, b, c, o, smax, -], box (V, 4), cols (V, D) in depth order;
    cx (W,), cy (H,) pixel centres; bg (C, D); consts [0.5, 1, 1/255, 0.999, 1e-4, big]
    in the input dtype. Outputs img (C, H, W, D), t_final (C, H, W), last (C, H, W)
    int32: every pixel is written once, by the task of its tile.
    """
    half, one, big = consts[0], consts[1], consts[5]
    zero = half - half
    C, H, W, D = img.shape
    per_cam = tiles_x * tiles_y
    for t in prange(C * per_cam):
        # The tile's pixel state in small flat buffers, one entry per lane (_tile_setup);
        # per-channel state is (D, lanes), so that a loop over the lanes of a patch is a
        # contiguous (SIMD) loop for every channel.
        xcf, ycf = np.empty(TILE * TILE, cx.dtype), np.empty(TILE * TILE, cx.dtype)
        colf = np.empty(TILE * TILE, np.int32)
        c, px0, py0, px1, py1 = _tile_setup(t, tiles_x, per_cam, W, H, cx, cy, big, xcf, ycf, colf)
        n_pix = (px1 - px0) * (py1 - py0)
        T_tile = np.full(TILE * TILE, one)  # (lanes,) transmittance
        acc = np.full((D, TILE * TILE), zero)  # (D, lanes) colour
        done = np.zeros(TILE * TILE, np.int32)  # (lanes,) 1 once the pixel has stopped
        last_tile = np.zeros(TILE * TILE, np.int32)  # (lanes,)
        w_l = np.empty(TILE * TILE, cx.dtype)  # (lanes,) scratch of one patch: weight alpha T
        n_done = 0
        start = tile_start[t]
        for k in range(start, tile_start[t + 1]):
            if n_done == n_pix:
                break  # early stop: every pixel of the tile is saturated
            v = isect_v[k]
            entry = np.int32(k - start + 1)
            # The patch: the rows the box covers in each 8-column block it touches, all
            # 8 lanes of a row (lanes outside the box's columns are masked), as one
            # contiguous lane range per block.
            xlo, xhi = np.int32(max(box[v, 0], px0) - px0), np.int32(min(box[v, 1] + 1, px1) - px0)
            ry0, ry1 = max(box[v, 2], py0) - py0, min(box[v, 3] + 1, py1) - py0
            if ry1 <= ry0 or xhi <= xlo:
                continue
            for h in range(TILE // HALF):
                if xlo >= (h + 1) * HALF or xhi <= h * HALF:
                    continue
                i0, n = np.uint64(h * BLOCK + ry0 * HALF), np.uint64((ry1 - ry0) * HALF)
                if _forward_patch(params, v, cols, consts, xlo, xhi, entry, i0, n, xcf, ycf, colf,
                                  T_tile, done, last_tile, acc, w_l):
                    n_done = 0  # a pixel stopped: recount (at most once per pixel)
                    for i in range(TILE * TILE):
                        n_done += done[i]
        for y in range(py0, py1):
            for x in range(px0, px1):
                i = _lane(x - px0, y - py0)
                T = T_tile[i]
                t_final[c, y, x] = T
                last[c, y, x] = last_tile[i]
                for d in range(D):
                    img[c, y, x, d] = acc[d, i] + T * bg[c, d] if has_bg else acc[d, i]


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _backward_patch(
    params, v, cols, consts, xlo, xhi, kk, i0, n, xcf, ycf, colf, T_tile, last_tile, S, G, g_fin,
    sc, lg, drawn, gsum,
):
    """Gradients of Gaussian v (list entry kk) from the patch of lanes i0 .. i0 + n, into gsum.

    Tile state (see _backward_kernel): xcf, ycf, colf (lanes,) pixel centres and
    columns; T_tile (lanes,) transmittance, updated in place to the value in front of
    this Gaussian; last_tile (lanes,) entries drawn in the forward pass; S (D, lanes)
    suffix colour sums, updated; G (D, lanes) upstream gradients; g_fin (lanes,) the
    constant part of dL/dalpha. xlo, xhi: the box's columns. Scratch: sc (6, lanes),
    lg (R, lanes) with R = 8 + 4 max(1, ceil(D / 4)) (rows beyond 8 + D are zeros),
    drawn (lanes,). gsum (R,): the Gaussian's running sums, in the column order of buf,
    updated. i0 and n are unsigned, so that numba indexes without the wraparound test of
    negative indices (which would stop vectorisation).

    As in _forward_patch, every lane computes and loops 1-3 are SIMD loops (selects,
    contiguous lanes, channels outside); a lane takes part if the pair counts and the
    pixel drew this entry in the forward pass (kk < last), and a lane that does not
    take part keeps its state. Loop 4 sums the contributions of the lanes that take
    part in lane order, each sum in one running accumulator, as the scalar per-pixel
    loop did: a floating-point sum in a fixed order is not vectorisable without
    reassociation, and reassociating would change the bits.
    """
    half, one, amin, amax = consts[0], consts[1], consts[2], consts[3]
    zero = half - half
    mx, my, a, b, cc = params[v, P_MX], params[v, P_MY], params[v, P_A], params[v, P_B], params[v, P_C]
    o, smax = params[v, P_O], params[v, P_SMAX]
    D = cols.shape[1]
    # 1) alpha, recomputed exactly as in the forward pass; T in front of the Gaussian
    #    (T behind / (1 - alpha)); fac = alpha T, 0 marks the lanes that do not take
    #    part (alpha >= 1/255 and T >= T_final > T_MIN give fac > 0 where they do).
    for j in range(n):
        i = i0 + j
        alpha, vis, ok = _patch_alpha(mx, my, a, b, cc, o, smax, xcf, ycf, colf, xlo, xhi, half, zero,
                                      amin, amax, i)
        part = ok & (kk < last_tile[i])
        ra = one / (one - alpha)
        T0 = T_tile[i]
        T = T0 * ra
        T_tile[i] = T if part else T0
        sc[SC_ALPHA, j] = alpha
        sc[SC_VIS, j] = vis
        sc[SC_RA, j] = ra
        sc[SC_T, j] = T
        sc[SC_FAC, j] = alpha * T if part else zero
        sc[SC_VA, j] = zero
    # 2) per channel: dL/dc = fac g; dL/dalpha += (c T - S / (1 - alpha)) g; S += c fac.
    for d in range(D):
        cd = cols[v, d]
        for j in range(n):
            i = i0 + j
            g = G[d, i]
            s_old = S[d, i]
            fac = sc[SC_FAC, j]
            take = fac != zero
            sc[SC_VA, j] += (cd * sc[SC_T, j] - s_old * sc[SC_RA, j]) * g
            lg[N_GRAD + d, j] = fac * g if take else zero
            S[d, i] = s_old + cd * fac if take else s_old
    # 3) the geometric gradients; none where alpha is clamped (it does not move, gsplat).
    for j in range(n):
        i = i0 + j
        alpha = sc[SC_ALPHA, j]
        v_a = sc[SC_VA, j] + g_fin[i] * sc[SC_RA, j]
        use = (sc[SC_FAC, j] != zero) & (alpha < amax)
        dx, dy = mx - xcf[i], my - ycf[i]
        v_sigma = -alpha * v_a
        gpx = v_sigma * (a * dx + b * dy)
        gpy = v_sigma * (b * dx + cc * dy)
        lg[G_X, j] = gpx if use else zero
        lg[G_Y, j] = gpy if use else zero
        lg[G_ABSX, j] = abs(gpx) if use else zero
        lg[G_ABSY, j] = abs(gpy) if use else zero
        lg[G_A, j] = half * v_sigma * dx * dx if use else zero
        lg[G_B, j] = v_sigma * dx * dy if use else zero
        lg[G_C, j] = half * v_sigma * dy * dy if use else zero
        lg[G_O, j] = sc[SC_VIS, j] * v_a if use else zero
    # 4) the sums over the lanes that take part, in lane order (deterministic; the
    #    other lanes' zeros would not change them either: a sum that starts at +0 is
    #    never -0, and x + 0 = x).
    m = 0
    for j in range(n):  # their indices, compacted without branches
        drawn[m] = j
        m += 1 if sc[SC_FAC, j] != zero else 0
    # Twelve independent running sums per pass, kept in registers: the eight geometric
    # ones and four channels, then four channels per further pass (lg and gsum have
    # R rows, see above: the padding rows of lg are zeros, never written).
    gx, gy, ga, gb = gsum[G_X], gsum[G_Y], gsum[G_A], gsum[G_B]
    gc, go, ax, ay = gsum[G_C], gsum[G_O], gsum[G_ABSX], gsum[G_ABSY]
    c0, c1, c2, c3 = gsum[N_GRAD], gsum[N_GRAD + 1], gsum[N_GRAD + 2], gsum[N_GRAD + 3]
    for q in range(m):
        j = drawn[q]
        gx += lg[G_X, j]
        gy += lg[G_Y, j]
        ga += lg[G_A, j]
        gb += lg[G_B, j]
        gc += lg[G_C, j]
        go += lg[G_O, j]
        ax += lg[G_ABSX, j]
        ay += lg[G_ABSY, j]
        c0 += lg[N_GRAD, j]
        c1 += lg[N_GRAD + 1, j]
        c2 += lg[N_GRAD + 2, j]
        c3 += lg[N_GRAD + 3, j]
    gsum[G_X], gsum[G_Y], gsum[G_A], gsum[G_B] = gx, gy, ga, gb
    gsum[G_C], gsum[G_O], gsum[G_ABSX], gsum[G_ABSY] = gc, go, ax, ay
    gsum[N_GRAD], gsum[N_GRAD + 1], gsum[N_GRAD + 2], gsum[N_GRAD + 3] = c0, c1, c2, c3
    for r in range(N_GRAD + 4, lg.shape[0], 4):
        c0, c1, c2, c3 = gsum[r], gsum[r + 1], gsum[r + 2], gsum[r + 3]
        for q in range(m):
            j = drawn[q]
            c0 += lg[r, j]
            c1 += lg[r + 1, j]
            c2 += lg[r + 2, j]
            c3 += lg[r + 3, j]
        gsum[r], gsum[r + 1], gsum[r + 2], gsum[r + 3] = c0, c1, c2, c3


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _backward_kernel(
    params, box, cols, tile_start, isect_v, cx, cy, bg, has_bg, consts, tiles_x, tiles_y,
    t_final, last, v_img, v_alpha, buf, bg_part,
):
    """Back-to-front gradients, one tile per task, into per-intersection rows.

    Inputs as for the forward kernel plus its t_final, last and the upstream gradients
    v_img (C, H, W, D), v_alpha (C, H, W). Writes buf (M, 8 + D): row k = the summed
    gradient of intersection k over its tile's pixels (columns G_*, then the colour
    gradient), and bg_part (C * tiles, D) = sum over the tile's pixels of T_final v_img.
    """
    half, one, big = consts[0], consts[1], consts[5]
    zero = half - half
    C, H, W, D = v_img.shape
    per_cam = tiles_x * tiles_y
    for t in prange(C * per_cam):
        xcf, ycf = np.empty(TILE * TILE, cx.dtype), np.empty(TILE * TILE, cx.dtype)
        colf = np.empty(TILE * TILE, np.int32)
        c, px0, py0, px1, py1 = _tile_setup(t, tiles_x, per_cam, W, H, cx, cy, big, xcf, ycf, colf)
        start, end = tile_start[t], tile_start[t + 1]
        # Per-pixel state, one entry per lane, per-channel state as (D, lanes) (see
        # _forward_kernel): the transmittance (recovered back to front), the suffix colour
        # sum S, the upstream gradient, and the constant part of dL/dalpha,
        # T_final (dL/dA - bg . dL/dC).
        T_tile = np.full(TILE * TILE, one)  # (lanes,)
        S = np.full((D, TILE * TILE), zero)  # (D, lanes)
        g_img = np.full((D, TILE * TILE), zero)  # (D, lanes)
        g_fin = np.full(TILE * TILE, zero)  # (lanes,)
        last_tile = np.zeros(TILE * TILE, np.int32)  # (lanes,)
        sc = np.empty((6, TILE * TILE), cx.dtype)  # per-lane scratch of one patch (rows SC_*)
        n_rows = N_GRAD + 4 * max(1, (D + 3) // 4)  # channels padded to 4k rows (_backward_patch)
        lg = np.zeros((n_rows, TILE * TILE), cx.dtype)  # per-lane gradient contributions
        drawn = np.empty(TILE * TILE, np.int32)
        gsum = np.empty(n_rows, cx.dtype)  # one Gaussian's sums (a row of buf, padded)
        k_max = 0
        for y in range(py0, py1):
            for x in range(px0, px1):
                i = _lane(x - px0, y - py0)
                tf = t_final[c, y, x]
                T_tile[i] = tf
                last_tile[i] = last[c, y, x]
                k_max = max(k_max, last_tile[i])
                dot = zero
                for d in range(D):
                    g = v_img[c, y, x, d]
                    g_img[d, i] = g
                    dot += bg[c, d] * g
                    bg_part[t, d] += tf * g
                g_fin[i] = tf * (v_alpha[c, y, x] - dot) if has_bg else tf * v_alpha[c, y, x]

        for kk in range(k_max - 1, -1, -1):  # back to front
            k = start + kk
            v = isect_v[k]
            for r in range(n_rows):  # element loops: a slice would cost two atomic refcount updates
                gsum[r] = zero
            xlo, xhi = np.int32(max(box[v, 0], px0) - px0), np.int32(min(box[v, 1] + 1, px1) - px0)
            ry0, ry1 = max(box[v, 2], py0) - py0, min(box[v, 3] + 1, py1) - py0
            for h in range(TILE // HALF):
                if ry1 <= ry0 or xlo >= (h + 1) * HALF or xhi <= h * HALF:
                    continue
                i0, n = np.uint64(h * BLOCK + ry0 * HALF), np.uint64((ry1 - ry0) * HALF)
                _backward_patch(params, v, cols, consts, xlo, xhi, np.int32(kk), i0, n, xcf, ycf, colf,
                                T_tile, last_tile, S, g_img, g_fin, sc, lg, drawn, gsum)
            for r in range(N_GRAD + D):
                buf[k, r] = gsum[r]
        for k in range(start + k_max, end):  # entries no pixel reached
            buf[k, :] = zero


@njit(parallel=True, cache=True, fastmath=False)
def _reduce_kernel(buf, g_start, g_pos, vid, out):
    """Sum each Gaussian's intersection rows in tile order (one Gaussian per iteration).

    out (C * N, 8 + D) zeros; row vid[v] receives Gaussian v's sums. Each output row is
    written by exactly one iteration, in a fixed order: deterministic.
    """
    Q = out.shape[1]
    for v in prange(vid.shape[0]):
        f = vid[v]
        for j in range(g_start[v], g_start[v + 1]):
            r = g_pos[j]
            for q in range(Q):
                out[f, q] += buf[r, q]


# --------------------------------------------------------------------------- driver


@contextlib.contextmanager
def _numba_threads(chunk: int = 0) -> Iterator[None]:
    """Run numba on min(torch threads, numba's pool) threads; ``chunk`` > 0: dynamic
    scheduling in chunks of that many iterations (0: numba's static split).

    With numba's "omp" threading layer a kernel launch calls omp_set_num_threads() with
    the size of numba's whole pool, and torch -- which loaded the same OpenMP runtime
    first -- reads that number back as its own thread count. Restoring torch's count
    afterwards keeps a one-thread torch process on one thread (without it, torch
    silently ran on two threads after the first numba call: up to 40x slower on a busy
    2-core machine).
    """
    torch_threads = torch.get_num_threads()
    n = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    old_n, old_chunk = numba.get_num_threads(), numba.get_parallel_chunksize()
    numba.set_num_threads(n)
    numba.set_parallel_chunksize(chunk)
    try:
        yield
    finally:
        numba.set_parallel_chunksize(old_chunk)
        numba.set_num_threads(old_n)
        torch.set_num_threads(torch_threads)


def _rows(t: Tensor, vid: np.ndarray, N: int) -> np.ndarray:
    """Rows ``vid`` of a (C, N, ...) tensor seen as (C * N, ...), copying only those rows.

    A view expanded over the cameras (stride 0, e.g. colours (N, D) broadcast to
    (C, N, D)) is indexed through its (N, ...) base instead of being materialised.
    """
    a = t.detach().numpy()
    if a.shape[0] > 1 and a.strides[0] == 0:
        return np.ascontiguousarray(a[0][vid % N])
    return np.ascontiguousarray(np.ascontiguousarray(a).reshape((-1,) + a.shape[2:])[vid])


@njit(cache=True, fastmath=False)
def _pack(m2d, con, opa, rad, width, height, params, box):
    """Per-Gaussian kernel inputs: params rows [mx, my, a, b, c, o, smax, 0] and pixel boxes.

    The box holds the pixels whose centre x + 0.5 lies within radius_x of the mean (same
    for y), clipped to the image; computed in float64 so both dtypes get the same boxes.
    """
    for v in range(m2d.shape[0]):
        mx, my = float(m2d[v, 0]), float(m2d[v, 1])
        params[v, P_MX], params[v, P_MY] = m2d[v, 0], m2d[v, 1]
        params[v, P_A], params[v, P_B], params[v, P_C] = con[v, 0], con[v, 1], con[v, 2]
        params[v, P_O] = opa[v]
        o = float(opa[v])
        # alpha >= 1/255 needs sigma <= ln(255 o); o = 0 gives -inf: never drawn.
        smax = math.log(255.0 * o) + SMAX_MARGIN if o > 0 else -math.inf
        params[v, P_SMAX] = min(smax, EXP_ARG_MAX)
        params[v, 7] = params[v, P_O] - params[v, P_O]
        rx, ry = float(rad[v, 0]), float(rad[v, 1])
        box[v, 0] = int(min(max(math.ceil(mx - rx - 0.5), 0.0), float(width)))
        box[v, 1] = int(min(max(math.floor(mx + rx - 0.5), -1.0), float(width - 1)))
        box[v, 2] = int(min(max(math.ceil(my - ry - 0.5), 0.0), float(height)))
        box[v, 3] = int(min(max(math.floor(my + ry - 0.5), -1.0), float(height - 1)))


def _prepare(means2d, conics, colors, opacities, radii, depths, width, height):
    """Visible Gaussians in depth order, packed for the kernels, and the tile lists."""
    C, N, D = colors.shape
    dtype = means2d.detach().numpy().dtype
    rad = radii.detach().numpy().reshape(C * N, 2)
    flat = np.flatnonzero((rad > 0).all(axis=1))
    # Nearest first; the stable sort keeps the lower flat index first on equal depths.
    vid = flat[np.argsort(depths.detach().numpy().reshape(-1)[flat], kind="stable")]
    cam = vid // N
    cols = _rows(colors, vid, N)  # (V, D): only the visible rows, even of expanded colours
    params = np.empty((vid.size, 8), dtype)
    box = np.empty((vid.size, 4), np.int32)
    _pack(_rows(means2d, vid, N), _rows(conics, vid, N), _rows(opacities, vid, N),
          np.ascontiguousarray(rad[vid]).astype(np.int32), width, height, params, box)
    tiles_x, tiles_y = -(-width // TILE), -(-height // TILE)
    tile_start, isect_v, g_start, g_pos = _bin_gaussians(box, cam, tiles_x, tiles_y, C)
    return {
        "vid": vid.astype(np.int64), "params": params, "box": box, "cols": cols,
        "tile_start": tile_start, "isect_v": isect_v, "g_start": g_start, "g_pos": g_pos,
        "cx": np.arange(width, dtype=dtype) + dtype.type(0.5),  # pixel centres
        "cy": np.arange(height, dtype=dtype) + dtype.type(0.5),
        "consts": np.array([0.5, 1.0, ALPHA_MIN, ALPHA_MAX, T_MIN, FAR], dtype),
        "tiles_x": tiles_x, "tiles_y": tiles_y,
    }


class _CompositeNumba(torch.autograd.Function):
    """Tile-based compositing (forward and backward in numba kernels)."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, radii, depths, width, height, absgrad):
        C, N, D = colors.shape
        dtype = means2d.detach().numpy().dtype
        prep = _prepare(means2d, conics, colors, opacities, radii, depths, width, height)
        has_bg = backgrounds is not None
        bg = np.ascontiguousarray(backgrounds.detach().numpy()) if has_bg else np.zeros((C, D), dtype)
        img = np.empty((C, height, width, D), dtype)  # every pixel is written by its tile
        t_final = np.empty((C, height, width), dtype)
        last = np.empty((C, height, width), np.int32)
        with _numba_threads(CHUNK):
            _forward_kernel(
                prep["params"], prep["box"], prep["cols"], prep["tile_start"], prep["isect_v"],
                prep["cx"], prep["cy"], bg, has_bg, prep["consts"], prep["tiles_x"], prep["tiles_y"],
                img, t_final, last,
            )
        ctx.save_for_backward(means2d)
        ctx.prep, ctx.bg, ctx.t_final, ctx.last = prep, bg, t_final, last
        ctx.meta = (C, N, D, has_bg, absgrad)
        t = torch.from_numpy(t_final)
        return torch.from_numpy(img), (1.0 - t).unsqueeze(-1)

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, v_render, v_alphas):
        C, N, D, has_bg, absgrad = ctx.meta
        (means2d,) = ctx.saved_tensors
        p, dtype = ctx.prep, ctx.t_final.dtype
        tdtype = means2d.dtype
        v_img = np.ascontiguousarray(v_render.detach().to(tdtype).numpy())  # (C, H, W, D)
        v_a = np.ascontiguousarray(v_alphas.detach().to(tdtype).numpy()[..., 0])  # (C, H, W)
        M = p["isect_v"].size
        buf = np.empty((M, N_GRAD + D), dtype)
        bg_part = np.zeros((C * p["tiles_x"] * p["tiles_y"], D), dtype)
        out = np.zeros((C * N, N_GRAD + D), dtype)
        with _numba_threads(CHUNK):
            _backward_kernel(
                p["params"], p["box"], p["cols"], p["tile_start"], p["isect_v"], p["cx"], p["cy"],
                ctx.bg, has_bg, p["consts"], p["tiles_x"], p["tiles_y"], ctx.t_final, ctx.last,
                v_img, v_a, buf, bg_part,
            )
        with _numba_threads():  # cheap, uniform iterations: a static split
            _reduce_kernel(buf, p["g_start"], p["g_pos"], p["vid"], out)
        out = torch.from_numpy(out).view(C, N, N_GRAD + D)
        v_xy, v_conic, v_opac = out[..., G_X:G_Y + 1], out[..., G_A:G_C + 1], out[..., G_O]
        abs_xy, v_col = out[..., G_ABSX:G_ABSY + 1], out[..., N_GRAD:]
        if absgrad:
            means2d.absgrad = abs_xy.contiguous()
        grads = [None] * 10
        need = ctx.needs_input_grad
        # Views into one (C, N, 8 + D) block; contiguous copies keep later in-place
        # accumulation (autograd, optimisers) on ordinary tensors.
        for idx, g in ((0, v_xy), (1, v_conic), (2, v_col), (3, v_opac)):
            if need[idx]:
                grads[idx] = g.contiguous()
        if has_bg and need[4]:
            # numpy's pairwise sum over the tiles of each camera: fixed order, no threads.
            grads[4] = torch.from_numpy(bg_part.reshape(C, -1, D).sum(axis=1))
        return tuple(grads)


def _check(means2d, conics, colors, opacities, radii, depths, width, height, backgrounds) -> None:
    """Raise ValueError naming the offending value for inputs the kernels cannot take."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(f"render_numba.composite: {msg}")

    named = [("means2d", means2d), ("conics", conics), ("colors", colors), ("opacities", opacities),
             ("radii", radii), ("depths", depths)] + ([("backgrounds", backgrounds)] if backgrounds is not None else [])
    for name, t in named:
        need(isinstance(t, Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
        need(t.device.type == "cpu", f"the numba backend needs CPU tensors, got {name} on {t.device}"
             " (use backend='gsplat' or 'auto' for CUDA tensors)")
    need(means2d.dtype in (torch.float32, torch.float64),
         f"the numba backend supports float32 and float64, got means2d of dtype {means2d.dtype}")
    for name, t in named:
        if name != "radii":
            need(t.dtype == means2d.dtype, f"{name} has dtype {t.dtype}, means2d has {means2d.dtype}")
    need(not radii.dtype.is_floating_point and not radii.dtype.is_complex and radii.dtype != torch.bool,
         f"radii must be an integer tensor, got dtype {radii.dtype}")
    need(isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0,
         f"width and height must be positive ints, got {width!r} x {height!r}")
    need(means2d.dim() == 3 and means2d.shape[-1] == 2, f"means2d must be (C, N, 2), got {tuple(means2d.shape)}")
    C, N = means2d.shape[:2]
    need(conics.shape == (C, N, 3), f"conics must be ({C}, {N}, 3), got {tuple(conics.shape)}")
    need(colors.dim() == 3 and colors.shape[:2] == (C, N), f"colors must be ({C}, {N}, D), got {tuple(colors.shape)}")
    need(opacities.shape == (C, N), f"opacities must be ({C}, {N}), got {tuple(opacities.shape)}")
    need(radii.shape == (C, N, 2), f"radii must be ({C}, {N}, 2), got {tuple(radii.shape)}")
    need(depths.shape == (C, N), f"depths must be ({C}, {N}), got {tuple(depths.shape)}")
    if backgrounds is not None:
        D = colors.shape[-1]
        need(backgrounds.shape == (C, D), f"backgrounds must be ({C}, {D}), got {tuple(backgrounds.shape)}")


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

    Same signature, outputs and gradients as :func:`npga.splatting.render_torch.composite`, computed
    by tiled numba kernels on CPU tensors (float32 or float64). Returns ``colors``
    (C, H, W, D) and ``alphas`` (C, H, W, 1) = 1 - final transmittance. Differentiable in
    means2d, conics, colors, opacities and backgrounds; with ``absgrad`` the backward
    pass also stores ``means2d.absgrad``. Bit-identical results for any thread count.
    """
    _check(means2d, conics, colors, opacities, radii, depths, width, height, backgrounds)
    return _CompositeNumba.apply(
        means2d, conics, colors, opacities, backgrounds, radii, depths, width, height, absgrad
    )


__all__ = ["TILE", "composite"]
