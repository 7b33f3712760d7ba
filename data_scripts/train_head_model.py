#!/usr/bin/env python
"""Train the book's head models (linear 3DMM, NPHM and its expression-size sweep) for a
profile, evaluate them, and track the profile's dataset with both (chapter 3).

    python data_scripts/train_head_model.py --profile mini
    python data_scripts/train_head_model.py --profile cpu --force
    python data_scripts/train_head_model.py --profile mini --no-track

Generates the synthetic dataset first when it is missing. Skips what is already done
(models in ``cache_root/headmodels`` made from the current dataset; tracking files of
every sequence) unless ``--force``. Prints what it did and how long it took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from npga.config import PROFILE_NAMES, get_profile  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=PROFILE_NAMES, default=None, help="default: $NPGA_PROFILE or mini")
    ap.add_argument("--force", action="store_true", help="retrain and retrack even if done")
    ap.add_argument("--no-track", action="store_true", help="train only; do not track the dataset")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)

    import torch

    from npga.headmodels.fitting import track_dataset, tracked
    from npga.headmodels.store import models_dir, train_head_models, trained

    if args.threads:
        torch.set_num_threads(args.threads)
    P = get_profile(args.profile)
    cfg = P.head_model
    print(
        f"profile {P.name}: 3DMM and NPHM with id {cfg.id_dims} / exp {cfg.exp_dims} dims "
        f"(sweep {cfg.exp_dims_sweep}), NPHM {cfg.layers}x{cfg.hidden}, {cfg.iterations}+"
        f"{cfg.deform_iterations} steps -> {models_dir(P)}"
    )
    start = time.perf_counter()
    if args.force or not trained(P):
        info = train_head_models(P, progress=not args.quiet)
        secs = info["seconds"]
        print("trained in " + ", ".join(f"{k} {v:.1f} s" for k, v in secs.items()))
        ev = info.get("eval", {})
        for d, rows in ev.get("heldout_expressions", {}).items():
            print(
                f"  held-out expressions, exp dims {d}: Chamfer 3DMM registered "
                f"{rows['3dmm_registered']['mean']:.2f} mm, 3DMM points {rows['3dmm_points']['mean']:.2f} mm, "
                f"NPHM points {rows['nphm_points']['mean']:.2f} mm"
            )
        hid = ev.get("heldout_identities")
        if hid:
            print(
                f"  held-out identities: Chamfer 3DMM points {hid['3dmm_points']['mean']:.2f} mm, "
                f"NPHM points {hid['nphm_points']['mean']:.2f} mm"
            )
    else:
        print("head models already trained for this dataset: nothing to do (--force to redo)")
    if not args.no_track:
        if args.force or not tracked(P):
            t = time.perf_counter()
            rep = track_dataset(P, progress=not args.quiet)
            print(
                f"tracked in {time.perf_counter() - t:.1f} s: {rep['mean_points_per_frame']:.0f} COLMAP points "
                f"per frame; mean distance of GT surface to the tracked surface: 3DMM "
                f"{rep['mean_error_mm_3dmm']:.2f} mm, NPHM {rep['mean_error_mm_nphm']:.2f} mm"
            )
        else:
            rep = json.loads((models_dir(P) / "tracking.json").read_text())
            print("dataset already tracked: nothing to do")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
