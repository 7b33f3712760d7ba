"""Course assignments from the book: otter-grader masters, their two editions, local grading.

An assignment master is a notebook in ``assignments/`` written in Otter Assign's format
(raw cells ``# BEGIN QUESTION`` / ``# BEGIN SOLUTION`` / ``# BEGIN TESTS`` ...; exception-
based tests whose assertion messages say what differs). From each master,

    python -m npga.book.assignments build [--out _build/assignments]

writes, per assignment NAME,

* ``student/NAME/NAME.ipynb``: solutions replaced by ``...``, hidden tests removed, the
  public checks left: a student runs ``grader.check("q1")`` in it;
* ``autograder/NAME/``: the solved notebook and the autograder zip (otter's tests, hidden
  ones included). Otter Assign runs every test on the solutions while building: a master
  whose own solutions fail does not build.

An instructor grades a folder of submitted notebooks without Docker:

    python -m npga.book.assignments grade _build/assignments/autograder/ch02_splatting SUBMISSIONS/

which runs ``otter run`` on each ``*.ipynb`` and writes ``SUBMISSIONS/scores.csv`` (one row per
submission: file, one column per question, total). ``make assignments`` builds the editions;
``tests/test_assignments.py`` checks that the solutions score full marks, an untouched
student edition scores zero with a message per question, a typical wrong answer fails with
the message it should, and the student edition contains no solution code.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from npga.config import REPO_ROOT

MASTERS = REPO_ROOT / "assignments"
OUT = REPO_ROOT / "_build" / "assignments"


def _otter() -> list[str]:
    """The otter command of this environment (the ``course`` extra installs otter-grader)."""
    exe = Path(sys.executable).with_name("otter")
    if exe.is_file():
        return [str(exe)]
    if shutil.which("otter"):
        return ["otter"]
    raise RuntimeError("otter-grader is not installed: pip install -e '.[course]' (make does it)")


def masters(root: Path = MASTERS) -> list[Path]:
    """The assignment masters, one notebook per assignment."""
    return sorted(p for p in root.glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def build(master: Path, out: Path = OUT) -> dict[str, Path]:
    """Both editions of one master (see the module docstring); returns their paths.

    Built in a temporary folder and moved into place, so a failing build leaves the
    previous editions untouched.
    """
    name = master.stem
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.is_dir() else None) as tmp:
        res = subprocess.run([*_otter(), "assign", str(master), tmp], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"otter assign {master.name} failed:\n{(res.stdout + res.stderr)[-3000:]}")
        paths = {}
        for edition in ("student", "autograder"):
            dst = out / edition / name
            if dst.exists():
                shutil.rmtree(dst)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / edition), dst)
            paths[edition] = dst
    return paths


def autograder_zip(folder: Path) -> Path:
    """The autograder zip in an assignment's autograder folder."""
    zips = sorted(folder.glob("*-autograder_*.zip"))
    if not zips:
        raise FileNotFoundError(f"no autograder zip in {folder}: build the assignments first")
    return zips[-1]


def grade_one(autograder: Path, notebook: Path) -> dict:
    """Scores of one submitted notebook: {"file", per-question {name: (score, max, output)}}."""
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([*_otter(), "run", "-a", str(autograder_zip(autograder)), "-o", tmp, str(notebook)],
                             capture_output=True, text=True)
        path = Path(tmp) / "results.json"
        if not path.is_file():
            raise RuntimeError(f"otter run on {notebook} wrote no results:\n{(res.stdout + res.stderr)[-3000:]}")
        results = json.loads(path.read_text())
    questions = {}
    for t in results.get("tests", []):
        if "max_score" in t:
            questions[t["name"]] = (float(t.get("score", 0) or 0), float(t["max_score"]), t.get("output", ""))
    return {"file": notebook.name, "questions": questions}


def grade(autograder: Path, submissions: Path, csv_path: Path | None = None) -> Path:
    """Grade every ``*.ipynb`` in ``submissions``; writes and returns ``scores.csv``."""
    rows = [grade_one(autograder, nb) for nb in sorted(submissions.glob("*.ipynb"))]
    if not rows:
        raise FileNotFoundError(f"no submissions (*.ipynb) in {submissions}")
    names = list(dict.fromkeys(q for r in rows for q in r["questions"]))
    csv_path = csv_path or submissions / "scores.csv"
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", *names, "total", "max"])
        for r in rows:
            q = r["questions"]
            w.writerow([r["file"], *(q.get(n, (0.0, 0.0, ""))[0] for n in names),
                        sum(v[0] for v in q.values()), sum(v[1] for v in q.values())])
    tmp.replace(csv_path)
    return csv_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="student and autograder editions of every master")
    b.add_argument("--out", type=Path, default=OUT)
    g = sub.add_parser("grade", help="grade a folder of submitted notebooks into scores.csv")
    g.add_argument("autograder", type=Path, help="the assignment's autograder folder")
    g.add_argument("submissions", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "build":
        for m in masters():
            paths = build(m, args.out)
            print(f"{m.name}: {paths['student']} and {paths['autograder']}")
        return 0
    print(f"scores: {grade(args.autograder, args.submissions)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
