"""Train the chapter-5 avatars of a profile (vanilla and +features) and store them.

    python data_scripts/train_avatar.py --profile mini
    python data_scripts/train_avatar.py --profile mini --only features

is ``python -m npga.avatar.train`` run twice: ``--features 0 --name vanilla`` and
``--features F --name features`` (F = the profile's ``AvatarConfig.feature_dim``).
Finished runs are skipped; interrupted ones resume from their checkpoints.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from npga.avatar.train import avatar_dir, load_or_train_avatar  # noqa: E402
from npga.config import get_profile  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default=None)
    ap.add_argument("--participant", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the CPU rasterizer is fastest on 1)")
    ap.add_argument("--only", choices=("vanilla", "features"), default=None,
                    help="train one of the two (make data runs one process per core)")
    args = ap.parse_args()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    P = get_profile(args.profile)
    for name, fd in (("vanilla", 0), ("features", P.avatar.feature_dim)):
        if args.only not in (None, name):
            continue
        t0 = time.perf_counter()
        _, res = load_or_train_avatar(P, name, feature_dim=fd, participant=args.participant)
        m = res.get("metrics", {})
        print(f"{name}: feature_dim {fd}, trained in {res['train_seconds']:.1f} s "
              f"(this call {time.perf_counter() - t0:.1f} s) -> {avatar_dir(P, name)}")
        for split, v in m.items():
            print(f"  {split}: PSNR {v['psnr']:.2f} dB  SSIM {v['ssim']:.4f} (head region)")


if __name__ == "__main__":
    main()
