"""benchmarks/precision_fit.py: bf16 vs fp32 records merged by seed and paired."""

import importlib.util

import pytest

from npga.config import REPO_ROOT


def _module():
    spec = importlib.util.spec_from_file_location("precision_fit", REPO_ROOT / "benchmarks" / "precision_fit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _record(seeds, psnr, secs):
    col = lambda v: {"values": list(v)}  # noqa: E731
    return {"command": f"ablation seeds {seeds}",
            "table": {"full": {"seeds": list(seeds), "novel_view_psnr": col(psnr), "train_seconds": col(secs)}}}


def test_records_merge_by_seed_and_the_difference_is_paired(monkeypatch):
    pf = _module()
    recs = {"cpu-b": _record([0, 1], [27.0, 26.0], [100, 110]), "cpu-b2": _record([2], [25.5], [90]),
            "cpu-f": _record([2, 0, 1], [25.0, 27.5, 26.0], [150, 160, 170])}
    monkeypatch.setattr(pf, "load_results", lambda name: recs.get(name))
    res = pf.compare("cpu", bf16=["b", "b2"], fp32=["f"])
    d = res["rows"]["novel_view_psnr"]["difference"]
    assert d["n"] == 3
    assert d["values"] == pytest.approx([-0.5, 0.0, 0.5])  # seeds 0, 1, 2, each bf16 - fp32
    assert d["mean"] == pytest.approx(0.0)
    assert "novel_view_ssim" not in res["rows"]  # a column the records lack is left out
    md = pf.to_markdown(res)
    assert "| novel-view PSNR (dB) | 27.00, 26.00, 25.50 | 25.00, 27.50, 26.00 |" in md
    assert "fp32 / bf16: 1.60x" in md  # 480 s / 300 s
    with pytest.raises(SystemExit, match="more than one record"):
        pf.compare("cpu", bf16=["b", "b"], fp32=["f"])
    with pytest.raises(SystemExit, match="no record"):
        pf.compare("cpu", bf16=["missing"], fp32=["f"])
