"""Chapter 5's isolating experiment: can G represent sharp motion without per-Gaussian features?

NPGA (Sec. 4.2) argues that an MLP on a positional encoding of the canonical position is
band-limited (and, trained by gradient descent, biased towards smooth functions), so it blurs
motion that changes abruptly between neighbouring points: the upper and the lower lip, which
touch in the neutral face and move apart when the jaw opens; an eyelid fold over the eyeball.
Per-Gaussian features f_i can differ arbitrarily between neighbours.

The avatar experiments mix this with rendering, tracking and density control. This one asks
the question alone, against SynthHead's ground truth:

* points: the ground-truth mesh vertices of the face (skin and eyelids, front of the head)
  of the neutral expression, standing in for canonical Gaussians;
* targets: their ground-truth motion d_i(z) = V_i(z) - V_i(0) for random expressions z
  (SynthHead's generator, :func:`npga.capture.synthetic.head.sample_expression`), training
  and held-out expressions drawn separately;
* models: the avatar's own detail network :class:`npga.avatar.dynamics.DetailNetwork`
  (the profile's width, depth and octaves; the true codes as input, so tracking plays no
  part), vanilla (``feature_dim = 0``) against +features (the profile's ``feature_dim``,
  learned jointly at the avatar's feature learning rate), fitted by Adam to the training
  expressions with the same steps and learning rates;
* metric: the RMS position error (mm) on the held-out expressions, over all points and over
  the *sharp* points: the 10 % whose ground-truth motion differs most from the mean motion of
  their k nearest neighbours (the norm of the uniform graph Laplacian of d, averaged over the
  training expressions). The sharp set is defined by the ground truth, not by either model.

Here F is left out (G fits the whole motion, as if the prior had learned nothing): the
question is only whether the encoding can represent a jump between neighbours; an F
distilled from a smooth head model removes the smooth part and leaves the same jumps.

    python -m npga.experiments.detail_fit --profile cpu --seeds 0 1 2 3 4

writes ``benchmarks/results/detail_fit_{profile}.json`` and ``.md``; chapter 5 runs the mini
profile live and loads the stored cpu record.
"""

from __future__ import annotations

import datetime
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from npga.avatar.dynamics import DetailNetwork
from npga.avatar.regularizers import graph_laplacian, knn_graph, laplacian_energy
from npga.avatar.train import TrainConfig
from npga.config import Profile
from npga.experiments.ablation import (
    add_seed_stats,
    experiment_main,
    format_p,
    judge,
    machine,
    paired_difference,
    record_footer,
)

EXPERIMENT = "detail_fit"
FACE_PARTS = ("skin", "eyelid_l", "eyelid_r")
VARIANTS = ("vanilla", "features")
KEYS = (("heldout_rms_mm", "held-out, all points"), ("heldout_sharp_rms_mm", "held-out, sharp points"),
        ("train_sharp_rms_mm", "training, sharp points"))


@dataclass
class DetailFitConfig:
    """Sizes of the experiment (``for_profile`` scales them; the defaults are cpu's)."""

    n_train: int = 48  # training expressions
    n_test: int = 24  # held-out expressions
    steps: int = 2000  # Adam steps per fit
    batch: int = 4  # expressions per step (all points of each)
    knn: int = 6  # neighbours of the sharpness measure
    sharp_fraction: float = 0.1  # the sharpest points, by ground truth
    point_stride: int = 1  # keep every k-th face vertex (mini: fewer points)
    data_seed: int = 0  # the expressions (shared by every seed: seeds vary the fits)

    @classmethod
    def for_profile(cls, profile: Profile) -> "DetailFitConfig":
        if profile.name == "mini":  # live in chapter 5: about 40 s on one core
            return cls(n_train=32, n_test=16, steps=1000, batch=2, point_stride=4)
        return cls()


@dataclass
class MotionData:
    """Canonical points, their true motion under training and held-out expressions."""

    points: Tensor  # (N, 3) neutral positions, metres
    z_train: Tensor  # (Kt, E) expression codes
    d_train: Tensor  # (Kt, N, 3) true motion, metres
    z_test: Tensor  # (Kh, E)
    d_test: Tensor  # (Kh, N, 3)
    sharpness: Tensor  # (N,) mean |L d| over the training expressions, metres
    sharp: Tensor  # (N,) bool: the sharpest sharp_fraction of the points
    parts: np.ndarray  # (N,) SynthHead part index of each point


