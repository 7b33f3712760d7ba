"""Course assignments (npga.book.assignments): both editions, and grading them gives what it should.

Builds every master in assignments/ with otter-grader (the `course` extra, which make
installs), then grades the solved edition (full marks), the untouched student edition (zero,
with a message per question) and a notebook with typical wrong answers (the messages name the
mistake).
"""

import csv
import json

import pytest

from npga.book import assignments as asg

MASTER = asg.MASTERS / "ch02_splatting.ipynb"
# Tests of one master share a worker (make test runs pytest with --dist loadgroup), so each
# worker builds only the editions it grades: otter assign takes ~15 s a master.
ch02 = pytest.mark.xdist_group(MASTER.stem)


def test_every_master_has_solutions_to_hide():
    """Each master's solutions are what the student-edition check below searches for."""
    for m in asg.masters():
        assert len(asg.solution_lines(m)) >= 3, f"{m.name}: fewer than 3 solution lines found"


@pytest.fixture(scope="module")
def built(assignment_editions):
    return assignment_editions(MASTER.stem)


@pytest.mark.parametrize(
    "name", [pytest.param(m.stem, marks=pytest.mark.xdist_group(m.stem)) for m in asg.masters()]
)
def test_each_master_solutions_full_marks_student_edition_zero(assignment_editions, name):
    e = assignment_editions(name)
    full = asg.grade_one(e["autograder"], e["autograder"] / f"{name}.ipynb")["questions"]
    assert full and all(sc == mx > 0 for sc, mx, _ in full.values()), full
    student = e["student"] / f"{name}.ipynb"
    zero = asg.grade_one(e["autograder"], student)["questions"]
    assert set(zero) == set(full) and all(sc == 0 for sc, _, _ in zero.values()), zero
    for q, (_, _, output) in zero.items():  # each question says why it failed
        assert "failed" in output.lower() and "Error" in output, f"{name} {q}: {output}"
    text = student.read_text()
    assert "grader.check" in text
    for line in asg.solution_lines(asg.MASTERS / f"{name}.ipynb"):
        assert line not in text, f"solution code left in the student edition of {name}: {line!r}"


@pytest.mark.xdist_group("ch06_laplacian")
def test_laplacian_mistakes_are_named(grade_answers):
    res = grade_answers("ch06_laplacian", {
        "my_knn": ("def my_knn(points, k):\n"
                   "    return torch.cdist(points, points).topk(k, dim=1, largest=False).indices\n"),
        "my_graph_laplacian": ("def my_graph_laplacian(values, nbrs):\n"
                               "    return values[nbrs].mean(dim=1) - values\n"),
        "my_laplacian_energy": ("def my_laplacian_energy(values, nbrs):\n"
                                "    return my_graph_laplacian(values, nbrs).norm(dim=-1).mean()\n"),
    })
    assert res["q1"][0] == 0 and "its own neighbour" in res["q1"][2], res["q1"][2]
    assert res["q2"][0] == 0 and "sign is flipped" in res["q2"][2], res["q2"][2]
    assert res["q3"][0] == 0 and "squared" in res["q3"][2], res["q3"][2]


