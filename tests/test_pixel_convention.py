"""Pixel coordinates: the image's top-left corner is (0, 0), pixel (i, j) has its centre at
(i + 0.5, j + 0.5) -- gsplat's and COLMAP's convention, not OpenCV's (centres at integers).
The loader, the rasterizer and the synthetic renderer all assume it (chapter 1)."""

import numpy as np
import pytest
import torch

from npga.capture.cameras import Camera, intrinsics_for, look_at
from npga.splatting.render import rasterize


def _camera(width: int = 32, height: int = 24) -> Camera:
    return Camera("c", look_at(np.array([0.0, 0.0, 1.0]), np.zeros(3)), intrinsics_for(width, height), width, height)


def _point_at(cam: Camera, u: float, v: float, depth: float = 1.0) -> np.ndarray:
    """The world point at ``depth`` that projects to pixel coordinates (u, v)."""
    x_cam = np.linalg.solve(cam.K, np.array([u, v, 1.0])) * depth
    return cam.R.T @ (x_cam - cam.t)


@pytest.mark.parametrize("u,v", [(10.3, 7.8), (5.9, 12.2), (20.6, 3.4)])
def test_a_point_lights_the_pixel_whose_square_contains_it(u, v):
    cam = _camera()
    X = _point_at(cam, u, v)
    uv, _ = cam.project(X[None])
    np.testing.assert_allclose(uv[0], [u, v], atol=1e-9)
    means = torch.tensor(X[None], dtype=torch.float64)
    img, _, _ = rasterize(
        means, torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64),
        torch.full((1, 3), 2e-4, dtype=torch.float64), torch.tensor([0.9], dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.float64), torch.tensor(cam.world_2_cam[None]), torch.tensor(cam.K[None]),
        cam.width, cam.height, eps2d=0.05, backend="torch",
    )
    j, i = np.unravel_index(int(img[0, ..., 0].argmax()), (cam.height, cam.width))
    # corner convention: floor(u), floor(v); OpenCV's would be round(u), round(v)
    assert (i, j) == (int(np.floor(u)), int(np.floor(v))), ((i, j), (u, v))


def test_resampled_camera_scales_pixel_coordinates_exactly():
    """With the image corner at (0, 0), resampling by s maps (u, v) to (s u, s v): K scales
    as a whole (under OpenCV's convention c would need (c + 0.5) s - 0.5)."""
    cam = _camera(32, 24)
    big = cam.scaled(64, 48)
    X = np.random.default_rng(0).normal(scale=0.05, size=(20, 3))
    uv, _ = cam.project(X)
    uv2, _ = big.project(X)
    np.testing.assert_allclose(uv2, 2 * uv, atol=1e-9)
    np.testing.assert_allclose(big.K[:2, 2], [32.0, 24.0])  # the image centre, in both sizes
