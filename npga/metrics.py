"""Image metrics: PSNR, SSIM (also differentiable, also masked) and LPIPS.

Images are float in [0, 1], channels last: one image (H, W, 3) or a batch
(B, H, W, 3), as numpy arrays or torch tensors. Batched metrics are computed per
image and then averaged, which is how avatar papers report them (a mean over test
images, not a PSNR of the pooled error).

Masks are (H, W), (H, W, 1) or batched (B, H, W[, 1]), values in [0, 1]; a soft
mask acts as per-pixel weights. NPGA and GaussianAvatars evaluate on full images
with black backgrounds; the masked variants restrict the score to the head.

LPIPS (Zhang et al. 2018) needs pretrained AlexNet weights plus the LPIPS linear
heads. They are never downloaded and never replaced by random weights: when the
files are not on disk :func:`lpips` returns ``None`` and :func:`lpips_available`
says why, so tables can print "n/a".
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _as_batch(x, name: str) -> Tensor:
    """(B, H, W, C) float tensor from an image or batch (numpy or torch)."""
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if not torch.is_floating_point(t):
        raise TypeError(f"{name} must be a float image in [0, 1], got dtype {t.dtype}")
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise ValueError(f"{name} must be (H, W, C) or (B, H, W, C), got shape {tuple(t.shape)}")
    return t


def _mask_batch(mask, like: Tensor) -> Tensor:
    """Mask as (B, H, W, 1) float weights matching ``like`` (B, H, W, C)."""
    m = mask if isinstance(mask, Tensor) else torch.as_tensor(np.asarray(mask))
    m = m.to(like.dtype).to(like.device)
    B, H, W, _ = like.shape
    if m.shape[-1] == 1 and m.dim() >= 3 and tuple(m.shape[-3:-1]) == (H, W):
        m = m[..., 0]
    if m.dim() == 2:
        m = m[None]
    if tuple(m.shape[-2:]) != (H, W) or m.shape[0] not in (1, B):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not fit images {tuple(like.shape)}"
        )
    return m.expand(B, H, W)[..., None]


def _pair(img, gt) -> tuple[Tensor, Tensor]:
    a, b = _as_batch(img, "img"), _as_batch(gt, "gt")
    if a.shape != b.shape:
        raise ValueError(f"img {tuple(a.shape)} and gt {tuple(b.shape)} differ in shape")
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(device=a.device, dtype=dtype)


# --------------------------------------------------------------------------- PSNR


def psnr_torch(img, gt, mask=None, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR (B,) = 10 log10(range^2 / MSE), differentiable.

    With a mask the MSE is the mask-weighted mean over pixels and channels.
    """
    a, b = _pair(img, gt)
    se = (a - b) ** 2
    if mask is None:
        mse = se.mean(dim=(1, 2, 3))
    else:
        w = _mask_batch(mask, a)
        denom = w.sum(dim=(1, 2, 3)) * a.shape[-1]
        if (denom <= 0).any():
            raise ValueError("mask is empty for at least one image: PSNR undefined")
        mse = (se * w).sum(dim=(1, 2, 3)) / denom
    return 10.0 * torch.log10(data_range**2 / mse)


def psnr(img, gt, mask=None, data_range: float = 1.0) -> float:
    """PSNR in dB, averaged over a batch (identical images give ``inf``)."""
    with torch.no_grad():
        return float(psnr_torch(img, gt, mask, data_range).double().mean())


# --------------------------------------------------------------------------- SSIM


@functools.lru_cache(maxsize=8)
def _gaussian_1d(size: int, sigma: float) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _blur_valid(x: Tensor) -> Tensor:
    """Separable Gaussian filter of (M, 1, H, W) with no padding ('valid' region)."""
    m = x.shape[0]
    g = _gaussian_1d(SSIM_WINDOW, SSIM_SIGMA).to(x)
    # the M maps as channels of one image with a grouped convolution: on the CPU this
    # is tens of times faster than a batch of M single-channel images
    x = x.reshape(1, m, *x.shape[-2:])
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(m, 1, -1, 1), groups=m)
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(m, 1, 1, -1), groups=m)
    return x.reshape(m, 1, *x.shape[-2:])


