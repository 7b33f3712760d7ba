"""CPU cost of npga.splatting.render.rasterize (torch backend): forward + backward time and peak memory.

Scene ("head blob"): N Gaussians on the surface of an ellipsoid with semi-axes
8 x 11 x 9.5 cm (a head's width, height and depth) centred at the origin, pushed off the
surface by N(0, 3 mm) along the normal; per-axis scales log-uniform in [0.5, 1.5] x the
mean spacing sqrt(area / N); random rotations; opacities uniform in [0.1, 0.95]; random
RGB colours. One camera 1 m in front of the face, K = npga.capture.cameras.intrinsics_for(W, H)
(focal 2.6 H, the synthetic NeRSemble rig's), so the head fills about 60 % of the height.
Loss: sum of image and alpha, each multiplied by a fixed random weight image.

Each case runs in a fresh subprocess (peak RSS = ru_maxrss of that process, which also
counts the interpreter and torch, about 0.3-0.4 GB; the baseline before the first render
is recorded too). Time: median of ``--repeats`` forward+backward runs after 2 warm-ups,
``torch.set_num_threads(2)``.

    python benchmarks/render_cpu.py            # all cases, writes benchmarks/results/render_cpu.{json,md}
    python benchmarks/render_cpu.py --quick    # fewer repeats
    python benchmarks/render_cpu.py --threads 1,2   # both thread counts
    python benchmarks/render_cpu.py --case 20000 128 192   # one case, prints JSON
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from npga.capture.cameras import intrinsics_for, look_at  # noqa: E402
from npga.io import atomic_write, machine_info, write_json  # noqa: E402
from npga.splatting.render import rasterize  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
CASES = [(n, w, h) for (w, h) in ((128, 192), (256, 384)) for n in (5000, 20000, 50000)]
MEMORY_CASE = (100000, 128, 192)  # the memory requirement: 100k Gaussians at 128 x 192
HEAD_AXES = (0.08, 0.11, 0.095)  # ellipsoid semi-axes in metres
TARGET_S = 0.25  # recorded target for 20k Gaussians at 128 x 192 (forward + backward)


def head_blob(n: int, width: int, height: int, seed: int = 0, device: str = "cpu", dtype=torch.float32):
    """The benchmark scene (see the module docstring): Gaussian tensors and one camera."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.tensor(HEAD_AXES, dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    surface = d * axes  # a point on the ellipsoid for each direction
    normal = torch.nn.functional.normalize(surface / axes**2, dim=-1)
    means = surface + normal * 0.003 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    a, b, c = HEAD_AXES
    p = 1.6075  # Knud Thomsen's approximation of the ellipsoid's area
    area = 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    spacing = math.sqrt(area / n)
    scales = spacing * torch.exp(torch.empty(n, 3, dtype=torch.float64).uniform_(math.log(0.5), math.log(1.5), generator=g))
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    opacities = torch.empty(n, dtype=torch.float64).uniform_(0.1, 0.95, generator=g)
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    viewmats = torch.tensor(look_at([0.0, 0.0, 1.0], [0.0, 0.0, 0.0]))[None]
    Ks = torch.tensor(intrinsics_for(width, height))[None]
    out = [means, quats, scales, opacities, colors, viewmats, Ks]
    return [t.to(device=device, dtype=dtype) for t in out]


def count_pairs(scene, width: int, height: int) -> int:
    """Number of (pixel, Gaussian) pairs the torch backend composites (after both stops)."""
    from npga.splatting import render_torch as rt

    means, quats, scales, opacities, colors, viewmats, Ks = scene
    proj = rt.project_gaussians(means, quats, scales, viewmats, Ks, width, height, opacities=opacities)
    vid = rt._visible(proj.radii, proj.depths)
    N = means.shape[0]
    pairs = rt._build_pairs(
        proj.means2d.reshape(-1, 2)[vid], proj.conics.reshape(-1, 3)[vid], opacities[vid % N],
        proj.radii.reshape(-1, 2)[vid], vid // N, width, height,
    )
    return int(pairs.gid.numel())


