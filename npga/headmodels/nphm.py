"""A small neural parametric head model in the spirit of NPHM (Giebenhain et al., CVPR 2023)
and MonoNPHM (Giebenhain et al., CVPR 2024).

A head is the zero level set of a signed distance field in *posed* space,

    S(z_id, z_exp) = { x_p : f( B(x_p, z_id, z_exp), z_id ) = 0 }                (2)

* ``f(x_c, z_id)``: the identity's **canonical SDF** -- one MLP shared by all
  identities, told which one by its code ``z_id`` (DeepSDF, Park et al. 2019);
* ``B(x_p, z_id, z_exp) = x_p + MLP(x_p, z_id, z_exp)``: the **backward deformation**
  that carries a posed point to where it sits in the canonical face. MonoNPHM's B is
  an MLP (6 x 400) with a skip connection; ours has the same shape with the profile's
  sizes. NPHM uses an ensemble of local MLPs around face landmarks for ``f``; we keep
  one global MLP with a positional encoding, enough for SynthHead at book sizes.
  MonoNPHM's B also outputs two hyper-dimensions (ambient coordinates that let the
  canonical SDF change topology, e.g. the lips parting); ours outputs only the 3D point.

The canonical face is *not* the neutral face: like NPHM we use a face with the mouth
open, so that the teeth, tongue and mouth cavity -- visible whenever the jaw drops --
are on the canonical surface. With a closed-mouth canonical face, B would have to map
the inside of an open mouth into the solid, where no zero level set exists.

Latent codes are *auto-decoded*: no encoder; every training identity and scan owns a
code, optimised jointly with the networks (``id_codes``, ``exp_codes``), with a
Gaussian prior ``lam |z|^2``. A new head is explained by optimising new codes with
the networks frozen (:func:`fit_nphm`).

Training (:func:`train_nphm`) follows NPHM's two stages:

1. identity: ``f`` and ``id_codes`` from SDF samples of each canonical mesh --
   ``|f| `` on the surface, ``1 - cos(grad f, n)`` there, ``|f - sdf|`` near the
   surface and in space, the eikonal term ``(|grad f| - 1)^2`` (Gropp et al. 2020);
2. expression: ``B`` and ``exp_codes`` from registered correspondences
   ``|B(x_p) - x_c|^2`` (NPHM supervises B with its registrations in the same way).

Inputs are normalised as ``(x - center) / scale``; ``f`` returns metres.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from npga.headmodels.linear import Linear
from npga.io import load_saved, save_torch

# --------------------------------------------------------------------------- networks


def positional_encoding(x: Tensor, n_freqs: int) -> Tensor:
    """``[x, sin(2^k pi x), cos(2^k pi x)]`` for k < n_freqs; (N, 3) -> (N, 3 + 6 n_freqs)."""
    if n_freqs <= 0:
        return x
    freqs = (2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device)) * math.pi
    xf = x[..., None, :] * freqs[:, None]  # (N, F, 3)
    return torch.cat([x, torch.sin(xf).flatten(-2), torch.cos(xf).flatten(-2)], dim=-1)


class SkipMLP(nn.Module):
    """``layers`` hidden layers of width ``hidden``; the input is concatenated again
    halfway (DeepSDF's skip connection, also MonoNPHM's deformation network).

    Softplus(beta=100) activations: smooth, so the eikonal term and the Jacobians
    the forward-field chapter needs are well defined.
    """

    def __init__(self, d_in: int, d_out: int, hidden: int, layers: int):
        super().__init__()
        self.skip = layers // 2
        dims_in = [d_in] + [hidden] * layers
        self.linears = nn.ModuleList()
        for i in range(layers):
            width_in = dims_in[i] + (d_in if i == self.skip and i > 0 else 0)
            self.linears.append(Linear(width_in, hidden))
        self.out = Linear(hidden, d_out)
        self.act = nn.Softplus(beta=100)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for i, lin in enumerate(self.linears):
            if i == self.skip and i > 0:
                h = torch.cat([h, x], dim=-1) / math.sqrt(2.0)
            h = self.act(lin(h))
        return self.out(h)


def _geometric_init(net: SkipMLP, n_raw: int, radius: float) -> None:
    """Start ``net`` as the SDF of a sphere of ``radius`` (Atzmon & Lipman 2020, IGR).

    Only the first ``n_raw`` inputs (the raw coordinates) get weights at first; the
    encoding and the code enter from zero, as in NeuS, so the start is a clean sphere.
    """
    with torch.no_grad():
        for i, lin in enumerate(net.linears):
            out_dim = lin.weight.shape[0]
            nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0) / math.sqrt(out_dim))
            nn.init.zeros_(lin.bias)
            if i == 0:
                lin.weight[:, n_raw:] = 0.0
            elif i == net.skip:
                d_in = lin.weight.shape[1] - out_dim
                lin.weight[:, -d_in + n_raw :] = 0.0
        hidden = net.out.weight.shape[1]
        nn.init.normal_(net.out.weight, math.sqrt(math.pi) / math.sqrt(hidden), 1e-4)
        nn.init.constant_(net.out.bias, -radius)


# --------------------------------------------------------------------------- model


@dataclass
class NPHMSpec:
    """Everything needed to rebuild an :class:`NPHM` (saved with its weights)."""

    id_dims: int
    exp_dims: int
    n_train_ids: int
    n_train_exps: int
    hidden: int
    layers: int
    sdf_freqs: int = 4
    deform_freqs: int = 2
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 0.15
    canonical_expression: tuple[float, ...] = ()  # the GT expression of the canonical face, if known
    info: dict = field(default_factory=dict)


class NPHM(nn.Module):
    """Canonical SDF ``f(x_c, z_id)`` and backward deformation ``B(x_p, z_id, z_exp)``; eq. (2).

    ``id_codes`` (n_train_ids, id_dims) and ``exp_codes`` (n_train_ids, n_train_exps,
    exp_dims) are the auto-decoded codes of the training scans.
    """

    def __init__(self, spec: NPHMSpec):
        super().__init__()
        self.spec = spec
        self.id_dims = int(spec.id_dims)
        self.exp_dims = int(spec.exp_dims)
        self.register_buffer("center", torch.tensor(spec.center, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(float(spec.scale), dtype=torch.float32))
        d_sdf = 3 + 6 * spec.sdf_freqs
        self.sdf_net = SkipMLP(d_sdf + spec.id_dims, 1, spec.hidden, spec.layers)
        _geometric_init(self.sdf_net, 3, radius=0.8)
        d_def = 3 + 6 * spec.deform_freqs
        self.deform_net = SkipMLP(d_def + spec.id_dims + spec.exp_dims, 3, spec.hidden, spec.layers)
        with torch.no_grad():  # B starts as the identity map
            self.deform_net.out.weight.mul_(1e-3)
            self.deform_net.out.bias.zero_()
        self.id_codes = nn.Parameter(0.01 * torch.randn(spec.n_train_ids, spec.id_dims))
        self.exp_codes = nn.Parameter(0.01 * torch.randn(spec.n_train_ids, spec.n_train_exps, spec.exp_dims))

    # ---- the two fields

    def _normalise(self, x: Tensor) -> Tensor:
        return (x - self.center) / self.scale

    @staticmethod
    def _codes(z: Tensor, n: int) -> Tensor:
        return z.expand(n, -1) if z.dim() == 1 else z

    def sdf(self, x_c: Tensor, z_id: Tensor) -> Tensor:
        """Canonical signed distance in metres. x_c (N, 3), z_id (id_dims,) or (N, id_dims) -> (N,)."""
        h = positional_encoding(self._normalise(x_c), self.spec.sdf_freqs)
        z = self._codes(z_id, x_c.shape[0]).to(h.dtype)
        return self.sdf_net(torch.cat([h, z], dim=-1))[:, 0] * self.scale

    def backward(self, x_p: Tensor, z_id: Tensor, z_exp: Tensor) -> Tensor:
        """B: posed -> canonical. x_p (N, 3); z_id (id_dims,) or (N, id_dims); z_exp likewise -> (N, 3)."""
        n = x_p.shape[0]
        h = positional_encoding(self._normalise(x_p), self.spec.deform_freqs)
        z = torch.cat([self._codes(z_id, n), self._codes(z_exp, n)], dim=-1).to(h.dtype)
        return x_p + self.deform_net(torch.cat([h, z], dim=-1)) * self.scale

    def posed_sdf(self, x_p: Tensor, z_id: Tensor, z_exp: Tensor) -> Tensor:
        """``f(B(x_p, z_id, z_exp), z_id)``: the posed head's (approximate) SDF, (N,)."""
        return self.sdf(self.backward(x_p, z_id, z_exp), z_id)

    # ---- surfaces

    def bounds(self, margin: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """A box (lo, hi) around the training heads, for marching cubes."""
        c = self.center.cpu().numpy().astype(np.float64)
        r = float(self.scale) * (1.0 + margin)
        return c - r, c + r

    @torch.no_grad()
    def extract_mesh(
        self, z_id: Tensor, z_exp: Tensor | None = None, resolution: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        """Marching cubes of the canonical (``z_exp`` None) or posed surface: vertices (V, 3), faces (F, 3)."""
        from npga.headmodels.geometry import marching_cubes

        z_id = torch.as_tensor(z_id, dtype=torch.float32)

        def fn(p: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(p.astype(np.float32))
            if z_exp is None:
                return self.sdf(x, z_id).numpy()
            return self.posed_sdf(x, z_id, torch.as_tensor(z_exp, dtype=torch.float32)).numpy()

        lo, hi = self.bounds()
        return marching_cubes(fn, lo, hi, resolution)

    def canonical_surface_points(self, z_id: Tensor, n: int, seed: int = 0, resolution: int = 64) -> Tensor:
        """``n`` points (n, 3) on the zero level set of ``f(., z_id)``.

        Area-uniform samples of the marching-cubes mesh, then two Newton steps
        ``x <- x - f(x) grad f / |grad f|^2`` onto the level set itself.
        """
        from npga.headmodels.geometry import sample_surface

        verts, faces = self.extract_mesh(z_id, None, resolution)
        if len(faces) == 0:
            raise RuntimeError("canonical_surface_points: the canonical SDF has no zero level set")
        rng = np.random.default_rng(seed)
        pts, _, _ = sample_surface(verts, faces, n, rng)
        x = torch.from_numpy(pts.astype(np.float32))
        z_id = torch.as_tensor(z_id, dtype=torch.float32).detach()
        for _ in range(2):
            x = x.detach().requires_grad_(True)
            f = self.sdf(x, z_id)
            (g,) = torch.autograd.grad(f.sum(), x)
            x = x - (f / g.pow(2).sum(-1).clamp_min(1e-8))[:, None] * g
        return x.detach()

    # ---- I/O

    def save(self, path: str | Path) -> None:
        """Write spec and weights atomically (``npga.io.save_torch``)."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        save_torch(path, {"kind": "nphm", "spec": asdict(self.spec), "state": state})

    @classmethod
    def load(cls, path: str | Path) -> "NPHM":
        obj = load_saved(path, "nphm", "NPHM")
        spec = dict(obj["spec"])
        spec["center"] = tuple(spec["center"])
        spec["canonical_expression"] = tuple(spec.get("canonical_expression", ()))
        model = cls(NPHMSpec(**spec))
        model.load_state_dict(obj["state"])
        return model.eval()


# --------------------------------------------------------------------------- training


@dataclass
class NPHMData:
    """Precomputed supervision, all float32 tensors (metres).

    ``sdf_*``: per training identity i, samples of its canonical mesh; ``corr_*``: per
    training identity i and expression j, correspondences posed -> canonical.
    """

    surface: Tensor  # (S, n_s, 3)
    normals: Tensor  # (S, n_s, 3)
    points: Tensor  # (S, n_p, 3)
    sdf: Tensor  # (S, n_p)
    corr_posed: Tensor  # (S, X, n_c, 3)
    corr_canonical: Tensor  # (S, X, n_c, 3)


@dataclass
class TrainLog:
    stage: list[str] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_nphm(
    model: NPHM,
    data: NPHMData,
    iterations: int,
    deform_iterations: int,
    batch: int,
    seed: int = 0,
    progress: bool = True,
    train_identity: bool = True,
    lr: float = 1e-3,
    code_lr: float = 5e-3,
    weights: dict | None = None,
) -> TrainLog:
    """The two training stages of the module docstring, in place; returns the loss curve.

    ``batch``: samples per step in each stage (split across the identities/scans of
    the step). ``train_identity=False`` skips stage 1 (to retrain only B, e.g. at
    another ``exp_dims`` with ``f`` copied from a trained model).
    """
    from tqdm import tqdm

    w = {"surf": 3.0, "normal": 0.3, "sdf": 1.0, "eik": 0.1, "reg_id": 1e-3, "reg_exp": 1e-4}
    w.update(weights or {})
    g = torch.Generator().manual_seed(seed)
    log = TrainLog()
    t0 = time.perf_counter()
    S = data.surface.shape[0]
    scale = float(model.scale)

    if train_identity and iterations > 0:
        params = list(model.sdf_net.parameters())
        opt = torch.optim.Adam([{"params": params, "lr": lr}, {"params": [model.id_codes], "lr": code_lr}])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations, eta_min=lr * 0.05)
        per = max(batch // (2 * S), 8)
        bar = tqdm(range(iterations), desc="NPHM identity (f)", disable=not progress, leave=False)
        for it in bar:
            ids = torch.arange(S)
            si = torch.randint(data.surface.shape[1], (S, per), generator=g)
            pi = torch.randint(data.points.shape[1], (S, per), generator=g)
            xs = torch.gather(data.surface, 1, si[..., None].expand(-1, -1, 3)).reshape(-1, 3)
            ns = torch.gather(data.normals, 1, si[..., None].expand(-1, -1, 3)).reshape(-1, 3)
            xq = torch.gather(data.points, 1, pi[..., None].expand(-1, -1, 3)).reshape(-1, 3)
            dq = torch.gather(data.sdf, 1, pi).reshape(-1)
            z = model.id_codes[ids].repeat_interleave(per, 0)
            x = torch.cat([xs, xq]).requires_grad_(True)
            f = model.sdf(x, torch.cat([z, z])) / scale  # normalised units: |grad| = 1
            (grad,) = torch.autograd.grad(f.sum(), x, create_graph=True)
            grad = grad * scale
            n = xs.shape[0]
            l_surf = f[:n].abs().mean()
            l_norm = (1 - torch.nn.functional.cosine_similarity(grad[:n], ns, dim=-1)).mean()
            l_sdf = (f[n:] - dq / scale).abs().mean()
            l_eik = (grad.norm(dim=-1) - 1).pow(2).mean()
            l_reg = model.id_codes.pow(2).sum(-1).mean()
            loss = (
                w["surf"] * l_surf + w["normal"] * l_norm + w["sdf"] * l_sdf
                + w["eik"] * l_eik + w["reg_id"] * l_reg
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if it % 10 == 0 or it == iterations - 1:
                log.stage.append("identity")
                log.step.append(it)
                log.loss.append(float(loss.detach()))
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", surf_mm=f"{float(l_surf.detach()) * scale * 1e3:.2f}")

    X = data.corr_posed.shape[1]
    if deform_iterations > 0:
        params = list(model.deform_net.parameters())
        opt = torch.optim.Adam([{"params": params, "lr": lr}, {"params": [model.exp_codes], "lr": code_lr}])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, deform_iterations, eta_min=lr * 0.05)
        n_scans = min(S * X, 16)
        per = max(batch // n_scans, 16)
        bar = tqdm(range(deform_iterations), desc="NPHM expression (B)", disable=not progress, leave=False)
        for it in bar:
            flat = torch.randperm(S * X, generator=g)[:n_scans]
            si, ej = flat // X, flat % X
            ci = torch.randint(data.corr_posed.shape[2], (n_scans, per), generator=g)
            xp = data.corr_posed[si[:, None], ej[:, None], ci].reshape(-1, 3)
            xc = data.corr_canonical[si[:, None], ej[:, None], ci].reshape(-1, 3)
            zi = model.id_codes.detach()[si].repeat_interleave(per, 0)
            ze = model.exp_codes[si, ej].repeat_interleave(per, 0)
            pred = model.backward(xp, zi, ze)
            l_corr = ((pred - xc) / scale).pow(2).sum(-1).mean()
            l_reg = model.exp_codes.pow(2).sum(-1).mean()
            loss = l_corr + w["reg_exp"] * l_reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if it % 10 == 0 or it == deform_iterations - 1:
                log.stage.append("expression")
                log.step.append(it)
                log.loss.append(float(loss.detach()))
                rms = float(l_corr.detach().sqrt()) * scale * 1e3
                bar.set_postfix(loss=f"{float(loss.detach()):.5f}", rms_mm=f"{rms:.2f}")
    log.seconds = time.perf_counter() - t0
    return log


# --------------------------------------------------------------------------- fitting


def fit_nphm(
    model: NPHM,
    points: Sequence[np.ndarray],
    z_id: Tensor | np.ndarray | None = None,
    iterations: int = 150,
    points_per_step: int = 1024,
    lr: float = 1e-2,
    lam_id: float = 1e-4,
    lam_exp: float = 1e-4,
    smooth: float = 0.0,
    trim: float = 0.01,
    segments: Sequence[int] | None = None,
    z_exp_init: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Codes that put each frame's points (N_t, 3) on the surface of eq. (2), networks frozen.

    Minimises ``mean_t mean_i min(|f(B(p_ti, z_id, z_t), z_id)|, trim)`` (metres; the
    truncation ignores outliers) ``+ lam_id |z_id|^2 + lam_exp mean_t |z_t|^2
    + smooth mean_t |z_t - z_{t-1}|^2`` (never across ``segments``, the frame counts of
    consecutive sequences). ``z_id`` given: kept fixed; else one shared code is
    fitted, starting from the mean training code. The points are in head space; see
    :func:`fit_nphm_posed` for points in world space with a per-frame head pose. Returns
    ``z_id``, ``z_exp`` (T, d) and the data term per step.
    """
    zi, ze, _, _, history = _fit_nphm(
        model, points, z_id=z_id, pose=None, iterations=iterations, points_per_step=points_per_step, lr=lr,
        lam_id=lam_id, lam_exp=lam_exp, smooth=smooth, pose_smooth=0.0, trim=trim, segments=segments,
        z_exp_init=z_exp_init, seed=seed,
    )
    return zi, ze, history


def fit_nphm_posed(
    model: NPHM,
    points: Sequence[np.ndarray],
    rotation: np.ndarray,
    translation: np.ndarray,
    *,
    pose_smooth: float = 1e-2,
    **fit_args: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """:func:`fit_nphm` for world-space points, refining a per-frame head pose jointly.

    Frame t's points are taken to head space by ``R_t^T (p - t_t)`` with
    ``R_t = R0_t exp([w_t]_x)`` and ``t_t = t0_t + d_t``, starting from the given pose
    (``rotation`` (T, 3, 3), ``translation`` (T, 3), e.g. the 3DMM tracker's) and
    optimising ``w_t`` (radians) and ``d_t`` (metres) with the codes; ``pose_smooth``
    weighs ``|w_t - w_{t-1}|^2 + |d_t - d_{t-1}|^2 / (0.1 m)^2`` inside each sequence.
    ``fit_args`` are :func:`fit_nphm`'s keyword arguments. Returns ``z_id``, ``z_exp``,
    the refined rotation and translation, and the data term per step.
    """
    import inspect

    args = {k: p.default for k, p in inspect.signature(fit_nphm).parameters.items()
            if p.default is not inspect.Parameter.empty}
    unknown = set(fit_args) - set(args)
    if unknown:
        raise TypeError(f"fit_nphm_posed: unknown arguments {sorted(unknown)}")
    args.update(fit_args)
    return _fit_nphm(model, points, pose=(rotation, translation), pose_smooth=pose_smooth, **args)


def _fit_nphm(model, points, *, z_id, pose, iterations, points_per_step, lr, lam_id, lam_exp, smooth, pose_smooth,
              trim, segments, z_exp_init, seed):
    from npga.headmodels.pose import axis_angle_to_matrix

    T = len(points)
    if T == 0:
        raise ValueError("fit_nphm: no frames")
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    fixed = z_id is not None
    zi = (
        torch.as_tensor(z_id, dtype=torch.float32).clone()
        if fixed
        else model.id_codes.detach().mean(0).clone()
    ).requires_grad_(not fixed)
    ze0 = np.zeros((T, model.exp_dims), np.float32) if z_exp_init is None else np.asarray(z_exp_init, np.float32)
    ze = torch.tensor(ze0).requires_grad_(True)
    pts = [torch.as_tensor(np.asarray(p), dtype=torch.float32) for p in points]
    groups = [{"params": [ze] + ([] if fixed else [zi])}]
    if pose is not None:
        R0 = torch.as_tensor(np.asarray(pose[0]), dtype=torch.float32)
        t0 = torch.as_tensor(np.asarray(pose[1]), dtype=torch.float32)
        w = torch.zeros(T, 3, requires_grad=True)
        d = torch.zeros(T, 3, requires_grad=True)  # in units of 0.1 m, so that lr means the same for both
        groups.append({"params": [w, d], "lr": lr * 0.1})
    opt = torch.optim.Adam(groups, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations, eta_min=lr * 0.05)
    bounds = np.cumsum([0, *(segments or [T])])
    link = torch.ones(T, dtype=torch.bool)
    link[torch.as_tensor(bounds[:-1], dtype=torch.long)] = False  # z_t - z_{t-1} only inside a sequence
    history = []
    try:
        for _ in range(iterations):
            xs, zs = [], []
            if pose is not None:
                R = R0 @ axis_angle_to_matrix(w)  # (T, 3, 3)
                tr = t0 + 0.1 * d
            for t, p in enumerate(pts):
                k = min(points_per_step, len(p))
                idx = torch.randint(len(p), (k,), generator=g)
                x = p[idx]
                if pose is not None:
                    x = (x - tr[t]) @ R[t]  # R^T (x - t), row vectors
                xs.append(x)
                zs.append(ze[t].expand(k, -1))
            x = torch.cat(xs)
            f = model.posed_sdf(x, zi, torch.cat(zs))
            data = torch.clamp(f.abs(), max=trim).mean()
            loss = data + lam_exp * ze.pow(2).sum(-1).mean()
            if not fixed:
                loss = loss + lam_id * zi.pow(2).sum()
            if smooth > 0 and T > 1:
                diff = (ze[1:] - ze[:-1]).pow(2).sum(-1)[link[1:]]
                if diff.numel():
                    loss = loss + smooth * diff.mean()
            if pose is not None and pose_smooth > 0 and T > 1:
                dp = ((w[1:] - w[:-1]).pow(2).sum(-1) + (d[1:] - d[:-1]).pow(2).sum(-1))[link[1:]]
                if dp.numel():
                    loss = loss + pose_smooth * dp.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            history.append(float(data.detach()))
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    out_R = out_t = None
    if pose is not None:
        with torch.no_grad():
            out_R = (R0 @ axis_angle_to_matrix(w)).double().numpy()
            out_t = (t0 + 0.1 * d).double().numpy()
    return zi.detach().numpy().astype(np.float64), ze.detach().numpy().astype(np.float64), out_R, out_t, history


__all__ = ["NPHM", "NPHMData", "NPHMSpec", "SkipMLP", "TrainLog", "fit_nphm", "fit_nphm_posed", "positional_encoding", "train_nphm"]
