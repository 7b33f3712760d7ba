"""Make the README's figure: one SynthHead frame from all 16 cameras (mini profile).

    python data_scripts/make_readme_figure.py [--profile mini] [--out docs/figures/overview.png]

Needs the profile's dataset (``make data``); writes the PNG atomically.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from npga.capture.cameras import HELDOUT_SERIALS  # noqa: E402
from npga.capture.dataset import open_dataset  # noqa: E402
from npga.config import get_profile  # noqa: E402
from npga.io import atomic_write  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="mini")
    ap.add_argument("--out", default="docs/figures/overview.png")
    args = ap.parse_args()
    P = get_profile(args.profile)
    part = open_dataset(P.data_root).participant(0)
    seq = part.sequence("EXP-8-jaw-1" if "EXP-8-jaw-1" in part.sequences else part.sequences[0])
    frame = seq.frames[len(seq.frames) // 2]
    fig, axes = plt.subplots(2, 8, figsize=(12, 4.2))
    for ax, serial in zip(axes.ravel(), seq.serials):
        ax.imshow(seq.load_image(frame, serial))
        held = serial in HELDOUT_SERIALS
        ax.set_title(f"{serial}{' (held out)' if held else ''}", fontsize=7, color="C3" if held else "k")
        ax.axis("off")
    fig.suptitle(f"SynthHead: participant 0, {seq.name}, one frame from NeRSemble's 16 camera serials "
                 f"({P.data.width}x{P.data.height}, profile {P.name})", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    with atomic_write(args.out) as f:
        f.write(buf.getvalue())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
