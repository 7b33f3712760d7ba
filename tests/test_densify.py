"""Adaptive density control keeps parameters, Adam state and statistics consistent."""

import math

import pytest
import torch

from npga.splatting import densify as D
from npga.splatting import gaussians as G


def _setup(n=40, feature_dim=3, seed=0, adam_steps=3):
    gen = torch.Generator().manual_seed(seed)
    params = G.init_from_points(torch.randn(n, 3, generator=gen) * 0.1, sh_degree=1,
                                feature_dim=feature_dim, random_quats=True, seed=seed)
    opts = {k: torch.optim.Adam([v], lr=1e-3) for k, v in params.items()}
    for _ in range(adam_steps):  # non-zero, distinct moments for every Gaussian
        loss = sum((v * torch.randn(v.shape, generator=gen)).sum() for v in params.values())
        for o in opts.values():
            o.zero_grad()
        loss.backward()
        for o in opts.values():
            o.step()
    return params, opts


def _fake_meta(n, grad_norm_px, radii, width=64, height=96, n_cameras=1):
    """A rasterizer meta whose means2d.grad holds the given pixel-gradient norms (C, N)."""
    g = torch.as_tensor(grad_norm_px, dtype=torch.float32).reshape(n_cameras, n)
    means2d = torch.zeros(n_cameras, n, 2, requires_grad=True)
    means2d.grad = torch.stack([g, torch.zeros_like(g)], -1)  # along x only
    r = torch.as_tensor(radii, dtype=torch.int32).reshape(n_cameras, n)
    return {"means2d": means2d, "radii": torch.stack([r, r], -1), "width": width,
            "height": height, "n_cameras": n_cameras}


def _snapshot(params, opts):
    return ({k: v.detach().clone() for k, v in params.items()},
            {k: {s: t.clone() for s, t in opts[k].state[params[k]].items()} for k in params})


def test_accumulate_follows_gsplat_scaling():
    n = 5
    state = D.DensifyState.create(n, 1.0)
    meta = _fake_meta(n, [[1.0, 2.0, 0.0, 4.0, 5.0], [1.0, 0.0, 0.0, 0.0, 5.0]],
                      [[3, 3, 0, 3, 0], [3, 0, 0, 0, 6]], width=64, n_cameras=2)
    D.accumulate(state, meta)
    # x gradient times W/2 times the number of cameras, only where the radius is > 0
    s = 64 / 2 * 2
    torch.testing.assert_close(state.grad2d, torch.tensor([2 * s, 2 * s, 0, 4 * s, 5 * s]))
    torch.testing.assert_close(state.count, torch.tensor([2.0, 1, 0, 1, 1]))
    torch.testing.assert_close(state.max_radii, torch.tensor([3, 3, 0, 3, 6]) / 96.0)
    with pytest.raises(RuntimeError, match="retain_grad"):
        D.accumulate(state, {**meta, "means2d": torch.zeros(2, n, 2, requires_grad=True)})


def test_clone_split_prune_counts_follow_thresholds():
    n = 40
    params, opts = _setup(n)
    extent = 1.0
    cfg = D.DensifyConfig(prune_big_from_step=10**9)
    with torch.no_grad():
        scales = torch.full((n, 3), 0.005)
        scales[20:] = 0.05  # above percent_dense * extent = 0.01: split candidates
        params["scales"].copy_(torch.log(scales))
        params["opacities"].fill_(0.0)
        params["opacities"][[5, 25, 33]] = -8.0  # opacity 3e-4 < 0.005: pruned
    thr_px = cfg.grad_threshold / (64 / 2)  # pixel gradient that equals the threshold in NDC
    g = torch.zeros(n)
    g[[0, 1, 2, 5]] = 2 * thr_px  # clone (5 is also pruned later)
    g[[3]] = 0.5 * thr_px  # below threshold
    g[[20, 21, 33]] = 3 * thr_px  # split (33 also pruned, as a child pair)
    state = D.DensifyState.create(n, extent)
    D.accumulate(state, _fake_meta(n, g, torch.full((n,), 2)))
    stats = D.densify_and_prune(params, opts, state, cfg, step=100)
    assert stats["clone"] == 4 and stats["split"] == 3
    # pruned: 5 and its clone, 25, the two children of 33
    assert stats["prune"] == 5
    assert stats["after"] == n + 4 + 3 * (2 - 1) - 5 == G.num_gaussians(params)
    for k, v in params.items():
        assert v.shape[0] == stats["after"], k
        assert opts[k].state[v]["exp_avg"].shape == v.shape
        assert opts[k].param_groups[0]["params"][0] is v
    assert state.grad2d.shape == (stats["after"],) and float(state.grad2d.abs().sum()) == 0.0


