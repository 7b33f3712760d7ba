"""The head models' training data: SynthHead's registered "scans", cropped at the neck.

``ROOT/scans/scans.npz`` (written by :mod:`npga.capture.synthetic.writer`, documented in
:mod:`npga.capture.dataset`) holds registered meshes of identities that are *not* capture
participants -- the analogue of the scans NPHM and FLAME were built from -- with a
train / held-out split of identities and of expressions.

Two things are done here, the same for both head models:

* **crop**: like NPHM's scans, the head is cut below the chin (``neck_cut``, a
  horizontal plane). The vertex subset is chosen once on the mean neutral head and
  is the same for every mesh, so the crops stay registered.
* **canonical face**: NPHM's canonical space is a face with the mouth open
  (see :mod:`npga.headmodels.nphm`). SynthHead can pose any identity, so each
  identity's canonical mesh is regenerated from its identity parameters with
  ``jaw_open = canonical_jaw_open`` and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npga.config import HeadModelConfig, Profile


@dataclass
class Scans:
    """Cropped registered meshes; ``vertices[i, j]`` is identity i in expression j (0 = neutral)."""

    vertices: np.ndarray  # (S, X, V, 3) float64
    canonical: np.ndarray  # (S, V, 3) float64, open-mouth canonical face of each identity
    faces: np.ndarray  # (F, 3) int64 into the cropped vertices
    part_of_vertex: np.ndarray  # (V,) int64
    part_names: tuple[str, ...]
    z_exp_gt: np.ndarray  # (S, X, E) ground-truth expression parameters
    expression_names: tuple[str, ...]
    train_ids: np.ndarray  # indices of training identities
    heldout_ids: np.ndarray
    train_exps: np.ndarray  # indices of training expressions (0, the neutral, is one)
    heldout_exps: np.ndarray
    vertex_index: np.ndarray  # (V,) indices of the kept vertices in the full template
    identities_json: tuple[str, ...]
    canonical_expression: np.ndarray  # (E,)

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[2])


def crop_template(vertices: np.ndarray, faces: np.ndarray, y_min: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices with ``y >= y_min`` (indices (V',)) and the faces among them, re-indexed (F', 3)."""
    keep = np.flatnonzero(vertices[:, 1] >= y_min)
    if len(keep) == 0:
        raise ValueError(f"crop_template: no vertex above neck_cut y = {y_min} m")
    remap = -np.ones(len(vertices), np.int64)
    remap[keep] = np.arange(len(keep))
    f = remap[faces]
    f = f[np.all(f >= 0, axis=1)]
    return keep, f


def canonical_expression(cfg: HeadModelConfig) -> np.ndarray:
    """The canonical expression (E,): mouth open by ``cfg.canonical_jaw_open``, all else neutral."""
    from npga.capture.synthetic import EXPRESSION_NAMES

    z = np.zeros(len(EXPRESSION_NAMES))
    z[EXPRESSION_NAMES.index("jaw_open")] = cfg.canonical_jaw_open
    return z


def load_scans(profile: Profile, root: str | Path | None = None) -> Scans:
    """Read (generating when missing) the profile's scans; crop them; add canonical faces."""
    from npga.capture.dataset import open_dataset
    from npga.capture.synthetic import Identity, SynthHead
    from npga.capture.synthetic.writer import ensure_dataset

    cfg = profile.head_model
    root = Path(root) if root is not None else ensure_dataset(profile)
    ds = open_dataset(root)
    z = ds.scans()
    full = np.asarray(z.all_vertices(), np.float64)
    if full.ndim != 4 or full.shape[0] < 2 or full.shape[1] < 2:
        raise ValueError(
            f"{z.path}: need >= 2 identities x >= 2 expressions of registered meshes, got "
            f"vertices {full.shape}"
        )
    keep, faces = crop_template(full[:, 0].mean(0), np.asarray(z.faces, np.int64), cfg.neck_cut)
    z_canon = canonical_expression(cfg)
    res = (ds.manifest or {}).get("mesh_resolution", profile.data.mesh_resolution)
    canonical = np.stack(
        [SynthHead(Identity.from_dict(d), int(res)).vertices(z_canon)[keep] for d in z.identities]
    )
    id_split = np.asarray(z.identity_split).astype(str)
    ex_split = np.asarray(z.expression_split).astype(str)
    part = z.part_of_vertex if len(z.part_of_vertex) else np.zeros(full.shape[2], np.int64)
    return Scans(
        vertices=full[:, :, keep],
        canonical=canonical,
        faces=faces,
        part_of_vertex=np.asarray(part, np.int64)[keep],
        part_names=tuple(z.part_names),
        z_exp_gt=np.asarray(z.z_exp, np.float64),
        expression_names=tuple(z.expression_names),
        train_ids=np.flatnonzero(id_split == "train"),
        heldout_ids=np.flatnonzero(id_split == "heldout"),
        train_exps=np.flatnonzero(ex_split == "train"),
        heldout_exps=np.flatnonzero(ex_split == "heldout"),
        vertex_index=keep,
        identities_json=tuple(json.dumps(d, sort_keys=True) for d in z.identities),
        canonical_expression=z_canon,
    )


__all__ = ["Scans", "canonical_expression", "crop_template", "load_scans"]
