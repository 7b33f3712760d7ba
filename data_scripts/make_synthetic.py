#!/usr/bin/env python
"""Generate the synthetic SynthHead capture for a profile (the book's default data).

    python data_scripts/make_synthetic.py --profile mini
    python data_scripts/make_synthetic.py --profile cpu --out /data/synth --participants 4 --force

Skips a dataset that is already complete and made with the same settings (see
``dataset.json``); redoes an incomplete or different one; ``--force`` always redoes.
Prints what it did, the time it took and the size on disk.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from npga.capture.synthetic.writer import (  # noqa: E402
    dataset_size,
    dataset_spec,
    dataset_status,
    ensure_dataset,
)
from npga.config import PROFILE_NAMES, get_profile  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--profile", choices=PROFILE_NAMES, help="default: $NPGA_PROFILE or mini")
    ap.add_argument("--out", type=Path, help="dataset root (default: the profile's data_root)")
    ap.add_argument("--participants", type=int, help="number of participants (ids 0..N-1)")
    ap.add_argument("--seed", type=int, default=None, help="default: the profile's seed")
    ap.add_argument("--force", action="store_true", help="regenerate even if complete")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    P = get_profile(args.profile)
    root = args.out if args.out is not None else P.data_root
    spec = dataset_spec(P, args.participants, args.seed)
    status = dataset_status(root, spec)
    d = P.data
    print(
        f"profile {P.name}: {len(spec['participants'])} participants x {len(d.sequences)} "
        f"sequences x {d.frames_per_sequence} frames x {len(spec['cameras'])} cameras at "
        f"{d.width}x{d.height}, {d.scan_identities}x{d.scan_expressions} scans -> {root}"
    )
    if status == "complete" and not args.force:
        size, files = dataset_size(root)
        print(
            f"already complete (seed {spec['seed']}): nothing to do; "
            f"{files} files, {size / 1e6:.1f} MB"
        )
        return 0
    print(f"dataset is {status}{' (forced)' if args.force else ''}: generating")
    start = time.perf_counter()
    ensure_dataset(
        P,
        root,
        progress=not args.quiet,
        participants=args.participants,
        seed=args.seed,
        workers=args.workers,
        force=args.force,
    )
    seconds = time.perf_counter() - start
    size, files = dataset_size(root)
    print(f"wrote {files} files, {size / 1e6:.1f} MB in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