def test_untouched_gaussians_keep_values_and_adam_moments():
    n = 30
    params, opts = _setup(n)
    before, moments = _snapshot(params, opts)
    cfg = D.DensifyConfig(prune_big_from_step=10**9)
    with torch.no_grad():
        scales = torch.full((n, 3), 0.005)
        scales[10:] = 0.05
        params["scales"].copy_(torch.log(scales))
        params["opacities"].fill_(0.0)
        params["opacities"][7] = -10.0
    before["scales"], before["opacities"] = (params["scales"].detach().clone(),
                                             params["opacities"].detach().clone())
    g = torch.zeros(n)
    g[[2, 12, 15]] = 1.0  # 2 cloned, 12 and 15 split
    state = D.DensifyState.create(n, 1.0)
    D.accumulate(state, _fake_meta(n, g, torch.full((n,), 2)))
    D.densify_and_prune(params, opts, state, cfg, step=0)
    untouched = [i for i in range(n) if i not in (7, 12, 15)]  # 2 stays (its copy is appended)
    m = len(untouched)
    for k in params:
        torch.testing.assert_close(params[k].data[:m], before[k][untouched], rtol=0, atol=0)
        st = opts[k].state[params[k]]
        for s in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(st[s][:m], moments[k][s][untouched], rtol=0, atol=0)
            assert float(st[s][m:].abs().sum()) == 0.0, (k, s)  # new ones start at zero
        torch.testing.assert_close(st["step"], moments[k]["step"])
    # the clone is an exact copy of Gaussian 2 (features included)
    for k in params:
        torch.testing.assert_close(params[k].data[m], before[k][2], rtol=0, atol=0)
    # split children: scale / 1.6, copied features, means spread around the parent
    children = params["scales"].data[m + 1:]
    assert children.shape[0] == 4
    torch.testing.assert_close(torch.exp(children), torch.full((4, 3), 0.05 / 1.6))
    # children are stored child-major: [first of 12, first of 15, second of 12, second of 15]
    torch.testing.assert_close(params["features"].data[[m + 1, m + 3]],
                               before["features"][[12, 12]], rtol=0, atol=0)
    assert not torch.equal(params["means"].data[m + 1], params["means"].data[m + 3])
    # an optimizer step still works on the new tensors
    loss = sum(v.sum() for v in params.values())
    loss.backward()
    for o in opts.values():
        o.step()


def test_split_samples_follow_the_parent_density():
    params, opts = _setup(2, feature_dim=0, adam_steps=0)
    D.prune(params, opts, None, torch.tensor([False, True]))
    with torch.no_grad():
        params["scales"].copy_(torch.log(torch.tensor([[0.2, 0.05, 0.01]])))
        params["means"].zero_()
    gen = torch.Generator().manual_seed(1)
    D.split(params, opts, None, torch.ones(1, dtype=torch.bool), n_split=20000, generator=gen)
    means = params["means"].data
    R = G.quat_to_rotmat(params["quats"].data[:1])[0]
    local_std = (means @ R).std(dim=0)  # R^T x in rows
    torch.testing.assert_close(local_std, torch.tensor([0.2, 0.05, 0.01]), rtol=0.03, atol=0)


def test_growth_budget_prefers_high_gradients():
    n = 20
    params, opts = _setup(n)
    with torch.no_grad():
        params["scales"].fill_(math.log(0.001))
        params["opacities"].fill_(0.0)
    g = torch.linspace(0.1, 2.0, n)
    state = D.DensifyState.create(n, 1.0)
    D.accumulate(state, _fake_meta(n, g, torch.full((n,), 2)))
    stats = D.densify_and_prune(params, opts, state, D.DensifyConfig(max_gaussians=n + 5), 0)
    assert stats["clone"] == 5 and stats["after"] == n + 5
    # the clones are copies of the 5 highest-gradient Gaussians
    means = params["means"].data
    for i in range(n - 5, n):
        assert any(torch.equal(means[i], means[j]) for j in range(n, n + 5))


def test_big_gaussians_are_pruned_only_after_the_step():
    n = 10
    params, opts = _setup(n)
    with torch.no_grad():
        params["scales"].fill_(math.log(0.001))
        params["scales"][3] = math.log(0.5)  # > 0.1 * extent
        params["opacities"].fill_(2.0)
    radii = torch.full((n,), 2)
    radii[6] = 40  # 40 / 96 > 0.15 of the image
    cfg = D.DensifyConfig(prune_big_from_step=500)
    state = D.DensifyState.create(n, 1.0)
    D.accumulate(state, _fake_meta(n, torch.zeros(n), radii))
    assert D.densify_and_prune(params, opts, state, cfg, step=100)["prune"] == 0
    D.accumulate(state, _fake_meta(n, torch.zeros(n), radii))
    assert D.densify_and_prune(params, opts, state, cfg, step=500)["prune"] == 2


def test_reset_opacity_clamps_and_zeroes_moments():
    params, opts = _setup(25)
    with torch.no_grad():
        params["opacities"][:10] = -6.0  # already below the reset value
    low_before = params["opacities"].data[:10].clone()
    other_moments = opts["means"].state[params["means"]]["exp_avg"].clone()
    D.reset_opacity(params, opts, 0.01)
    op = torch.sigmoid(params["opacities"].data)
    assert float(op.max()) == pytest.approx(0.01, rel=1e-5)
    torch.testing.assert_close(params["opacities"].data[:10], low_before, rtol=0, atol=0)
    st = opts["opacities"].state[params["opacities"]]
    assert float(st["exp_avg"].abs().sum()) == 0.0 and float(st["exp_avg_sq"].abs().sum()) == 0.0
    torch.testing.assert_close(opts["means"].state[params["means"]]["exp_avg"], other_moments)
