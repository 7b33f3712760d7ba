"""The SynthHead dataset writer: determinism, calibration consistency, manifest and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from npga.capture.cameras import Camera
from npga.capture.dataset import DatasetError, open_dataset
from npga.capture.synthetic import head_pose, writer
from npga.capture.synthetic.writer import (
    dataset_spec,
    dataset_status,
    ensure_dataset,
    write_dataset,
)
from npga.config import get_profile, with_overrides

SEQUENCES = ("EXP-8-jaw-1", "FREE")


def tiny_profile(**data):
    sizes = dict(
        width=44,
        height=64,
        participants=1,
        sequences=SEQUENCES,
        frames_per_sequence=2,
        supersample=2,
        mesh_resolution=24,
        scan_identities=2,
        scan_expressions=3,
    )
    sizes.update(data)
    return with_overrides(get_profile("mini"), data=sizes)


def all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The tiny dataset written twice with the same seed: in-process and with 2 workers."""
    P = tiny_profile()
    a = write_dataset(P, tmp_path_factory.mktemp("a") / "ds", progress=False, workers=1)
    b = write_dataset(P, tmp_path_factory.mktemp("b") / "ds", progress=False, workers=2)
    return P, a, b


def test_same_seed_gives_byte_identical_files(written):
    _, a, b = written
    fa, fb = all_files(a), all_files(b)
    assert fa.keys() == fb.keys()
    assert len(fa) > 2 * 2 * 16 * 2  # frames x sequences x cameras x (image, alpha)
    differing = [k for k in fa if fa[k] != fb[k]]
    assert not differing, f"files differ between runs: {differing[:5]}"


def test_other_seed_gives_other_data(written, tmp_path):
    P, a, _ = written
    c = write_dataset(P, tmp_path / "c", seed=P.seed + 1, progress=False, workers=1)
    z_a = np.load(a / "000/sequences/FREE/ground_truth.npz")["z_exp_gt"]
    z_c = np.load(c / "000/sequences/FREE/ground_truth.npz")["z_exp_gt"]
    assert not np.allclose(z_a, z_c)


def test_layout_loads_and_validates(written):
    P, a, _ = written
    ds = open_dataset(a)
    ds.validate()
    assert ds.participants == [0]
    p = ds.participant(0)
    assert set(p.sequences) == set(SEQUENCES)
    assert len(p.cameras) == 16 and len(p.heldout_serials) == 4
    seq = p.sequence("FREE")
    assert len(seq.frames) == P.data.frames_per_sequence
    gt = seq.ground_truth()
    assert gt.z_exp.shape[0] == len(seq.frames) and gt.vertices is not None
    assert len(gt.expression_names) == gt.z_exp.shape[1]
    assert p.identity()  # identity.json written
    manifest = ds.manifest
    assert manifest["complete"] is True and manifest["seed"] == P.seed
    # GT meshes regenerate exactly from identity.json + codes
    np.testing.assert_allclose(p.synth_head().vertices(gt.z_exp[1], gt.untracked[1]), gt.vertices[1], atol=1e-6)
    assert seq.ground_truth_faces().max() < gt.vertices.shape[1]
    # the per-frame rigid head pose is stored apart from z_exp, and is that of the frame's code
    T = len(seq.frames)
    assert gt.head_rotation.shape == (T, 3, 3) and gt.head_translation.shape == (T, 3)
    for k in range(T):
        R, tr = head_pose(gt.untracked[k])
        np.testing.assert_allclose(gt.head_rotation[k], R, atol=1e-12)
        np.testing.assert_allclose(gt.head_translation[k], tr, atol=1e-12)
    assert np.abs(gt.head_rotation - np.eye(3)).max() > 0.01  # FREE turns the head

    scans = ds.scans()
    S, X = P.data.scan_identities, P.data.scan_expressions
    V = gt.vertices.shape[1]
    assert scans.all_vertices().shape == (S, X, V, 3)  # same topology as the capture
    assert np.all(scans.z_exp[:, 0] == 0)  # expression 0 is neutral
    assert set(scans.identity_split) == {"train", "heldout"}
    assert set(scans.expression_split) == {"train", "heldout"}
    assert not set(scans.identity_pids) & set(manifest["participants"])
    # the stored meshes are the generator's, to float16-offset precision
    from npga.capture.synthetic import Identity, SynthHead

    head = SynthHead(Identity.from_dict(scans.identities[1]), P.data.mesh_resolution)
    err = np.abs(scans.vertices(1, X - 1) - head.vertices(scans.z_exp[1, X - 1])).max()
    assert err < 5e-5, err


