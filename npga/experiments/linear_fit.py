"""Chapter 3's isolating experiment: where does a *linear* expression model fail?

A 3DMM writes every expression as the mean plus a linear combination of basis offsets, so
each latent dimension moves every vertex along a straight line. A jaw does not move that
way: it rotates about a hinge (SynthHead's ``jaw_open``: up to 24 degrees, with a forward
glide of the condyles that sets in part-way), so the chin travels along a curved path. One
basis column per parameter can only follow the best straight line through that path; the
error is where the path bends away from it. More columns remove it -- the cost of
linearity is *dimensions* (and extrapolation), not an error no basis can avoid: with the
codes refitted per scan, enough columns fit any finite training set exactly.

The chapter's head models mix linearity with everything else (an implicit surface, point
fitting, a small network's training error). This experiment isolates it on SynthHead's
registered meshes:

* one identity per seed (``sample_identity(1000 + seed)``: no capture participant), moving
  only the parameters in ``params`` (default: the jaw);
* a FLAME-like *limited* training set: ``n_train`` scans at random amplitudes in [0, 1]
  plus the neutral and the extreme (FLAME's captures include extreme expressions);
* three models fitted to the same scans, compared at **equal latent size** d (the number of
  parameters moved):

  - ``linear``: a 3DMM, the mean and d principal components of the training offsets;
  - ``nonlinear``: the mean plus an MLP decoder D(z) from d latent dimensions to every
    vertex offset, *auto-decoded* as NPHM is trained: the training scans' codes are
    optimised jointly with the decoder;
  - ``linear-2d``: the 3DMM with 2 d components (twice the latent size);

* each model is fitted to registered held-out scans (codes only; least squares for the
  3DMM, Adam from the best training code for the decoder), on a grid of amplitudes;
* metric: RMS vertex error (mm) over the vertices the motion moves (by more than 1 mm at
  full amplitude), over all test amplitudes and at the worst one; the difference
  ``linear - nonlinear`` is paired by seed;
* the non-linearity itself: how many principal components a dense sweep of the first
  parameter needs for 0.1 mm, against the one parameter that generates it.

    python -m npga.experiments.linear_fit --profile cpu --seeds 0 1 2 3 4

writes ``benchmarks/results/linear_fit_{profile}.json`` and ``.md``; chapter 3 runs the
mini profile live and loads the stored cpu record.
"""

from __future__ import annotations

import datetime
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from npga.config import Profile
from npga.experiments.ablation import (
    add_seed_stats,
    experiment_main,
    format_p,
    judge,
    seed_pairs_plot,
    machine,
    paired_difference,
    record_footer,
)

EXPERIMENT = "linear_fit"
MODELS = ("linear", "nonlinear", "linear-2d")
KEYS = (("test_rms_mm", "held-out scans, all amplitudes"), ("worst_mm", "held-out scans, worst amplitude"),
        ("train_rms_mm", "training scans"))
IDENTITY_OFFSET = 1000  # identities of this experiment: none is a capture participant


@dataclass
class LinearFitConfig:
    """Sizes of the experiment (``for_profile`` scales them; the defaults are cpu's)."""

    params: tuple[str, ...] = ("jaw_open",)  # the expression parameters that move
    n_train: int = 10  # training scans besides the neutral (FLAME-like: a limited set)
    n_test: int = 21  # held-out amplitudes of the first parameter, evenly in [0, 1]
    hidden: int = 64  # the decoder's width (two hidden layers)
    steps: int = 3000  # Adam steps of the auto-decoder
    lr: float = 3e-3  # its learning rate (the codes' is 10x)
    fit_steps: int = 300  # Adam steps of a test fit (codes only)
    moving_mm: float = 1.0  # a vertex counts when it moves more than this at full amplitude
    dense: int = 101  # scans of the dense sweep that measures the non-linearity

    @classmethod
    def for_profile(cls, profile: Profile) -> "LinearFitConfig":
        if profile.name == "mini":  # live in chapter 3
            return cls(n_test=11, steps=1500, fit_steps=150)
        return cls()


@dataclass
class Scans1:
    """One identity's registered scans of the moving vertices (flattened, metres)."""

    train: np.ndarray  # (n_train + 1, 3M)
    test: np.ndarray  # (n_test, 3M)
    test_amplitude: np.ndarray  # (n_test,) the first parameter
    dense: np.ndarray  # (dense, 3M) the first parameter swept alone
    n_moving: int


