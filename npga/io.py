"""Atomic file writing: nothing is ever left half-written.

Every writer in the package goes through :func:`atomic_write`: the content is
written to a temporary file in the destination folder and then renamed over the
target, which is atomic on POSIX file systems. A crash mid-write leaves either the
old file or the new one, never a truncated mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates files readable by the owner only; give the file the
        # permissions an ordinary open() would have (0666 minus the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically. numpy arrays become lists."""

    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        raise TypeError(f"cannot serialise {type(o).__name__} to JSON")

    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1, default=default)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a float image in [0, 1] ((H, W), (H, W, 3) or (H, W, 4)) as 8-bit PNG."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    with atomic_write(path, "wb") as f:
        Image.fromarray(arr).save(f, format="PNG")


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG as float32 in [0, 1]: (H, W) for grey, (H, W, C) otherwise."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    with Image.open(path) as im:
        arr = np.asarray(im)
    return arr.astype(np.float32) / 255.0


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` through a temporary file (checkpoints, trained models)."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def load_saved(path: str | os.PathLike, kind: str, what: str) -> dict:
    """Load a dict written by :func:`save_torch` with ``{"kind": kind, ...}``.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing
    or holds something else (``what`` names the expected object in the message).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved {what}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        raise ValueError(f"{path}: not a saved {what}")
    return obj


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """A compressed ``.npz`` (readable by ``np.load``), written through a temporary file.

    Deterministic: the zip entries carry a fixed timestamp (``np.savez_compressed`` stamps
    the current time), so the same arrays give byte-identical files -- the synthetic data
    relies on that to be reproducible with any number of worker processes.
    """
    with atomic_write(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(arr), allow_pickle=False)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing).

    Used where several processes (parallel chapter runs, pytest workers) may try to
    generate the same dataset or train the same model: the second waits, then finds
    the work done.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def machine_info() -> dict:
    """The machine a measurement ran on, for recorded benchmark results."""
    import platform

    cpu = platform.processor() or ""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "cpu MHz") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break  # the first processor's block is enough
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    if "cpu family" in fields:
        # Hosts of one name differ: the same cpu-profile training step took 0.32 s on one
        # "AMD EPYC" and 0.52 s on another (family 25, model 17) in two sessions.
        cpu += f" (family {fields['cpu family']}, model {fields.get('model', '?')}, {fields.get('cpu MHz', '?')} MHz)"
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return info
