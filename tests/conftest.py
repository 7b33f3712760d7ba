"""Shared test settings."""

import os

import pytest

# Tests run in the mini profile unless a test asks for another one explicitly.
os.environ.setdefault("NPGA_PROFILE", "mini")

# Under pytest-xdist every worker gets one thread: two workers with two torch threads
# each on a 2-core machine make torch's thread pool wait on itself (measured: up to 20x
# slower). OMP_NUM_THREADS also reaches the notebook kernels the chapter tests start.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test runs torch on one thread (small MLPs and the pair-list rasterizer are
    fastest so, and ``pytest -n 2`` already fills both cores)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def head24():
    """A small SynthHead (identity 1, mesh resolution 24), shared by the SynthHead tests."""
    from npga.capture.synthetic import SynthHead, sample_identity

    return SynthHead(sample_identity(1), 24)


@pytest.fixture(scope="session")
def assignment_editions(tmp_path_factory):
    """``editions(name)``: both editions of assignments/NAME.ipynb, built once per session
    (per xdist worker) by npga.book.assignments.build (otter assign takes ~15 s each)."""
    from npga.book import assignments as asg

    root, built = tmp_path_factory.mktemp("assignment_editions"), {}

    def editions(name: str) -> dict:
        if name not in built:
            built[name] = asg.build(asg.MASTERS / f"{name}.ipynb", root)
        return built[name]

    return editions


@pytest.fixture
def grade_answers(assignment_editions, tmp_path):
    """``grade(name, answers, tag)``: the scores {question: (score, max, output)} of a student
    edition of assignments/NAME.ipynb with the functions in ``answers`` replaced."""
    from npga.book import assignments as asg

    def grade(name: str, answers: dict[str, str], tag: str = "answers") -> dict:
        e = assignment_editions(name)
        sub = asg.answered(e["student"] / f"{name}.ipynb", tmp_path / f"{name}_{tag}.ipynb", answers)
        return asg.grade_one(e["autograder"], sub)["questions"]

    return grade
