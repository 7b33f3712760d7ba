"""The MLPs' linear layer (npga.headmodels.linear): F.linear's numbers, on oneDNN where it pays."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as Fn

from npga.config import REPO_ROOT
from npga.headmodels import linear as L

# (x shape, weight shape, transpose the weight first): MLP layers, F's tangent slabs (3, N, H),
# an odd N, and the shapes that must fall back to F.linear (a side < 32)
CASES = [
    ((500, 47), (64, 47), False),
    ((3, 401, 128), (128, 128), False),
    ((7999, 96), (64, 96), False),
    ((3, 300, 128), (128, 128), True),  # the weight as the transpose of a dense block
    ((3, 300, 15), (128, 15), False),  # fallback: K = 15
    ((200, 128), (3, 128), False),  # fallback: 3 outputs
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("xs,ws,transposed", CASES)
def test_linear_equals_torch_in_value_and_every_gradient(xs, ws, transposed):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*xs, generator=g, requires_grad=True)
    w0 = torch.randn(ws[::-1] if transposed else ws, generator=g)
    w = (w0.t() if transposed else w0).detach().requires_grad_()
    b = torch.randn(ws[0], generator=g, requires_grad=True)
    y, y_ref = L.linear(x, w, b), Fn.linear(x, w, b)
    assert y.shape == y_ref.shape
    assert _rel(y, y_ref) < 1e-6
    up = torch.randn(y.shape, generator=g)
    for got, ref in zip(torch.autograd.grad(y, (x, w, b), up), torch.autograd.grad(y_ref, (x, w, b), up)):
        assert _rel(got, ref) < 1e-5
    uses = L._use_onednn(x, w)
    assert uses == (L.ONEDNN and min(ws) >= L.MIN_SIDE)
    assert ("OneDNN" in type(y.grad_fn).__name__) == uses


def test_linear_differentiates_twice_like_torch():
    """The eikonal term and F's autograd Jacobian backpropagate through a gradient."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 64, generator=g, requires_grad=True)
    w = torch.randn(96, 64, generator=g, requires_grad=True)
    b = torch.randn(96, generator=g, requires_grad=True)
    out = []
    for lin in (L.linear, Fn.linear):
        y = Fn.softplus(lin(x, w, b), beta=10.0).sum()
        (gx,) = torch.autograd.grad(y, x, create_graph=True)
        out.append(torch.autograd.grad((gx**2).sum(), (x, w, b)))
    for got, ref in zip(*out):
        assert _rel(got, ref) < 1e-5


def test_linear_module_is_an_nn_linear_with_the_same_state():
    lin = L.Linear(40, 48)
    ref = torch.nn.Linear(40, 48)
    ref.load_state_dict(lin.state_dict())
    x = torch.randn(10, 40)
    assert isinstance(lin, torch.nn.Linear)
    assert _rel(lin(x), ref(x)) < 1e-6


def test_float64_and_the_switch_fall_back_to_torch():
    x64 = torch.randn(50, 64, dtype=torch.float64)
    assert not L._use_onednn(x64, torch.randn(64, 64, dtype=torch.float64))
    code = "from npga.headmodels import linear; print(linear.ONEDNN)"
    env = {**os.environ, L.ENV: "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "False"


def test_bf16_products_round_like_bfloat16_and_leave_fp32_weights_and_gradients():
    """Inside bf16_products, linear computes in bfloat16 (8-bit mantissa: ~0.4 % relative),
    the parameters stay float32 and receive float32 gradients; outside, nothing changes."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 500, 128, generator=g, requires_grad=True)
    w = torch.randn(96, 128, generator=g, requires_grad=True)
    b = torch.randn(96, generator=g, requires_grad=True)
    y_ref = Fn.linear(x, w, b)
    up = torch.randn(y_ref.shape, generator=g)
    grads_ref = torch.autograd.grad(y_ref, (x, w, b), up)
    assert not L.bf16_products_enabled()
    with L.bf16_products():
        assert L.bf16_products_enabled()
        y = L.linear(x, w, b)
    assert not L.bf16_products_enabled()
    assert y.dtype == torch.bfloat16
    assert 1e-4 < _rel(y.float(), y_ref) < 2e-2  # rounded, but only by bfloat16's precision
    grads = torch.autograd.grad(y, (x, w, b), up.bfloat16())
    for got, ref in zip(grads, grads_ref):
        assert got.dtype == torch.float32
        assert _rel(got, ref) < 3e-2
    assert L.linear(x, w, b).dtype == torch.float32  # the switch is off again
    with pytest.raises(RuntimeError), L.bf16_products():
        raise RuntimeError("an error inside")
    assert not L.bf16_products_enabled()  # and off after an error too
    with L.bf16_products(enabled=False):
        assert L.linear(x, w, b).dtype == torch.float32


def test_forward_field_and_jacobian_in_bf16_stay_close_to_float32():
    """F's positions and Jacobian with bfloat16 products: errors of micrometres and 1e-4."""
    from npga.deformation.field import ForwardField

    torch.manual_seed(0)
    F = ForwardField(16, 16, hidden=128, layers=4, scale=0.1)
    torch.nn.init.normal_(F.out.weight, std=0.2)
    x = torch.randn(2000, 3) * 0.08
    ze, zi = torch.randn(16), torch.randn(16)
    xp, J = F.forward_and_jacobian(x, ze, zi)
    with L.bf16_products():
        xp16, J16 = F.forward_and_jacobian(x, ze, zi)
    assert xp16.dtype == J16.dtype == torch.float32
    offset, jt = (xp - x).abs().max(), (J - torch.eye(3)).abs().max()
    assert offset > 1e-3 and jt > 1e-2  # F moves points: the comparison means something
    assert (xp16 - xp).abs().max() < 0.02 * offset
    assert (J16 - J).abs().max() < 0.04 * jt
