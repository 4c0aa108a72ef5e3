"""The independent generator's DICOM writer: what it writes reads back as the engine reads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from triage.crosscheck.dicomio import (
    Acquisition,
    StudyHeader,
    instance_numbers,
    make_uid,
    stored_values,
    write_localizer,
    write_series,
)
from triage.crosscheck.study import lesion_instances
from triage.inference.volume import load_volume, select_series
from triage.ingest.dicom_files import instance_rows


def _volume(z: int = 10, n: int = 64) -> np.ndarray:
    rng = np.random.default_rng(3)
    hu = rng.normal(30.0, 5.0, (z, n, n)).astype(np.float32)
    hu[:, :4] = -1000.0
    hu[:, -4:, :] = 1500.0
    return hu


@pytest.mark.parametrize(
    "acq",
    [
        Acquisition(),
        Acquisition(rescale_intercept=-1000.0, signed=True, bits_stored=16, implicit_vr=True),
        Acquisition(rescale_intercept=0.0, signed=True, bits_stored=16),
        Acquisition(rescale_slope=0.5, rescale_intercept=-1024.0, bits_stored=16),
    ],
)
def test_series_reads_back_as_painted(tmp_path: Path, acq: Acquisition) -> None:
    hu = _volume()
    files = write_series(tmp_path / "s", hu, acq, StudyHeader())
    assert instance_numbers(files) == list(range(1, hu.shape[0] + 1))
    ds = pydicom.dcmread(files[2])
    back = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # rounding to the stored step; -1000 HU and 1500 HU are representable in every encoding
    assert np.abs(back - hu[2]).max() <= acq.rescale_slope / 2 + 1e-3
    assert float(ds.ImagePositionPatient[2]) == pytest.approx(acq.z_top - 2 * acq.spacing_z)
    vol = load_volume(files)  # z ascending inferior -> superior: our slice 0 comes last
    assert np.abs(vol.hu[::-1] - hu).max() <= acq.rescale_slope / 2 + 1e-3


def test_stored_values_clip_to_the_encoding() -> None:
    acq = Acquisition()  # unsigned 12 bit, intercept -1024: -1024 .. 3071 HU
    out = stored_values(np.array([-3000.0, 0.0, 5000.0]), acq)
    assert out.tolist() == [0, 1024, 4095]


def test_localizer_is_passed_over_by_series_selection(tmp_path: Path) -> None:
    hu = _volume()
    acq = Acquisition()
    files = write_series(tmp_path / "s", hu, acq, StudyHeader())
    scout = write_localizer(tmp_path / "s", hu, acq, StudyHeader())
    chosen = select_series(instance_rows([scout, *files]))
    assert sorted(Path(i.path) for i in chosen) == sorted(files)


def test_uids_are_deterministic_and_valid() -> None:
    a, b = make_uid("x", 1), make_uid("x", 1)
    assert a == b != make_uid("x", 2)
    assert len(a) <= 64 and a.replace(".", "").isdigit()


def test_lesion_instances_are_one_based() -> None:
    m = np.zeros((5, 4, 4), bool)
    m[1, 2, 2] = m[3, 0, 0] = True
    assert lesion_instances(m) == (2, 4)


def test_feet_first_numbering_keeps_positions_and_truth(tmp_path: Path) -> None:
    hu = _volume()
    acq = Acquisition(feet_first=True)
    files = write_series(tmp_path / "s", hu, acq, StudyHeader())
    n = hu.shape[0]
    assert instance_numbers(files) == list(range(n, 0, -1))
    top = pydicom.dcmread(files[0])
    assert float(top.ImagePositionPatient[2]) == pytest.approx(acq.z_top)  # still slice 0
    m = np.zeros(hu.shape, bool)
    m[0, 1, 1] = True  # the most superior slice
    assert lesion_instances(m, acq) == (n,)
    assert lesion_instances(m) == (1,)
