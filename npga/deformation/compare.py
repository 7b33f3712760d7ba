"""Measuring the three ways to get posed points from canonical ones (chapter 4, benchmark).

:func:`heldout_queries` draws canonical points near the surface of held-out identities,
each with a held-out expression code; :func:`compare_inversions` runs the naive inversion,
Newton root finding and the distilled F on them and reports, per method, the posed points,
the wall time and the cycle error |B(x_p) - x_c| (the only error defined for a head model
whose exact inverse is unknown; for the analytic warp the true error is available too).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from npga.deformation.baselines import naive_inversion, root_find
from npga.deformation.distill import cycle_error

METHODS = ("naive", "root finding", "distilled F")


def heldout_queries(
    head, id_codes: Tensor, exp_codes: Tensor, n: int, noise: float = 0.01, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n`` canonical queries spread over the given identities and their expressions.

    id_codes (I, id_dims); exp_codes (I, T, exp_dims). Returns x_c (n, 3), z_id (n, id_dims),
    z_exp (n, exp_dims) and the identity index of each query (n,).
    """
    n_ids, n_exp = exp_codes.shape[:2]
    g = torch.Generator().manual_seed(seed)
    ident = torch.arange(n) % n_ids
    x_c = torch.empty(n, 3)
    for i in range(n_ids):
        sel = ident == i
        pts = torch.as_tensor(head.canonical_surface_points(id_codes[i], int(sel.sum()), seed=seed + 17 * i))
        x_c[sel] = pts.float().reshape(-1, 3)
    x_c = x_c + noise * torch.randn(n, 3, generator=g)
    t = torch.randint(n_exp, (n,), generator=g)
    return x_c, id_codes[ident], exp_codes[ident, t], ident


def _timed(fn, repeats: int) -> tuple[Any, float]:
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def compare_inversions(
    backward,
    field,
    x_c: Tensor,
    z_id: Tensor,
    z_exp: Tensor,
    *,
    repeats: int = 1,
    root_repeats: int = 1,
    chunk: int = 65536,
) -> dict[str, dict[str, Any]]:
    """Posed points, seconds (best of ``repeats``) and cycle error (mm) of each method.

    ``field`` is called as ``field(x_c, z_exp, z_id)`` (z_id omitted when it has
    ``id_dims == 0``). Returns ``{method: {"x_p", "seconds", "cycle_mm", "extra"}}`` with
    ``extra`` holding root finding's :class:`RootFindResult` (iterations, history).
    """
    use_id = getattr(field, "id_dims", 1) > 0

    def run_field() -> Tensor:
        with torch.no_grad():
            return torch.cat([
                field(x_c[s:s + chunk], z_exp[s:s + chunk], z_id[s:s + chunk] if use_id else None)
                for s in range(0, len(x_c), chunk)
            ])

    def run_naive() -> Tensor:
        return torch.cat([
            naive_inversion(backward, x_c[s:s + chunk], z_id[s:s + chunk], z_exp[s:s + chunk])
            for s in range(0, len(x_c), chunk)
        ])

    out: dict[str, dict[str, Any]] = {}
    x, sec = _timed(run_naive, repeats)
    out["naive"] = {"x_p": x, "seconds": sec, "extra": None}
    res, sec = _timed(lambda: root_find(backward, x_c, z_id, z_exp, chunk=chunk), root_repeats)
    out["root finding"] = {"x_p": res.x_p, "seconds": sec, "extra": res}
    x, sec = _timed(run_field, repeats)
    out["distilled F"] = {"x_p": x, "seconds": sec, "extra": None}
    for name, r in out.items():
        r["cycle_mm"] = torch.cat([
            cycle_error(backward, r["x_p"][s:s + chunk], x_c[s:s + chunk], z_id[s:s + chunk], z_exp[s:s + chunk])
            for s in range(0, len(x_c), chunk)
        ]) * 1e3
    return out


def deforming_mask(backward, x_c: Tensor, z_id: Tensor, z_exp: Tensor, threshold: float = 5e-4) -> Tensor:
    """(N,) True where the backward offset at the canonical point exceeds ``threshold`` metres.

    A head model moves mostly the lower face: over the whole head the typical point does not
    move at all, and there every method (even the naive one) is exact. Statistics restricted
    to this mask measure the methods where there is something to invert.
    """
    with torch.no_grad():
        return (backward(x_c, z_id, z_exp) - x_c).norm(dim=-1) > threshold


def error_summary(errors_mm: Tensor) -> dict[str, float]:
    """Median, mean, 95th percentile and max of a set of errors (any unit), as floats."""
    e = errors_mm.flatten().float()
    if e.numel() == 0:
        return {"median": float("nan"), "mean": float("nan"), "p95": float("nan"), "max": float("nan")}
    return {
        "median": e.median().item(),
        "mean": e.mean().item(),
        "p95": e.quantile(0.95).item(),
        "max": e.max().item(),
    }
