"""The processed-dataset loader: layout, both calibration forms, and every validation error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from npga.capture.cameras import CalibrationError, look_at
from npga.capture.dataset import DatasetError, FrameCameraDataset, open_dataset
from npga.io import save_npz, write_json, write_png

TRAIN, HELD = "222200042", "222200040"  # one training and one held-out NeRSemble serial
W, H = 8, 12
T = 3


def _K(w: int = W, h: int = H) -> list:
    return [[20.0, 0.0, w / 2], [0.0, 20.0, h / 2], [0.0, 0.0, 1.0]]


def make_fixture(
    root: Path,
    *,
    serials=(TRAIN, HELD),
    shared_intrinsics: bool = True,
    with_size: bool = True,
    frames: int = T,
    image_size=(W, H),
    gt: bool = True,
) -> Path:
    """A tiny hand-built dataset: participant 000, one sequence SEQ, 2 cameras."""
    pdir = root / "000"
    w2c = {s: look_at([0.3 * i, 0.0, 1.0], [0.0, 0.0, 0.0]).tolist() for i, s in enumerate(serials)}
    calib = {"world_2_cam": w2c}
    calib["intrinsics"] = _K() if shared_intrinsics else {s: _K() for s in serials}
    if with_size:
        calib["width"], calib["height"] = W, H
    write_json(pdir / "calibration" / "camera_params.json", calib)
    rng = np.random.default_rng(0)
    seq = pdir / "sequences" / "SEQ"
    seq.mkdir(parents=True)
    for t in range(frames):
        for s in serials:
            fdir = seq / f"frame_{t:05d}"
            write_png(fdir / "images" / f"cam_{s}.png", rng.random((image_size[1], image_size[0], 3)))
            write_png(fdir / "alpha_map" / f"cam_{s}.png", rng.random((image_size[1], image_size[0])))
    if gt:
        save_npz(
            seq / "ground_truth.npz",
            frames=np.arange(frames),
            z_exp_gt=rng.normal(size=(frames, 5)).astype(np.float32),
            untracked=np.zeros((frames, 2), np.float32),
            expression_names=np.array(["a", "b", "c", "d", "e"]),
            untracked_names=np.array(["u", "v"]),
        )
    return root


def calib_path(root: Path) -> Path:
    return root / "000" / "calibration" / "camera_params.json"


def edit_calib(root: Path, fn) -> None:
    obj = json.loads(calib_path(root).read_text())
    fn(obj)
    write_json(calib_path(root), obj)


# ---------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("shared", [True, False])
def test_both_intrinsics_forms_load(tmp_path, shared):
    root = make_fixture(tmp_path, shared_intrinsics=shared)
    p = open_dataset(root).participant(0)
    assert set(p.cameras) == {TRAIN, HELD}
    for cam in p.cameras.values():
        np.testing.assert_allclose(cam.K, np.array(_K()))
        assert (cam.width, cam.height) == (W, H)


def test_size_read_from_images_when_absent(tmp_path):
    root = make_fixture(tmp_path, with_size=False)
    p = open_dataset(root).participant(0)
    assert not p.size_from_calibration
    assert all((c.width, c.height) == (W, H) for c in p.cameras.values())
    seq = p.sequence("SEQ")
    seq.validate()
    assert seq.load_image(0, TRAIN).shape == (H, W, 3)


def test_listing_and_loading(tmp_path):
    root = make_fixture(tmp_path)
    ds = open_dataset(root)
    assert ds.participants == [0]
    p = ds.participant(0)
    assert p.sequences == ["SEQ"]
    assert p.train_serials == (TRAIN,) and p.heldout_serials == (HELD,)
    seq = p.sequence("SEQ")
    assert seq.frames == tuple(range(T))
    assert set(seq.serials) == {TRAIN, HELD}
    img, alpha = seq.load_image(1, HELD), seq.load_alpha(1, HELD)
    assert img.dtype == np.float32 and img.shape == (H, W, 3)
    assert alpha.dtype == np.float32 and alpha.shape == (H, W)
    assert 0.0 <= img.min() and img.max() <= 1.0
    images, alphas = seq.load_frame(0)
    assert images.shape == (2, H, W, 3) and alphas.shape == (2, H, W)
    gt = seq.ground_truth()
    assert gt.z_exp.shape == (T, 5) and gt.expression_names == ("a", "b", "c", "d", "e")
    assert gt.vertices is None
    ds.validate()


def test_torch_dataset_shapes_and_code_sources(tmp_path):
    root = make_fixture(tmp_path)
    p = open_dataset(root).participant(0)
    seq = p.sequence("SEQ")
    ds = FrameCameraDataset(p, "SEQ", codes="gt", serials=(TRAIN, HELD))
    assert len(ds) == T * 2
    s = ds[3]  # frame 1, second camera
    assert s["image"].shape == (H, W, 3) and s["image"].dtype == torch.float32
    assert s["alpha"].shape == (H, W)
    assert s["viewmat"].shape == (4, 4) and s["K"].shape == (3, 3)
    assert s["frame"] == 1 and s["serial"] == HELD and s["camera_index"] == 1
    np.testing.assert_array_equal(s["image"].numpy(), seq.load_image(1, HELD))
    np.testing.assert_allclose(s["z_exp"].numpy(), seq.ground_truth().z_exp[1])
    np.testing.assert_allclose(s["viewmat"].numpy(), p.cameras[HELD].world_2_cam, atol=1e-6)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, H, W, 3) and batch["z_exp"].shape == (4, 5)

    # default cameras are the training ones; codes=None gives no z_exp
    plain = FrameCameraDataset(p, ["SEQ"], codes=None)
    assert plain.serials == (TRAIN,) and "z_exp" not in plain[0]

    # tracked codes: absent -> clear error naming the file; present -> used
    with pytest.raises(DatasetError, match=r"tracking/nphm\.npz"):
        FrameCameraDataset(p, "SEQ", codes="nphm")
    z = np.arange(T * 4, dtype=np.float32).reshape(T, 4)
    R = np.stack([np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]) for a in range(T)])
    tr = np.arange(T * 3, dtype=np.float64).reshape(T, 3) * 1e-3
    seq.write_tracking("nphm", z, np.zeros(3), R, tr)
    tracked = FrameCameraDataset(p, "SEQ", codes="nphm")
    np.testing.assert_array_equal(tracked[2]["z_exp"].numpy(), z[2])
    np.testing.assert_allclose(tracked[2]["rotation"].numpy(), R[2], atol=1e-6)
    np.testing.assert_allclose(tracked[2]["translation"].numpy(), tr[2], atol=1e-7)
    assert seq.tracking_models() == ["nphm"]
    assert seq.codes("nphm").z_id.shape == (3,)
    assert seq.codes("nphm").pose(1)[0].shape == (3, 3)


def test_tracked_codes_wrong_length(tmp_path):
    root = make_fixture(tmp_path)
    seq = open_dataset(root).participant(0).sequence("SEQ")
    eye = np.tile(np.eye(3), (T, 1, 1))
    save_npz(seq.path / "tracking" / "lin.npz", z_exp=np.zeros((T + 1, 4)), z_id=np.zeros(3), rotation=eye,
             translation=np.zeros((T, 3)))
    with pytest.raises(DatasetError, match=r"lin\.npz.*shape"):
        seq.codes("lin")


def test_tracking_files_without_or_with_a_bad_pose_are_refused(tmp_path):
    root = make_fixture(tmp_path)
    seq = open_dataset(root).participant(0).sequence("SEQ")
    folder = seq.path / "tracking"
    z = np.zeros((T, 4), np.float32)
    # written before the pose was tracked: refused, naming the file
    save_npz(folder / "old.npz", z_exp=z, z_id=np.zeros(3, np.float32))
    with pytest.raises(DatasetError, match=r"old\.npz: tracked codes without a head pose"):
        seq.codes("old")
    eye = np.tile(np.eye(3), (T, 1, 1))
    save_npz(folder / "shape.npz", z_exp=z, z_id=np.zeros(3), rotation=eye[:, :2], translation=np.zeros((T, 3)))
    with pytest.raises(DatasetError, match=r"shape\.npz: rotation has shape"):
        seq.codes("shape")
    bad = eye.copy()
    bad[T - 1] = [[1, 0.2, 0], [0, 1, 0], [0, 0, 1]]
    save_npz(folder / "skew.npz", z_exp=z, z_id=np.zeros(3), rotation=bad, translation=np.zeros((T, 3)))
    with pytest.raises(DatasetError, match=rf"skew\.npz: rotation of frame index {T - 1} is not a rotation"):
        seq.codes("skew")
    # the writer refuses the same, and writes nothing
    with pytest.raises(ValueError, match="frame index"):
        seq.write_tracking("new", z, np.zeros(3), bad, np.zeros((T, 3)))
    assert not (folder / "new.npz").exists()


# ---------------------------------------------------------------------------- errors


def test_camera_missing_from_calibration(tmp_path):
    root = make_fixture(tmp_path)
    edit_calib(root, lambda o: o["world_2_cam"].pop(HELD))
    p = open_dataset(root).participant(0)
    with pytest.raises(CalibrationError, match=rf"camera_params\.json.*{HELD}"):
        p.sequence("SEQ")


def test_per_camera_intrinsics_missing_a_camera(tmp_path):
    root = make_fixture(tmp_path, shared_intrinsics=False)
    edit_calib(root, lambda o: o["intrinsics"].pop(TRAIN))
    with pytest.raises(CalibrationError, match=rf"camera_params\.json.*{TRAIN}"):
        open_dataset(root).participant(0)


def test_image_size_differs_from_calibrated_size(tmp_path):
    root = make_fixture(tmp_path)
    bad = root / "000/sequences/SEQ/frame_00000/images" / f"cam_{TRAIN}.png"
    write_png(bad, np.zeros((H + 2, W, 3)))
    p = open_dataset(root).participant(0)
    with pytest.raises(DatasetError, match=rf"cam_{TRAIN}\.png.*{W}x{H + 2}"):
        p.sequence("SEQ")


def test_image_size_mismatch_in_later_frame_found_by_validate_and_load(tmp_path):
    root = make_fixture(tmp_path)
    bad = root / "000/sequences/SEQ/frame_00002/alpha_map" / f"cam_{HELD}.png"
    write_png(bad, np.zeros((H, W + 4)))
    seq = open_dataset(root).participant(0).sequence("SEQ")  # only frame 0 checked on open
    with pytest.raises(DatasetError, match=r"frame_00002/alpha_map"):
        seq.load_alpha(2, HELD)
    with pytest.raises(DatasetError, match=r"frame_00002/alpha_map"):
        seq.validate()


def test_image_size_does_not_match_intrinsics_without_size(tmp_path):
    # calibration without width/height whose K belongs to images 4x as large
    root = make_fixture(tmp_path, with_size=False)
    edit_calib(root, lambda o: o.update(intrinsics=_K(4 * W, 4 * H)))
    p = open_dataset(root).participant(0)
    with pytest.raises(DatasetError, match=r"cam_.*\.png.*intrinsics"):
        p.sequence("SEQ")


def test_calibrated_size_does_not_match_intrinsics(tmp_path):
    root = make_fixture(tmp_path)
    edit_calib(root, lambda o: o.update(intrinsics=_K(4 * W, 4 * H)))
    with pytest.raises(CalibrationError, match=r"camera_params\.json.*intrinsics.*8x12"):
        open_dataset(root).participant(0)


def test_missing_alpha_map(tmp_path):
    root = make_fixture(tmp_path)
    gone = root / "000/sequences/SEQ/frame_00001/alpha_map" / f"cam_{TRAIN}.png"
    gone.unlink()
    with pytest.raises(DatasetError, match=r"frame_00001/alpha_map/cam_222200042\.png.*alpha"):
        open_dataset(root).participant(0).sequence("SEQ")


def test_missing_image_in_one_frame(tmp_path):
    root = make_fixture(tmp_path)
    (root / "000/sequences/SEQ/frame_00002/images" / f"cam_{HELD}.png").unlink()
    with pytest.raises(DatasetError, match=rf"frame_00002/images/cam_{HELD}\.png"):
        open_dataset(root).participant(0).sequence("SEQ")


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_world_2_cam(tmp_path, bad):
    root = make_fixture(tmp_path)

    def poison(o):
        o["world_2_cam"][HELD][0][3] = float(bad)

    obj = json.loads(calib_path(root).read_text())
    poison(obj)
    # json cannot hold NaN strictly; Python writes NaN/Infinity tokens which it reads back
    calib_path(root).write_text(json.dumps(obj))
    with pytest.raises(CalibrationError, match=r"camera_params\.json.*NaN or Inf"):
        open_dataset(root).participant(0)


def test_non_rigid_world_2_cam(tmp_path):
    root = make_fixture(tmp_path)

    def scale(o):
        M = np.array(o["world_2_cam"][TRAIN])
        M[:3, :3] *= 1.5
        o["world_2_cam"][TRAIN] = M.tolist()

    edit_calib(root, scale)
    with pytest.raises(CalibrationError, match=r"camera_params\.json.*rigid"):
        open_dataset(root).participant(0)


def test_empty_sequence(tmp_path):
    root = make_fixture(tmp_path)
    (root / "000/sequences/EMPTY").mkdir()
    p = open_dataset(root).participant(0)
    with pytest.raises(DatasetError, match=r"sequences/EMPTY.*empty sequence"):
        p.sequence("EMPTY")
    with pytest.raises(DatasetError, match=r"sequences/EMPTY"):
        open_dataset(root).validate()


def test_frame_without_images(tmp_path):
    root = make_fixture(tmp_path)
    (root / "000/sequences/SEQ/frame_00007/images").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"frame_00007/images.*empty frame"):
        open_dataset(root).participant(0).sequence("SEQ")


def test_missing_things_are_named(tmp_path):
    root = make_fixture(tmp_path, gt=False)
    with pytest.raises(DatasetError, match=r"nowhere"):
        open_dataset(tmp_path / "nowhere")
    p = open_dataset(root).participant(0)
    with pytest.raises(DatasetError, match=r"sequences/NOPE"):
        p.sequence("NOPE")
    with pytest.raises(DatasetError, match=r"ground_truth\.npz"):
        p.sequence("SEQ").ground_truth()
    with pytest.raises(DatasetError, match=r"identity\.json"):
        p.identity()
    with pytest.raises(DatasetError, match=r"scans\.npz"):
        open_dataset(root).scans()
    with pytest.raises(DatasetError, match=r"005: no such participant"):
        open_dataset(root).participant(5)
    calib_path(root).unlink()
    with pytest.raises(CalibrationError, match=r"camera_params\.json.*not found"):
        open_dataset(root).participant(0)


def test_one_camera_params_parser_asks_for_sizes_only_when_the_file_lacks_them(tmp_path):
    """read_camera_params is the only parser of camera_params.json: the loader hands it a
    function for image sizes, called (with the calibrated serials) only without width/height."""
    from npga.capture.cameras import read_camera_params

    calls = []

    def sizes(serials):
        calls.append(sorted(serials))
        return {s: (W, H) for s in serials}

    for with_size in (True, False):
        root = make_fixture(tmp_path / str(with_size), with_size=with_size)
        path = root / "000" / "calibration" / "camera_params.json"
        cams = read_camera_params(path, sizes)
        assert set(cams) == {TRAIN, HELD} and all((c.width, c.height) == (W, H) for c in cams.values())
    assert calls == [sorted([TRAIN, HELD])], calls
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CalibrationError, match="bad.json: not valid JSON"):
        read_camera_params(bad, sizes)


def test_frames_are_numbers_not_indices_on_subsampled_sequences(tmp_path):
    """Real captures are often subsampled (frame_00000, frame_00003, ...): load_image takes
    the frame *number*; an index that is not a frame number is refused, naming the range."""
    root = make_fixture(tmp_path, frames=4, gt=False)
    seq_dir = root / "000" / "sequences" / "SEQ"
    for t, new in ((3, 9), (2, 6), (1, 3)):  # 0, 1, 2, 3 -> 0, 3, 6, 9
        (seq_dir / f"frame_{t:05d}").rename(seq_dir / f"frame_{new:05d}")
    seq = open_dataset(root).participant(0).sequence("SEQ")
    assert list(seq.frames) == [0, 3, 6, 9]
    by_number = seq.load_image(seq.frames[1], TRAIN)
    assert by_number.shape == (H, W, 3)
    with pytest.raises(DatasetError, match=r"no frame 1 \(frames 0\.\.9\)"):
        seq.load_image(1, TRAIN)


def test_colmap_points_of_a_subsampled_sequence_read_its_frame_numbers(tmp_path, monkeypatch):
    """sequence_points must ask for frames 0, 3, 6, 9, not indices 0..3 (which load_image
    refuses on a subsampled capture); triangulation itself is stubbed to record its images."""
    from npga.headmodels import fitting
    from npga.headmodels.colmap_points import PointCloud

    root = make_fixture(tmp_path, frames=4, gt=False)
    seq_dir = root / "000" / "sequences" / "SEQ"
    for t, new in ((3, 9), (2, 6), (1, 3)):
        (seq_dir / f"frame_{t:05d}").rename(seq_dir / f"frame_{new:05d}")
    seq = open_dataset(root).participant(0).sequence("SEQ")
    seen = []

    def fake_triangulate(images, cams, alphas):
        seen.append(images.copy())
        n = len(seen)
        return PointCloud(np.full((n, 3), float(n)), np.full(n, 2), np.zeros(n), np.zeros((n, 3), np.float32))

    monkeypatch.setattr(fitting, "triangulate_frame", fake_triangulate)
    pts = fitting.sequence_points(seq)
    assert [len(p) for p in pts] == [1, 2, 3, 4]  # one cloud per frame, in frame order
    for img, frame in zip(seen, seq.frames):
        assert np.array_equal(img[0], seq.load_image(frame, seq.cameras()[0].serial))
    assert fitting.sequence_points(seq)[3].shape == (4, 3)  # the cache is read back
