"""Train an NPGAvatar on multi-view video: the loop, checkpoints, resume, a NaN guard.

One step (NPGA Sec. 4.4, without the later chapters' extras):

1. draw a training frame t and ``batch_cameras`` distinct training cameras;
2. pose the avatar with the frame's *tracked* code z_exp(t) (never the ground truth) and
   render those cameras;
3. loss = (1 - lambda) L1 + lambda (1 - SSIM), lambda = 0.2 (3DGS Eq. 7), plus whatever
   :class:`Hooks` add (Laplacian terms of the next chapter);
4. one Adam step per parameter group: Gaussians (3DGS's learning rates, position decayed
   exponentially), features f_i, detail network G, and the prior F with a lower rate.

Checkpoints (``npga.io.save_torch``: temp file then rename) hold the avatar, the Adam
states, the step, the history and every random state (torch, numpy, python, the
sampler), so that on the CPU a resumed run gives the same numbers as an uninterrupted
one. If the loss or a gradient turns NaN/Inf, :class:`TrainingDiverged` is raised
before any parameter is touched and the last good checkpoint stays as it was.

Command line: ``python -m npga.avatar.train --profile mini --features 8 --name features``.
"""

from __future__ import annotations

import argparse
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from npga.avatar.model import AvatarRender, NPGAvatar
from npga.config import Profile, get_profile
from npga.io import save_torch
from npga.headmodels.linear import bf16_products, bf16_supported
from npga.metrics import psnr_torch, ssim_torch
from npga.splatting.static_fit import OptimConfig as _GAUSSIAN_LRS

CHECKPOINT_VERSION = 1
GAUSSIAN_KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN", "features")


class TrainingDiverged(FloatingPointError):
    """The loss or a gradient became NaN/Inf; the last good checkpoint is left untouched."""


@dataclass(frozen=True)
class TrainConfig:
    """Trainer settings; :meth:`from_profile` fills the sizes from the profile."""

    iterations: int
    batch_cameras: int  # cameras of one frame rendered per step
    seed: int = 0
    lambda_dssim: float = _GAUSSIAN_LRS.lambda_dssim  # 3DGS Eq. 7
    # Gaussians: 3DGS's learning rates, one source with the static fit (chapter 2)
    # (means: times the scene extent, decayed to final)
    lr_means: float = _GAUSSIAN_LRS.lr_means
    lr_means_final: float = _GAUSSIAN_LRS.lr_means_final
    lr_quats: float = _GAUSSIAN_LRS.lr_quats
    lr_scales: float = _GAUSSIAN_LRS.lr_scales
    lr_opacities: float = _GAUSSIAN_LRS.lr_opacities
    lr_sh0: float = _GAUSSIAN_LRS.lr_sh0
    lr_shN: float = _GAUSSIAN_LRS.lr_shN
    lr_features: float = _GAUSSIAN_LRS.lr_features
    lr_detail: float = 1e-3  # detail network G
    lr_prior: float = 5e-4  # fine-tuning of the distilled prior F (lower: keep the prior)
    scene_extent: float = 1.0  # metres; the position learning rate is relative to it
    log_every: int = 10  # history and progress-bar updates
    checkpoint_every: int = 100
    eval_every: int = 0  # 0: no evaluation during training
    codes: str = "nphm"  # tracked codes of this head model drive the avatar
    # F's, G's and the CNN's products in bfloat16 where oneDNN supports it on this CPU
    # (npga.headmodels.linear.bf16_products); the loss and everything else in float32
    bf16: bool = False

    @classmethod
    def from_profile(cls, profile: Profile, **overrides: Any) -> "TrainConfig":
        a = profile.avatar
        base = cls(
            iterations=a.iterations, batch_cameras=a.batch_cameras, seed=profile.seed,
            lr_prior=profile.deform.finetune_lr, checkpoint_every=a.checkpoint_every,
            eval_every=a.eval_every, bf16=a.bf16,
        )
        return replace(base, **overrides)


