"""Cycle-consistency distillation of a forward field from a frozen backward field (NPGA, Sec. 3).

The head model gives B: posed -> canonical. We want F: canonical -> posed such that going
forward and back returns to the start,

    L_cycle = E_{x_c, z} || B(F(x_c, z_exp, z_id), z_id, z_exp) - x_c ||_2,          (1)

with B frozen and the expectation over canonical points near the canonical surfaces of
many identities and over their expression codes. No posed ground truth is needed: B itself
says whether F(x_c) landed in the right place. Training once over many identities gives a
*prior* F that later avatars reuse (NPGA distills over the head model's training subjects);
:func:`finetune_forward_field` specialises it to one avatar's identity and expressions.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
from torch import Tensor

from npga.config import DeformConfig
from npga.deformation.baselines import BackwardFn
from npga.deformation.field import ForwardField


def canonical_samples(head, id_codes: Tensor, n_per_id: int, seed: int = 0) -> Tensor:
    """Points on the canonical surface of each identity: (I, n_per_id, 3).

    ``head.canonical_surface_points(z_id, n, seed)`` gives surface points (an NPHM or an
    :class:`~npga.deformation.analytic.AnalyticHeadWarp`); the distillation adds Gaussian
    jitter of ``DeformConfig.sample_noise`` to them at every step, because the avatar's
    Gaussians sit near, not exactly on, the surface.
    """
    pts = [
        torch.as_tensor(head.canonical_surface_points(z, n_per_id, seed=seed + i)).float().reshape(-1, 3)
        for i, z in enumerate(id_codes)
    ]
    for i, p in enumerate(pts):
        if p.shape[0] != n_per_id:
            raise ValueError(f"identity {i}: expected {n_per_id} canonical points, got {p.shape[0]}")
    return torch.stack(pts)


def cycle_error(backward: BackwardFn, x_p: Tensor, x_c: Tensor, z_id: Tensor, z_exp: Tensor) -> Tensor:
    """|B(x_p) - x_c| per point (N,), metres: how far x_p is from being B's preimage of x_c."""
    with torch.no_grad():
        return (backward(x_p, z_id, z_exp) - x_c).norm(dim=-1)