@ch02
def test_typical_mistakes_fail_with_the_message_that_names_them(built, tmp_path):
    sub = tmp_path / "wrong.ipynb"
    asg.answered(built["student"] / MASTER.name, sub, {
        # R^T S^2 R: the rotation on the wrong side
        "my_covariance": (
            "def my_covariance(quats, log_scales):\n"
            "    R = G.quat_to_rotmat(quats / quats.norm(dim=-1, keepdim=True))\n"
            "    return R.transpose(-1, -2) @ torch.diag_embed((2 * log_scales).exp()) @ R\n"
        ),
        # +C1 y instead of -C1 y
        "my_sh_basis": (
            "def my_sh_basis(dirs):\n"
            "    c0, c1 = 1 / (2 * math.sqrt(math.pi)), math.sqrt(3) / (2 * math.sqrt(math.pi))\n"
            "    x, y, z = dirs.unbind(-1)\n"
            "    return torch.stack([torch.full_like(x, c0), c1 * y, c1 * z, -c1 * x], dim=-1)\n"
        ),
        # no early stop
        "composite_pixel": (
            "def composite_pixel(colors, alphas):\n"
            "    C, T = torch.zeros(3), 1.0\n"
            "    for c, a in zip(colors, alphas):\n"
            "        a = min(float(a), 0.999)\n"
            "        if a >= 1 / 255:\n"
            "            C, T = C + a * T * c, T * (1 - a)\n"
            "    return C, 1 - T\n"
        ),
    })
    res = asg.grade_one(built["autograder"], sub)["questions"]
    assert res["q1"][0] < res["q1"][1] and "rotation goes on the left" in res["q1"][2], res["q1"][2]
    assert res["q2"][0] == 0 and "column 1 (-C1 y) has the wrong sign" in res["q2"][2], res["q2"][2]
    assert res["q3"][0] == 0 and "early stop" in res["q3"][2], res["q3"][2]


@ch02
def test_grading_a_folder_writes_one_csv_row_per_submission(built, tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "alice.ipynb").write_text((built["autograder"] / MASTER.name).read_text())
    (subs / "bob.ipynb").write_text((built["student"] / MASTER.name).read_text())
    path = asg.grade(built["autograder"], subs)
    rows = {r["file"]: r for r in csv.DictReader(path.open())}
    assert set(rows) == {"alice.ipynb", "bob.ipynb"}
    assert float(rows["alice.ipynb"]["total"]) == float(rows["alice.ipynb"]["max"]) > 0
    assert float(rows["bob.ipynb"]["total"]) == 0
    with pytest.raises(FileNotFoundError, match="no submissions"):
        asg.grade(built["autograder"], tmp_path / "empty_dir_that_is_missing")


def test_a_master_whose_solutions_fail_does_not_build(tmp_path):
    nb = json.loads(MASTER.read_text())
    for cell in nb["cells"]:
        if "def my_sh_basis(" in "".join(cell["source"]):
            cell["source"] = ["def my_sh_basis(dirs):\n", "    return dirs\n"]
    bad = tmp_path / "broken.ipynb"
    bad.write_text(json.dumps(nb))
    with pytest.raises(RuntimeError, match="otter assign broken.ipynb failed"):
        asg.build(bad, tmp_path / "out")
    assert not (tmp_path / "out" / "student" / "broken").exists()


def test_chapter_exercise_shows_the_question_and_checks_its_solution(tmp_path, monkeypatch):
    """npga.book.assignments.exercise: what a chapter displays for a graded question."""
    text, folded = asg.exercise("ch02_splatting", "q3", "2.3")
    assert text.data.startswith("**Exercise 2.3: ") and "Question" not in text.data.split("\n")[0]
    assert "question 3 of `assignments/ch02_splatting.ipynb`" in text.data
    assert folded.data.startswith("<details") and "composite_pixel" in folded.data
    assert "BEGIN SOLUTION" not in folded.data
    with pytest.raises(KeyError, match="has no question 'q9'"):
        asg.exercise("ch02_splatting", "q9", "2.9")
    # a master whose solution no longer passes its test: the chapter's run must stop
    nb = json.loads(MASTER.read_text())
    for cell in nb["cells"]:
        if "def my_sh_basis(" in "".join(cell["source"]):
            cell["source"] = ["def my_sh_basis(dirs):\n", "    return dirs\n"]
    (tmp_path / MASTER.name).write_text(json.dumps(nb))
    monkeypatch.setattr(asg, "MASTERS", tmp_path)
    asg.exercise("ch02_splatting", "q1", "2.1")  # q1 is untouched and still passes
    with pytest.raises(AssertionError, match="instructors' solution fails its test"):
        asg.exercise("ch02_splatting", "q2", "2.2")
