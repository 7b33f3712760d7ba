"""Command line of the ablation (the code lives in :mod:`npga.experiments.ablation`).

    python benchmarks/ablation.py --profile cpu --shard 0/2 --progress   # one shard per core
    python benchmarks/ablation.py --profile cpu --merge                  # the table

Results go to ``benchmarks/results/ablation_{profile}.{json,md}``; see the module's
docstring for the variants and metrics.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from npga.experiments.ablation import main  # noqa: E402

if __name__ == "__main__":
    main()
