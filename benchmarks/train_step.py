"""Cost of one avatar training step, old path against new, measured side by side.

The step is the ablation's "full" variant (per-Gaussian features, Laplacian terms,
NPGA's density control, screen-space CNN) of the chosen profile, on participant 0 with
the tracked NPHM codes: exactly what ``benchmarks/ablation.py`` trains. Paths compared,
each from the same initial avatar, hooks and seed, so every path does the same work:

* ``before``  -- this repository before the fast CPU path: ``backend="torch"`` (the
  pair-list rasterizer) and ``jacobian="fd"`` (the avatar's former default);
* ``autograd`` -- ``backend="torch"`` with the autograd Jacobian (double backward);
* ``after``   -- the defaults now: ``backend="auto"`` (numba on the CPU) and
  ``jacobian="analytic"`` (F's Jacobian carried through its forward pass), in a process
  whose allocator :func:`npga.tune_allocator` tuned (as ``import npga`` does);
* ``after-untuned`` -- the same with the allocator as it was: what the tuning buys;
* ``after-mkl`` -- the defaults with the MLPs' products on MKL (``NPGA_ONEDNN_LINEAR=0``)
  instead of oneDNN (:mod:`npga.headmodels.linear`): what that buys;
* ``after-bf16`` -- ``after`` with F's, G's and the CNN's products in bfloat16
  (``AvatarConfig.bf16``, :func:`npga.headmodels.linear.bf16_products`).

Each path runs in its own worker process (``--worker``), so that ``before`` also runs
with the C allocator and the MLPs' products as they were (``NPGA_MALLOC_TUNING=0``,
``NPGA_ONEDNN_LINEAR=0``). The machine is shared and
noisy, so the paths alternate: round r runs ``--steps`` steps of every path in turn
(after ``--warmup`` steps each), and a path's time per step is the median over rounds. ``--profile-steps`` also records a torch-profiler table (top ops by
self CPU time) of the ``before`` and ``after`` paths, ``--phase-steps`` a wall-clock table
of the step's phases (:func:`phase_times`). Results:
``benchmarks/results/train_step_{profile}.{json,md}``.

    python benchmarks/train_step.py --compare --profile cpu
    python benchmarks/train_step.py --compare --profile mini --rounds 2 --steps 5
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from npga.avatar.model import build_avatar  # noqa: E402
from npga.avatar.train import TrainConfig, TrainData, prepare, train  # noqa: E402
from npga.capture.dataset import open_dataset  # noqa: E402
from npga.config import REPO_ROOT, get_profile  # noqa: E402
from npga.experiments.ablation import VARIANTS, make_hooks  # noqa: E402
from npga.io import atomic_write, machine_info, write_json  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results"
PATHS = {
    "before": dict(backend="torch", jacobian="fd", allocator="default", linear="mkl"),
    "autograd": dict(backend="torch", jacobian="autograd", allocator="tuned", linear="mkl"),
    "after": dict(backend="auto", jacobian="analytic", allocator="tuned", linear="onednn"),
    "after-untuned": dict(backend="auto", jacobian="analytic", allocator="default", linear="onednn"),
    "after-mkl": dict(backend="auto", jacobian="analytic", allocator="tuned", linear="mkl"),
    "after-bf16": dict(backend="auto", jacobian="analytic", allocator="tuned", linear="onednn", bf16=True),
}


def setup(profile_name: str, seed: int = 0):
    """The full variant's avatar, training data and a function making fresh hooks."""
    P = get_profile(profile_name)
    head, prior = prepare(P, progress=False)
    part = open_dataset(P.data_root).participant(0)
    avatar = build_avatar(P, part, feature_dim=P.avatar.feature_dim, head=head, prior=prior, progress=False)
    seqs = [s for s in part.sequences if s != P.data.heldout_sequence]
    data = TrainData(part, seqs, codes="nphm", device=P.device)
    return P, avatar, data


def fresh_run(P, avatar0, path: dict, seed: int = 0):
    """A copy of the initial avatar set up for ``path``, the full variant's hooks, the config."""
    avatar = copy.deepcopy(avatar0)
    avatar.backend, avatar.jacobian = path["backend"], path["jacobian"]
    hooks, _ = make_hooks(VARIANTS["full"], avatar, P, seed)
    cfg = TrainConfig.from_profile(P, iterations=P.avatar.iterations, checkpoint_every=10**9,
                                   bf16=path.get("bf16", False))
    return avatar, hooks, cfg


def run_path(P, avatar0, data, path: dict, steps: int, seed: int = 0, profile: bool = False):
    """Seconds per step of ``steps`` steps from a copy of the initial avatar (and the
    profiler's table when asked)."""
    avatar, hooks, cfg = fresh_run(P, avatar0, path, seed)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as tprofile

        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            res = train(avatar, data, cfg, hooks=hooks, stop_after=steps, progress=False)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        return res.wall_time / steps, table
    res = train(avatar, data, cfg, hooks=hooks, stop_after=steps, progress=False)
    return res.wall_time / steps, None