def _inside_fraction(cam: Camera, vertices: np.ndarray, alpha: np.ndarray) -> float:
    """Fraction of the in-image vertices whose pixel has alpha >= 0.5.

    No visibility test is needed: every vertex lies on a rendered triangle, so it
    projects inside the silhouette whether or not another surface hides it.
    Anti-aliasing halves alpha on the silhouette itself, hence the 3x3 maximum.
    """
    uv, z = cam.project(vertices.astype(np.float64))
    H, W = alpha.shape
    ok = (z > 0) & (uv[:, 0] >= 1) & (uv[:, 0] < W - 1) & (uv[:, 1] >= 1) & (uv[:, 1] < H - 1)
    px = np.floor(uv[ok]).astype(int)
    neigh = np.max(
        [alpha[px[:, 1] + dy, px[:, 0] + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0
    )
    return float(np.mean(neigh >= 0.5))


def test_gt_vertices_project_inside_written_alpha(written):
    _, a, _ = written
    p = open_dataset(a).participant(0)
    fractions, shifted = [], []
    for name in SEQUENCES:
        seq = p.sequence(name)
        verts = seq.ground_truth().vertices
        for fi, frame in enumerate(seq.frames):
            for serial in seq.serials:
                cam = p.cameras[serial]
                alpha = seq.load_alpha(frame, serial)
                fractions.append(_inside_fraction(cam, verts[fi], alpha))
                # the same check with a camera 4 cm off must fail: the test can tell
                M = cam.world_2_cam.copy()
                M[0, 3] += 0.04
                wrong = Camera(serial, M, cam.K, cam.width, cam.height)
                shifted.append(_inside_fraction(wrong, verts[fi], alpha))
    print(f"inside alpha: min {min(fractions):.4f}, shifted camera: mean {np.mean(shifted):.3f}")
    assert min(fractions) >= 0.99
    assert np.mean(shifted) < 0.9


def test_manifest_skip_and_regenerate(tmp_path, monkeypatch):
    P = tiny_profile(sequences=("FREE",), frames_per_sequence=1, scan_identities=1, scan_expressions=2)
    root = tmp_path / "ds"
    # the generator's source may be edited while the suite runs: pin its fingerprint
    monkeypatch.setattr(writer, "generator_fingerprint", lambda: "pinned")
    spec = dataset_spec(P)
    assert dataset_status(root, spec) == "missing"
    ensure_dataset(P, root, progress=False, workers=1)
    assert dataset_status(root, spec) == "complete"
    before = all_files(root)

    # complete and same settings: nothing is written
    def boom(*args, **kwargs):
        raise AssertionError("write_dataset called on a complete dataset")

    with monkeypatch.context() as m:
        m.setattr(writer, "write_dataset", boom)
        assert ensure_dataset(P, root, progress=False) == root

    # different settings (seed) count as not complete
    assert dataset_status(root, dataset_spec(P, seed=P.seed + 7)) == "different"

    # an interrupted generation: manifest says incomplete and a file is missing
    manifest = json.loads((root / "dataset.json").read_text())
    manifest["complete"] = False
    (root / "dataset.json").write_text(json.dumps(manifest))
    victim = next(root.glob("000/sequences/FREE/frame_00000/images/*.png"))
    victim.unlink()
    (root / "000/sequences/FREE/ground_truth.npz").unlink()
    assert dataset_status(root, spec) == "incomplete"
    ensure_dataset(P, root, progress=False, workers=1)
    assert dataset_status(root, spec) == "complete"
    assert all_files(root) == before  # regenerated exactly


def test_refuses_foreign_folder(tmp_path):
    P = tiny_profile(sequences=("FREE",), frames_per_sequence=1, scan_identities=0)
    (tmp_path / "precious.txt").write_text("not a dataset")
    with pytest.raises(DatasetError, match=r"dataset\.json"):
        write_dataset(P, tmp_path, progress=False, workers=1)
    assert (tmp_path / "precious.txt").is_file()


def test_gt_vertices_regenerated_when_not_stored(written, tmp_path, monkeypatch):
    P, a, _ = written
    monkeypatch.setattr(writer, "MAX_GT_VERTEX_FLOATS", 0)
    P1 = tiny_profile(scan_identities=0)  # same capture, no scans: quicker
    c = write_dataset(P1, tmp_path / "c", progress=False, workers=1)
    seq_c = open_dataset(c).participant(0).sequence("FREE")
    assert seq_c.ground_truth().vertices is None
    stored = open_dataset(a).participant(0).sequence("FREE").ground_truth().vertices
    for i in range(len(seq_c.frames)):
        np.testing.assert_allclose(seq_c.ground_truth_vertices(i), stored[i], atol=1e-6)
