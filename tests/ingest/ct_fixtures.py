"""Test data shared by the DICOM ingest test modules (a plain module: a conftest.py here would
shadow tests/conftest.py for ``from conftest import ...``)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from triage.synth import write_head_ct
from triage.synth.ct import SyntheticStudy

_cache: dict[str, SyntheticStudy] = {}


def ct300_study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    """A 300-slice 512 x 512 head CT (0.625 mm), about 150 MB, written once per session."""
    if "ct300" not in _cache:
        _cache["ct300"] = write_head_ct(
            tmp_path_factory.mktemp("ct300"),
            hemorrhage=False,
            seed=300,
            patient_id="P300",
            accession="A300",
            n_slices=300,
            slice_thickness=0.625,
        )
    return _cache["ct300"]


def encoded_dataset(ds: Dataset) -> bytes:
    """``ds`` encoded as a C-STORE data set travels: Explicit VR Little Endian, no file meta."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()
