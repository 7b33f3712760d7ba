"""Forward field F: analytic test field, root finding, Gaussian transport, distillation, caching."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
import torch

from npga.config import get_profile, with_overrides
from npga.deformation import (
    AnalyticHeadWarp,
    ForwardField,
    canonical_samples,
    cycle_error,
    deform_gaussians,
    distill_forward_field,
    finetune_forward_field,
    naive_inversion,
    polar_rotation,
    root_find,
    rotmat_to_quat,
)
from npga.deformation.store import load_or_distill, prior_path, split_codes
from npga.splatting.gaussians import covariance, quat_to_rotmat

MM = 1e-3




@pytest.fixture(scope="module")
def warp():
    return AnalyticHeadWarp(id_dims=8, exp_dims=12, n_ids=8, n_exps=20, seed=0)


def _eval_points(warp, z_id, n=2000, seed=7, noise=0.01):
    g = torch.Generator().manual_seed(seed)
    x = warp.canonical_surface_points(z_id, n, seed=seed)
    return x + noise * torch.randn(n, 3, generator=g)


# --------------------------------------------------------------------------- analytic field


def test_analytic_warp_inverse_is_exact_and_deformation_is_large(warp):
    z_id, z_exp = warp.id_codes[0], warp.exp_codes[0, 0]
    x_c = _eval_points(warp, z_id)
    x_p = warp.forward_exact(x_c, z_id, z_exp)
    assert (warp.backward(x_p, z_id, z_exp) - x_c).norm(dim=-1).max() < 1e-6
    disp = (x_p - x_c).norm(dim=-1)
    # Centimetre-scale motion, so that inversion is not trivial.
    assert disp.max() > 10 * MM
    # and the naive inversion really is wrong somewhere by millimetres
    naive = naive_inversion(warp.backward, x_c, z_id, z_exp)
    assert (naive - x_p).norm(dim=-1).max() > 1 * MM


def test_analytic_warp_rejects_bad_shapes(warp):
    with pytest.raises(ValueError, match="x_p"):
        warp.backward(torch.zeros(4, 2), warp.id_codes[0], warp.exp_codes[0, 0])
    with pytest.raises(ValueError, match="z_exp"):
        warp.backward(torch.zeros(4, 3), warp.id_codes[0], torch.zeros(5))


# --------------------------------------------------------------------------- root finding


def test_root_finding_converges_below_a_hundredth_of_a_millimetre(warp):
    z_id = warp.id_codes[3]
    x_c = _eval_points(warp, z_id, n=3000)
    z_exp = warp.exp_codes[3, torch.arange(3000) % 20]  # per-point codes
    truth = warp.forward_exact(x_c, z_id, z_exp)
    res = root_find(warp.backward, x_c, z_id, z_exp, chunk=1000)  # chunking exercised
    err = (res.x_p - truth).norm(dim=-1)
    assert err.max() < 0.01 * MM, f"root finding error {err.max() / MM:.2e} mm"
    assert res.converged.float().mean() > 0.99
    # Newton converges fast from the naive start: the residual drops by orders of magnitude.
    assert res.history["max"][-1] < 1e-3 * res.history["max"][0]
    assert res.iterations <= 10


def test_root_finding_recovers_from_a_poor_start(warp):
    z_id, z_exp = warp.id_codes[1], warp.exp_codes[1, 5]
    x_c = _eval_points(warp, z_id, n=500)
    truth = warp.forward_exact(x_c, z_id, z_exp)
    start = x_c + 0.02 * torch.randn(500, 3, generator=torch.Generator().manual_seed(1))
    res = root_find(warp.backward, x_c, z_id, z_exp, x_init=start, max_iter=30)
    assert (res.x_p - truth).norm(dim=-1).median() < 0.01 * MM


# --------------------------------------------------------------------------- transport


def _random_rotations(n, seed=0):
    q = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    return q, quat_to_rotmat(q)


def test_rotmat_to_quat_round_trip():
    q, R = _random_rotations(1000)
    # include the awkward 180-degree rotations, where w = 0
    R = torch.cat([R, torch.diag_embed(torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1]]))])
    q2 = rotmat_to_quat(R)
    assert torch.allclose(quat_to_rotmat(q2), R, atol=1e-5)
    qn = torch.nn.functional.normalize(q, dim=-1)
    dots = (qn * q2[:1000]).sum(-1).abs()
    assert torch.allclose(dots, torch.ones_like(dots), atol=1e-5)


def test_polar_rotation_recovers_the_rotation_factor():
    _, R = _random_rotations(200, seed=2)
    A = torch.randn(200, 3, 3, generator=torch.Generator().manual_seed(3))
    P = A @ A.transpose(-1, -2) + 0.5 * torch.eye(3)  # symmetric positive definite
    U = polar_rotation(R @ P)
    assert torch.allclose(U, R, atol=1e-4)


class _Affine(torch.nn.Module):
    """x -> A x + b, ignoring the codes: its Jacobian is A everywhere."""

    def __init__(self, A, b):
        super().__init__()
        self.A, self.b = torch.nn.Parameter(A), torch.nn.Parameter(b)

    def forward(self, x, z_exp, z_id=None):
        return x @ self.A.T + self.b


def _gaussians(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = 0.1 * torch.randn(n, 3, generator=g)
    quats = torch.randn(n, 4, generator=g)
    log_scales = math.log(0.003) + 0.5 * torch.randn(n, 3, generator=g)
    return means, quats, log_scales


def test_deform_gaussians_is_exact_for_a_similarity_and_for_mode_exact():
    means, quats, log_scales = _gaussians()
    _, R = _random_rotations(1, seed=5)
    sim = _Affine(1.3 * R[0], torch.tensor([0.01, -0.02, 0.03]))
    z = torch.zeros(4)
    target = 1.3**2 * R[0] @ covariance(quats, log_scales) @ R[0].T
    for mode in ("polar", "exact"):
        m_p, q_p, s_p = deform_gaussians(sim, means, quats, log_scales, z, mode=mode)
        assert torch.allclose(m_p, means @ sim.A.T + sim.b, atol=1e-6)
        assert torch.allclose(covariance(q_p, s_p), target, rtol=1e-3, atol=1e-10)
    # A general (sheared) map: the exact mode still reproduces J Sigma J^T.
    A = torch.eye(3) + 0.3 * torch.randn(3, 3, generator=torch.Generator().manual_seed(6))
    aff = _Affine(A, torch.zeros(3))
    _, q_e, s_e = deform_gaussians(aff, means, quats, log_scales, z)  # default: exact
    target = A @ covariance(quats, log_scales) @ A.T
    rel = (covariance(q_e, s_e) - target).norm(dim=(-1, -2)) / target.norm(dim=(-1, -2))
    assert rel.max() < 1e-3


def test_polar_mode_error_grows_with_shear():
    """The polar approximation drops the shear inside each Gaussian's frame: small for small shear."""
    means, quats, log_scales = _gaussians()
    z = torch.zeros(4)
    errs = []
    for eps in (0.02, 0.2):
        A = torch.eye(3) + eps * torch.randn(3, 3, generator=torch.Generator().manual_seed(8))
        _, q, s = deform_gaussians(_Affine(A, torch.zeros(3)), means, quats, log_scales, z, mode="polar")
        target = A @ covariance(quats, log_scales) @ A.T
        rel = (covariance(q, s) - target).norm(dim=(-1, -2)) / target.norm(dim=(-1, -2))
        errs.append(rel.median().item())
    print(f"polar covariance error (median, relative): shear 0.02 -> {errs[0]:.3f}, 0.2 -> {errs[1]:.3f}")
    assert errs[0] < 0.05
    assert errs[1] > 3 * errs[0]


