"""Small helpers for the book's chapters (not part of the NPGA method)."""

from __future__ import annotations

import inspect
import sys


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


def markdown_table(rows: list[dict], digits: int = 2, text: bool = False):
    """A list of dicts (one per row) as a Markdown table, floats rounded.

    Columns are the keys in order of first appearance; a row without a key shows "-".
    Returns an IPython ``Markdown`` object in a notebook (the book renders it as an HTML
    table), the text elsewhere or with ``text=True``.
    """
    if not rows:
        raise ValueError("markdown_table: no rows")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k, "-")) for k in keys) + " |" for r in rows]
    out = "\n".join(lines)
    if text:
        return out
    try:
        from IPython.display import Markdown

        return Markdown(out)
    except ImportError:  # pragma: no cover
        return out


def player(draw, values, *, figsize: tuple[float, float] = (5.0, 3.6), label: str | None = None,
           fps: float = 3.0, dpi: int = 80):
    """A kernel-free player: the frames ``draw(fig, value)`` makes for each of ``values``,
    with a slider and play buttons that work in a static page.

    matplotlib's ``FuncAnimation(...).to_jshtml()`` embeds every frame as a PNG and the
    controls as a few lines of JavaScript, so the book's HTML can be scrubbed without a
    kernel (the ipywidgets sliders beside it need one). ``label``: a title "label = value"
    on each frame. The font-awesome stylesheet that matplotlib links from a CDN is
    dropped (the book's theme ships the icons; a page must not touch the network).
    Returns an IPython ``HTML`` object (the HTML text without IPython).
    """
    import re

    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    values = list(values)
    if not values:
        raise ValueError("player: no values to show")
    fig = plt.figure(figsize=figsize, dpi=dpi)

    def frame(i: int) -> None:
        fig.clear()
        draw(fig, values[i])
        if label:
            v = values[i]
            fig.suptitle(f"{label} = {v:.2f}" if isinstance(v, float) else f"{label} = {v}", fontsize=9)

    anim = FuncAnimation(fig, frame, frames=len(values), interval=1000.0 / fps, repeat=False)
    html = anim.to_jshtml(fps=fps, default_mode="once")
    plt.close(fig)
    html = re.sub(r"<link[^>]*font-awesome[^>]*>", "", html)
    try:
        from IPython.display import HTML

        return HTML(html)
    except ImportError:  # pragma: no cover
        return html


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def environment_report(profile_name: str | None = None) -> list[dict]:
    """Check what the book needs and say what to do about anything missing.

    Returns rows ``{"item", "value", "ok", "hint"}``; chapter 0 shows them as a table.
    Nothing here triggers a CUDA compile: gsplat is only imported, never called.
    """
    import os
    import platform

    from npga.config import get_profile

    rows: list[dict] = []

    def row(item: str, value, ok: bool, hint: str = "") -> None:
        rows.append({"item": item, "value": str(value), "ok": bool(ok), "hint": "" if ok else hint})

    row("python", platform.python_version(), sys.version_info >= (3, 10), "install Python >= 3.10")
    install_hint = "run `make test` or `make book` once: they install everything into .venv"
    for module, dist in [
        ("torch", "torch"),
        ("numpy", "numpy"),
        ("matplotlib", "matplotlib"),
        ("ipywidgets", "ipywidgets"),
        ("plyfile", "plyfile"),
        ("skimage", "scikit-image"),
        ("pycolmap", "pycolmap"),
        ("papermill", "papermill"),
    ]:
        v = _version(dist)
        row(dist, v or "missing", v is not None, install_hint)
    row("CPU cores", os.cpu_count(), (os.cpu_count() or 1) >= 2, "a single core works, slowly")

    try:
        import torch

        cuda = torch.cuda.is_available()
        row(
            "torch threads",
            torch.get_num_threads(),
            True,
        )
        row("CUDA GPU", torch.cuda.get_device_name(0) if cuda else "none", True)
    except ImportError:
        cuda = False
    gsplat_version = _version("gsplat")
    row(
        "gsplat",
        gsplat_version or "missing",
        gsplat_version is not None or not cuda,
        "pip install gsplat==1.5.3 (needs a CUDA toolkit; it compiles on first use)",
    )
    backend = "gsplat (CUDA)" if cuda and gsplat_version else "torch (pure PyTorch)"
    row("rendering backend", backend, True)

    try:
        profile = get_profile(profile_name)
        ok = not (profile.device == "cuda" and not cuda)
        row(
            "profile",
            profile.name,
            ok,
            "the gpu profile needs a CUDA GPU: use profile mini or cpu here",
        )
    except ValueError as err:
        row("profile", profile_name, False, str(err))
    return rows
