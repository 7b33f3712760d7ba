"""npga: Neural Parametric Gaussian Avatars, rebuilt from scratch for a tutorial book.

See ``docs/architecture.md`` for the package map. Importing the package tunes the C
allocator for large temporaries (:mod:`npga.runtime`; ``NPGA_MALLOC_TUNING=0`` opts out).
"""

from npga.runtime import tune_allocator as _tune_allocator

__version__ = "0.1.0"

_tune_allocator()
