"""Screen-space CNN (npga.avatar.cnn)."""

import pytest
import torch

from npga.avatar.cnn import RefinedAvatar, ScreenSpaceCNN, cnn_image_head, latent_image, time_cnn


def test_cnn_output_shape_identity_at_init_and_gradients():
    torch.manual_seed(0)
    cnn = ScreenSpaceCNN(3 + 5, hidden=8)
    x = torch.rand(2, 20, 14, 8, requires_grad=True)
    y = cnn(x)
    assert y.shape == (2, 20, 14, 3)
    assert torch.allclose(y, x[..., :3])  # zero-initialised residual: identity at start
    y.sum().backward()
    # the zero-initialised output layer gets a gradient at once; after one step, all do
    assert cnn.out.weight.grad.abs().sum() > 0
    opt = torch.optim.Adam(cnn.parameters(), lr=1e-2)
    opt.step()
    opt.zero_grad()
    x2 = x.detach().clone().requires_grad_(True)
    (cnn(x2) - torch.rand(2, 20, 14, 3)).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cnn.parameters())
    assert x2.grad[..., 3:].abs().sum() > 0  # the feature channels influence the output


def test_cnn_equals_its_layers_as_plain_convolutions():
    """The output layer runs as a matrix product over the channels-last view: the same
    numbers as the 1x1 Conv2d it stores, in value and in every gradient."""
    torch.manual_seed(1)
    cnn = ScreenSpaceCNN(3 + 4, hidden=8)
    torch.nn.init.normal_(cnn.out.weight, 0.0, 0.3)
    torch.nn.init.normal_(cnn.out.bias, 0.0, 0.3)
    x = torch.rand(2, 11, 9, 7, requires_grad=True)
    ref = x[..., :3] + cnn.out(cnn.body(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
    y = cnn(x)
    assert torch.allclose(y, ref, atol=1e-6)
    up = torch.rand_like(y)
    got = torch.autograd.grad(y, [x, *cnn.parameters()], up)
    want = torch.autograd.grad(ref, [x, *cnn.parameters()], up)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)


def test_cnn_learns_a_fix_the_rgb_cannot_express():
    # target depends on the feature channel: only a CNN that reads it can fit
    torch.manual_seed(0)
    cnn = ScreenSpaceCNN(4, hidden=8)
    x = torch.rand(1, 16, 16, 4)
    target = (x[..., :3] + 0.3 * x[..., 3:]).clamp(0, 1)
    opt = torch.optim.Adam(cnn.parameters(), lr=1e-2)
    before = (cnn(x) - target).pow(2).mean().item()
    for _ in range(150):
        opt.zero_grad()
        loss = (cnn(x) - target).pow(2).mean()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * before


def test_cnn_rejects_wrong_channels_and_state_roundtrip():
    cnn = ScreenSpaceCNN(6, hidden=4)
    with pytest.raises(ValueError, match="6"):
        cnn(torch.rand(1, 8, 8, 5))
    with pytest.raises(ValueError):
        ScreenSpaceCNN(2)
    torch.nn.init.normal_(cnn.out.weight)
    x = torch.rand(1, 8, 8, 6)
    other = ScreenSpaceCNN.from_state(cnn.to_state())
    assert torch.equal(other(x), cnn(x))
    with pytest.raises(ValueError, match="ScreenSpaceCNN"):
        ScreenSpaceCNN.from_state({"hparams": {"in_channels": 6}, "state_dict": {}})


class _Render:
    def __init__(self, c, f):
        self.colors, self.features = c, f


class _Avatar:
    gaussians = {"means": torch.zeros(3, 3)}

    def render(self, z, vm, K, w, h, with_features=False, **kw):
        assert with_features
        return _Render(torch.full((1, h, w, 3), 0.5), torch.ones(1, h, w, 2))


def test_hook_wrapper_and_timing():
    cnn = ScreenSpaceCNN(5, hidden=4)
    torch.nn.init.constant_(cnn.out.bias, 2.0)  # pushes the output above 1
    r = _Render(torch.zeros(1, 6, 4, 3), torch.zeros(1, 6, 4, 2))
    assert cnn_image_head(cnn)(r, {}).shape == (1, 6, 4, 3)
    with pytest.raises(ValueError, match="with_features"):
        latent_image(_Render(torch.zeros(1, 2, 2, 3), None))
    wrapped = RefinedAvatar(_Avatar(), cnn)
    out = wrapped.render(None, None, None, 4, 6)
    assert out.colors.shape == (1, 6, 4, 3) and float(out.colors.detach().max()) <= 1.0  # clamped
    assert wrapped.gaussians is _Avatar.gaussians
    t = time_cnn(cnn, 1, 16, 12, repeats=2)
    assert t["seconds"] > 0


def test_cnn_in_bf16_returns_float32_close_to_float32():
    from npga.headmodels.linear import bf16_products

    torch.manual_seed(0)
    cnn = ScreenSpaceCNN(7, hidden=32)
    torch.nn.init.normal_(cnn.out.weight, std=0.1)
    x = torch.rand(2, 24, 40, 7, requires_grad=True)
    y = cnn(x)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    with bf16_products():
        y16 = cnn(x)
    (gx16,) = torch.autograd.grad(y16.square().sum(), x)
    assert y16.dtype == gx16.dtype == torch.float32
    delta = (y - x[..., :3]).abs().max()
    assert 0 < (y16 - y).abs().max() < 0.02 * delta
    assert (gx16 - gx).abs().max() < 0.03 * gx.abs().max()