def expression(names: tuple[str, ...], values) -> np.ndarray:
    """A SynthHead expression code with ``names`` set to ``values`` and the rest 0."""
    from npga.capture.synthetic import EXPRESSION_NAMES

    z = np.zeros(len(EXPRESSION_NAMES))
    for n, v in zip(names, np.atleast_1d(values)):
        if n not in EXPRESSION_NAMES:
            raise ValueError(f"unknown expression parameter {n!r}; SynthHead has {EXPRESSION_NAMES}")
        z[EXPRESSION_NAMES.index(n)] = v
    return z


def make_scans(head, cfg: LinearFitConfig, seed: int) -> Scans1:
    """Registered scans of ``head`` (anything with ``vertices(z_exp)``) for one seed: random
    training amplitudes, a test grid in the first parameter (the others random), a dense sweep."""
    rng = np.random.default_rng(seed)
    d = len(cfg.params)
    full = head.vertices(expression(cfg.params, np.ones(d)))
    neutral = head.vertices(expression(cfg.params, np.zeros(d)))
    moving = np.linalg.norm(full - neutral, axis=1) > 1e-3 * cfg.moving_mm
    if moving.sum() < 3:
        raise ValueError(f"parameters {cfg.params} move fewer than 3 vertices by {cfg.moving_mm} mm")

    def scan(a) -> np.ndarray:
        return head.vertices(expression(cfg.params, a))[moving].ravel()

    # the neutral, the extreme (FLAME's captures include extreme expressions) and random ones
    train_a = np.vstack([np.zeros(d), np.ones(d), rng.uniform(0, 1, (cfg.n_train - 1, d))])
    grid = np.linspace(0, 1, cfg.n_test)
    test_a = np.column_stack([grid, rng.uniform(0, 1, (cfg.n_test, d - 1))])
    dense = np.linspace(0, 1, cfg.dense)
    return Scans1(np.stack([scan(a) for a in train_a]), np.stack([scan(a) for a in test_a]), grid,
                  np.stack([scan(np.r_[a, np.zeros(d - 1)]) for a in dense]), int(moving.sum()))


def pca_basis(train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The 3DMM of the training scans: mean (3M,) and k principal directions (k, 3M)."""
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    return mean, vt[:k]


def fit_linear(mean: np.ndarray, basis: np.ndarray, scans: np.ndarray) -> np.ndarray:
    """Least-squares codes of ``scans`` (S, 3M) in the orthonormal basis; their reconstruction."""
    return mean + ((scans - mean) @ basis.T) @ basis


def components_for(scans: np.ndarray, tol_mm: float = 0.1) -> int:
    """How many principal components reconstruct every scan of ``scans`` to ``tol_mm`` RMS."""
    mean = scans.mean(0)
    _, _, vt = np.linalg.svd(scans - mean, full_matrices=False)
    for k in range(vt.shape[0] + 1):
        if _rms_mm(fit_linear(mean, vt[:k], scans), scans).max() <= tol_mm:
            return k
    return vt.shape[0]


def _rms_mm(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per scan: the RMS vertex distance (mm) between flattened vertex arrays (S, 3M)."""
    diff = (pred - target).reshape(len(target), -1, 3)
    return 1e3 * np.sqrt((diff ** 2).sum(-1).mean(-1))


class Decoder(torch.nn.Module):
    """The non-linear expression model: offsets = MLP(z), d -> hidden -> hidden -> 3M."""

    def __init__(self, d: int, out: int, hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, out))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def train_decoder(train: np.ndarray, d: int, cfg: LinearFitConfig, seed: int):
    """Auto-decode the training scans: decoder and per-scan codes optimised together.

    Offsets are taken from the training mean and scaled to unit RMS so that one learning
    rate suits every profile; the codes start at the scans' first d PCA coordinates
    (standardised), which the decoder then bends. Returns (decode, codes (S, d)).
    """
    torch.manual_seed(seed)
    mean, basis = pca_basis(train, d)
    x = torch.from_numpy(train - mean).float()
    scale = float(x.pow(2).mean().sqrt()) or 1.0
    x = x / scale
    z0 = torch.from_numpy((train - mean) @ basis.T).float()
    z0 = z0 / z0.std(0).clamp_min(1e-12)
    codes = torch.nn.Parameter(z0.clone())
    dec = Decoder(d, x.shape[1], cfg.hidden)
    opt = torch.optim.Adam([{"params": dec.parameters(), "lr": cfg.lr}, {"params": [codes], "lr": 10 * cfg.lr}])
    for step in range(cfg.steps):
        for g in opt.param_groups:  # cosine decay: the last steps settle
            g["lr"] = g.setdefault("lr0", g["lr"]) * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        loss = (dec(codes) - x).pow(2).mean() + 1e-4 * codes.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.requires_grad_(False)

    def decode(z: torch.Tensor) -> np.ndarray:
        return mean + scale * dec(z).detach().double().numpy()

    return dec, decode, codes.detach(), mean, scale


