"""Adaptive density control for a *dynamic* avatar: a trainer hook around :mod:`npga.splatting.densify`.

Static 3DGS densifies where the view-space positional gradient, averaged over the views
that saw a Gaussian, is large. An avatar changes that picture in three ways, and this
module makes the following choices (the NPGA paper states that it adapts density control
to the dynamic setting so that eyes and teeth get detail, but not every detail of how; what
is below is ours where the paper is not specific):

1. **Where statistics live.** Gradients are measured in the posed images (every frame,
   every camera) but are summed per *canonical* Gaussian: Gaussian i is the same primitive
   in every frame. Clone/split decisions and the sizes they compare use the canonical
   scales; split children are sampled from the canonical covariance.
2. **What counts as a view** (``mode="npga"``). 3DGS divides the summed gradient by the
   number of views in which the Gaussian's 2D radius was positive. In a dynamic head the
   teeth and the inside of the mouth are inside the frustum in every frame but visible only
   in the few frames with the mouth open; their gradient is zero the rest of the time, so
   the 3DGS average dilutes exactly the regions that need detail. We count a view only when
   the Gaussian received a non-zero gradient there (it contributed to some pixel).
   ``mode="3dgs"`` keeps 3DGS's rule: this is the "plain densification" of the ablation.
3. **Features.** New Gaussians inherit everything of their parent, the latent feature f_i
   included (clone: a copy; split: both children get it), so a child moves like its parent
   from its first step. Adam moments of new rows start at zero, as in 3DGS.
4. **Schedule** (``AvatarConfig``): densify every ``densify_every`` steps from
   ``densify_from`` to ``densify_until``, reset opacities every ``opacity_reset_every``
   steps (0: never), keep at most ``max_gaussians``. The big-Gaussian pruning of 3DGS starts
   with the first opacity reset, as in 3DGS.

The k-NN graph of the Laplacian terms (:mod:`npga.avatar.regularizers`) notices the replaced
``means`` parameter and rebuilds itself at its next use.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from npga.splatting.densify import DensifyConfig, DensifyState, densify_and_prune, reset_opacity


@dataclass
class DynamicADC:
    """Trainer hook ``after_backward(avatar, optimizers, render, step)``: accumulate, densify, prune, reset.

    ``mode``: "npga" (views counted where the Gaussian got a gradient) or "3dgs" (where its
    radius was positive). ``history`` records every densification round: counts, and the
    canonical ``means`` (N, 3) with their ``mean_grad`` (N,) and view ``count`` (N,) just before it.
    """

    densify_from: int
    densify_until: int
    densify_every: int
    opacity_reset_every: int = 0
    mode: str = "npga"
    cfg: DensifyConfig = field(default_factory=DensifyConfig)
    # metres. 3DGS measures the scene radius and clones Gaussians smaller than
    # percent_dense (1 %) of it, splits the larger ones. For a head we choose the extent so
    # that this boundary (5 mm) sits at the median size of the initial Gaussians (about 5 mm
    # in mini and cpu), so that both clones and splits happen; with 0.1 m (1 mm) every
    # densification was a split. Big-Gaussian pruning then starts at 10 % of it, 5 cm.
    scene_extent: float = 0.5
    seed: int = 0
    state: DensifyState | None = None
    history: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ("npga", "3dgs"):
            raise ValueError(f"ADC mode must be 'npga' or '3dgs', got {self.mode!r}")
        if self.densify_every <= 0:
            raise ValueError(f"densify_every must be positive, got {self.densify_every}")
        if self.opacity_reset_every:
            # 3DGS prunes big Gaussians only after its first opacity reset
            self.cfg = replace(self.cfg, prune_big_from_step=self.opacity_reset_every)
        else:
            self.cfg = replace(self.cfg, prune_big_from_step=self.densify_until + 1)
        self.gen = torch.Generator().manual_seed(self.seed)

    @classmethod
    def from_config(cls, acfg, mode: str = "npga", seed: int = 0, **overrides) -> "DynamicADC":
        """From an :class:`npga.config.AvatarConfig` (densify_* fields, max_gaussians)."""
        return cls(
            densify_from=acfg.densify_from, densify_until=acfg.densify_until,
            densify_every=acfg.densify_every, opacity_reset_every=acfg.opacity_reset_every,
            mode=mode, cfg=DensifyConfig(max_gaussians=acfg.max_gaussians, grad_threshold=acfg.densify_grad),
            seed=seed, **overrides,
        )

    def state_dict(self) -> dict:
        """What a resumed run needs to densify exactly as an uninterrupted one (npga.avatar.train checkpoints)."""
        st = None if self.state is None else {k: getattr(self.state, k).detach().cpu().clone()
                                              for k in self.state._tensors()}
        return {"state": st, "generator": self.gen.get_state(), "history": self.history}

    def load_state_dict(self, sd: dict, device: str | torch.device = "cpu") -> None:
        self.gen.set_state(sd["generator"])
        self.history = list(sd["history"])
        self.state = None
        if sd["state"] is not None:
            t = {k: v.to(device) for k, v in sd["state"].items()}
            self.state = DensifyState(t["grad2d"], t["count"], t["max_radii"], self.scene_extent)

    def accumulate(self, avatar, render) -> None:
        n = avatar.n_gaussians
        if self.state is None or self.state.grad2d.shape[0] != n:
            self.state = DensifyState.create(n, self.scene_extent, avatar.gaussians["means"].device)
        accumulate_views(self.state, render.meta, self.mode)

    def __call__(self, avatar, optimizers, render, step: int) -> None:
        if step >= self.densify_until:
            return
        self.accumulate(avatar, render)
        if step >= self.densify_from and (step + 1) % self.densify_every == 0:
            # where growth is asked for (for the chapter's figures): canonical means and statistic
            mean_grad = self.state.mean_grad().cpu().numpy()
            means = avatar.gaussians["means"].detach().cpu().numpy()
            count = self.state.count.cpu().numpy()  # views that counted, per Gaussian
            counts = densify_and_prune(avatar.gaussians, optimizers, self.state, self.cfg, step,
                                       generator=self.gen)
            self.history.append({"step": step + 1, **counts, "means": means, "mean_grad": mean_grad,
                                 "count": count})
        if self.opacity_reset_every and (step + 1) % self.opacity_reset_every == 0:
            reset_opacity(avatar.gaussians, optimizers, self.cfg.reset_opacity_value)


@torch.no_grad()
def accumulate_views(state: DensifyState, meta: dict, mode: str = "npga") -> None:
    """Add one rendering's NDC gradients to ``state``; see the module docstring for ``mode``.

    ``mode="3dgs"`` is :func:`npga.splatting.densify.accumulate`. ``mode="npga"`` counts a view only
    where the gradient of the Gaussian's 2D mean is non-zero.
    """
    from npga.splatting.densify import accumulate

    if mode == "3dgs":
        accumulate(state, meta)
        return
    means2d = meta["means2d"]
    if means2d.grad is None:
        raise RuntimeError("meta['means2d'].grad is None: retain_grad() before backward()")
    grads = means2d.grad.detach().clone()  # (C, N, 2) pixels
    if grads.dim() != 3 or grads.shape[1] != state.grad2d.shape[0]:
        raise ValueError(f"means2d gradient has shape {tuple(grads.shape)}, expected (C, {state.grad2d.shape[0]}, 2)")
    width, height, n_cams = meta["width"], meta["height"], meta.get("n_cameras", grads.shape[0])
    grads[..., 0] *= width / 2.0 * n_cams
    grads[..., 1] *= height / 2.0 * n_cams
    norm = grads.norm(dim=-1)  # (C, N)
    radii = meta["radii"]
    radii = radii.max(dim=-1).values if radii.dim() == 3 else radii
    seen = (radii > 0) & (norm > 0)
    state.grad2d += (norm * seen).sum(dim=0)
    state.count += seen.sum(dim=0).to(state.count.dtype)
    screen = (radii.to(state.max_radii.dtype) / float(max(width, height))) * seen
    state.max_radii.copy_(torch.maximum(state.max_radii, screen.max(dim=0).values))


__all__ = ["DynamicADC", "accumulate_views"]
