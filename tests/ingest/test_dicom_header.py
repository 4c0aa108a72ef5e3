"""The header index: what is read from real and odd headers, missing or unusable UIDs refused, and
the raw-header index equal to the pydicom one."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pydicom
import pytest
from ct_fixtures import body_of, encode, small_ct_slice
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from triage.errors import DicomIngestError
from triage.ingest.dicom_header import (
    RawHeader,
    index_header,
    index_instance,
    read_header,
    text_value,
)
from triage.ingest.dicom_meta import encode_file_meta
from triage.ingest.dicom_paths import is_valid_uid
from triage.ingest.dicom_walk import (
    scan_dataset,
)


@pytest.fixture(scope="module")
def ct_slice(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return small_ct_slice(tmp_path_factory)


def test_read_header_rejects_non_dicom() -> None:
    with pytest.raises(DicomIngestError) as err:
        read_header(b"\x00" * 64)
    assert err.value.status == 0xC210


# --------------------------------------------------------------------------- indexing


def test_index_synthetic_slice(ct_slice: Dataset) -> None:
    fields, study = index_instance(ct_slice)
    assert fields["sop_instance_uid"] == ct_slice.SOPInstanceUID
    assert fields["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.2"
    assert fields["study_uid"] == ct_slice.StudyInstanceUID
    assert fields["series_uid"] == ct_slice.SeriesInstanceUID
    assert fields["modality"] == "CT" and fields["instance_number"] == 1
    assert fields["series_number"] == 2 and fields["slice_thickness"] == 5.0
    assert fields["image_type"] == "ORIGINAL\\PRIMARY\\AXIAL"
    assert fields["image_position_z"] == pytest.approx(float(ct_slice.ImagePositionPatient[2]))
    assert fields["transfer_syntax"] == ExplicitVRLittleEndian
    assert study["accession_number"] == "A1" and study["patient_id"] == "P1"
    assert study["body_part"] == "HEAD" and study["study_description"] == "CT HEAD WO CONTRAST"
    assert study["contrast_agent"] == "" and study["patient_name"] == "SYNTHETIC^P1"
    assert study["study_datetime"] == ct_slice.StudyDate + ct_slice.StudyTime


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "SOPClassUID", "StudyInstanceUID"])
def test_missing_uid_raises_a900(ct_slice: Dataset, keyword: str) -> None:
    ds = copy.deepcopy(ct_slice)
    delattr(ds, keyword)
    with pytest.raises(DicomIngestError) as err:
        index_instance(ds)
    assert err.value.status == DicomIngestError.DATASET_MISMATCH == 0xA900
    assert keyword in str(err.value)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("bad", ["1." + "2" * 70, "1.2.3\x00\x01x", "1.2\n3"])
def test_unusable_uid_raises_cannot_understand(ct_slice: Dataset, bad: str) -> None:
    ds = copy.deepcopy(ct_slice)
    ds.SeriesInstanceUID = bad
    with pytest.raises(DicomIngestError) as err:
        index_instance(ds)
    assert err.value.status == DicomIngestError.CANNOT_UNDERSTAND


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_odd_values_from_real_scanners_are_tolerated(ct_slice: Dataset) -> None:
    ds = copy.deepcopy(ct_slice)
    ds.SOPInstanceUID = "1.2.3.4\x00"  # NUL padding
    ds[0x00180050] = RawDataElement(Tag(0x00180050), "DS", 4, b"abc ", 0, False, True)
    ds[0x00200013] = RawDataElement(Tag(0x00200013), "IS", 4, b"1.5 ", 0, False, True)
    ds.SeriesNumber = None
    ds.ImagePositionPatient = ["1", "2"]  # only two values
    ds.ImageType = "ORIGINAL"
    ds.Modality = "ct"
    ds.BodyPartExamined = "head "
    ds.PatientName = "Doe^J\x1b$B"  # escape sequence without a matching charset
    ds.AccessionNumber = "A" * 80
    del ds.StudyDate
    ds.ContrastBolusAgent = ["IOHEXOL", "350"]
    fields, study = index_instance(ds)
    assert fields["sop_instance_uid"] == "1.2.3.4"
    assert fields["slice_thickness"] is None and fields["instance_number"] is None
    assert fields["series_number"] is None and fields["image_position_z"] is None
    assert fields["image_type"] == "ORIGINAL" and fields["modality"] == "CT"
    assert study["body_part"] == "HEAD" and study["study_datetime"] == ""
    assert len(study["accession_number"]) == 64
    assert study["contrast_agent"] == "IOHEXOL\\350"
    assert "\x1b" not in study["patient_name"]


def test_index_every_shared_file(shared_data: Path) -> None:
    for f in (shared_data / "dicom").rglob("*"):
        if not f.is_file() or f.name == "DIRFILE" or f.name.startswith("LICENSE"):
            continue
        fields, _ = index_instance(pydicom.dcmread(f, stop_before_pixels=True))
        assert fields["modality"] in ("CT", "MR") and is_valid_uid(fields["study_uid"])


def _raw_index(ds: Dataset, ts: str = ExplicitVRLittleEndian) -> tuple[object, object]:
    implicit, little = ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian
    return index_header(scan_dataset(encode(ds, implicit, little), ts), ts)


def _with_syntax(ds: Dataset, ts: str) -> Dataset:
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = ts
    return ds


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_raw_header_index_equals_pydicom_index(ct_slice: Dataset, ts: str) -> None:
    odd = copy.deepcopy(ct_slice)
    odd.SOPInstanceUID = "1.2.3.4\x00"
    odd.SeriesNumber = None
    odd.ImagePositionPatient = ["1", "2"]
    odd.BodyPartExamined = "head "
    odd.ContrastBolusAgent = ["IOHEXOL", "350"]
    latin = copy.deepcopy(ct_slice)
    latin.SpecificCharacterSet = "ISO_IR 100"
    latin.PatientName = "Müller^Jürgen"
    latin.StudyDescription = "Schädel nativ"
    utf8 = copy.deepcopy(ct_slice)
    utf8.SpecificCharacterSet = "ISO_IR 192"
    utf8.PatientName = "Øster^Åse"
    for ds in (ct_slice, odd, latin, utf8):
        ds = _with_syntax(ds, ts)
        expected = index_instance(read_header(_file_bytes(ds, ts)))
        assert _raw_index(ds, ts) == expected
    assert _raw_index(_with_syntax(latin, ts), ts)[1]["patient_name"] == "Müller^Jürgen"  # type: ignore[index]


def _file_bytes(ds: Dataset, ts: str) -> bytes:
    head = encode_file_meta(ds.SOPClassUID, str(ds.SOPInstanceUID).strip("\x00"), ts, "X")
    implicit, little = ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian
    return head + encode(ds, implicit, little)


def test_raw_header_index_equals_pydicom_index_on_shared_files(shared_data: Path) -> None:
    checked = 0
    for f in sorted((shared_data / "dicom").rglob("*")):
        if not f.is_file() or f.name == "DIRFILE" or f.name.startswith("LICENSE"):
            continue
        body, ts = body_of(f)
        scan = scan_dataset(body, ts)
        if scan.header_length is None:
            continue
        assert index_header(scan, ts) == index_instance(pydicom.dcmread(f, stop_before_pixels=True))
        checked += 1
    assert checked > 100


def test_raw_header_refuses_keywords_it_does_not_collect() -> None:
    header = RawHeader({}, ExplicitVRLittleEndian)
    with pytest.raises(KeyError):
        header.get("PatientBirthDate")
    with pytest.raises(KeyError):  # not swallowed on the way: a forgotten keyword is a bug
        text_value(header, "PatientBirthDate")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_raw_header_tolerates_unknown_character_sets(ct_slice: Dataset) -> None:
    ds = copy.deepcopy(ct_slice)
    ds.SpecificCharacterSet = "ISO_IR 999"
    ds.PatientName = "Doe^Jane"
    assert _raw_index(ds)[1]["patient_name"] == "Doe^Jane"  # type: ignore[index]


def test_character_set_that_pydicom_cannot_read_is_refused(ct_slice: Dataset) -> None:
    """A NUL inside Specific Character Set (found by fuzzing): pydicom raises on such a file,
    so the engine could never read it back; the SCP must refuse it (0xC210), not store it."""
    ds = copy.deepcopy(ct_slice)
    ds.SpecificCharacterSet = "ISO_IR 100"  # pydicom cannot write the bad value: patch bytes
    body = encode(ds).replace(b"ISO_IR 100", b"ISO_IR\x00100")
    head = encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, "X")
    with pytest.raises(ValueError):
        pydicom.dcmread(io.BytesIO(head + body))
    scan = scan_dataset(body, ExplicitVRLittleEndian)
    with pytest.raises(DicomIngestError) as refused:
        index_header(scan, ExplicitVRLittleEndian)
    assert refused.value.status == DicomIngestError.CANNOT_DECODE
    assert "Specific Character Set" in str(refused.value)
    padded = copy.deepcopy(ct_slice)  # NUL padding at the end is read fine by both
    padded.SpecificCharacterSet = "ISO_IR 100  "
    padded.PatientName = "Müller"
    body = encode(padded).replace(b"ISO_IR 100  ", b"ISO_IR 100\x00\x00")
    assert pydicom.dcmread(io.BytesIO(head + body)).PatientName == "Müller"
    scan = scan_dataset(body, ExplicitVRLittleEndian)
    assert index_header(scan, ExplicitVRLittleEndian)[1]["patient_name"] == "Müller"


# --------------------------------------------------------------------------- file meta, files
