"""Processed multi-view dataset: layout, loader and validation.

The same loader reads the synthetic SynthHead capture (``data_scripts/make_synthetic.py``)
and a real NeRSemble capture preprocessed into the same layout.

Layout
------
::

    ROOT/dataset.json                                   manifest (synthetic only, see below)
    ROOT/scans/scans.npz                                registered head-model "scans" (synthetic)
    ROOT/{pid:03d}/identity.json                        ground-truth identity (synthetic only)
    ROOT/{pid:03d}/calibration/camera_params.json       cameras (NeRSemble's schema)
    ROOT/{pid:03d}/sequences/{SEQ}/frame_{t:05d}/images/cam_{serial}.png
    ROOT/{pid:03d}/sequences/{SEQ}/frame_{t:05d}/alpha_map/cam_{serial}.png
    ROOT/{pid:03d}/sequences/{SEQ}/ground_truth.npz     ground-truth codes (synthetic only)
    ROOT/{pid:03d}/sequences/{SEQ}/tracking/{model}.npz tracked codes, written by tracking

* ``camera_params.json``: ``{"world_2_cam": {serial: 4x4}, "intrinsics": 3x3 or
  {serial: 3x3}, "width": W, "height": H}``; ``width``/``height`` are optional, and when
  they are absent the size is read off the images. World-to-camera is OpenCV's
  convention, ``K`` is in pixels (see :mod:`npga.capture.cameras`).
* Images are 8-bit RGB, premultiplied on black for synthetic data; alpha maps are 8-bit
  grey (the first channel is used when there are more). ``.jpg`` is accepted as well as
  ``.png``. A ``timesteps/`` folder between the sequence and its frames (NeRSemble's
  own download layout) is accepted too.
* Frames are numbered by their folder name; a sequence's *frame index* is the position
  in the sorted list of its frames, and every per-frame array below is indexed by it.
* ``ground_truth.npz``: ``frames`` (T,) int, ``z_exp_gt`` (T, E) float32,
  ``untracked`` (T, U) float32 (gaze, tongue, head rotation: never part of
  ``z_exp``), ``expression_names`` (E,) str, ``untracked_names`` (U,) str, ``fps`` and,
  when small enough to be cheap (the ``mini`` profile), ``vertices`` (T, V, 3) float32
  metres. :meth:`Sequence.ground_truth_vertices` returns a frame's mesh either way,
  regenerating it exactly from ``identity.json`` and the codes with
  :class:`npga.capture.synthetic.SynthHead` when it is not stored (same faces for every frame:
  :meth:`Sequence.ground_truth_faces`).
* ``tracking/{model}.npz``: ``z_exp`` (T, d) and ``z_id`` (d_id,) float32, written by
  the tracking chapter for head model ``model`` (e.g. ``"3dmm"``, ``"nphm"``).
* ``scans/scans.npz``: the synthetic analogue of NPHM's / FLAME's registered training
  scans, for identities *disjoint* from the capture participants (as NeRSemble's
  subjects are not NPHM's), with the capture's topology: ``neutral`` (S, V, 3) float32
  and ``offsets`` (S, X, V, 3) float16 (vertices = neutral + offsets, exact to about
  2e-5 m), ``faces`` (F, 3), ``part_of_vertex`` (V,), ``part_names``, ``z_exp_gt``
  (S, X, E) (expression 0 of every identity is neutral), ``identity_pids`` (S,),
  ``identities_json`` (one JSON string per identity,
  :meth:`npga.capture.synthetic.Identity.to_dict`), ``expression_names``, and the split:
  ``identity_split`` (S,) and ``expression_split`` (X,), values ``"train"`` or
  ``"heldout"`` (the last quarter of the identities, the last fifth of the expression
  slots). Read it with :meth:`Dataset.scans`.
* ``dataset.json``: profile, seed, participants, sequences (and the held-out one),
  frames per sequence, camera serials (training and held-out), image size, mesh
  resolution, scan sizes, expression and untracked names, generator version and a hash
  of the generator's source, and ``complete`` -- written ``false`` first and ``true``
  last, so an interrupted generation is recognised and redone
  (:func:`npga.capture.synthetic.writer.ensure_dataset`).

Splits: the held-out cameras are :data:`npga.capture.cameras.HELDOUT_SERIALS` (NeRSemble's
four novel-view cameras), the held-out sequence is ``DataConfig.heldout_sequence``
(``FREE``, for self-reenactment).

API
---
``open_dataset(root)`` -> :class:`Dataset` (``participants``, ``participant(pid)``,
``scans()``, ``manifest``, ``validate()``) -> :class:`Participant` (``cameras``,
``sequences``, ``sequence(name)``, ``train_serials``, ``heldout_serials``,
``identity()``) -> :class:`Sequence` (``frames``, ``serials``, ``load_image``,
``load_alpha``, ``load_frame``, ``ground_truth()``, ``codes(model)``, ...).
:class:`FrameCameraDataset` serves (frame, camera) samples to a torch ``DataLoader``.

Validation
----------
Opening a participant reads and checks its calibration; opening a sequence checks its
structure (frames exist, every frame has an image and an alpha map for the same
cameras, every camera is calibrated) and the size of the first frame's images.
Every image read later is checked again, and :meth:`Sequence.validate` sweeps every
file. Problems raise :class:`npga.capture.cameras.CalibrationError` (the calibration) or
:class:`DatasetError` (everything else), with the offending file in the message.
"""

