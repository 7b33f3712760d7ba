"""Chapter 7's isolating experiment: which views should a dynamic scene's density control count?

3DGS averages a Gaussian's screen-space gradient over the views in which its projected radius
is positive. In a moving head, the teeth are inside every camera's frustum in every frame but
visible only in the few frames with the mouth open; averaged over all frames, their gradient
is diluted by the fraction of frames that show them, and density control leaves them coarse.
This book's rule (``DynamicADC(mode="npga")``) counts a view only where the Gaussian received
a gradient. The avatar experiments cannot show the difference on SynthHead (chapter 7
measures why: the trained avatar has no Gaussians that hide behind the lips), so this
experiment builds the situation on purpose, with the book's rasterizer and its ADC:

* a *mouth*: a textured back plane (the "teeth", fine vertical stripes) 1 cm behind two
  opaque sheets (the "lips") that cover it in every frame but ``n_open`` of ``n_frames``, where
  they slide apart;
* the lips are given (their motion is known, as F gives an avatar's), the teeth are learned:
  a coarse grid of grey Gaussians, trained with L1 on random (frame, camera) draws, with
  density control by either rule, same seeds, steps, threshold, and no cap;
* metric: PSNR of the teeth region in an open frame (training cameras: the detail the fit
  holds where the teeth are seen), and how many Gaussians the teeth end with; paired by seed (a seed: the coarse grid's jitter and the order
  of draws);
* control: with the mouth open in every frame (``n_open = n_frames``) nothing is hidden and the
  two rules must agree.

    python -m npga.experiments.adc_fit --profile cpu --seeds 0 1 2 3 4

writes ``benchmarks/results/adc_fit_{profile}.json`` and ``.md``; chapter 7 runs the mini
profile live and loads the stored record.
"""

from __future__ import annotations

import datetime
import sys
import time
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

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

EXPERIMENT = "adc_fit"
RULES = ("npga", "3dgs")
KEYS = (("teeth_psnr", "teeth PSNR, open mouth (dB)"), ("n_teeth", "teeth Gaussians at the end"))


@dataclass
class ADCFitConfig:
    """Sizes of the experiment (``for_profile`` scales them; the defaults are cpu's)."""

    n_frames: int = 8
    open_frames: tuple[int, ...] = (1, 2, 4, 8)  # how many frames show the teeth (8: the control)
    image: int = 64  # square images (pixels)
    steps: int = 800
    densify_from: int = 100
    densify_every: int = 50
    densify_until: int = 650
    grad_threshold: float = 0.0002  # 3DGS's tau
    stripe_mm: float = 4.0  # period of the teeth's texture
    coarse_mm: float = 5.0  # spacing of the teeth's initial grid
    train_cameras: int = 6
    lrs: dict = field(default_factory=lambda: {"means": 3e-5, "quats": 1e-3, "scales": 5e-3,
                                               "opacities": 5e-2, "sh0": 1e-2, "shN": 1e-3})

    @classmethod
    def for_profile(cls, profile: Profile) -> "ADCFitConfig":
        if profile.name == "mini":  # live in chapter 7
            return cls(open_frames=(1,), steps=600, densify_until=450)
        return cls()


# --------------------------------------------------------------------------- the scene

TEETH_Z = -0.01  # metres: the teeth lie 1 cm behind the lips (z = 0); cameras look down -z
HALF_W, HALF_H = 0.02, 0.008  # the teeth's half width and height
LIP_H = 0.012  # each lip sheet's height; closed, they meet at y = 0


def cameras(cfg: ADCFitConfig) -> list:
    """The training cameras, on an arc 12 cm in front of the mouth."""
    from npga.capture.cameras import Camera, intrinsics_for, look_at

    def cam(i, yaw, pitch):
        eye = 0.12 * np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
        return Camera(f"toy{i}", look_at(eye, np.zeros(3)), intrinsics_for(cfg.image, cfg.image, 2.0),
                      cfg.image, cfg.image)

    yaws = np.radians(np.linspace(-20, 20, cfg.train_cameras))
    return [cam(i, y, np.radians(8 * (-1) ** i)) for i, y in enumerate(yaws)]


