"""The distilled forward-field prior of a profile: train once, cache, reuse in every chapter.

:func:`load_or_distill` loads ``<cache_root>/forward_field_<head>.pt`` when it exists and
was distilled from the *same* head model with the *same* settings (a fingerprint of the
head model's weights and the profile's ``DeformConfig`` are stored beside F's), and
otherwise distills it (``data_scripts/distill_prior.py`` does the
same from the command line). The split of the head model's training codes is stored with
it: the last identity and the last fifth of every identity's expressions are held out, so
chapters can measure F on codes it never saw.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch

from npga.config import Profile
from npga.deformation.analytic import AnalyticHeadWarp
from npga.deformation.distill import canonical_samples, distill_forward_field
from npga.deformation.field import ForwardField
from npga.io import save_torch

HEAD_MODELS = ("nphm", "analytic")
FORMAT_VERSION = 1


def prior_path(profile: Profile, head_model: str = "nphm") -> Path:
    """Where the prior distilled from ``head_model`` is cached for ``profile``."""
    # a prior of changed head-model or deformation settings is another file: it never
    # replaces the one the book's chapters read
    key = profile.variant_key("head_model", "deform")
    return Path(profile.cache_root) / f"forward_field_{head_model}{key}.pt"


def get_head_model(profile: Profile, head_model: str = "nphm", progress: bool = True):
    """The backward field to distill from: the profile's trained NPHM, or the analytic warp.

    The returned object has ``backward(x_p, z_id, z_exp)``, ``canonical_surface_points(z_id,
    n, seed)``, ``id_codes`` (I, id_dims) and ``exp_codes`` (I, T, exp_dims).
    """
    if head_model == "analytic":
        return AnalyticHeadWarp.from_profile(profile)
    if head_model == "nphm":
        try:
            from npga.headmodels import load_or_train
        except ImportError as err:
            raise RuntimeError(
                "npga.headmodels.load_or_train is not available, so the NPHM backward field "
                "cannot be loaded; use head_model='analytic' for the analytic test field"
            ) from err
        return load_or_train(profile, "nphm", progress=progress)
    raise ValueError(f"unknown head model {head_model!r}: choose one of {', '.join(HEAD_MODELS)}")


def split_codes(n_ids: int, n_exps: int) -> dict[str, list[int]]:
    """Training/held-out identity and expression indices (last id, last fifth of expressions)."""
    if n_ids < 2 or n_exps < 2:
        raise ValueError(f"need at least 2 identities and 2 expressions to hold some out, got {n_ids} x {n_exps}")
    n_held_exp = max(1, n_exps // 5)
    return {
        "train_ids": list(range(n_ids - 1)),
        "heldout_ids": [n_ids - 1],
        "train_exps": list(range(n_exps - n_held_exp)),
        "heldout_exps": list(range(n_exps - n_held_exp, n_exps)),
    }


def fingerprint(head) -> str:
    """A short hash of a head model's weights (or of the analytic warp's constants)."""
    h = hashlib.sha1()
    if hasattr(head, "state_dict"):
        tensors = list(head.state_dict().items())
    else:
        tensors = [(k, v) for k, v in sorted(vars(head).items()) if isinstance(v, torch.Tensor)]
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def head_codes(head) -> tuple[torch.Tensor, torch.Tensor]:
    """The head model's training codes as plain tensors: (I, id_dims), (I, T, exp_dims)."""
    id_codes = torch.as_tensor(head.id_codes.detach()).float().cpu()
    exp_codes = torch.as_tensor(head.exp_codes.detach()).float().cpu()
    if exp_codes.dim() != 3 or exp_codes.shape[0] != id_codes.shape[0]:
        raise ValueError(
            f"head model codes must be id (I, d) and exp (I, T, d); got {tuple(id_codes.shape)} "
            f"and {tuple(exp_codes.shape)}"
        )
    return id_codes, exp_codes


def distill_prior(profile: Profile, head, *, progress: bool = True) -> tuple[ForwardField, dict[str, Any]]:
    """Distill F from ``head`` over its training identities and expressions (profile sizes)."""
    cfg = profile.deform
    id_codes, exp_codes = head_codes(head)
    split = split_codes(*exp_codes.shape[:2])
    ids, exps = split["train_ids"], split["train_exps"]
    points = canonical_samples(head, id_codes[ids], cfg.points_per_identity, seed=profile.seed)
    device = torch.device("cpu")
    if profile.device == "cuda" and torch.cuda.is_available() and isinstance(head, torch.nn.Module):
        device = torch.device("cuda")
        head = head.to(device)
    field, history = distill_forward_field(
        head.backward,
        points,
        id_codes[ids],
        exp_codes[ids][:, exps],
        cfg,
        seed=profile.seed,
        progress=progress,
        device=device,
    )
    if device.type != "cpu":  # the cache and every caller get CPU tensors, like load_or_train's models
        field, head = field.cpu(), head.cpu()
    meta = {"history": history, "split": split}
    return field, meta


def load_or_distill(
    profile: Profile, head_model: str = "nphm", *, head=None, progress: bool = True, force: bool = False
) -> tuple[ForwardField, dict[str, Any]]:
    """The profile's forward-field prior: loaded from the cache, distilled when missing or stale.

    ``head``: the head model object when the caller already has it (else
    :func:`get_head_model` loads it). Returns ``(field, meta)``; ``meta`` holds the training
    ``history``, the code ``split``, the head model's ``fingerprint``, ``path`` and ``loaded``
    (False when it was distilled now: missing, another head model, or other ``profile.deform``).
    """
    head = get_head_model(profile, head_model, progress=progress) if head is None else head
    fp = fingerprint(head)
    path = prior_path(profile, head_model)
    if path.is_file() and not force:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # a truncated or foreign file: say which
            raise ValueError(f"{path}: cannot read the forward-field prior ({err}); delete it") from err
        if (state.get("version") == FORMAT_VERSION and state.get("fingerprint") == fp
                and state.get("config") == dataclasses.asdict(profile.deform)):
            field = ForwardField.from_state(state["field"]).eval()
            return field, {**state["meta"], "fingerprint": fp, "path": str(path), "loaded": True}
    field, meta = distill_prior(profile, head, progress=progress)
    save_torch(
        path,
        {"version": FORMAT_VERSION, "fingerprint": fp, "config": dataclasses.asdict(profile.deform),
         "head_model": head_model,
         "profile": profile.name, "field": field.to_state(), "meta": meta},
    )
    return field, {**meta, "fingerprint": fp, "path": str(path), "loaded": False}
