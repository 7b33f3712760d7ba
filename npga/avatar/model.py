"""NPGAvatar: canonical 3D Gaussians driven by expression codes (NPGA, Sec. 4).

An avatar is

* N canonical Gaussians (means, rotations, log-scales, opacity logits, SH colours and,
  optionally, per-Gaussian latent features f_i), placed at initialisation on the
  canonical surface of the tracked identity's head model (``NPHM.canonical_surface_points``);
* the dynamics module D = F + G (:mod:`npga.avatar.dynamics`): the forward field F distilled from
  the head model (:mod:`npga.deformation`, fine-tuned per avatar with a lower learning
  rate) moves means and, through its Jacobian, rotations and scales; the detail network G
  adds offsets to position, rotation and scale, and (``dynamic_appearance``) to colour
  and opacity;
* the rigid head pose of the frame (tracked, :mod:`npga.headmodels.pose`): everything
  above happens in *head space*; the pose then moves the means, ``R mu + t``, and the
  rotations, ``q_R * q`` (covariances become ``R Sigma R^T``; scales are unchanged).
  SH colours are evaluated with view directions in head space, so a colour stays
  attached to the skin when the head turns.

Rendering one frame: posed Gaussians from the tracked z_exp and pose, SH colours
evaluated per camera, and -- when asked for -- the features f_i rasterized in the
*same* pass as extra colour channels (D = 3 + feature_dim), which is what the
screen-space CNN of a later chapter reads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from npga.avatar.dynamics import DetailNetwork
from npga.config import AvatarConfig, Profile
from npga.deformation import ForwardField, deform_gaussians
from npga.headmodels.pose import matrix_to_quat, quat_multiply
from npga.splatting.gaussians import (
    SH_C0,
    GaussianParams,
    eval_sh,
    init_from_points,
    save_ply,
    sh_coeffs,
    sh_degree_of,
)


@dataclass
class AvatarRender:
    """What :meth:`NPGAvatar.render` returns (C cameras of one frame)."""

    colors: Tensor  # (C, H, W, 3) in [0, 1] (premultiplied on the background)
    alphas: Tensor  # (C, H, W, 1) accumulated opacity
    features: Tensor | None  # (C, H, W, feature_dim) rasterized f_i, or None
    meta: dict  # the rasterizer's meta (means2d for densification, radii, ...)
    posed: dict[str, Tensor]  # head-space means (N, 3), quats (N, 4), scales (N, 3) log (+ G's appearance offsets)
    # G's own offsets at this frame's z_exp (DetailNetwork.outputs), None without G: the
    # Laplacian term on G's output reads them instead of running G a second time
    detail: dict[str, Tensor] | None = None


class NPGAvatar(nn.Module):
    """Canonical Gaussians + forward field F + detail network G.

    ``gaussians``: a :data:`~npga.splatting.gaussians.GaussianParams` dict (kept as a plain dict, not
    registered with the module, because adaptive density control replaces its entries);
    ``prior``: the forward field F (this avatar's own copy: it is fine-tuned);
    ``detail``: G, or None for F alone; ``z_id``: the tracked identity code F is
    conditioned on (None when F is not); ``transport``/``jacobian``: how F moves shapes
    (see :func:`npga.deformation.deform_gaussians`); ``use_pose``: apply the head pose
    given to :meth:`render` (False: the ablation "no pose", head space = world).
    """

    def __init__(
        self,
        gaussians: GaussianParams,
        prior: ForwardField,
        detail: DetailNetwork | None,
        z_id: Tensor | None = None,
        *,
        transport: str = "exact",
        jacobian: str = "fd",
        backend: str = "auto",
        use_pose: bool = True,
    ) -> None:
        super().__init__()
        self.use_pose = bool(use_pose)
        self.gaussians = gaussians
        self.prior = prior
        self.detail = detail
        self.register_buffer("z_id", None if z_id is None else torch.as_tensor(z_id, dtype=torch.float32))
        self.transport, self.jacobian, self.backend = transport, jacobian, backend
        fd = detail.feature_dim if detail is not None else 0
        have = gaussians["features"].shape[1] if "features" in gaussians else 0
        if fd != have:
            raise ValueError(f"the detail network expects {fd} features per Gaussian, the Gaussians have {have}")

    def _apply(self, fn, recurse=True):
        # .to(device) / .double() must move the Gaussians too, which are not registered
        super()._apply(fn, recurse)
        for k, v in list(self.gaussians.items()):
            self.gaussians[k] = nn.Parameter(fn(v.detach()), requires_grad=v.requires_grad)
        return self

    # ------------------------------------------------------------------ properties
    @property
    def feature_dim(self) -> int:
        return self.gaussians["features"].shape[1] if "features" in self.gaussians else 0

    @property
    def sh_degree(self) -> int:
        return sh_degree_of(self.gaussians)

    @property
    def n_gaussians(self) -> int:
        return int(self.gaussians["means"].shape[0])

    # ------------------------------------------------------------------ dynamics
    def deform(self, z_exp: Tensor) -> dict[str, Tensor]:
        """Deformed means (N, 3), quats (N, 4) and log-scales (N, 3), head space, for one z_exp (E,).

        D = F + G: F transports each Gaussian (mean through F, covariance through dF/dx),
        then G's offsets are added (NPGA Sec. 4.2). With a dynamic-appearance G the dict
        also holds its ``colors`` (N, 3) and ``opacities`` (N,) offsets.
        """
        return self._deform(z_exp)[0]

    def _deform(self, z_exp: Tensor, shapes: bool = True) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        """:meth:`deform` and G's offsets (None without G); ``shapes=False``: means (and
        G's appearance offsets) only, F without its Jacobian."""
        g = self.gaussians
        z_exp = torch.as_tensor(z_exp, dtype=torch.float32, device=g["means"].device).reshape(-1)
        if shapes:
            means, quats, log_scales = deform_gaussians(
                self.prior, g["means"], g["quats"], g["scales"], z_exp, self.z_id,
                mode=self.transport, jacobian=self.jacobian,
            )
            out = {"means": means, "quats": quats, "scales": log_scales}
        else:
            out = {"means": self.prior(g["means"], z_exp, *(() if self.z_id is None else (self.z_id,)))}
        d = None
        if self.detail is not None:
            d = self.detail.outputs(g["means"], g.get("features"), z_exp)
            out["means"] = out["means"] + d["means"]
            if shapes:
                out["quats"] = out["quats"] + d["quats"]  # unnormalised, as stored; the rasterizer normalises
                out["scales"] = out["scales"] + d["scales"]
            if "colors" in d:
                out["colors"], out["opacities"] = d["colors"], d["opacities"]
        return out, d

    @torch.no_grad()
    def posed_means(self, z_exp: Tensor, pose: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Means (N, 3) of the avatar posed at z_exp (and head pose) and their opacities
        (N,) in [0, 1], G's opacity offset included: what a geometric measure needs, at the
        cost of F without its Jacobian (:meth:`posed_gaussians` has every attribute)."""
        posed, _ = self._deform(z_exp, shapes=False)
        means = posed["means"]
        Rt = self.world_pose(pose, means)
        if Rt is not None:
            means = means @ Rt[0].T + Rt[1]
        logits = self.gaussians["opacities"] + posed.get("opacities", 0.0)
        return means, torch.sigmoid(logits)

    def world_pose(self, pose: tuple[Tensor, Tensor] | None, like: Tensor) -> tuple[Tensor, Tensor] | None:
        """The pose to apply, as tensors like ``like``; None without one or with ``use_pose=False``."""
        if pose is None or not self.use_pose:
            return None
        R, t = pose
        return torch.as_tensor(R).to(like).reshape(3, 3), torch.as_tensor(t).to(like).reshape(3)

    # ------------------------------------------------------------------ rendering
    def render(
        self,
        z_exp: Tensor,  # (E,) expression code of the frame
        viewmats: Tensor,  # (C, 4, 4) world-to-camera
        Ks: Tensor,  # (C, 3, 3)
        width: int,
        height: int,
        *,
        with_features: bool = False,
        background: Tensor | None = None,  # (3,) colour; default black
        sh_degree: int | None = None,
        pose: tuple[Tensor, Tensor] | None = None,  # (R (3, 3), t (3,)) head space -> world
    ) -> AvatarRender:
        """Render one frame into C cameras; colour and (optionally) features in one pass."""
        from npga.splatting.render import rasterize

        posed, detail = self._deform(z_exp)
        g = self.gaussians
        C = viewmats.shape[0]
        degree = self.sh_degree if sh_degree is None else sh_degree
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # (C, 3) world
        means, quats = posed["means"], posed["quats"]
        Rt = self.world_pose(pose, means)
        if Rt is not None:
            means, quats = pose_gaussians(means, quats, *Rt)
            campos = (campos - Rt[1]) @ Rt[0]  # cameras in head space, for the SH directions
        dirs = posed["means"][None] - campos[:, None]  # (C, N, 3) camera -> Gaussian, head space
        coeffs = sh_coeffs(g)[None].expand(C, -1, -1, -1)
        rgb = eval_sh(coeffs, dirs, degree) + 0.5
        if "colors" in posed:  # G's expression-dependent colour offset
            rgb = rgb + posed["colors"][None]
        rgb = torch.clamp_min(rgb, 0.0)  # (C, N, 3), gsplat's rule
        logits = g["opacities"] + posed["opacities"] if "opacities" in posed else g["opacities"]
        colors = rgb
        nf = self.feature_dim if with_features else 0
        if nf:
            colors = torch.cat([rgb, g["features"][None].expand(C, -1, -1)], dim=-1)
        bg = None
        if background is not None:
            bg = torch.cat([torch.as_tensor(background).to(rgb).reshape(1, 3),
                            rgb.new_zeros(1, nf)], dim=-1).expand(C, -1)
        img, alphas, meta = rasterize(
            means,
            nn.functional.normalize(quats, dim=-1),
            torch.exp(posed["scales"]),
            torch.sigmoid(logits),
            colors,
            viewmats,
            Ks,
            width,
            height,
            backgrounds=bg,
            backend=self.backend,
        )
        feats = img[..., 3:] if nf else None
        return AvatarRender(img[..., :3], alphas, feats, meta, posed, detail)

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def posed_gaussians(self, z_exp: Tensor, pose: tuple[Tensor, Tensor] | None = None) -> GaussianParams:
        """The avatar at expression z_exp (and head pose) as a static Gaussian set (for PLY export).

        G's colour offset goes into the SH DC term and its opacity offset into the logits,
        so a standard 3DGS viewer shows the same frame.
        """
        posed = self.deform(z_exp)
        out = {k: v.detach().clone() for k, v in self.gaussians.items()}
        if "colors" in posed:
            out["sh0"] = out["sh0"] + posed.pop("colors")[:, None, :] / SH_C0
            out["opacities"] = out["opacities"] + posed.pop("opacities")
        Rt = self.world_pose(pose, posed["means"])
        if Rt is not None:
            posed["means"], posed["quats"] = pose_gaussians(posed["means"], posed["quats"], *Rt)
            # SH bands of degree >= 1 stay in head space (a viewer sees them rotated by R)
        out.update({k: v.detach().clone() for k, v in posed.items()})
        return {k: nn.Parameter(v) for k, v in out.items()}

    def export_ply(self, path: str | Path, z_exp: Tensor, pose: tuple[Tensor, Tensor] | None = None) -> None:
        """Write the avatar posed at z_exp as a standard 3DGS PLY (features in ``feat_*``)."""
        save_ply(path, self.posed_gaussians(z_exp, pose))

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the avatar (plain tensors and dicts)."""
        return {
            "gaussians": {k: v.detach().cpu().clone() for k, v in self.gaussians.items()},
            "prior": self.prior.to_state(),
            "detail": None if self.detail is None else self.detail.to_state(),
            "z_id": None if self.z_id is None else self.z_id.detach().cpu().clone(),
            "options": {"transport": self.transport, "jacobian": self.jacobian, "backend": self.backend,
                        "use_pose": self.use_pose},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace this avatar's Gaussians and networks by those of ``state``, in place."""
        other = NPGAvatar.from_state(state, device=self.gaussians["means"].device)
        if (self.detail is None) != (other.detail is None):
            raise ValueError("the state's avatar and this one differ in having a detail network")
        self.gaussians.clear()
        self.gaussians.update(other.gaussians)
        self.prior.load_state_dict(other.prior.state_dict())
        if self.detail is not None:
            self.detail.load_state_dict(other.detail.state_dict())
        self.z_id = other.z_id
        self.transport, self.jacobian, self.backend = other.transport, other.jacobian, other.backend
        self.use_pose = other.use_pose

    @classmethod
    def from_state(cls, state: dict[str, Any], device: str | torch.device = "cpu") -> "NPGAvatar":
        try:
            gaussians = {k: nn.Parameter(v.to(device)) for k, v in state["gaussians"].items()}
            prior = ForwardField.from_state(state["prior"]).to(device)
            detail = None if state["detail"] is None else DetailNetwork.from_state(state["detail"]).to(device)
            options = {"use_pose": False, **state["options"]}  # states saved before the pose: trained without
            return cls(gaussians, prior, detail, state["z_id"], **options).to(device)
        except KeyError as err:
            raise ValueError(f"not an NPGAvatar state: missing {err}") from None


# --------------------------------------------------------------------------- posing


def pose_gaussians(means: Tensor, quats: Tensor, R: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Move Gaussians by the rigid pose x -> R x + t: means (N, 3), quats wxyz (N, 4).

    A Gaussian's covariance R_i S^2 R_i^T becomes (R R_i) S^2 (R R_i)^T: the rotation
    composes (``q_R * q_i``), the scales do not change.
    """
    return means @ R.T + t, quat_multiply(matrix_to_quat(R).expand_as(quats), quats)


# --------------------------------------------------------------------------- construction


def create_avatar(
    points: np.ndarray | Tensor,  # (N, 3) canonical positions
    prior: ForwardField,
    cfg: AvatarConfig,
    *,
    exp_codes: Tensor,  # (T, E) training codes (standardisation of G's input)
    z_id: Tensor | None = None,
    colors: np.ndarray | Tensor | None = None,  # (N, 3) initial RGB
    feature_dim: int | None = None,
    detail: bool = True,
    seed: int = 0,
    backend: str = "auto",
) -> NPGAvatar:
    """A fresh avatar: Gaussians on ``points``, a private copy of F, a zero-initialised G.

    ``feature_dim`` overrides ``cfg.feature_dim`` (0 = vanilla); ``detail=False`` drops G
    (the avatar is then F alone, an ablation).
    """
    fd = cfg.feature_dim if feature_dim is None else int(feature_dim)
    torch.manual_seed(seed)  # G's weights
    gaussians = init_from_points(
        points, colors, sh_degree=cfg.sh_degree, feature_dim=fd, init_opacity=cfg.init_opacity, seed=seed,
    )
    pts = gaussians["means"].detach()
    G = None
    if detail:
        G = DetailNetwork(
            exp_codes.shape[-1], fd, cfg.detail_hidden, cfg.detail_layers, cfg.detail_freqs,
            center=tuple(pts.mean(0).tolist()), scale=prior.scale, appearance=cfg.dynamic_appearance,
        )
        G.set_code_stats(exp_codes)
    elif fd:
        raise ValueError("per-Gaussian features need the detail network (detail=True)")
    F = copy.deepcopy(prior).train()
    for p in F.parameters():
        p.requires_grad_(True)
    return NPGAvatar(gaussians, F, G, z_id, transport=cfg.transport, jacobian=cfg.jacobian, backend=backend,
                     use_pose=cfg.head_pose)


def initial_colors(points_posed: np.ndarray, images: np.ndarray, cameras) -> np.ndarray:
    """RGB (N, 3) for Gaussians at posed positions: median over the cameras' pixels."""
    import warnings

    from npga.splatting.static_fit import colours_from_images

    with warnings.catch_warnings():  # points no camera sees (under the chin) get grey
        warnings.simplefilter("ignore", RuntimeWarning)
        return colours_from_images(np.asarray(points_posed), np.asarray(images), cameras)


def build_avatar(
    profile: Profile,
    participant,
    *,
    feature_dim: int | None = None,
    model: str = "nphm",
    head=None,
    prior: ForwardField | None = None,
    progress: bool = True,
) -> NPGAvatar:
    """The avatar of ``participant`` as NPGA builds it, from the real pieces of the book.

    Canonical Gaussians on the tracked identity's canonical NPHM surface (z_id from
    ``tracking/{model}.npz``), the profile's distilled prior F
    (:func:`npga.deformation.store.load_or_distill`), colours from the first training
    frame seen by the training cameras through F and that frame's tracked head pose.
    """
    from npga.deformation.store import load_or_distill
    from npga.headmodels import load_or_train

    cfg = profile.avatar
    train_seqs = [s for s in participant.sequences if s != profile.data.heldout_sequence]
    codes = [participant.sequence(s).codes(model) for s in train_seqs]
    z_id = torch.from_numpy(codes[0].z_id)
    exp_codes = torch.from_numpy(np.concatenate([c.z_exp for c in codes]))
    if head is None:
        head = load_or_train(profile, model, progress=progress)
    if prior is None:
        prior, _ = load_or_distill(profile, model, head=head, progress=progress)
    points = head.canonical_surface_points(z_id, cfg.n_gaussians, seed=profile.seed)
    seq = participant.sequence(train_seqs[0])
    cams = seq.cameras(participant.train_serials)
    images = np.stack([seq.load_image(seq.frames[0], c.serial) for c in cams])
    with torch.no_grad():
        posed = prior(points, exp_codes[0], z_id if prior.id_dims else None)
    if cfg.head_pose:  # the first frame's head pose puts the Gaussians where the cameras saw them
        R, t = codes[0].pose(0)
        posed = posed @ torch.as_tensor(R, dtype=posed.dtype).T + torch.as_tensor(t, dtype=posed.dtype)
    colors = initial_colors(posed.numpy(), images, cams)
    return create_avatar(
        points, prior, cfg, exp_codes=exp_codes, z_id=z_id if prior.id_dims else None,
        colors=colors, feature_dim=feature_dim, seed=profile.seed, backend=profile.render.backend,
    )


__all__ = ["AvatarRender", "NPGAvatar", "build_avatar", "create_avatar", "initial_colors", "pose_gaussians"]