def _grid(half_w: float, half_h: float, step: float) -> np.ndarray:
    xs = np.arange(-half_w, half_w + 1e-9, step)
    ys = np.arange(-half_h, half_h + 1e-9, step)
    x, y = np.meshgrid(xs, ys)
    return np.column_stack([x.ravel(), y.ravel()])


def teeth_colour(xy: np.ndarray, stripe_mm: float) -> np.ndarray:
    """The teeth's texture at plane points (N, 2): bright stripes with dark gaps, across x."""
    s = 0.5 + 0.5 * np.cos(2 * np.pi * xy[:, 0] / (1e-3 * stripe_mm))
    return np.stack([0.25 + 0.7 * s, 0.25 + 0.65 * s, 0.2 + 0.55 * s], axis=1)


def _gaussians(xyz: np.ndarray, rgb: np.ndarray, scale: float, opacity: float) -> dict:
    """Activated, isotropic Gaussians (means, quats, scales, opacities, colours) as tensors."""
    n = len(xyz)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1
    return {"means": torch.tensor(xyz, dtype=torch.float32), "quats": quats,
            "scales": torch.full((n, 3), scale), "opacities": torch.full((n,), opacity),
            "colors": torch.tensor(rgb, dtype=torch.float32)}


def lips(is_open: bool) -> dict:
    """The two opaque lip sheets, closed (meeting at y = 0) or slid apart, uncovering the teeth."""
    pts = _grid(HALF_W + 0.012, LIP_H / 2, 0.001)
    shift = LIP_H / 2 + (HALF_H + 0.002 if is_open else 0.0)
    xyz = np.concatenate([np.column_stack([pts[:, 0], pts[:, 1] + s, np.zeros(len(pts))])
                          for s in (shift, -shift)])
    rgb = np.tile([0.75, 0.35, 0.35], (len(xyz), 1))
    return _gaussians(xyz, rgb, 0.0012, 0.999)


def true_teeth(cfg: ADCFitConfig) -> dict:
    """The ground-truth teeth: a fine grid (0.5 mm) carrying the stripes."""
    pts = _grid(HALF_W, HALF_H, 0.0005)
    return _gaussians(np.column_stack([pts, np.full(len(pts), TEETH_Z)]), teeth_colour(pts, cfg.stripe_mm),
                      0.0005, 0.99)


def _learned(params: dict) -> dict:
    """The learned Gaussians in the form :func:`_gaussians` gives (degree-0 SH as RGB)."""
    from npga.splatting.gaussians import activate, sh0_to_rgb

    a = activate(params)
    return {"means": a["means"], "quats": a["quats"], "scales": a["scales"], "opacities": a["opacities"],
            "colors": sh0_to_rgb(params["sh0"][:, 0]).clamp_min(0.0)}


def _cat(a: dict, b: dict) -> dict:
    return {k: torch.cat([a[k], b[k]]) for k in a}


def _render(scene: dict, cams) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from npga.capture.cameras import stack_cameras
    from npga.splatting.render import rasterize

    vm, K = stack_cameras(cams)
    return rasterize(scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"],
                     vm, K, cams[0].width, cams[0].height)


@torch.no_grad()
def ground_truth(cfg: ADCFitConfig, cams) -> dict:
    """Images of the true scene with the lips closed and open (C, H, W, 3), and the open
    frame's teeth mask: pixels the teeth cover by more than half with the lips away."""
    teeth = true_teeth(cfg)
    out = {}
    for state in (False, True):
        img, _, _ = _render(_cat(lips(state), teeth), cams)
        out["open" if state else "closed"] = img
    _, alpha, _ = _render(teeth, cams)
    out["mask"] = alpha[..., 0] > 0.5
    return out


# --------------------------------------------------------------------------- training


def coarse_teeth(cfg: ADCFitConfig, seed: int) -> dict:
    """The learned teeth at the start: a jittered coarse grid of grey, half-transparent Gaussians."""
    from npga.splatting.gaussians import init_from_points

    rng = np.random.default_rng(seed)
    pts = _grid(HALF_W, HALF_H, 1e-3 * cfg.coarse_mm)
    pts = pts + rng.normal(scale=0.2e-3 * cfg.coarse_mm, size=pts.shape)
    xyz = np.column_stack([pts, np.full(len(pts), TEETH_Z)])
    return init_from_points(xyz, sh_degree=0, init_opacity=0.5, seed=seed)