def motion_data(head, cfg: DetailFitConfig) -> MotionData:
    """The points and targets of the experiment from a :class:`SynthHead` (its ground truth)."""
    from npga.capture.synthetic import PART_NAMES
    from npga.capture.synthetic.head import EXPRESSION_NAMES, sample_expression

    pov = np.asarray(head.part_of_vertex)
    v0 = head.vertices(np.zeros(len(EXPRESSION_NAMES)))
    face = np.isin(pov, [PART_NAMES.index(n) for n in FACE_PARTS])
    # the front of the head, above the chin's underside (head space: +z forward, +y up)
    idx = np.where(face & (v0[:, 2] > 0.0) & (v0[:, 1] > -0.09))[0][:: cfg.point_stride]
    if len(idx) < 2 * cfg.knn:
        raise ValueError(f"only {len(idx)} face points in this SynthHead: too few for the experiment")
    rng = np.random.default_rng(cfg.data_seed)
    z_tr = np.stack([sample_expression(rng) for _ in range(cfg.n_train)])
    z_te = np.stack([sample_expression(rng) for _ in range(cfg.n_test)])

    def motion(zs):
        return torch.tensor(np.stack([head.vertices(z)[idx] - v0[idx] for z in zs]), dtype=torch.float32)

    pts = torch.tensor(v0[idx], dtype=torch.float32)
    d_tr = motion(z_tr)
    nbrs = knn_graph(pts, cfg.knn)
    sharpness = torch.stack([graph_laplacian(d, nbrs).norm(dim=-1) for d in d_tr]).mean(0)
    sharp = sharpness >= torch.quantile(sharpness, 1.0 - cfg.sharp_fraction)
    return MotionData(pts, torch.tensor(z_tr, dtype=torch.float32), d_tr, torch.tensor(z_te, dtype=torch.float32),
                      motion(z_te), sharpness, sharp, pov[idx])


def synth_head(profile: Profile, participant: int = 0):
    """Participant ``participant``'s SynthHead, exactly as the profile's capture generates it
    (the experiment needs its geometry only, not the rendered capture)."""
    from npga.capture.synthetic import SynthHead, sample_identity

    return SynthHead(sample_identity(participant, profile.seed), profile.data.mesh_resolution)


def _predict(net: DetailNetwork, x: Tensor, feats: Tensor | None, z: Tensor) -> Tensor:
    """G's position offsets for every point under each of B codes: (B, N, 3)."""
    b, n = z.shape[0], x.shape[0]
    zz = z[:, None, :].expand(b, n, -1).reshape(b * n, -1)
    ff = None if feats is None else feats.repeat(b, 1)
    return net(x.repeat(b, 1), ff, zz)[0].reshape(b, n, 3)


def _rms_mm(err: Tensor) -> float:
    return 1e3 * float(err.pow(2).sum(-1).mean().sqrt())


@dataclass
class LaplacianWeights:
    """NPGA's two Laplacian terms (Sec. 4.4) on a fit: lambda_f mean |L f|^2 on the features
    and lambda_d mean |L delta|^2 on G's position offsets (mm) at the batch's codes, over the
    k-NN graph of the points (chapter 6; the avatar's version is LaplacianRegularizer)."""

    features: float = 0.0
    dynamics: float = 0.0
    knn: int = 8