@dataclass
class Hooks:
    """Extension points for the next chapters; all optional.

    * ``losses``: name -> ``fn(avatar, render, batch, step) -> scalar`` (weighted already),
      e.g. Laplacian smoothness of the posed Gaussians.
    * ``modules``: name -> (module, learning rate), optimised and checkpointed with the
      avatar, e.g. the screen-space CNN.
    * ``image_head``: ``fn(render, batch) -> (C, H, W, 3)``, the image the loss sees (the
      CNN); when set, the features are rasterized with the colours.
    * ``after_backward``: ``fn(avatar, optimizers, render, step)`` after the gradients are
      computed and applied, e.g. adaptive density control (``meta["means2d"].grad`` is
      retained whenever this list is not empty).

    A hook object with ``state_dict()`` / ``load_state_dict(sd, device)`` (ADC's running
    statistics, the Laplacian's k-NN graph) is saved in checkpoints and restored on resume.
    """

    losses: dict[str, Callable[..., Tensor]] = field(default_factory=dict)
    modules: dict[str, tuple[nn.Module, float]] = field(default_factory=dict)
    image_head: Callable[[AvatarRender, dict], Tensor] | None = None
    after_backward: list[Callable[..., None]] = field(default_factory=list)


    def stateful(self) -> dict[str, Any]:
        """Hook objects whose state is checkpointed, by a stable name."""
        named = [(f"losses.{k}", fn) for k, fn in self.losses.items()]
        named += [(f"after_backward.{i}", fn) for i, fn in enumerate(self.after_backward)]
        return {k: fn for k, fn in named if hasattr(fn, "state_dict") and hasattr(fn, "load_state_dict")}


@dataclass
class TrainResult:
    avatar: NPGAvatar
    history: dict[str, list]  # step, loss, l1, psnr (training batch), n_gaussians, seconds
    evals: list[dict]  # {"step", ...metrics} from ``evaluate``
    steps_run: int  # steps taken by this call (less than iterations after a resume)
    wall_time: float  # seconds of this call
    total_time: float  # seconds of all calls that made this run (resumes included)


# --------------------------------------------------------------------------- data