def ssim_map(img, gt, data_range: float = 1.0) -> Tensor:
    """SSIM map (B, H-10, W-10, C) over the valid region, differentiable.

    Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), population
    covariances and K1 = 0.01, K2 = 0.03 -- the settings of the 3DGS loss and of
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``. Only positions where the window lies inside the
    image are kept, which is also exactly the region scikit-image averages.
    """
    a, b = _pair(img, gt)
    B, H, W, C = a.shape
    if H < SSIM_WINDOW or W < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {H}x{W}")
    x = a.permute(0, 3, 1, 2).reshape(B * C, 1, H, W)
    y = b.permute(0, 3, 1, 2).reshape(B * C, 1, H, W)
    # one batched filter call for all five local moments (fewer, larger convolutions)
    n = B * C
    moments = _blur_valid(torch.cat([x, y, x * x, y * y, x * y]))
    mu_x, mu_y, e_xx, e_yy, e_xy = (moments[i * n : (i + 1) * n] for i in range(5))
    var_x = e_xx - mu_x**2
    var_y = e_yy - mu_y**2
    cov = e_xy - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    s = num / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    h, w = s.shape[-2:]
    return s.reshape(B, C, h, w).permute(0, 2, 3, 1)


def ssim_torch(img, gt, mask=None, data_range: float = 1.0) -> Tensor:
    """Per-image SSIM (B,), differentiable (use ``1 - ssim_torch(...).mean()`` as a loss).

    Without a mask: the mean of :func:`ssim_map` over positions and channels.
    With a mask: the mask is cropped to the same valid region (a border of 5 pixels
    dropped) and the SSIM map is averaged with the mask as weights. Each SSIM value
    still looks at an 11x11 neighbourhood, so pixels just outside the mask influence
    the score near its boundary; that is intended (it penalises bleeding edges).
    """
    s = ssim_map(img, gt, data_range)
    if mask is None:
        return s.mean(dim=(1, 2, 3))
    a, _ = _pair(img, gt)
    r = SSIM_WINDOW // 2
    w = _mask_batch(mask, a)[:, r : a.shape[1] - r, r : a.shape[2] - r]
    denom = w.sum(dim=(1, 2, 3)) * s.shape[-1]
    if (denom <= 0).any():
        raise ValueError("mask is empty (inside the SSIM valid region) for at least one image")
    return (s * w).sum(dim=(1, 2, 3)) / denom


def ssim(img, gt, mask=None, data_range: float = 1.0) -> float:
    """SSIM averaged over a batch (see :func:`ssim_torch` for the masked variant)."""
    with torch.no_grad():
        return float(ssim_torch(img, gt, mask, data_range).double().mean())


# --------------------------------------------------------------------------- LPIPS

# LPIPS input normalisation (the "ScalingLayer" of Zhang et al.'s release), images in [-1, 1].
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
# AlexNet's convolutional trunk: (out channels, kernel, stride, padding, max-pool before).
_ALEX_CONVS = ((64, 11, 4, 2, False), (192, 5, 1, 2, True), (384, 3, 1, 1, True),
               (256, 3, 1, 1, False), (256, 3, 1, 1, False))
_ALEX_TORCHVISION_IDX = (0, 3, 6, 8, 10)  # index of each conv in torchvision's `features`
_LPIPS_ENV = "NPGA_LPIPS_WEIGHTS"


def _lpips_weight_files() -> tuple[Path | None, Path | None, str]:
    """(AlexNet backbone file, LPIPS linear-head file, reason when one is missing).

    Looked for, in order: the folder (or single merged file) named by
    ``$NPGA_LPIPS_WEIGHTS``; the torch hub cache (``<hub>/checkpoints/alexnet-owt-*.pth``,
    where torchvision stores it); the ``lpips`` pip package's ``weights/v0.1/alex.pth``.
    """
    backbone = heads = None
    env = os.environ.get(_LPIPS_ENV)
    if env:
        p = Path(env)
        if p.is_file():  # one merged state dict with both parts
            return p, p, ""
        if p.is_dir():
            backbone = next(iter(sorted(p.glob("alexnet*.pth"))), None)
            heads = p / "alex.pth" if (p / "alex.pth").is_file() else None
    if backbone is None:
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        backbone = next(iter(sorted(hub.glob("alexnet-owt-*.pth"))), None) if hub.is_dir() else None
    if heads is None:
        spec = importlib.util.find_spec("lpips")
        if spec is not None and spec.submodule_search_locations:
            cand = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / "alex.pth"
            heads = cand if cand.is_file() else None
    reasons = []
    if backbone is None:
        reasons.append("AlexNet backbone weights (alexnet-owt-*.pth) not found")
    if heads is None:
        reasons.append("LPIPS linear heads (alex.pth) not found")
    reason = "; ".join(reasons)
    if reason:
        reason += f" (set {_LPIPS_ENV} to a folder holding them; nothing is downloaded)"
    return backbone, heads, reason