def train_detail(data: MotionData, profile: Profile, feature_dim: int, seed: int, cfg: DetailFitConfig,
                 laplacian: LaplacianWeights | None = None) -> tuple[DetailNetwork, Tensor | None, float]:
    """Fit one G (vanilla when ``feature_dim`` is 0) to the training motion by Adam;
    returns (G, features or None, wall seconds)."""
    torch.manual_seed(seed)
    a = profile.avatar
    net = DetailNetwork(data.z_train.shape[1], feature_dim=feature_dim, hidden=a.detail_hidden,
                        layers=a.detail_layers, n_freqs=a.detail_freqs,
                        center=tuple(data.points.mean(0).tolist()), scale=0.1)
    tc = TrainConfig.from_profile(profile)
    groups = [{"params": list(net.parameters()), "lr": tc.lr_detail}]
    feats = None
    if feature_dim:
        # the avatar initialises its features small and random (npga.avatar.model)
        feats = torch.nn.Parameter(1e-2 * torch.randn(len(data.points), feature_dim))
        groups.append({"params": [feats], "lr": tc.lr_features})
    lap = laplacian if laplacian is not None and (laplacian.features or laplacian.dynamics) else None
    nbrs = knn_graph(data.points, lap.knn) if lap else None
    opt = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        k = torch.randint(0, len(data.z_train), (cfg.batch,), generator=gen)
        pred = _predict(net, data.points, feats, data.z_train[k])
        # mean squared error in mm^2 (metres would give Adam tiny gradients to scale up)
        loss = (1e3 * (pred - data.d_train[k])).pow(2).sum(-1).mean()
        if lap and lap.features and feats is not None:
            loss = loss + lap.features * laplacian_energy(feats, nbrs)
        if lap and lap.dynamics:
            # (B, N, 3) -> (N, 3B): the graph Laplacian of every code's offsets at once
            offsets_mm = 1e3 * pred.permute(1, 0, 2).reshape(len(data.points), -1)
            loss = loss + lap.dynamics * laplacian_energy(offsets_mm, nbrs) / cfg.batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net, feats, time.perf_counter() - t0


@torch.no_grad()
def motion_errors(net: DetailNetwork, feats: Tensor | None, points: Tensor, z: Tensor, d: Tensor) -> Tensor:
    """Position errors (K, N, 3), metres, of a fitted G on the codes z (K, E) against the true motion d."""
    return _predict(net, points, feats, z) - d


def fit_detail(data: MotionData, profile: Profile, feature_dim: int, seed: int,
               cfg: DetailFitConfig, laplacian: LaplacianWeights | None = None) -> dict:
    """Fit one G (vanilla when ``feature_dim`` is 0) to the training motion; its errors (mm)
    on the held-out and training expressions, the per-point held-out RMS error (for the
    figure) and the wall time."""
    net, feats, wall = train_detail(data, profile, feature_dim, seed, cfg, laplacian)
    e_te = motion_errors(net, feats, data.points, data.z_test, data.d_test)
    e_tr = motion_errors(net, feats, data.points, data.z_train, data.d_train)
    return {
        "heldout_rms_mm": _rms_mm(e_te),
        "heldout_sharp_rms_mm": _rms_mm(e_te[:, data.sharp]),
        "train_rms_mm": _rms_mm(e_tr),
        "train_sharp_rms_mm": _rms_mm(e_tr[:, data.sharp]),
        "point_rms_mm": (1e3 * e_te.pow(2).sum(-1).mean(0).sqrt()).tolist(),
        "seconds": wall,
    }


