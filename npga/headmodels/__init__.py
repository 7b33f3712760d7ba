"""Head models: a linear 3DMM and a small neural parametric head model (NPHM), and tracking.

* :mod:`.linear3dmm` -- PCA identity and expression bases, closed-form fitting;
* :mod:`.nphm` -- canonical SDF ``f(x_c, z_id)`` + backward deformation
  ``B(x_p, z_id, z_exp)``, auto-decoded codes, training and fitting;
* :mod:`.geometry` -- closest points, outer surface of a multi-part mesh, SDF, Chamfer,
  marching cubes;
* :mod:`.sdf_samples` -- SDF samples and registered correspondences for training;
* :mod:`.scans` -- SynthHead's registered scans, cropped, with canonical faces;
* :mod:`.colmap_points` -- SIFT, matching and triangulation with known cameras (pycolmap);
* :mod:`.fitting` -- tracking whole captures with both models;
* :mod:`.store` -- train / evaluate / save / ``load_or_train``.
"""

from npga.headmodels.fitting import track_dataset, tracked
from npga.headmodels.linear3dmm import Linear3DMM
from npga.headmodels.nphm import NPHM, NPHMSpec, fit_nphm, train_nphm
from npga.headmodels.store import (
    load_eval,
    load_or_train,
    model_path,
    models_dir,
    train_head_models,
)

__all__ = [
    "Linear3DMM",
    "NPHM",
    "NPHMSpec",
    "fit_nphm",
    "load_eval",
    "load_or_train",
    "model_path",
    "models_dir",
    "train_head_models",
    "track_dataset",
    "tracked",
    "train_nphm",
]
