"""Trainer: resume equals an uninterrupted run, NaN guard, a short run improves held-out PSNR.

Fallbacks of the tests only (the book and the CLI use the real pieces): a tiny SynthHead
capture generated here, its ground-truth codes written as the "tracked" codes, a small
random forward field instead of the distilled prior, and canonical points taken from the
ground-truth mesh.
"""

import numpy as np
import pytest
import torch

from npga.avatar.evaluate import evaluate_avatar_splits
from npga.avatar.model import create_avatar, initial_colors
from npga.avatar.train import (
    Hooks,
    TrainConfig,
    TrainData,
    TrainingDiverged,
    load_checkpoint,
    train,
)
from npga.capture.dataset import open_dataset
from npga.config import get_profile, with_overrides
from npga.deformation import ForwardField

SEQS = ("EXP-8-jaw-1", "FREE")


def tiny_profile(n_gaussians=1000):
    P = get_profile("mini")
    return with_overrides(
        P,
        data={"width": 44, "height": 64, "participants": 1, "sequences": SEQS, "frames_per_sequence": 3,
              "supersample": 1, "mesh_resolution": 32, "scan_identities": 2, "scan_expressions": 2},
        avatar={"n_gaussians": n_gaussians, "detail_hidden": 32},
    )


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    from npga.capture.synthetic.writer import write_dataset

    P = tiny_profile()
    root = write_dataset(P, tmp_path_factory.mktemp("capture") / "ds", progress=False, workers=1)
    part = open_dataset(root).participant(0)
    for name in SEQS:  # test fallback: ground-truth codes stand in for tracked ones
        seq = part.sequence(name)
        seq.write_tracking("nphm", seq.ground_truth().z_exp, np.zeros(3), seq.ground_truth().head_rotation,
                           seq.ground_truth().head_translation)
    return P, part


def make_avatar(P, part, n, feature_dim=4, seed=0):
    seq = part.sequence(SEQS[0])
    verts = seq.ground_truth_vertices(0)
    pts = verts[np.random.default_rng(seed).choice(len(verts), n, replace=False)]
    z = torch.from_numpy(seq.codes("nphm").z_exp)
    torch.manual_seed(seed)
    F = ForwardField(z.shape[1], 0, hidden=16, layers=2)
    cams = seq.cameras(part.train_serials)
    images = np.stack([seq.load_image(seq.frames[0], c.serial) for c in cams])
    return create_avatar(pts, F, P.avatar, exp_codes=z, colors=initial_colors(pts, images, cams),
                         feature_dim=feature_dim, seed=seed, backend="torch")


def _snapshot(avatar):
    out = {f"g.{k}": v.detach().clone() for k, v in avatar.gaussians.items()}
    out.update({f"F.{k}": v.detach().clone() for k, v in avatar.prior.state_dict().items()})
    out.update({f"G.{k}": v.detach().clone() for k, v in avatar.detail.state_dict().items()})
    return out


def test_resumed_run_equals_uninterrupted_run(capture, tmp_path):
    P, part = capture
    data = TrainData(part, [SEQS[0]], codes="nphm")
    cfg = TrainConfig.from_profile(P, iterations=6, checkpoint_every=2, log_every=1)

    a = make_avatar(P, part, 300)
    full = train(a, data, cfg, checkpoint=tmp_path / "a.pt", progress=False)
    assert full.steps_run == 6

    b = make_avatar(P, part, 300)
    part1 = train(b, data, cfg, checkpoint=tmp_path / "b.pt", stop_after=3, progress=False)
    assert part1.steps_run == 3 and load_checkpoint(tmp_path / "b.pt")["step"] == 3
    # a new process would start from a freshly built avatar and disturbed random states
    torch.manual_seed(1234)
    np.random.seed(1234)
    c = make_avatar(P, part, 300, seed=1)
    rest = train(c, data, cfg, checkpoint=tmp_path / "b.pt", progress=False)
    assert rest.steps_run == 3

    sa, sc = _snapshot(a), _snapshot(c)
    assert sa.keys() == sc.keys()
    for k in sa:
        assert torch.equal(sa[k], sc[k]), f"{k} differs between the resumed and the uninterrupted run"
    assert full.history["loss"] == rest.history["loss"]
    # and the run did change the avatar (the comparison is not vacuous)
    assert not torch.equal(sa["g.means"], _snapshot(make_avatar(P, part, 300))["g.means"])


