"""The book's plumbing: profiles, notebooks, environment files, the chapter runner."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest
import tomllib
import yaml

from npga.book import runner as book_runner
from npga.config import PROFILE_NAMES, REPO_ROOT, get_profile, numeric_sizes, with_overrides

NOTEBOOKS = sorted((REPO_ROOT / "book").rglob("*.ipynb"))
NOTEBOOKS = [p for p in NOTEBOOKS if ".ipynb_checkpoints" not in p.parts]


# ----------------------------------------------------------------------------- profiles


def test_profile_selection(monkeypatch):
    monkeypatch.delenv("NPGA_PROFILE", raising=False)
    assert get_profile().name == "mini"
    monkeypatch.setenv("NPGA_PROFILE", "cpu")
    assert get_profile().name == "cpu"
    assert get_profile("mini").name == "mini"  # an explicit name wins
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        get_profile("huge")


def test_gpu_profile_only_when_asked(monkeypatch):
    monkeypatch.delenv("NPGA_PROFILE", raising=False)
    assert all(get_profile().name != "gpu" for _ in range(2))
    gpu = get_profile("gpu")
    assert gpu.device == "cuda"
    assert (gpu.data.width, gpu.data.height) == (550, 802)  # NPGA's evaluation size
    assert all(get_profile(n).device == "cpu" for n in ("mini", "cpu"))


# Fields that measure the size of the workload; they grow from mini to cpu to gpu.
# (Learning rates, thresholds and switches are tuned per profile and are not ordered.)
SIZE_FIELDS = {
    "width", "height", "participants", "frames_per_sequence", "mesh_resolution",
    "scan_identities", "scan_expressions", "iterations", "n_init_gaussians", "max_gaussians",
    "id_dims", "exp_dims", "hidden", "samples_per_step", "n_gaussians", "feature_dim",
    "detail_hidden", "cnn_channels",
}


def test_profiles_complete_and_ordered():
    sizes = {name: numeric_sizes(get_profile(name)) for name in PROFILE_NAMES}
    keys = set(sizes["mini"])
    assert keys, "profiles expose no sizes"
    for name in PROFILE_NAMES:
        assert set(sizes[name]) == keys, f"profile {name} lacks or adds fields"
    ordered = {k for k in keys if k.rsplit(".", 1)[-1] in SIZE_FIELDS}
    assert len(ordered) >= 15, sorted(ordered)
    for key in ordered:
        assert sizes["mini"][key] <= sizes["cpu"][key] <= sizes["gpu"][key], key
    for key in ("data.width", "data.height", "static_fit.iterations", "avatar.iterations"):
        assert sizes["mini"][key] < sizes["cpu"][key] < sizes["gpu"][key], key


def test_profile_image_sizes():
    for name in PROFILE_NAMES:
        d = get_profile(name).data
        # NeRSemble's portrait aspect 2200:3208 within 1 %
        assert abs(d.width / d.height - 2200 / 3208) < 0.01 * 2200 / 3208, name
        assert d.heldout_sequence in d.sequences
    assert max(get_profile("mini").data.width, get_profile("mini").data.height) <= 128


def test_with_overrides_leaves_original():
    p = get_profile("mini")
    q = with_overrides(p, data={"width": 44, "height": 64})
    assert (q.data.width, q.data.height) == (44, 64)
    assert (p.data.width, p.data.height) != (44, 64)
    assert q.static_fit == p.static_fit


# ---------------------------------------------------------------------------- notebooks


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks in book/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name} cell {i} has outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
    assert tagged[0].cell_type == "code"
    assert re.search(r'^profile\s*=\s*"mini"', tagged[0].source, re.M), tagged[0].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_structure(path):
    """Each chapter states what it teaches and ends with exercises and references."""
    text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
    for heading in ("What you will learn", "Exercises", "References"):
        assert heading in text, f"{path.name} has no '{heading}'"


def test_toc_lists_every_notebook():
    listed = {(REPO_ROOT / p).resolve() for p in book_runner.chapters_from_toc()}
    assert listed == {p.resolve() for p in NOTEBOOKS}


# ------------------------------------------------------------------ environment files


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    pip_lists = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml needs exactly one pip section"
    installs = [line for line in pip_lists[0] if line.startswith("-e .") or line.startswith(".")]
    assert installs, "environment.yml's pip section must install the package itself"
    extras = set(re.search(r"\[(.*)\]", installs[0]).group(1).split(","))
    assert extras == set(project["optional-dependencies"]), (
        f"environment.yml installs extras {sorted(extras)}, pyproject defines "
        f"{sorted(project['optional-dependencies'])}"
    )
    declared = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {_name(r) for r in extra}
    conda = [d for d in deps if isinstance(d, str)]
    for spec in conda:
        name = _name(spec.replace("=", "=="))
        if name in ("python", "pip"):
            continue
        assert name in declared, f"environment.yml installs {name} which pyproject does not declare"
    python = next(d for d in conda if d.startswith("python"))
    major, minor = (int(v) for v in python.split("=")[1].split(".")[:2])
    required = re.search(r">=\s*(\d+)\.(\d+)", project["requires-python"])
    assert (major, minor) >= (int(required.group(1)), int(required.group(2)))


def test_imports_declared():
    """Every third-party module the package imports is a declared dependency."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {_name(r) for r in extra}
    module_to_dist = {"skimage": "scikit-image", "PIL": "pillow", "yaml": "pyyaml", "IPython": "ipykernel"}
    import sys

    stdlib = set(sys.stdlib_module_names)
    for path in (REPO_ROOT / "npga").rglob("*.py"):
        modules = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
        for mod in sorted(modules):
            if mod in stdlib or mod in ("npga", "__future__"):
                continue
            dist = module_to_dist.get(mod, mod).lower().replace("_", "-")
            assert dist in declared, f"{path.relative_to(REPO_ROOT)} imports {mod}, not declared"


