"""Screen-space refinement CNN: from a rendered latent image to the final RGB (NPGA, arXiv 2405.19331).

The rasterizer can splat any number of channels per Gaussian. NPGA splats the colour *and*
the per-Gaussian latent features f_i in one pass, giving a latent image
I_lat = [RGB | rasterized f] of 3 + F channels, and a small CNN turns it into the final
image:

    I = RGB + CNN([RGB, f_raster])

The CNN sees a pixel's neighbourhood, so it can fix what splatting alone renders badly
(seams between Gaussians, thin dark lines in the mouth, shading that changes with the
expression and that SH colours cannot express) and it adds appearance capacity that is
shared across Gaussians.

Our architecture (the paper does not fix one that we could verify; these are our
choices): three 3x3 convolutions, the middle one dilated by 2 (a 9 x 9 pixel receptive
field in total), SiLU activations, and a 1x1 output layer initialised to zero, so that the
refined image equals the rasterized RGB at the start of training and the CNN only learns
a residual. Width is ``AvatarConfig.cnn_channels``. Images stay channels-last at the
interface (C, H, W, D), as everywhere in the book.

:class:`RefinedAvatar` wraps an avatar and its CNN so that :mod:`npga.avatar.evaluate` scores the
refined images, and :func:`cnn_image_head` is the trainer hook.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn
from torch.nn import functional as Fn

from npga.headmodels.linear import bf16_products_enabled


class ScreenSpaceCNN(nn.Module):
    """Latent image (C, H, W, 3 + F) -> RGB (C, H, W, 3), residual on the first 3 channels."""

    def __init__(self, in_channels: int, hidden: int = 16) -> None:
        super().__init__()
        if in_channels < 3:
            raise ValueError(f"the latent image needs at least the 3 RGB channels, got {in_channels}")
        self.hparams = {"in_channels": int(in_channels), "hidden": int(hidden)}
        self.in_channels = int(in_channels)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(),
        )
        self.out = nn.Conv2d(hidden, 3, 1)
        nn.init.zeros_(self.out.weight)  # identity at start: refined = rasterized RGB
        nn.init.zeros_(self.out.bias)
        # Weights channels-last, like the latent image (C, H, W, D) seen through the
        # permute in forward: oneDNN then runs every convolution without reordering its
        # input and output, about 15 % faster on a CPU (benchmarks/train_step.py).
        self.to(memory_format=torch.channels_last)

    def forward(self, latent: Tensor) -> Tensor:
        if latent.dim() != 4 or latent.shape[-1] != self.in_channels:
            raise ValueError(
                f"latent image must be (C, H, W, {self.in_channels}), got {tuple(latent.shape)}"
            )
        bf16 = bf16_products_enabled() and latent.device.type == "cpu"
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            h = self.body(latent.permute(0, 3, 1, 2))  # (C, hidden, H, W), channels-last in memory
            # The 1x1 output convolution is a linear map of each pixel's channels: applied to
            # the channels-last view (no copy) it is one matrix product, where PyTorch's CPU
            # convolution would take its slow generic path for 3 output channels.
            delta = Fn.linear(h.permute(0, 2, 3, 1), self.out.weight.flatten(1), self.out.bias)
        return latent[..., :3] + delta.to(latent.dtype)  # (C, H, W, 3)

    def to_state(self) -> dict:
        return {"hparams": dict(self.hparams), "state_dict": self.state_dict()}

    @classmethod
    def from_state(cls, state: dict) -> "ScreenSpaceCNN":
        try:
            net = cls(**state["hparams"])
            net.load_state_dict(state["state_dict"])
        except (KeyError, RuntimeError, TypeError) as err:
            raise ValueError(f"not a ScreenSpaceCNN state: {err}") from err
        return net


def latent_image(render) -> Tensor:
    """[RGB | rasterized features] (C, H, W, 3 + F) of an :class:`npga.avatar.model.AvatarRender`."""
    if render.features is None:
        raise ValueError("the render has no feature channels: render with with_features=True")
    return torch.cat([render.colors, render.features], dim=-1)


def cnn_image_head(cnn: ScreenSpaceCNN):
    """Trainer hook ``image_head(render, batch) -> (C, H, W, 3)``: the CNN on the latent image."""

    def head(render, batch) -> Tensor:
        return cnn(latent_image(render))

    return head


class RefinedAvatar:
    """An avatar whose :meth:`render` returns CNN-refined colours (duck-types NPGAvatar for evaluation).

    ``render(...)`` renders the latent image and replaces ``colors`` by the CNN's output
    (clamped to [0, 1]); every other attribute is the wrapped avatar's.
    """

    def __init__(self, avatar, cnn: ScreenSpaceCNN) -> None:
        self.avatar, self.cnn = avatar, cnn

    def __getattr__(self, name):
        return getattr(self.avatar, name)

    def render(self, z_exp, viewmats, Ks, width, height, **kw):
        kw["with_features"] = True
        out = self.avatar.render(z_exp, viewmats, Ks, width, height, **kw)
        out.colors = self.cnn(latent_image(out)).clamp(0, 1)
        return out


@torch.no_grad()
def time_cnn(cnn: ScreenSpaceCNN, n_cameras: int, height: int, width: int, repeats: int = 5) -> dict:
    """Seconds per forward pass of the CNN on a random latent image (median of ``repeats``)."""
    x = torch.rand(n_cameras, height, width, cnn.in_channels, device=next(cnn.parameters()).device)
    cnn(x)  # warm-up (allocations, kernel choice)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cnn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"seconds": times[len(times) // 2], "n_cameras": n_cameras, "height": height, "width": width}


__all__ = ["RefinedAvatar", "ScreenSpaceCNN", "cnn_image_head", "latent_image", "time_cnn"]
