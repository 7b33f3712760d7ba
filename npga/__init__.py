"""npga: Neural Parametric Gaussian Avatars, rebuilt from scratch for a tutorial book.

See ``docs/architecture.md`` for the package map. Importing the package sets one
process-wide thing, how the C allocator hands out large blocks (:func:`tune_allocator`;
``NPGA_MALLOC_TUNING=0`` opts out):

Training on the CPU makes and frees many large temporaries every step: F's tangents
(3, N, H) are 12 MB at 8000 Gaussians, the CNN's activations 11 MB, the rasterizer's
buffers more. glibc's malloc serves blocks above a size threshold with mmap and returns
freed memory at the top of its heap to the kernel once it exceeds a trim threshold;
either way the next temporary of that size comes back as fresh pages, and the kernel
zero-fills every 4 KiB page on first touch (a *page fault*). Measured here (AMD EPYC,
one thread, steady state after warm-up): one no-grad forward of F with its Jacobian at
8000 Gaussians (4 x 128) took 17,700 page faults and 91 ms with glibc's defaults, 200
faults and 55 ms with the settings below; a cpu-profile training step of the full
variant 0.450 s against 0.403 s (``benchmarks/train_step.py``, path ``after-untuned``).

:func:`tune_allocator` keeps those pages: blocks up to 32 MiB (glibc's largest mmap
threshold) come from the heap, the heap is never trimmed, and it grows in steps of
64 MiB. The cost is that the process keeps its peak heap size instead of shrinking after
a large evaluation; peak memory itself does not change.

``import npga`` calls it once, unless the environment sets ``NPGA_MALLOC_TUNING=0``
(how ``benchmarks/train_step.py`` times the path as it was before). Elsewhere than
glibc (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt() parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {
    "mmap_threshold": (M_MMAP_THRESHOLD, 32 * 1024 * 1024),  # glibc's maximum
    "trim_threshold": (M_TRIM_THRESHOLD, 2**31 - 1),  # never give the heap back
    "top_pad": (M_TOP_PAD, 64 * 1024 * 1024),  # grow the heap in large steps
}
ENV = "NPGA_MALLOC_TUNING"

_applied: dict[str, bool] | None = None


def env_switched_off(name: str) -> bool:
    """True when the environment variable ``name`` says 0 / false / no / off (opt-outs)."""
    return os.environ.get(name, "1").strip() in ("0", "false", "no", "off")


def tune_allocator(force: bool = False) -> dict[str, bool] | None:
    """Apply :data:`SETTINGS` with glibc's ``mallopt``; returns which were accepted.

    None when not applied: not Linux/glibc, or ``NPGA_MALLOC_TUNING=0`` (unless
    ``force``). Idempotent: a second call returns the first call's result.
    """
    global _applied
    if _applied is not None:
        return _applied
    if not force and env_switched_off(ENV):
        return None
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: musl has no such symbol
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = {name: bool(mallopt(param, value)) for name, (param, value) in SETTINGS.items()}
    return _applied


def allocator_state() -> str:
    """One line for benchmark records: which allocator settings this process runs with."""
    if _applied is None:
        return "default allocator"
    ok = [k for k, v in _applied.items() if v]
    return "tuned allocator (" + ", ".join(ok) + ")" if ok else "allocator tuning refused"

__version__ = "0.1.0"

tune_allocator()
