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
On SynthHead two more regions come from the ground truth
(:meth:`npga.capture.synthetic.SynthHead.render_regions`): the **face** (the head
without the neck, as NPGA evaluates) and the **wrinkles** (pixels where the frame's
expression wrinkles darken the skin). Wrinkle PSNR pools the squared error of all
wrinkle pixels of the split (a frame may have none).
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
    pose: str | None = None,
    latents: bool = False,
) -> dict:
    """Render every (frame, camera) of ``sequences`` x ``serials`` next to its ground truth.

    ``codes``/``pose``: what drives the avatar (:meth:`npga.capture.dataset.Sequence.drive`).

    Returns numpy arrays ``renders``/``images`` (B, H, W, 3), ``alphas`` (B, H, W), and
    ``keys``: (sequence, frame, serial) per image; on synthetic data also ``face``,
    ``wrinkle`` and ``mouth`` (B, H, W) region masks (covered fractions). ``max_frames``
    evenly subsamples frames. ``latents``: also the latent images [RGB | features]
    (B, H, W, 3 + F) float32, unclamped (chapter 8's CNN reads them).
    """
    renders, images, alphas, keys, lat = [], [], [], [], []
    regions: dict[str, list] | None = (
        {"face": [], "wrinkle": [], "mouth": []} if _has_ground_truth(participant) else None)
    device = avatar.gaussians["means"].device
    for name in sequences:
        seq = participant.sequence(name)
        drive = seq.drive(codes, pose)
        gt = seq.ground_truth() if regions is not None else None  # once per sequence, not per frame
        cams = seq.cameras(list(serials))
        vm, K = stack_cameras(cams, device=device)
        idx = np.arange(len(seq.frames))
        if max_frames is not None and len(idx) > max_frames:
            idx = np.unique(np.linspace(0, len(idx) - 1, max_frames).round().astype(int))
        for fi in idx:
            out = avatar.render(torch.from_numpy(drive.z_exp[fi]).to(device), vm, K, cams[0].width, cams[0].height,
                                pose=_pose(drive, fi, device), **({"with_features": True} if latents else {}))
            renders.append(out.colors.clamp(0, 1).cpu().numpy())
            if latents:
                from npga.avatar.cnn import latent_image

                lat.append(latent_image(out).cpu().numpy())
            if regions is not None:
                reg = region_masks(participant, seq, cams, int(fi), gt)
                for k in regions:
                    regions[k].append(reg[k])
            for c in cams:
                images.append(seq.load_image(seq.frames[fi], c.serial))
                alphas.append(seq.load_alpha(seq.frames[fi], c.serial))
                keys.append((name, int(seq.frames[fi]), c.serial))
    out = {
        "renders": np.concatenate(renders),
        "images": np.stack(images),
        "alphas": np.stack(alphas),
        "keys": keys,
    }
    if regions is not None:
        out.update({k: np.concatenate(v) for k, v in regions.items()})
    if latents:
        out["latents"] = np.concatenate(lat)
    return out


REGION_KEYS = ("face", "wrinkle", "mouth")
REGION_CACHE = "region_masks"  # folder of a sequence that holds its cached masks


def region_masks(participant, seq, cams, fi: int, gt=None) -> dict[str, np.ndarray]:
    """SynthHead's ``face``/``wrinkle``/``mouth`` masks (C, H, W) of frame index ``fi`` seen
    by ``cams`` (:meth:`npga.capture.synthetic.SynthHead.render_regions`), cached on disk.

    The masks depend on the ground truth alone, never on the avatar, yet rendering them
    costs about as much as rendering the avatar, and every run of an experiment is scored
    on the same frames. Each (frame, camera) is rendered once and kept in the sequence's
    ``region_masks/`` folder (atomic writes, so parallel shards may share it;
    regenerating the dataset removes it with the sequence). An unreadable file is
    rendered again.
    """
    from npga.io import save_npz

    frame = int(seq.frames[fi])
    folder = seq.path / REGION_CACHE
    paths = [folder / f"frame_{frame:05d}_{c.serial}.npz" for c in cams]
    masks: list[dict | None] = []
    for path in paths:
        try:
            with np.load(path) as z:
                masks.append({k: z[k] for k in REGION_KEYS})
        except (OSError, ValueError, KeyError, EOFError):  # missing, truncated or foreign
            masks.append(None)
    todo = [i for i, m in enumerate(masks) if m is None]
    if todo:
        gt = seq.ground_truth() if gt is None else gt
        reg = participant.synth_head().render_regions([cams[i] for i in todo], gt.z_exp[fi], gt.untracked[fi])
        for j, i in enumerate(todo):
            masks[i] = {k: reg[k][j] for k in REGION_KEYS}
            save_npz(paths[i], **masks[i])
    return {k: np.stack([m[k] for m in masks]) for k in REGION_KEYS}


