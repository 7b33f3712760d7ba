"""Chapter 3's isolating experiment (npga.experiments.linear_fit) on toys whose answer is known.

A rigid rotation of a patch about a hinge moves every point on an arc: one principal
component cannot follow it, a one-dimensional non-linear decoder can (the effect exists and
is found). A translation moves every point on a line: one component fits it exactly, and the
decoder must not be found to be better.
"""

import numpy as np
import pytest

from npga.config import get_profile
from npga.experiments import linear_fit as LF

CFG = LF.LinearFitConfig(n_train=8, n_test=9, hidden=32, steps=800, fit_steps=100, dense=41)
JAW = LF.expression(("jaw_open",), [1.0]).nonzero()[0][0]


class ToyHead:
    """A 10 x 10 patch 6-10 cm in front of a hinge, moved by the 'jaw' code."""

    def __init__(self, motion, seed=0):
        rng = np.random.default_rng(seed)
        u, v = np.meshgrid(np.linspace(0.06, 0.10, 10), np.linspace(-0.02, 0.02, 10))
        self.points = np.column_stack([v.ravel(), np.zeros(100), u.ravel()]) + 1e-3 * rng.normal(size=(100, 3))
        self.motion = motion

    def vertices(self, z_exp):
        return self.motion(self.points, float(z_exp[JAW]))


def rotate(p, a, angle=0.6):
    c, s = np.cos(angle * a), np.sin(angle * a)
    R = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return p @ R.T


def translate(p, a):
    return p + a * np.array([0.0, -0.02, 0.01])


def _run(monkeypatch, motion, seeds):
    monkeypatch.setattr(LF, "identity_head", lambda profile, seed: ToyHead(motion, seed))
    return LF.run(get_profile("mini"), seeds, CFG, progress=False, command="test")


def test_linear_algebra_helpers():
    head = ToyHead(rotate)
    scans = LF.make_scans(head, CFG, 0)
    assert scans.train.shape == (CFG.n_train + 1, 3 * scans.n_moving)
    assert np.allclose(scans.train[0], head.points.ravel()) and np.allclose(scans.train[1], rotate(head.points, 1).ravel())
    mean, basis = LF.pca_basis(scans.train, 2)
    assert np.allclose(basis @ basis.T, np.eye(2), atol=1e-10)
    # a basis of every training offset reconstructs the training scans exactly
    mean, basis = LF.pca_basis(scans.train, len(scans.train))
    assert LF._rms_mm(LF.fit_linear(mean, basis, scans.train), scans.train).max() < 1e-9
    # an arc needs more than one component for 0.1 mm, a line needs one
    assert LF.components_for(scans.dense) >= 2
    assert LF.components_for(LF.make_scans(ToyHead(translate), CFG, 0).dense) == 1
    with pytest.raises(ValueError, match="unknown expression parameter 'jaw'"):
        LF.expression(("jaw",), [1.0])
    with pytest.raises(ValueError, match="move fewer than 3 vertices"):
        LF.make_scans(ToyHead(lambda p, a: p), CFG, 0)


@pytest.mark.slow
def test_linearity_found_for_a_rotation_and_not_for_a_translation(monkeypatch):
    res = _run(monkeypatch, rotate, [0, 1, 2])
    d = LF.paired_difference(res["table"], "linear", "nonlinear", "test_rms_mm")
    assert d["mean"] > 0.2 and d["p"] < 0.05, d  # the 3DMM misses the arc by tenths of a mm
    assert "the linear model is worse" in LF.verdict(res)
    # twice the columns close most of the gap
    assert res["table"]["linear-2d"]["test_rms_mm"]["mean"] < 0.5 * res["table"]["linear"]["test_rms_mm"]["mean"]
    md = LF.to_markdown(res)
    assert "held-out scans, all amplitudes" in md and "Command: `test`" in md

    res = _run(monkeypatch, translate, [0, 1, 2])
    lin = res["table"]["linear"]["test_rms_mm"]["values"]
    assert max(lin) < 1e-6  # a line is fitted exactly by one component
    d = LF.paired_difference(res["table"], "linear", "nonlinear", "test_rms_mm")
    assert d["mean"] <= 0  # the decoder cannot beat an exact fit
    assert "the linear model is worse" not in LF.verdict(res)


def test_command_line_overrides_the_config_and_names_the_record(monkeypatch):
    from npga.experiments import ablation

    seen, written = {}, {}
    monkeypatch.setattr(LF, "run", lambda P, seeds, cfg, command: seen.update(cfg=cfg, command=command) or {})
    monkeypatch.setattr(LF, "to_markdown", lambda res: "md")
    monkeypatch.setattr(ablation, "write_table", lambda profile, res, experiment, markdown: written.update(
        profile=profile, experiment=experiment))
    LF.main(["--profile", "mini", "--seeds", "0", "--set", "params=('jaw_open','blink_l')", "n_train=3",
             "--record", "rotations"])
    assert seen["cfg"].params == ("jaw_open", "blink_l") and seen["cfg"].n_train == 3
    assert written == {"profile": "mini", "experiment": "linear_fit-rotations"}
    assert "--record rotations" in seen["command"]
    with pytest.raises(SystemExit):
        LF.main(["--profile", "mini", "--set", "no_such_field=1"])
    with pytest.raises(SystemExit):
        LF.main(["--profile", "mini", "--set", "n_train=three"])
