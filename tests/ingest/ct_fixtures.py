"""Test data shared by the DICOM ingest test modules (a plain module: a conftest.py holds
fixtures only)."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_preamble
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


def small_ct_slice(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The first slice of a 2-slice 64 x 64 head CT (written once per session), read afresh."""
    if "small" not in _cache:
        _cache["small"] = write_head_ct(
            tmp_path_factory.mktemp("synth"),
            hemorrhage=False,
            seed=1,
            patient_id="P1",
            accession="A1",
            n_slices=2,
            size=64,
        )
    return pydicom.dcmread(_cache["small"].files[0])


def encode(ds: Dataset, implicit: bool = False, little: bool = True) -> bytes:
    """``ds`` encoded without file meta, in the given VR encoding and byte order."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def body_of(path: Path) -> tuple[bytes, str]:
    """(data set bytes without file meta, transfer syntax) of a DICOM file."""
    raw = path.read_bytes()
    fp = io.BytesIO(raw)
    read_preamble(fp, False)
    meta = pydicom.filereader._read_file_meta_info(fp)
    return raw[fp.tell() :], str(meta.TransferSyntaxUID)