class TrainData:
    """The (frame, camera) pool of one participant with its tracked codes, cached in memory.

    ``sequences``: names; ``serials``: cameras (default: the 12 training cameras);
    ``codes``: head-model name of the tracked codes (or ``"gt"`` for ground truth, for
    tests and ablations only); ``pose``: where the head pose comes from (default: the
    same tracker; ``"gt"``: SynthHead's true pose, an ablation). Images are kept as uint8
    after their first use.
    """

    def __init__(self, participant, sequences, serials=None, codes: str = "nphm", device="cpu",
                 pose: str | None = None):
        from npga.capture.cameras import stack_cameras

        self.participant = participant
        self.sequences = [participant.sequence(s) for s in sequences]
        if not self.sequences:
            raise ValueError(f"{participant.path}: no sequences to train on")
        self.serials = tuple(participant.train_serials if serials is None else serials)
        self.codes = codes
        self.device = torch.device(device)
        self.frames: list[tuple[int, int]] = []  # (sequence index, frame index)
        drive = [seq.drive(codes, pose) for seq in self.sequences]
        for si, seq in enumerate(self.sequences):
            self.frames += [(si, fi) for fi in range(len(seq.frames))]
        cat = lambda k: torch.from_numpy(np.concatenate([getattr(d, k) for d in drive]).astype(np.float32))  # noqa: E731
        self.z_exp = cat("z_exp").to(self.device)  # (T, E)
        self.rotation = cat("rotation").to(self.device)  # (T, 3, 3) head pose, head space -> world
        self.translation = cat("translation").to(self.device)  # (T, 3)
        self.cameras = self.sequences[0].cameras(self.serials)
        self.viewmats, self.Ks = stack_cameras(self.cameras, device=self.device)
        self.width, self.height = self.cameras[0].width, self.cameras[0].height
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def _load(self, t: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        key = (t, c)
        if key not in self._cache:
            si, fi = self.frames[t]
            seq = self.sequences[si]
            img = seq.load_image(seq.frames[fi], self.serials[c])
            alpha = seq.load_alpha(seq.frames[fi], self.serials[c])
            self._cache[key] = ((img * 255 + 0.5).astype(np.uint8), (alpha * 255 + 0.5).astype(np.uint8))
        return self._cache[key]

    def batch(self, t: int, cams: list[int]) -> dict:
        """Frame t seen by cameras ``cams``: images (C, H, W, 3), alphas (C, H, W), cameras, z_exp, pose."""
        pix = [self._load(t, c) for c in cams]
        to = lambda a: torch.from_numpy(np.stack(a)).to(self.device, torch.float32) / 255.0  # noqa: E731
        return {
            "image": to([p[0] for p in pix]),
            "alpha": to([p[1] for p in pix]),
            "viewmats": self.viewmats[cams],
            "Ks": self.Ks[cams],
            "z_exp": self.z_exp[t],
            "pose": (self.rotation[t], self.translation[t]),
            "t": t,
            "cams": list(cams),
        }


class Sampler:
    """Random (frame, cameras) draws from its own generator, whose state is checkpointed."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def draw(self, n_frames: int, n_cams: int, k: int) -> tuple[int, list[int]]:
        t = int(torch.randint(n_frames, (1,), generator=self.gen))
        cams = torch.randperm(n_cams, generator=self.gen)[: min(k, n_cams)].tolist()
        return t, cams


# --------------------------------------------------------------------------- optimisation


def make_optimizers(avatar: NPGAvatar, cfg: TrainConfig, hooks: Hooks | None = None) -> dict:
    """One Adam per parameter group (gsplat's layout for Gaussians, which ADC expects)."""
    lrs = {
        "means": cfg.lr_means * cfg.scene_extent, "quats": cfg.lr_quats, "scales": cfg.lr_scales,
        "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN, "features": cfg.lr_features,
    }
    unknown = set(avatar.gaussians) - set(lrs)
    if unknown:
        raise ValueError(f"no learning rate for Gaussian parameters {sorted(unknown)}")
    # eps 1e-15 as 3DGS: tiny Gaussians have tiny gradients that must still move them
    opts = {k: torch.optim.Adam([v], lr=lrs[k], eps=1e-15) for k, v in avatar.gaussians.items()}
    opts["prior"] = torch.optim.Adam(avatar.prior.parameters(), lr=cfg.lr_prior)
    if avatar.detail is not None:
        opts["detail"] = torch.optim.Adam(avatar.detail.parameters(), lr=cfg.lr_detail)
    for name, (module, lr) in (hooks.modules if hooks else {}).items():
        opts[f"module:{name}"] = torch.optim.Adam(module.parameters(), lr=lr)
    return opts


def means_lr(cfg: TrainConfig, step: int) -> float:
    """Exponential decay from lr_means to lr_means_final over the run (3DGS), times extent."""
    decay = math.log(cfg.lr_means_final / cfg.lr_means) / max(cfg.iterations - 1, 1)
    return cfg.lr_means * cfg.scene_extent * math.exp(decay * step)


def photometric_loss(pred: Tensor, gt: Tensor, lambda_dssim: float) -> tuple[Tensor, Tensor]:
    """(1 - lambda) L1 + lambda (1 - SSIM) over a batch (C, H, W, 3); also returns L1."""
    l1 = (pred - gt).abs().mean()
    return (1 - lambda_dssim) * l1 + lambda_dssim * (1 - ssim_torch(pred, gt).mean()), l1


def _all_params(avatar: NPGAvatar, hooks: Hooks) -> list[tuple[str, Tensor]]:
    out = list(avatar.gaussians.items()) + [(f"prior.{n}", p) for n, p in avatar.prior.named_parameters()]
    if avatar.detail is not None:
        out += [(f"detail.{n}", p) for n, p in avatar.detail.named_parameters()]
    for name, (module, _) in hooks.modules.items():
        out += [(f"{name}.{n}", p) for n, p in module.named_parameters()]
    return out


# --------------------------------------------------------------------------- checkpoints


def _rng_state(sampler: Sampler) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "sampler": sampler.gen.get_state(),
    }


def _set_rng_state(state: dict, sampler: Sampler) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    sampler.gen.set_state(state["sampler"])


def save_checkpoint(path, avatar, optimizers, sampler, step, history, evals, cfg, hooks, elapsed=0.0) -> None:
    save_torch(path, {
        "elapsed": elapsed,  # training seconds so far, over all resumed calls
        "version": CHECKPOINT_VERSION,
        "step": step,  # the next step to run
        "avatar": avatar.state(),
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "modules": {k: m.state_dict() for k, (m, _) in hooks.modules.items()},
        "hooks": {k: h.state_dict() for k, h in hooks.stateful().items()},
        "rng": _rng_state(sampler),
        "history": history,
        "evals": evals,
        "config": asdict(cfg),
    })


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by :func:`train`; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"{path}: unreadable checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: not an npga.avatar.train checkpoint (version {CHECKPOINT_VERSION})")
    return ckpt


