"""Chapter 8's isolating experiment: what does the screen-space CNN add to what the splats draw?

NPGA (Sec. 4.5) renders a latent image [RGB | features] and lets a small CNN produce the
final colours. In the ablation the CNN is trained jointly with everything else, and its
effect on whole-image PSNR drowns in seed noise. This experiment holds everything else
fixed and asks the question on SynthHead's ground-truth regions:

* the Gaussians: the book's trained +features avatar of the profile (``make data``), frozen;
* its latent images of the training sequences from the training cameras (what the CNN may
  learn from) and of the held-out cameras for novel views and self-reenactment (what it is
  scored on);
* variants: the rasterized colours as they are ("splats") against the same colours refined
  by :class:`npga.avatar.cnn.ScreenSpaceCNN` fitted to the training images with the
  avatar's photometric loss (same width, learning rate and loss as in the ablation);
* metrics: PSNR on the head (GT alpha), the face region, the wrinkle pixels and the mouth
  interior (teeth, tongue, cavity), pooled per region, from the ground truth
  (:meth:`npga.capture.synthetic.SynthHead.render_regions`).

The seeds vary the CNN's initialisation and batch order only: the splats are the same in
every seed (one trained avatar, one participant), so a p-value here says the gain is
consistent over CNN fits, not over avatars or subjects. The CNN is fitted after the
Gaussians, not with them (NPGA trains both together), so this measures what a CNN can add
on top of a fixed set of splats.

    python -m npga.experiments.cnn_fit --profile mini --seeds 0 1 2 3 4 --steps 2000

writes ``benchmarks/results/cnn_fit_{profile}.json`` and ``.md``; chapter 8 runs a shorter
version live (200 steps, 3 seeds) and loads the record.
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
    machine,
    paired_difference,
    record_footer,
)

EXPERIMENT = "cnn_fit"
VARIANTS = ("splats", "+CNN")
SPLITS = ("novel_view", "self_reenactment")
REGIONS = (("psnr", "head"), ("psnr_face", "face"), ("psnr_wrinkle", "wrinkle"), ("psnr_mouth", "mouth"))


@dataclass
class CnnFitConfig:
    """Sizes of the experiment (``for_profile`` scales them; the defaults are mini's)."""

    steps: int = 200  # Adam steps of the CNN (live in chapter 8; the recorded mini run: --steps 2000)
    batch: int = 4  # training images per step
    lr: float = 1e-3  # the ablation's CNN learning rate
    train_frames: int | None = None  # frames per training sequence (None: all)
    eval_frames: int | None = None  # frames per evaluated sequence (None: all)
    avatar: str = "features"  # the book's trained run whose Gaussians are used

    @classmethod
    def for_profile(cls, profile: Profile) -> "CnnFitConfig":
        if profile.name == "mini":
            return cls()
        return cls(steps=1500, train_frames=8, eval_frames=8)


def render_latents(profile: Profile, cfg: CnnFitConfig, participant: int = 0) -> dict:
    """The frozen avatar's latent images and ground truth: {"train", "novel_view",
    "self_reenactment"} -> :func:`npga.avatar.evaluate.render_split` output with latents."""
    from npga.avatar.evaluate import render_split
    from npga.avatar.train import avatar_dir, load_avatar
    from npga.capture.dataset import open_dataset

    ckpt = avatar_dir(profile, cfg.avatar) / "checkpoint.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no trained '{cfg.avatar}' avatar; run "
                                f"python data_scripts/train_avatar.py --profile {profile.name}")
    avatar = load_avatar(ckpt, device=profile.device)
    if avatar.feature_dim == 0:
        raise ValueError(f"{ckpt}: the avatar has no features: the latent image would be RGB only")
    part = open_dataset(profile.data_root).participant(participant)
    held = profile.data.heldout_sequence
    train_seqs = [s for s in part.sequences if s != held]
    kw = dict(latents=True)
    return {
        "train": render_split(avatar, part, train_seqs, part.train_serials, max_frames=cfg.train_frames, **kw),
        "novel_view": render_split(avatar, part, train_seqs, part.heldout_serials, max_frames=cfg.eval_frames, **kw),
        "self_reenactment": render_split(avatar, part, [held], part.heldout_serials, max_frames=cfg.eval_frames,
                                         **kw),
    }


