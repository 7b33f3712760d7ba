"""Write the synthetic SynthHead capture in the processed NeRSemble layout.

:func:`write_dataset` renders every participant x sequence x frame from the 16
cameras of :func:`npga.capture.cameras.nersemble_rig` and writes images, alpha maps,
calibration, ground-truth codes and meshes, the head-model "scans" and a manifest;
:func:`ensure_dataset` does that only when the dataset on disk is missing,
incomplete or made with different settings. The layout is documented in
:mod:`npga.capture.dataset`, which reads it back.

Determinism: every random choice is seeded from ``(seed, participant id,
sequence name)``, never from the order in which work finishes, so the same profile
and seed give byte-identical files with any number of worker processes (the npz
files are written with fixed zip timestamps for the same reason).

Crash safety: every file is written atomically (:mod:`npga.io`), and the manifest
``dataset.json`` is written with ``"complete": false`` before anything else and
with ``"complete": true`` after everything else, so an interrupted run is
recognised and redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from pathlib import Path

import numpy as np

from npga.capture.cameras import HELDOUT_SERIALS, TRAIN_SERIALS, nersemble_rig, write_camera_params
from npga.config import DataConfig, Profile, get_profile
from npga.io import file_lock, save_npz, write_json, write_png

GENERATOR_VERSION = 1  # bump when the layout or the meaning of a file changes
MANIFEST_NAME = "dataset.json"
DATASET_FORMAT = "npga-synthhead"
SCAN_PID_OFFSET = 1000  # scan identities are pids 1000, 1001, ...: never a capture participant
MAX_GT_VERTEX_FLOATS = 3_000_000  # store GT vertices per sequence up to ~12 MB (float32)


# --------------------------------------------------------------------------- seeds & spec


def _name_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def trajectory_seed(seed: int, pid: int, sequence: str) -> int:
    """The seed of participant ``pid``'s performance of ``sequence``."""
    return int(np.random.SeedSequence([seed, pid, _name_key(sequence)]).generate_state(1)[0])


def scan_expression_seed(seed: int, scan_pid: int) -> list[int]:
    """Entropy for the random expressions of one scan identity."""
    return [seed, scan_pid, _name_key("scans")]


def generator_fingerprint() -> str:
    """Hash of the generator's source (npga/capture/synthetic/*.py and the rig).

    Part of the manifest, so data written by an older head model is regenerated.
    """
    here = Path(__file__).resolve().parent
    files = sorted(here.glob("*.py")) + [here.parent / "cameras.py"]  # npga/capture/cameras.py
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _resolve(profile: Profile | str | None) -> Profile:
    return profile if isinstance(profile, Profile) else get_profile(profile)


def dataset_spec(
    profile: Profile | str | None, participants: int | None = None, seed: int | None = None
) -> dict:
    """Everything that determines the dataset's content (the manifest minus ``complete``)."""
    from npga.capture.synthetic import EXPRESSION_NAMES, UNTRACKED_NAMES

    P = _resolve(profile)
    d = P.data
    n = d.participants if participants is None else int(participants)
    if n < 1:
        raise ValueError(f"participants must be >= 1, got {n}")
    seed = P.seed if seed is None else int(seed)
    serials = [c.serial for c in nersemble_rig(d.width, d.height)]
    return {
        "format": DATASET_FORMAT,
        "generator_version": GENERATOR_VERSION,
        "generator_fingerprint": generator_fingerprint(),
        "profile": P.name,
        "seed": seed,
        "participants": list(range(n)),
        "sequences": list(d.sequences),
        "heldout_sequence": d.heldout_sequence,
        "frames_per_sequence": d.frames_per_sequence,
        "fps": d.fps,
        "cameras": serials,
        "train_cameras": [s for s in TRAIN_SERIALS if s in serials],
        "heldout_cameras": [s for s in HELDOUT_SERIALS if s in serials],
        "width": d.width,
        "height": d.height,
        "supersample": d.supersample,
        "mesh_resolution": d.mesh_resolution,
        "scan_identities": d.scan_identities,
        "scan_expressions": d.scan_expressions,
        "scan_identity_pids": [SCAN_PID_OFFSET + i for i in range(d.scan_identities)],
        "expression_names": list(EXPRESSION_NAMES),
        "untracked_names": list(UNTRACKED_NAMES),
    }


