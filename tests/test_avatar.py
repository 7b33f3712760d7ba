"""NPGAvatar: gradients reach every part, D = F + G composition, features, PLY export, state."""

import numpy as np
import pytest
import torch

from npga.avatar.dynamics import DetailNetwork
from npga.avatar.model import NPGAvatar, create_avatar
from npga.capture.cameras import nersemble_rig, stack_cameras
from npga.config import get_profile, with_overrides
from npga.deformation import ForwardField
from npga.splatting.gaussians import load_ply

W, H, E, I = 22, 32, 5, 3


def _ellipsoid(n, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return (d * np.array([0.08, 0.11, 0.095])).astype(np.float32)


def _prior(seed=0, nonzero=True):
    torch.manual_seed(seed)
    F = ForwardField(E, I, hidden=16, layers=2, scale=0.1)
    if nonzero:  # a field that actually moves points (the distilled one would)
        torch.nn.init.normal_(F.out.weight, std=0.05)
    return F


def _avatar(feature_dim=4, detail=True, seed=0):
    P = with_overrides(get_profile("mini"), avatar={"n_gaussians": 200, "detail_hidden": 16})
    codes = torch.randn(6, E)
    return create_avatar(_ellipsoid(200, seed), _prior(seed), P.avatar, exp_codes=codes,
                         z_id=torch.randn(I), feature_dim=feature_dim, detail=detail, seed=seed,
                         backend="torch")


def _cams(k=2):
    cams = nersemble_rig(W, H)[:k]
    return stack_cameras(cams)


def _nudge_detail(avatar):
    # G starts at zero (D = F); give its last layer weights so that it moves Gaussians.
    with torch.no_grad():
        avatar.detail.out.weight.normal_(std=0.05)


def test_gradients_reach_prior_detail_features_and_gaussians():
    av = _avatar(feature_dim=4)
    _nudge_detail(av)
    vm, K = _cams()
    out = av.render(torch.randn(E), vm, K, W, H)
    assert out.colors.shape == (2, H, W, 3) and out.features is None
    assert out.alphas.max() > 0.1, "the avatar must be visible in the test cameras"
    (out.colors * torch.rand_like(out.colors)).sum().backward()
    for key in ("means", "quats", "scales", "opacities", "sh0", "features"):
        g = av.gaussians[key].grad
        assert g is not None and g.abs().sum() > 0, f"no gradient reaches Gaussians[{key!r}]"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in av.prior.parameters()), "F"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in av.detail.parameters()), "G"


def test_features_rasterized_in_the_same_pass():
    av = _avatar(feature_dim=4)
    with torch.no_grad():
        av.gaussians["features"].fill_(0.5)
    vm, K = _cams()
    out = av.render(torch.zeros(E), vm, K, W, H, with_features=True)
    assert out.features.shape == (2, H, W, 4)
    # constant features composite to 0.5 x accumulated alpha (black background)
    torch.testing.assert_close(out.features, 0.5 * out.alphas.expand(-1, -1, -1, 4), atol=1e-5, rtol=0)
    plain = av.render(torch.zeros(E), vm, K, W, H)
    torch.testing.assert_close(plain.colors, out.colors, atol=1e-5, rtol=0)


def test_zero_detail_network_equals_prior_alone_and_expression_moves_gaussians():
    av = _avatar(feature_dim=2)
    z1, z2 = torch.zeros(E), torch.ones(E)
    with torch.no_grad():
        means_f = av.prior(av.gaussians["means"], z2, av.z_id)
        posed = av.deform(z2)
        torch.testing.assert_close(posed["means"], means_f)  # G is zero at initialisation
        assert (av.deform(z1)["means"] - posed["means"]).abs().max() > 1e-4
        _nudge_detail(av)
        moved = av.deform(z2)["means"]
    assert (moved - means_f).abs().max() > 1e-5, "G's offsets must be added to F's positions"


def test_vanilla_variant_sees_no_features_and_features_change_the_output():
    vanilla = _avatar(feature_dim=0)
    assert "features" not in vanilla.gaussians and vanilla.detail.feature_dim == 0
    with pytest.raises(ValueError, match="features"):
        create_avatar(_ellipsoid(50), _prior(), get_profile("mini").avatar, exp_codes=torch.randn(4, E),
                      feature_dim=3, detail=False)
    G = DetailNetwork(E, feature_dim=3, hidden=8, layers=2)
    torch.nn.init.normal_(G.out.weight, std=0.1)
    x = torch.from_numpy(_ellipsoid(10))
    f = torch.randn(10, 3)
    a = G(x, f, torch.zeros(E))[0]
    b = G(x, f + 1.0, torch.zeros(E))[0]
    assert (a - b).abs().max() > 1e-6
    with pytest.raises(ValueError, match="features"):
        G(x, None, torch.zeros(E))


def test_state_round_trip_and_ply_export(tmp_path):
    av = _avatar(feature_dim=3)
    _nudge_detail(av)
    z = torch.randn(E)
    copy = NPGAvatar.from_state(av.state())
    vm, K = _cams(1)
    torch.testing.assert_close(copy.render(z, vm, K, W, H).colors, av.render(z, vm, K, W, H).colors)
    av.export_ply(tmp_path / "posed.ply", z)
    back = load_ply(tmp_path / "posed.ply")
    posed = av.posed_gaussians(z)
    torch.testing.assert_close(back["means"].data, posed["means"].data)
    assert back["features"].shape == (200, 3)
    # the posed PLY differs from the canonical Gaussians: it is the avatar at z
    assert (back["means"].data - av.gaussians["means"].data).abs().max() > 1e-4


def test_module_to_moves_the_gaussians_too():
    av = _avatar(feature_dim=2).to(torch.float64)
    assert all(v.dtype == torch.float64 and isinstance(v, torch.nn.Parameter) for v in av.gaussians.values())
    assert av.prior.out.weight.dtype == torch.float64 and av.detail.out.weight.dtype == torch.float64
