"""Train, evaluate, save and load the book's head models (one folder per profile).

``load_or_train(profile, "nphm" | "3dmm")`` is what chapters call: it loads
``profile.cache_root / "headmodels"`` and trains everything there first when a file
is missing (``data_scripts/train_head_model.py`` does the same from the command
line). Files::

    headmodels/linear3dmm.pt          Linear3DMM at the profile's id/exp dims
    headmodels/nphm.pt                NPHM at the profile's dims
    headmodels/nphm_exp{d}.pt         NPHMs for the expression-size sweep (f shared)
    headmodels/scan_crop.npz          the cropped template: vertex_index, faces
    headmodels/train.json             training times and loss curves
    headmodels/eval.json              chapter 3's measurements (see evaluate_head_models)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from npga.config import Profile, get_profile
from npga.headmodels.evaluate import eval_linear, eval_nphm, moving_faces, prepare_target
from npga.headmodels.linear3dmm import Linear3DMM
from npga.headmodels.nphm import NPHM, NPHMData, NPHMSpec, TrainLog, train_nphm
from npga.headmodels.scans import Scans, load_scans
from npga.headmodels.sdf_samples import correspondence_samples, sdf_samples
from npga.io import file_lock, save_npz, write_json

MODEL_NAMES = ("3dmm", "nphm")


def models_dir(profile: Profile) -> Path:
    """The profile's head-model folder; a changed ``head_model`` section trains into a folder
    of its own (``headmodels-<key>``, :meth:`npga.config.Profile.variant_key`)."""
    return profile.cache_root / f"headmodels{profile.variant_key('head_model')}"


def model_path(profile: Profile, model: str, exp_dims: int | None = None) -> Path:
    """Where ``model`` ("3dmm" or "nphm") at ``exp_dims`` (default: the profile's) is stored."""
    cfg = profile.head_model
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown head model {model!r}: choose one of {MODEL_NAMES}")
    if model == "3dmm":
        return models_dir(profile) / "linear3dmm.pt"
    if exp_dims is None or exp_dims == cfg.exp_dims:
        return models_dir(profile) / "nphm.pt"
    return models_dir(profile) / f"nphm_exp{int(exp_dims)}.pt"


# --------------------------------------------------------------------------- building


def build_linear3dmm(scans: Scans, profile: Profile, exp_dims: int | None = None) -> Linear3DMM:
    """PCA of the training identities' training expressions (see :class:`Linear3DMM`)."""
    cfg = profile.head_model
    v = scans.vertices[scans.train_ids][:, scans.train_exps]
    return Linear3DMM.build(v, scans.faces, cfg.id_dims, cfg.exp_dims if exp_dims is None else exp_dims)


def nphm_data(scans: Scans, profile: Profile, seed: int = 0) -> NPHMData:
    """SDF samples of every training identity's canonical mesh and correspondences of its scans."""
    cfg = profile.head_model
    rng = np.random.default_rng(seed)
    n = cfg.sdf_samples_per_mesh
    spec = nphm_spec(scans, profile)
    r = spec.scale * 1.1  # NPHM.bounds(): the marching-cubes box
    box = (np.asarray(spec.center) - r, np.asarray(spec.center) + r)
    ss = [
        sdf_samples(scans.canonical[i], scans.faces, n // 4, n // 2, n // 4, rng, voxel=cfg.voxel, box=box)
        for i in scans.train_ids
    ]
    corr = [
        [
            correspondence_samples(scans.vertices[i, j], scans.canonical[i], scans.faces,
                                   cfg.correspondences_per_scan, rng)
            for j in scans.train_exps
        ]
        for i in scans.train_ids
    ]

    def stack(key):
        return torch.from_numpy(np.stack([getattr(s, key) for s in ss]))

    return NPHMData(
        stack("surface"), stack("normals"), stack("points"), stack("sdf"),
        torch.from_numpy(np.stack([[c[0] for c in row] for row in corr])),
        torch.from_numpy(np.stack([[c[1] for c in row] for row in corr])),
    )


def nphm_spec(scans: Scans, profile: Profile, exp_dims: int | None = None) -> NPHMSpec:
    cfg = profile.head_model
    c = scans.canonical[scans.train_ids].reshape(-1, 3)
    lo, hi = c.min(0), c.max(0)
    return NPHMSpec(
        id_dims=cfg.id_dims,
        exp_dims=cfg.exp_dims if exp_dims is None else int(exp_dims),
        n_train_ids=len(scans.train_ids),
        n_train_exps=len(scans.train_exps),
        hidden=cfg.hidden,
        layers=cfg.layers,
        center=tuple(float(v) for v in 0.5 * (lo + hi)),
        scale=float(0.5 * (hi - lo).max() * 1.05),
        canonical_expression=tuple(float(v) for v in scans.canonical_expression),
        info={"neck_cut": cfg.neck_cut, "profile": profile.name},
    )


def train_nphm_model(
    scans: Scans, profile: Profile, data: NPHMData, exp_dims: int | None = None,
    base: NPHM | None = None, progress: bool = True,
) -> tuple[NPHM, TrainLog]:
    """Train an NPHM; with ``base`` its identity network and codes are copied and only B is trained."""
    cfg = profile.head_model
    torch.manual_seed(profile.seed)
    model = NPHM(nphm_spec(scans, profile, exp_dims))
    if base is not None:
        model.sdf_net.load_state_dict(base.sdf_net.state_dict())
        with torch.no_grad():
            model.id_codes.copy_(base.id_codes)
        log = train_nphm(model, data, 0, cfg.sweep_iterations, cfg.samples_per_step,
                         seed=profile.seed, progress=progress, train_identity=False)
    else:
        log = train_nphm(model, data, cfg.iterations, cfg.deform_iterations, cfg.samples_per_step,
                         seed=profile.seed, progress=progress)
    return model.eval(), log


# --------------------------------------------------------------------------- evaluation


def _linear_id_code(model: Linear3DMM, neutral: np.ndarray) -> np.ndarray:
    A = model.basis_id.numpy().reshape(model.id_dims, -1).T
    return np.linalg.lstsq(A, (neutral - model.mean.numpy()).reshape(-1), rcond=None)[0]


def _aggregate(rows: list[dict]) -> dict:
    """``{metric: mean}`` plus ``per_scan`` lists; ``mean`` is the expression-region Chamfer."""
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["mean"] = out["chamfer_mm"]
    out["per_scan"] = {k: [r[k] for r in rows] for k in rows[0]}
    return out


def evaluate_head_models(
    profile: Profile, scans: Scans, linear: dict[int, Linear3DMM], nphm: dict[int, NPHM],
    progress: bool = True,
) -> dict:
    """Chapter 3's measurements (all errors: symmetric Chamfer in mm, see :mod:`.evaluate`).

    * ``heldout_expressions``: training identities in held-out expressions, for every
      expression size in ``linear``/``nphm`` (the identity code is the training one);
    * ``heldout_identities``: held-out identities (identity code fitted jointly on the
      neutral scan and the expression scan), at the profile's sizes.
    """
    from tqdm import tqdm

    cfg = profile.head_model
    rng = np.random.default_rng(profile.seed + 1)
    n = cfg.eval_scans
    pairs = [(int(scans.train_ids[k % len(scans.train_ids)]),
              int(scans.heldout_exps[(k // len(scans.train_ids) + k) % len(scans.heldout_exps)]))
             for k in range(n)]
    region = moving_faces(scans.vertices[scans.train_ids][:, scans.train_exps], scans.faces)
    targets = {p: prepare_target(scans.vertices[p], scans.faces, cfg, rng, region) for p in pairs}
    dims = sorted(set(linear) & set(nphm))
    res: dict = {"dims": dims, "pairs": pairs, "heldout_expressions": {}}
    bar = tqdm(total=len(dims) * len(pairs), desc="evaluate head models", disable=not progress, leave=False)
    for d in dims:
        lin, nph = linear[d], nphm[d]
        rows = {"3dmm_registered": [], "3dmm_points": [], "nphm_points": []}
        for i, j in pairs:
            t = targets[i, j]
            zi = _linear_id_code(lin, scans.vertices[i, 0])
            reg, pts, _, _ = eval_linear(lin, [t], zi)
            rows["3dmm_registered"].append(reg[0])
            rows["3dmm_points"].append(pts[0])
            k = int(np.flatnonzero(scans.train_ids == i)[0])
            err, _, _, _ = eval_nphm(nph, [t], scans.faces, nph.id_codes[k].detach().numpy(), cfg, rng)
            rows["nphm_points"].append(err[0])
            bar.update(1)
        res["heldout_expressions"][str(d)] = {k: _aggregate(v) for k, v in rows.items()}
    bar.close()

    d = cfg.exp_dims
    lin, nph = linear[d], nphm[d]
    rows = {"3dmm_registered": [], "3dmm_points": [], "nphm_points": []}
    hid = [(int(i), int(scans.heldout_exps[k % len(scans.heldout_exps)]))
           for k, i in enumerate(scans.heldout_ids[: max(1, n // 2)])]
    for i, j in hid:
        t = [prepare_target(scans.vertices[i, k], scans.faces, cfg, rng, region) for k in (0, j)]
        reg, pts, _, _ = eval_linear(lin, t, None)
        rows["3dmm_registered"].append(reg[1])
        rows["3dmm_points"].append(pts[1])
        err, _, _, _ = eval_nphm(nph, t, scans.faces, None, cfg, rng, frames=[1])
        rows["nphm_points"].append(err[0])
    res["heldout_identities"] = {"dims": d, "pairs": hid, **{k: _aggregate(v) for k, v in rows.items()}}
    return res


# --------------------------------------------------------------------------- pipeline


def train_head_models(
    profile: Profile | str | None = None, progress: bool = True, evaluate: bool = True,
    root: str | Path | None = None,
) -> dict:
    """Train the 3DMM, the NPHM and the sweep models; evaluate; write everything (atomic).

    ``root``: a dataset root holding ``scans/scans.npz`` (default: the profile's
    dataset, generated when missing). Returns the contents of ``train.json`` (with
    ``eval`` when evaluated).
    """
    P = profile if isinstance(profile, Profile) else get_profile(profile)
    cfg = P.head_model
    out = models_dir(P)
    t0 = time.perf_counter()
    scans = load_scans(P, root)
    save_npz(
        out / "scan_crop.npz", vertex_index=scans.vertex_index, faces=scans.faces,
        region_faces=moving_faces(scans.vertices[scans.train_ids][:, scans.train_exps], scans.faces),
    )
    t_scans = time.perf_counter() - t0

    t = time.perf_counter()
    dims = sorted(set(cfg.exp_dims_sweep) | {cfg.exp_dims})
    widest = build_linear3dmm(scans, P, max(dims))
    linear = {d: widest.truncated(exp_dims=d) for d in dims}
    linear[cfg.exp_dims].save(model_path(P, "3dmm"))
    t_linear = time.perf_counter() - t

    t = time.perf_counter()
    data = nphm_data(scans, P, seed=P.seed)
    t_data = time.perf_counter() - t
    t = time.perf_counter()
    main, log = train_nphm_model(scans, P, data, progress=progress)
    main.save(model_path(P, "nphm"))
    t_nphm = time.perf_counter() - t
    nphm = {cfg.exp_dims: main}
    logs = {str(cfg.exp_dims): log.__dict__}
    t = time.perf_counter()
    for d in sorted(set(cfg.exp_dims_sweep) - {cfg.exp_dims}):
        m, lg = train_nphm_model(scans, P, data, exp_dims=d, base=main, progress=progress)
        m.save(model_path(P, "nphm", d))
        nphm[d] = m
        logs[str(d)] = lg.__dict__
    t_sweep = time.perf_counter() - t
    info = {
        "profile": P.name,
        "dataset_fingerprint": dataset_fingerprint(P),
        "seconds": {"scans": t_scans, "linear": t_linear, "nphm_data": t_data, "nphm": t_nphm, "sweep": t_sweep},
        "n_train_ids": int(len(scans.train_ids)),
        "n_train_exps": int(len(scans.train_exps)),
        "n_vertices": scans.n_vertices,
        "linear_dims": {"id": linear[cfg.exp_dims].id_dims, "exp": linear[cfg.exp_dims].exp_dims},
        "logs": logs,
        "torch_threads": torch.get_num_threads(),
    }
    if evaluate:
        t = time.perf_counter()
        info["eval"] = evaluate_head_models(P, scans, linear, nphm, progress)
        info["seconds"]["eval"] = time.perf_counter() - t
        write_json(out / "eval.json", info["eval"])
    write_json(out / "train.json", info)
    return info




def dataset_fingerprint(profile: Profile) -> str | None:
    """The generator fingerprint of the profile's dataset on disk (None when there is none)."""
    path = profile.data_root / "dataset.json"
    try:
        return json.loads(path.read_text()).get("generator_fingerprint")
    except (OSError, json.JSONDecodeError):
        return None


def trained(profile: Profile) -> bool:
    """True when every file :func:`train_head_models` writes is there, made from the current data.

    Models trained on a dataset that has since been regenerated by a changed
    generator (another fingerprint in ``dataset.json``) count as missing.
    """
    cfg = profile.head_model
    files = [model_path(profile, "3dmm"), model_path(profile, "nphm"), models_dir(profile) / "eval.json"]
    files += [model_path(profile, "nphm", d) for d in cfg.exp_dims_sweep]
    info = models_dir(profile) / "train.json"
    if not info.is_file() or not all(f.is_file() for f in files):
        return False
    try:
        made_from = json.loads(info.read_text()).get("dataset_fingerprint")
    except json.JSONDecodeError:
        return False
    current = dataset_fingerprint(profile)
    return current is None or made_from == current


def load_or_train(
    profile: Profile | str | None = None, model: str = "nphm", progress: bool = True,
    exp_dims: int | None = None,
):
    """The trained head model ``model`` ("nphm" or "3dmm") of ``profile``; trains all first if missing.

    ``exp_dims``: another expression size of the chapter-3 sweep (NPHM files exist for
    ``exp_dims_sweep``; 3DMMs of any size are rebuilt from the scans in a second).
    Safe for parallel callers (a file lock; the first trains, the others wait).
    """
    P = profile if isinstance(profile, Profile) else get_profile(profile)
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown head model {model!r}: choose one of {MODEL_NAMES}")
    if not trained(P):
        with file_lock(models_dir(P).parent / ".headmodels.lock"):
            if not trained(P):
                train_head_models(P, progress=progress)
    if model == "3dmm":
        if exp_dims is not None and exp_dims != P.head_model.exp_dims:
            return build_linear3dmm(load_scans(P), P, exp_dims)
        return Linear3DMM.load(model_path(P, "3dmm"))
    path = model_path(P, "nphm", exp_dims)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no NPHM with exp_dims={exp_dims} (trained sizes: {P.head_model.exp_dims} and "
            f"{P.head_model.exp_dims_sweep})"
        )
    return NPHM.load(path)


def load_eval(profile: Profile | str | None = None) -> dict:
    """``eval.json`` (training first if needed)."""
    P = profile if isinstance(profile, Profile) else get_profile(profile)
    load_or_train(P, "3dmm")
    return json.loads((models_dir(P) / "eval.json").read_text())


__all__ = [
    "MODEL_NAMES",
    "build_linear3dmm",
    "evaluate_head_models",
    "load_eval",
    "load_or_train",
    "model_path",
    "models_dir",
    "nphm_data",
    "train_head_models",
    "trained",
]