def test_deform_gaussians_autograd_and_fd_jacobians_agree_and_gradients_flow(warp):
    torch.manual_seed(0)
    field = ForwardField(exp_dims=12, id_dims=8, hidden=32, layers=3)
    with torch.no_grad():  # a non-trivial field: random last layer
        field.out.weight.normal_(0, 0.3)
    means, quats, log_scales = _gaussians(100)
    means = means.requires_grad_(True)
    z_exp, z_id = warp.exp_codes[0, 0], warp.id_codes[0]
    out_ad = deform_gaussians(field, means, quats, log_scales, z_exp, z_id)
    out_fd = deform_gaussians(field, means, quats, log_scales, z_exp, z_id, jacobian="fd", fd_eps=1e-3)
    for a, b in zip(out_ad, out_fd):
        assert torch.allclose(a, b, atol=2e-3)
    loss = sum(o.square().sum() for o in out_ad)
    loss.backward()
    assert means.grad is not None and means.grad.abs().sum() > 0
    assert field.out.weight.grad is not None and field.out.weight.grad.abs().sum() > 0
    with torch.no_grad():  # under no_grad no graph is kept
        m, q, s = deform_gaussians(field, means, quats, log_scales, z_exp, z_id)
    assert not m.requires_grad and not q.requires_grad


