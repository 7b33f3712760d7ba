"""Shared test settings."""

import os

# Tests run in the mini profile unless a test asks for another one explicitly.
os.environ.setdefault("NPGA_PROFILE", "mini")
