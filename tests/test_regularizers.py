"""k-NN graph and Laplacian terms (npga.avatar.regularizers)."""

import numpy as np
import pytest
import torch

from npga.avatar.regularizers import (
    LaplacianRegularizer,
    graph_laplacian,
    knn_graph,
    knn_graph_brute,
    laplacian_energy,
)


def _points(n=500, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)) * 0.1


def test_knn_graph_equals_brute_force():
    pts = _points(700)
    a, b = knn_graph(pts, 8), knn_graph_brute(pts, 8, chunk=128)  # chunking crosses rows
    assert a.shape == (700, 8) and a.dtype == torch.int64
    assert torch.equal(a, b)
    assert not (a == torch.arange(700)[:, None]).any()  # never its own neighbour


def test_knn_graph_with_duplicates_excludes_self():
    pts = _points(50)
    pts = torch.cat([pts, pts[:10]])  # clones sit exactly on their parents
    nb = knn_graph(pts, 4)
    assert not (nb == torch.arange(60)[:, None]).any()
    # a clone's nearest neighbour is its parent (distance 0)
    d = (pts[nb[:, 0]] - pts).norm(dim=-1)
    assert torch.all(d[50:] == 0) and torch.all(d[:10] == 0)


def test_knn_graph_rejects_bad_input():
    with pytest.raises(ValueError, match="k-NN"):
        knn_graph(_points(5), 5)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        knn_graph(torch.zeros(10, 2), 3)
    bad = _points(10)
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        knn_graph(bad, 3)


def test_laplacian_of_constant_is_zero_and_of_noise_positive():
    pts = _points(400)
    nb = knn_graph(pts, 8)
    const = torch.full((400, 5), 0.7)
    assert torch.allclose(graph_laplacian(const, nb), torch.zeros(400, 5), atol=1e-6)
    assert float(laplacian_energy(const, nb)) < 1e-10
    noise = torch.randn(400, 5, generator=torch.Generator().manual_seed(1))
    assert float(laplacian_energy(noise, nb)) > 0.5  # ~ 5 * (1 + 1/8) for i.i.d. unit noise
    # a smooth field (linear in position) is far less rough than noise of the same size
    smooth = pts @ torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    smooth = smooth / smooth.std() * noise.std()
    assert float(laplacian_energy(smooth, nb)) < 0.2 * float(laplacian_energy(noise, nb))


class _Detail(torch.nn.Module):
    """A stand-in for G: offsets that depend on the features, so the dynamics term has gradients."""

    scale = 0.1

    def __init__(self, f):
        super().__init__()
        self.lin = torch.nn.Linear(f, 10)

    def forward(self, x, feats, z):
        out = self.lin(feats) + z.sum()
        return out[:, :3] * self.scale, out[:, 3:7], out[:, 7:]


class _Avatar:
    def __init__(self, n=200, f=4):
        self.gaussians = {"means": torch.nn.Parameter(_points(n)),
                          "features": torch.nn.Parameter(torch.randn(n, f))}
        self.detail = _Detail(f)


def test_regularizer_gradients_and_graph_rebuild():
    av = _Avatar()
    reg = LaplacianRegularizer(k=6, w_features=1.0, w_dynamics=0.5, rebuild_every=0)
    loss = reg(av, None, {"z_exp": torch.zeros(3)}, step=0)
    loss.backward()
    assert loss.item() > 0 and reg.last["features"] > 0 and reg.last["dynamics"] > 0
    assert av.gaussians["features"].grad.abs().sum() > 0
    assert av.detail.lin.weight.grad.abs().sum() > 0
    first = reg.nbrs
    reg(av, None, {"z_exp": torch.zeros(3)}, step=1)
    assert reg.nbrs is first  # same means parameter: no rebuild
    # densification replaces the parameter (and N): the graph follows
    g = av.gaussians
    g["means"] = torch.nn.Parameter(torch.cat([g["means"].data, g["means"].data[:20]]))
    g["features"] = torch.nn.Parameter(torch.cat([g["features"].data, g["features"].data[:20]]))
    reg(av, None, {"z_exp": torch.zeros(3)}, step=2)
    assert reg.nbrs.shape == (220, 6)
    assert torch.equal(reg.nbrs, knn_graph(g["means"], 6))


def test_regularizer_weights_from_profile():
    from npga.config import get_profile

    a = get_profile("mini").avatar
    reg = LaplacianRegularizer.from_config(a)
    assert (reg.k, reg.w_features, reg.w_dynamics) == (a.knn_k, a.lap_features, a.lap_dynamics)