@pytest.mark.parametrize("n_freqs,id_dims", [(0, 0), (0, 8), (3, 8)])
def test_analytic_jacobian_equals_autograd_in_float64(n_freqs, id_dims):
    """F's layer-by-layer forward-mode Jacobian is autograd's to rounding (1e-6), and so
    are the gradients of a loss on it (parameters and positions)."""
    from npga.deformation.baselines import pointwise_jacobian

    torch.manual_seed(1)
    field = ForwardField(exp_dims=6, id_dims=id_dims, hidden=24, layers=4, n_freqs=n_freqs).double()
    with torch.no_grad():  # far from the identity start: every layer matters
        for p in field.parameters():
            p.normal_(0, 0.4)
    x = (0.1 * torch.randn(40, 3, dtype=torch.float64)).requires_grad_(True)
    z_exp = torch.randn(6, dtype=torch.float64)
    z_id = torch.randn(id_dims, dtype=torch.float64) if id_dims else None
    y_a, J_a = field.forward_and_jacobian(x, z_exp, z_id)
    y_r, J_r = pointwise_jacobian(lambda q: field(q, z_exp, z_id), x, create_graph=True)
    assert J_r.abs().max() > 0.5  # a Jacobian far from the identity
    assert torch.allclose(y_a, y_r, atol=1e-12)
    assert torch.allclose(J_a, J_r, atol=1e-6, rtol=0), (J_a - J_r).abs().max()
    w = torch.randn(40, 3, 3, dtype=torch.float64)
    params = [x] + list(field.parameters())
    g_a = torch.autograd.grad((J_a * w).sum() + y_a.sum(), params)
    g_r = torch.autograd.grad((J_r * w).sum() + y_r.sum(), params)
    for a, b in zip(g_a, g_r):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6), (a - b).abs().max()


def test_fused_silu_tangent_passes_gradcheck_with_either_output_unused():
    """_SiluTangent's hand-written backward: numerical gradients of both outputs (float64),
    and of each alone (the other output's gradient arrives as None)."""
    from npga.deformation.field import _SiluTangent

    torch.manual_seed(0)
    z = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    dz = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_SiluTangent.apply, (z, dz))
    assert torch.autograd.gradcheck(lambda a, b: _SiluTangent.apply(a, b)[0], (z, dz))
    assert torch.autograd.gradcheck(lambda a, b: _SiluTangent.apply(a, b)[1], (z, dz))
    h, dh = _SiluTangent.apply(z, dz)
    assert torch.allclose(h, torch.nn.functional.silu(z))


def test_deform_gaussians_analytic_jacobian_matches_autograd_and_needs_a_forward_field(warp):
    torch.manual_seed(0)
    field = ForwardField(exp_dims=12, id_dims=8, hidden=32, layers=3, n_freqs=2)
    with torch.no_grad():
        field.out.weight.normal_(0, 0.3)
    means, quats, log_scales = _gaussians(100)
    z_exp, z_id = warp.exp_codes[0, 0], warp.id_codes[0]
    out_an = deform_gaussians(field, means, quats, log_scales, z_exp, z_id, jacobian="analytic")
    out_ad = deform_gaussians(field, means, quats, log_scales, z_exp, z_id, jacobian="autograd")
    for a, b in zip(out_an, out_ad):
        assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="forward_and_jacobian"):
        deform_gaussians(lambda x, z, i: x * 1.01, means, quats, log_scales, z_exp, z_id, jacobian="analytic")


def test_exact_mode_gradient_is_finite_for_round_gaussians():
    """Round Gaussians (equal scales, as 3DGS initialises them) have repeated eigenvalues."""
    means, quats, _ = _gaussians(50)
    log_scales = torch.full((50, 3), math.log(0.003), requires_grad=True)
    quats = quats.requires_grad_(True)
    field = _Affine(torch.eye(3) + 0.01 * torch.randn(3, 3), torch.zeros(3))
    _, q, s = deform_gaussians(field, means, quats, log_scales, torch.zeros(2))
    (q.sum() + s.sum()).backward()
    for t in (quats.grad, log_scales.grad, field.A.grad):
        assert torch.isfinite(t).all()


def test_deform_gaussians_rejects_mismatched_shapes():
    field = ForwardField(exp_dims=2)
    with pytest.raises(ValueError, match="quats"):
        deform_gaussians(field, torch.zeros(5, 3), torch.zeros(4, 4), torch.zeros(5, 3), torch.zeros(2))