def test_resume_with_density_control_and_laplacian_equals_uninterrupted_run(capture, tmp_path):
    """ADC's running statistics and the k-NN graph are checkpointed with the avatar."""
    from npga.avatar.densify_dynamic import DynamicADC
    from npga.avatar.regularizers import LaplacianRegularizer
    from npga.splatting.densify import DensifyConfig

    P, part = capture
    data = TrainData(part, [SEQS[0]], codes="nphm")
    cfg = TrainConfig.from_profile(P, iterations=8, checkpoint_every=1, log_every=1)

    def hooks():
        # a low threshold so that every densification round really adds Gaussians
        adc = DynamicADC(densify_from=0, densify_until=8, densify_every=3, scene_extent=0.1,
                         cfg=DensifyConfig(grad_threshold=1e-7, max_gaussians=2000))
        return Hooks(losses={"laplacian": LaplacianRegularizer(k=4, rebuild_every=3)}, after_backward=[adc])

    a, ha = make_avatar(P, part, 300), hooks()
    full = train(a, data, cfg, checkpoint=tmp_path / "a.pt", hooks=ha, progress=False)
    grown = [r["clone"] + r["split"] for r in ha.after_backward[0].history]
    assert len(grown) == 2 and min(grown) > 0 and a.n_gaussians > 300

    b = make_avatar(P, part, 300)
    train(b, data, cfg, checkpoint=tmp_path / "b.pt", hooks=hooks(), stop_after=4, progress=False)  # mid-accumulation
    torch.manual_seed(99)
    c, hc = make_avatar(P, part, 300, seed=1), hooks()
    rest = train(c, data, cfg, checkpoint=tmp_path / "b.pt", hooks=hc, progress=False)
    assert rest.steps_run == 4
    sa, sc = _snapshot(a), _snapshot(c)
    for k in sa:
        assert torch.equal(sa[k], sc[k]), f"{k} differs between the resumed and the uninterrupted run"
    assert full.history["loss"] == rest.history["loss"]
    assert [r["step"] for r in hc.after_backward[0].history] == [r["step"] for r in ha.after_backward[0].history]


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(capture, tmp_path):
    P, part = capture
    data = TrainData(part, [SEQS[0]], codes="nphm")
    cfg = TrainConfig.from_profile(P, iterations=10, checkpoint_every=2)
    av = make_avatar(P, part, 300)
    poison = Hooks(losses={"poison": lambda avatar, out, batch, step: torch.tensor(float("nan") if step == 5 else 0.0)})
    ckpt = tmp_path / "run.pt"
    with pytest.raises(TrainingDiverged, match=r"step 5.*loss.*NaN.*run\.pt \(step 4\)"):
        train(av, data, cfg, checkpoint=ckpt, hooks=poison, progress=False)
    good = load_checkpoint(ckpt)
    assert good["step"] == 4
    assert all(torch.isfinite(v).all() for v in good["avatar"]["gaussians"].values())
    # the parameters in memory were not touched by the bad step either
    assert all(torch.isfinite(v).all() for v in av.gaussians.values())
    # and the run can go on from the good checkpoint once the cause is gone
    res = train(make_avatar(P, part, 300), data, cfg, checkpoint=ckpt, progress=False)
    assert res.steps_run == 6


