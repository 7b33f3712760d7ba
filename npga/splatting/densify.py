"""Adaptive density control (ADC) for static Gaussians (3DGS, Kerbl et al. 2023, Sec. 5.2).

Where the photometric loss keeps pulling a Gaussian's projected centre around, one
Gaussian is not enough to explain the image there. Every few hundred steps ADC

* **clones** such Gaussians when they are small (under-reconstruction: a copy is
  added at the same place and the optimiser pulls the two apart),
* **splits** them when they are large (over-reconstruction: two new Gaussians are
  sampled from the old one's density and shrunk by 1.6),
* **prunes** Gaussians that became transparent or absurdly large,

and every few thousand steps it **resets opacities** to a small value so that
floaters have to earn their opacity back (or get pruned).

"Pulling around" is measured as the norm of the gradient of the loss with respect
to the Gaussian's 2D mean, averaged over the views that saw it. We follow gsplat's
``DefaultStrategy`` convention: the pixel-space gradient of ``means2d`` is scaled by
(W/2, H/2) (pixels -> normalised device coordinates, where 3DGS's 0.0002 threshold
lives) and by the number of cameras rendered together (the loss averages over them,
which would otherwise shrink each camera's gradient).

All state is explicit: :class:`DensifyState` holds the running statistics, and every
operation rewrites the parameter dict, the Adam state of each parameter and the
statistics together, so the three always describe the same Gaussians:

* Gaussians that are kept keep their values and their Adam moments, in order;
* new Gaussians get zero Adam moments (as 3DGS does);
* removed Gaussians disappear from all three.

Every per-Gaussian entry of the dict is carried along (including ``features``).
Optimizers are a dict ``{name: torch.optim.Optimizer}`` with one parameter each,
as gsplat's strategies expect; parameters without an optimizer are carried too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from npga.splatting.gaussians import GaussianParams, quat_to_rotmat


@dataclass(frozen=True)
class DensifyConfig:
    """ADC thresholds; defaults are 3DGS's (``arguments/__init__.py`` of the original code)."""

    grad_threshold: float = 0.0002  # mean NDC gradient norm that triggers clone / split
    percent_dense: float = 0.01  # clone if max scale <= this * scene extent, else split
    prune_opacity: float = 0.005  # remove Gaussians below this opacity
    prune_world_scale: float = 0.1  # remove if max scale > this * scene extent ...
    prune_screen_size: float = 0.15  # ... or max 2D radius > this * max(W, H) ...
    prune_big_from_step: int = 3000  # ... but only after this step (3DGS: first opacity reset)
    split_factor: float = 1.6  # split children have scale / split_factor
    n_split: int = 2  # children per split Gaussian
    reset_opacity_value: float = 0.01  # opacity after a reset (3DGS)
    max_gaussians: int | None = None  # growth budget (highest gradients first); None = none


@dataclass
class DensifyState:
    """Running statistics since the last densification, one entry per Gaussian.

    ``grad2d`` (N,) summed NDC gradient norms, ``count`` (N,) number of views in which
    the Gaussian was visible, ``max_radii`` (N,) largest 2D radius seen, as a fraction
    of max(W, H); ``scene_extent`` the scene radius in metres that the world-space
    thresholds are relative to.
    """

    grad2d: Tensor
    count: Tensor
    max_radii: Tensor
    scene_extent: float

    @classmethod
    def create(
        cls, n: int, scene_extent: float, device: str | torch.device = "cpu"
    ) -> "DensifyState":
        if not scene_extent > 0:
            raise ValueError(f"scene_extent must be positive, got {scene_extent}")
        z = lambda: torch.zeros(n, device=device)  # noqa: E731
        return cls(z(), z(), z(), float(scene_extent))

    def reset(self) -> None:
        """Zero the statistics (after each densification), keeping N."""
        self.grad2d.zero_()
        self.count.zero_()
        self.max_radii.zero_()

    def _tensors(self) -> list[str]:
        return ["grad2d", "count", "max_radii"]

    def mean_grad(self) -> Tensor:
        return self.grad2d / self.count.clamp_min(1.0)


# --------------------------------------------------------------------------- statistics


