"""Chapter 6's isolating experiment: do the Laplacian terms stop features from overfitting?

Per-Gaussian features (chapter 5) let the detail network G give every Gaussian its own
motion. Trained on few expressions, that freedom can fit what the training frames happen to
show at each Gaussian and generalise badly to expressions it never saw. NPGA (Sec. 4.4)
regularises the features and G's offsets with the graph Laplacian of the canonical
Gaussians' k-NN graph. This experiment asks whether that helps, on SynthHead's ground truth,
without rendering, tracking or density control in the way:

* the setting of chapter 5's experiment (:mod:`npga.experiments.detail_fit`): G fitted to
  the true motion of SynthHead's face vertices under random expressions, the true codes as
  input;
* the regime where features overfit: *few* training expressions and *many* features;
* variants: vanilla (no features), +features, +features+Laplacian, same seeds, steps and
  learning rates;
* the weights lambda_f and lambda_d are calibrated, not left at 1.0: a sweep on
  validation expressions (drawn apart from the test ones, fitted with a seed the comparison
  does not use) picks each term's weight, and the comparison uses them;
* metric: RMS position error (mm) on held-out test expressions, all points and the sharp
  10 % (chapter 5's definition).

    python -m npga.experiments.laplacian_fit --profile cpu --seeds 0 1 2 3

writes ``benchmarks/results/laplacian_fit_{profile}.json`` and ``.md``; chapter 6 runs the
mini profile live and loads the stored cpu record.
"""

from __future__ import annotations

import datetime
import sys
import time
from dataclasses import asdict, dataclass, replace

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
from npga.experiments.detail_fit import (
    DetailFitConfig,
    LaplacianWeights,
    MotionData,
    _rms_mm,
    fit_detail,
    motion_data,
    synth_head,
)

EXPERIMENT = "laplacian_fit"
VARIANTS = ("vanilla", "features", "features+laplacian")
KEYS = (("heldout_rms_mm", "held-out, all points"), ("heldout_sharp_rms_mm", "held-out, sharp points"),
        ("train_rms_mm", "training, all points"))
SWEEP_SEED = 1000  # the calibration's fits: a seed no comparison uses


@dataclass
class LaplacianFitConfig:
    """Sizes of the experiment (``for_profile`` scales them; the defaults are cpu's)."""

    n_train: int = 6  # few training expressions: where features can overfit
    n_val: int = 12  # the sweep chooses the weights on these
    n_test: int = 24  # the comparison is measured on these
    steps: int = 1200
    batch: int = 4
    feature_dim: int = 32  # many features
    knn: int = 8  # the graph of the Laplacian terms (the avatar's knn_k)
    sweep: tuple[float, ...] = (1.0, 10.0, 100.0)  # candidate weights of each term
    point_stride: int = 4  # 4581 of the cpu head's face vertices
    noise_mm: float = 2.0  # observation noise of the training and validation motion (not the test's)
    data_seed: int = 0

    @classmethod
    def for_profile(cls, profile: Profile) -> "LaplacianFitConfig":
        if profile.name == "mini":  # live in chapter 6
            # 576 points: about 40 s on one core (stride 4 took 65 s, same conclusion)
            return cls(n_val=8, n_test=16, steps=800, batch=2, feature_dim=16, point_stride=8)
        return cls()

    def detail_config(self) -> DetailFitConfig:
        """Chapter 5's config with these sizes (validation and test expressions drawn together)."""
        return DetailFitConfig(n_train=self.n_train, n_test=self.n_val + self.n_test, steps=self.steps,
                               batch=self.batch, point_stride=self.point_stride, data_seed=self.data_seed)


def split_validation(data: MotionData, n_val: int, noise_mm: float = 0.0,
                     seed: int = 0) -> tuple[MotionData, MotionData]:
    """(validation, test): the held-out expressions of ``data`` split into the first n_val and
    the rest. Both train on the motion plus i.i.d. Gaussian noise of ``noise_mm`` per point and
    coordinate (what a photometric fit or a tracker observes); validation is noisy too (it
    stands for frames one could hold out), the test is the exact ground truth."""
    gen = torch.Generator().manual_seed(seed)

    def noisy(d):
        return d + 1e-3 * noise_mm * torch.randn(d.shape, generator=gen)

    d_train = noisy(data.d_train)
    val = replace(data, d_train=d_train, z_test=data.z_test[:n_val], d_test=noisy(data.d_test[:n_val]))
    test = replace(data, d_train=d_train, z_test=data.z_test[n_val:], d_test=data.d_test[n_val:])
    return val, test