def phase_times(P, avatar0, data, path: dict, steps: int, seed: int = 0) -> dict[str, float]:
    """Wall-clock seconds per step of each phase of the step, for ``steps`` steps after one
    warm-up step. The torch profiler's per-op times on this machine run up to 2x above the
    same ops timed alone (memory-bound ops most), so "what bounds the step" is read from
    these wall-clock phases; the backward pass is split by gradient hooks (below)."""
    import collections

    import npga.avatar.train as T
    import npga.splatting.render as R

    avatar, hooks, cfg = fresh_run(P, avatar0, path, seed)
    acc: dict[str, float] = collections.defaultdict(float)

    def timed(name, fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            acc[name] += time.perf_counter() - t0
            return out
        return run

    # The backward pass is split by the moments the gradient reaches the CNN's output, its
    # input (the latent image) and the deformed Gaussians: the CPU autograd engine runs the
    # graph newest node first, so these are the ends of the loss's, the CNN's and the
    # rasterizer's backward; what follows the last is F's, G's and the transport's.
    marks: dict[str, float] = {}

    def mark(name, tensors):
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.register_hook(lambda g, name=name: marks.__setitem__(name, time.perf_counter()) or None)

    deform = timed("F + G forward (with F's Jacobian, transport)", avatar._deform)

    def deform_marked(*a, **k):
        out = deform(*a, **k)
        mark("deformed", out[0].values())
        return out

    avatar._deform = deform_marked
    avatar.render = timed("render forward (deform, SH, rasterize)", avatar.render)
    if hooks.image_head is not None:
        head = timed("CNN forward", hooks.image_head)

        def head_marked(render, batch):
            mark("latent", [render.colors, render.features])
            pred = head(render, batch)
            mark("pred", [pred])
            return pred

        hooks.image_head = head_marked
    hooks.losses = {k: timed(f"loss term {k}", f) for k, f in hooks.losses.items()}
    hooks.after_backward = [timed("after backward (density control)", f) for f in hooks.after_backward]
    saved = R.rasterize, T.photometric_loss, torch.Tensor.backward, T.make_optimizers
    R.rasterize = timed("rasterize forward", R.rasterize)
    T.photometric_loss = timed("photometric loss (L1 + SSIM)", T.photometric_loss)
    def backward(loss, *a, **k):
        marks.clear()
        t0 = time.perf_counter()
        saved[2](loss, *a, **k)
        t1 = time.perf_counter()
        acc["backward pass (everything)"] += t1 - t0
        ends = [("backward: loss terms", marks.get("pred")), ("backward: CNN", marks.get("latent")),
                ("backward: SH + rasterizer", marks.get("deformed")), ("backward: F + G + transport", t1)]
        last = t0
        for name, t in ends:
            if t is not None:
                acc[name] += t - last
                last = t

    torch.Tensor.backward = backward

    def make_optimizers(*a, **k):
        opts = saved[3](*a, **k)
        for o in opts.values():
            o.step = timed("optimizer steps", o.step)
        return opts

    T.make_optimizers = make_optimizers
    try:
        train(avatar, data, cfg, hooks=hooks, stop_after=1, progress=False)
        acc.clear()
        res = train(avatar, data, cfg, hooks=hooks, stop_after=steps, progress=False)
    finally:
        R.rasterize, T.photometric_loss, torch.Tensor.backward, T.make_optimizers = saved
    out = {k: v / steps for k, v in acc.items()}
    out["whole step"] = res.wall_time / steps
    return out


def worker(args) -> None:
    """One path in this process: reads ``run K`` / ``profile K`` / ``phases K`` / ``quit``
    lines from stdin, answers each with one JSON line (seconds per step and the profiler's
    table, or the phase times)."""
    from npga import allocator_state

    torch.set_num_threads(args.threads)
    P, avatar0, data = setup(args.profile)
    path = PATHS[args.worker]
    hello = {"gaussians": avatar0.n_gaussians, "image": [data.width, data.height],
             "batch_cameras": P.avatar.batch_cameras, "allocator": allocator_state()}
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        cmd, _, k = line.strip().partition(" ")
        if cmd == "quit":
            break
        t0 = time.perf_counter()
        if cmd == "phases":
            print(json.dumps({"phases": phase_times(P, avatar0, data, path, int(k))}), flush=True)
            continue
        s_step, table = run_path(P, avatar0, data, path, int(k), profile=cmd == "profile")
        print(json.dumps({"s_per_step": s_step, "table": table, "wall": time.perf_counter() - t0}), flush=True)


class _Worker:
    """A ``--worker`` subprocess of one path, driven line by line."""

    def __init__(self, name: str, args) -> None:
        env = dict(os.environ)
        env["NPGA_MALLOC_TUNING"] = "1" if PATHS[name]["allocator"] == "tuned" else "0"
        env["NPGA_ONEDNN_LINEAR"] = "1" if PATHS[name]["linear"] == "onednn" else "0"
        cmd = [sys.executable, __file__, "--worker", name, "--profile", args.profile, "--threads", str(args.threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.args[3]} exited with {self.proc.wait()}")
        return json.loads(line)

    def ask(self, cmd: str, steps: int) -> dict:
        self.proc.stdin.write(f"{cmd} {steps}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compare", action="store_true", help="time every path side by side (the benchmark)")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--profile-steps", type=int, default=5, help="0: no torch-profiler tables")
    ap.add_argument("--phase-steps", type=int, default=10, help="0: no wall-clock phase table")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--worker", default=None, choices=list(PATHS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if not args.compare:
        ap.error("nothing to do: pass --compare")
    t_setup = time.perf_counter()
    workers = {name: _Worker(name, args) for name in args.paths}
    try:
        hello = next(iter(workers.values())).hello
        P = get_profile(args.profile)
        print(f"profile {P.name}: {hello['gaussians']} Gaussians, {hello['image'][0]} x {hello['image'][1]}, "
              f"{hello['batch_cameras']} cameras per step (setup {time.perf_counter() - t_setup:.1f} s)")
        t0 = time.perf_counter()
        for w in workers.values():  # warm-up: image cache, numba compile, allocator
            w.ask("run", args.warmup)
        first_use = time.perf_counter() - t0
        times: dict[str, list[float]] = {k: [] for k in args.paths}
        for r in range(args.rounds):
            for name, w in workers.items():
                s = w.ask("run", args.steps)["s_per_step"]
                times[name].append(s)
                print(f"round {r}: {name:9s} {s:.3f} s/step")
        med = {k: statistics.median(v) for k, v in times.items()}
        tables = {}
        if args.profile_steps:
            for name in ("before", "after"):
                if name in workers:
                    tables[name] = workers[name].ask("profile", args.profile_steps)["table"]
        phases = {}
        if args.phase_steps:
            for name in ("before", "after", "after-bf16"):
                if name in workers:
                    phases[name] = workers[name].ask("phases", args.phase_steps)["phases"]
        allocators = {name: w.hello["allocator"] for name, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    width, height = hello["image"]
    res = {
        "benchmark": "one training step of the ablation's full variant, old path vs new, side by side",
        "command": "python benchmarks/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": machine_info(),
        "profile": P.name,
        "gaussians": hello["gaussians"],
        "image": [width, height],
        "batch_cameras": P.avatar.batch_cameras,
        "threads": args.threads,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "paths": {k: PATHS[k] for k in args.paths},
        "allocators": allocators,
        "seconds_per_step": {k: {"median": med[k], "all": times[k]} for k in args.paths},
        "speedup_vs_before": {k: med["before"] / med[k] for k in args.paths} if "before" in med else {},
        "warmup_seconds_all_paths": first_use,
        "profiler_tables": tables,
        "phases_seconds_per_step": phases,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"train_step_{P.name}.json", res)
    lines = [
        f"# One training step, old path vs new ({P.name} profile)",
        "",
        f"`{res['command']}` on {res['date']}; {res['machine'].get('cpu', '')} "
        f"({res['machine'].get('cores', '?')} cores, shared); {args.threads} torch thread(s).",
        f"Ablation's full variant: {hello['gaussians']} Gaussians at start, {width} x {height}, "
        f"{P.avatar.batch_cameras} cameras per step; median over {args.rounds} alternating rounds of "
        f"{args.steps} steps.",
        "",
        "| path | rasterizer | F's Jacobian | allocator | MLP products | precision | s / step (median) "
        "| all rounds | speed-up vs before |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k in args.paths:
        sp = res["speedup_vs_before"].get(k)
        sp_text = f"{sp:.2f}x" if sp else "n/a"
        rounds = ", ".join(f"{x:.3f}" for x in times[k])
        lines.append(f"| {k} | {PATHS[k]['backend']} | {PATHS[k]['jacobian']} | {PATHS[k]['allocator']} "
                     f"| {PATHS[k]['linear']} | {'bf16' if PATHS[k].get('bf16') else 'fp32'} | {med[k]:.3f} "
                     f"| {rounds} | {sp_text} |")
    if phases:
        names = list(phases)
        keys = sorted({k for p in phases.values() for k in p}, key=lambda k: -phases[names[-1]].get(k, 0.0))
        lines += ["", f"## Wall-clock phases ({args.phase_steps} steps each, ms per step; nested: the render "
                  "forward contains F + G and the rasterizer)", "",
                  "| phase | " + " | ".join(f"`{n}`" for n in names) + " |",
                  "| --- |" + " --- |" * len(names)]
        for k in keys:
            cells = " | ".join(f"{1e3 * phases[n][k]:.1f}" if k in phases[n] else "" for n in names)
            lines.append(f"| {k} | {cells} |")
    for name, table in tables.items():
        lines += ["", f"## torch profiler, `{name}` ({args.profile_steps} steps, top ops by self CPU time)",
                  "", "```", table, "```"]
    with atomic_write(RESULTS / f"train_step_{P.name}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[:12 + len(args.paths)]))


if __name__ == "__main__":
    main()
