"""CPU rasterizer backends side by side: backend="torch" vs backend="numba".

Scene: render_cpu.py's "head blob" (``head_blob``, imported from there): N Gaussians on
a head-sized ellipsoid 1 m in front of one camera, float32, RGB, no background. Loss:
sum of image and alpha, each multiplied by a fixed random weight image. Cases: 12000
Gaussians at 176x256 and 20000 at 256x384.

Measured, each part in its own fresh subprocess:

* time -- forward + backward of the full ``rasterize`` (projection included: PyTorch's in
  the torch backend, the compiled kernel of ``project_numba`` in numba's), median and
  minimum of ``--repeats`` runs after 2 warm-ups. torch (1 thread), numba (1 thread) and numba (2 threads) are run in
  alternation inside one process, so that a change of machine load hits all three
  alike. For "numba, 2 threads" torch is set to 2 threads as well (numba uses
  min(torch threads, numba's pool)).
* memory -- peak RSS (ru_maxrss) of a process that renders 3 times with one backend,
  1 thread; the RSS after imports and scene set-up, before the first render, is
  recorded too (the interpreter, torch -- and for numba, llvmlite -- account for most).
* compile -- the numba backend's first forward + backward in a fresh process whose
  NUMBA_CACHE_DIR is an empty temporary folder (the kernels compile), then the same in a
  second process with that cache warm (the kernels load from disk).

    python benchmarks/render_backends.py            # everything; writes results/render_backends.{json,md}
    python benchmarks/render_backends.py --quick    # 3 repeats
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from render_cpu import count_pairs, head_blob  # noqa: E402

from npga.io import atomic_write, machine_info, write_json  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
CASES = [(12000, 176, 256), (20000, 256, 384)]
TARGETS = {
    "speedup": 5.0,  # numba >= 5x faster than torch, forward + backward, 1 thread
    "threads": 1.6,  # numba on 2 threads >= 1.6x faster than on 1 (idle machine)
    "compile_s": 20.0,  # first use, empty cache
    "cached_s": 2.0,  # first use in a second process, warm cache
}
VARIANTS = (("torch", 1), ("numba", 1), ("numba", 2))


def _setup(n: int, width: int, height: int):
    scene = head_blob(n, width, height)
    params = [t.clone().requires_grad_(True) for t in scene[:5]]
    g = torch.Generator().manual_seed(1)
    w_img = torch.randn(1, height, width, 3, generator=g)
    w_alpha = torch.randn(1, height, width, 1, generator=g)
    return scene, params, w_img, w_alpha


def _step(params, viewmats, Ks, width, height, w_img, w_alpha, backend):
    """One forward + backward; returns (forward s, backward s, meta)."""
    from npga.splatting.render import rasterize

    for p in params:
        p.grad = None
    t0 = time.perf_counter()
    img, alpha, meta = rasterize(*params, viewmats, Ks, width, height, backend=backend)
    t1 = time.perf_counter()
    meta["means2d"].retain_grad()
    ((img * w_img).sum() + (alpha * w_alpha).sum()).backward()
    return t1 - t0, time.perf_counter() - t1, meta


def child_time(n: int, width: int, height: int, repeats: int) -> dict:
    import numba

    scene, params, w_img, w_alpha = _setup(n, width, height)
    viewmats, Ks = scene[5:]
    runs = {f"{b}_{t}": [] for b, t in VARIANTS}
    for i in range(repeats + 2):
        for backend, threads in VARIANTS:
            torch.set_num_threads(threads)
            fwd, bwd, meta = _step(params, viewmats, Ks, width, height, w_img, w_alpha, backend)
            assert meta["backend"] == backend
            if i >= 2:
                runs[f"{backend}_{threads}"].append((fwd, bwd))
    torch.set_num_threads(1)
    out = {"n_gaussians": n, "width": width, "height": height, "repeats": repeats,
           "numba_pool_threads": numba.config.NUMBA_NUM_THREADS, "threading_layer": numba.threading_layer()}
    for key, r in runs.items():
        total = [a + b for a, b in r]
        out[key] = {"forward_s": statistics.median(a for a, _ in r), "backward_s": statistics.median(b for _, b in r),
                    "total_s": statistics.median(total), "total_min_s": min(total)}
    with torch.no_grad():
        out["visible"] = int((meta["radii"] > 0).all(-1).sum())
        out["pairs"] = count_pairs(scene, width, height)
    return out


def child_memory(backend: str, n: int, width: int, height: int) -> dict:
    torch.set_num_threads(1)
    scene, params, w_img, w_alpha = _setup(n, width, height)
    if backend == "numba":
        import npga.splatting.render_numba  # noqa: F401  (counted in the baseline, like torch itself)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    for _ in range(3):
        _step(params, *scene[5:], width, height, w_img, w_alpha, backend)
    return {"backend": backend, "n_gaussians": n, "width": width, "height": height,
            "rss_before_render_mib": rss_before,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_compile() -> dict:
    """Seconds from a fresh process's start of work to its first numba forward + backward."""
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    import npga.splatting.render_numba  # noqa: F401
    from npga.splatting.render import rasterize  # noqa: F401

    t1 = time.perf_counter()
    scene, params, w_img, w_alpha = _setup(2000, 64, 96)
    t2 = time.perf_counter()
    fwd, bwd, _ = _step(params, *scene[5:], 64, 96, w_img, w_alpha, "numba")
    return {"import_s": t1 - t0, "first_forward_s": fwd, "first_backward_s": bwd, "first_use_s": fwd + bwd,
            "setup_s": t2 - t1, "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR")}