def fit_cnn(train: dict, profile: Profile, seed: int, cfg: CnnFitConfig):
    """A ScreenSpaceCNN fitted to map the training latent images to their ground truth; (cnn, seconds)."""
    from npga.avatar.cnn import ScreenSpaceCNN
    from npga.avatar.train import TrainConfig, photometric_loss

    torch.manual_seed(seed)
    lat = torch.from_numpy(train["latents"])  # (B, H, W, 3 + F)
    gt = torch.from_numpy(train["images"])  # (B, H, W, 3)
    cnn = ScreenSpaceCNN(lat.shape[-1], profile.avatar.cnn_channels)
    opt = torch.optim.Adam(cnn.parameters(), lr=cfg.lr)
    lam = TrainConfig.from_profile(profile).lambda_dssim
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        k = torch.randint(0, len(lat), (cfg.batch,), generator=gen)
        loss, _ = photometric_loss(cnn(lat[k]), gt[k], lam)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"CNN fit, seed {seed}: the loss became {float(loss)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return cnn.eval(), time.perf_counter() - t0


def region_scores(renders: np.ndarray, split: dict) -> dict:
    """PSNR (dB) of ``renders`` against the split's images on each region of REGIONS (None: region empty)."""
    from npga.avatar.evaluate import score

    s = score(renders, split["images"], split["alphas"], split.get("face"), split.get("wrinkle"), split.get("mouth"))
    return {k: s.get(k) for k, _ in REGIONS} | {"wrinkle_pixels": s.get("wrinkle_pixels"),
                                                 "mouth_pixels": s.get("mouth_pixels")}


@torch.no_grad()
def refine(cnn, split: dict, chunk: int = 16) -> np.ndarray:
    """The CNN's colours (B, H, W, 3) in [0, 1] for a split's latent images."""
    lat = torch.from_numpy(split["latents"])
    return torch.cat([cnn(lat[i:i + chunk]).clamp(0, 1) for i in range(0, len(lat), chunk)]).numpy()


