"""npga: Neural Parametric Gaussian Avatars, rebuilt from scratch for a tutorial book.

See ``docs/architecture.md`` for the package map.
"""

__version__ = "0.1.0"
