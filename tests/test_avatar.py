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


def _avatar(feature_dim=4, detail=True, seed=0, **avatar):
    P = with_overrides(get_profile("mini"), avatar={"n_gaussians": 200, "detail_hidden": 16, **avatar})
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


# --------------------------------------------------------------------------- head pose and appearance


def _pose(yaw=0.3, pitch=-0.15, t=(0.01, -0.02, 0.015)):
    from npga.headmodels.pose import rot_x, rot_y

    return torch.tensor(rot_y(yaw) @ rot_x(pitch), dtype=torch.float32), torch.tensor(t, dtype=torch.float32)


def test_posing_the_avatar_equals_moving_the_cameras_by_the_inverse():
    """render(pose=(R, t)) == render with every world_2_cam composed with [R t; 0 1], to 1e-5."""
    av = _avatar(feature_dim=2)
    _nudge_detail(av)
    av.gaussians["shN"].data.normal_(std=0.3)  # view-dependent colour: SH directions must be in head space
    R, t = _pose()
    vm, K = _cams(3)
    z = torch.randn(E)
    posed = av.render(z, vm, K, W, H, pose=(R, t))
    M = torch.eye(4)
    M[:3, :3], M[:3, 3] = R, t
    moved = av.render(z, vm @ M, K, W, H)
    assert posed.alphas.max() > 0.1
    torch.testing.assert_close(posed.colors, moved.colors, atol=1e-5, rtol=0)
    torch.testing.assert_close(posed.alphas, moved.alphas, atol=1e-5, rtol=0)
    # the pose really moves the image, and use_pose=False ignores it (the "no pose" ablation)
    assert (posed.colors - av.render(z, vm, K, W, H).colors).abs().max() > 0.05
    av.use_pose = False
    torch.testing.assert_close(av.render(z, vm, K, W, H, pose=(R, t)).colors, av.render(z, vm, K, W, H).colors)


def test_dynamic_appearance_starts_as_todays_renderer_and_learns():
    static = _avatar(feature_dim=3, dynamic_appearance=False)
    dyn = _avatar(feature_dim=3, dynamic_appearance=True)
    assert dyn.detail.appearance and dyn.detail.out.out_features == 14 and static.detail.out.out_features == 10
    with torch.no_grad():  # the same geometry weights in both: only the appearance head differs
        for a, b in zip(static.detail.mlp.parameters(), dyn.detail.mlp.parameters()):
            b.copy_(a)
    vm, K = _cams()
    z = torch.randn(E)
    R, t = _pose()
    a = static.render(z, vm, K, W, H, pose=(R, t))
    b = dyn.render(z, vm, K, W, H, pose=(R, t))
    torch.testing.assert_close(a.colors, b.colors, atol=0, rtol=0)  # zero appearance output = no appearance
    # gradients reach every new output of G: the colour and opacity rows of its last layer
    (b.colors * torch.rand_like(b.colors)).sum().backward()
    g = dyn.detail.out.bias.grad
    assert g is not None and (g[10:13].abs() > 0).all(), "colour offsets get no gradient"
    assert g[13].abs() > 0, "opacity offset gets no gradient"
    # with nonzero outputs the appearance changes with the expression
    with torch.no_grad():
        dyn.detail.out.weight[10:].normal_(std=0.5)
        c1 = dyn.render(torch.zeros(E), vm, K, W, H).colors
        c2 = dyn.render(torch.ones(E), vm, K, W, H).colors
        geo = dyn.deform(torch.zeros(E))
    assert (c1 - c2).abs().max() > 1e-3
    assert set(geo) == {"means", "quats", "scales", "colors", "opacities"}


def test_old_avatar_states_load_without_pose_and_ply_takes_the_pose(tmp_path):
    av = _avatar(feature_dim=2, dynamic_appearance=True)
    state = av.state()
    assert state["options"]["use_pose"] is True
    del state["options"]["use_pose"]  # a state saved before the head pose existed
    assert NPGAvatar.from_state(state).use_pose is False
    R, t = _pose()
    z = torch.randn(E)
    with torch.no_grad():
        av.detail.out.weight[10:].normal_(std=0.5)
    posed = av.posed_gaussians(z, (R, t))
    head = av.deform(z)
    torch.testing.assert_close(posed["means"].data, head["means"] @ R.T + t)
    # G's opacity offset is baked into the exported logits
    torch.testing.assert_close(posed["opacities"].data, (av.gaussians["opacities"] + head["opacities"]).detach())


@pytest.mark.parametrize("appearance", [False, True])
def test_posed_means_equal_the_exported_gaussians(appearance):
    """posed_means (F without its Jacobian, for geometric measures) gives the means and
    opacities of posed_gaussians, with and without the head pose and G's opacity offset."""
    av = _avatar(feature_dim=2, dynamic_appearance=appearance)
    _nudge_detail(av)
    z = torch.randn(E)
    for pose in (None, _pose()):
        means, opacity = av.posed_means(z, pose)
        full = av.posed_gaussians(z, pose)
        torch.testing.assert_close(means, full["means"].data, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(opacity, torch.sigmoid(full["opacities"].data), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(av.posed_means(z, _pose())[0], av.posed_means(z)[0])
