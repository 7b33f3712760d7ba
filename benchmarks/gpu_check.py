"""Torch backend versus gsplat's CUDA backend on one GPU: same images, same gradients, timings.

For a session with a CUDA device (it has not been run on one yet). On a machine
without CUDA it prints "skipped: no CUDA" and exits 0 without touching gsplat's CUDA
code. Note: gsplat 1.5.3 JIT-compiles its CUDA extension on the first call (minutes,
once per machine); the script does that first and reports how long it took.

Scene: benchmarks/render_cpu.py's head blob (100k Gaussians, camera 1 m in front,
focal 2.6 H) at NPGA's 550 x 802, float32, with a grey background. Checks:

* images and alphas: max abs difference <= 1e-3;
* gradients of means, quats, scales, opacities, colours and the screen-space means2d:
  relative L2 error <= 1e-2 (both backends sum in float32, in different orders);
* radii: equal for >= 99.9 % of (camera, Gaussian) entries.

Timings: forward + backward, median of ``--repeats`` runs after warm-up, with
``torch.cuda.synchronize()``. Writes benchmarks/results/gpu_check.json; exits 1 if a
check fails.

    python benchmarks/gpu_check.py [--n 100000] [--width 550] [--height 802] [--repeats 10]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

IMAGE_TOL = 1e-3
GRAD_REL_TOL = 1e-2
RADII_AGREE = 0.999


def _run(params, viewmats, Ks, width, height, bg, weights, backend):
    """One forward + backward; returns outputs, gradients and the means2d gradient."""
    from npga.splatting.render import rasterize

    for p in params:
        p.grad = None
    img, alpha, meta = rasterize(*params, viewmats, Ks, width, height, backgrounds=bg, backend=backend)
    meta["means2d"].retain_grad()
    ((img * weights[0]).sum() + (alpha * weights[1]).sum()).backward()
    grads = [p.grad.detach().clone() for p in params]
    return img.detach(), alpha.detach(), meta, grads


def _time(fn, repeats: int) -> dict:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=550)
    ap.add_argument("--height", type=int, default=802)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check.json")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        print("skipped: no CUDA (this check compares the torch and gsplat backends on a GPU)")
        return 0

    import gsplat
    from render_cpu import head_blob

    from npga.io import write_json

    W, H = args.width, args.height
    scene = head_blob(args.n, W, H, device="cuda")
    params = [t.clone().requires_grad_(True) for t in scene[:5]]
    viewmats, Ks = scene[5:]
    bg = torch.full((1, 3), 0.5, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(1)
    weights = (torch.randn(1, H, W, 3, device="cuda", generator=g), torch.randn(1, H, W, 1, device="cuda", generator=g))

    t0 = time.perf_counter()
    ref = _run(params, viewmats, Ks, W, H, bg, weights, "gsplat")  # first call: JIT compile
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - t0
    ours = _run(params, viewmats, Ks, W, H, bg, weights, "torch")

    checks = {}
    checks["image_max_abs_diff"] = float((ours[0] - ref[0]).abs().max())
    checks["alpha_max_abs_diff"] = float((ours[1] - ref[1]).abs().max())
    names = ["means", "quats", "scales", "opacities", "colors"]
    rel = {}
    for name, a, b in zip(names, ours[3], ref[3]):
        rel[name] = float((a - b).norm() / b.norm().clamp(min=1e-30))
    a2d, b2d = ours[2]["means2d"].grad, ref[2]["means2d"].grad
    rel["means2d"] = float((a2d - b2d).norm() / b2d.norm().clamp(min=1e-30))
    checks["grad_rel_l2"] = rel
    checks["radii_agree"] = float((ours[2]["radii"] == ref[2]["radii"]).all(-1).float().mean())
    checks["visible"] = {
        "torch": int((ours[2]["radii"] > 0).all(-1).sum()),
        "gsplat": int((ref[2]["radii"] > 0).all(-1).sum()),
    }
    passed = (
        checks["image_max_abs_diff"] <= IMAGE_TOL
        and checks["alpha_max_abs_diff"] <= IMAGE_TOL
        and all(v <= GRAD_REL_TOL for v in rel.values())
        and checks["radii_agree"] >= RADII_AGREE
    )

    timings = {}
    for backend in ("gsplat", "torch"):
        torch.cuda.reset_peak_memory_stats()
        timings[backend] = _time(lambda: _run(params, viewmats, Ks, W, H, bg, weights, backend), args.repeats)
        timings[backend]["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20

    result = {
        "check": "npga.splatting.render.rasterize: backend='torch' vs backend='gsplat' on CUDA",
        "scene": f"render_cpu.head_blob({args.n}, {W}, {H}), float32, grey background",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gsplat": getattr(gsplat, "__version__", "?"),
        "gsplat_first_call_s": first_call_s,
        "tolerances": {"image": IMAGE_TOL, "grad_rel_l2": GRAD_REL_TOL, "radii_agree": RADII_AGREE},
        "checks": checks,
        "passed": passed,
        "timings_fwd_bwd": timings,
    }
    write_json(args.out, result)
    print(f"image max diff {checks['image_max_abs_diff']:.2e}, alpha {checks['alpha_max_abs_diff']:.2e}")
    print("gradient relative L2: " + ", ".join(f"{k} {v:.2e}" for k, v in rel.items()))
    print(f"radii agree {checks['radii_agree']:.5f}")
    for backend, t in timings.items():
        print(f"{backend:>6}: {t['median_s'] * 1000:.1f} ms fwd+bwd, peak {t['peak_cuda_mib']:.0f} MiB")
    print(("PASSED" if passed else "FAILED") + f"; wrote {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
