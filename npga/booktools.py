"""Small helpers for the book's chapters (not part of the NPGA method)."""

from __future__ import annotations

import inspect


def show_source(obj, *, start: str | None = None, lines: int | None = None):
    """Display the source of a package function or class, highlighted.

    The book never pastes a second copy of an implementation: it shows the
    package's own code with this helper, so text and code cannot drift apart.
    ``start`` begins at the first line containing that text; ``lines`` truncates.
    Returns an IPython ``Code`` object in a notebook, the plain source elsewhere.
    """
    src = inspect.getsource(obj)
    if start is not None:
        idx = src.find(start)
        if idx < 0:
            raise ValueError(f"{start!r} not found in the source of {obj.__qualname__}")
        src = src[src.rfind("\n", 0, idx) + 1 :]
    if lines is not None:
        src = "\n".join(src.splitlines()[:lines]) + "\n    ..."
    try:
        from IPython.display import Code

        return Code(src, language="python")
    except ImportError:  # pragma: no cover - IPython ships with the book extra
        return src