def load_avatar(path: str | Path, device="cpu") -> NPGAvatar:
    """The avatar stored in a checkpoint (e.g. a finished training run)."""
    return NPGAvatar.from_state(load_checkpoint(path)["avatar"], device=device).eval()


# --------------------------------------------------------------------------- the loop


def _where(last_good: tuple[Path, int] | None) -> str:
    if last_good is None:
        return "no checkpoint had been written yet"
    return f"the last good checkpoint is {last_good[0]} (step {last_good[1]}), left as it was"


def train(
    avatar: NPGAvatar,
    data: TrainData,
    cfg: TrainConfig,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    hooks: Hooks | None = None,
    evaluate: Callable[[NPGAvatar], dict] | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Optimise ``avatar`` on ``data`` for ``cfg.iterations`` steps (see the module docstring).

    ``checkpoint``: file written every ``cfg.checkpoint_every`` steps and at the end; with
    ``resume`` an existing one is loaded first (avatar, Adam, RNG, history) and training
    continues from its step. ``evaluate(avatar) -> dict`` runs every ``cfg.eval_every``
    steps. ``stop_after``: return after this many steps of this call (a checkpoint is
    written), as an interruption would. Raises :class:`TrainingDiverged` on NaN/Inf.
    """
    hooks = hooks or Hooks()
    sampler = Sampler(cfg.seed)
    start, history, evals = 0, {k: [] for k in ("step", "loss", "l1", "psnr", "n_gaussians", "seconds")}, []
    ckpt = load_checkpoint(checkpoint) if (checkpoint and resume and Path(checkpoint).is_file()) else None
    if ckpt is not None:
        avatar.load_state(ckpt["avatar"])
        for k, (m, _) in hooks.modules.items():
            m.load_state_dict(ckpt["modules"][k])
        saved = ckpt.get("hooks", {})
        for k, h in hooks.stateful().items():
            if k not in saved:
                raise ValueError(f"{checkpoint}: checkpoint has no state for hook {k!r} (written by another setup?)")
            h.load_state_dict(saved[k], device=avatar.gaussians["means"].device)
    else:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
    optimizers = make_optimizers(avatar, cfg, hooks)
    if ckpt is not None:
        for k, o in optimizers.items():
            o.load_state_dict(ckpt["optimizers"][k])
        _set_rng_state(ckpt["rng"], sampler)
        start, history, evals = ckpt["step"], ckpt["history"], ckpt["evals"]
        before = ckpt.get("elapsed", 0.0)
    else:
        before = 0.0
    last_good = (Path(checkpoint), start) if ckpt is not None else None

    end = cfg.iterations if stop_after is None else min(cfg.iterations, start + stop_after)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, initial=start, desc="avatar", leave=False)
    t0 = time.perf_counter()
    retain = bool(hooks.after_backward)
    bf16 = cfg.bf16 and bf16_supported()
    if cfg.bf16 and not bf16:
        warnings.warn("TrainConfig.bf16: oneDNN has no bfloat16 products on this CPU (it needs AVX-512 "
                      "or AMX); training in float32", stacklevel=2)
    try:
        for step in range(start, end):
            optimizers["means"].param_groups[0]["lr"] = means_lr(cfg, step)
            t, cams = sampler.draw(len(data), len(data.serials), cfg.batch_cameras)
            batch = data.batch(t, cams)
            with bf16_products(bf16):  # the render and the CNN; the loss stays float32
                try:
                    out = avatar.render(batch["z_exp"], batch["viewmats"], batch["Ks"], data.width,
                                        data.height, with_features=hooks.image_head is not None,
                                        pose=batch["pose"])
                except ValueError as err:  # the rasterizer refuses non-finite posed Gaussians
                    if "NaN or inf" not in str(err):
                        raise
                    raise TrainingDiverged(f"training diverged at step {step}: {err}; "
                                           + _where(last_good)) from None
                if retain:
                    out.meta["means2d"].retain_grad()
                pred = hooks.image_head(out, batch) if hooks.image_head else out.colors
            loss, l1 = photometric_loss(pred, batch["image"], cfg.lambda_dssim)
            for name, fn in hooks.losses.items():
                loss = loss + fn(avatar, out, batch, step)
            for o in optimizers.values():
                o.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
            bad = None if torch.isfinite(loss) else "the loss"
            if bad is None:  # a NaN gradient would poison the parameters at o.step()
                bad = next((f"the gradient of {n}" for n, p in _all_params(avatar, hooks)
                            if p.grad is not None and not torch.isfinite(p.grad).all()), None)
            if bad is not None:
                raise TrainingDiverged(
                    f"training diverged at step {step}: {bad} is NaN or Inf (loss {float(loss.detach())}); "
                    + _where(last_good)
                )
            for o in optimizers.values():
                o.step()
            for fn in hooks.after_backward:
                fn(avatar, optimizers, out, step)

            if step % cfg.log_every == 0 or step == cfg.iterations - 1:
                with torch.no_grad():
                    p = float(psnr_torch(pred.detach().clamp(0, 1), batch["image"]).mean())
                for k, v in (("step", step), ("loss", float(loss.detach())), ("l1", float(l1.detach())), ("psnr", p),
                             ("n_gaussians", avatar.n_gaussians), ("seconds", time.perf_counter() - t0)):
                    history[k].append(v)
                if bar is not None:
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}", psnr=f"{p:.2f}", n=avatar.n_gaussians)
            if bar is not None:
                bar.update(1)
            if evaluate is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                evals.append({"step": step + 1, **evaluate(avatar)})
            done = step + 1 == end
            if checkpoint is not None and ((step + 1) % cfg.checkpoint_every == 0 or done):
                save_checkpoint(checkpoint, avatar, optimizers, sampler, step + 1, history, evals, cfg, hooks,
                                elapsed=before + time.perf_counter() - t0)
                last_good = (Path(checkpoint), step + 1)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    return TrainResult(avatar, history, evals, max(end - start, 0), wall, before + wall)


# --------------------------------------------------------------------------- the book's runs


def avatar_dir(profile: Profile, name: str) -> Path:
    """Where the book's run ``name`` is stored; changed head-model, prior or avatar settings
    store their runs apart (:meth:`npga.config.Profile.variant_key`), and so does a seed other
    than the profile's (``{name}-seed1``): the seed changes the avatar's optimisation, so a
    stored run of another seed is another run."""
    key = profile.variant_key("head_model", "deform", "avatar") + profile.seed_key
    return Path(profile.cache_root) / "avatars" / f"{name}{key}"


def prepare(profile: Profile, progress: bool = True):
    """Dataset, head models, tracking and the distilled prior of ``profile``, made when missing."""
    from npga.capture.synthetic.writer import ensure_dataset
    from npga.deformation.store import load_or_distill
    from npga.headmodels import load_or_train
    from npga.headmodels.fitting import track_dataset, tracked

    ensure_dataset(profile, progress=progress)
    head = load_or_train(profile, "nphm", progress=progress)
    if not tracked(profile):
        track_dataset(profile, progress=progress)
    prior, _ = load_or_distill(profile, "nphm", head=head, progress=progress)
    return head, prior


def inputs_fingerprint(profile: Profile, participant, prior: nn.Module, model: str = "nphm") -> str:
    """A hash of what an avatar is made from: the prior's weights and the tracked codes.

    Stored in ``results.json``; a stored avatar whose inputs changed since (head model
    retrained, sequences retracked, prior redistilled) counts as missing.
    """
    import hashlib

    h = hashlib.sha1()
    for name, t in sorted(prior.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for seq_name in participant.sequences:
        codes = participant.sequence(seq_name).codes(model)
        h.update(seq_name.encode())
        h.update(codes.z_exp.tobytes())
        h.update(codes.z_id.tobytes())
        h.update(codes.rotation.tobytes())
        h.update(codes.translation.tobytes())
    return h.hexdigest()[:16]


def train_avatar(
    profile: Profile,
    name: str,
    *,
    participant: int = 0,
    feature_dim: int | None = None,
    iterations: int | None = None,
    resume: bool = True,
    progress: bool = True,
    evaluate_at_end: bool = True,
) -> dict:
    """Build, train, evaluate and store one avatar of ``profile`` under ``avatars/{name}/``.

    Writes ``checkpoint.pt`` (resumable), ``results.json`` (metrics, time, config) and
    ``frame0.ply`` (the avatar posed at the first training frame). Returns the results.
    """
    from npga.avatar.evaluate import evaluate_avatar_splits
    from npga.avatar.model import build_avatar
    from npga.capture.dataset import open_dataset
    from npga.io import write_json

    head, prior = prepare(profile, progress)
    part = open_dataset(profile.data_root).participant(participant)
    avatar = build_avatar(profile, part, feature_dim=feature_dim, head=head, prior=prior, progress=progress)
    train_seqs = [s for s in part.sequences if s != profile.data.heldout_sequence]
    data = TrainData(part, train_seqs, codes="nphm", device=profile.device)
    avatar = avatar.to(profile.device)
    overrides = {} if iterations is None else {"iterations": iterations}
    cfg = TrainConfig.from_profile(profile, **overrides)
    out = avatar_dir(profile, name)
    res = train(avatar, data, cfg, checkpoint=out / "checkpoint.pt", resume=resume, progress=progress)
    results = {
        "name": name, "profile": profile.name, "participant": participant,
        "feature_dim": avatar.feature_dim, "n_gaussians": avatar.n_gaussians,
        "iterations": cfg.iterations, "train_seconds": res.total_time,
        "history": res.history, "config": asdict(cfg),
        "inputs_fingerprint": inputs_fingerprint(profile, part, prior),
    }
    if evaluate_at_end:
        results["metrics"] = evaluate_avatar_splits(avatar, part, profile, progress=progress)
    avatar.export_ply(out / "frame0.ply", data.z_exp[0], (data.rotation[0], data.translation[0]))
    write_json(out / "results.json", results)
    return results


def load_or_train_avatar(
    profile: Profile, name: str, *, feature_dim: int | None = None, participant: int = 0,
    progress: bool = True,
) -> tuple[NPGAvatar, dict]:
    """The stored avatar ``name`` of ``profile`` and its ``results.json``; trained when missing.

    A run counts as stored when ``results.json`` exists with the profile's iteration count
    and the requested feature size; an interrupted run is resumed from its checkpoint.
    """
    import json

    from npga.capture.dataset import open_dataset

    folder = avatar_dir(profile, name)
    fd = profile.avatar.feature_dim if feature_dim is None else feature_dim
    results = None
    if (folder / "results.json").is_file() and (folder / "checkpoint.pt").is_file():
        results = json.loads((folder / "results.json").read_text())
        _, prior = prepare(profile, progress)
        part = open_dataset(profile.data_root).participant(participant)
        if (results.get("iterations") != profile.avatar.iterations or results.get("feature_dim") != fd
                or results.get("participant") != participant
                or results.get("inputs_fingerprint") != inputs_fingerprint(profile, part, prior)):
            results = None
    if results is None:
        # a stale checkpoint must not be resumed: start afresh
        results = train_avatar(profile, name, participant=participant, feature_dim=fd, progress=progress,
                               resume=(folder / "checkpoint.pt").is_file() and not (folder / "results.json").is_file())
    return load_avatar(folder / "checkpoint.pt", device=profile.device), results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m npga.avatar.train", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default=None, help="mini | cpu | gpu (default: $NPGA_PROFILE or mini)")
    ap.add_argument("--name", default=None, help="run name (default: features{F})")
    ap.add_argument("--participant", type=int, default=0)
    ap.add_argument("--features", type=int, default=None, help="per-Gaussian feature size (0 = vanilla)")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the pair-list rasterizer is fastest on one, "
                         "see benchmarks/results/render_cpu.json)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    P = get_profile(args.profile)
    fd = P.avatar.feature_dim if args.features is None else args.features
    name = args.name or (f"features{fd}" if fd else "vanilla")
    res = train_avatar(P, name, participant=args.participant, feature_dim=fd, iterations=args.iterations,
                       resume=not args.no_resume, progress=not args.quiet)
    print(f"{name}: {res['iterations']} steps, {res['train_seconds']:.1f} s, {res['n_gaussians']} Gaussians")
    for split, m in res.get("metrics", {}).items():
        print(f"  {split}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}")
    print(f"  written to {avatar_dir(P, name)}")


__all__ = [
    "Hooks",
    "Sampler",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "TrainingDiverged",
    "avatar_dir",
    "inputs_fingerprint",
    "load_avatar",
    "load_checkpoint",
    "load_or_train_avatar",
    "make_optimizers",
    "photometric_loss",
    "prepare",
    "train",
    "train_avatar",
]


if __name__ == "__main__":
    main()