def run(profile: Profile, seeds, cfg: CnnFitConfig | None = None, participant: int = 0,
        progress: bool = True, command: str = "", latents: dict | None = None) -> dict:
    """Both variants on both held-out splits for every seed (``latents``: from :func:`render_latents`)."""
    from tqdm.auto import tqdm

    cfg = cfg or CnnFitConfig.for_profile(profile)
    t0 = time.perf_counter()
    data = latents or render_latents(profile, cfg, participant)
    base = {sp: region_scores(data[sp]["renders"], data[sp]) for sp in SPLITS}
    table = {v: {"seeds": [], "seconds": []} for v in VARIANTS}
    for s in tqdm(list(seeds), desc="fit the screen-space CNN", disable=not progress):
        cnn, wall = fit_cnn(data["train"], profile, s, cfg)
        got = {"splats": base, "+CNN": {sp: region_scores(refine(cnn, data[sp]), data[sp]) for sp in SPLITS}}
        for v in VARIANTS:
            t = table[v]
            t["seeds"].append(int(s))
            t["seconds"].append(wall if v == "+CNN" else 0.0)
            for sp in SPLITS:
                for key, _ in REGIONS:
                    val = got[v][sp][key]
                    t.setdefault(f"{sp}_{key}", {"values": []})["values"].append(
                        float("nan") if val is None else float(val))
    add_seed_stats(table)
    pixels = {sp: {"wrinkle": base[sp]["wrinkle_pixels"], "mouth": base[sp]["mouth_pixels"],
                   "images": len(data[sp]["images"])} for sp in SPLITS}
    return {
        "experiment": EXPERIMENT, "profile": profile.name, "participant": participant,
        "seeds": [int(s) for s in seeds], "config": asdict(cfg), "table": table, "pixels": pixels,
        "n_train_images": len(data["train"]["images"]), "latent_channels": int(data["train"]["latents"].shape[-1]),
        "seconds": time.perf_counter() - t0, "command": command,
        "machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def comparison(res: dict) -> list[dict]:
    """+CNN minus splats (dB, paired by seed; positive: the CNN helps) per split and region."""
    rows = []
    for sp in SPLITS:
        for key, region in REGIONS:
            col = f"{sp}_{key}"
            if any(v != v for v in res["table"]["splats"][col]["values"]):
                continue  # an empty region in this split
            d = paired_difference(res["table"], "+CNN", "splats", col)
            rows.append({"split": sp.replace("_", " "), "region": region,
                         "splats (dB)": f"{res['table']['splats'][col]['mean']:.2f}",
                         "+CNN (dB)": f"{res['table']['+CNN'][col]['mean']:.2f} ± {res['table']['+CNN'][col]['std']:.2f}",
                         "difference [95% CI]": f"{d['mean']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]",
                         "p (paired t)": format_p(d["p"]), "_d": d, "_key": col})
    return rows


def verdict(res: dict, split: str = "self_reenactment", region: str = "head", alpha: float = 0.05) -> str:
    """One sentence on one split and region: the CNN's gain, its interval, p, and the paper's direction."""
    key = f"{split}_{dict((r, k) for k, r in REGIONS)[region]}"
    d = paired_difference(res["table"], "+CNN", "splats", key)
    head = (f"{split.replace('_', ' ')}, {region}: +CNN minus splats {d['mean']:+.2f} dB (95% CI "
            f"[{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}], {d['n']} CNN seeds, p {format_p(d['p'])})")
    if d["mean"] != d["mean"]:
        return head + ": the region is empty in this split."
    return head + judge(d, "the CNN raises PSNR", "the CNN *lowers* PSNR", False, alpha)


def to_markdown(res: dict) -> str:
    from npga.book.tools import markdown_table

    c, px = res["config"], res["pixels"]
    head = (f"A screen-space CNN fitted on the frozen `{c['avatar']}` avatar's latent images ({res['latent_channels']} "
            f"channels), profile `{res['profile']}`: {res['n_train_images']} training images, {c['steps']} steps of "
            f"{c['batch']} images, CNN seeds {res['seeds']}. Held-out cameras; mouth-interior pixels: "
            f"{px['novel_view']['mouth']} (novel views, {px['novel_view']['images']} images), "
            f"{px['self_reenactment']['mouth']} (self-reenactment, {px['self_reenactment']['images']} images); "
            f"wrinkle pixels {px['novel_view']['wrinkle']} / {px['self_reenactment']['wrinkle']}.")
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in comparison(res)]
    return head + "\n\n" + markdown_table(rows, text=True) + record_footer(res)


def figure(res: dict):
    """The CNN's gain (dB) per region and split, one dot per seed, with its 95 % interval."""
    import matplotlib.pyplot as plt

    rows = comparison(res)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, r in enumerate(rows):
        d = r["_d"]
        ax.plot([i, i], d["ci"], color="0.6", lw=3, solid_capstyle="butt")
        ax.plot([i] * len(d["values"]), d["values"], "o", color="tab:blue", ms=4)
        ax.plot(i, d["mean"], "D", color="k", ms=6)
    ax.axhline(0, color="k", lw=0.8)
    short = {"novel view": "novel", "self reenactment": "self-reen."}
    ax.set_xticks(range(len(rows)), [f"{r['region']}\n{short[r['split']]}" for r in rows], fontsize=8)
    ax.set_ylabel("+CNN minus splats (dB)")
    ax.set_title("what the CNN adds, per region (dots: CNN seeds; bar: 95 % interval)", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    return experiment_main(argv, EXPERIMENT, __doc__, CnnFitConfig.for_profile, run, to_markdown,
                           profile="mini", steps_help="Adam steps of the CNN")


if __name__ == "__main__":
    sys.exit(main())