def _frozen(backward) -> list:
    """Turn off gradients of B's parameters (restored afterwards): B is a fixed teacher.

    ``backward`` is a module or a bound method of one (``nphm.backward``)."""
    owner = backward if isinstance(backward, torch.nn.Module) else getattr(backward, "__self__", None)
    if not isinstance(owner, torch.nn.Module):
        return []
    params = [p for p in owner.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    return params


def distill_forward_field(
    backward: BackwardFn,
    canonical_points: Tensor,
    id_codes: Tensor,
    exp_codes: Tensor,
    cfg: DeformConfig,
    *,
    field: ForwardField | None = None,
    iterations: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    progress: bool = True,
    log_every: int = 10,
    validate: Callable[[ForwardField], float] | None = None,
    validate_every: int = 100,
    device: str | torch.device | None = None,
) -> tuple[ForwardField, dict]:
    """Train F by minimising the cycle loss (1) with B frozen.

    backward: ``B(x_p (N, 3), z_id (N, I), z_exp (N, E)) -> x_c (N, 3)``; a torch module or
        any callable (its parameters, if any, are frozen during training and restored after).
    canonical_points: (I, M, 3) canonical samples per identity (:func:`canonical_samples`).
    id_codes: (I, id_dims); exp_codes: (I, T, exp_dims) per identity or (T, exp_dims) shared.
    cfg: :class:`~npga.config.DeformConfig`: sizes (``hidden``, ``layers``, ``n_freqs``,
        ``length_scale``), schedule (``iterations``, ``samples_per_step``, ``lr``, ``loss``),
        sampling (``sample_noise``, ``code_mixing``, ``code_sampling``) and ``use_id``.
    field: a field to continue from (fine-tuning); a fresh one when None.
    validate: optional ``validate(field) -> float`` (e.g. held-out median error in mm),
        called every ``validate_every`` steps and at the end.
    device: where F and the batches live (default: the device of B's parameters, else CPU).
        Sampling happens on the CPU with a seeded generator, so runs are reproducible
        whatever the device; only each step's batch is moved.

    Each step draws ``samples_per_step`` random (identity, expression, point) triples.
    Returns the trained field (in eval mode) and a history dict: ``step``, ``loss_mm``
    (mean cycle error of the batch, mm), ``val_step``/``val`` and ``seconds``.
    """
    canonical_points = torch.as_tensor(canonical_points).float()
    id_codes = torch.as_tensor(id_codes).float()
    exp_codes = torch.as_tensor(exp_codes).float()
    if canonical_points.dim() != 3 or canonical_points.shape[-1] != 3:
        raise ValueError(f"canonical_points must be (I, M, 3), got {tuple(canonical_points.shape)}")
    n_ids = canonical_points.shape[0]
    if id_codes.dim() != 2 or id_codes.shape[0] != n_ids:
        raise ValueError(f"id_codes must be ({n_ids}, id_dims) like canonical_points, got {tuple(id_codes.shape)}")
    if exp_codes.dim() == 2:
        exp_codes = exp_codes[None].expand(n_ids, -1, -1)
    if exp_codes.dim() != 3 or exp_codes.shape[0] != n_ids:
        raise ValueError(f"exp_codes must be ({n_ids}, T, exp_dims) or (T, exp_dims), got {tuple(exp_codes.shape)}")
    if cfg.loss not in ("l2", "mse"):
        raise ValueError(f"DeformConfig.loss must be 'l2' or 'mse', got {cfg.loss!r}")
    iterations = cfg.iterations if iterations is None else iterations
    lr = cfg.lr if lr is None else lr

    if device is None:
        owner = backward if isinstance(backward, torch.nn.Module) else getattr(backward, "__self__", None)
        params = list(owner.parameters()) if isinstance(owner, torch.nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)
    if field is None:
        field = ForwardField(
            exp_dims=exp_codes.shape[-1],
            id_dims=id_codes.shape[-1] if cfg.use_id else 0,
            hidden=cfg.hidden,
            layers=cfg.layers,
            scale=cfg.length_scale,
            n_freqs=cfg.n_freqs,
        )
        field.set_code_stats(exp_codes, id_codes)
    field.to(device).train()
    opt = torch.optim.Adam(field.parameters(), lr=lr)
    # Cosine decay to 5 % of lr: the last iterations polish the sub-millimetre error.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s / max(iterations, 1), 1.0)))
    )
    gen = torch.Generator().manual_seed(seed)
    n_pts, n_exp = canonical_points.shape[1], exp_codes.shape[1]
    history: dict[str, list] = {"step": [], "loss_mm": [], "val_step": [], "val": []}
    stats = _code_stats(id_codes, exp_codes)
    frozen = _frozen(backward)
    t0 = time.perf_counter()
    try:
        bar = _progress(range(1, iterations + 1), progress, "distilling F")
        for step in bar:
            S = cfg.samples_per_step
            i = torch.randint(n_ids, (S,), generator=gen)
            t = torch.randint(n_exp, (S,), generator=gen)
            m = torch.randint(n_pts, (S,), generator=gen)
            x_c = canonical_points[i, m] + cfg.sample_noise * torch.randn(S, 3, generator=gen)
            z_id, z_exp = id_codes[i], exp_codes[i, t]
            z_id, z_exp = _augment_codes(z_id, z_exp, id_codes, exp_codes, i, cfg, stats, gen)
            x_c, z_id, z_exp = x_c.to(device), z_id.to(device), z_exp.to(device)
            x_p = field(x_c, z_exp, z_id if field.id_dims else None)
            err = (backward(x_p, z_id, z_exp) - x_c).norm(dim=-1)  # eq. (1)
            if cfg.loss == "l2":
                loss = err.mean() / field.scale  # unit-free, so lr does not depend on metres
            else:  # "mse": squares weigh the few large errors (the moving face) more
                loss = (err / field.scale).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % log_every == 0 or step == 1 or step == iterations:
                history["step"].append(step)
                history["loss_mm"].append(err.mean().item() * 1e3)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(cycle_mm=f"{history['loss_mm'][-1]:.3f}")
            if validate is not None and (step % validate_every == 0 or step == iterations):
                field.eval()
                history["val_step"].append(step)
                history["val"].append(float(validate(field)))
                field.train()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    history["seconds"] = time.perf_counter() - t0
    field.eval()
    return field, history


