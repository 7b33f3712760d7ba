"""SynthHead: the procedural capture every chapter learns from.

``from npga.capture.synthetic import SynthHead, sample_identity, sequence_trajectory, ...``

* :mod:`.head` -- geometry, parts, identity and expression (fixed topology);
* :mod:`.appearance` -- procedural albedo, expression wrinkles, lighting;
* :mod:`.meshrender` -- the independent ground-truth mesh rasterizer;
* :mod:`.trajectories` -- NeRSemble-like expression sequences.
"""

from npga.capture.synthetic.head import (
    CULLED_PARTS,
    EXPRESSION_NAMES,
    EXPRESSION_RANGES,
    PART_NAMES,
    UNTRACKED_NAMES,
    head_pose,
    UNTRACKED_RANGES,
    Identity,
    SynthHead,
    clip_expression,
    sample_expression,
    sample_identity,
)
from npga.capture.synthetic.meshrender import (
    Fragments,
    interpolate,
    rasterize,
    render_mesh,
    resolve,
    vertex_normals,
)
from npga.capture.synthetic.trajectories import SEQUENCE_KINDS, sequence_trajectory

__all__ = [
    "CULLED_PARTS",
    "EXPRESSION_NAMES",
    "EXPRESSION_RANGES",
    "PART_NAMES",
    "SEQUENCE_KINDS",
    "UNTRACKED_NAMES",
    "UNTRACKED_RANGES",
    "head_pose",
    "Fragments",
    "Identity",
    "SynthHead",
    "clip_expression",
    "interpolate",
    "rasterize",
    "render_mesh",
    "resolve",
    "sample_expression",
    "sample_identity",
    "sequence_trajectory",
    "vertex_normals",
]