def dataset_status(root: str | Path, spec: dict) -> str:
    """``"missing"``, ``"incomplete"``, ``"different"`` (other settings) or ``"complete"``."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return "missing"
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return "incomplete"
    if {k: v for k, v in manifest.items() if k != "complete"} != spec:
        return "different"
    return "complete" if manifest.get("complete") is True else "incomplete"


# --------------------------------------------------------------------------- file writers


@lru_cache(maxsize=4)
def _head(pid: int, seed: int, resolution: int):
    from npga.capture.synthetic import SynthHead, sample_identity

    return SynthHead(sample_identity(pid, seed), resolution)


def _init_worker() -> None:
    # Two processes on two cores: one thread each, or they fight over the cores.
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(1)


def _render_frame(
    root: str,
    d: DataConfig,
    seed: int,
    pid: int,
    sequence: str,
    t: int,
    z_exp: np.ndarray,
    untracked: np.ndarray,
    keep_vertices: bool,
) -> tuple[str, tuple]:
    """Render and write one frame from every camera; return its GT vertices if asked."""
    head = _head(pid, seed, d.mesh_resolution)
    cameras = nersemble_rig(d.width, d.height)
    images, alphas = head.render(
        cameras, z_exp=z_exp, untracked=untracked, supersample=d.supersample
    )  # (C, H, W, 3), (C, H, W)
    fdir = Path(root) / f"{pid:03d}" / "sequences" / sequence / f"frame_{t:05d}"
    for cam, image, alpha in zip(cameras, images, alphas):
        write_png(fdir / "images" / f"cam_{cam.serial}.png", image)
        write_png(fdir / "alpha_map" / f"cam_{cam.serial}.png", alpha)
    vertices = head.vertices(z_exp, untracked).astype(np.float32) if keep_vertices else None
    return "frame", (pid, sequence, t, vertices)


def _scan_identity(d: DataConfig, seed: int, index: int) -> tuple[str, tuple]:
    """Registered meshes of one scan identity: neutral first, then random expressions."""
    from npga.capture.synthetic import EXPRESSION_NAMES, sample_expression

    scan_pid = SCAN_PID_OFFSET + index
    head = _head(scan_pid, seed, d.mesh_resolution)
    rng = np.random.default_rng(scan_expression_seed(seed, scan_pid))
    codes = np.zeros((d.scan_expressions, len(EXPRESSION_NAMES)), np.float32)
    for j in range(1, d.scan_expressions):
        codes[j] = sample_expression(rng)
    verts = np.stack([head.vertices(z) for z in codes])  # (X, V, 3) float64
    # Stored as neutral (float32) + expression offsets (float16): exact to ~2e-5 m and
    # five times smaller, since most vertices do not move in most expressions.
    neutral = verts[0].astype(np.float32)
    offsets = (verts - neutral.astype(np.float64)).astype(np.float16)
    identity = json.dumps(_identity_dict(scan_pid, seed), sort_keys=True)
    return "scan", (index, neutral, offsets, codes, identity)


def _identity_dict(pid: int, seed: int) -> dict:
    from npga.capture.synthetic import sample_identity

    return sample_identity(pid, seed).to_dict()


def _split(n: int, heldout_fraction: float) -> np.ndarray:
    """'train' for the first items, 'heldout' for the last ceil(fraction * n) (>= 1 if n > 1)."""
    k = 0 if n < 2 else max(1, int(np.ceil(heldout_fraction * n)))
    return np.array(["train"] * (n - k) + ["heldout"] * k)


def _clear(root: Path) -> None:
    """Remove what a previous generation wrote (only that: numbered folders, scans, manifest)."""
    for p in root.iterdir():
        if p.is_dir() and (p.name.isdigit() or p.name == "scans"):
            shutil.rmtree(p)
        elif p.name == MANIFEST_NAME or p.name.endswith(".tmp"):
            p.unlink()


def _check_ours(root: Path) -> None:
    """Refuse to clear a folder that this writer did not make (e.g. a real capture)."""
    from npga.capture.dataset import DatasetError

    if not root.exists() or not any(root.iterdir()):
        return
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise DatasetError(
            f"{root}: folder is not empty and has no {MANIFEST_NAME}; refusing to write a "
            "synthetic dataset over it (choose another --out, or empty it)"
        )
    try:
        fmt = json.loads(manifest.read_text()).get("format")
    except (json.JSONDecodeError, AttributeError):  # written atomically: never half ours
        fmt = None
    if fmt != DATASET_FORMAT:
        raise DatasetError(
            f"{manifest}: format {fmt!r} is not {DATASET_FORMAT!r}; refusing to overwrite"
        )


# --------------------------------------------------------------------------- public


def write_dataset(
    profile: Profile | str | None,
    out: str | Path | None = None,
    participants: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Render and write the synthetic capture of ``profile``; return its root folder.

    ``participants``: how many (ids 0..N-1; default the profile's). ``seed``: default
    the profile's. ``out``: default ``profile.data_root``. ``workers``: processes
    (default: up to 2 CPU cores); the files do not depend on it. Whatever a previous
    generation left in ``out`` is removed first.
    """
    from npga.capture.synthetic import (
        EXPRESSION_NAMES,
        PART_NAMES,
        UNTRACKED_NAMES,
        head_pose,
        sequence_trajectory,
    )

    P = _resolve(profile)
    d = P.data
    spec = dataset_spec(P, participants, seed)
    seed = spec["seed"]
    root = Path(out) if out is not None else P.data_root
    _check_ours(root)
    root.mkdir(parents=True, exist_ok=True)
    _clear(root)
    write_json(root / MANIFEST_NAME, {**spec, "complete": False})

    cameras = nersemble_rig(d.width, d.height)
    T = d.frames_per_sequence
    trajectories = {}
    for pid in spec["participants"]:
        write_json(root / f"{pid:03d}" / "identity.json", _identity_dict(pid, seed))
        write_camera_params(root / f"{pid:03d}" / "calibration" / "camera_params.json", cameras)
        for name in d.sequences:
            z, u = sequence_trajectory(name, T, seed=trajectory_seed(seed, pid, name))
            trajectories[pid, name] = (np.asarray(z, np.float32), np.asarray(u, np.float32))

    # GT vertices go into ground_truth.npz only while that stays small (mini: yes);
    # Sequence.ground_truth_vertices regenerates them otherwise.
    n_vertices = _head(0, seed, d.mesh_resolution).n_vertices
    keep = T * n_vertices * 3 <= MAX_GT_VERTEX_FLOATS
    jobs = [
        (_render_frame, (str(root), d, seed, pid, name, t, z[t], u[t], keep))
        for (pid, name), (z, u) in trajectories.items()
        for t in range(T)
    ]
    # scans first: one identity is the largest single job
    jobs = [(_scan_identity, (d, seed, i)) for i in range(d.scan_identities)] + jobs

    n_workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if n_workers > 1 and not _can_spawn():
        n_workers = 1
    vertices: dict[tuple[int, str], dict[int, np.ndarray]] = {k: {} for k in trajectories}
    S, X = d.scan_identities, d.scan_expressions
    scan_neutral = np.zeros((S, n_vertices, 3), np.float32)
    scan_offsets = np.zeros((S, X, n_vertices, 3), np.float16)
    scan_codes: dict[int, np.ndarray] = {}
    scan_identities: dict[int, str] = {}

    def collect(result) -> None:
        kind, value = result
        if kind == "frame":
            pid, name, t, verts = value
            vertices[pid, name][t] = verts
        else:
            i, neutral, offsets, codes, identity = value
            scan_neutral[i], scan_offsets[i] = neutral, offsets
            scan_codes[i], scan_identities[i] = codes, identity

    bar = _progress(len(jobs), progress, f"SynthHead {P.name}")
    if n_workers == 1:
        for fn, args in jobs:
            collect(fn(*args))
            bar.update(1)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # fork + torch threads can deadlock
        with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = [pool.submit(fn, *args) for fn, args in jobs]
            for fut in as_completed(futures):
                collect(fut.result())
                bar.update(1)
    bar.close()

    for (pid, name), (z, u) in trajectories.items():
        arrays = dict(
            frames=np.arange(T, dtype=np.int64),
            z_exp_gt=z,
            untracked=u,
            expression_names=np.array(EXPRESSION_NAMES),
            untracked_names=np.array(UNTRACKED_NAMES),
            fps=np.float32(d.fps),
        )
        # the rigid head pose of every frame, head space to world (what tracking estimates)
        poses = [head_pose(u[t]) for t in range(T)]
        arrays["head_rotation"] = np.stack([R for R, _ in poses]).astype(np.float64)  # (T, 3, 3)
        arrays["head_translation"] = np.stack([tr for _, tr in poses]).astype(np.float64)  # (T, 3)
        if keep:
            arrays["vertices"] = np.stack([vertices[pid, name][t] for t in range(T)])
        save_npz(root / f"{pid:03d}" / "sequences" / name / "ground_truth.npz", **arrays)

    if S > 0:
        head = _head(SCAN_PID_OFFSET, seed, d.mesh_resolution)
        save_npz(
            root / "scans" / "scans.npz",
            neutral=scan_neutral,
            offsets=scan_offsets,
            z_exp_gt=np.stack([scan_codes[i] for i in range(S)]),
            identities_json=np.array([scan_identities[i] for i in range(S)]),
            identity_pids=np.array(spec["scan_identity_pids"], dtype=np.int64),
            faces=np.asarray(head.faces, dtype=np.int64),
            part_of_vertex=np.asarray(head.part_of_vertex, dtype=np.int64),
            part_names=np.array(PART_NAMES),
            expression_names=np.array(EXPRESSION_NAMES),
            identity_split=_split(S, 0.25),
            expression_split=_split(X, 0.2),
        )
    write_json(root / MANIFEST_NAME, {**spec, "complete": True})
    return root


