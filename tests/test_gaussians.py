"""Gaussian parameters: activations, SH, initialisation and the 3DGS PLY round trip."""

import math

import numpy as np
import pytest
import torch

from npga.splatting import gaussians as G


def _random_params(n=50, degree=3, feature_dim=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pts = torch.randn(n, 3, generator=gen)
    params = G.init_from_points(pts, torch.rand(n, 3, generator=gen), sh_degree=degree,
                                feature_dim=feature_dim, random_quats=True, seed=seed)
    with torch.no_grad():  # make every entry non-trivial so a swapped column shows
        for v in params.values():
            v.add_(0.1 * torch.randn(v.shape, generator=gen))
    return params


@pytest.mark.parametrize("degree,feature_dim", [(0, 0), (1, 0), (3, 0), (3, 5)])
def test_ply_round_trip_is_exact(tmp_path, degree, feature_dim):
    params = _random_params(degree=degree, feature_dim=feature_dim)
    path = tmp_path / "g.ply"
    G.save_ply(path, params)
    back = G.load_ply(path)
    assert set(back) == set(params)
    for key in params:
        assert back[key].shape == params[key].shape, key
        assert torch.equal(back[key].data, params[key].data), key
    assert G.sh_degree_of(back) == degree
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temporary


def test_ply_layout_matches_3dgs(tmp_path):
    from plyfile import PlyData

    params = _random_params(n=7, degree=3)
    G.save_ply(tmp_path / "g.ply", params)
    v = PlyData.read(str(tmp_path / "g.ply"))["vertex"]
    names = list(v.data.dtype.names)
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(45)]
    expected += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == expected
    # f_rest is channel-major: the first 15 entries are the red coefficients 1..15
    shN = params["shN"].detach().numpy()
    got = np.stack([v[f"f_rest_{i}"] for i in range(15)], axis=1)
    np.testing.assert_array_equal(got, shN[:, :, 0])
    np.testing.assert_array_equal(v["rot_0"], params["quats"].detach().numpy()[:, 0])


def test_load_ply_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_text("not a ply")
    with pytest.raises(ValueError, match="bad.ply"):
        G.load_ply(bad)
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        G.load_ply(tmp_path / "missing.ply")


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat_reference(degree):
    from gsplat.cuda._torch_impl import _spherical_harmonics

    gen = torch.Generator().manual_seed(degree)
    dirs = torch.randn(200, 3, generator=gen)
    coeffs = torch.randn(200, 16, 3, generator=gen)
    ours = G.eval_sh(coeffs, dirs, degree)
    ref = _spherical_harmonics(degree, dirs, coeffs)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_colors_at_view_reproduces_init_colour():
    rgb = torch.rand(20, 3)
    params = G.init_from_points(torch.randn(20, 3), rgb, sh_degree=2)
    col = G.colors_at_view(params, torch.tensor([0.0, 0.0, 3.0]))
    torch.testing.assert_close(col, rgb, atol=1e-6, rtol=0)


def test_covariance_is_rotated_scale():
    q = torch.tensor([[math.cos(0.3), 0.0, 0.0, math.sin(0.3)]]) * 2.5  # unnormalised, about z
    s = torch.log(torch.tensor([[0.3, 0.1, 0.05]]))
    cov = G.covariance(q, s)[0]
    evals, evecs = torch.linalg.eigh(cov)
    torch.testing.assert_close(evals, torch.tensor([0.05, 0.1, 0.3]) ** 2)
    # the largest axis is local x rotated by 0.6 rad about z
    axis = evecs[:, 2] * torch.sign(evecs[0, 2])
    torch.testing.assert_close(axis, torch.tensor([math.cos(0.6), math.sin(0.6), 0.0]),
                               atol=1e-6, rtol=0)


def test_init_scales_are_knn_distances_and_opacity_logit():
    # points on a grid with spacing 0.1: the 3 nearest neighbours are at 0.1
    g = np.stack(np.meshgrid(*[np.arange(5) * 0.1] * 3, indexing="ij"), -1).reshape(-1, 3)
    params = G.init_from_points(g, sh_degree=0)
    interior = np.all((g > 0.05) & (g < 0.35), axis=1)
    scales = torch.exp(params["scales"]).detach().numpy()
    np.testing.assert_allclose(scales[interior], 0.1, rtol=1e-5)
    np.testing.assert_allclose(torch.sigmoid(params["opacities"]).detach().numpy(), 0.1, rtol=1e-5)
    assert "shN" in params and params["shN"].shape == (len(g), 0, 3)
    grey = torch.full((len(g), 1, 3), 0.5)
    torch.testing.assert_close(G.sh0_to_rgb(params["sh0"]).detach(), grey)
    with pytest.raises(ValueError, match="colors"):
        G.init_from_points(g, np.zeros((3, 3)))


def test_activate_and_check_params():
    params = _random_params(n=10, feature_dim=4)
    act = G.activate(params)
    torch.testing.assert_close(act["quats"].norm(dim=-1), torch.ones(10))
    assert (act["scales"] > 0).all() and ((act["opacities"] > 0) & (act["opacities"] < 1)).all()
    assert act["colors"].shape == (10, 16, 3)
    G.check_params(params)
    params["means"].data[3, 1] = float("nan")
    with pytest.raises(ValueError, match="means"):
        G.check_params(params)
