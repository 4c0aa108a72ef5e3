"""Invariants of the synthetic CT generator: valid DICOM, geometry, HU of each tissue, lesion
present exactly when labelled, determinism, speed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from triage.synth import SyntheticStudy, write_ctpa, write_head_ct
from triage.synth import ct as synth_ct
from triage.synth.ct.grid import slices_with


def load(study: SyntheticStudy) -> tuple[list[pydicom.Dataset], np.ndarray]:
    """Headers and the HU volume (stored * slope + intercept), in file order."""
    headers: list[pydicom.Dataset] = [pydicom.dcmread(f) for f in study.files]
    vol = np.stack(
        [
            ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for ds in headers
        ]
    )
    return headers, vol


def to_pixel(ds: pydicom.Dataset, x_mm: float, y_mm: float) -> tuple[int, int]:
    """(row, column) of patient point (x, y) in an axial slice."""
    ox, oy, _ = (float(v) for v in ds.ImagePositionPatient)
    sr, sc = (float(v) for v in ds.PixelSpacing)
    return round((y_mm - oy) / sr), round((x_mm - ox) / sc)


def patch(vol: np.ndarray, k: int, rc: tuple[int, int], half: int = 2) -> np.ndarray:
    r, c = rc
    return vol[k, r - half : r + half + 1, c - half : c + half + 1]


@pytest.fixture(scope="module")
def head_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, SyntheticStudy]:
    out = tmp_path_factory.mktemp("head")
    return {
        flag: write_head_ct(
            out / str(flag), hemorrhage=flag, seed=7, patient_id="P7", accession="ACC7"
        )
        for flag in (True, False)
    }


@pytest.fixture(scope="module")
def ctpa_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, SyntheticStudy]:
    out = tmp_path_factory.mktemp("ctpa")
    return {
        flag: write_ctpa(out / str(flag), embolus=flag, seed=9, patient_id="P9", accession="ACC9")
        for flag in (True, False)
    }


# --------------------------------------------------------------------------- DICOM validity


def test_head_files_are_valid_ct(head_pair: dict[bool, SyntheticStudy]) -> None:
    study = head_pair[True]
    assert study.label is True and study.description == "CT HEAD WO CONTRAST"
    assert len(study.files) == 24 and all(f.suffix == ".dcm" for f in study.files)
    headers, vol = load(study)
    for i, ds in enumerate(headers, start=1):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "CT" and ds.BodyPartExamined == "HEAD"
        assert ds.StudyDescription == "CT HEAD WO CONTRAST"
        assert "ContrastBolusAgent" not in ds
        assert ds.Manufacturer and ds.ConvolutionKernel
        assert ds.StudyInstanceUID == study.study_uid
        assert ds.SeriesInstanceUID == study.series_uid
        assert ds.AccessionNumber == "ACC7" and ds.PatientID == "P7"
        assert ds.InstanceNumber == i
        assert (ds.Rows, ds.Columns) == (512, 512)
        assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 1
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == -1024.0
        assert ds.pixel_array.dtype == np.int16
    assert len({ds.SOPInstanceUID for ds in headers}) == 24
    assert vol.min() >= -1024 and vol.max() <= 3071


def test_ctpa_files_are_valid_cta(ctpa_pair: dict[bool, SyntheticStudy]) -> None:
    study = ctpa_pair[True]
    assert study.label is True and study.description == "CTA CHEST PE PROTOCOL"
    headers, _ = load(study)
    for ds in headers:
        assert ds.Modality == "CT" and ds.BodyPartExamined == "CHEST"
        assert ds.StudyDescription == "CTA CHEST PE PROTOCOL"
        assert ds.ContrastBolusAgent
        assert ds.SOPClassUID == CTImageStorage


def test_pixels_are_stored_minus_intercept(head_pair: dict[bool, SyntheticStudy]) -> None:
    ds = pydicom.dcmread(head_pair[False].files[0])
    raw = np.frombuffer(ds.PixelData, dtype="<i2").reshape(ds.Rows, ds.Columns)
    assert np.array_equal(raw, ds.pixel_array)
    hu = raw.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert abs(float(hu[:10, :10].mean()) + 1000.0) < 5  # corner air


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("kind", ["head", "ctpa"])
def test_geometry(
    kind: str,
    head_pair: dict[bool, SyntheticStudy],
    ctpa_pair: dict[bool, SyntheticStudy],
) -> None:
    study = (head_pair if kind == "head" else ctpa_pair)[False]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in study.files]
    thickness = float(headers[0].SliceThickness)
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in headers])
    assert np.all(np.diff(z) > 0)
    assert np.allclose(np.diff(z), thickness, atol=1e-3)
    assert np.allclose([float(ds.SliceLocation) for ds in headers], z, atol=1e-3)
    for ds in headers:
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(ds.SliceThickness) == thickness
        assert float(ds.PixelSpacing[0]) == float(ds.PixelSpacing[1]) > 0
        assert [float(v) for v in ds.ImagePositionPatient[:2]] == [
            float(v) for v in headers[0].ImagePositionPatient[:2]
        ]
        assert ds.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    # The image is centred on the isocentre.
    ox = float(headers[0].ImagePositionPatient[0])
    assert ox == pytest.approx(-(headers[0].Columns - 1) / 2 * float(headers[0].PixelSpacing[1]))


def test_custom_size_and_thickness(tmp_path: Path) -> None:
    study = write_head_ct(
        tmp_path,
        hemorrhage=False,
        seed=1,
        patient_id="P",
        accession="A",
        n_slices=10,
        slice_thickness=2.5,
        size=128,
    )
    headers, vol = load(study)
    assert vol.shape == (10, 128, 128)
    assert float(headers[0].SliceThickness) == 2.5
    z = [float(ds.ImagePositionPatient[2]) for ds in headers]
    assert np.allclose(np.diff(z), 2.5)


# --------------------------------------------------------------------------- tissues, lesions
# (richer invariants of the anatomy, every lesion kind and mimic: tests/synth/test_phantoms.py)


def test_truth_is_beside_the_series_not_in_it(head_pair: dict[bool, SyntheticStudy]) -> None:
    study = head_pair[True]
    assert study.truth_json is not None and study.truth_mask is not None
    assert study.truth_json.parent == study.files[0].parent == study.truth_mask.parent
    truth = json.loads(study.truth_json.read_text())
    assert truth["label"] is True and truth["subtypes"] == ["intraparenchymal"]
    assert "not for clinical use" in truth["note"]
    mask = synth_ct.read_truth_mask(study.truth_mask)
    assert mask.shape == (24, 512, 512)
    assert tuple(truth["lesion_instances"]) == study.lesion_instances == slices_with(mask)
    for f in study.files:  # nothing of the ground truth inside the DICOM
        ds = pydicom.dcmread(f)
        text = str(ds).lower()
        assert "hemorrhage" not in text and "intraparenchymal" not in text
        assert not any(elem.tag.is_private for elem in ds)


def test_hemorrhage_only_when_labelled(head_pair: dict[bool, SyntheticStudy]) -> None:
    _, pos = load(head_pair[True])
    _, neg = load(head_pair[False])
    assert head_pair[False].lesion_instances == ()
    slices = head_pair[True].lesion_instances
    assert len(slices) >= 2 and list(slices) == list(range(slices[0], slices[-1] + 1))
    mask = synth_ct.read_truth_mask(head_pair[True].truth_mask)  # type: ignore[arg-type]
    diff = pos != neg
    # Same seed: identical except at the lesion (and its thin oedema rim), noise included.
    assert diff[mask].mean() > 0.95
    touched = {int(k) + 1 for k in np.flatnonzero(diff.any(axis=(1, 2)))}
    assert touched <= set(slices) | {slices[0] - 1, slices[-1] + 1}
    lesion_hu = pos[mask]
    assert 55 <= float(lesion_hu.mean()) <= 85
    # Edge voxels hold half a plane of brain (the slice profile): a few are below 40.
    assert np.percentile(lesion_hu, 5) > 30 and np.percentile(lesion_hu, 95) < 100
    assert np.percentile(lesion_hu, 25) > 45
    # It replaced brain tissue, not bone.
    assert 15 < float(neg[mask].mean()) < 45
    # Default demo bleed: 14-28 mm across in plane, clearly visible.
    k = int(np.argmax(mask.sum(axis=(1, 2))))
    cols = np.flatnonzero(mask[k].any(axis=0))
    width_mm = (cols[-1] - cols[0] + 1) * 230.0 / 512
    assert 9 <= width_mm <= 40


def test_embolus_only_when_labelled(ctpa_pair: dict[bool, SyntheticStudy]) -> None:
    _, pos = load(ctpa_pair[True])
    _, neg = load(ctpa_pair[False])
    assert ctpa_pair[False].lesion_instances == ()
    assert len(ctpa_pair[True].lesion_instances) >= 3
    mask = synth_ct.read_truth_mask(ctpa_pair[True].truth_mask)  # type: ignore[arg-type]
    diff = pos != neg
    assert diff.any() and not diff[~mask].any()
    # A filling defect: 20-70 HU where the vessel was contrast-filled (250-450 HU).
    assert 15 < float(pos[mask].mean()) < 75
    assert float(neg[mask].mean()) > 200


# --------------------------------------------------------------------------- determinism, speed


def test_deterministic_given_seed(tmp_path: Path) -> None:
    def make(out: str, seed: int) -> SyntheticStudy:
        return write_head_ct(
            tmp_path / out,
            hemorrhage=True,
            seed=seed,
            patient_id="P",
            accession="A",
            n_slices=4,
            size=128,
        )

    a, b, c = make("a", 1), make("b", 1), make("c", 2)
    assert (a.study_uid, a.series_uid) == (b.study_uid, b.series_uid)
    assert a.study_uid != c.study_uid
    assert [f.read_bytes() for f in a.files] == [f.read_bytes() for f in b.files]
    assert [f.read_bytes() for f in a.files] != [f.read_bytes() for f in c.files]


def test_given_study_uid_is_used(tmp_path: Path) -> None:
    study = write_ctpa(
        tmp_path,
        embolus=False,
        seed=1,
        patient_id="P",
        accession="A/1",
        study_uid="1.2.3.4",
        n_slices=3,
        size=64,
    )
    assert study.study_uid == "1.2.3.4"
    assert all(pydicom.dcmread(f).StudyInstanceUID == "1.2.3.4" for f in study.files)
    assert all(f.parent == tmp_path and "/" not in f.name for f in study.files)