def ensure_dataset(
    profile: Profile | str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    participants: int | None = None,
    seed: int | None = None,
    workers: int | None = None,
    force: bool = False,
) -> Path:
    """Return the root of ``profile``'s dataset, generating it first unless complete.

    ``force`` regenerates even a complete dataset. The other arguments are those of
    :func:`write_dataset`; a dataset made with other settings counts as not complete.

    Safe to call from several processes at once (chapters run in parallel): a file
    lock beside the root lets one generate while the others wait.
    """
    P = _resolve(profile)
    root = Path(out) if out is not None else P.data_root
    spec = dataset_spec(P, participants, seed)
    if not force and dataset_status(root, spec) == "complete":
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root.parent / f".{root.name}.lock"):
        if force or dataset_status(root, spec) != "complete":  # another process may have done it
            write_dataset(P, root, participants, seed, progress, workers)
    return root


def dataset_size(root: str | Path) -> tuple[int, int]:
    """(bytes, number of files) under ``root``."""
    total = count = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
            count += 1
    return total, count


def _can_spawn() -> bool:
    """Whether worker processes can be spawned: they re-import ``__main__`` from its file,
    which fails for a script piped to ``python -`` (its ``__file__`` is ``<stdin>``)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.isfile(main_file)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="job", disable=not enabled, file=sys.stderr)


__all__ = [
    "GENERATOR_VERSION",
    "SCAN_PID_OFFSET",
    "dataset_size",
    "dataset_spec",
    "dataset_status",
    "ensure_dataset",
    "generator_fingerprint",
    "trajectory_seed",
    "write_dataset",
]
