#!/usr/bin/env python
"""Distill the forward-field prior F of a profile from its head model's backward field.

    python data_scripts/distill_prior.py --profile mini
    python data_scripts/distill_prior.py --profile cpu --head analytic --force

Writes ``<cache_root>/forward_field_<head>.pt`` (``npga.deformation.store``). Skips the
work when a prior distilled from the same head model (same weights) is already there;
``--force`` always redistills. With ``--head nphm`` (default) the profile's NPHM is loaded,
or trained first when missing (``npga.headmodels.load_or_train``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import torch  # noqa: E402

from npga.config import PROFILE_NAMES, get_profile  # noqa: E402
from npga.deformation.store import HEAD_MODELS, load_or_distill  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=PROFILE_NAMES, default=None, help="default: $NPGA_PROFILE or mini")
    ap.add_argument("--head", choices=HEAD_MODELS, default="nphm", help="backward field to distill from")
    ap.add_argument("--force", action="store_true", help="redistill even if a matching prior exists")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: small MLPs gain little from more, and on a busy "
        "machine extra threads can make training many times slower)",
    )
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    P = get_profile(args.profile)
    d = P.deform
    print(
        f"profile {P.name}: F {d.layers} x {d.hidden}, {d.iterations} steps x {d.samples_per_step} "
        f"samples, distilled from {args.head}"
    )
    start = time.perf_counter()
    field, meta = load_or_distill(P, args.head, progress=not args.quiet, force=args.force)
    took = time.perf_counter() - start
    hist = meta["history"]
    if meta["loaded"]:
        print(f"up to date: {meta['path']} (head model {meta['fingerprint']}); nothing to do")
    else:
        print(
            f"distilled in {took:.1f} s ({hist['seconds']:.1f} s training); final batch cycle error "
            f"{hist['loss_mm'][-1]:.3f} mm; wrote {meta['path']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
