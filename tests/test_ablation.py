"""Dynamic ADC (npga.avatar.densify_dynamic), the ablation's hooks with the trainer, and its table."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from npga.avatar.densify_dynamic import DynamicADC, accumulate_views
from npga.splatting.gaussians import init_from_points

REPO = Path(__file__).resolve().parent.parent


def _ablation():
    from npga.experiments import ablation

    return ablation


class _Avatar:
    def __init__(self, g):
        self.gaussians = g

    @property
    def n_gaussians(self):
        return self.gaussians["means"].shape[0]


def _setup(n=60, f=4, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3)).astype(np.float32) * 0.05
    g = init_from_points(pts, None, sh_degree=1, feature_dim=f, init_opacity=0.3, seed=seed)
    opts = {k: torch.optim.Adam([v], lr=1e-3, eps=1e-15) for k, v in g.items()}
    # one real step so that every parameter has non-zero Adam moments
    loss = sum((v * torch.randn_like(v)).sum() for v in g.values())
    loss.backward()
    for o in opts.values():
        o.step()
    return g, opts


def _meta(n, grad_norm_px, width=40, height=60, cams=2):
    """A rasterizer meta whose means2d gradient has the given per-Gaussian pixel norms."""
    means2d = torch.zeros(cams, n, 2, requires_grad=True)
    means2d.grad = torch.zeros(cams, n, 2)
    means2d.grad[..., 0] = grad_norm_px
    radii = torch.full((cams, n, 2), 3, dtype=torch.int32)
    return {"means2d": means2d, "radii": radii, "width": width, "height": height, "n_cameras": cams}


class _Render:
    def __init__(self, meta):
        self.meta = meta


def test_dynamic_adc_keeps_state_and_features_consistent():
    n = 60
    g, opts = _setup(n)
    moments = {k: opts[k].state[g[k]]["exp_avg"].clone() for k in g}
    # Gaussians 0-9 pulled hard (grow), 50-54 transparent (pruned), the rest untouched
    px = torch.zeros(n)
    px[:10] = 1.0  # pixels; NDC gradient = 1 * W/2 * cams >> 0.0002
    with torch.no_grad():
        g["scales"][:5] = math.log(1e-4)  # small -> clone
        g["scales"][5:10] = math.log(0.05)  # large -> split
        g["opacities"][50:55] = -10.0
    before = {k: v.detach().clone() for k, v in g.items()}
    adc = DynamicADC(densify_from=0, densify_until=100, densify_every=1, scene_extent=0.1)
    av = _Avatar(g)
    adc(av, opts, _Render(_meta(n, px)), step=0)
    rec = adc.history[-1]
    assert (rec["clone"], rec["split"], rec["prune"]) == (5, 5, 5)
    n_new = n + 5 + 5 * (2 - 1) - 5
    for k, v in g.items():
        assert v.shape[0] == n_new, k
        st = opts[k].state[v]
        assert st["exp_avg"].shape == v.shape and st["exp_avg_sq"].shape == v.shape
        assert opts[k].param_groups[0]["params"][0] is v  # the optimizer holds the new tensor
    # untouched Gaussians 10..49 and 55..59 keep values and Adam moments, in order (they come first)
    untouched = torch.cat([torch.arange(0, 5), torch.arange(10, 50), torch.arange(55, 60)])
    kept = len(untouched)
    for k in g:
        assert torch.equal(g[k].data[:kept], before[k][untouched]), k
        assert torch.equal(opts[k].state[g[k]]["exp_avg"][:kept], moments[k][untouched]), k
    # new rows: zero moments; features inherited from the parents
    assert torch.all(opts["features"].state[g["features"]]["exp_avg"][kept:] == 0)
    new_feats = g["features"].data[kept:]
    clone_feats, split_feats = new_feats[:5], new_feats[5:]
    assert torch.equal(clone_feats, before["features"][:5])
    assert torch.equal(split_feats, before["features"][5:10].repeat(2, 1))
    assert adc.state.grad2d.shape == (n_new,) and float(adc.state.grad2d.abs().sum()) == 0


def test_view_counting_modes_differ_only_for_occluded_views():
    from npga.splatting.densify import DensifyState

    n = 4
    meta = _meta(n, torch.tensor([1.0, 1.0, 0.0, 0.0]), cams=2)
    meta["means2d"].grad[1, 0] = 0.0  # Gaussian 0: in frustum in camera 1 but no gradient (occluded)
    s3, sn = DensifyState.create(n, 0.1), DensifyState.create(n, 0.1)
    accumulate_views(s3, meta, "3dgs")
    accumulate_views(sn, meta, "npga")
    assert s3.count.tolist() == [2, 2, 2, 2]
    assert sn.count.tolist() == [1, 2, 0, 0]
    assert torch.allclose(sn.grad2d, s3.grad2d)
    assert float(sn.mean_grad()[0]) == pytest.approx(2 * float(s3.mean_grad()[0]))
    with pytest.raises(ValueError, match="mode"):
        DynamicADC(densify_from=0, densify_until=1, densify_every=1, mode="bogus")


def test_summary_table_and_markdown():
    ab = _ablation()
    runs = []
    for seed, (nv, sr) in enumerate([(25.0, 22.0), (26.0, 22.5), (27.0, 23.5)]):
        runs.append({"name": "full", "seed": seed, "gap_psnr": nv - sr, "n_gaussians": 100 + seed,
                     "train_seconds": 1.0, "metrics": {"novel_view": {"psnr": nv, "ssim": 0.9},
                                                       "self_reenactment": {"psnr": sr, "ssim": 0.8}}})
    t = ab.summarise(runs)["full"]
    assert t["novel_view_psnr"]["mean"] == pytest.approx(26.0)
    assert t["novel_view_psnr"]["std"] == pytest.approx(1.0)
    assert t["gap_psnr"]["mean"] == pytest.approx(np.mean([3.0, 3.5, 3.5]))
    md = ab.to_markdown({"profile": "mini", "command": "cmd", "machine": "m", "date": "d", "seeds": [0, 1, 2],
                         "iterations": 5, "total_seconds": 60, "table": ab.summarise(runs)})
    assert "| full | 26.00 ± 1.00 |" in md and "30.65" in md
    assert "SynthHead regions" not in md  # no region was scored
    for seed, r in enumerate(runs):  # the mouth interior, scored in both splits
        for split in ("novel_view", "self_reenactment"):
            r["metrics"][split]["psnr_mouth"] = 12.0 + seed
    t = ab.summarise(runs)["full"]
    assert t["self_reenactment_psnr_mouth"]["mean"] == pytest.approx(13.0)
    md = ab.to_markdown({"profile": "mini", "command": "cmd", "machine": "m", "date": "d", "seeds": [0, 1, 2],
                         "iterations": 5, "total_seconds": 60, "table": ab.summarise(runs)})
    assert "| variant | novel-view mouth | self-reenactment mouth |" in md and "| full | 13.00 ± 1.00 |" in md
    assert "Geometry against" not in md
    for seed, r in enumerate(runs):  # the distance to the true surface, measured in both splits
        for split in ("novel_view", "self_reenactment"):
            r["metrics"][split].update(surface_mm=1.0 + seed, off_surface=0.1)
    md = ab.to_markdown({"profile": "mini", "command": "cmd", "machine": "m", "date": "d", "seeds": [0, 1, 2],
                         "iterations": 5, "total_seconds": 60, "table": ab.summarise(runs)})
    assert "| variant | novel-view surface-mm | novel-view off-surface |" in md
    assert "| full | 2.00 ± 1.00 | 0.100 ± 0.000 |" in md


@pytest.mark.slow
def test_hooks_train_on_a_tiny_capture(tmp_path):
    """Laplacian + ADC + CNN hooks inside npga.avatar.train on a generated capture (a few steps)."""
    from npga.avatar.model import create_avatar, initial_colors
    from npga.avatar.train import TrainConfig, TrainData, train
    from npga.capture.dataset import open_dataset
    from npga.capture.synthetic.writer import write_dataset
    from npga.config import get_profile, with_overrides
    from npga.deformation import ForwardField

    seqs = ("EXP-8-jaw-1", "FREE")
    P = with_overrides(get_profile("mini"), data={
        "width": 44, "height": 64, "participants": 1, "sequences": seqs, "frames_per_sequence": 2,
        "supersample": 1, "mesh_resolution": 32, "scan_identities": 2, "scan_expressions": 2},
        avatar={"n_gaussians": 600, "detail_hidden": 16, "densify_from": 1, "densify_every": 2,
                "densify_until": 5, "densify_grad": 1e-6})
    root = write_dataset(P, tmp_path / "ds", progress=False, workers=1)
    part = open_dataset(root).participant(0)
    seq = part.sequence(seqs[0])
    seq.write_tracking("nphm", seq.ground_truth().z_exp, np.zeros(3), seq.ground_truth().head_rotation,
                           seq.ground_truth().head_translation)
    verts = seq.ground_truth_vertices(0)
    pts = verts[np.random.default_rng(0).choice(len(verts), 600, replace=False)]
    z = torch.from_numpy(seq.codes("nphm").z_exp)
    F = ForwardField(z.shape[1], 0, hidden=16, layers=2)
    cams = seq.cameras(part.train_serials)
    imgs = np.stack([seq.load_image(seq.frames[0], c.serial) for c in cams])
    av = create_avatar(pts, F, P.avatar, exp_codes=z, colors=initial_colors(pts, imgs, cams), feature_dim=4,
                       backend="torch")
    ab = _ablation()
    hooks, parts = ab.make_hooks(ab.VARIANTS["full"], av, P, seed=0)
    data = TrainData(part, [seqs[0]])
    res = train(av, data, TrainConfig.from_profile(P, iterations=6), hooks=hooks, progress=False)
    assert parts["adc"].history and av.n_gaussians != 600  # densification ran inside the trainer
    assert parts["laplacian"].nbrs.shape == (av.n_gaussians, P.avatar.knn_k)  # graph followed it
    assert np.isfinite(res.history["loss"]).all()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in parts["cnn"].parameters())


def test_shards_partition_the_runs_and_merge_into_one_table(tmp_path, monkeypatch):
    ab = _ablation()
    variants, seeds = ["vanilla", "features", "full"], [0, 1, 2]
    everything = ab.jobs(variants, seeds)
    shards = [ab.jobs(variants, seeds, f"{i}/2") for i in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(everything)
    assert not set(shards[0]) & set(shards[1])
    assert abs(len(shards[0]) - len(shards[1])) <= 1
    # seed by seed: the first runs hold every variant of seed 0, and both shards get each variant
    assert {v for v, s in everything[:len(variants)]} == set(variants) and {s for v, s in everything[:3]} == {0}
    six = [f"v{k}" for k in range(6)]  # the ablation's count: without the rotation shard 0 gets only even ones
    assert all({v for v, _ in ab.jobs(six, seeds, f"{i}/2")} == set(six) for i in range(2))
    with pytest.raises(SystemExit, match="i must be"):
        ab.jobs(variants, seeds, "2/2")

    monkeypatch.setattr(ab, "RESULTS", tmp_path)

    def run_record(name, seed):
        psnr = 20.0 + seed + (name == "full")
        m = {"psnr": psnr, "ssim": 0.9}
        return {"name": name, "seed": seed, "spec": {}, "metrics": {"novel_view": m, "self_reenactment": {
            "psnr": psnr - 1, "ssim": 0.8}}, "gap_psnr": 1.0, "n_gaussians": 100, "train_seconds": 1.0,
            "eval_seconds": 0.1}

    def write_shard(i, runs, complete=True):
        p = ab.shard_path("toy", f"{i}/2")
        p.parent.mkdir(parents=True, exist_ok=True)
        rec = {"profile": "toy", "command": f"shard {i}", "machine": "m", "complete": complete,
               "date": "2026-11-27T00:00:00+00:00", "seeds": seeds, "iterations": 5, "avatar_overrides": {},
               "eval_frames": None, "variants": {v: {} for v in variants}, "runs": runs, "table": {},
               "paper_quoted": {}, "total_seconds": 10.0 + i, "shard": f"{i}/2"}
        p.write_text(__import__("json").dumps(rec))

    write_shard(0, [run_record(*j) for j in shards[0]])
    write_shard(1, [run_record(*j) for j in shards[1][:-1]], complete=False)
    with pytest.raises(SystemExit, match="not complete"):
        ab.merge("toy")
    # a run stopped for lack of time: --partial keeps what finished and names what did not
    part = ab.merge("toy", partial=True)
    assert part["complete"] is False and part["missing"] == [list(shards[1][-1])]
    assert len(part["runs"]) == len(everything) - 1
    assert "INCOMPLETE" in ab.chapter_table("toy") and f"{shards[1][-1][0]} seed {shards[1][-1][1]}" in ab.chapter_table("toy")
    write_shard(1, [run_record(*j) for j in shards[1][:-1]])
    with pytest.raises(SystemExit, match="missing"):
        ab.merge("toy")
    write_shard(1, [run_record(*j) for j in shards[1]])
    res = ab.merge("toy", command="merge")
    assert [(r["name"], r["seed"]) for r in res["runs"]] == [(v, s) for v in variants for s in seeds]
    assert res["table"]["full"]["novel_view_psnr"]["mean"] == pytest.approx(22.0)
    assert res["table"]["vanilla"]["novel_view_psnr"]["std"] == pytest.approx(1.0)
    assert res["command"] == "shard 0 ; shard 1 ; merge"
    assert (tmp_path / "ablation_toy.md").is_file()


def test_resume_skips_the_runs_a_shard_already_holds(tmp_path, monkeypatch):
    ab = _ablation()
    import npga.avatar.train as train_mod
    from npga.config import get_profile

    monkeypatch.setattr(ab, "RESULTS", tmp_path)
    monkeypatch.setattr(train_mod, "prepare", lambda profile, progress=False: None)
    inputs = ["A"]
    monkeypatch.setattr(ab, "_inputs_fingerprint", lambda profile, prepared: inputs[0])
    trained, budget = [], [2]  # the first sitting has time for two runs

    class OutOfTime(Exception):
        pass

    def fake_train(profile, name, seed, **kw):
        if budget[0] == 0:
            raise OutOfTime
        budget[0] -= 1
        trained.append((name, seed))
        m = {"psnr": 20.0 + seed, "ssim": 0.9}
        return {"name": name, "seed": seed, "spec": {}, "metrics": {"novel_view": m, "self_reenactment": m},
                "gap_psnr": 0.0, "n_gaussians": 10, "train_seconds": 1.0, "eval_seconds": 0.1, "parts": {}}

    monkeypatch.setattr(ab, "train_variant", fake_train)
    P = get_profile("mini")
    variants, seeds = ["vanilla", "features"], [0, 1]
    kw = dict(iterations=7, shard="0/1", name="mini-toy", resume=True)
    with pytest.raises(OutOfTime):
        ab.run(P, seeds, variants, command="first", **kw)
    rec = __import__("json").loads(ab.shard_path("mini-toy", "0/1").read_text())
    assert len(rec["runs"]) == 2 and rec["complete"] is False
    trained.clear()
    budget[0] = 99
    res = ab.run(P, seeds, variants, command="second", **kw)
    assert trained == ab.jobs(variants, seeds)[2:]  # only the runs not yet done
    assert res["complete"] and len(res["runs"]) == 4 and res["command"] == "first ; second"
    with pytest.raises(SystemExit, match="iterations"):
        ab.run(P, seeds, variants, command="third", **{**kw, "iterations": 8})
    assert ab.merge("mini-toy")["complete"]
    # data remade between sittings: refused, unless asked for
    path = ab.shard_path("mini-toy", "0/1")
    rec = __import__("json").loads(path.read_text())
    rec["runs"] = rec["runs"][:1]
    path.write_text(__import__("json").dumps(rec))
    inputs[0] = "B"
    with pytest.raises(SystemExit, match="remade"):
        ab.run(P, seeds, variants, command="fourth", **kw)
    assert len(ab.run(P, seeds, variants, command="fourth", new_inputs=True, **kw)["runs"]) == 4
    assert (tmp_path / "ablation_mini-toy.md").is_file()


def test_claim_verdicts_pair_runs_by_seed(tmp_path, monkeypatch):
    ab = _ablation()
    monkeypatch.setattr(ab, "RESULTS", tmp_path)

    def entry(nv, sr):  # per-seed values for seeds 0, 1, 2
        vals = lambda v: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)), "values": list(v)}  # noqa: E731
        return {"seeds": [0, 1, 2], "novel_view_psnr": vals(nv), "self_reenactment_psnr": vals(sr),
                "gap_psnr": vals([a - b for a, b in zip(nv, sr)])}

    base = [20.0, 21.0, 23.0]  # a large spread between seeds that every variant shares
    nv = [25.0, 26.0, 28.0]
    table = {
        "vanilla": entry(nv, base),
        # +0.3 dB on every seed: far below the 1.5 dB seed std, yet consistent -> significant when paired
        "features": entry(nv, [b + 0.3 + e for b, e in zip(base, (0.01, -0.01, 0.0))]),
        # -0.2 dB on average but noisy: opposite, not significant
        "features+laplacian": entry(nv, [b + 0.3 + e for b, e in zip(base, (-1.0, 0.9, -0.5))]),
        "full": entry(nv, [b + 0.3 + e for b, e in zip(base, (-1.0, 0.9, -0.5))]),  # equal to f+l
    }
    (tmp_path / "ablation_toy.json").write_text(__import__("json").dumps({"table": table}))
    v = {(r["a"], r["b"], r["metric"]): r for r in ab.claim_verdicts("toy")}
    feat = v[("features", "vanilla", "self_reenactment_psnr")]
    assert feat["verdict"] == "reproduced" and feat["p"] < 0.01 and feat["difference"] == pytest.approx(0.3)
    assert feat["ci"][0] < 0.3 < feat["ci"][1] and feat["ci"][1] - feat["ci"][0] < 0.1
    # three claims ran (features, Laplacian, CNN): Holm multiplies the smallest p by 3
    assert feat["p_holm"] == pytest.approx(min(1.0, 3 * feat["p"]))
    lap = v[("features+laplacian", "features", "self_reenactment_psnr")]
    assert lap["verdict"] == "inconclusive" and lap["ci"][0] < -0.1 and lap["ci"][1] > 0.1  # -0.2, noisy
    assert v[("full", "features+laplacian", "self_reenactment_psnr")]["verdict"] == "no effect of interest"
    assert v[("full", "full-3dmm", "self_reenactment_psnr")]["verdict"] == "not run"
    # the same +0.3 dB judged unpaired would vanish in the 1.5 dB seed spread
    assert abs(feat["difference"]) < table["vanilla"]["self_reenactment_psnr"]["std"]
    table["features"] = entry(nv, [b - 0.3 for b in base])  # features consistently worse
    (tmp_path / "ablation_toy.json").write_text(__import__("json").dumps({"table": table}))
    v = {(r["a"], r["b"], r["metric"]): r["verdict"] for r in ab.claim_verdicts("toy")}
    assert v[("features", "vanilla", "self_reenactment_psnr")] == "contradicted"
    # the geometric measure is printed beside the claim, in mm, when the runs stored it
    vals = lambda v: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)), "values": list(v)}  # noqa: E731
    table["vanilla"]["self_reenactment_surface_mm"] = vals([2.0, 2.5, 3.0])
    table["features"]["self_reenactment_surface_mm"] = vals([1.5, 2.0, 2.5])
    (tmp_path / "ablation_toy.json").write_text(__import__("json").dumps({"table": table}))
    text = ab.claims_table("toy")
    assert "contradicted" in text and "| not run |" in text and "Holm" in text
    assert "surface distance -0.50 mm" in text
    cmp = ab.comparison_table("toy", [("features", "vanilla", "features")])
    assert "surface distance, mm" in cmp and "-0.50 [" in cmp and "negative = closer" in cmp
    psnr_only = ab.comparison_table("toy", [("features", "vanilla", "features")],
                                    keys=(("self_reenactment_psnr", "self-reen. PSNR, dB"),))
    assert "-0.30 [" in psnr_only and "surface" not in psnr_only.lower()


def test_holm_adjusts_in_step_down_order_and_keeps_nan():
    ab = _ablation()
    adj = ab.holm([0.01, 0.04, float("nan"), 0.03])
    # m = 3: 0.01 * 3, then max(0.03, 0.03 * 2), then max(0.06, 0.04 * 1)
    assert adj[0] == pytest.approx(0.03) and adj[3] == pytest.approx(0.06) and adj[1] == pytest.approx(0.06)
    assert adj[2] != adj[2]
    assert ab.holm([0.5, 0.9]) == [1.0, 1.0]


def test_ablation_figure_draws_every_seed_and_is_none_without_results(tmp_path, monkeypatch):
    ab = _ablation()
    monkeypatch.setattr(ab, "RESULTS", tmp_path)
    assert ab.ablation_figure("toy") is None
    vals = lambda v: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)), "values": v}  # noqa: E731
    table = {n: {"seeds": [0, 1, 2], "novel_view_psnr": vals([25.0 + k, 25.5, 26.0]),
                 "self_reenactment_psnr": vals([21.0, 21.5 + k, 22.0]), "gap_psnr": vals([4.0, 4.0 - k, 4.0])}
             for k, n in enumerate(["vanilla", "features"])}
    (tmp_path / "ablation_toy.json").write_text(__import__("json").dumps(
        {"table": table, "seeds": [0, 1, 2], "iterations": 10}))
    fig = ab.ablation_figure("toy")
    assert len(fig.axes) == 3
    dots = [ln for ln in fig.axes[0].lines if ln.get_marker() == "o"]
    assert sum(len(ln.get_xdata()) for ln in dots) == 6  # 2 variants x 3 seeds
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["vanilla", "features"]


def test_set_overrides_parse_each_fields_type_and_name_the_bad_one():
    from npga.config import get_profile

    ab = _ablation()
    P = get_profile("mini")
    got = ab.avatar_overrides(P, ["bf16=true", "head_pose=False", "n_gaussians=1500", "densify_grad=3e-4"])
    assert got == {"bf16": True, "head_pose": False, "n_gaussians": 1500, "densify_grad": 3e-4}
    assert ab.avatar_overrides(P, ["bf16=0"]) == {"bf16": False}
    with pytest.raises(SystemExit, match="bf16 is true or false"):
        ab.avatar_overrides(P, ["bf16=maybe"])
    with pytest.raises(SystemExit, match="no field 'nope'"):
        ab.avatar_overrides(P, ["nope=1"])
    with pytest.raises(SystemExit, match="n_gaussians is a int"):
        ab.avatar_overrides(P, ["n_gaussians=many"])