# --------------------------------------------------------------------------- the field


def test_forward_field_starts_as_identity_and_round_trips(tmp_path):
    field = ForwardField(exp_dims=5, id_dims=3, hidden=16, layers=3)
    x = torch.randn(10, 3)
    assert torch.equal(field(x, torch.randn(5), torch.randn(3)), x)
    with torch.no_grad():
        field.out.weight.normal_()
    state = field.to_state()
    again = ForwardField.from_state(state)
    z = torch.randn(10, 5), torch.randn(10, 3)
    assert torch.allclose(again(x, *z), field(x, *z))
    with pytest.raises(ValueError, match="z_id"):
        field(x, torch.randn(5))
    with pytest.raises(ValueError, match="not a ForwardField"):
        ForwardField.from_state({"hparams": {"exp_dims": 2}, "state_dict": {}})


# --------------------------------------------------------------------------- distillation


class _ModuleWarp(torch.nn.Module):
    """The analytic warp behind a module with one (unused) parameter: checks B stays frozen."""

    def __init__(self, warp):
        super().__init__()
        self.warp = warp
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def backward(self, x_p, z_id, z_exp):
        return self.warp.backward(x_p, z_id, z_exp) + 0.0 * self.dummy


@pytest.fixture(scope="module")
def distilled(warp):
    """The mini prior distilled on 7 of the 8 identities and 16 of the 20 expressions."""
    cfg = replace(get_profile("mini").deform, iterations=800)
    pts = canonical_samples(warp, warp.id_codes[:7], cfg.points_per_identity)
    teacher = _ModuleWarp(warp)
    field, hist = distill_forward_field(
        teacher.backward, pts, warp.id_codes[:7], warp.exp_codes[:7, :16], cfg, progress=False
    )
    assert teacher.dummy.requires_grad and teacher.dummy.grad is None  # frozen, then restored
    return field, hist, cfg


def _median_errors(warp, field, z_id, z_exp, x_c):
    truth = warp.forward_exact(x_c, z_id, z_exp)
    with torch.no_grad():
        x_f = field(x_c, z_exp, z_id)
    x_n = naive_inversion(warp.backward, x_c, z_id, z_exp)
    med = lambda x: cycle_error(warp.backward, x, x_c, z_id, z_exp).median().item() / MM  # noqa: E731
    return med(x_f), med(x_n), (x_f - truth).norm(dim=-1).median().item() / MM


def test_distilled_field_beats_naive_inversion_on_heldout_identity_and_expressions(warp, distilled):
    field, hist, _ = distilled
    assert hist["loss_mm"][-1] < 0.3 * hist["loss_mm"][0]  # the training curve goes down
    g = torch.Generator().manual_seed(11)
    x_c = _eval_points(warp, warp.id_codes[7], n=3000, seed=31)
    # held-out identity 7 (never seen) with held-out expressions 16..19 of it
    z_exp = warp.exp_codes[7, 16 + torch.randint(4, (3000,), generator=g)]
    f_med, naive_med, true_med = _median_errors(warp, field, warp.id_codes[7], z_exp, x_c)
    print(f"held-out id + exp: median cycle error F {f_med:.3f} mm, naive {naive_med:.3f} mm, "
          f"F's true error {true_med:.3f} mm")
    assert f_med < 0.3, f"distilled F median cycle error {f_med:.3f} mm"
    assert f_med < 0.5 * naive_med
    # the cycle error is a faithful proxy for the true error (B is near-isometric)
    assert abs(true_med - f_med) < 0.5 * f_med + 0.01
    # a training identity with held-out expressions
    x_c0 = _eval_points(warp, warp.id_codes[0], n=3000, seed=32)
    z_exp0 = warp.exp_codes[0, 16 + torch.randint(4, (3000,), generator=g)]
    f0, n0, _ = _median_errors(warp, field, warp.id_codes[0], z_exp0, x_c0)
    print(f"training id, held-out exp: median cycle error F {f0:.3f} mm, naive {n0:.3f} mm")
    assert f0 < 0.75 * n0