def finetune_forward_field(
    field: ForwardField,
    backward: BackwardFn,
    canonical_points: Tensor,
    z_id: Tensor,
    exp_codes: Tensor,
    cfg: DeformConfig,
    *,
    iterations: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[ForwardField, dict]:
    """Specialise a distilled prior to one avatar: its canonical points (M, 3), identity
    code (id_dims,) and tracked expression codes (T, exp_dims). Returns a fine-tuned copy
    (the prior is left untouched) and its history; ``cfg.finetune_iterations`` steps at
    ``cfg.finetune_lr`` unless ``iterations`` is given."""
    tuned = copy.deepcopy(field)
    return distill_forward_field(
        backward,
        torch.as_tensor(canonical_points).float()[None],
        torch.as_tensor(z_id).float()[None],
        torch.as_tensor(exp_codes).float()[None],
        cfg,
        field=tuned,
        iterations=cfg.finetune_iterations if iterations is None else iterations,
        lr=cfg.finetune_lr,
        seed=seed,
        progress=progress,
    )


def _code_stats(id_codes: Tensor, exp_codes: Tensor) -> dict[str, Tensor]:
    e = exp_codes.reshape(-1, exp_codes.shape[-1])
    return {"id_mean": id_codes.mean(0), "id_std": id_codes.std(0) if len(id_codes) > 1 else torch.zeros_like(id_codes[0]),
            "exp_mean": e.mean(0), "exp_std": e.std(0) if len(e) > 1 else torch.zeros_like(e[0])}


def _augment_codes(z_id, z_exp, id_codes, exp_codes, i, cfg: DeformConfig, stats, gen):
    """Replace part of the batch's codes by codes *between* and *around* the training codes.

    B accepts any code and the cycle loss needs no ground truth, so distillation may visit
    codes no scan was recorded with. A few hundred training codes cover a 10-30 dimensional
    code space very sparsely: trained on them alone, F is wrong on unseen expressions and,
    with a handful of identities, on unseen identities. So a fraction ``cfg.code_mixing`` of
    each batch gets blends of two training codes (segments between real codes), and a
    fraction ``cfg.code_sampling`` fresh draws from a diagonal Gaussian fitted to the
    training codes; head models like NPHM regularise their codes towards such a Gaussian,
    so its typical region is where B was trained to be meaningful.
    """
    S = z_exp.shape[0]
    n_ids, n_exp = exp_codes.shape[:2]
    u = torch.rand(S, generator=gen)
    mix = u < cfg.code_mixing
    draw = (u >= cfg.code_mixing) & (u < cfg.code_mixing + cfg.code_sampling)
    lam = torch.rand(S, 1, generator=gen)
    t2 = torch.randint(n_exp, (S,), generator=gen)
    i2 = torch.randint(n_ids, (S,), generator=gen)
    z_exp = torch.where(mix[:, None], (1 - lam) * z_exp + lam * exp_codes[i, t2], z_exp)
    lam_id = torch.rand(S, 1, generator=gen)
    z_id = torch.where(mix[:, None], (1 - lam_id) * z_id + lam_id * id_codes[i2], z_id)
    g_exp = stats["exp_mean"] + stats["exp_std"] * torch.randn(S, z_exp.shape[1], generator=gen)
    g_id = stats["id_mean"] + stats["id_std"] * torch.randn(S, z_id.shape[1], generator=gen)
    z_exp = torch.where(draw[:, None], g_exp, z_exp)
    z_id = torch.where(draw[:, None], g_id, z_id)
    return z_id, z_exp


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return it
    return tqdm(it, desc=desc, leave=False, mininterval=1.0)
