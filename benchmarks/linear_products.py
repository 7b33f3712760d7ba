"""The MLPs' matrix products on oneDNN (npga.headmodels.linear) against F.linear (MKL), side by side.

For the layer shapes the book's CPU profiles train (F's tangent slabs and primal layers at
8000 Gaussians, G's hidden layer, NPHM's SDF layer on a batch of samples), one thread:
the forward product, the backward (input and weight gradients) and both together, each
through :func:`npga.headmodels.linear.linear` and through ``torch.nn.functional.linear``
on the same tensors. The two alternate over ``--rounds``; per shape and direction the
median of the rounds' best-of-``--reps`` times. Result:
``benchmarks/results/linear_products.{json,md}``.

    python benchmarks/linear_products.py
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as Fn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from npga.config import REPO_ROOT  # noqa: E402
from npga.headmodels import linear as L  # noqa: E402
from npga.io import atomic_write, machine_info, write_json  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results"
# (what, x shape, weight (out, in)) as in the cpu profile: F 4 x 128 with 2 Fourier
# octaves and 16 + 16 code dims at 8000 Gaussians (tangents 3 x 8000 rows), G 3 x 96,
# NPHM's f 5 x 128 on 4096 samples
SHAPES = [
    ("F tangent slabs, hidden layer", (3, 8000, 128), (128, 128)),
    ("F primal, skip layer", (8000, 175), (128, 175)),
    ("F primal, first layer", (8000, 47), (128, 47)),
    ("G hidden layer", (8000, 96), (96, 96)),
    ("NPHM f hidden layer", (4096, 128), (128, 128)),
]


def best_of(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def measure(lin, x: torch.Tensor, w: torch.Tensor, reps: int) -> dict[str, float]:
    """Seconds of the forward product, of the backward, and of both, through ``lin``."""
    up = torch.ones(*x.shape[:-1], w.shape[0])

    def forward():
        with torch.no_grad():
            lin(x, w)

    def both():
        gx, gw = torch.autograd.grad(lin(x, w), (x, w), up)

    t_fwd, t_both = best_of(forward, reps), best_of(both, reps)
    return {"forward": t_fwd, "backward": max(t_both - t_fwd, 0.0), "forward + backward": t_both}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    if not L.ONEDNN:
        sys.exit("oneDNN's products are not in use here (not x86, no oneDNN, or NPGA_ONEDNN_LINEAR=0)")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    rows = []
    for what, xs, ws in SHAPES:
        x = torch.randn(*xs, generator=g).requires_grad_()
        w = torch.randn(*ws, generator=g).requires_grad_()
        times = {"onednn": [], "torch": []}
        for _ in range(args.rounds):
            times["onednn"].append(measure(L.linear, x, w, args.reps))
            times["torch"].append(measure(Fn.linear, x, w, args.reps))
        flop = 2.0 * x[..., 0].numel() * ws[0] * ws[1]  # one product
        for part, n_products in (("forward", 1), ("backward", 2), ("forward + backward", 3)):
            t_new = statistics.median(r[part] for r in times["onednn"])
            t_old = statistics.median(r[part] for r in times["torch"])
            rows.append({"layer": what, "x": list(xs), "weight": list(ws), "part": part,
                         "onednn_ms": 1e3 * t_new, "torch_ms": 1e3 * t_old,
                         "onednn_gflops": n_products * flop / t_new / 1e9,
                         "torch_gflops": n_products * flop / t_old / 1e9, "speedup": t_old / t_new})
            print(f"{what:32s} {part:18s} torch {1e3 * t_old:7.2f} ms  onednn {1e3 * t_new:7.2f} ms  "
                  f"{t_old / t_new:.2f}x")
    res = {"benchmark": "MLP layer products, npga.headmodels.linear (oneDNN) vs F.linear, side by side",
           "command": "python benchmarks/linear_products.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
           "torch": torch.__version__, "threads": 1, "rounds": args.rounds, "reps": args.reps, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "linear_products.json", res)
    lines = ["# MLP layer products: oneDNN (`npga.headmodels.linear`) vs `F.linear` (MKL)", "",
             f"`{res['command'].strip()}` on {res['date']}; {res['machine'].get('cpu', '')}; torch "
             f"{torch.__version__}; 1 thread; median over {args.rounds} alternating rounds of the best of "
             f"{args.reps} calls.", "",
             "| layer | x | weight | part | F.linear ms | oneDNN ms | F.linear GFLOP/s | oneDNN GFLOP/s | speed-up |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['layer']} | {' x '.join(map(str, r['x']))} | {' x '.join(map(str, r['weight']))} "
                     f"| {r['part']} | {r['torch_ms']:.2f} | {r['onednn_ms']:.2f} | {r['torch_gflops']:.0f} "
                     f"| {r['onednn_gflops']:.0f} | {r['speedup']:.2f}x |")
    with atomic_write(RESULTS / "linear_products.md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