def _run_child(args: list[str], env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env(**kw) -> dict:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # threads are set per run with torch.set_num_threads
    env.update({k: str(v) for k, v in kw.items()})
    return env


def write_markdown(path: Path, r: dict) -> None:
    m = r["machine"]
    lines = [
        "# CPU rasterizer backends: torch vs numba (forward + backward)",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, numba {r['numba']} "
        f"(threading layer {r['cases'][0]['threading_layer']}), {r['date']}. "
        f"Load average before / after: {r['load_before'][0]:.2f} / {r['load_after'][0]:.2f}.",
        "",
        ("**The machine was not idle** (load average above 0.5 before the run): other jobs were "
         "using its cores, so the 2-thread numbers (and, to a lesser extent, all numbers) are "
         "pessimistic; rerun on an idle machine before quoting them."
         if r["load_before"][0] > 0.5 else
         "The machine was idle before the run (load average at most 0.5); the load during it is "
         "the benchmark's own."),
        "",
        r["scene"],
        "",
        "## Time (median of the repeats; min in brackets), seconds",
        "",
        "| Gaussians | image | visible | pairs | torch 1 thr fwd / bwd / total | numba 1 thr fwd / bwd / total "
        "| numba 2 thr total | numba vs torch (median / min) | numba 2 vs 1 thr |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in r["cases"]:
        t, n1, n2 = c["torch_1"], c["numba_1"], c["numba_2"]
        lines.append(
            f"| {c['n_gaussians']} | {c['width']}x{c['height']} | {c['visible']} | {c['pairs']} "
            f"| {t['forward_s']:.3f} / {t['backward_s']:.3f} / {t['total_s']:.3f} ({t['total_min_s']:.3f}) "
            f"| {n1['forward_s']:.4f} / {n1['backward_s']:.4f} / {n1['total_s']:.4f} ({n1['total_min_s']:.4f}) "
            f"| {n2['total_s']:.4f} ({n2['total_min_s']:.4f}) | {c['speedup']:.2f}x / {c['speedup_min']:.2f}x "
            f"| {c['thread_speedup']:.2f}x |"
        )
    lines += ["", "## Peak memory (1 thread, 3 renders), MiB", "",
              "| Gaussians | image | torch peak | torch before render | numba peak | numba before render |",
              "|---:|---:|---:|---:|---:|---:|"]
    for (n, w, h), mem in zip(CASES, r["memory"]):
        t, nb = mem["torch"], mem["numba"]
        lines.append(f"| {n} | {w}x{h} | {t['peak_rss_mib']:.0f} | {t['rss_before_render_mib']:.0f} "
                     f"| {nb['peak_rss_mib']:.0f} | {nb['rss_before_render_mib']:.0f} |")
    cold, warm = r["compile"]["cold"], r["compile"]["warm"]
    lines += [
        "", "## Compilation (numba backend, float32, first forward + backward of a process)", "",
        "| cache | import s | first forward s | first backward s | first use s |", "|---|---:|---:|---:|---:|",
        f"| empty (compiles) | {cold['import_s']:.2f} | {cold['first_forward_s']:.2f} | "
        f"{cold['first_backward_s']:.2f} | {cold['first_use_s']:.2f} |",
        f"| warm (second process) | {warm['import_s']:.2f} | {warm['first_forward_s']:.2f} | "
        f"{warm['first_backward_s']:.2f} | {warm['first_use_s']:.2f} |",
        "", "## Against the targets", "",
    ]
    lines += [f"- {line}" for line in r["verdicts"]]
    lines += ["", f"Command: `{r['command']}`", ""]
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="3 repeats")
    ap.add_argument("--out", type=Path, default=RESULTS / "render_backends.json")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "time":
            res = child_time(*map(int, rest[:3]), repeats=int(rest[3]))
        elif kind == "memory":
            res = child_memory(rest[0], *map(int, rest[1:4]))
        else:
            res = child_compile()
        print(json.dumps(res))
        return

    import numba

    repeats = 3 if args.quick else args.repeats
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        # Compile first: the empty-cache process, then a second one on the now warm cache.
        cold = _run_child(["--child", "compile"], _env(NUMBA_CACHE_DIR=cache, NUMBA_NUM_THREADS=1))
        warm = _run_child(["--child", "compile"], _env(NUMBA_CACHE_DIR=cache, NUMBA_NUM_THREADS=1))
        print(f"compile: empty cache {cold['first_use_s']:.2f} s (+ import {cold['import_s']:.2f} s), "
              f"warm cache {warm['first_use_s']:.2f} s (+ import {warm['import_s']:.2f} s)", flush=True)
        cases, memory = [], []
        for n, w, h in CASES:
            c = _run_child(["--child", "time", str(n), str(w), str(h), str(repeats)],
                           _env(NUMBA_CACHE_DIR=cache, NUMBA_NUM_THREADS=2))
            c["speedup"] = c["torch_1"]["total_s"] / c["numba_1"]["total_s"]
            c["speedup_min"] = c["torch_1"]["total_min_s"] / c["numba_1"]["total_min_s"]
            c["thread_speedup"] = c["numba_1"]["total_s"] / c["numba_2"]["total_s"]
            c["load_1min"] = os.getloadavg()[0]
            cases.append(c)
            print(f"{n:>6} Gaussians {w}x{h}: torch {c['torch_1']['total_s']:.3f} s, numba {c['numba_1']['total_s']:.4f} s "
                  f"(1 thread) -> {c['speedup']:.2f}x (min/min {c['speedup_min']:.2f}x); numba 2 threads "
                  f"{c['numba_2']['total_s']:.4f} s -> {c['thread_speedup']:.2f}x over 1 thread; "
                  f"load {c['load_1min']:.1f}", flush=True)
            mem = {b: _run_child(["--child", "memory", b, str(n), str(w), str(h)],
                                 _env(NUMBA_CACHE_DIR=cache, NUMBA_NUM_THREADS=1, OMP_NUM_THREADS=1))
                   for b in ("torch", "numba")}
            memory.append(mem)
            print(f"        peak RSS torch {mem['torch']['peak_rss_mib']:.0f} MiB, numba {mem['numba']['peak_rss_mib']:.0f} MiB",
                  flush=True)

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    worst = min(c["speedup"] for c in cases)
    thr = min(c["thread_speedup"] for c in cases)  # the target holds for every case, or not
    mem_ok = all(m["numba"]["peak_rss_mib"] <= m["torch"]["peak_rss_mib"] for m in memory)
    verdicts = [
        f"numba >= {TARGETS['speedup']:.0f}x faster than torch (fwd+bwd, 1 thread): measured "
        + ", ".join(f"{c['speedup']:.2f}x ({c['n_gaussians']}; {c['speedup_min']:.2f}x min/min)" for c in cases)
        + f" -- {verdict(worst >= TARGETS['speedup'])}",
        f"numba 2 threads >= {TARGETS['threads']}x faster than 1 (on an idle machine): measured "
        + ", ".join(f"{c['thread_speedup']:.2f}x" for c in cases)
        + f" -- {verdict(thr >= TARGETS['threads'])}",
        f"first-use compile <= {TARGETS['compile_s']:.0f} s: {cold['first_use_s']:.1f} s -- "
        f"{verdict(cold['first_use_s'] <= TARGETS['compile_s'])}",
        f"cached second process <= {TARGETS['cached_s']:.0f} s: {warm['first_use_s']:.2f} s "
        f"(+ {warm['import_s']:.2f} s imports) -- {verdict(warm['first_use_s'] <= TARGETS['cached_s'])}",
        "peak memory not higher than torch: "
        + ", ".join(f"{m['numba']['peak_rss_mib']:.0f} vs {m['torch']['peak_rss_mib']:.0f} MiB" for m in memory)
        + f" -- {verdict(mem_ok)}",
    ]
    result = {
        "benchmark": "npga.splatting.render.rasterize backend='torch' vs backend='numba', forward + backward on the CPU",
        "scene": __doc__.split("\n\n")[1].replace("\n", " "),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python " + " ".join(["benchmarks/render_backends.py"] + sys.argv[1:]),
        "machine": machine_info(),
        "numba": numba.__version__,
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
        "targets": TARGETS,
        "cases": cases,
        "memory": memory,
        "compile": {"cold": cold, "warm": warm},
        "verdicts": verdicts,
    }
    write_json(args.out, result)
    write_markdown(args.out.with_suffix(".md"), result)
    for line in verdicts:
        print(line)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