def fit_errors(data: MotionData, profile: Profile, feature_dim: int, seed: int, cfg: LaplacianFitConfig,
               laplacian: LaplacianWeights | None = None) -> dict:
    """One fit (chapter 5's :func:`fit_detail` at these sizes) and its errors (mm)."""
    return fit_detail(data, profile, feature_dim, seed, cfg.detail_config(), laplacian)


def calibrate(val: MotionData, profile: Profile, cfg: LaplacianFitConfig, progress: bool = True) -> dict:
    """Each term's weight by its validation error: lambda_f over cfg.sweep with lambda_d = 0,
    then lambda_d with lambda_f = 0 (one fit each, seed SWEEP_SEED); 0 is a candidate too."""
    from tqdm.auto import tqdm

    rows = [("features", 0.0)] + [(term, w) for term in ("features", "dynamics") for w in cfg.sweep]
    errs = {}
    for term, w in tqdm(rows, desc="calibrate the Laplacian weights", disable=not progress):
        lap = LaplacianWeights(features=w if term == "features" else 0.0,
                               dynamics=w if term == "dynamics" else 0.0, knn=cfg.knn)
        errs[(term, w)] = fit_errors(val, profile, cfg.feature_dim, SWEEP_SEED, cfg, lap)["heldout_rms_mm"]
    none = errs[("features", 0.0)]
    best = {}
    for term in ("features", "dynamics"):
        cands = {0.0: none} | {w: errs[(term, w)] for w in cfg.sweep}
        best[term] = min(cands, key=cands.get)
    return {"validation_rms_mm": {f"{t} {w:g}": e for (t, w), e in errs.items()},
            "sweep": list(cfg.sweep), "none_mm": none,
            "features": {f"{w:g}": errs[("features", w)] for w in cfg.sweep},
            "dynamics": {f"{w:g}": errs[("dynamics", w)] for w in cfg.sweep},
            "chosen": best}