from __future__ import annotations

import dataclasses

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from typing import Sequence as SequenceType

import numpy as np
import torch

from npga.capture.cameras import (
    HELDOUT_SERIALS,
    NERSEMBLE_SERIALS,
    CalibrationError,
    Camera,
    read_camera_params,
)
from npga.io import read_png

MANIFEST_NAME = "dataset.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FRAME_RE = re.compile(r"^frame_(\d+)$")
_CAM_RE = re.compile(r"^cam_(.+)$")
_PID_RE = re.compile(r"^\d{3,}$")


class DatasetError(ValueError):
    """A dataset file or folder that cannot be used; the message names it."""


# --------------------------------------------------------------------------- small helpers


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"{path}: cannot read image ({err})") from None


def _camera_files(folder: Path) -> dict[str, Path]:
    """``{serial: path}`` of the ``cam_{serial}.{png,jpg}`` files in ``folder``."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("."):
            continue
        m = _CAM_RE.match(p.stem)
        if m and m.group(1) not in out:  # .png sorts before .jpg: png wins
            out[m.group(1)] = p
    return out


def _serial_order(serials: Iterable[str]) -> tuple[str, ...]:
    """NeRSemble's order for its serials, then any others sorted."""
    serials = set(serials)
    known = [s for s in NERSEMBLE_SERIALS if s in serials]
    return tuple(known + sorted(serials - set(known)))


def _check_principal_point(cam: Camera, image: Path) -> None:
    # Without width/height in the calibration only the principal point ties K to the
    # image: intrinsics of a full-size image used on a downscaled one put it outside.
    cx, cy = cam.K[0, 2], cam.K[1, 2]
    if not (0 < cx < cam.width and 0 < cy < cam.height):
        raise DatasetError(
            f"{image}: image size {cam.width}x{cam.height} does not match the intrinsics of "
            f"camera {cam.serial} (principal point ({cx:.1f}, {cy:.1f}) lies outside the image; "
            "were the images resized without scaling K? see Camera.scaled)"
        )


