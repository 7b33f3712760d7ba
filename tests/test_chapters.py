"""Every chapter of _toc.yml runs end to end in the mini profile (through the book's runner)."""

import pytest

from npga.book import runner as book_runner
from npga.config import REPO_ROOT

CHAPTERS = book_runner.chapters_from_toc()


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs(notebook):
    # Into the book's own cache (_build/executed/mini): `make test` then builds the HTML from
    # these executions and opens every page in a browser (npga.book.check_html).
    run = book_runner.run_chapter(notebook, "mini", force=True)
    print(f"{notebook.relative_to(REPO_ROOT)}: {run.seconds:.1f} s")