# ---------------------------------------------------------------------- chapter runner


def _write_notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "mini"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def tiny_book(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "npga").mkdir()
    (tmp_path / "npga" / "x.py").write_text("A = 1\n")
    _write_notebook(tmp_path / "book" / "a.ipynb", "print('a', profile)")
    _write_notebook(tmp_path / "book" / "b.ipynb", "print('b', profile)")
    (tmp_path / "book" / "intro.md").write_text("# intro\n")
    toc = {"format": "jb-book", "root": "book/intro", "chapters": [{"file": "book/a"}, {"file": "book/b"}]}
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump(toc))
    return tmp_path


def test_runner_injects_profile_and_caches(tiny_book):
    build = tiny_book / "_build"
    runs = book_runner.run_book("cpu", root=tiny_book, build_dir=build, log=lambda s: None)
    assert [r.cached for r in runs] == [False, False]
    out = nbformat.read(runs[0].output, as_version=4)
    printed = "".join(o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.outputs)
    assert "a cpu" in printed  # the injected parameter reached the kernel

    again = book_runner.run_book("cpu", root=tiny_book, build_dir=build, log=lambda s: None)
    assert [r.cached for r in again] == [True, True]

    _write_notebook(tiny_book / "book" / "b.ipynb", "print('b changed', profile)")
    edited = book_runner.run_book("cpu", root=tiny_book, build_dir=build, log=lambda s: None)
    assert [r.cached for r in edited] == [True, False]

    (tiny_book / "npga" / "x.py").write_text("A = 2\n")  # package source changed
    pkg = book_runner.run_book("cpu", root=tiny_book, build_dir=build, log=lambda s: None)
    assert [r.cached for r in pkg] == [False, False]

    other = book_runner.run_book("mini", root=tiny_book, build_dir=build, log=lambda s: None)
    assert [r.cached for r in other] == [False, False]  # another profile, another cache


def test_runner_names_failing_chapter_and_cell(tiny_book):
    _write_notebook(tiny_book / "book" / "b.ipynb", "x = 1\nraise ValueError('broken on purpose')")
    build = tiny_book / "_build"
    with pytest.raises(book_runner.ChapterError) as info:
        book_runner.run_book("mini", root=tiny_book, build_dir=build, log=lambda s: None)
    msg = str(info.value)
    assert "b.ipynb" in msg and "cell #3" in msg and "broken on purpose" in msg
    assert "x = 1" in msg  # the cell's first line, so the reader can find it
    assert not (build / "executed" / "mini" / "book" / "b.ipynb").exists()  # nothing half-written
    assert not (build / "executed" / "mini" / "book" / "b.key").exists()


def test_toc_missing_file_is_reported(tiny_book):
    toc = yaml.safe_load((tiny_book / "_toc.yml").read_text())
    toc["chapters"].append({"file": "book/missing"})
    (tiny_book / "_toc.yml").write_text(yaml.safe_dump(toc))
    with pytest.raises(FileNotFoundError, match="book/missing"):
        book_runner.chapters_from_toc(tiny_book)


# --------------------------------------------------------------------------- layout (issue 12)


def test_package_folders_follow_the_stages():
    """The package is organised by stage: at most 4 modules at its top, one folder per
    stage, no chapter or package module reaching into benchmarks/ or sys.path."""
    pkg = REPO_ROOT / "npga"
    top = sorted(p.name for p in pkg.glob("*.py"))
    assert len(top) <= 4, f"modules left at the top of npga/: {top}"
    for stage in ("capture", "splatting", "headmodels", "deformation", "avatar", "experiments", "book"):
        assert (pkg / stage / "__init__.py").is_file(), f"npga/{stage}/ is missing"
    for nb in sorted((REPO_ROOT / "book").glob("*.ipynb")):
        assert "sys.path" not in nb.read_text(), f"{nb.name} edits sys.path"
    for py in sorted(pkg.rglob("*.py")):
        text = py.read_text()
        assert "sys.path" not in text, f"{py.relative_to(REPO_ROOT)} edits sys.path"
        assert "import ablation" not in text and "benchmarks." not in text, (
            f"{py.relative_to(REPO_ROOT)} imports from benchmarks/"
        )


def test_save_npz_is_deterministic_and_loadable(tmp_path):
    import time

    import numpy as np

    from npga.io import save_npz

    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array(["x", "yz"])}
    save_npz(tmp_path / "one.npz", **arrays)
    time.sleep(2.1)  # zip timestamps have 2 s resolution: a time stamp would differ now
    save_npz(tmp_path / "two.npz", **arrays)
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    with np.load(tmp_path / "one.npz") as z:
        assert sorted(z.files) == ["a", "b"]
        np.testing.assert_array_equal(z["a"], arrays["a"])
        np.testing.assert_array_equal(z["b"], arrays["b"])
    assert not list(tmp_path.glob("*.tmp*")), "a temporary file was left behind"


def test_import_tunes_the_allocator_unless_told_not_to():
    """``import npga`` applies the glibc malloc settings (on Linux), ``NPGA_MALLOC_TUNING=0``
    leaves the allocator alone; each in a fresh interpreter, since they are process-wide."""
    import os
    import subprocess
    import sys

    code = "import npga; print(npga.allocator_state())"
    out = {}
    for flag in ("1", "0"):
        env = {**os.environ, "NPGA_MALLOC_TUNING": flag}
        out[flag] = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True,
                                   text=True, check=True).stdout.strip()
    assert out["0"] == "default allocator"
    if sys.platform.startswith("linux"):
        assert out["1"] == "tuned allocator (mmap_threshold, trim_threshold, top_pad)"
