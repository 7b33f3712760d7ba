"""Profiles: the one place where every size in the book is set.

Three profiles share all code and differ only in sizes:

* ``mini`` -- CI and a first reading on a 2-core laptop: tiny images, few frames,
  small networks, a few hundred iterations. Every chapter in about a minute.
* ``cpu``  -- a laptop session: results good enough to see each effect. Sized so that
  the whole pipeline plus the 18-run ablation (chapters 6-8) fits in about two and a
  half hours on 2 cores (inputs ~30 min on one core, the ablation 111 min on two; see
  benchmarks/results/ablation_cpu.md).
* ``gpu``  -- one CUDA GPU at NPGA's evaluation resolution (550 x 802) with gsplat.

Select a profile by name (``get_profile("cpu")``), by the notebook parameter
``profile``, or by the environment variable ``NPGA_PROFILE``. ``gpu`` is never
chosen implicitly: it must be asked for by name.

Each section is a frozen dataclass, so a profile can be varied for an experiment
with :func:`dataclasses.replace` without touching the defaults.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILE_NAMES = ("mini", "cpu", "gpu")


@dataclass(frozen=True)
class DataConfig:
    """Synthetic capture (SynthHead) and the processed dataset layout."""

    width: int  # image width in pixels (portrait, NeRSemble aspect 2200:3208)
    height: int  # image height in pixels
    participants: int  # participants written by data_scripts/make_synthetic.py
    sequences: tuple[str, ...]  # sequence names, NeRSemble-style
    heldout_sequence: str  # for self-reenactment
    frames_per_sequence: int
    supersample: int  # anti-aliasing factor of the ground-truth mesh renderer
    mesh_resolution: int  # angular resolution of the procedural head mesh
    scan_identities: int  # identities exported as registered "scans" for head models
    scan_expressions: int  # expressions per scan identity
    fps: float = 24.0


@dataclass(frozen=True)
class RenderConfig:
    """Gaussian rasterizer settings."""

    backend: str = "auto"  # "auto" (gsplat on CUDA, numba on the CPU) | "numba" | "torch" | "gsplat"
    tile_size: int = 16


@dataclass(frozen=True)
class StaticFitConfig:
    """Static fit of one frame (chapter 2)."""

    iterations: int
    n_init_gaussians: int
    densify_from: int
    densify_until: int
    densify_every: int
    opacity_reset_every: int
    max_gaussians: int


@dataclass(frozen=True)
class HeadModelConfig:
    """Linear 3DMM and the small neural parametric head model (chapter 3)."""

    id_dims: int
    exp_dims: int
    hidden: int  # width of the SDF and deformation MLPs
    layers: int  # depth of the MLPs
    iterations: int  # identity stage (canonical SDF f) steps
    samples_per_step: int
    deform_iterations: int = 600  # expression stage (backward deformation B) steps
    exp_dims_sweep: tuple[int, ...] = (2, 4, 8)  # extra expression sizes compared in chapter 3
    sweep_iterations: int = 400  # B steps of each sweep model (f is shared)
    sdf_samples_per_mesh: int = 20000  # surface + near + space samples per canonical mesh
    correspondences_per_scan: int = 3000  # posed -> canonical pairs per training scan
    voxel: float = 0.002  # metres; flood-fill grid that defines inside/outside
    neck_cut: float = -0.16  # metres (y); both head models keep the head above this plane
    canonical_jaw_open: float = 0.4  # NPHM's canonical face has the mouth open this much
    mc_resolution: int = 64  # marching-cubes grid for NPHM surfaces
    fit_iterations: int = 150  # Adam steps when fitting NPHM codes to points
    eval_scans: int = 6  # held-out scans evaluated per split (chapter 3 numbers)
    track_points: int = 1500  # at most this many COLMAP points per frame are used
    pose_cut: float = -0.13  # metres (y, head space); the head pose is fitted to points above (the neck bends)


@dataclass(frozen=True)
class DeformConfig:
    """Forward deformation field distilled by cycle consistency (chapter 4)."""

    hidden: int  # width of F's MLP
    layers: int  # depth of F's MLP
    iterations: int  # distillation steps of the multi-identity prior
    samples_per_step: int  # (identity, expression, point) triples per step
    points_per_identity: int = 4096  # canonical surface samples drawn per identity
    sample_noise: float = 0.01  # metres of jitter around the canonical surface
    lr: float = 5e-3  # Adam, cosine-decayed to 5 %
    use_id: bool = True  # condition F on z_id as well as z_exp
    length_scale: float = 0.1  # metres; normalises F's inputs and outputs
    n_freqs: int = 2  # Fourier-feature octaves of the position (0: raw coordinates only)
    finetune_iterations: int = 200  # per-avatar fine-tuning of the prior
    finetune_lr: float = 5e-4
    code_mixing: float = 0.3  # fraction of each batch with blends of two training codes
    code_sampling: float = 0.4  # fraction with codes drawn from the training codes' Gaussian
    eval_points: int = 100_000  # canonical queries timed and measured in chapter 4
    loss: str = "l2"  # cycle loss: "l2" = mean |B(F(x)) - x|, "mse" = mean |B(F(x)) - x|^2


@dataclass(frozen=True)
class AvatarConfig:
    """The NPGA avatar and its trainer (chapters 5-8)."""

    n_gaussians: int
    feature_dim: int  # per-Gaussian latent feature size (0 = vanilla)
    detail_hidden: int
    iterations: int
    batch_cameras: int
    knn_k: int
    cnn_channels: int
    detail_layers: int = 3  # hidden layers of the detail network G
    detail_freqs: int = 4  # Fourier octaves of G's positional encoding of x_c
    sh_degree: int = 1  # SH degree of the Gaussians' colours
    init_opacity: float = 0.3  # opacity of the canonical Gaussians at initialisation
    transport: str = "exact"  # how F's Jacobian moves shapes: "exact" | "polar" (npga.deformation)
    jacobian: str = "analytic"  # F's Jacobian: "analytic" (forward mode, one pass) | "fd" | "autograd"
    head_pose: bool = True  # pose the head-space avatar by the tracked rigid head pose (False: ablation)
    dynamic_appearance: bool = False  # G also predicts colour and opacity offsets (chapter 5's experiment)
    eval_every: int = 0  # trainer: held-out evaluation every this many steps (0: only at the end)
    checkpoint_every: int = 100  # trainer: write a checkpoint every this many steps
    bf16: bool = False  # trainer: F's, G's and the CNN's products in bfloat16 on the CPU (npga.headmodels.linear)
    # Laplacian terms on the k-NN graph of canonical Gaussians (npga.avatar.regularizers, chapter 6)
    lap_features: float = 1.0  # weight of mean |L f|^2 (per-Gaussian features)
    lap_dynamics: float = 1.0  # weight of mean |L delta|^2 (detail network G's offsets)
    knn_rebuild_every: int = 100  # steps; the graph is also rebuilt after every densification
    # adaptive density control of the dynamic avatar (npga.avatar.densify_dynamic, chapter 7)
    densify_from: int = 50
    densify_until: int = 250
    densify_every: int = 50
    opacity_reset_every: int = 0  # 0: never (a short run has no time to recover from a reset)
    densify_grad: float = 0.0002  # NDC gradient threshold (3DGS)
    max_gaussians: int = 8000
    demo_iterations: int = 40  # chapters 6-8 train their live with/without variants this long


@dataclass(frozen=True)
class Profile:
    name: str
    seed: int
    data: DataConfig
    render: RenderConfig
    static_fit: StaticFitConfig
    head_model: HeadModelConfig
    deform: DeformConfig
    avatar: AvatarConfig
    device: str = "cpu"

    def variant_key(self, *sections: str) -> str:
        """"" when these config sections equal those of the named profile, else "-" and a
        short hash of them.

        Every cache appends the key of the sections it depends on to its folder or file
        name, so a profile changed with :func:`with_overrides` (an exercise, an experiment)
        trains into places of its own: it never silently loads, nor overwrites, the models
        the book's chapters read. The seed is not part of these keys: the book trains head
        models and priors once per profile, and seeds vary the avatars' optimisation only;
        stored avatars add :attr:`seed_key`.
        """
        base = _PROFILES.get(self.name)
        if base is not None and all(getattr(base, s) == getattr(self, s) for s in sections):
            return ""
        blob = json.dumps({s: asdict(getattr(self, s)) for s in sections}, sort_keys=True, default=str)
        return "-" + hashlib.sha256(blob.encode()).hexdigest()[:10]

    @property
    def seed_key(self) -> str:
        """"" for the named profile's seed, else ``-seed{N}``: stored avatars of another seed
        are other runs (:func:`npga.avatar.train.avatar_dir`)."""
        base = _PROFILES.get(self.name)
        return "" if base is not None and base.seed == self.seed else f"-seed{self.seed}"

    @property
    def data_root(self) -> Path:
        """Where this profile's synthetic dataset lives (``NPGA_DATA`` overrides); a changed
        ``data`` section gets a folder of its own (:meth:`variant_key`)."""
        env = os.environ.get("NPGA_DATA")
        root = Path(env) if env else REPO_ROOT / "data" / "synthetic" / self.name
        key = self.variant_key("data")
        return root.with_name(root.name + key) if key else root

    @property
    def cache_root(self) -> Path:
        """Where trained models (head models, priors, avatars) for this profile go
        (``NPGA_CACHE`` overrides); models of a changed ``data`` section go elsewhere."""
        env = os.environ.get("NPGA_CACHE")
        root = Path(env) if env else REPO_ROOT / "data" / "models" / self.name
        key = self.variant_key("data")
        return root.with_name(root.name + key) if key else root


_MINI_SEQUENCES = ("EXP-2-eyes", "EXP-4-lips", "EXP-8-jaw-1", "FREE")
_FULL_SEQUENCES = (
    "EXP-1-head",
    "EXP-2-eyes",
    "EXP-3-cheeks+nose",
    "EXP-4-lips",
    "EXP-5-mouth",
    "EXP-8-jaw-1",
    "EMO-1",
    "EMO-2",
    "SEN-01",
    "FREE",
)

_PROFILES: dict[str, Profile] = {
    "mini": Profile(
        name="mini",
        seed=0,
        data=DataConfig(
            width=88,
            height=128,
            participants=2,
            sequences=_MINI_SEQUENCES,
            heldout_sequence="FREE",
            frames_per_sequence=6,
            supersample=2,
            mesh_resolution=48,
            scan_identities=8,
            scan_expressions=20,
        ),
        render=RenderConfig(backend="auto", tile_size=16),
        static_fit=StaticFitConfig(
            iterations=300,
            n_init_gaussians=3000,
            densify_from=50,
            densify_until=250,
            densify_every=50,
            opacity_reset_every=1000,
            max_gaussians=8000,
        ),
        head_model=HeadModelConfig(
            id_dims=8, exp_dims=12, hidden=96, layers=4, iterations=600, samples_per_step=2048,
            deform_iterations=600, exp_dims_sweep=(2, 4, 8), sweep_iterations=300,
            sdf_samples_per_mesh=16000, correspondences_per_scan=2000, mc_resolution=48,
            fit_iterations=100, eval_scans=4, track_points=1500,
        ),
        deform=DeformConfig(
            hidden=96, layers=4, iterations=3000, samples_per_step=2048, lr=1e-2, eval_points=20_000
        ),
        avatar=AvatarConfig(
            n_gaussians=3000,
            feature_dim=8,
            detail_hidden=64,
            iterations=300,
            batch_cameras=2,
            knn_k=8,
            cnn_channels=16,
        ),
    ),
    "cpu": Profile(
        name="cpu",
        seed=0,
        data=DataConfig(
            width=176,
            height=256,
            participants=2,
            sequences=_FULL_SEQUENCES,
            heldout_sequence="FREE",
            frames_per_sequence=8,
            supersample=2,
            mesh_resolution=96,
            scan_identities=10,
            scan_expressions=40,
        ),
        render=RenderConfig(backend="auto", tile_size=16),
        static_fit=StaticFitConfig(
            iterations=2000,
            n_init_gaussians=10000,
            densify_from=200,
            densify_until=1500,
            densify_every=100,
            opacity_reset_every=1000,
            max_gaussians=40000,
        ),
        head_model=HeadModelConfig(
            id_dims=16, exp_dims=16, hidden=128, layers=5, iterations=1200, samples_per_step=4096,
            deform_iterations=1200, exp_dims_sweep=(2, 4, 8), sweep_iterations=500,
            sdf_samples_per_mesh=24000, correspondences_per_scan=3000, mc_resolution=64,
            fit_iterations=120, eval_scans=4, track_points=2000,
        ),
        deform=DeformConfig(hidden=128, layers=4, iterations=3000, samples_per_step=4096, eval_points=50_000),
        avatar=AvatarConfig(
            n_gaussians=8000,
            feature_dim=16,
            detail_hidden=96,
            iterations=800,
            batch_cameras=2,
            knn_k=8,
            cnn_channels=32,
            checkpoint_every=400,
            densify_from=100,
            densify_until=600,
            densify_every=100,
            opacity_reset_every=0,
            max_gaussians=12000,
            demo_iterations=300,
        ),
    ),
    "gpu": Profile(
        name="gpu",
        seed=0,
        data=DataConfig(
            width=550,
            height=802,
            participants=3,
            sequences=_FULL_SEQUENCES,
            heldout_sequence="FREE",
            frames_per_sequence=32,
            supersample=3,
            mesh_resolution=192,
            scan_identities=20,
            scan_expressions=100,
        ),
        render=RenderConfig(backend="auto", tile_size=16),
        static_fit=StaticFitConfig(
            iterations=15000,
            n_init_gaussians=50000,
            densify_from=500,
            densify_until=12000,
            densify_every=100,
            opacity_reset_every=3000,
            max_gaussians=250000,
        ),
        head_model=HeadModelConfig(
            id_dims=32, exp_dims=32, hidden=400, layers=6, iterations=30000, samples_per_step=32768,
            deform_iterations=20000, exp_dims_sweep=(4, 8, 16), sweep_iterations=10000,
            sdf_samples_per_mesh=100000, correspondences_per_scan=10000, mc_resolution=160,
            fit_iterations=300, eval_scans=12, track_points=4000,
        ),
        deform=DeformConfig(hidden=400, layers=6, iterations=30000, samples_per_step=32768),
        avatar=AvatarConfig(
            n_gaussians=100000,
            feature_dim=32,
            detail_hidden=256,
            iterations=60000,
            batch_cameras=4,
            knn_k=8,
            cnn_channels=64,
            densify_from=500,
            densify_until=30000,
            densify_every=100,
            opacity_reset_every=3000,
            max_gaussians=250000,
            demo_iterations=6000,
        ),
        device="cuda",
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """Return the profile called ``name``, else ``$NPGA_PROFILE``, else ``mini``.

    ``gpu`` is returned only when asked for by name (argument or environment).
    """
    chosen = name or os.environ.get("NPGA_PROFILE") or "mini"
    if chosen not in _PROFILES:
        raise ValueError(
            f"unknown profile {chosen!r}: choose one of {', '.join(PROFILE_NAMES)} "
            "(argument, notebook parameter `profile`, or NPGA_PROFILE)"
        )
    return _PROFILES[chosen]


def with_overrides(profile: Profile, **sections: dict) -> Profile:
    """A copy of ``profile`` with some fields of some sections replaced.

    ``with_overrides(p, static_fit={"iterations": 50})``
    """
    changes = {}
    for section, values in sections.items():
        current = getattr(profile, section)
        if is_dataclass(current):
            changes[section] = replace(current, **values)
        else:
            changes[section] = values
    return replace(profile, **changes)


def numeric_sizes(obj, prefix: str = "") -> dict[str, float]:
    """Flatten every int/float field of a profile into ``{"section.field": value}``."""
    out: dict[str, float] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            out.update(numeric_sizes(value, key + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


__all__ = [
    "PROFILE_NAMES",
    "REPO_ROOT",
    "AvatarConfig",
    "DataConfig",
    "DeformConfig",
    "HeadModelConfig",
    "Profile",
    "RenderConfig",
    "StaticFitConfig",
    "get_profile",
    "numeric_sizes",
    "with_overrides",
]