def lpips_available() -> tuple[bool, str]:
    """Whether LPIPS can be computed here, and if not, why."""
    backbone, heads, reason = _lpips_weight_files()
    return (backbone is not None and heads is not None), reason or "ok"


class _LPIPSAlex(torch.nn.Module):
    """LPIPS with an AlexNet trunk: unit-normalised activations of 5 ReLU layers,
    squared differences weighted per channel by learned linear heads, averaged over
    space and summed over layers (Zhang et al. 2018, Eq. 1)."""

    def __init__(self) -> None:
        super().__init__()
        convs, cin = [], 3
        for cout, k, s, p, _ in _ALEX_CONVS:
            convs.append(torch.nn.Conv2d(cin, cout, k, s, p))
            cin = cout
        self.convs = torch.nn.ModuleList(convs)
        self.heads = torch.nn.ModuleList(
            torch.nn.Conv2d(c[0], 1, 1, bias=False) for c in _ALEX_CONVS
        )
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))

    def load_files(self, backbone: Path, heads: Path) -> None:
        sd_b = torch.load(backbone, map_location="cpu", weights_only=True)
        if heads == backbone:
            sd_h = sd_b
        else:
            sd_h = torch.load(heads, map_location="cpu", weights_only=True)
        state = {}
        for i, idx in enumerate(_ALEX_TORCHVISION_IDX):
            for kind in ("weight", "bias"):
                key = f"features.{idx}.{kind}"
                if key not in sd_b:
                    raise ValueError(
                        f"{backbone}: no {key!r}; not a torchvision AlexNet state dict"
                    )
                state[f"convs.{i}.{kind}"] = sd_b[key]
            key = f"lin{i}.model.1.weight"
            if key not in sd_h:
                raise ValueError(f"{heads}: no {key!r}; not an LPIPS alex.pth")
            state[f"heads.{i}.weight"] = sd_h[key]
        state["shift"], state["scale"] = self.shift, self.scale
        self.load_state_dict(state)

    def features(self, x: Tensor) -> list[Tensor]:
        x = (x - self.shift) / self.scale
        out = []
        for conv, (_, _, _, _, pool) in zip(self.convs, _ALEX_CONVS):
            if pool:
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            out.append(x)
        return out

    def forward(self, a: Tensor, b: Tensor) -> Tensor:  # (B, 3, H, W) in [-1, 1] -> (B,)
        total = 0.0
        for fa, fb, head in zip(self.features(a), self.features(b), self.heads):
            na = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
            nb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
            total = total + head((na - nb) ** 2).mean(dim=(1, 2, 3))
        return total


@functools.lru_cache(maxsize=1)
def _lpips_model(backbone: str, heads: str) -> _LPIPSAlex:
    model = _LPIPSAlex()
    model.load_files(Path(backbone), Path(heads))
    return model.eval().requires_grad_(False)


def lpips(img, gt) -> float | None:
    """LPIPS (AlexNet) averaged over a batch, or ``None`` when the weights are not on disk."""
    backbone, heads, _ = _lpips_weight_files()
    if backbone is None or heads is None:
        return None
    a, b = _pair(img, gt)
    model = _lpips_model(str(backbone), str(heads)).to(a.device)
    to_net = lambda t: (t.float().permute(0, 3, 1, 2) * 2.0 - 1.0)  # noqa: E731
    with torch.no_grad():
        return float(model(to_net(a), to_net(b)).double().mean())


def format_metric(value: float | None, digits: int = 3) -> str:
    """A table cell: the value, or "n/a" when it could not be computed."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


__all__ = [
    "format_metric",
    "lpips",
    "lpips_available",
    "psnr",
    "psnr_torch",
    "ssim",
    "ssim_map",
    "ssim_torch",
]