def run_case(n: int, width: int, height: int, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    scene = head_blob(n, width, height)
    params = [t.clone().requires_grad_(True) for t in scene[:5]]
    viewmats, Ks = scene[5:]
    g = torch.Generator().manual_seed(1)
    w_img = torch.randn(1, height, width, 3, generator=g)
    w_alpha = torch.randn(1, height, width, 1, generator=g)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)

    fwd, bwd = [], []
    for i in range(repeats + 2):
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        img, alpha, meta = rasterize(*params, viewmats, Ks, width, height, backend="torch")
        t1 = time.perf_counter()
        meta["means2d"].retain_grad()
        ((img * w_img).sum() + (alpha * w_alpha).sum()).backward()
        t2 = time.perf_counter()
        if i >= 2:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    total = [a + b for a, b in zip(fwd, bwd)]
    with torch.no_grad():
        n_pairs = count_pairs(scene, width, height)
        visible = int((meta["radii"] > 0).all(-1).sum())
    return {
        "n_gaussians": n,
        "width": width,
        "height": height,
        "visible": visible,
        "pairs": n_pairs,
        "forward_s": statistics.median(fwd),
        "backward_s": statistics.median(bwd),
        "total_s": statistics.median(total),
        "total_min_s": min(total),
        "repeats": repeats,
        "threads": threads,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_render_mib": rss_before,
        "mean_alpha": float(alpha.detach().mean()),
    }


def write_markdown(path: Path, result: dict) -> None:
    m = result["machine"]
    lines = [
        "# Torch rasterizer on the CPU (forward + backward)",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, threads {result['threads']}, "
        f"{result['date']}. Load average before / after: "
        f"{result['load_before'][0]:.2f} / {result['load_after'][0]:.2f} "
        "(other jobs were running if these exceed ~0.5).",
        "",
        result["scene"],
        "",
        "| threads | Gaussians | image | visible | pairs | forward s | backward s | total s (median) "
        "| total s (min) | peak RSS MiB | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["cases"]:
        lines.append(
            f"| {c['threads']} | {c['n_gaussians']} | {c['width']}x{c['height']} | {c['visible']} | {c['pairs']} | "
            f"{c['forward_s']:.3f} | {c['backward_s']:.3f} | {c['total_s']:.3f} | {c['total_min_s']:.3f} "
            f"| {c['peak_rss_mib']:.0f} | {c.get('load_1min', float('nan')):.1f} |"
        )
    lines += ["", f"Target: {result['target']}", "", f"Command: `{result['command']}`", ""]
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", nargs=3, type=int, metavar=("N", "W", "H"), help="run one case, print JSON")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", default="2", help="torch threads; a comma list runs each (e.g. 1,2)")
    ap.add_argument("--quick", action="store_true", help="3 repeats")
    ap.add_argument("--out", type=Path, default=RESULTS / "render_cpu.json")
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats

    if args.case:
        print(json.dumps(run_case(*args.case, repeats=repeats, threads=int(args.threads))))
        return

    load_before = os.getloadavg()
    threads = [int(t) for t in str(args.threads).split(",")]
    cases = []
    for t in threads:
        for n, w, h in CASES + [MEMORY_CASE]:
            reps = max(1, repeats // 3) if (n, w, h) == MEMORY_CASE else repeats
            cmd = [sys.executable, __file__, "--case", str(n), str(w), str(h), "--repeats", str(reps),
                   "--threads", str(t)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            case = json.loads(out.strip().splitlines()[-1])
            case["load_1min"] = os.getloadavg()[0]
            print(f"{t} threads, {n:>6} Gaussians {w}x{h}: {case['pairs']:>8} pairs, "
                  f"fwd {case['forward_s']:.3f} s, bwd {case['backward_s']:.3f} s, total {case['total_s']:.3f} s, "
                  f"peak RSS {case['peak_rss_mib']:.0f} MiB, load {case['load_1min']:.1f}", flush=True)
            cases.append(case)
    main20k = min(
        (c for c in cases if (c["n_gaussians"], c["width"], c["height"]) == (20000, 128, 192)),
        key=lambda c: c["total_s"],
    )
    result = {
        "benchmark": "npga.splatting.render.rasterize backend='torch', forward + backward on the CPU",
        "scene": __doc__.split("\n\n")[1].replace("\n", " "),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python " + " ".join(["benchmarks/render_cpu.py"] + sys.argv[1:]),
        "machine": machine_info(),
        "threads": threads,
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
        "target": f"{TARGET_S} s for 20k Gaussians at 128x192 (2 threads); best measured "
                  f"{main20k['total_s']:.3f} s with {main20k['threads']} thread(s) "
                  f"({'met' if main20k['total_s'] <= TARGET_S else 'not met'} on this run)",
        "cases": cases,
    }
    write_json(args.out, result)
    write_markdown(args.out.with_suffix(".md"), result)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