def run(profile: Profile, seeds, cfg: LaplacianFitConfig | None = None, participant: int = 0,
        progress: bool = True, command: str = "", weights: LaplacianWeights | None = None) -> dict:
    """Calibrate the weights (unless ``weights`` is given), then every variant for every seed."""
    from tqdm.auto import tqdm

    cfg = cfg or LaplacianFitConfig.for_profile(profile)
    t0 = time.perf_counter()
    data = motion_data(synth_head(profile, participant), cfg.detail_config())
    val, test = split_validation(data, cfg.n_val, cfg.noise_mm, cfg.data_seed)
    cal = None
    if weights is None:
        cal = calibrate(val, profile, cfg, progress)
        weights = LaplacianWeights(cal["chosen"]["features"], cal["chosen"]["dynamics"], cfg.knn)
    table = {v: {"seeds": [], "seconds": []} for v in VARIANTS}
    jobs = [(s, v) for s in seeds for v in VARIANTS]
    for s, v in tqdm(jobs, desc="fit G: vanilla, +features, +Laplacian", disable=not progress):
        fd = 0 if v == "vanilla" else cfg.feature_dim
        r = fit_errors(test, profile, fd, s, cfg, weights if v == "features+laplacian" else None)
        t = table[v]
        t["seeds"].append(int(s))
        t["seconds"].append(r["seconds"])
        for key, _ in KEYS:
            t.setdefault(key, {"values": []})["values"].append(r[key])
    add_seed_stats(table)
    return {
        "experiment": EXPERIMENT, "profile": profile.name, "participant": participant,
        "seeds": [int(s) for s in seeds], "config": asdict(cfg),
        "weights": {"features": weights.features, "dynamics": weights.dynamics, "knn": weights.knn},
        "calibration": cal, "n_points": len(data.points), "n_sharp": int(data.sharp.sum()),
        "motion_rms_mm": _rms_mm(test.d_test), "table": table,
        "seconds": time.perf_counter() - t0, "command": command,
        "machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


PAIRS = (("features+laplacian", "features", "Laplacian terms (+features+Laplacian vs +features)"),
         ("features", "vanilla", "features (+features vs vanilla)"),
         ("features+laplacian", "vanilla", "both (+features+Laplacian vs vanilla)"))


def comparison(res: dict) -> list[dict]:
    """Paired differences of each pair (a, b) of PAIRS, held-out errors: a minus b by seed
    (negative: a better); "without" is b's mean, "with" a's."""
    rows = []
    for a, b, label in PAIRS:
        for key, klabel in KEYS[:2]:
            d = paired_difference(res["table"], a, b, key)
            rows.append({"effect": label, "error (mm RMS)": klabel,
                         "without": f"{res['table'][b][key]['mean']:.2f}",
                         "with": f"{res['table'][a][key]['mean']:.2f}",
                         "difference [95% CI]": f"{d['mean']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]",
                         "p (paired t)": format_p(d["p"]), "_d": d})
    return rows


def table_rows(res: dict) -> list[dict]:
    """One row per variant: mean +- seed std of each error."""
    rows = []
    for v in VARIANTS:
        t = res["table"][v]
        rows.append({"variant": v} | {label: f"{t[k]['mean']:.2f} ± {t[k]['std']:.2f}" for k, label in KEYS})
    return rows


def verdict(res: dict, key: str = "heldout_rms_mm", alpha: float = 0.05) -> str:
    """One sentence: +Laplacian minus +features on ``key``, and whether it is the paper's direction."""
    d = paired_difference(res["table"], "features+laplacian", "features", key)
    label = dict(KEYS)[key]
    head = (f"{label}: +Laplacian minus +features {d['mean']:+.2f} mm (95% CI [{d['ci'][0]:+.2f}, "
            f"{d['ci'][1]:+.2f}], {d['n']} seeds, p {format_p(d['p'])})")
    return head + judge(d, "the Laplacian terms lower the error", "the Laplacian terms *raise* the error", True, alpha)


def to_markdown(res: dict) -> str:
    from npga.book.tools import markdown_table

    c, w = res["config"], res["weights"]
    head = (f"G fitted to SynthHead's true motion, profile `{res['profile']}`: {res['n_points']} face points, "
            f"{c['n_train']} training / {c['n_val']} validation / {c['n_test']} test expressions, "
            f"feature_dim {c['feature_dim']}, {c['steps']} steps, seeds {res['seeds']}; weights chosen on "
            f"validation: λ_f = {w['features']:g}, λ_d = {w['dynamics']:g}; test motion RMS "
            f"{res['motion_rms_mm']:.2f} mm.")
    diffs = [{k: v for k, v in r.items() if not k.startswith("_")} for r in comparison(res)]
    return (head + "\n\n" + markdown_table(table_rows(res), text=True) + "\n\n"
            + markdown_table(diffs, text=True) + record_footer(res))


def figure(res: dict):
    """Left: the calibration (validation error against each weight). Right: held-out error
    per seed of the three variants, seeds joined."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    cal = res.get("calibration")
    if cal:
        ws = cal["sweep"]
        for term, mk in (("features", "o-"), ("dynamics", "s-")):
            ax[0].plot(ws, [cal[term][f"{w:g}"] for w in ws], mk, label=rf"$\lambda_{term[0]}$ (the other 0)")
        ax[0].axhline(cal["none_mm"], color="0.5", ls="--", label="no Laplacian")
        ax[0].set_xscale("log")
        ax[0].set_xlabel("weight")
        ax[0].set_ylabel("validation RMS error, noisy targets (mm)")
        ax[0].set_title("calibration (one fit per weight)")
        ax[0].legend(fontsize=8)
    else:
        ax[0].axis("off")
    vals = [res["table"][v]["heldout_rms_mm"]["values"] for v in VARIANTS]  # (3, S)
    seed_pairs_plot(ax[1], list(VARIANTS), vals, "held-out RMS error (mm)", f"test expressions, {len(vals[0])} seeds")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    return experiment_main(argv, EXPERIMENT, __doc__, LaplacianFitConfig.for_profile, run, to_markdown,
                           seeds=(0, 1, 2, 3))


if __name__ == "__main__":
    sys.exit(main())
