"""Does training in bfloat16 change what the avatar learns? fp32 against bf16, paired by seed.

``TrainConfig.bf16`` (``AvatarConfig.bf16``) runs F's, G's and the CNN's products in
bfloat16 during training (:func:`npga.headmodels.linear.bf16_products`); everything else,
and every evaluation, stays float32. ``benchmarks/train_step.py`` measures what that buys per
step; this compares the ablation's full variant trained both ways, from the same seeds, on
the held-out cameras and the held-out sequence. Train the two records first (one per core;
same settings apart from the precision), then tabulate:

    python benchmarks/ablation.py --profile cpu --variants full --seeds 0 1 --threads 1 --record prec-fp32
    python benchmarks/ablation.py --profile cpu --variants full --seeds 0 1 --threads 1 --record prec-bf16 --set bf16=true
    python benchmarks/precision_fit.py --profile cpu

More seeds can go into further records, listed with ``--fp32``/``--bf16``. The record of
``results/precision_cpu.md`` added seed 2 that way::

    python benchmarks/ablation.py --profile cpu --variants full --seeds 2 --threads 1 --record prec-fp32-s2
    python benchmarks/ablation.py --profile cpu --variants full --seeds 2 --threads 1 --record prec-bf16-s2 --set bf16=true
    python benchmarks/precision_fit.py --profile cpu --bf16 prec-bf16 prec-bf16-s2 --fp32 prec-fp32 prec-fp32-s2

Writes ``benchmarks/results/precision_{profile}.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from npga.experiments.ablation import RESULTS, load_results, paired_difference  # noqa: E402
from npga.io import atomic_write, machine_info, write_json  # noqa: E402

COLUMNS = [
    ("novel_view_psnr", "novel-view PSNR (dB)"),
    ("self_reenactment_psnr", "self-reenactment PSNR (dB)"),
    ("novel_view_psnr_face", "novel-view face PSNR (dB)"),
    ("self_reenactment_psnr_face", "self-reenactment face PSNR (dB)"),
    ("novel_view_ssim", "novel-view SSIM"),
    ("self_reenactment_ssim", "self-reenactment SSIM"),
    ("train_seconds", "training seconds"),
]


def _merged(profile: str, tags: list[str], variant: str) -> tuple[dict, list[str]]:
    """One variant's columns from several ablation records (seeds may be spread over them)."""
    merged: dict = {}
    commands = []
    for tag in tags:
        rec = load_results(f"{profile}-{tag}")
        if rec is None:
            raise SystemExit(f"no record benchmarks/results/ablation_{profile}-{tag}.json: train it first "
                             "(see this script's docstring)")
        if variant not in rec["table"]:
            raise SystemExit(f"ablation_{profile}-{tag}.json has no variant {variant!r}")
        t = rec["table"][variant]
        commands.append(rec["command"])
        seen = set(merged.get("seeds", []))
        if seen & set(t["seeds"]):
            raise SystemExit(f"seed(s) {sorted(seen & set(t['seeds']))} in more than one record of {tags}")
        merged.setdefault("seeds", []).extend(t["seeds"])
        for key, _ in COLUMNS:
            if key in t:
                merged.setdefault(key, {"values": []})["values"].extend(t[key]["values"])
    n = len(merged["seeds"])
    return {k: v for k, v in merged.items() if k == "seeds" or len(v["values"]) == n}, commands


def compare(profile: str, variant: str = "full", bf16: list[str] | None = None,
            fp32: list[str] | None = None) -> dict:
    """bf16 minus fp32 for every column, paired by seed, from the ablation records."""
    groups = {"bf16": bf16 or ["prec-bf16"], "fp32": fp32 or ["prec-fp32"]}
    table, commands = {}, {}
    for name, tags in groups.items():
        table[name], commands[name] = _merged(profile, tags, variant)
    rows = {}
    for key, _ in COLUMNS:
        if all(key in t for t in table.values()):
            rows[key] = {"values": {n: table[n][key]["values"] for n in groups},
                         "seeds": {n: table[n]["seeds"] for n in groups},
                         "difference": paired_difference(table, "bf16", "fp32", key)}
    return {"profile": profile, "variant": variant, "records": groups, "rows": rows,
            "commands": [c for n in groups for c in commands[n]], "machine": machine_info()}


def to_markdown(res: dict) -> str:
    a, b = res["records"]  # "bf16", "fp32"
    lines = [f"# Training precision, profile `{res['profile']}`: {a} against {b}", "",
             "Records: " + "; ".join(f"{n}: " + ", ".join(f"`ablation_{res['profile']}-{t}`" for t in ts)
                                    for n, ts in res["records"].items()), "",
             f"The ablation's `{res['variant']}` variant trained twice from the same seeds, once with F's, G's "
             "and the CNN's products in bfloat16 (`AvatarConfig.bf16`), once in float32; everything else and "
             "every evaluation in float32. Difference = bf16 - fp32, paired by seed (t-test over seeds).", "",
             f"| column | {a} per seed | {b} per seed | difference (mean) | 95 % CI | p |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key, label in COLUMNS:
        if key not in res["rows"]:
            continue
        r = res["rows"][key]
        d = r["difference"]
        fmt = "{:.0f}" if key == "train_seconds" else ("{:.4f}" if "ssim" in key else "{:.2f}")
        vals = [", ".join(fmt.format(v) for v in r["values"][t]) for t in (a, b)]
        ci = "n/a" if d["ci"][0] != d["ci"][0] else f"[{fmt.format(d['ci'][0])}, {fmt.format(d['ci'][1])}]"
        p = "n/a" if d["p"] != d["p"] else f"{d['p']:.2f}"
        lines.append(f"| {label} | {vals[0]} | {vals[1]} | {fmt.format(d['mean'])} | {ci} | {p} |")
    if "train_seconds" in res["rows"]:
        r = res["rows"]["train_seconds"]["values"]
        ratio = sum(r[b]) / sum(r[a])
        lines += ["", f"Training time {b} / {a}: {ratio:.2f}x in wall-clock seconds on a shared machine, "
                  "whatever ran beside each run; `benchmarks/train_step.py` measures the step side by side."]
    lines += ["", "Commands:", ""] + [f"* `{c}`" for c in res["commands"]]
    lines += ["", f"Tabulated by `{res.get('command', 'benchmarks/precision_fit.py')}` on "
              f"{res['machine'].get('cpu', '')}, {res['machine'].get('cores', '?')} cores."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--variant", default="full")
    ap.add_argument("--bf16", nargs="+", default=["prec-bf16"], metavar="TAG", help="records trained in bf16")
    ap.add_argument("--fp32", nargs="+", default=["prec-fp32"], metavar="TAG", help="records trained in fp32")
    args = ap.parse_args(argv)
    res = compare(args.profile, args.variant, args.bf16, args.fp32)
    res["command"] = "python benchmarks/precision_fit.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json(RESULTS / f"precision_{args.profile}.json", res)
    md = to_markdown(res)
    with atomic_write(RESULTS / f"precision_{args.profile}.md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
