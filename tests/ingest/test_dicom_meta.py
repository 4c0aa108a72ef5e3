"""The File Meta Information we write, and a stored file read back.

Durable writes are tested in tests/store/test_durable.py."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from ct_fixtures import encode, small_ct_slice
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
)

from triage.errors import DicomIngestError
from triage.ingest.dicom_header import (
    index_instance,
)
from triage.ingest.dicom_meta import encode_file_meta, read_instance_file


@pytest.fixture(scope="module")
def ct_slice(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return small_ct_slice(tmp_path_factory)


def test_encoded_file_meta_reads_back(ct_slice: Dataset, tmp_path: Path) -> None:
    head = encode_file_meta(ct_slice.SOPClassUID, "1.2.3.45", JPEG2000Lossless, "CT_SCANNER_1")
    assert len(head) % 2 == 0 and head[128:132] == b"DICM"
    path = tmp_path / "x.dcm"
    path.write_bytes(head + encode(ct_slice))
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    assert meta.MediaStorageSOPClassUID == ct_slice.SOPClassUID
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.45"
    assert meta.TransferSyntaxUID == JPEG2000Lossless
    assert meta.SourceApplicationEntityTitle == "CT_SCANNER_1"
    assert meta.ImplementationVersionName == "TRIAGE"
    assert meta.FileMetaInformationGroupLength == len(head) - 144


def test_read_instance_file_round_trip_and_truncation(ct_slice: Dataset, tmp_path: Path) -> None:
    head = encode_file_meta(
        ct_slice.SOPClassUID, ct_slice.SOPInstanceUID, ExplicitVRLittleEndian, "MOD1"
    )
    path = tmp_path / "x.dcm"
    path.write_bytes(head + encode(ct_slice))
    fields, attrs, ae = read_instance_file(path)
    assert (fields, attrs) == index_instance(ct_slice) and ae == "MOD1"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DicomIngestError):
        read_instance_file(path)
    path.write_bytes(b"\x00" * 300)
    with pytest.raises(DicomIngestError):
        read_instance_file(path)


# --------------------------------------------------------------------------- compressed