def train_teeth(cfg: ADCFitConfig, rule: str, n_open: int, seed: int, gt_train: dict,
                train_cams) -> tuple[dict, list]:
    """Fit the teeth by L1 through the given lips, with density control by ``rule``.

    Frames 0 .. n_open - 1 show the teeth (lips open), the rest hide them. Returns the
    learned Gaussians and the densification history (one dict per round).
    """
    from npga.avatar.densify_dynamic import accumulate_views
    from npga.capture.cameras import stack_cameras
    from npga.splatting.densify import DensifyConfig, DensifyState, densify_and_prune
    from npga.splatting.render import rasterize

    params = coarse_teeth(cfg, seed)
    opts = {k: torch.optim.Adam([v], lr=cfg.lrs[k], eps=1e-15) for k, v in params.items()}
    dcfg = DensifyConfig(grad_threshold=cfg.grad_threshold, prune_big_from_step=cfg.steps + 1)
    state = None
    # scene extent: the clone/split boundary (1 % of it) at half a stripe, so that coarse
    # Gaussians split into smaller ones and only those fine enough for the texture clone
    extent = 0.5e-3 * cfg.stripe_mm / dcfg.percent_dense
    gen = torch.Generator().manual_seed(seed)
    lip = {s: lips(s) for s in (False, True)}
    vm, K = stack_cameras(train_cams)
    history = []
    for step in range(cfg.steps):
        t = int(torch.randint(cfg.n_frames, (1,), generator=gen))
        c = int(torch.randint(len(train_cams), (1,), generator=gen))
        is_open = t < n_open
        learned = _learned(params)
        n = learned["means"].shape[0]
        scene = _cat(learned, lip[is_open])  # the teeth are the first n columns
        img, _, meta = rasterize(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                                 scene["colors"], vm[c:c + 1], K[c:c + 1], cfg.image, cfg.image)
        meta["means2d"].retain_grad()
        target = gt_train["open" if is_open else "closed"][c:c + 1]
        loss = (img - target).abs().mean()
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts.values():
            o.step()
        if step >= cfg.densify_until:
            continue
        if state is None or state.grad2d.shape[0] != n:
            state = DensifyState.create(n, extent)
        # the statistics of the learned teeth only (the lips are given, not densified)
        teeth_meta = {**meta, "means2d": SimpleNamespace(grad=meta["means2d"].grad[:, :n]),
                      "radii": meta["radii"][:, :n]}
        accumulate_views(state, teeth_meta, rule)
        if step >= cfg.densify_from and (step + 1) % cfg.densify_every == 0:
            mean_grad = state.mean_grad()
            views = state.count.mean()  # views counted per Gaussian since the last round
            counts = densify_and_prune(params, opts, state, dcfg, step, generator=gen)
            history.append({"step": step + 1, **counts, "views": float(views),
                            "above_tau": int((mean_grad >= cfg.grad_threshold).sum())})
    return params, history


