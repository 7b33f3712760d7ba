"""Execute the book's chapters with papermill and build the HTML with Jupyter Book 1.

One runner serves both ``make book`` and the test suite:

* :func:`chapters_from_toc` reads ``_toc.yml`` and lists the notebooks, in order.
* :func:`execute_chapter` runs one notebook with papermill, the profile injected
  into the cell tagged ``parameters``. A failing cell raises :class:`ChapterError`
  naming the chapter and the cell.
* :func:`run_book` executes every chapter into ``_build/executed/<profile>/``,
  skipping a chapter whose cache key is unchanged. The key hashes the notebook's
  content, the package's source and the profile name, so editing one chapter
  re-executes only that chapter, while editing ``npga/`` re-executes all.
* :func:`build_html` stages the executed copies beside ``_config.yml`` and
  ``_toc.yml`` and runs ``jupyter-book build`` with notebook execution off.

Command line::

    python -m npga.book.runner [--profile mini] [--no-html] [--force] [--only NAME]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from npga.config import PROFILE_NAMES, REPO_ROOT

BUILD_DIR = REPO_ROOT / "_build"
RUNNER_VERSION = "1"  # bump to invalidate every cached chapter


class ChapterError(RuntimeError):
    """A chapter failed to execute; the message names the chapter and the cell."""


# ----------------------------------------------------------------------- table of contents


def _toc_entries(node) -> list[str]:
    """Every ``file`` entry of a Jupyter Book ``_toc.yml`` tree, depth first."""
    out: list[str] = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if key in node:
                out.append(str(node[key]))
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key, []) or []:
                out.extend(_toc_entries(child))
    elif isinstance(node, list):
        for child in node:
            out.extend(_toc_entries(child))
    return out


def toc_files(root: Path = REPO_ROOT) -> list[str]:
    """All pages of ``_toc.yml`` (without suffix), in reading order."""
    import yaml

    toc_path = root / "_toc.yml"
    if not toc_path.is_file():
        raise FileNotFoundError(f"{toc_path}: table of contents not found")
    return _toc_entries(yaml.safe_load(toc_path.read_text()))


def chapters_from_toc(root: Path = REPO_ROOT) -> list[Path]:
    """The notebooks listed in ``_toc.yml``, in order (markdown pages excluded)."""
    chapters = []
    for entry in toc_files(root):
        path = root / (entry if entry.endswith(".ipynb") else entry + ".ipynb")
        if path.is_file():
            chapters.append(path)
        elif not (root / (entry + ".md")).is_file() and not (root / entry).is_file():
            raise FileNotFoundError(f"_toc.yml lists {entry!r}, but no .ipynb or .md exists")
    return chapters


# ------------------------------------------------------------------------------ cache key


def package_digest(root: Path = REPO_ROOT) -> str:
    """Hash of the package's and data scripts' source, and of the recorded benchmark results
    that chapters load (so a new results file re-executes those chapters)."""
    h = hashlib.sha256()
    files = []
    sources = (("npga", "*.py"), ("data_scripts", "*.py"), ("benchmarks/results", "*"))
    for folder, pattern in sources:
        files += sorted((root / folder).rglob(pattern))
    for path in files:
        if path.is_file() and not path.name.startswith("."):  # skip in-flight temp files
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def chapter_key(notebook: Path, profile: str, pkg_digest: str) -> str:
    """Cache key of one chapter: its content, the package's source, the profile."""
    h = hashlib.sha256()
    h.update(RUNNER_VERSION.encode())
    h.update(notebook.read_bytes())
    h.update(pkg_digest.encode())
    h.update(profile.encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------ execution


def _failed_cell_message(notebook: Path, err) -> str:
    """Describe a papermill failure: chapter, cell number in the source notebook, error.

    papermill's ``cell_index`` counts the cell it injects for the parameters, so the
    failing cell is located in the *source* notebook by its text instead.
    """
    import nbformat

    source = (getattr(err, "source", "") or "").strip()
    first = source.splitlines()[0] if source else ""
    where = "a cell"
    try:
        cells = nbformat.read(notebook, as_version=4).cells
        matches = [i for i, c in enumerate(cells) if c.source.strip() == source]
        if matches:
            where = f"cell #{matches[0] + 1} (counting from 1, markdown cells included)"
    except Exception:  # the message must never hide the original error
        pass
    return (
        f"chapter {notebook.name} failed in {where}: "
        f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', err)}\n"
        f"    cell starts with: {first}"
    )


def execute_chapter(
    notebook: Path,
    output: Path,
    profile: str = "mini",
    timeout: int | None = 600,  # per cell: a hung kernel must not stall CI
    cwd: Path | None = None,
) -> float:
    """Run ``notebook`` with papermill into ``output``; return the wall time in seconds.

    The profile is injected into the cell tagged ``parameters``. The executed copy is
    written to a temporary file first and renamed only on success, so a failing
    chapter never leaves a stale-but-plausible output behind.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    notebook = Path(notebook)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.running.ipynb")
    env_profile = os.environ.get("NPGA_PROFILE")
    os.environ["NPGA_PROFILE"] = profile  # so subprocesses started by a chapter agree
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(notebook),
            str(tmp),
            parameters={"profile": profile},
            kernel_name="python3",
            progress_bar=False,
            cwd=str(cwd or notebook.parent),
            execution_timeout=timeout,
        )
    except PapermillExecutionError as err:
        raise ChapterError(_failed_cell_message(notebook, err)) from None
    except Exception as err:  # kernel died, timeout, malformed notebook, ...
        raise ChapterError(f"chapter {notebook.name} could not run: {type(err).__name__}: {err}") from None
    finally:
        if env_profile is None:
            os.environ.pop("NPGA_PROFILE", None)
        else:
            os.environ["NPGA_PROFILE"] = env_profile
    os.replace(tmp, output)
    return time.perf_counter() - start


@dataclass
class ChapterRun:
    notebook: Path
    output: Path
    seconds: float
    cached: bool


def run_book(
    profile: str = "mini",
    *,
    root: Path = REPO_ROOT,
    build_dir: Path = BUILD_DIR,
    force: bool = False,
    only: list[str] | None = None,
    log=print,
) -> list[ChapterRun]:
    """Execute every chapter of ``_toc.yml`` for ``profile``, reusing cached results.

    Stops at the first failing chapter with :class:`ChapterError`.
    """
    if profile not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {PROFILE_NAMES}")
    digest = package_digest(root)
    runs: list[ChapterRun] = []
    for nb in chapters_from_toc(root):
        if only and nb.stem not in only and nb.name not in only:
            continue
        run = run_chapter(nb, profile, root=root, build_dir=build_dir, force=force, digest=digest)
        runs.append(run)
        rel = nb.relative_to(root)
        log(f"  {rel}: cached" if run.cached else f"  {rel}: executed in {run.seconds:.1f} s")
    return runs


def run_chapter(
    notebook: Path,
    profile: str = "mini",
    *,
    root: Path = REPO_ROOT,
    build_dir: Path = BUILD_DIR,
    force: bool = False,
    digest: str | None = None,
) -> ChapterRun:
    """Execute one chapter into ``build_dir/executed/profile`` unless its cache key is unchanged.

    ``tests/test_chapters.py`` runs every chapter through this, so the HTML that ``make
    test`` builds afterwards reuses the executions the tests made.
    """
    rel = notebook.relative_to(root)
    output = build_dir / "executed" / profile / rel
    key_file = output.with_suffix(".key")
    key = chapter_key(notebook, profile, digest or package_digest(root))
    if not force and output.is_file() and key_file.is_file() and key_file.read_text() == key:
        return ChapterRun(notebook, output, 0.0, True)
    key_file.unlink(missing_ok=True)
    seconds = execute_chapter(notebook, output, profile)
    key_file.write_text(key)
    return ChapterRun(notebook, output, seconds, False)


# ------------------------------------------------------------------------------ HTML


def _sync_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` only when the content differs (keeps Sphinx incremental)."""
    if dst.is_file() and dst.read_bytes() == src.read_bytes():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def _sync_text(text: str, dst: Path) -> None:
    if dst.is_file() and dst.read_text() == text:
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(text)


def _hide_default_parameters(executed: Path) -> str:
    """The executed notebook with its default ``parameters`` cell removed from the page.

    papermill adds a cell with the injected values right after it; the page keeps
    that one, so readers see the profile the chapter really ran with.
    """
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    return nbformat.writes(nb)


def stage_sources(profile: str, root: Path = REPO_ROOT, build_dir: Path = BUILD_DIR) -> Path:
    """Assemble a Jupyter Book source tree from the repository and the executed chapters."""
    stage = build_dir / "src" / profile
    executed = build_dir / "executed" / profile
    listed = {p.resolve() for p in chapters_from_toc(root)}
    for name in ("_config.yml", "_toc.yml"):
        _sync_file(root / name, stage / name)
    for path in (root / "book").rglob("*"):
        if not path.is_file() or ".ipynb_checkpoints" in path.parts:
            continue
        rel = path.relative_to(root)
        if path.suffix == ".ipynb":
            if path.resolve() not in listed:
                continue  # a draft chapter not (yet) in _toc.yml
            src = executed / rel
            if not src.is_file():
                raise FileNotFoundError(f"{rel} has not been executed for profile {profile}")
            _sync_text(_hide_default_parameters(src), stage / rel)
        else:
            _sync_file(path, stage / rel)
    return stage


def build_html(profile: str = "mini", root: Path = REPO_ROOT, build_dir: Path = BUILD_DIR) -> Path:
    """Build ``_build/html`` with Jupyter Book 1 from the executed chapters."""
    stage = stage_sources(profile, root, build_dir)
    cmd = [
        sys.executable,
        "-c",
        "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
        "build",
        str(stage),
        "--path-output",
        str(build_dir.parent if build_dir.name == "_build" else build_dir),
        "--toc",
        str((stage / "_toc.yml").resolve()),  # an absolute path: relative ones are resolved oddly
        "--config",
        str((stage / "_config.yml").resolve()),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-5000:] + result.stderr[-5000:])
        raise RuntimeError(f"jupyter-book build failed (exit {result.returncode})")
    index = build_dir / "html" / "index.html"
    if not index.is_file():
        raise RuntimeError(f"jupyter-book finished but {index} does not exist")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=os.environ.get("PROFILE", "mini"), choices=PROFILE_NAMES)
    parser.add_argument("--force", action="store_true", help="re-execute every chapter")
    parser.add_argument("--no-html", action="store_true", help="execute chapters only")
    parser.add_argument("--only", nargs="*", help="run only these chapters (file stems)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    print(f"Executing chapters (profile {args.profile}):")
    try:
        runs = run_book(args.profile, force=args.force, only=args.only)
    except ChapterError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    executed = sum(not r.cached for r in runs)
    print(f"{executed} executed, {len(runs) - executed} cached")
    if not args.no_html:
        try:
            index = build_html(args.profile)
        except (RuntimeError, FileNotFoundError) as err:
            print(f"ERROR: {err}", file=sys.stderr)
            return 1
        print(f"HTML: {index}")
    print(f"book done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
