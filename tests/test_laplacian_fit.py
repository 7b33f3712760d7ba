"""Chapter 6's isolating experiment (npga.experiments.laplacian_fit) on a toy whose answer is known.

The toy patch of chapter 5's tests (tests/test_detail_fit.py) moved as a whole by the
"jaw" code, observed with noise: per-point features can fit the noise of the few training
expressions, the Laplacian terms average it over neighbours, so they must lower the
held-out error against the exact motion (the effect exists and is found). Observed without
noise there is nothing to average: the terms must not be found to help.
"""

import numpy as np
import pytest
import torch

from npga.config import get_profile
from npga.experiments import detail_fit as D
from npga.experiments import laplacian_fit as LF
from test_detail_fit import ToyHead, shift

CFG = LF.LaplacianFitConfig(n_train=6, n_val=4, n_test=8, steps=600, batch=2, feature_dim=16,
                            sweep=(1.0, 100.0), noise_mm=2.0)


def _run(monkeypatch, cfg, seeds, weights=None):
    monkeypatch.setattr(LF, "synth_head", lambda profile, participant=0: ToyHead(shift))
    return LF.run(get_profile("mini"), seeds, cfg, progress=False, command="test", weights=weights)


def test_noise_goes_to_training_and_validation_not_to_the_test():
    data = D.motion_data(ToyHead(shift), CFG.detail_config())
    val, test = LF.split_validation(data, CFG.n_val, noise_mm=2.0, seed=0)
    assert len(val.z_test) == CFG.n_val and len(test.z_test) == CFG.n_test
    assert torch.equal(test.d_test, data.d_test[CFG.n_val:])  # the test is the exact motion
    assert torch.equal(val.d_train, test.d_train)  # both fit the same noisy observations
    for noisy, exact in ((val.d_train, data.d_train), (val.d_test, data.d_test[:CFG.n_val])):
        rms_mm = 1e3 * float((noisy - exact).pow(2).mean().sqrt())
        assert rms_mm == pytest.approx(2.0, rel=0.1)
    with pytest.raises(ValueError):
        D.train_detail(data, get_profile("mini"), 4, 0, D.DetailFitConfig(steps=1),
                       D.LaplacianWeights(features=1.0, knn=len(data.points)))  # k >= N: no graph


def test_calibration_picks_the_weight_with_the_lowest_validation_error(monkeypatch):
    data = D.motion_data(ToyHead(shift), CFG.detail_config())
    val, _ = LF.split_validation(data, CFG.n_val, CFG.noise_mm, 0)
    errors = {}

    def fake(data, profile, feature_dim, seed, cfg, laplacian=None):
        key = (laplacian.features, laplacian.dynamics)
        errors[key] = {(0.0, 0.0): 5.0, (1.0, 0.0): 4.0, (100.0, 0.0): 4.5,
                       (0.0, 1.0): 6.0, (0.0, 100.0): 5.5}[key]
        return {"heldout_rms_mm": errors[key]}

    monkeypatch.setattr(LF, "fit_errors", fake)
    cal = LF.calibrate(val, get_profile("mini"), CFG, progress=False)
    assert cal["chosen"] == {"features": 1.0, "dynamics": 0.0}  # dynamics: no weight beats none
    assert len(errors) == 5


@pytest.mark.slow
def test_laplacian_found_against_noise_and_not_without(monkeypatch):
    weights = D.LaplacianWeights(features=10.0, dynamics=10.0, knn=8)
    res = _run(monkeypatch, CFG, [0, 1, 2, 3], weights)
    rows = {(r["effect"], r["error (mm RMS)"]): r["_d"] for r in LF.comparison(res)}
    d = rows[(LF.PAIRS[0][2], "held-out, all points")]
    assert d["mean"] < -0.1 and d["p"] < 0.05, d  # found, the paper's way
    assert "the paper's direction" in LF.verdict(res)
    assert "| features+laplacian |" in LF.to_markdown(res)

    clean = _run(monkeypatch, LF.LaplacianFitConfig(**{**CFG.__dict__, "noise_mm": 0.0}), [0, 1, 2], weights)
    d = {(r["effect"], r["error (mm RMS)"]): r["_d"] for r in LF.comparison(clean)}[
        (LF.PAIRS[0][2], "held-out, all points")]
    assert not (d["mean"] < -0.1 and d["p"] < 0.05), d  # nothing to average: no gain found
    fig = LF.figure(res)
    assert len(fig.axes) == 2
    np.testing.assert_allclose(fig.axes[1].lines[-1].get_ydata(),
                               [res["table"][v]["heldout_rms_mm"]["mean"] for v in LF.VARIANTS])