def _load_npz(path: Path, required: Iterable[str], what: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read {what} ({err})") from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DatasetError(f"{path}: {what} lacks the arrays {missing}")
    return arrays


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class GroundTruth:
    """Ground-truth codes of one synthetic sequence (indexed by frame index)."""

    path: Path
    frames: np.ndarray  # (T,) int frame numbers
    z_exp: np.ndarray  # (T, E) float32
    untracked: np.ndarray  # (T, U) float32
    expression_names: tuple[str, ...]
    untracked_names: tuple[str, ...]
    vertices: np.ndarray | None  # (T, V, 3) float32, or None when not stored
    head_rotation: np.ndarray | None = None  # (T, 3, 3) head space -> world, or None (older data)
    head_translation: np.ndarray | None = None  # (T, 3) metres


@dataclass(frozen=True)
class TrackedCodes:
    """Codes a head-model tracker fitted to one sequence (indexed by frame index)."""

    path: Path
    model: str
    z_exp: np.ndarray  # (T, d) float32
    z_id: np.ndarray  # (d_id,) float32
    rotation: np.ndarray  # (T, 3, 3) float64 head pose, head space -> world
    translation: np.ndarray  # (T, 3) float64 metres

    def pose(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(R (3, 3), t (3,)) of frame index ``t``."""
        return self.rotation[t], self.translation[t]


@dataclass(frozen=True)
class Scans:
    """Registered head-model scans: S identities x X expressions, one topology."""

    path: Path
    neutral: np.ndarray  # (S, V, 3) float32
    offsets: np.ndarray  # (S, X, V, 3) float16
    faces: np.ndarray  # (F, 3) int64
    part_of_vertex: np.ndarray  # (V,) int64
    part_names: tuple[str, ...]
    z_exp: np.ndarray  # (S, X, E) float32, z_exp[:, 0] == 0 (neutral)
    expression_names: tuple[str, ...]
    identity_pids: np.ndarray  # (S,) int64
    identities: tuple[dict, ...]  # identity parameters per scan identity
    identity_split: np.ndarray  # (S,) "train" | "heldout"
    expression_split: np.ndarray  # (X,) "train" | "heldout"

    def vertices(self, identity: int, expression: int) -> np.ndarray:
        """One registered mesh's vertices (V, 3) float32."""
        return self.neutral[identity] + self.offsets[identity, expression].astype(np.float32)

    def all_vertices(self) -> np.ndarray:
        """Every mesh, (S, X, V, 3) float32 (large for the cpu and gpu profiles)."""
        return self.neutral[:, None] + self.offsets.astype(np.float32)


# --------------------------------------------------------------------------- sequence


class Sequence:
    """One sequence of one participant: frames x cameras of images and alpha maps."""

    def __init__(self, participant: "Participant", name: str):
        self.participant = participant
        self.name = name
        self.path = participant.path / "sequences" / name
        if not self.path.is_dir():
            raise DatasetError(
                f"{self.path}: no such sequence "
                f"(have: {', '.join(participant.sequences) or 'none'})"
            )
        frames_dir = self.path / "timesteps" if (self.path / "timesteps").is_dir() else self.path
        found = []
        for p in frames_dir.iterdir():
            m = _FRAME_RE.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
        if not found:
            raise DatasetError(f"{self.path}: empty sequence (no frame_XXXXX folders)")
        found.sort()
        self.frames: tuple[int, ...] = tuple(t for t, _ in found)
        self._frame_dirs = {t: p for t, p in found}
        self.serials: tuple[str, ...] = self._check_structure()
        self._check_sizes(self.frames[0])

    # ---- structure and validation

    def _check_structure(self) -> tuple[str, ...]:
        calib = self.participant.calibration_path
        cameras = self.participant.cameras
        serials: set[str] | None = None
        first_dir = None
        for t in self.frames:
            fdir = self._frame_dirs[t]
            images = _camera_files(fdir / "images")
            if not images:
                raise DatasetError(f"{fdir / 'images'}: empty frame (no cam_<serial> images)")
            for serial, p in images.items():
                if serial not in cameras:
                    raise CalibrationError(
                        f"{calib}: camera {serial} is missing from the calibration "
                        f"(it has images, e.g. {p})"
                    )
            if serials is None:
                serials, first_dir = set(images), fdir
            elif set(images) != serials:
                missing = sorted(serials - set(images))
                if missing:
                    raise DatasetError(
                        f"{fdir / 'images' / f'cam_{missing[0]}.png'}: image missing "
                        f"(present in {first_dir})"
                    )
                extra = sorted(set(images) - serials)
                raise DatasetError(
                    f"{images[extra[0]]}: camera {extra[0]} appears here but not in {first_dir}"
                )
            alphas = _camera_files(fdir / "alpha_map")
            for serial in sorted(serials):
                if serial not in alphas:
                    raise DatasetError(
                        f"{fdir / 'alpha_map' / f'cam_{serial}.png'}: alpha map missing "
                        f"(the image {images[serial]} has none)"
                    )
        return _serial_order(serials)

    def _check_sizes(self, frame: int) -> None:
        for serial in self.serials:
            cam = self.participant.cameras[serial]
            for path in (self.image_path(frame, serial), self.alpha_path(frame, serial)):
                w, h = _image_size(path)
                if (w, h) != (cam.width, cam.height):
                    raise DatasetError(
                        f"{path}: image is {w}x{h} but camera {serial} is calibrated for "
                        f"{cam.width}x{cam.height} ({self.participant.calibration_path})"
                    )
                if not self.participant.size_from_calibration:
                    _check_principal_point(cam, path)

    def validate(self) -> None:
        """Check the size of every image and alpha map (header reads only)."""
        for t in self.frames:
            self._check_sizes(t)

    # ---- paths and loading

    def _frame_dir(self, frame: int) -> Path:
        if frame not in self._frame_dirs:
            raise DatasetError(
                f"{self.path}: no frame {frame} (frames {self.frames[0]}..{self.frames[-1]})"
            )
        return self._frame_dirs[frame]

    def _cam_path(self, frame: int, serial: str, folder: str) -> Path:
        if serial not in self.participant.cameras:
            raise CalibrationError(
                f"{self.participant.calibration_path}: camera {serial} is missing from the "
                "calibration"
            )
        fdir = self._frame_dir(frame) / folder
        for suffix in IMAGE_SUFFIXES:
            p = fdir / f"cam_{serial}{suffix}"
            if p.is_file():
                return p
        what = "alpha map" if folder == "alpha_map" else "image"
        raise DatasetError(f"{fdir / f'cam_{serial}.png'}: {what} missing")

    def image_path(self, frame: int, serial: str) -> Path:
        return self._cam_path(frame, serial, "images")

    def alpha_path(self, frame: int, serial: str) -> Path:
        return self._cam_path(frame, serial, "alpha_map")

    def _read_checked(self, path: Path, serial: str) -> np.ndarray:
        arr = read_png(path)
        cam = self.participant.cameras[serial]
        if arr.shape[:2] != (cam.height, cam.width):
            raise DatasetError(
                f"{path}: image is {arr.shape[1]}x{arr.shape[0]} but camera {serial} is "
                f"calibrated for {cam.width}x{cam.height}"
            )
        if not np.all(np.isfinite(arr)):  # pragma: no cover - 8-bit files cannot hold NaN
            raise DatasetError(f"{path}: contains NaN or Inf")
        return arr

    def load_image(self, frame: int, serial: str) -> np.ndarray:
        """The image of camera ``serial`` at frame number ``frame``: (H, W, 3) float32 in [0, 1]."""
        path = self.image_path(frame, serial)
        arr = self._read_checked(path, serial)
        if arr.ndim != 3 or arr.shape[2] < 3:
            raise DatasetError(f"{path}: expected an RGB image, got shape {arr.shape}")
        return np.ascontiguousarray(arr[..., :3])

    def load_alpha(self, frame: int, serial: str) -> np.ndarray:
        """The alpha map of camera ``serial`` at frame ``frame``: (H, W) float32 in [0, 1]."""
        path = self.alpha_path(frame, serial)
        arr = self._read_checked(path, serial)
        return np.ascontiguousarray(arr[..., 0] if arr.ndim == 3 else arr)

    def load_frame(
        self, frame: int, serials: SequenceType[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """All cameras of one frame: images (C, H, W, 3) and alphas (C, H, W) float32."""
        serials = list(self.serials if serials is None else serials)
        images = np.stack([self.load_image(frame, s) for s in serials])
        alphas = np.stack([self.load_alpha(frame, s) for s in serials])
        return images, alphas

    def cameras(self, serials: SequenceType[str] | None = None) -> list[Camera]:
        """The calibrated cameras of this sequence (all of them by default), in order."""
        return [self.participant.cameras[s] for s in (self.serials if serials is None else serials)]

    # ---- codes

    def ground_truth(self) -> GroundTruth:
        """Ground-truth codes (synthetic data only)."""
        path = self.path / "ground_truth.npz"
        if not path.is_file():
            raise DatasetError(
                f"{path}: no ground truth for this sequence (only synthetic data has it)"
            )
        z = _load_npz(path, ("frames", "z_exp_gt", "untracked"), "ground truth")
        frames = z["frames"].astype(np.int64)
        if tuple(frames.tolist()) != self.frames:
            raise DatasetError(
                f"{path}: ground truth is for frames {frames.tolist()[:5]}..., the sequence has "
                f"{list(self.frames)[:5]}... ({len(frames)} vs {len(self.frames)} frames)"
            )
        return GroundTruth(
            path=path,
            frames=frames,
            z_exp=z["z_exp_gt"].astype(np.float32),
            untracked=z["untracked"].astype(np.float32),
            expression_names=tuple(str(s) for s in z.get("expression_names", ())),
            untracked_names=tuple(str(s) for s in z.get("untracked_names", ())),
            vertices=z["vertices"] if "vertices" in z else None,
            head_rotation=z["head_rotation"] if "head_rotation" in z else None,
            head_translation=z["head_translation"] if "head_translation" in z else None,
        )

    def ground_truth_vertices(self, frame_index: int) -> np.ndarray:
        """The ground-truth mesh vertices (V, 3) float32 of one frame (synthetic data only).

        Read from ``ground_truth.npz`` when stored there, otherwise regenerated exactly
        from ``identity.json`` and the frame's codes with :class:`npga.capture.synthetic.SynthHead`.
        Faces: :meth:`ground_truth_faces`.
        """
        gt = self.ground_truth()
        if gt.vertices is not None:
            return gt.vertices[frame_index]
        head = self.participant.synth_head()
        return head.vertices(gt.z_exp[frame_index], gt.untracked[frame_index]).astype(np.float32)

    def ground_truth_faces(self) -> np.ndarray:
        """Triangles (F, 3) of the ground-truth meshes (the same for every frame)."""
        return np.asarray(self.participant.synth_head().faces)

    def tracking_models(self) -> list[str]:
        """Names of the head models whose tracked codes exist for this sequence."""
        folder = self.path / "tracking"
        return sorted(p.stem for p in folder.glob("*.npz")) if folder.is_dir() else []

    def codes(self, model: str) -> TrackedCodes:
        """Tracked codes and head pose of head model ``model`` (``tracking/{model}.npz``).

        The file must hold ``z_exp`` (T, d), ``z_id`` (d_id,), ``rotation`` (T, 3, 3) and
        ``translation`` (T, 3); a file without the pose (written before the head pose was
        tracked) is refused, as is a rotation that is not one (the frame is named).
        """
        from npga.headmodels.pose import check_pose

        path = self.path / "tracking" / f"{model}.npz"
        if not path.is_file():
            have = self.tracking_models()
            raise DatasetError(
                f"{path}: no tracked codes for model {model!r} "
                f"(available: {', '.join(have) if have else 'none'}; run the tracking chapter)"
            )
        with np.load(path) as raw:
            if "z_exp" in raw.files and "rotation" not in raw.files:
                raise DatasetError(
                    f"{path}: tracked codes without a head pose (no 'rotation'/'translation'); the file "
                    "predates pose tracking -- re-run the tracking (data_scripts/train_head_model.py)"
                )
        z = _load_npz(path, ("z_exp", "z_id", "rotation", "translation"), "tracked codes")
        z_exp, z_id = z["z_exp"], z["z_id"]
        if z_exp.ndim != 2 or z_exp.shape[0] != len(self.frames):
            raise DatasetError(
                f"{path}: z_exp has shape {z_exp.shape}, expected ({len(self.frames)}, d)"
            )
        if z_id.ndim != 1:
            raise DatasetError(f"{path}: z_id has shape {z_id.shape}, expected (d_id,)")
        if not (np.all(np.isfinite(z_exp)) and np.all(np.isfinite(z_id))):
            raise DatasetError(f"{path}: tracked codes contain NaN or Inf")
        try:
            check_pose(z["rotation"], z["translation"], len(self.frames), str(path))
        except ValueError as err:
            raise DatasetError(str(err)) from None
        return TrackedCodes(
            path, model, z_exp.astype(np.float32), z_id.astype(np.float32),
            z["rotation"].astype(np.float64), z["translation"].astype(np.float64),
        )

    def write_tracking(
        self, model: str, z_exp: np.ndarray, z_id: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
        **extra: np.ndarray,
    ) -> Path:
        """Write ``tracking/{model}.npz`` (what :meth:`codes` reads), checked, atomically.

        ``z_exp`` (T, d), ``z_id`` (d_id,), ``rotation`` (T, 3, 3), ``translation`` (T, 3);
        ``extra`` arrays are stored beside them (the tracker's diagnostics).
        """
        from npga.headmodels.pose import check_pose
        from npga.io import save_npz

        path = self.path / "tracking" / f"{model}.npz"
        z_exp = np.asarray(z_exp, np.float32)
        if z_exp.ndim != 2 or len(z_exp) != len(self.frames):
            raise ValueError(f"{path}: z_exp has shape {z_exp.shape}, expected ({len(self.frames)}, d)")
        check_pose(rotation, translation, len(self.frames), str(path))
        save_npz(path, z_exp=z_exp, z_id=np.asarray(z_id, np.float32),
                 rotation=np.asarray(rotation, np.float32), translation=np.asarray(translation, np.float32),
                 frames=np.asarray(self.frames, np.int64), **extra)
        return path

    def drive(self, source: str, pose: str | None = None) -> TrackedCodes:
        """What drives an avatar on this sequence: tracked codes + pose, or ``"gt"``.

        ``source`` is a head-model name (:meth:`codes`) or ``"gt"`` for SynthHead's ground
        truth (its z_exp and head pose; the identity pose for data made before the pose
        was stored), an upper bound that no real capture has. ``pose="gt"`` replaces only
        the pose by the ground truth's (the tracked codes stay): what a perfect pose
        tracker would give.
        """
        if source != "gt":
            codes = self.codes(source)
            if pose is None or pose == source:
                return codes
            ref = self.drive(pose)
            return dataclasses.replace(codes, rotation=ref.rotation, translation=ref.translation)
        gt = self.ground_truth()
        T = len(gt.z_exp)
        R = gt.head_rotation if gt.head_rotation is not None else np.tile(np.eye(3), (T, 1, 1))
        t = gt.head_translation if gt.head_translation is not None else np.zeros((T, 3))
        return TrackedCodes(gt.path, "gt", gt.z_exp.astype(np.float32), np.zeros(0, np.float32),
                            np.asarray(R, np.float64), np.asarray(t, np.float64))

    def __repr__(self) -> str:
        return (
            f"Sequence({self.participant.pid:03d}/{self.name}: {len(self.frames)} frames, "
            f"{len(self.serials)} cameras)"
        )


# --------------------------------------------------------------------------- participant


class Participant:
    """One captured person: calibration, sequences and (synthetic) identity."""

    def __init__(self, dataset: "Dataset", pid: int):
        self.dataset = dataset
        self.pid = int(pid)
        self.path = dataset.root / f"{self.pid:03d}"
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: no such participant")
        self.calibration_path = self.path / "calibration" / "camera_params.json"
        self.size_from_calibration = True

        def sizes_from_images(serials: list[str]) -> dict[str, tuple[int, int]]:
            self.size_from_calibration = False  # the file has no width/height
            return self._image_sizes(serials)

        self.cameras: dict[str, Camera] = read_camera_params(self.calibration_path, sizes_from_images)
        if self.size_from_calibration:
            for cam in self.cameras.values():
                cx, cy = cam.K[0, 2], cam.K[1, 2]
                if not (0 < cx < cam.width and 0 < cy < cam.height):
                    raise CalibrationError(
                        f"{self.calibration_path}: intrinsics of camera {cam.serial} do not match "
                        f"the image size {cam.width}x{cam.height} (principal point "
                        f"({cx:.1f}, {cy:.1f}) lies outside the image)"
                    )
        self._sequences: dict[str, Sequence] = {}
        self._head = None  # SynthHead, built on demand for synthetic ground truth

    def _image_sizes(self, serials: list[str]) -> dict[str, tuple[int, int]]:
        """Image sizes read off the first frame of each sequence (for a calibration file
        without ``width``/``height``); a calibrated camera without images takes the common
        size, if there is one."""
        sizes: dict[str, tuple[int, int]] = {}
        for name in self.sequences:
            seq_dir = self.path / "sequences" / name
            frames_dir = seq_dir / "timesteps" if (seq_dir / "timesteps").is_dir() else seq_dir
            firsts = sorted(p for p in frames_dir.glob("frame_*") if p.is_dir())
            if firsts:
                for serial, p in _camera_files(firsts[0] / "images").items():
                    sizes.setdefault(serial, _image_size(p))
        common = set(sizes.values())
        if len(common) == 1:
            only = next(iter(common))
            for s in serials:
                sizes.setdefault(s, only)
        return sizes

    @property
    def sequences(self) -> list[str]:
        """Names of the sequences on disk, sorted."""
        folder = self.path / "sequences"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def sequence(self, name: str) -> Sequence:
        """Open (and check) sequence ``name``; cached."""
        if name not in self._sequences:
            self._sequences[name] = Sequence(self, name)
        return self._sequences[name]

    @property
    def serials(self) -> tuple[str, ...]:
        return _serial_order(self.cameras)

    @property
    def train_serials(self) -> tuple[str, ...]:
        """NeRSemble's training cameras that this participant has (or all but held-out ones)."""
        return tuple(s for s in self.serials if s not in HELDOUT_SERIALS)

    @property
    def heldout_serials(self) -> tuple[str, ...]:
        """NeRSemble's four held-out novel-view cameras that this participant has."""
        return tuple(s for s in HELDOUT_SERIALS if s in self.cameras)

    def identity(self) -> dict:
        """The ground-truth identity parameters (``identity.json``; synthetic data only)."""
        path = self.path / "identity.json"
        if not path.is_file():
            raise DatasetError(f"{path}: no ground-truth identity (only synthetic data has it)")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}: not valid JSON ({err})") from None

    def synth_head(self):
        """The :class:`npga.capture.synthetic.SynthHead` of this (synthetic) participant; cached."""
        if self._head is None:
            from npga.capture.synthetic import Identity, SynthHead

            manifest = self.dataset.manifest or {}
            if "mesh_resolution" not in manifest:
                raise DatasetError(
                    f"{self.dataset.root / MANIFEST_NAME}: no mesh_resolution "
                    "(not a synthetic dataset?)"
                )
            try:
                identity = Identity.from_dict(self.identity())
            except ValueError as err:
                raise DatasetError(f"{self.path / 'identity.json'}: {err}") from None
            self._head = SynthHead(identity, int(manifest["mesh_resolution"]))
        return self._head

    def validate(self) -> None:
        """Open every sequence and check every file's size."""
        if not self.sequences:
            raise DatasetError(f"{self.path / 'sequences'}: participant has no sequences")
        for name in self.sequences:
            self.sequence(name).validate()

    def __repr__(self) -> str:
        return (
            f"Participant({self.pid:03d}: {len(self.cameras)} cameras, "
            f"{len(self.sequences)} sequences)"
        )


# --------------------------------------------------------------------------- dataset


class Dataset:
    """A processed dataset root: participants, manifest and head-model scans."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset folder not found")
        self._participants: dict[int, Participant] = {}

    @property
    def manifest(self) -> dict | None:
        """``dataset.json`` (synthetic data), or None when there is none."""
        path = self.root / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}: not valid JSON ({err})") from None

    @property
    def participants(self) -> list[int]:
        """Participant ids: folders named by a number with a ``calibration/`` inside."""
        return sorted(
            int(p.name)
            for p in self.root.iterdir()
            if p.is_dir() and _PID_RE.match(p.name) and (p / "calibration").is_dir()
        )

    def participant(self, pid: int) -> Participant:
        """Open (and check the calibration of) participant ``pid``; cached."""
        if pid not in self._participants:
            self._participants[pid] = Participant(self, pid)
        return self._participants[pid]

    def scans(self) -> Scans:
        """The registered head-model scans (``scans/scans.npz``)."""
        path = self.root / "scans" / "scans.npz"
        z = _load_npz(
            path,
            ("neutral", "offsets", "faces", "z_exp_gt", "identity_split", "expression_split"),
            "head-model scans",
        )
        S, X = z["offsets"].shape[:2]
        if z["neutral"].shape[0] != S or z["z_exp_gt"].shape[:2] != (S, X):
            raise DatasetError(
                f"{path}: inconsistent shapes neutral {z['neutral'].shape}, offsets "
                f"{z['offsets'].shape}, z_exp_gt {z['z_exp_gt'].shape}"
            )
        return Scans(
            path=path,
            neutral=z["neutral"].astype(np.float32),
            offsets=z["offsets"],
            faces=z["faces"].astype(np.int64),
            part_of_vertex=z.get("part_of_vertex", np.zeros(0, np.int64)).astype(np.int64),
            part_names=tuple(str(x) for x in z.get("part_names", ())),
            z_exp=z["z_exp_gt"].astype(np.float32),
            expression_names=tuple(str(x) for x in z.get("expression_names", ())),
            identity_pids=z.get("identity_pids", np.arange(S)).astype(np.int64),
            identities=tuple(json.loads(str(x)) for x in z.get("identities_json", ())),
            identity_split=z["identity_split"].astype(str),
            expression_split=z["expression_split"].astype(str),
        )

    def validate(self) -> None:
        """Check every participant, sequence and file."""
        pids = self.participants
        if not pids:
            raise DatasetError(f"{self.root}: no participants (folders NNN/ with calibration/)")
        for pid in pids:
            self.participant(pid).validate()

    def __repr__(self) -> str:
        return f"Dataset({self.root}: participants {self.participants})"


def open_dataset(root: str | Path) -> Dataset:
    """Open the processed dataset at ``root`` (see the module docstring for the layout)."""
    return Dataset(root)


# --------------------------------------------------------------------------- torch dataset


class FrameCameraDataset(torch.utils.data.Dataset):
    """(frame, camera) samples of one participant, for training and evaluation.

    ``codes`` picks where ``z_exp`` comes from, and must be chosen explicitly:
    ``"gt"`` for the synthetic ground truth, a head-model name (e.g. ``"nphm"``) for
    that model's tracked codes, or ``None`` for no codes at all.

    Each sample is a dict::

        image      (H, W, 3) float32 in [0, 1]
        alpha      (H, W)    float32 in [0, 1]
        viewmat    (4, 4)    float32 world_2_cam
        K          (3, 3)    float32 pixels
        z_exp      (E,)      float32          (absent when codes is None)
        rotation   (3, 3)    float32 head pose, head space -> world (absent when codes is None)
        translation (3,)     float32 metres                           (absent when codes is None)
        sequence   str
        frame      int       frame number (folder name)
        frame_index int      position of the frame in its sequence
        timestep   int       position of the frame over all chosen sequences
        serial     str
        camera_index int     position of the camera in ``self.serials``
    """

    def __init__(
        self,
        participant: Participant,
        sequences: str | SequenceType[str],
        *,
        codes: str | None,
        serials: SequenceType[str] | None = None,
        cache: bool = False,
    ):
        self.participant = participant
        names = [sequences] if isinstance(sequences, str) else list(sequences)
        if not names:
            raise DatasetError(f"{participant.path}: no sequences chosen")
        self.sequences = [participant.sequence(n) for n in names]
        self.serials = tuple(participant.train_serials if serials is None else serials)
        for seq in self.sequences:
            missing = [s for s in self.serials if s not in seq.serials]
            if missing:
                raise DatasetError(f"{seq.path}: has no images for cameras {missing}")
        self.codes = codes
        self._drive: list[TrackedCodes | None] = [
            None if codes is None else seq.drive(codes) for seq in self.sequences
        ]
        # (sequence index, frame index, timestep) for every frame
        self.frames: list[tuple[int, int, int]] = []
        for si, seq in enumerate(self.sequences):
            for fi in range(len(seq.frames)):
                self.frames.append((si, fi, len(self.frames)))
        self.cameras = [participant.cameras[s] for s in self.serials]
        self._viewmats = torch.tensor(
            np.stack([c.world_2_cam for c in self.cameras]), dtype=torch.float32
        )  # (C, 4, 4)
        self._Ks = torch.tensor(np.stack([c.K for c in self.cameras]), dtype=torch.float32)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.frames) * len(self.serials)

    def _pixels(self, index: int, seq: Sequence, frame: int, serial: str):
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        out = (seq.load_image(frame, serial), seq.load_alpha(frame, serial))
        if self._cache is not None:
            self._cache[index] = out
        return out

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        f, ci = divmod(index, len(self.serials))
        si, fi, timestep = self.frames[f]
        seq, serial = self.sequences[si], self.serials[ci]
        frame = seq.frames[fi]
        image, alpha = self._pixels(index, seq, frame, serial)
        sample = {
            "image": torch.from_numpy(image),
            "alpha": torch.from_numpy(alpha),
            "viewmat": self._viewmats[ci],
            "K": self._Ks[ci],
            "sequence": seq.name,
            "frame": frame,
            "frame_index": fi,
            "timestep": timestep,
            "serial": serial,
            "camera_index": ci,
        }
        d = self._drive[si]
        if d is not None:
            sample["z_exp"] = torch.from_numpy(d.z_exp[fi])
            sample["rotation"] = torch.from_numpy(d.rotation[fi].astype(np.float32))
            sample["translation"] = torch.from_numpy(d.translation[fi].astype(np.float32))
        return sample


__all__ = [
    "MANIFEST_NAME",
    "Dataset",
    "DatasetError",
    "FrameCameraDataset",
    "GroundTruth",
    "Participant",
    "Scans",
    "Sequence",
    "TrackedCodes",
    "open_dataset",
]
