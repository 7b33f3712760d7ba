"""Deformation: the forward field F distilled from a head model's backward field (chapter 4).

* :mod:`.field`      -- :class:`ForwardField`, the MLP F(x_c, z_exp, z_id) -> x_p
* :mod:`.distill`    -- cycle-consistency distillation (the multi-identity prior, fine-tuning)
* :mod:`.baselines`  -- naive inversion and Newton root finding of B (the slow reference)
* :mod:`.transport`  -- :func:`deform_gaussians`: means through F, covariances through dF/dx
* :mod:`.analytic`   -- :class:`AnalyticHeadWarp`, a test backward field with an exact inverse
* :mod:`.store`      -- :func:`load_or_distill`: the cached prior of a profile
"""

from npga.deformation.analytic import AnalyticHeadWarp
from npga.deformation.baselines import (
    RootFindResult,
    naive_inversion,
    pointwise_jacobian,
    root_find,
)
from npga.deformation.distill import (
    canonical_samples,
    cycle_error,
    distill_forward_field,
    finetune_forward_field,
)
from npga.deformation.field import ForwardField
from npga.deformation.transport import (
    deform_gaussians,
    field_jacobian,
    polar_rotation,
    rotmat_to_quat,
)

__all__ = [
    "AnalyticHeadWarp",
    "ForwardField",
    "RootFindResult",
    "canonical_samples",
    "cycle_error",
    "deform_gaussians",
    "distill_forward_field",
    "field_jacobian",
    "finetune_forward_field",
    "naive_inversion",
    "pointwise_jacobian",
    "polar_rotation",
    "root_find",
    "rotmat_to_quat",
]
