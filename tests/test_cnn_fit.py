"""Chapter 8's isolating experiment (npga.experiments.cnn_fit) on toy latent images whose answer is known.

A latent image whose ground truth is its RGB darkened wherever feature channel 0 is on (a
"mouth" the splats draw too bright but the features mark): a CNN can learn that, so it must
raise the held-out PSNR there (the effect exists and is found). Ground truth = RGB plus
independent pixel noise: nothing a CNN can learn from the latent image, so no gain may be
found.
"""

import numpy as np
import pytest

from npga.config import get_profile
from npga.experiments import cnn_fit as C

H, W, F = 16, 12, 2


def _split(n, rng, truth):
    rgb = rng.uniform(0.3, 0.9, (n, H, W, 3)).astype(np.float32)
    feats = np.zeros((n, H, W, F), np.float32)
    mouth = np.zeros((n, H, W), np.float32)
    for i in range(n):  # a random box per image: the features mark it
        y, x = rng.integers(2, H - 6), rng.integers(2, W - 6)
        mouth[i, y:y + 4, x:x + 4] = 1.0
    feats[..., 0] = mouth
    return {"latents": np.concatenate([rgb, feats], -1), "renders": rgb, "images": truth(rgb, mouth, rng),
            "alphas": np.ones((n, H, W), np.float32), "mouth": mouth}


def dark_mouth(rgb, mouth, rng):
    return (rgb * (1 - 0.8 * mouth[..., None])).astype(np.float32)


def noise(rgb, mouth, rng):
    return np.clip(rgb + rng.normal(0, 0.05, rgb.shape), 0, 1).astype(np.float32)


def _latents(truth, seed=0):
    rng = np.random.default_rng(seed)
    return {"train": _split(48, rng, truth), "novel_view": _split(12, rng, truth),
            "self_reenactment": _split(12, rng, truth)}


CFG = C.CnnFitConfig(steps=300, batch=8, lr=3e-3)


def test_cnn_found_where_the_features_mark_what_the_splats_miss():
    res = C.run(get_profile("mini"), [0, 1, 2], CFG, progress=False, command="test", latents=_latents(dark_mouth))
    rows = {(r["split"], r["region"]): r["_d"] for r in C.comparison(res)}
    assert set(rows) == {(s, r) for s in ("novel view", "self reenactment") for r in ("head", "mouth")}  # no face/wrinkle
    d = rows[("self reenactment", "mouth")]
    assert d["mean"] > 1.0 and d["p"] < 0.05, d  # found, the paper's way
    assert "the paper's direction" in C.verdict(res, "self_reenactment", "mouth")
    assert "region is empty" in C.verdict(res, "self_reenactment", "wrinkle")
    assert "| self reenactment | mouth |" in C.to_markdown(res)
    assert len(C.figure(res).axes[0].get_xticklabels()) == len(rows)


def test_no_gain_found_where_there_is_nothing_to_learn():
    res = C.run(get_profile("mini"), [0, 1, 2], CFG, progress=False, command="test", latents=_latents(noise))
    d = {(r["split"], r["region"]): r["_d"] for r in C.comparison(res)}[("self reenactment", "head")]
    assert not (d["mean"] > 0.1 and d["p"] < 0.05), d


def test_missing_avatar_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("NPGA_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("NPGA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="train_avatar.py"):
        C.render_latents(get_profile("mini"), C.CnnFitConfig())
