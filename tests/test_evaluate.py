"""Evaluation: splits use the held-out cameras and sequence, masked scores, grids, cross-reenactment."""

import numpy as np
import pytest
import torch

from npga.avatar.evaluate import (
    cross_reenactment,
    error_grid,
    evaluate_avatar_splits,
    render_split,
    score,
    surface_distance,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from test_train import SEQS, make_avatar, tiny_profile

    from npga.capture.dataset import open_dataset
    from npga.capture.synthetic.writer import write_dataset

    P = tiny_profile()
    root = write_dataset(P, tmp_path_factory.mktemp("eval") / "ds", progress=False, workers=1)
    part = open_dataset(root).participant(0)
    for name in SEQS:
        seq = part.sequence(name)
        seq.write_tracking("nphm", seq.ground_truth().z_exp, np.zeros(3), seq.ground_truth().head_rotation,
                           seq.ground_truth().head_translation)
    return P, part, make_avatar(P, part, 300)


def test_splits_use_heldout_cameras_and_sequence(setup):
    P, part, av = setup
    res = evaluate_avatar_splits(av, part, P, keep_images=True)
    nv, sr = res["novel_view"]["split"], res["self_reenactment"]["split"]
    held = set(part.heldout_serials)
    assert {k[2] for k in nv["keys"]} == held and {k[2] for k in sr["keys"]} == held
    assert {k[0] for k in sr["keys"]} == {P.data.heldout_sequence}
    assert P.data.heldout_sequence not in {k[0] for k in nv["keys"]}
    assert res["novel_view"]["n_images"] == len(nv["keys"]) == nv["renders"].shape[0]
    for split in res.values():
        assert np.isfinite(split["psnr"]) and 0 < split["ssim"] <= 1


def test_masked_score_ignores_background():
    rng = np.random.default_rng(0)
    gt = rng.uniform(size=(2, 16, 12, 3)).astype(np.float32)
    alpha = np.zeros((2, 16, 12), np.float32)
    alpha[:, 4:12, 3:9] = 1.0
    render = gt.copy()
    render[alpha < 0.5] = 1.0 - render[alpha < 0.5]  # wrong only outside the head
    s = score(render, gt, alpha)
    assert s["psnr"] > 60 and s["psnr_full"] < 20


def test_error_grid_layout():
    gt = np.zeros((2, 8, 6, 3), np.float32)
    render = gt.copy()
    render[1] = 0.5
    grid = error_grid(gt, render)
    assert grid.shape == (16, 18, 3)
    assert np.allclose(grid[:8, 12:], grid[0, 12]), "no error: a flat heat map"
    assert grid[8:, 12:].mean() > grid[:8, 12:].mean()
    with pytest.raises(ValueError, match="shape|must both"):
        error_grid(gt, render[:1])


def test_cross_reenactment_follows_the_source_codes(setup):
    P, part, av = setup
    with torch.no_grad():  # give the detail network a visible effect
        av.detail.out.weight.normal_(std=0.05)
    serials = part.heldout_serials[:2]
    frames = cross_reenactment(av, part, "FREE", serials)
    T = len(part.sequence("FREE").frames)
    assert frames.shape == (T, 2, P.data.height, P.data.width, 3)
    same = render_split(av, part, ["FREE"], serials)["renders"].reshape(frames.shape)
    np.testing.assert_allclose(frames, same, atol=1e-6)
    assert np.abs(frames[0] - frames[-1]).max() > 1e-3, "different codes must give different images"


def test_latent_images_and_mouth_region(setup):
    """render_split(latents=True): [RGB | features] whose RGB is the render (before clamping);
    the mouth-interior mask lies inside the face region."""
    P, part, av = setup
    sp = render_split(av, part, ["FREE"], part.heldout_serials[:2], latents=True, max_frames=2)
    lat = sp["latents"]
    assert lat.shape == (*sp["renders"].shape[:3], 3 + av.feature_dim) and lat.dtype == np.float32
    np.testing.assert_allclose(np.clip(lat[..., :3], 0, 1), sp["renders"], atol=1e-6)
    assert "latents" not in render_split(av, part, ["FREE"], part.heldout_serials[:1], max_frames=1)
    assert sp["mouth"].shape == sp["face"].shape and np.all(sp["mouth"] <= sp["face"] + 1e-6)
    s = score(sp["renders"], sp["images"], sp["alphas"], sp["face"], sp["wrinkle"], sp["mouth"])
    assert s["mouth_pixels"] == int((sp["mouth"] > 0.5).sum())
    assert (s["psnr_mouth"] is None) == (s["mouth_pixels"] == 0)


def test_surface_distance_sees_gaussians_pushed_off_the_surface(setup):
    P, part, av = setup
    held = [P.data.heldout_sequence]
    base = surface_distance(av, part, held, max_frames=2)
    assert base["surface_mm"] >= 0 and 0 <= base["off_surface"] <= 1
    g = av.gaussians
    saved = {k: g[k].detach().clone() for k in ("means", "opacities")}
    half = g["means"].shape[0] // 2
    try:
        # move every canonical Gaussian 1 cm along +z: the distance to the true surface grows
        # (by less than 1 cm: on a curved head some land near another part of the surface)
        with torch.no_grad():
            g["means"][:, 2] += 0.01
        moved = surface_distance(av, part, held, max_frames=2)
        assert moved["surface_mm"] > base["surface_mm"] + 2.0
        assert moved["off_surface"] > base["off_surface"] + 0.2
        # faint Gaussians count little: move only half of them, and make those transparent
        with torch.no_grad():
            g["means"].copy_(saved["means"])
            g["means"][:half, 2] += 0.01
            g["opacities"][:half] = -30.0
        faint = surface_distance(av, part, held, max_frames=2)
        assert faint["surface_mm"] < base["surface_mm"] + 0.5
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                g[k].copy_(v)
    res = evaluate_avatar_splits(av, part, P, max_frames=1, geometry=True)
    assert res["self_reenactment"]["surface_mm"] is not None and "surface_mm" in res["novel_view"]
    assert "surface_mm" not in evaluate_avatar_splits(av, part, P, max_frames=1)["novel_view"]


def test_region_masks_are_cached_per_frame_and_camera_and_equal_a_fresh_render(setup):
    """region_masks: the first call renders and stores, the next reads the same masks; a
    damaged file is rendered again; a new camera is added without touching the others."""
    from npga.avatar.evaluate import REGION_CACHE, REGION_KEYS, region_masks

    P, part, _ = setup
    seq = part.sequence("FREE")
    cams = seq.cameras(part.heldout_serials[:2])
    gt = seq.ground_truth()
    fi = len(seq.frames) - 1
    folder = seq.path / REGION_CACHE
    for p in folder.glob(f"frame_{int(seq.frames[fi]):05d}_*.npz"):
        p.unlink()
    fresh = part.synth_head().render_regions(cams, gt.z_exp[fi], gt.untracked[fi])
    first = region_masks(part, seq, cams, fi, gt)
    files = sorted(folder.glob(f"frame_{int(seq.frames[fi]):05d}_*.npz"))
    assert [p.name.split("_", 2)[2] for p in files] == sorted(f"{c.serial}.npz" for c in cams)
    files[0].write_bytes(b"damaged")
    again = region_masks(part, seq, cams, fi)
    for k in REGION_KEYS:
        assert first[k].shape == (2, P.data.height, P.data.width)
        np.testing.assert_array_equal(first[k], fresh[k])
        np.testing.assert_array_equal(again[k], fresh[k])
    assert fresh["face"].sum() > 0
    more = seq.cameras(part.heldout_serials[:3])
    stamp = files[1].stat().st_mtime_ns
    three = region_masks(part, seq, more, fi)
    assert three["face"].shape[0] == 3 and files[1].stat().st_mtime_ns == stamp
