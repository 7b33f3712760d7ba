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
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
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


def solution_lines(master: Path, min_chars: int = 16) -> list[str]:
    """The distinctive lines of a master's solutions (between ``# BEGIN SOLUTION`` and
    ``# END SOLUTION`` inside code cells): none may survive into the student edition.

    Lines shorter than ``min_chars`` (``return x``, ``pass``) are skipped: they could appear
    in a student edition's own scaffolding.
    """
    nb = json.loads(master.read_text())
    lines, inside = [], False
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for line in "".join(cell["source"]).splitlines():
            tag = line.strip()
            if tag == "# BEGIN SOLUTION":
                inside = True
            elif tag == "# END SOLUTION":
                inside = False
            elif inside and len(tag) >= min_chars and not tag.startswith("#"):
                lines.append(tag)
    return lines


@dataclass
class Question:
    """One question of a master: what the student reads, the instructors' answer, its tests."""

    name: str  # "q1"
    points: float
    text: str  # the question's markdown
    solution: str  # the solution cell, BEGIN/END SOLUTION markers removed
    tests: list[str]  # the test cells (each defines a test function and calls it)


def _config(raw: str) -> dict:
    import yaml

    return yaml.safe_load(raw.split("\n", 1)[1]) or {}


def questions(master: Path) -> tuple[list[str], list[Question]]:
    """The setup code cells (outside any question) and the questions of a master, in order."""
    nb = json.loads(master.read_text())
    setup, out, cur, region = [], [], None, None
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        head = src.strip().split("\n", 1)[0].strip()
        if cell["cell_type"] == "raw":
            if head == "# BEGIN QUESTION":
                cfg = _config(src)
                cur = Question(str(cfg["name"]), float(cfg.get("points", 1)), "", "", [])
            elif head == "# END QUESTION":
                out.append(cur)
                cur = None
            elif head in ("# BEGIN SOLUTION", "# BEGIN TESTS"):
                region = head.split()[-1]
            elif head in ("# END SOLUTION", "# END TESTS"):
                region = None
            continue
        if cur is None:
            if cell["cell_type"] == "code":
                setup.append(src)
        elif cell["cell_type"] == "markdown" and region is None:
            cur.text += src
        elif region == "SOLUTION":
            cur.solution = "\n".join(
                ln for ln in src.splitlines() if ln.strip() not in ("# BEGIN SOLUTION", "# END SOLUTION"))
        elif region == "TESTS":
            cur.tests.append(src)
    return setup, out


def _highlighted(code: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    return highlight(code, PythonLexer(), HtmlFormatter(noclasses=True, nowrap=False))


def exercise(name: str, question: str, number: str):
    """A chapter's view of one graded question: its text as "Exercise ``number``", and the
    instructors' solution folded in a <details> dropdown (a dropdown in Jupyter and in the
    book alike).

    Runs the master's setup, the solutions of every question up to this one (later answers
    may use earlier ones) and this question's tests first, so the chapter's own run checks
    that the solution still passes against today's package; raises AssertionError if not.
    """
    from IPython.display import HTML, Markdown

    master = MASTERS / f"{name}.ipynb"
    setup, qs = questions(master)
    names = [q.name for q in qs]
    if question not in names:
        raise KeyError(f"{master.name} has no question {question!r} (it has {names})")
    ns: dict = {"__name__": f"assignment_{name}"}
    for code in setup:
        exec(compile(code, f"{master.name}:setup", "exec"), ns)
    for q in qs[: names.index(question) + 1]:
        exec(compile(q.solution, f"{master.name}:{q.name}", "exec"), ns)
    q = qs[names.index(question)]
    for t in q.tests:
        try:
            exec(compile(t, f"{master.name}:{q.name} tests", "exec"), dict(ns))
        except AssertionError as e:
            raise AssertionError(f"{master.name} {q.name}: the instructors' solution fails its test: {e}") from e
    text = re.sub(r"^\*\*Question \d+:?\s*", f"**Exercise {number}: ", q.text.strip(), count=1)
    note = (f"\n\n*Graded: question {q.name[1:]} of `assignments/{name}.ipynb` "
            f"({q.points:g} point{'s' if q.points != 1 else ''}; the README's \"For instructors\").*")
    folded = ("<details class=\"npga-solution\"><summary>Solution (checked against the package when "
              f"this chapter runs)</summary>{_highlighted(q.solution.strip())}</details>")
    return Markdown(text + note), HTML(folded)


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


def answered(notebook: Path, out: Path, answers: dict[str, str]) -> Path:
    """A copy of a (student) notebook with the code cells that define these functions
    replaced by the given code: a submission with known answers, to test the tests."""
    nb = json.loads(notebook.read_text())
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        for fn, code in answers.items():
            if cell["cell_type"] == "code" and f"def {fn}(" in src:
                cell["source"] = code.splitlines(keepends=True)
    out.write_text(json.dumps(nb))
    return out


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