def test_bad_checkpoint_file_is_named(capture, tmp_path):
    P, part = capture
    bad = tmp_path / "foreign.pt"
    torch.save({"hello": 1}, bad)
    with pytest.raises(ValueError, match="foreign.pt"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_short_training_improves_heldout_psnr_by_5db(capture):
    P, part = capture
    av = make_avatar(P, part, 1000, feature_dim=4)
    before = evaluate_avatar_splits(av, part, P, codes="nphm")
    data = TrainData(part, [SEQS[0]], codes="nphm")
    res = train(av, data, TrainConfig.from_profile(P, iterations=200), progress=False)
    after = evaluate_avatar_splits(av, part, P, codes="nphm")
    # full-image PSNR on black, as NPGA reports it; the head-masked score must rise too
    gain = after["novel_view"]["psnr_full"] - before["novel_view"]["psnr_full"]
    assert gain >= 5.0, f"held-out (novel-view) PSNR improved by only {gain:.2f} dB"
    gain_masked = after["novel_view"]["psnr"] - before["novel_view"]["psnr"]
    assert gain_masked >= 3.0, f"held-out PSNR on the head region improved by only {gain_masked:.2f} dB"
    assert after["self_reenactment"]["psnr"] > before["self_reenactment"]["psnr"]
    assert res.history["psnr"][-1] > res.history["psnr"][0]


def test_laplacian_reads_g_from_the_render_and_g_runs_once_per_step(capture):
    """The dynamics term uses the render's G outputs: the same value and gradients as
    running G again, and a training step evaluates G once."""
    from npga.avatar.regularizers import LaplacianRegularizer

    P, part = capture
    data = TrainData(part, [SEQS[0]], codes="nphm")
    av = make_avatar(P, part, 200)
    with torch.no_grad():  # G away from its zero start, so its offsets vary over the graph
        for p in av.detail.parameters():
            p.normal_(0, 0.3)
    batch = data.batch(0, [0])
    reg = LaplacianRegularizer(k=4, w_features=0.0, w_dynamics=1.0)
    grads = []
    for use_render in (True, False):
        out = av.render(batch["z_exp"], batch["viewmats"], batch["Ks"], data.width, data.height, pose=batch["pose"])
        assert out.detail is not None and set(out.detail) >= {"means", "quats", "scales"}
        loss = reg(av, out if use_render else None, batch, step=0)
        av.detail.zero_grad(set_to_none=True)
        loss.backward()
        grads.append((float(loss), [p.grad.clone() for p in av.detail.parameters()]))
    assert grads[0][0] > 0 and abs(grads[0][0] - grads[1][0]) < 1e-6 * grads[0][0]
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)
    calls = []
    handle = av.detail.mlp.register_forward_hook(lambda *_: calls.append(1))
    cfg = TrainConfig.from_profile(P, iterations=2, checkpoint_every=10**6)
    train(av, data, cfg, hooks=Hooks(losses={"laplacian": reg}), progress=False)
    handle.remove()
    assert len(calls) == 2  # one G evaluation per step


def test_bf16_training_computes_g_in_bfloat16_and_tracks_the_float32_run(capture):
    """TrainConfig.bf16: G's (and F's) products run in bfloat16 during training, parameters
    stay float32, and a short run ends close to the float32 run from the same start."""
    from npga.headmodels.linear import bf16_supported

    if not bf16_supported():
        pytest.skip("this CPU has no oneDNN bfloat16 products")
    P, part = capture
    data = TrainData(part, [SEQS[0]], codes="nphm")
    runs = {}
    for bf16 in (False, True):
        av = make_avatar(P, part, 1000, feature_dim=4)
        dtypes = []
        handle = av.detail.mlp.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
        cfg = TrainConfig.from_profile(P, iterations=60, checkpoint_every=10**6, bf16=bf16)
        res = train(av, data, cfg, progress=False)
        handle.remove()
        assert set(dtypes) == {torch.bfloat16 if bf16 else torch.float32}
        assert all(p.dtype == torch.float32 for p in av.detail.parameters())
        runs[bf16] = res.history["psnr"]
    assert runs[True][-1] > runs[True][0] + 2.0  # it learns
    assert abs(runs[True][-1] - runs[False][-1]) < 0.5  # and about as well as in float32
