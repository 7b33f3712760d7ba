"""F with its forward-mode Jacobian, forward + backward: the layout of the tangents and the
fused SiLU, measured side by side (issue 14).

    python benchmarks/jacobian_step.py                 # cpu-profile sizes, one thread

Two implementations of ``ForwardField.forward_and_jacobian`` on the same field and points:

* ``before`` -- the code as it was (commit 72d2e23): tangents (N, 3, H), SiLU and its
  derivative as plain autograd expressions (written out again below, as the reference);
* ``after``  -- the package's: tangents (3, N, H) and :class:`npga.deformation.field._SiluTangent`.

Both return the same x_p and J (checked here to 1e-5). Since the MLPs' products moved to
oneDNN (:mod:`npga.headmodels.linear`), ``after`` runs its products there and ``before``
(plain ``@``) on MKL; ``NPGA_ONEDNN_LINEAR=0 python benchmarks/jacobian_step.py`` compares
the layouts alone, as recorded. Also timed: one SiLU step alone
(8000 x 128 pre-activations with their tangents), autograd expression vs fused. The paths
alternate over ``--rounds``; medians. Result: ``benchmarks/results/jacobian_step.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from npga.config import REPO_ROOT, get_profile  # noqa: E402
from npga.deformation import ForwardField  # noqa: E402
from npga.deformation.field import _SiluTangent  # noqa: E402
from npga.io import atomic_write, machine_info, write_json  # noqa: E402
from npga import allocator_state  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results"


def jacobian_before(field: ForwardField, x_c, z_exp, z_id):
    """forward_and_jacobian as of 72d2e23: tangents (N, 3, H), SiLU' by autograd ops."""
    inp, freqs = field._encode(x_c, z_exp, z_id)
    n, lo, F = inp.shape[0], 3 + field.exp_dims, field.n_freqs
    pos_cols = torch.cat([torch.arange(3), torch.arange(lo, lo + 6 * F)])
    d_pos = inp.new_zeros(n, 3, 3 + 6 * F)
    d_pos[:, :, :3] = torch.eye(3) / field.scale
    if F:
        ang = (x_c / field.scale)[..., None] * freqs
        cols = torch.arange(3)[:, None] * F + torch.arange(F)
        rows = torch.arange(3)[:, None].expand(3, F)
        d_pos[:, rows, 3 + cols] = torch.cos(ang) * freqs / field.scale
        d_pos[:, rows, 3 + 3 * F + cols] = -torch.sin(ang) * freqs / field.scale
    h, dh = inp, None
    for i, lin in enumerate(field.linears):
        W = lin.weight
        if i == 0:
            dz = d_pos @ W[:, pos_cols].T
        elif i == field.skip_at:
            hidden = h.shape[-1]
            dz = dh @ W[:, :hidden].T + d_pos @ W[:, hidden + pos_cols].T
            h = torch.cat([h, inp], dim=-1)
        else:
            dz = dh @ W.T
        h, dh = silu_before(lin(h), dz)
    x_p = x_c + field.out(h) * field.scale
    J_t = dh @ field.out.weight.T * field.scale
    return x_p, torch.eye(3) + J_t.transpose(-1, -2)


def silu_before(z, dz):
    """SiLU and its tangents dz (N, 3, H) as autograd expressions (as of 72d2e23)."""
    s = torch.sigmoid(z)
    return z * s, dz * (s * (1.0 + z * (1.0 - s)))[:, None, :]


