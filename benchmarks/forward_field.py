#!/usr/bin/env python
"""Time the distilled forward field F against the backward-field baselines per 100k points.

    python benchmarks/forward_field.py --profile mini [--head nphm|analytic] [--points 100000]

Loads (or distills) the profile's prior, draws ``--points`` canonical queries on the
held-out identity and held-out expressions, and times on this machine's CPU (or the
profile's device): the naive inversion (1 evaluation of B), Newton root finding of B (the
accurate reference) and F (1 evaluation of an MLP of B's size), plus moving that many
Gaussians with :func:`npga.deformation.deform_gaussians` (means and covariances). The
cycle errors come along. The result, with the command, the machine and its load average
(other processes share the cores), goes to ``benchmarks/results/forward_field.json``
(``--out`` to change), one entry per (profile, head model, points, threads).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import torch  # noqa: E402

from npga.config import PROFILE_NAMES, REPO_ROOT, get_profile  # noqa: E402
from npga.deformation import deform_gaussians  # noqa: E402
from npga.deformation.compare import (  # noqa: E402
    compare_inversions,
    deforming_mask,
    error_summary,
    heldout_queries,
)
from npga.deformation.store import HEAD_MODELS, get_head_model, head_codes, load_or_distill  # noqa: E402
from npga.io import machine_info, write_json  # noqa: E402


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=PROFILE_NAMES, default=None)
    ap.add_argument("--head", choices=HEAD_MODELS, default="nphm")
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3, help="best of N for the fast methods")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "forward_field.json")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    P = get_profile(args.profile)
    load_before = _load()
    head = get_head_model(P, args.head, progress=False)
    field, meta = load_or_distill(P, args.head, head=head, progress=False)
    id_codes, exp_codes = head_codes(head)
    split = meta["split"]
    held_ids = split["heldout_ids"]
    x_c, z_id, z_exp, _ = heldout_queries(
        head, id_codes[held_ids], exp_codes[held_ids][:, split["heldout_exps"]], args.points,
        noise=P.deform.sample_noise, seed=1,
    )
    moving = deforming_mask(head.backward, x_c, z_id, z_exp)
    res = compare_inversions(head.backward, field, x_c, z_id, z_exp, repeats=args.repeats)

    # Moving Gaussians: means through F, covariances through its Jacobian.
    g = torch.Generator().manual_seed(0)
    quats = torch.randn(args.points, 4, generator=g)
    log_scales = torch.full((args.points, 3), -6.0)
    timings = {}
    for jac in ("autograd", "fd"):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with torch.no_grad():
                deform_gaussians(field, x_c, quats, log_scales, z_exp, z_id if field.id_dims else None, jacobian=jac)
            best = min(best, time.perf_counter() - t0)
        timings[jac] = best
    per100k = 1e5 / args.points
    methods = {
        name: {
            "seconds_per_100k": r["seconds"] * per100k,
            "cycle_error_mm": error_summary(r["cycle_mm"]),
            "cycle_error_mm_deforming_points": error_summary(r["cycle_mm"][moving]),
        }
        for name, r in res.items()
    }
    root = res["root finding"]["extra"]
    methods["root finding"]["newton_iterations"] = root.iterations
    methods["root finding"]["converged_fraction"] = root.converged.float().mean().item()
    speedup = methods["root finding"]["seconds_per_100k"] / methods["distilled F"]["seconds_per_100k"]
    result = {
        "command": "python benchmarks/forward_field.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "profile": P.name,
        "head_model": args.head,
        "points": args.points,
        "queries": f"held-out identity x held-out expressions, canonical surface + {P.deform.sample_noise * 1e3:g} mm jitter",
        "deforming_points": "backward offset at the canonical point > 0.5 mm",
        "deforming_fraction": moving.float().mean().item(),
        "field": field.hparams,
        "distillation_seconds": meta["history"]["seconds"],
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": _load(),
        "methods": methods,
        "speedup_F_vs_root_finding": speedup,
        "deform_gaussians_seconds_per_100k": {k: v * per100k for k, v in timings.items()},
    }
    # One file, one entry per (profile, head model, points, threads): reruns replace theirs.
    key = lambda r: (r["profile"], r["head_model"], r["points"], r["machine"]["torch_threads"])  # noqa: E731
    runs = []
    if args.out.is_file():
        try:
            runs = json.loads(args.out.read_text()).get("runs", [])
        except (ValueError, AttributeError):
            runs = []
    runs = [r for r in runs if key(r) != key(result)] + [result]
    write_json(args.out, {"benchmark": "forward field F vs backward-field inversion (chapter 4)", "runs": runs})
    for name, m in methods.items():
        e = m["cycle_error_mm"]
        d = m["cycle_error_mm_deforming_points"]
        print(f"{name:>13}: {m['seconds_per_100k']:.3f} s / 100k points; cycle error median {e['median']:.4f} mm, "
              f"mean {e['mean']:.4f} mm, p95 {e['p95']:.4f} mm; deforming points: median {d['median']:.4f} mm")
    print(f"F is {speedup:.1f}x faster than root finding; deform_gaussians per 100k: "
          + ", ".join(f"{k} {v * per100k:.3f} s" for k, v in timings.items()))
    print(f"load average before/after: {load_before} / {result['load_average_after']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