@torch.no_grad()
def teeth_psnr(params: dict, gt: dict, cams) -> float:
    """PSNR (dB) of the teeth region of the open frame seen from ``cams``.

    The experiment scores the training cameras: what density control changes is how much
    detail the fit can hold where the teeth are seen. (From new viewpoints a fine texture
    also needs the right depth, which a slot between the lips pins down poorly: that error
    would swamp the one studied here.)"""
    scene = _cat(_learned(params), lips(True))
    img, _, _ = _render(scene, cams)
    m = gt["mask"]
    mse = float((img - gt["open"]).pow(2).mean(-1)[m].mean())
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def run(profile: Profile, seeds, cfg: ADCFitConfig | None = None, progress: bool = True,
        command: str = "", keep_images: bool = False) -> dict:
    """Both rules, for every number of open frames and every seed.

    ``keep_images``: also return ``images[k][rule]``, the first seed's fit rendered open from
    the first training camera (H, W, 3), and ``images["truth"]`` (not JSON: for figures)."""
    from tqdm.auto import tqdm

    cfg = cfg or ADCFitConfig.for_profile(profile)
    t0 = time.perf_counter()
    train_cams = cameras(cfg)
    gt_train = ground_truth(cfg, train_cams)
    tables = {}
    images = {"truth": gt_train["open"][0].numpy()}
    jobs = [(k, s, r) for k in cfg.open_frames for s in seeds for r in RULES]
    for k, s, r in tqdm(jobs, desc="teeth behind lips: ADC rules", disable=not progress):
        params, hist = train_teeth(cfg, r, k, int(s), gt_train, train_cams)
        if keep_images and s == seeds[0]:
            with torch.no_grad():
                img, _, _ = _render(_cat(_learned(params), lips(True)), train_cams[:1])
            images.setdefault(str(k), {})[r] = img[0].clamp(0, 1).numpy()
        t = tables.setdefault(str(k), {rr: {"seeds": [], "rounds": []} for rr in RULES})[r]
        t["seeds"].append(int(s))
        t["rounds"].append(hist)
        for key, value in (("teeth_psnr", teeth_psnr(params, gt_train, train_cams)),
                           ("n_teeth", params["means"].shape[0])):
            t.setdefault(key, {"values": []})["values"].append(float(value))
    for tab in tables.values():
        add_seed_stats(tab)
    return ({"images": images} if keep_images else {}) | {
        "experiment": EXPERIMENT, "profile": profile.name, "seeds": [int(s) for s in seeds],
        "config": asdict(cfg), "tables": tables, "n_start": int(len(coarse_teeth(cfg, 0)["means"])),
        "seconds": time.perf_counter() - t0, "command": command,
        "machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


@torch.no_grad()
def avatar_visibility(avatar, participant, profile: Profile, open_at: float = 0.2) -> list[dict]:
    """Does a trained avatar have Gaussians that only open mouths show? (chapter 7)

    Every canonical Gaussian is labelled by the part of its nearest ground-truth vertex in
    NPHM's canonical expression (mouth interior: teeth, tongue, cavity; or the rest), and every
    training (frame, camera) view by whether SynthHead's jaw is open (``jaw_open >= open_at``).
    Returns one row per (part, jaw) group: the number of views, the median visible fraction
    (:func:`npga.splatting.render.visibility`) and the share of views in which the Gaussian is
    mostly hidden (visible fraction < 0.1) -- the views a visibility rule would drop.
    """
    from scipy.spatial import cKDTree

    from npga.avatar.train import TrainData
    from npga.capture.synthetic import EXPRESSION_NAMES
    from npga.capture.synthetic.head import MOUTH_PARTS, PART
    from npga.headmodels.scans import canonical_expression
    from npga.splatting.render import visibility

    head = participant.synth_head()
    _, nearest = cKDTree(head.vertices(canonical_expression(profile.head_model))).query(
        avatar.gaussians["means"].detach().cpu().numpy())
    mouth = np.isin(head.part_of_vertex[nearest], [PART[n] for n in MOUTH_PARTS])
    seqs = [q for q in participant.sequences if q != profile.data.heldout_sequence]
    data = TrainData(participant, seqs, codes="nphm", device=avatar.gaussians["means"].device)
    jaw = np.concatenate([participant.sequence(q).ground_truth().z_exp[:, EXPRESSION_NAMES.index("jaw_open")]
                          for q in seqs])
    cams = list(range(len(data.serials)))
    fractions = []
    for t in range(len(data)):
        b = data.batch(t, cams)
        out = avatar.render(b["z_exp"], b["viewmats"], b["Ks"], data.width, data.height, pose=b["pose"])
        fractions.append(visibility(out.meta)[1].cpu().numpy())  # (C, N)
    fractions = np.stack(fractions)  # (T, C, N)
    rows = []
    for part_name, sel in (("mouth interior", mouth), ("rest of the head", ~mouth)):
        for jaw_name, frames in (("open", jaw >= open_at), ("closed", jaw < open_at)):
            f = fractions[frames][:, :, sel].ravel()
            rows.append({"Gaussians nearest": part_name, "n Gaussians": int(sel.sum()), "jaw": jaw_name,
                         "views": int(f.size), "median visible fraction": f"{np.median(f):.3f}" if f.size else "-",
                         "views mostly hidden (< 0.1)": f"{(f < 0.1).mean():.0%}" if f.size else "-"})
    return rows


def comparison(res: dict) -> list[dict]:
    """npga minus 3dgs, paired by seed, for every number of open frames."""
    rows = []
    n = res["config"]["n_frames"]
    for k, tab in res["tables"].items():
        for key, label in KEYS:
            d = paired_difference(tab, "npga", "3dgs", key)
            f = ".0f" if key == "n_teeth" else ".2f"  # counts as counts
            rows.append({"teeth shown in": f"{k} of {n} frames", "measure": label,
                         "3DGS rule": f"{tab['3dgs'][key]['mean']:{f}}", "our rule": f"{tab['npga'][key]['mean']:{f}}",
                         "ours - 3DGS [95% CI]": f"{d['mean']:+{f}} [{d['ci'][0]:+{f}}, {d['ci'][1]:+{f}}]",
                         "p (paired t)": format_p(d["p"]), "_d": d})
    return rows


def verdict(res: dict, alpha: float = 0.05) -> str:
    """One sentence per number of open frames: teeth PSNR, our rule minus 3DGS's."""
    out = []
    n = res["config"]["n_frames"]
    for k, tab in res["tables"].items():
        d = paired_difference(tab, "npga", "3dgs", "teeth_psnr")
        head = (f"teeth shown in {k} of {n} frames: our rule minus 3DGS's {d['mean']:+.2f} dB (95% CI "
                f"[{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}], {d['n']} seeds, p {format_p(d['p'])})")
        out.append(head + judge(d, "our rule is better", "our rule is *worse*", False, alpha))
    return "\n".join(out)


def to_markdown(res: dict) -> str:
    from npga.book.tools import markdown_table

    c = res["config"]
    head = (f"Teeth behind lips, profile `{res['profile']}`: {c['n_frames']} frames, {c['train_cameras']} training "
            f"cameras at {c['image']} x {c['image']}, {c['steps']} steps, densify every {c['densify_every']} "
            f"from {c['densify_from']} to {c['densify_until']} (tau {c['grad_threshold']:g}, no cap), "
            f"{res['n_start']} teeth Gaussians at the start, seeds {res['seeds']}.")
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in comparison(res)]
    return head + "\n\n" + markdown_table(rows, text=True) + record_footer(res)