def timed(fn, reps: int) -> float:
    """Median seconds of ``reps`` calls."""
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="cpu", help="F's size and the Gaussian count come from it")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    P = get_profile(args.profile)
    d, h = P.deform, P.head_model
    n = P.avatar.n_gaussians
    torch.manual_seed(0)
    field = ForwardField(h.exp_dims, h.id_dims, hidden=d.hidden, layers=d.layers, scale=d.length_scale,
                         n_freqs=d.n_freqs)
    with torch.no_grad():  # away from the identity start, as a distilled prior is
        for p in field.parameters():
            p.normal_(0, 0.05)
    x = (0.08 * torch.randn(n, 3)).requires_grad_(True)
    z_exp, z_id = torch.randn(h.exp_dims), torch.randn(h.id_dims)
    w = torch.randn(n, 3, 3)

    def step(fn):
        def run():
            x_p, J = fn(field, x, z_exp, z_id)
            (x_p.sum() + (J * w).sum()).backward()
        return run

    with torch.no_grad():
        a, b = jacobian_before(field, x, z_exp, z_id), field.forward_and_jacobian(x, z_exp, z_id)
    err = max(float((a[0] - b[0]).abs().max()), float((a[1] - b[1]).abs().max()))
    if err > 1e-5:
        raise SystemExit(f"the two implementations disagree by {err:.2e}")
    H = d.hidden
    zz = torch.randn(n, H, requires_grad=True)
    dz_old = torch.randn(n, 3, H, requires_grad=True)
    dz_new = dz_old.detach().transpose(0, 1).contiguous().requires_grad_(True)
    gh, gdh_old = torch.randn(n, H), torch.randn(n, 3, H)
    gdh_new = gdh_old.transpose(0, 1).contiguous()

    paths = {
        "F + J before": step(jacobian_before),
        "F + J after": step(lambda f, *a: f.forward_and_jacobian(*a)),
        "SiLU step before": lambda: torch.autograd.backward(list(silu_before(zz, dz_old)), [gh, gdh_old]),
        "SiLU step after": lambda: torch.autograd.backward(list(_SiluTangent.apply(zz, dz_new)), [gh, gdh_new]),
    }
    for fn in paths.values():  # warm-up (allocator, caches)
        for _ in range(3):
            fn()
    times = {k: [] for k in paths}
    for _ in range(args.rounds):
        for k, fn in paths.items():
            times[k].append(timed(fn, args.reps))
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {
        "benchmark": "F with its forward-mode Jacobian, forward + backward, before vs after (issue 14)",
        "command": "python benchmarks/jacobian_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "allocator": allocator_state(),
        "threads": args.threads,
        "field": {"hidden": d.hidden, "layers": d.layers, "n_freqs": d.n_freqs, "exp_dims": h.exp_dims,
                  "id_dims": h.id_dims},
        "points": n,
        "max_difference": err,
        "seconds": {k: {"median": med[k], "rounds": times[k]} for k in paths},
        "speedup": {"F + J": med["F + J before"] / med["F + J after"],
                    "SiLU step": med["SiLU step before"] / med["SiLU step after"]},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "jacobian_step.json", res)
    lines = [
        "# F with its forward-mode Jacobian: tangent layout and fused SiLU",
        "",
        f"`{res['command']}` on {res['date']}; {res['machine'].get('cpu', '')}; {args.threads} thread(s); "
        f"{res['allocator']}.",
        f"Profile `{P.name}`: F {d.layers} x {d.hidden}, {d.n_freqs} Fourier octaves, codes {h.exp_dims} + "
        f"{h.id_dims}; {n} points; forward + backward of a loss on x_p and J; median over {args.rounds} "
        f"alternating rounds of {args.reps} calls. The two give the same x_p and J (max difference "
        f"{err:.1e}).",
        "",
        "| what | before ms | after ms | speed-up |",
        "| --- | ---: | ---: | ---: |",
        f"| F + J, forward + backward | {1e3 * med['F + J before']:.1f} | {1e3 * med['F + J after']:.1f} "
        f"| {res['speedup']['F + J']:.2f}x |",
        f"| one SiLU step ({n} x {H}, tangents), forward + backward | {1e3 * med['SiLU step before']:.2f} "
        f"| {1e3 * med['SiLU step after']:.2f} | {res['speedup']['SiLU step']:.2f}x |",
        "",
    ]
    with atomic_write(RESULTS / "jacobian_step.md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