def test_finetuning_specialises_the_prior_without_touching_it(warp, distilled):
    field, _, cfg = distilled
    before = {k: v.clone() for k, v in field.state_dict().items()}
    z_id = warp.id_codes[7]
    pts = warp.canonical_surface_points(z_id, 2048, seed=3)
    tuned, hist = finetune_forward_field(
        field, warp.backward, pts, z_id, warp.exp_codes[7, :16], cfg, iterations=150, progress=False
    )
    assert all(torch.equal(before[k], v) for k, v in field.state_dict().items())
    g = torch.Generator().manual_seed(12)
    x_c = _eval_points(warp, z_id, n=2000, seed=33)
    z_exp = warp.exp_codes[7, 16 + torch.randint(4, (2000,), generator=g)]
    prior_med = _median_errors(warp, field, z_id, z_exp, x_c)[0]
    tuned_med = _median_errors(warp, tuned, z_id, z_exp, x_c)[0]
    print(f"held-out identity, held-out exp: prior {prior_med:.3f} mm -> fine-tuned {tuned_med:.3f} mm")
    assert tuned_med < prior_med


def test_distill_rejects_inconsistent_inputs(warp):
    cfg = replace(get_profile("mini").deform, iterations=1)
    pts = torch.zeros(3, 10, 3)
    with pytest.raises(ValueError, match="id_codes"):
        distill_forward_field(warp.backward, pts, warp.id_codes[:2], warp.exp_codes[:3], cfg, progress=False)
    with pytest.raises(ValueError, match="canonical_points"):
        distill_forward_field(warp.backward, pts[0], warp.id_codes[:3], warp.exp_codes[:3], cfg, progress=False)


def test_load_or_distill_caches_and_detects_a_changed_head_model(tmp_path, monkeypatch):
    monkeypatch.setenv("NPGA_CACHE", str(tmp_path))
    P = with_overrides(get_profile("mini"), deform={"iterations": 30, "points_per_identity": 256})
    head = AnalyticHeadWarp(id_dims=8, exp_dims=12, n_ids=3, n_exps=5, seed=0)
    field, meta = load_or_distill(P, "analytic", head=head, progress=False)
    assert not meta["loaded"] and prior_path(P, "analytic").is_file()
    assert meta["split"]["heldout_ids"] == [2] and meta["split"]["heldout_exps"] == [4]
    again, meta2 = load_or_distill(P, "analytic", head=head, progress=False)
    assert meta2["loaded"]
    x = torch.randn(20, 3) * 0.1
    assert torch.allclose(again(x, head.exp_codes[0, 0], head.id_codes[0]), field(x, head.exp_codes[0, 0], head.id_codes[0]))
    other = AnalyticHeadWarp(id_dims=8, exp_dims=12, n_ids=3, n_exps=5, seed=1)
    _, meta3 = load_or_distill(P, "analytic", head=other, progress=False)
    assert not meta3["loaded"]
    P2 = with_overrides(P, deform={"iterations": 31})  # other settings: distilled again
    _, meta4 = load_or_distill(P2, "analytic", head=other, progress=False)
    assert not meta4["loaded"]
    prior_path(P, "analytic").write_bytes(b"not a checkpoint")
    assert prior_path(P2, "analytic") != prior_path(P, "analytic")  # its own file: P's stays
    with pytest.raises(ValueError, match=re.escape(prior_path(P, "analytic").name)):
        load_or_distill(P, "analytic", head=other, progress=False)


def test_split_codes_holds_out_last_identity_and_fifth_of_expressions():
    s = split_codes(8, 20)
    assert s["heldout_ids"] == [7] and s["train_ids"] == list(range(7))
    assert s["heldout_exps"] == [16, 17, 18, 19] and len(s["train_exps"]) == 16
    with pytest.raises(ValueError):
        split_codes(1, 20)


def test_compare_inversions_reports_all_methods(warp, distilled):
    from npga.deformation.compare import (
        compare_inversions,
        deforming_mask,
        error_summary,
        heldout_queries,
    )

    field, _, _ = distilled
    x_c, z_id, z_exp, ident = heldout_queries(warp, warp.id_codes[6:8], warp.exp_codes[6:8, 16:], 600, seed=3)
    assert x_c.shape == (600, 3) and z_id.shape == (600, 8) and z_exp.shape == (600, 12)
    assert set(ident.tolist()) == {0, 1}
    res = compare_inversions(warp.backward, field, x_c, z_id, z_exp, chunk=256)
    assert set(res) == {"naive", "root finding", "distilled F"}
    s = {k: error_summary(r["cycle_mm"]) for k, r in res.items()}
    assert s["root finding"]["max"] < 0.01 < s["naive"]["max"]
    assert s["distilled F"]["mean"] < s["naive"]["mean"]
    assert all(r["seconds"] > 0 for r in res.values())
    moving = deforming_mask(warp.backward, x_c, z_id, z_exp)
    assert 0 < moving.sum() <= len(x_c)
