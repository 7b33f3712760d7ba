"""The MLPs' linear layer, y = x W^T + b, with its matrix products on oneDNN on x86 CPUs.

Every MLP of the book (NPHM's SDF f and backward field B, the forward field F, the detail
network G) spends most of its time in dense matrix products of a tall input (N points x
a few hundred columns) with a small weight. On the CPU, PyTorch sends ``F.linear`` of
float32 tensors to MKL's sgemm, which on the AMD processor we measured ran at about the
speed of 256-bit (AVX2) code although the processor has AVX-512; oneDNN, the library
PyTorch already ships for its convolutions, used AVX-512 there. Measured on that AMD
EPYC, one thread, 24,000 x 128 by 128 x 128: MKL 75-90 GFLOP/s, oneDNN 180-215 GFLOP/s
for the forward product and the input gradient; the weight gradient (a long reduction
over the N points, where oneDNN first copies one operand to a dense transpose) 6.7
against 8.7 ms. ``benchmarks/train_step.py`` records the effect on a training step.

:func:`linear` is ``F.linear`` with the same signature and the same numbers up to
float32 rounding (tests/test_linear.py): on an x86 CPU with PyTorch's oneDNN it runs the
forward product and both gradient products through ``torch.ops.mkldnn._linear_pointwise``
(the op PyTorch's own compiler emits for a linear layer on the CPU) where the weight's
sides are both >= 32; elsewhere (smaller sides, CUDA, ARM, float64,
``NPGA_ONEDNN_LINEAR=0``) it *is* ``F.linear``. Its backward is written with
:func:`linear` again, so it can be differentiated any number of times (the eikonal term
and the autograd Jacobian of F backpropagate through gradients).

Inside :func:`bf16_products` (the trainer's ``TrainConfig.bf16``) the products run in
bfloat16 instead: mixed-precision training as GPUs do it, for the CPU. A processor with
AVX512_BF16 (or AMX) multiplies bfloat16 pairs at twice the float32 rate, and the
activations that F's Jacobian, G and the CNN keep for the backward pass take half the
memory traffic. The price is bfloat16's 8-bit mantissa, ~0.4 % relative error per product
(F's positions to micrometres, its Jacobian to ~1e-4: tests/test_linear.py);
``benchmarks/train_step.py`` records the speed and ``benchmarks/precision_fit.py`` the
effect on held-out renders.
"""

from __future__ import annotations

import contextlib
import platform
from contextvars import ContextVar
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as Fn

from npga import env_switched_off

ENV = "NPGA_ONEDNN_LINEAR"


# ARM builds of PyTorch route oneDNN through other kernels: not measured
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _onednn_available() -> bool:
    if env_switched_off(ENV) or not X86:
        return False
    try:
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            return False
        # a private op: check once that it exists with this signature and computes x W^T + b
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=g) for s in ((3, 40), (36, 40), (36,)))
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        return bool(torch.allclose(y, Fn.linear(x, w, b), rtol=1e-4, atol=1e-4))
    except (AttributeError, RuntimeError, TypeError):
        return False


ONEDNN = _onednn_available()


# oneDNN's products are fast for what an MLP layer does (a tall x times a small, dense
# weight, both of its sides >= 32) and for the weight gradient g^T x, and they can be far
# slower than MKL elsewhere (measured: a weight with 15 rows 5x slower, a weight that is a
# strided slice of a wider one seconds instead of milliseconds). So: only where both sides
# of the weight are >= 32; a small weight is copied to a dense block first; x and a large
# weight go in as they are when they are a dense matrix or the transpose of one.
MIN_SIDE = 32
SMALL_WEIGHT = 1 << 18  # elements


def _dense_or_transposed(t: Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 2 and t.t().is_contiguous())


_DTYPES = (torch.float32, torch.bfloat16)


def _use_onednn(x: Tensor, weight: Tensor) -> bool:
    return (ONEDNN and x.device.type == "cpu" and x.dtype in _DTYPES
            and weight.dtype == x.dtype and x.dim() >= 2 and x.numel() > 0
            and weight.dim() == 2 and min(weight.shape) >= MIN_SIDE
            and (weight.numel() <= SMALL_WEIGHT or _dense_or_transposed(weight)))


_BF16: ContextVar[bool] = ContextVar("npga_bf16_products", default=False)


def bf16_supported() -> bool:
    """Whether oneDNN has bfloat16 products on this CPU (x86 with AVX-512 or AMX; natively,
    at twice the float32 rate, with AVX512_BF16 or AMX)."""
    if not X86:
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@contextlib.contextmanager
def bf16_products(enabled: bool = True) -> Iterator[None]:
    """Inside, :func:`linear` on CPU tensors (and :class:`npga.avatar.cnn.ScreenSpaceCNN`)
    compute in bfloat16: inputs and weights are rounded to bfloat16 (8 bits of mantissa,
    ~0.4 % relative), oneDNN multiplies them with float32 accumulation, and the result
    is bfloat16. Parameters stay float32 and get float32 gradients (the rounding's
    backward converts them back), as in mixed-precision training on a GPU. Nothing else
    changes: this is a switch for :func:`linear` only, not ``torch.autocast``, which would
    also round the Gaussians' posing and covariance products (``@``) and the SSIM's
    convolutions, where 0.4 % of a metre is 4 mm."""
    token = _BF16.set(bool(enabled))
    try:
        yield
    finally:
        _BF16.reset(token)


def bf16_products_enabled() -> bool:
    return _BF16.get()


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b on oneDNN; backward: gx = g W and gW = g^T x through :func:`linear`
    again (so on oneDNN too where it pays), gb = sum g."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        x = x if _dense_or_transposed(x) else x.contiguous()
        w = weight.contiguous() if weight.numel() <= SMALL_WEIGHT else weight
        # x (..., K), w (M, K), bias (M,) or None -> (..., M)
        return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = linear(g, weight.t())  # (..., M) @ (M, K)
        g2 = g.reshape(-1, g.shape[-1])  # (N, M)
        if ctx.needs_input_grad[1]:
            # (M, N) @ (N, K) as linear(g^T, x^T): both passed as transposed views (oneDNN
            # copies one of them to a dense block itself, still faster than MKL's g^T x)
            gw = linear(g2.t(), x.reshape(-1, x.shape[-1]).t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: x (..., K), weight (M, K), bias (M,) -> (..., M)."""
    if _BF16.get() and x.device.type == "cpu" and x.dtype in _DTYPES:
        x, weight = x.to(torch.bfloat16), weight.to(torch.bfloat16)
        bias = None if bias is None else bias.to(torch.bfloat16)
    if _use_onednn(x, weight):
        return _OneDNNLinear.apply(x, weight, bias)
    return Fn.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose forward is :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


__all__ = ["ENV", "ONEDNN", "Linear", "bf16_products", "bf16_products_enabled", "bf16_supported", "linear"]