def _has_ground_truth(participant) -> bool:
    """Synthetic data (a SynthHead behind the participant)?"""
    try:
        participant.synth_head()
    except (ValueError, OSError):
        return False
    return True


def pooled_psnr(renders: np.ndarray, images: np.ndarray, mask: np.ndarray) -> float | None:
    """PSNR of the squared error pooled over every masked pixel of every image (None if none)."""
    w = (np.asarray(mask) > 0.5)
    if not w.any():
        return None
    se = np.square(np.asarray(renders, np.float64) - np.asarray(images, np.float64))[w]
    return float(10.0 * np.log10(1.0 / se.mean()))


def _pose(drive, i: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame i's tracked head pose as float32 tensors on ``device``."""
    return (torch.tensor(drive.rotation[i], dtype=torch.float32, device=device),
            torch.tensor(drive.translation[i], dtype=torch.float32, device=device))


def score(renders: np.ndarray, images: np.ndarray, alphas: np.ndarray,
          face: np.ndarray | None = None, wrinkle: np.ndarray | None = None,
          mouth: np.ndarray | None = None) -> dict:
    """Masked (head region: alpha > 0.5) and full-image PSNR / SSIM, LPIPS or None.

    With the SynthHead region masks also ``psnr_face``/``ssim_face`` (face region > 0.5)
    and ``psnr_wrinkle`` (:func:`pooled_psnr`; None when no wrinkle shows) with
    ``wrinkle_pixels``; the same for the ``mouth`` interior (``psnr_mouth``, ``mouth_pixels``).
    """
    mask = (alphas > 0.5).astype(np.float32)
    r, g = torch.from_numpy(renders), torch.from_numpy(images)
    out = {
        "psnr": psnr(r, g, mask),
        "ssim": ssim(r, g, mask),
        "psnr_full": psnr(r, g),
        "ssim_full": ssim(r, g),
        "lpips": lpips(r, g),
        "n_images": int(len(renders)),
    }
    if face is not None:
        fm = (face > 0.5).astype(np.float32)
        keep = fm.reshape(len(fm), -1).any(1)  # a camera that sees no face does not count
        out["psnr_face"] = psnr(r[keep], g[keep], fm[keep]) if keep.any() else None
        out["ssim_face"] = ssim(r[keep], g[keep], fm[keep]) if keep.any() else None
    if wrinkle is not None:
        out["psnr_wrinkle"] = pooled_psnr(renders, images, wrinkle)
        out["wrinkle_pixels"] = int((wrinkle > 0.5).sum())
    if mouth is not None:
        out["psnr_mouth"] = pooled_psnr(renders, images, mouth)
        out["mouth_pixels"] = int((mouth > 0.5).sum())
    return out


@torch.no_grad()
def surface_distance(avatar, participant, sequences: list[str], *, codes: str = "nphm",
                     max_frames: int | None = None, pose: str | None = None, far_mm: float = 3.0) -> dict:
    """How far the posed Gaussians lie from SynthHead's true surface (a geometric measure).

    For every frame the avatar is posed as it is rendered (``codes``/``pose``) and each
    Gaussian centre's distance to the frame's ground-truth mesh is taken (point to mesh),
    weighted by the Gaussian's opacity, so that faint Gaussians count little. Masked PSNR
    cannot see a Gaussian that drifts off the head; this can. Returns ``surface_mm``
    (opacity-weighted mean distance, mm) and ``off_surface`` (opacity-weighted share farther
    than ``far_mm``), averaged over the frames; None on real data.
    """
    from npga.headmodels.geometry import point_to_mesh

    if not _has_ground_truth(participant):
        return {"surface_mm": None, "off_surface": None}
    base = getattr(avatar, "avatar", avatar)  # a RefinedAvatar's Gaussians are its avatar's
    device = base.gaussians["means"].device
    dist, far = [], []
    for name in sequences:
        seq = participant.sequence(name)
        drive = seq.drive(codes, pose)
        faces = seq.ground_truth_faces()
        idx = np.arange(len(seq.frames))
        if max_frames is not None and len(idx) > max_frames:
            idx = np.unique(np.linspace(0, len(idx) - 1, max_frames).round().astype(int))
        for fi in idx:
            means, opacity = base.posed_means(torch.from_numpy(drive.z_exp[fi]).to(device), _pose(drive, fi, device))
            w = opacity.cpu().numpy().astype(np.float64)
            d = 1e3 * point_to_mesh(means.cpu().numpy(), seq.ground_truth_vertices(int(fi)), faces)
            dist.append(float((w * d).sum() / w.sum()))
            far.append(float((w * (d > far_mm)).sum() / w.sum()))
    return {"surface_mm": float(np.mean(dist)), "off_surface": float(np.mean(far))}


def evaluate_split(avatar, participant, sequences, serials, *, codes="nphm", max_frames=None, pose=None,
                   geometry: bool = False) -> dict:
    """:func:`render_split` then :func:`score` (and :func:`surface_distance` with ``geometry``);
    the renders are returned under ``"split"``."""
    split = render_split(avatar, participant, sequences, serials, codes=codes, max_frames=max_frames, pose=pose)
    out = {**score(split["renders"], split["images"], split["alphas"], split.get("face"), split.get("wrinkle"),
                   split.get("mouth")), "split": split}
    if geometry:
        out.update(surface_distance(avatar, participant, sequences, codes=codes, max_frames=max_frames, pose=pose))
    return out


def evaluate_avatar_splits(
    avatar: NPGAvatar, participant, profile, *, codes: str = "nphm", max_frames: int | None = None,
    keep_images: bool = False, progress: bool = False, pose: str | None = None, geometry: bool = False,
) -> dict:
    """Novel-view and self-reenactment scores of ``avatar`` (held-out cameras of ``participant``);
    with ``geometry`` also :func:`surface_distance` on each split's frames."""
    held = profile.data.heldout_sequence
    train_seqs = [s for s in participant.sequences if s != held]
    out = {}
    for key, seqs in (("novel_view", train_seqs), ("self_reenactment", [held])):
        res = evaluate_split(avatar, participant, seqs, participant.heldout_serials, codes=codes,
                             max_frames=max_frames, pose=pose, geometry=geometry)
        if not keep_images:
            res.pop("split")
        out[key] = res
    return out


@torch.no_grad()
def cross_reenactment(
    avatar: NPGAvatar, source, sequence: str, serials, *, codes: str = "nphm", max_frames: int | None = None,
) -> np.ndarray:
    """Renders (T, C, H, W, 3) of ``avatar`` driven by participant ``source``'s tracked codes and head pose."""
    seq = source.sequence(sequence)
    drive = seq.drive(codes)
    cams = seq.cameras(list(serials))
    device = avatar.gaussians["means"].device
    vm, K = stack_cameras(cams, device=device)
    idx = np.arange(len(drive.z_exp))
    if max_frames is not None and len(idx) > max_frames:
        idx = np.unique(np.linspace(0, len(idx) - 1, max_frames).round().astype(int))
    frames = [avatar.render(torch.from_numpy(drive.z_exp[i]).to(device), vm, K, cams[0].width, cams[0].height,
                            pose=_pose(drive, i, device)).colors
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
    "pooled_psnr",
    "region_masks",
    "render_split",
    "score",
]
