"""The brain-edge profile (triage/training/realism.py): right on a volume built to have a
known edge, and the gap between our phantoms and a real head, kept as a strict xfail that
turns into a failure (and the mark must go) once the generator draws the real interface."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from support.paths import SHARED_DATA

from triage.training.realism import edge_profile


def _ring_head(edge: np.ndarray) -> np.ndarray:
    """A 1,000 HU skull ring around brain at 30 HU, plus ``edge[d-1]`` HU at in-plane distance
    d from the ring (4-neighbour steps, as the profile counts them)."""
    n, z = 96, 6
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2.0
    r = np.hypot(yy, xx)
    plane = np.where(r < 44, 1000.0, -1000.0)
    plane = np.where(r < 40, 30.0, plane)
    vol = np.repeat(plane[None], z, axis=0).astype(np.float32)
    bone = vol > 300
    reached = bone.copy()
    for add in edge:
        grown = reached.copy()
        grown[:, 1:, :] |= reached[:, :-1, :]
        grown[:, :-1, :] |= reached[:, 1:, :]
        grown[:, :, 1:] |= reached[:, :, :-1]
        grown[:, :, :-1] |= reached[:, :, 1:]
        vol[grown & ~reached & ~bone & (vol > -500)] += add
        reached = grown
    return vol


def test_the_profile_finds_an_edge_it_was_given() -> None:
    edge = np.array([20.0, 12.0, 8.0, 5.0, 3.0, 2.0, 1.0, 0.0])
    got = edge_profile(_ring_head(edge), reach=8)
    assert np.allclose(got, edge, atol=0.01)
    assert np.allclose(edge_profile(_ring_head(np.zeros(8)), reach=8), 0.0)


def test_a_head_without_a_closed_skull_has_no_profile() -> None:
    vol = _ring_head(np.zeros(4))
    vol[:, 47:50, :8] = 30.0  # a gap through the ring to the border
    assert np.isnan(edge_profile(vol, reach=4)).all()


def _real_and_phantom_edges(generator: int) -> tuple[np.ndarray, np.ndarray]:
    from triage.inference.controls import reslice
    from triage.inference.volume import load_volume, resample, select_series
    from triage.ingest.dicom_files import instance_rows
    from triage.training.data import generate

    ge = sorted(p for p in (SHARED_DATA / "dicom" / "ge-head-ct").rglob("*.dcm"))
    if not ge:
        pytest.skip("the shared GE head CT is not here")
    with tempfile.TemporaryDirectory() as tmp:
        files = reslice([Path(r.path) for r in select_series(instance_rows(ge))], Path(tmp))
        real = resample(load_volume(files), (64, 128, 128), "linear")
    real_edge = edge_profile(real[20:])  # above the skull base and face (no ring below)
    ds = generate("ich", 3_000_000, 10, 0.0, 1, None, generator)  # tuning-range negatives
    ours = np.nanmedian([edge_profile(np.asarray(v, np.float32)) for v in ds.volumes], axis=0)
    assert real_edge[1] > 20.0  # what the real head shows, measured (the test's premise)
    return real_edge, ours


def test_generator_4_phantoms_have_the_brain_edge_of_a_real_head() -> None:
    """The skull glare of generator 4 (triage/synth/ct/scanner.py) was fitted to this."""
    real_edge, ours = _real_and_phantom_edges(4)
    assert np.all(np.abs(ours[1:8] - real_edge[1:8]) <= 6.0), (ours.round(1), real_edge.round(1))


@pytest.mark.xfail(
    strict=True,
    reason="generator 3 (ich-synthcnn-3.1 learned from it) lacks the real brain edge "
    "(docs/models.md): phantoms +5..13 HU two voxels from the bone, the real head +28",
)
def test_generator_3_phantoms_have_the_brain_edge_of_a_real_head() -> None:
    real_edge, ours = _real_and_phantom_edges(3)
    assert np.all(np.abs(ours[1:8] - real_edge[1:8]) <= 6.0), (ours.round(1), real_edge.round(1))
