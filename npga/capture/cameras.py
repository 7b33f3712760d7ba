"""Cameras in OpenCV's convention and NeRSemble's ``camera_params.json``.

Conventions (shared with gsplat and NeRSemble):

* ``world_2_cam`` is a 4x4 rigid transform from world to camera coordinates,
  camera x right, y down, z forward (the direction the camera looks).
* ``K`` is the 3x3 pinhole intrinsic matrix in pixels; pixel centres are at
  integer + 0.5 (so the image spans [0, W] x [0, H]).
* Units are metres.

The synthetic world has the head's centre at the origin, +y up and the face
looking towards +z; the subject's left is +x.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from npga.io import write_json

# NeRSemble's 16 camera serials, in the order the dataset lists them.
NERSEMBLE_SERIALS: tuple[str, ...] = (
    "222200042",
    "222200044",
    "222200046",
    "222200040",
    "222200036",
    "222200048",
    "220700191",
    "222200041",
    "222200037",
    "222200038",
    "222200047",
    "222200043",
    "222200049",
    "222200039",
    "222200045",
    "221501007",
)
# The cameras NeRSemble's paper holds out for novel-view evaluation.
HELDOUT_SERIALS: tuple[str, ...] = ("222200040", "220700191", "222200043", "221501007")
TRAIN_SERIALS: tuple[str, ...] = tuple(s for s in NERSEMBLE_SERIALS if s not in HELDOUT_SERIALS)

NERSEMBLE_FULL_SIZE = (2200, 3208)  # width, height of the full-resolution images
NERSEMBLE_EVAL_SIZE = (550, 802)  # the resolution NPGA evaluates at


class CalibrationError(ValueError):
    """A camera_params.json that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Camera:
    """One calibrated pinhole camera.

    ``world_2_cam``: (4, 4) float64, ``K``: (3, 3) float64, image ``width`` x ``height``.
    """

    serial: str
    world_2_cam: np.ndarray
    K: np.ndarray
    width: int
    height: int

    @property
    def R(self) -> np.ndarray:  # (3, 3) world -> camera rotation
        return self.world_2_cam[:3, :3]

    @property
    def t(self) -> np.ndarray:  # (3,)
        return self.world_2_cam[:3, 3]

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates, (3,)."""
        return -self.R.T @ self.t

    @property
    def cam_2_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_2_cam)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points (N, 3) to pixels (N, 2); also return depths (N,)."""
        p_cam = points @ self.R.T + self.t
        z = p_cam[:, 2]
        uv = (p_cam @ self.K.T)[:, :2] / np.where(np.abs(z) < 1e-12, 1e-12, z)[:, None]
        return uv, z

    def scaled(self, width: int, height: int) -> "Camera":
        """The same camera with images resampled to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0] *= sx
        K[1] *= sy
        return Camera(self.serial, self.world_2_cam.copy(), K, int(width), int(height))


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenCV world_2_cam (4, 4) of a camera at ``eye`` looking at ``target``.

    ``up`` is the world's up direction; the camera's y axis points the opposite way
    (OpenCV's y is down).
    """
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M