def fit_decoder(dec, codes: torch.Tensor, mean: np.ndarray, scale: float, scans: np.ndarray,
                steps: int) -> np.ndarray:
    """Codes for registered ``scans`` (S, 3M): start at the best training code, then Adam."""
    x = torch.from_numpy((scans - mean) / scale).float()
    with torch.no_grad():
        recon = dec(codes)  # (n_train + 1, 3M)
        start = torch.cdist(x, recon).argmin(1)
    z = torch.nn.Parameter(codes[start].clone())
    opt = torch.optim.Adam([z], lr=1e-2)
    for _ in range(steps):
        loss = (dec(z) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mean + scale * dec(z.detach()).double().numpy()


def fit_errors(scans: Scans1, cfg: LinearFitConfig, seed: int) -> dict:
    """Every model's RMS error (mm) per test scan, and its summaries."""
    d = len(cfg.params)
    t0 = time.perf_counter()
    preds, train_preds = {}, {}
    for name, k in (("linear", d), ("linear-2d", 2 * d)):
        mean, basis = pca_basis(scans.train, k)
        preds[name] = fit_linear(mean, basis, scans.test)
        train_preds[name] = fit_linear(mean, basis, scans.train)
    dec, decode, codes, mean, scale = train_decoder(scans.train, d, cfg, seed)
    preds["nonlinear"] = fit_decoder(dec, codes, mean, scale, scans.test, cfg.fit_steps)
    train_preds["nonlinear"] = decode(codes)
    out = {"seconds": time.perf_counter() - t0}
    for name in MODELS:
        e = _rms_mm(preds[name], scans.test)
        out[name] = {"per_amplitude_mm": e.tolist(), "test_rms_mm": float(np.sqrt((e ** 2).mean())),
                     "worst_mm": float(e.max()),
                     "train_rms_mm": float(np.sqrt((_rms_mm(train_preds[name], scans.train) ** 2).mean()))}
    return out


def identity_head(profile: Profile, seed: int):
    """The SynthHead of this experiment's identity for ``seed`` (no capture participant)."""
    from npga.capture.synthetic import SynthHead, sample_identity

    return SynthHead(sample_identity(IDENTITY_OFFSET + seed, profile.seed), profile.data.mesh_resolution)


def run(profile: Profile, seeds, cfg: LinearFitConfig | None = None, progress: bool = True,
        command: str = "") -> dict:
    """Every model for every seed (a seed: identity, training amplitudes, decoder init)."""
    from tqdm.auto import tqdm

    cfg = cfg or LinearFitConfig.for_profile(profile)
    t0 = time.perf_counter()
    table = {m: {"seeds": [], "per_amplitude_mm": []} for m in MODELS}
    nonlinearity = []
    n_moving = []
    for s in tqdm(list(seeds), desc="3DMM vs non-linear decoder", disable=not progress):
        scans = make_scans(identity_head(profile, int(s)), cfg, int(s))
        r = fit_errors(scans, cfg, int(s))
        nonlinearity.append(components_for(scans.dense))
        n_moving.append(scans.n_moving)
        for m in MODELS:
            t = table[m]
            t["seeds"].append(int(s))
            t["per_amplitude_mm"].append(r[m]["per_amplitude_mm"])
            for key, _ in KEYS:
                t.setdefault(key, {"values": []})["values"].append(r[m][key])
    add_seed_stats(table)
    return {
        "experiment": EXPERIMENT, "profile": profile.name, "seeds": [int(s) for s in seeds],
        "config": asdict(cfg), "table": table,
        "test_amplitude": np.linspace(0, 1, cfg.n_test).tolist(),
        "components_for_0.1mm": nonlinearity, "n_moving": n_moving,
        "seconds": time.perf_counter() - t0, "command": command,
        "machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


PAIRS = (("linear", "nonlinear", "linearity: a = 3DMM, b = decoder, equal latent size"),
         ("linear-2d", "nonlinear", "twice the columns: a = 3DMM with 2d, b = decoder with d"))


def comparison(res: dict) -> list[dict]:
    """Paired differences a - b of PAIRS (negative: a better) on the held-out scans."""
    rows = []
    for a, b, label in PAIRS:
        for key, klabel in KEYS[:2]:
            d = paired_difference(res["table"], a, b, key)
            rows.append({"effect": label, "error (mm RMS)": klabel,
                         "a": f"{res['table'][a][key]['mean']:.3f}", "b": f"{res['table'][b][key]['mean']:.3f}",
                         "difference [95% CI]": f"{d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]",
                         "p (paired t)": format_p(d["p"]), "_d": d})
    return rows


def table_rows(res: dict) -> list[dict]:
    """One row per model: mean +- seed std of each error."""
    d = len(res["config"]["params"])
    size = {"linear": d, "nonlinear": d, "linear-2d": 2 * d}
    return [{"model": m, "latent size": size[m]}
            | {label: f"{res['table'][m][k]['mean']:.3f} ± {res['table'][m][k]['std']:.3f}" for k, label in KEYS}
            for m in MODELS]


def verdict(res: dict, alpha: float = 0.05) -> str:
    """One sentence: linear minus non-linear on the held-out scans, and its direction."""
    d = paired_difference(res["table"], "linear", "nonlinear", "test_rms_mm")
    head = (f"held-out scans, equal latent size: 3DMM minus decoder {d['mean']:+.3f} mm (95% CI [{d['ci'][0]:+.3f}, "
            f"{d['ci'][1]:+.3f}], {d['n']} seeds, p {format_p(d['p'])})")
    return head + judge(d, "the linear model is worse", "the linear model is *better*", False, alpha)


def to_markdown(res: dict) -> str:
    from npga.book.tools import markdown_table

    c = res["config"]
    lo, hi = min(res["components_for_0.1mm"]), max(res["components_for_0.1mm"])
    comps = f"{lo}" if lo == hi else f"{lo}-{hi}"
    head = (f"Registered SynthHead scans, profile `{res['profile']}`: parameters {', '.join(c['params'])}; "
            f"{c['n_train']} + 1 training scans per identity, {c['n_test']} test amplitudes, "
            f"{int(np.mean(res['n_moving']))} moving vertices (mean), seeds {res['seeds']}; a dense sweep of "
            f"{c['params'][0]} alone (one parameter) needs {comps} principal components for 0.1 mm.")
    diffs = [{k: v for k, v in r.items() if not k.startswith("_")} for r in comparison(res)]
    return (head + "\n\n" + markdown_table(table_rows(res), text=True) + "\n\n"
            + markdown_table(diffs, text=True) + record_footer(res))


def figure(res: dict):
    """Left: test error against the jaw's opening angle, mean over seeds with its range.
    Right: each seed's held-out error, linear against non-linear."""
    import matplotlib.pyplot as plt

    from npga.capture.synthetic.head import JAW_OPEN_MAX

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    a = np.asarray(res["test_amplitude"])
    jaw = res["config"]["params"][0] == "jaw_open"
    x = np.degrees(JAW_OPEN_MAX * a) if jaw else a
    d = len(res["config"]["params"])
    label = {"linear": f"3DMM, d = {d}", "nonlinear": f"non-linear decoder, d = {d}", "linear-2d": f"3DMM, d = {2 * d}"}
    for m, colour in zip(MODELS, ("tab:red", "tab:blue", "tab:orange")):
        e = np.asarray(res["table"][m]["per_amplitude_mm"])  # (S, n_test)
        ax[0].plot(x, e.mean(0), "o-", color=colour, ms=3, label=label[m])
        ax[0].fill_between(x, e.min(0), e.max(0), color=colour, alpha=0.15)
    ax[0].set_xlabel("jaw opening (degrees)" if jaw else f"{res['config']['params'][0]} amplitude")
    ax[0].set_ylabel("RMS vertex error (mm)")
    ax[0].set_title("held-out scans (band: range over seeds)")
    ax[0].legend(fontsize=8)
    vals = [res["table"][m]["test_rms_mm"]["values"] for m in MODELS[:2]]  # (2, S)
    seed_pairs_plot(ax[1], [label[m] for m in MODELS[:2]], vals, "RMS error, held-out scans (mm)",
                    f"equal latent size, {len(vals[0])} seeds")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    return experiment_main(argv, EXPERIMENT, __doc__, LinearFitConfig.for_profile, run, to_markdown,
                           steps_help="Adam steps of the auto-decoder")


if __name__ == "__main__":
    sys.exit(main())