def image_figure(res: dict, n_open: int | None = None):
    """The open mouth seen by a training camera: truth, the 3DGS rule's fit, ours (first seed)."""
    import matplotlib.pyplot as plt

    k = str(n_open if n_open is not None else min(int(k) for k in res["tables"]))
    imgs = res["images"]
    fig, ax = plt.subplots(1, 3, figsize=(9, 3.2))
    for a, img, title in zip(ax, (imgs["truth"], imgs[k]["3dgs"], imgs[k]["npga"]),
                             ("truth", "3DGS rule", "our rule")):
        a.imshow(img, interpolation="nearest")
        a.set_title(title)
        a.axis("off")
    fig.suptitle(f"teeth shown in {k} of {res['config']['n_frames']} frames (seed {res['seeds'][0]})")
    fig.tight_layout()
    return fig


def figure(res: dict):
    """Teeth PSNR of both rules against the fraction of frames that show the teeth (mean over
    seeds, each seed a dot)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    ks = sorted(res["tables"], key=int)
    x = np.array([int(k) for k in ks])
    for rule, colour, label in (("npga", "tab:blue", "our rule (views with a gradient)"),
                                ("3dgs", "tab:red", "3DGS rule (views with radius > 0)")):
        for a, key in zip(ax, ("teeth_psnr", "n_teeth")):
            vals = np.array([res["tables"][k][rule][key]["values"] for k in ks])  # (K, S)
            a.plot(x, vals.mean(1), "o-", color=colour, label=label)
            for j in range(vals.shape[1]):
                a.plot(x, vals[:, j], ".", color=colour, alpha=0.4)
    n = res["config"]["n_frames"]
    for a, ylabel in zip(ax, ("teeth PSNR, open mouth (dB)", "teeth Gaussians at the end")):
        a.set_xscale("log", base=2)
        a.set_xticks(x, [f"{k}/{n}" for k in x])
        a.set_xlabel("frames in which the teeth are visible")
        a.set_ylabel(ylabel)
    ax[1].axhline(res["n_start"], color="0.5", ls="--", lw=1, label="at the start")
    ax[0].legend(fontsize=8)
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    return experiment_main(argv, EXPERIMENT, __doc__, ADCFitConfig.for_profile, run, to_markdown,
                           steps_help="training steps per run")


if __name__ == "__main__":
    sys.exit(main())