def rig_positions(distance: float = 1.0) -> dict[str, np.ndarray]:
    """Camera centres of a NeRSemble-like frontal arc, one per serial.

    NeRSemble's rig is an arc of 16 cameras in front of the subject spanning about
    +-60 degrees of azimuth at three heights. Exact positions are not public in
    this form; this layout reproduces the arc's extent: 6 cameras at eye level,
    5 above and 5 below, about ``distance`` metres from the head.
    """
    rows = [
        (+18.0, np.linspace(-48.0, 48.0, 5)),  # upper row
        (0.0, np.linspace(-60.0, 60.0, 6)),  # eye level
        (-16.0, np.linspace(-48.0, 48.0, 5)),  # lower row
    ]
    centres = []
    for elevation, azimuths in rows:
        el = math.radians(elevation)
        for az_deg in azimuths:
            az = math.radians(float(az_deg))
            centres.append(
                distance
                * np.array([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
            )
    # Serial order of NeRSemble's list does not follow the arc; assign in a fixed
    # interleaved order so that the four held-out cameras land at different places
    # (left, centre, right, low) as in the real rig.
    order = [5, 0, 6, 7, 1, 8, 2, 9, 3, 10, 12, 4, 13, 11, 14, 15]
    return {serial: centres[i] for serial, i in zip(NERSEMBLE_SERIALS, order)}


def intrinsics_for(width: int, height: int, focal_factor: float = 2.6) -> np.ndarray:
    """A 3x3 K with square pixels, focal = ``focal_factor`` * height, centred principal point.

    With the default factor an image at 1 m covers about 0.38 m vertically: a head
    with neck and hair fills a portrait frame, as in NeRSemble.
    """
    f = focal_factor * height
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def nersemble_rig(
    width: int, height: int, distance: float = 1.0, target: Iterable[float] = (0.0, 0.0, 0.0)
) -> list[Camera]:
    """The 16-camera synthetic rig, each camera looking at ``target``."""
    K = intrinsics_for(width, height)
    target = np.asarray(tuple(target), dtype=np.float64)
    return [
        Camera(serial, look_at(eye, target), K.copy(), width, height)
        for serial, eye in rig_positions(distance).items()
    ]


# --------------------------------------------------------------------------- I/O


def write_camera_params(path: str | Path, cameras: Iterable[Camera]) -> None:
    """Write NeRSemble's ``camera_params.json`` (atomically).

    One shared ``intrinsics`` matrix is written when all cameras share it, one per
    serial otherwise; ``width``/``height`` are written too (optional in the schema).
    """
    cameras = list(cameras)
    if not cameras:
        raise ValueError("no cameras to write")
    Ks = [c.K for c in cameras]
    shared = all(np.allclose(K, Ks[0]) for K in Ks)
    sizes = {(c.width, c.height) for c in cameras}
    if len(sizes) != 1:
        raise ValueError(f"cameras have different image sizes {sorted(sizes)}")
    width, height = sizes.pop()
    obj = {
        "world_2_cam": {c.serial: c.world_2_cam.tolist() for c in cameras},
        "intrinsics": Ks[0].tolist() if shared else {c.serial: c.K.tolist() for c in cameras},
        "width": width,
        "height": height,
    }
    write_json(path, obj)


def _matrix(value, shape: tuple[int, int], what: str, path: Path) -> np.ndarray:
    try:
        M = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise CalibrationError(f"{path}: {what} is not a numeric matrix ({err})") from None
    if M.shape != shape:
        raise CalibrationError(f"{path}: {what} has shape {M.shape}, expected {shape}")
    if not np.all(np.isfinite(M)):
        raise CalibrationError(f"{path}: {what} contains NaN or Inf")
    return M


def _check_rigid(M: np.ndarray, what: str, path: Path, tol: float = 1e-4) -> None:
    R = M[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=tol) or abs(np.linalg.det(R) - 1.0) > tol:
        raise CalibrationError(
            f"{path}: {what} is not a rigid transform (its 3x3 block is not a rotation: "
            f"det = {np.linalg.det(R):.4f})"
        )
    if not np.allclose(M[3], [0.0, 0.0, 0.0, 1.0], atol=tol):
        raise CalibrationError(f"{path}: {what} has last row {M[3].tolist()}, expected [0, 0, 0, 1]")


ImageSizes = Mapping[str, tuple[int, int]]


def read_camera_params(
    path: str | Path, image_sizes: ImageSizes | Callable[[list[str]], ImageSizes] | None = None
) -> dict[str, Camera]:
    """Read ``camera_params.json`` into ``{serial: Camera}``, validating every entry.

    The only parser of the file in the package. ``intrinsics`` may be one shared 3x3
    matrix or one per serial. The image size comes from ``width``/``height`` when the
    file has them, else from ``image_sizes``: ``{serial: (width, height)}``, or a function
    of the calibrated serials returning that mapping, called only when the file has no
    size (the loader reads the sizes off the images only then).
    Raises :class:`CalibrationError` naming the file and the offending value.
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: calibration file not found")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CalibrationError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(obj, dict) or "world_2_cam" not in obj or "intrinsics" not in obj:
        raise CalibrationError(f"{path}: expected keys 'world_2_cam' and 'intrinsics'")
    w2c = obj["world_2_cam"]
    if not isinstance(w2c, dict) or not w2c:
        raise CalibrationError(f"{path}: 'world_2_cam' must map camera serials to 4x4 matrices")
    intr = obj["intrinsics"]
    has_size = "width" in obj and "height" in obj
    if not has_size and callable(image_sizes):
        image_sizes = image_sizes([str(s) for s in w2c])
    cameras: dict[str, Camera] = {}
    for serial, value in w2c.items():
        M = _matrix(value, (4, 4), f"world_2_cam[{serial}]", path)
        _check_rigid(M, f"world_2_cam[{serial}]", path)
        if isinstance(intr, dict):
            if serial not in intr:
                raise CalibrationError(f"{path}: intrinsics has no entry for camera {serial}")
            K = _matrix(intr[serial], (3, 3), f"intrinsics[{serial}]", path)
        else:
            K = _matrix(intr, (3, 3), "intrinsics", path)
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise CalibrationError(f"{path}: intrinsics of camera {serial} has non-positive focal")
        if has_size:
            size = (int(obj["width"]), int(obj["height"]))
        elif image_sizes is not None and serial in image_sizes:
            size = tuple(int(v) for v in image_sizes[serial])
        else:
            raise CalibrationError(
                f"{path}: no width/height for camera {serial} (not in the file, and no image "
                "to read it from)"
            )
        cameras[serial] = Camera(str(serial), M, K, size[0], size[1])
    return cameras


def stack_cameras(cameras: Iterable[Camera], device=None, dtype=None):
    """Batch cameras for the rasterizer: ``viewmats`` (C, 4, 4) and ``Ks`` (C, 3, 3) tensors."""
    import torch

    cameras = list(cameras)
    dtype = dtype or torch.float32
    viewmats = torch.tensor(np.stack([c.world_2_cam for c in cameras]), dtype=dtype, device=device)
    Ks = torch.tensor(np.stack([c.K for c in cameras]), dtype=dtype, device=device)
    return viewmats, Ks
