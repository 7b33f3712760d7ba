"""Evaluate an avatar: novel views, self-reenactment, cross-reenactment (NPGA Sec. 5).

* **Novel views**: the training sequences seen from the held-out cameras (NeRSemble's
  222200040, 220700191, 222200043, 221501007), driven by the tracked codes.
* **Self-reenactment**: the held-out sequence (``FREE``) from the held-out cameras --
  expressions and views the avatar never saw, driven by that sequence's tracked codes.
* **Cross-reenactment**: the avatar driven by *another* participant's tracked codes;
  there is no ground truth, so it yields images only.

Metrics are PSNR and SSIM (and LPIPS when its weights are on disk, else None) computed
on the head region: the ground-truth alpha map > 0.5 is the mask
(:mod:`npga.metrics` masked variants); full-image scores are reported beside them.
"""

from __future__ import annotations

import numpy as np
import torch

from npga.avatar.model import NPGAvatar
from npga.capture.cameras import stack_cameras
from npga.metrics import lpips, psnr, ssim


@torch.no_grad()
def render_split(
    avatar: NPGAvatar,
    participant,
    sequences: list[str],
    serials: list[str] | tuple[str, ...],
    *,
    codes: str = "nphm",
    max_frames: int | None = None,
) -> dict:
    """Render every (frame, camera) of ``sequences`` x ``serials`` next to its ground truth.

    Returns numpy arrays ``renders``/``images`` (B, H, W, 3), ``alphas`` (B, H, W), and
    ``keys``: (sequence, frame, serial) per image. ``max_frames`` evenly subsamples frames.
    """
    renders, images, alphas, keys = [], [], [], []
    device = avatar.gaussians["means"].device
    for name in sequences:
        seq = participant.sequence(name)
        z = seq.ground_truth().z_exp if codes == "gt" else seq.codes(codes).z_exp
        cams = seq.cameras(list(serials))
        vm, K = stack_cameras(cams, device=device)
        idx = np.arange(len(seq.frames))
        if max_frames is not None and len(idx) > max_frames:
            idx = np.unique(np.linspace(0, len(idx) - 1, max_frames).round().astype(int))
        for fi in idx:
            out = avatar.render(torch.from_numpy(z[fi]).to(device), vm, K, cams[0].width, cams[0].height)
            renders.append(out.colors.clamp(0, 1).cpu().numpy())
            for c in cams:
                images.append(seq.load_image(seq.frames[fi], c.serial))
                alphas.append(seq.load_alpha(seq.frames[fi], c.serial))
                keys.append((name, int(seq.frames[fi]), c.serial))
    return {
        "renders": np.concatenate(renders),
        "images": np.stack(images),
        "alphas": np.stack(alphas),
        "keys": keys,
    }


def score(renders: np.ndarray, images: np.ndarray, alphas: np.ndarray) -> dict:
    """Masked (head region: alpha > 0.5) and full-image PSNR / SSIM, LPIPS or None."""
    mask = (alphas > 0.5).astype(np.float32)
    r, g = torch.from_numpy(renders), torch.from_numpy(images)
    return {
        "psnr": psnr(r, g, mask),
        "ssim": ssim(r, g, mask),
        "psnr_full": psnr(r, g),
        "ssim_full": ssim(r, g),
        "lpips": lpips(r, g),
        "n_images": int(len(renders)),
    }


def evaluate_split(avatar, participant, sequences, serials, *, codes="nphm", max_frames=None) -> dict:
    """:func:`render_split` then :func:`score`; the renders are returned under ``"split"``."""
    split = render_split(avatar, participant, sequences, serials, codes=codes, max_frames=max_frames)
    return {**score(split["renders"], split["images"], split["alphas"]), "split": split}


def evaluate_avatar_splits(
    avatar: NPGAvatar, participant, profile, *, codes: str = "nphm", max_frames: int | None = None,
    keep_images: bool = False, progress: bool = False,
) -> dict:
    """Novel-view and self-reenactment scores of ``avatar`` (held-out cameras of ``participant``)."""
    held = profile.data.heldout_sequence
    train_seqs = [s for s in participant.sequences if s != held]
    out = {}
    for key, seqs in (("novel_view", train_seqs), ("self_reenactment", [held])):
        res = evaluate_split(avatar, participant, seqs, participant.heldout_serials, codes=codes,
                             max_frames=max_frames)
        if not keep_images:
            res.pop("split")
        out[key] = res
    return out


@torch.no_grad()
def cross_reenactment(
    avatar: NPGAvatar, source, sequence: str, serials, *, codes: str = "nphm", max_frames: int | None = None,
) -> np.ndarray:
    """Renders (T, C, H, W, 3) of ``avatar`` driven by participant ``source``'s tracked codes."""
    seq = source.sequence(sequence)
    z = seq.codes(codes).z_exp
    cams = seq.cameras(list(serials))
    vm, K = stack_cameras(cams, device=avatar.gaussians["means"].device)
    idx = np.arange(len(z))
    if max_frames is not None and len(idx) > max_frames:
        idx = np.unique(np.linspace(0, len(idx) - 1, max_frames).round().astype(int))
    frames = [avatar.render(torch.from_numpy(z[i]), vm, K, cams[0].width, cams[0].height).colors
              for i in idx]
    return torch.stack(frames).clamp(0, 1).cpu().numpy()


def error_grid(images: np.ndarray, renders: np.ndarray, max_error: float = 0.25) -> np.ndarray:
    """One image with a row per sample: GT | render | error heat map, (B*H, 3*W, 3) in [0, 1].

    The error is the per-pixel mean absolute colour difference, shown with matplotlib's
    'inferno' colour map saturating at ``max_error``.
    """
    import matplotlib

    images, renders = np.asarray(images), np.asarray(renders)
    if images.shape != renders.shape or images.ndim != 4:
        raise ValueError(f"images and renders must both be (B, H, W, 3), got {images.shape} and {renders.shape}")
    err = np.abs(images - renders).mean(-1) / max_error
    heat = matplotlib.colormaps["inferno"](np.clip(err, 0, 1))[..., :3].astype(np.float32)
    rows = np.concatenate([images, np.clip(renders, 0, 1), heat], axis=2)  # (B, H, 3W, 3)
    return rows.reshape(-1, rows.shape[2], 3)


__all__ = [
    "cross_reenactment",
    "error_grid",
    "evaluate_avatar_splits",
    "evaluate_split",
    "render_split",
    "score",
]
