"""Two ways to invert a backward field without training: naive negation and root finding.

Given B: posed -> canonical and a canonical point x_c, the posed point is the root of

    g(x_p) = B(x_p, z_id, z_exp) - x_c = 0.                                    (1)

* :func:`naive_inversion` assumes the offset field is locally constant: with
  B(x) = x + d(x), it takes x_p = x_c - d(x_c), i.e. it evaluates the backward offset at the
  *canonical* point instead of at the unknown posed one. Its error is of the order of
  |grad d| |d|: small for small or slowly varying deformations, millimetres for a jaw.
* :func:`root_find` solves (1) per point with damped Newton steps
  x <- x - J_B(x)^{-1} g(x), the Jacobian from autograd, initialised from the naive
  inversion; SNARF (Chen et al. 2021) does the same with Broyden's method. It is exact up to
  the tolerance but costs several evaluations of B *and* of its Jacobian per point: fine as
  a reference, too slow to run for every Gaussian at every training step.

Both treat ``backward`` as a black box ``(x (N, 3), z_id, z_exp) -> (N, 3)`` that acts on
each point independently (true for coordinate MLPs): :func:`pointwise_jacobian` relies on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

BackwardFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x_p, z_id, z_exp) -> x_c


def naive_inversion(backward: BackwardFn, x_c: Tensor, z_id: Tensor, z_exp: Tensor) -> Tensor:
    """x_p ~ x_c - (B(x_c) - x_c): the backward offset negated at the canonical point. (N, 3)."""
    with torch.no_grad():
        return 2.0 * x_c - backward(x_c, z_id, z_exp)


def pointwise_jacobian(fn: Callable[[Tensor], Tensor], x: Tensor, create_graph: bool = False):
    """Value ``fn(x)`` (N, 3) and per-point Jacobians d fn(x)_n / d x_n, (N, 3, 3).

    For a map that acts on each row independently, the gradient of the sum of output
    column i with respect to the input is row i of every point's Jacobian: three
    vector-Jacobian products give all N Jacobians (cost: one forward + three backward passes).
    """
    with torch.enable_grad():
        x_in = x if x.requires_grad else x.detach().requires_grad_(True)
        y = fn(x_in)
        rows = []
        for i in range(3):
            (g,) = torch.autograd.grad(
                y[:, i].sum(), x_in, retain_graph=True, create_graph=create_graph
            )
            rows.append(g)
    J = torch.stack(rows, dim=1)  # (N, out=3, in=3)
    if not create_graph:
        y, J = y.detach(), J.detach()
    return y, J


@dataclass
class RootFindResult:
    """Output of :func:`root_find`.

    ``x_p`` (N, 3) the roots; ``residual`` (N,) |B(x_p) - x_c| in metres; ``converged`` (N,)
    residual below tolerance; ``iterations`` Newton iterations run; ``history`` the median
    and max residual (metres) after each iteration (index 0: the initial guess).
    """

    x_p: Tensor
    residual: Tensor
    converged: Tensor
    iterations: int
    history: dict[str, list[float]] = field(default_factory=dict)


def root_find(
    backward: BackwardFn,
    x_c: Tensor,
    z_id: Tensor,
    z_exp: Tensor,
    *,
    x_init: Tensor | None = None,
    tol: float = 1e-7,
    max_iter: int = 20,
    chunk: int = 65536,
) -> RootFindResult:
    """Solve B(x_p, z_id, z_exp) = x_c for x_p per point with damped Newton steps, eq. (1).

    x_c (N, 3) metres; codes (d,) or (N, d); ``x_init`` (N, 3) starting guess, default the
    naive inversion; ``tol`` residual tolerance in metres (1e-7 m = 0.1 micrometre, near
    float32's resolution at head scale). A step that does not reduce a point's residual is
    halved (up to 4 times) so that a far-off start cannot diverge. Points are processed in
    chunks of ``chunk`` to bound memory.
    """
    if x_c.dim() != 2 or x_c.shape[-1] != 3:
        raise ValueError(f"x_c must have shape (N, 3), got {tuple(x_c.shape)}")
    n = x_c.shape[0]
    parts: list[RootFindResult] = []
    for s in range(0, n, chunk):
        sl = slice(s, min(s + chunk, n))
        zi = z_id[sl] if z_id.dim() == 2 else z_id
        ze = z_exp[sl] if z_exp.dim() == 2 else z_exp
        init = x_init[sl] if x_init is not None else None
        parts.append(_newton(backward, x_c[sl].detach(), zi, ze, init, tol, max_iter))
    if len(parts) == 1:
        return parts[0]
    hist_len = max(len(p.history["median"]) for p in parts)
    pad = lambda v: v + [v[-1]] * (hist_len - len(v))  # noqa: E731 - finished chunks stay put
    return RootFindResult(
        x_p=torch.cat([p.x_p for p in parts]),
        residual=torch.cat([p.residual for p in parts]),
        converged=torch.cat([p.converged for p in parts]),
        iterations=max(p.iterations for p in parts),
        history={
            "median": [max(v) for v in zip(*[pad(p.history["median"]) for p in parts])],
            "max": [max(v) for v in zip(*[pad(p.history["max"]) for p in parts])],
        },
    )


def _newton(backward, x_c, z_id, z_exp, x_init, tol, max_iter) -> RootFindResult:
    x = naive_inversion(backward, x_c, z_id, z_exp) if x_init is None else x_init.detach().clone()

    def residual_of(xp: Tensor, zi: Tensor, ze: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            return backward(xp, zi, ze) - target

    r = residual_of(x, z_id, z_exp, x_c)
    rn = r.norm(dim=-1)
    history = {"median": [rn.median().item()], "max": [rn.max().item()]}
    stalled = torch.zeros_like(rn, dtype=torch.bool)  # no step helps: float precision floor
    it = 0
    for it in range(1, max_iter + 1):
        active = (rn > tol) & ~stalled
        if not active.any():
            it -= 1
            break
        idx = active.nonzero().squeeze(1)
        zi = z_id[idx] if z_id.dim() == 2 else z_id
        ze = z_exp[idx] if z_exp.dim() == 2 else z_exp
        xa, target = x[idx], x_c[idx]
        val, J = pointwise_jacobian(lambda q: backward(q, zi, ze), xa)
        ra = val - target
        step = torch.linalg.solve(J, ra.unsqueeze(-1)).squeeze(-1)
        # Damping: accept the full step where it helps, otherwise halve it.
        best_x, best_rn = xa, ra.norm(dim=-1)
        t = torch.ones(len(idx), 1, dtype=x.dtype)
        undecided = torch.ones(len(idx), dtype=torch.bool)
        for _ in range(5):
            cand = xa - t * step
            cn = residual_of(cand, zi, ze, target).norm(dim=-1)
            better = undecided & (cn < best_rn)
            best_x = torch.where(better[:, None], cand, best_x)
            best_rn = torch.where(better, cn, best_rn)
            undecided &= ~better
            if not undecided.any():
                break
            t = torch.where(undecided[:, None], t * 0.5, t)
        stalled[idx] = undecided
        x = x.index_copy(0, idx, best_x)
        rn = rn.index_copy(0, idx, best_rn)
        history["median"].append(rn.median().item())
        history["max"].append(rn.max().item())
    return RootFindResult(x_p=x, residual=rn, converged=rn <= tol, iterations=it, history=history)