@torch.no_grad()
def accumulate(state: DensifyState, meta: dict) -> None:
    """Add one rendering's view-space gradients to ``state`` (call after ``backward()``).

    ``meta`` is the rasterizer's info dict: ``means2d`` (C, N, 2) whose ``.grad`` was
    retained, ``radii`` (C, N, 2) (or (C, N)), ``width``, ``height``, ``n_cameras``.
    A Gaussian counts as seen by a camera when its radius there is positive.
    """
    means2d = meta["means2d"]
    if means2d.grad is None:
        raise RuntimeError(
            "meta['means2d'].grad is None: call meta['means2d'].retain_grad() before backward()"
        )
    grads = means2d.grad.detach().clone()  # (C, N, 2) pixels
    if grads.dim() != 3 or grads.shape[1] != state.grad2d.shape[0]:
        raise ValueError(
            f"means2d gradient has shape {tuple(grads.shape)}, "
            f"expected (C, {state.grad2d.shape[0]}, 2)"
            " (packed rasterizer output is not supported)"
        )
    width, height, n_cams = meta["width"], meta["height"], meta.get("n_cameras", grads.shape[0])
    grads[..., 0] *= width / 2.0 * n_cams
    grads[..., 1] *= height / 2.0 * n_cams
    radii = meta["radii"]
    radii = radii.max(dim=-1).values if radii.dim() == 3 else radii  # (C, N)
    seen = radii > 0
    state.grad2d += (grads.norm(dim=-1) * seen).sum(dim=0)
    state.count += seen.sum(dim=0).to(state.count.dtype)
    screen = (radii.to(state.max_radii.dtype) / float(max(width, height))) * seen
    state.max_radii.copy_(torch.maximum(state.max_radii, screen.max(dim=0).values))


# --------------------------------------------------------------------------- editing


@torch.no_grad()
def _rewrite(
    params: GaussianParams,
    optimizers: dict,
    state: DensifyState | None,
    keep: Tensor,
    new_values: dict[str, Tensor] | None = None,
) -> None:
    """Keep rows ``keep`` (index tensor) of everything, then append ``new_values``.

    New rows get zero Adam moments and zero statistics. Each parameter is replaced by
    a new ``nn.Parameter`` and its optimizer state is moved over to it.
    """
    n_new = 0
    if new_values:
        n_new = next(iter(new_values.values())).shape[0]
        missing = set(params) - set(new_values)
        if missing:
            raise KeyError(f"new Gaussians lack values for {sorted(missing)}")
    for name in list(params):
        old = params[name]
        data = old.data[keep]
        if n_new:
            data = torch.cat([data, new_values[name].to(data)])
        new = torch.nn.Parameter(data, requires_grad=old.requires_grad)
        params[name] = new
        opt = optimizers.get(name)
        if opt is None:
            continue
        group = next((g for g in opt.param_groups if any(p is old for p in g["params"])), None)
        if group is None:
            raise ValueError(f"optimizer for {name!r} does not hold params[{name!r}]")
        group["params"] = [new if p is old else p for p in group["params"]]
        st = opt.state.pop(old, None)
        if st is None:
            continue
        for key, value in st.items():
            # per-Gaussian moments share the parameter's shape; "step" is a scalar
            if torch.is_tensor(value) and value.shape == old.shape:
                value = value[keep]
                if n_new:
                    value = torch.cat([value, value.new_zeros((n_new,) + value.shape[1:])])
                st[key] = value
        opt.state[new] = st
    if state is not None:
        for key in state._tensors():
            value = getattr(state, key)[keep]
            if n_new:
                value = torch.cat([value, value.new_zeros(n_new)])
            setattr(state, key, value)


def _n(params: GaussianParams) -> int:
    return int(params["means"].shape[0])


@torch.no_grad()
def clone(
    params: GaussianParams, optimizers: dict, state: DensifyState | None, mask: Tensor
) -> int:
    """Append an exact copy of each Gaussian in ``mask`` (N,) bool. Returns the count."""
    sel = torch.where(mask)[0]
    if len(sel):
        _rewrite(params, optimizers, state, torch.arange(_n(params), device=mask.device),
                 {k: v.data[sel] for k, v in params.items()})
    return int(len(sel))


@torch.no_grad()
def split(
    params: GaussianParams,
    optimizers: dict,
    state: DensifyState | None,
    mask: Tensor,
    n_split: int = 2,
    factor: float = 1.6,
    generator: torch.Generator | None = None,
) -> int:
    """Replace each Gaussian in ``mask`` by ``n_split`` children (3DGS Sec. 5.2).

    Children's means are samples from the parent's own density N(mu, Sigma); their
    scales are the parent's divided by ``factor``; every other entry is copied.
    Parents are removed; the children go to the end. Returns the number of parents.
    """
    sel = torch.where(mask)[0]
    if not len(sel):
        return 0
    p = {k: v.data[sel] for k, v in params.items()}
    std = torch.exp(p["scales"])  # (S, 3)
    R = quat_to_rotmat(p["quats"])  # (S, 3, 3)
    gen_device = generator.device if generator is not None else std.device
    eps = torch.randn((n_split,) + std.shape, generator=generator, device=gen_device).to(std)
    offsets = torch.einsum("sij,ksj->ksi", R, eps * std)  # (n_split, S, 3)
    new = {}
    for k, v in p.items():
        if k == "means":
            new[k] = (v[None] + offsets).reshape(-1, 3)
        elif k == "scales":
            new[k] = (v - math.log(factor)).repeat((n_split,) + (1,) * (v.dim() - 1))
        else:
            new[k] = v.repeat((n_split,) + (1,) * (v.dim() - 1))
    keep = torch.where(~mask)[0]
    _rewrite(params, optimizers, state, keep, new)
    return int(len(sel))


