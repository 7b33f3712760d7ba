"""Every chapter of _toc.yml runs end to end in the mini profile (through the book's runner)."""

import pytest

from npga.book import runner as book_runner
from npga.config import REPO_ROOT

CHAPTERS = book_runner.chapters_from_toc()


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs(notebook, tmp_path):
    seconds = book_runner.execute_chapter(notebook, tmp_path / notebook.name, profile="mini")
    print(f"{notebook.relative_to(REPO_ROOT)}: {seconds:.1f} s")
