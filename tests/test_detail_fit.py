"""Chapter 5's isolating experiment (npga.experiments.detail_fit) on toy heads whose answer is known.

A flat patch of points whose lower half jumps when the "jaw" opens: a sharp motion that a
position-only G cannot follow at the line and per-point features can (the effect exists and
must be found). The same patch translated as a whole: nothing for per-point features to add,
so the paired difference must stay small and not significant (no effect, and none found).
(A smooth ramp is *not* a clean null: there the features still speed up an underfitted G, a
capacity effect chapter 5 names.)
"""

import numpy as np
import pytest

from npga.config import get_profile
from npga.experiments import detail_fit as D

SPACING = 0.005


class ToyHead:
    """The two SynthHead members the experiment reads: part labels and vertices(z)."""

    def __init__(self, motion):
        g = np.arange(-8, 9) * SPACING
        x, y = np.meshgrid(g, g + 0.0025)  # no point exactly on the line y = 0
        self.v0 = np.stack([x.ravel(), y.ravel(), np.full(x.size, 0.05)], 1)
        self.part_of_vertex = np.zeros(len(self.v0), dtype=int)  # all "skin"
        self.motion = motion

    def vertices(self, z):
        return self.v0 + self.motion(self.v0, np.asarray(z))


def step(v, z):  # the lower half moves down by up to 1 cm with z[0] (like a lip)
    d = np.zeros_like(v)
    d[:, 1] = -0.01 * z[0] * (v[:, 1] < 0)
    return d


def shift(v, z):  # the whole patch moves together
    d = np.zeros_like(v)
    d[:, 1] = -0.01 * z[0]
    return d


CFG = D.DetailFitConfig(n_train=16, n_test=8, steps=800, batch=2, point_stride=1)


def _run(head, monkeypatch, seeds):
    monkeypatch.setattr(D, "synth_head", lambda profile, participant=0: head)
    return D.run(get_profile("mini"), seeds, CFG, progress=False, command="test")


def test_sharp_points_are_the_ones_next_to_the_jump():
    data = D.motion_data(ToyHead(step), CFG)
    assert int(data.sharp.sum()) == pytest.approx(0.1 * len(data.points), abs=2)
    y = data.points[data.sharp, 1].numpy()
    assert np.all(np.abs(y) < 2 * SPACING), y  # only the rows either side of the line
    with pytest.raises(ValueError, match="too few"):
        D.motion_data(ToyHead(step), D.DetailFitConfig(point_stride=200))


@pytest.mark.slow
def test_features_found_where_motion_jumps_and_not_where_it_is_smooth(monkeypatch):
    res = _run(ToyHead(step), monkeypatch, [0, 1, 2, 3, 4])
    rows = {r["error (mm RMS)"]: r["_d"] for r in D.comparison(res)}
    sharp = rows["held-out, sharp points"]
    assert sharp["mean"] < -0.2 and sharp["p"] < 0.05, sharp  # found, the paper's way
    assert "the paper's direction" in D.verdict(res)
    assert "| held-out, sharp points |" in D.to_markdown(res)

    rigid = _run(ToyHead(shift), monkeypatch, [0, 1, 2])
    d = {r["error (mm RMS)"]: r["_d"] for r in D.comparison(rigid)}["held-out, all points"]
    assert abs(d["mean"]) < 0.1 and d["p"] > 0.05, d  # no effect, and none found
    assert "not significant" in D.verdict(rigid, "heldout_rms_mm")