@torch.no_grad()
def prune(
    params: GaussianParams, optimizers: dict, state: DensifyState | None, mask: Tensor
) -> int:
    """Remove the Gaussians in ``mask`` (N,) bool. Returns the count."""
    n_remove = int(mask.sum())
    if n_remove:
        _rewrite(params, optimizers, state, torch.where(~mask)[0])
    return n_remove


@torch.no_grad()
def reset_opacity(params: GaussianParams, optimizers: dict, value: float = 0.01) -> None:
    """Clamp every opacity to at most ``value`` and zero the opacity's Adam moments.

    3DGS does this every 3000 steps: Gaussians that matter regain their opacity
    quickly, floaters stay faint and fall under the pruning threshold.
    """
    if not 0.0 < value < 1.0:
        raise ValueError(f"opacity reset value must be in (0, 1), got {value}")
    op = params["opacities"]
    op.data.clamp_(max=math.log(value / (1.0 - value)))
    opt = optimizers.get("opacities")
    if opt is not None and op in opt.state:
        for key, v in opt.state[op].items():
            if torch.is_tensor(v) and v.shape == op.shape:
                v.zero_()


# --------------------------------------------------------------------------- the schedule step


@torch.no_grad()
def densify_and_prune(
    params: GaussianParams,
    optimizers: dict,
    state: DensifyState,
    cfg: DensifyConfig,
    step: int,
    generator: torch.Generator | None = None,
) -> dict[str, int]:
    """One ADC round: clone, split, prune, then zero the statistics.

    A Gaussian with mean NDC gradient >= ``cfg.grad_threshold`` is cloned when its
    largest scale is <= ``percent_dense * scene_extent`` and split otherwise. Pruned:
    opacity < ``prune_opacity``; from ``prune_big_from_step`` on also max scale >
    ``prune_world_scale * scene_extent`` or screen radius > ``prune_screen_size``.
    With ``max_gaussians`` set, only the highest-gradient candidates that fit the
    budget grow. Returns counts: ``clone``, ``split``, ``prune``, ``before``, ``after``.
    """
    n0 = _n(params)
    if state.grad2d.shape[0] != n0:
        raise ValueError(f"densify state holds {state.grad2d.shape[0]} Gaussians, params {n0}")
    grads = state.mean_grad()
    high = grads >= cfg.grad_threshold
    max_scale = torch.exp(params["scales"].data).max(dim=-1).values
    small = max_scale <= cfg.percent_dense * state.scene_extent
    if cfg.max_gaussians is not None:
        # each clone adds 1, each split adds n_split - 1; keep the strongest gradients
        budget = max(cfg.max_gaussians - n0, 0)
        cost = torch.where(small, 1, cfg.n_split - 1) * high
        order = torch.argsort(torch.where(high, grads, -1.0), descending=True)
        fits = torch.cumsum(cost[order], 0) <= budget
        allowed = torch.zeros_like(high)
        allowed[order[fits]] = True
        high = high & allowed
    is_clone, is_split = high & small, high & ~small

    n_clone = clone(params, optimizers, state, is_clone)
    # clones went to the end and are never split in the same round
    is_split = torch.cat([is_split, is_split.new_zeros(n_clone)])
    n_split = split(params, optimizers, state, is_split, cfg.n_split, cfg.split_factor, generator)

    prune_mask = torch.sigmoid(params["opacities"].data) < cfg.prune_opacity
    if step >= cfg.prune_big_from_step:
        too_big = torch.exp(params["scales"].data).max(dim=-1).values > (
            cfg.prune_world_scale * state.scene_extent
        )
        prune_mask |= too_big | (state.max_radii > cfg.prune_screen_size)
    n_prune = prune(params, optimizers, state, prune_mask)
    state.reset()
    return {"clone": n_clone, "split": n_split, "prune": n_prune, "before": n0, "after": _n(params)}


__all__ = [
    "DensifyConfig",
    "DensifyState",
    "accumulate",
    "clone",
    "densify_and_prune",
    "prune",
    "reset_opacity",
    "split",
]