def run(profile: Profile, seeds, cfg: DetailFitConfig | None = None, participant: int = 0,
        progress: bool = True, command: str = "") -> dict:
    """Both variants for every seed; the results in the ablation's table format."""
    from tqdm.auto import tqdm

    cfg = cfg or DetailFitConfig.for_profile(profile)
    head = synth_head(profile, participant)
    t0 = time.perf_counter()
    data = motion_data(head, cfg)
    table = {v: {"seeds": [], "seconds": []} for v in VARIANTS}
    point_errors = {}
    jobs = [(s, v) for s in seeds for v in VARIANTS]
    for s, v in tqdm(jobs, desc="fit G to the true motion", disable=not progress):
        r = fit_detail(data, profile, profile.avatar.feature_dim if v == "features" else 0, s, cfg)
        t = table[v]
        t["seeds"].append(int(s))
        t["seconds"].append(r["seconds"])
        for key, _ in KEYS:
            t.setdefault(key, {"values": []})["values"].append(r[key])
        if s == seeds[0]:
            point_errors[v] = r["point_rms_mm"]
    add_seed_stats(table)
    return {
        "experiment": EXPERIMENT, "profile": profile.name, "participant": participant,
        "seeds": [int(s) for s in seeds], "config": asdict(cfg),
        "feature_dim": profile.avatar.feature_dim, "n_points": len(data.points),
        "n_sharp": int(data.sharp.sum()),
        "sharp_threshold_mm": 1e3 * float(data.sharpness[data.sharp].min()),
        "motion_rms_mm": _rms_mm(data.d_test),
        "table": table, "point_errors_first_seed": point_errors,
        "points": data.points.tolist(), "sharp": data.sharp.tolist(),
        "seconds": time.perf_counter() - t0, "command": command,
        "machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def comparison(res: dict) -> list[dict]:
    """+features minus vanilla, paired by seed, for each error (negative: features better)."""
    rows = []
    for key, label in KEYS:
        d = paired_difference(res["table"], "features", "vanilla", key)
        rows.append({"error (mm RMS)": label,
                     "vanilla": f"{res['table']['vanilla'][key]['mean']:.2f}",
                     "+features": f"{res['table']['features'][key]['mean']:.2f}",
                     "difference [95% CI]": f"{d['mean']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]",
                     "p (paired t)": format_p(d["p"]), "_d": d})
    return rows


def verdict(res: dict, key: str = "heldout_sharp_rms_mm", alpha: float = 0.05) -> str:
    """One sentence on ``key``: the paired difference, its interval and p, and whether it
    goes the paper's way (features lower the error) at level ``alpha``."""
    d = paired_difference(res["table"], "features", "vanilla", key)
    label = dict(KEYS)[key]
    head = (f"{label}: +features minus vanilla {d['mean']:+.2f} mm (95% CI [{d['ci'][0]:+.2f}, "
            f"{d['ci'][1]:+.2f}], {d['n']} seeds, p {format_p(d['p'])})")
    return head + judge(d, "the features lower the error", "the features *raise* the error", True, alpha)


def to_markdown(res: dict) -> str:
    from npga.book.tools import markdown_table

    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in comparison(res)]
    head = (f"G fitted to SynthHead's true motion, profile `{res['profile']}`: {res['n_points']} face "
            f"points ({res['n_sharp']} sharp, |L d| >= {res['sharp_threshold_mm']:.2f} mm), "
            f"{res['config']['n_train']} training / {res['config']['n_test']} held-out expressions, "
            f"{res['config']['steps']} steps, seeds {res['seeds']}, feature_dim {res['feature_dim']}; "
            f"held-out motion RMS {res['motion_rms_mm']:.2f} mm.")
    return head + "\n\n" + markdown_table(rows, text=True) + record_footer(res)


def figure(res: dict):
    """Per-point held-out error of both fits (first seed), front view, sharp points outlined."""
    import matplotlib.pyplot as plt

    pts = np.asarray(res["points"])
    sharp = np.asarray(res["sharp"])
    errs = res["point_errors_first_seed"]
    vmax = float(np.quantile(np.concatenate([errs[v] for v in VARIANTS]), 0.98))
    fig, ax = plt.subplots(1, 3, figsize=(11, 4.2))
    order = np.argsort(pts[:, 2])  # draw back to front
    for a, v in zip(ax, VARIANTS):
        sc = a.scatter(pts[order, 0] * 1e3, pts[order, 1] * 1e3, c=np.asarray(errs[v])[order], s=4,
                       cmap="magma_r", vmin=0, vmax=vmax)
        a.set_title(f"{'+' if v == 'features' else ''}{v}: error per point", fontsize=10)
    ax[2].scatter(pts[:, 0] * 1e3, pts[:, 1] * 1e3, c="0.85", s=3)
    ax[2].scatter(pts[sharp, 0] * 1e3, pts[sharp, 1] * 1e3, c="tab:blue", s=4)
    ax[2].set_title("sharp points (ground truth)", fontsize=10)
    for a in ax:
        a.set_aspect("equal")
        a.set_xlabel("x (mm)")
        a.set_yticks([]) if a is not ax[0] else a.set_ylabel("y (mm)")
    fig.colorbar(sc, ax=ax[:2], fraction=0.03, label="held-out RMS error (mm)")
    return fig


def main(argv: list[str] | None = None) -> int:
    return experiment_main(argv, EXPERIMENT, __doc__, DetailFitConfig.for_profile, run, to_markdown)


if __name__ == "__main__":
    sys.exit(main())
