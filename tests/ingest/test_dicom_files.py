"""Unit tests of the ingest file rules: safe paths, encoding check, indexing, file meta.

Durable writes are tested in tests/store/test_durable.py."""

from __future__ import annotations

import copy
import io
import os
import re
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_preamble
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from triage.errors import DicomIngestError
from triage.ingest import dicom_files
from triage.ingest.dicom_files import (
    RawHeader,
    check_codestream,
    check_encoding,
    decoder_available,
    encode_file_meta,
    index_header,
    index_instance,
    is_valid_uid,
    read_header,
    read_instance_file,
    safe_instance_path,
    scan_dataset,
)
from triage.synth import write_head_ct

# --------------------------------------------------------------------------- safe paths


@pytest.mark.parametrize(
    ("uid", "valid"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", True),
        ("0", True),
        ("1." + "2" * 62, True),
        ("1." + "2" * 63, False),  # 65 characters
        ("1.02.3", False),  # leading zero
        ("1..2", False),
        ("", False),
        ("..", False),
        ("1.2.3 ", False),
        ("1.2.a", False),
    ],
)
def test_uid_grammar(uid: str, valid: bool) -> None:
    assert is_valid_uid(uid) is valid


def test_safe_path_layout_for_valid_uids(tmp_path: Path) -> None:
    p = safe_instance_path(tmp_path, "1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert p == tmp_path / "dicom" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "..",
        ".",
        "/etc/passwd",
        "1.2/../../x",
        "1.2\\..\\..\\x",
        "1.2.3\x00/../x",
        "1." * 300,
        "x" * 5000,
        "",
        "1.2.3\n",
    ],
)
def test_safe_path_never_escapes(tmp_path: Path, bad: str) -> None:
    data_dir = tmp_path / "data"
    for uids in [(bad, "1.2", "1.3"), ("1.2", bad, "1.3"), ("1.2", "1.3", bad), (bad, bad, bad)]:
        p = safe_instance_path(data_dir, *uids)
        assert p.resolve().is_relative_to((data_dir / "dicom").resolve())
        assert len(p.relative_to(data_dir).parts) == 4
        assert all(len(part) <= 68 for part in p.parts)
        assert "\x00" not in str(p) and ".." not in p.parts
        assert p.suffix == ".dcm"


def test_safe_path_is_deterministic_and_distinct(tmp_path: Path) -> None:
    a = safe_instance_path(tmp_path, "../a", "1.2", "1.3")
    assert a == safe_instance_path(tmp_path, "../a", "1.2", "1.3")
    assert a != safe_instance_path(tmp_path, "../b", "1.2", "1.3")
    assert a != safe_instance_path(tmp_path, "1.2", "1.2", "1.3")


# --------------------------------------------------------------------------- encoding


@pytest.fixture(scope="module")
def ct_slice(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("synth")
    study = write_head_ct(
        out, hemorrhage=False, seed=1, patient_id="P1", accession="A1", n_slices=2, size=64
    )
    return pydicom.dcmread(study.files[0])


def _encode(ds: Dataset, implicit: bool = False, little: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _body_of(path: Path) -> tuple[bytes, str]:
    """(data set bytes without file meta, transfer syntax) of a DICOM file."""
    raw = path.read_bytes()
    fp = io.BytesIO(raw)
    read_preamble(fp, False)
    meta = pydicom.filereader._read_file_meta_info(fp)
    return raw[fp.tell() :], str(meta.TransferSyntaxUID)


@pytest.mark.parametrize(
    ("implicit", "little", "ts"),
    [
        (False, True, ExplicitVRLittleEndian),
        (True, True, ImplicitVRLittleEndian),
        (False, False, ExplicitVRBigEndian),
    ],
)
def test_well_formed_datasets_pass(
    ct_slice: Dataset, implicit: bool, little: bool, ts: str
) -> None:
    ds = copy.deepcopy(ct_slice)
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "T-A0100", "SRT"
    ds.AnatomicRegionSequence = Sequence([item, Dataset()])
    check_encoding(_encode(ds, implicit, little), ts)


def test_deflated_and_encapsulated_pass(ct_slice: Dataset) -> None:
    body = _encode(ct_slice)
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    check_encoding(deflater.compress(body) + deflater.flush(), DeflatedExplicitVRLittleEndian)
    ds = copy.deepcopy(ct_slice)
    ds.PixelData = encapsulate([b"\xff\xd8fake-jpeg\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    check_encoding(_encode(ds), JPEGBaseline8Bit)


def test_every_shared_file_passes(shared_data: Path) -> None:
    files = [
        p
        for p in (shared_data / "dicom").rglob("*")
        if p.is_file() and p.name != "DIRFILE" and not p.name.startswith("LICENSE")
    ]
    assert len(files) > 150
    for f in files:
        body, ts = _body_of(f)
        check_encoding(body, ts)


def _grow_pixel_length(body: bytes) -> bytes:
    found = re.search(rb"\xe0\x7f\x10\x00O[BW]\x00\x00", body)
    assert found is not None
    at = found.end()
    length = int.from_bytes(body[at : at + 4], "little")
    return body[:at] + (length + 2).to_bytes(4, "little") + body[at + 4 :]


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b"",
        lambda b: b"not a DICOM data set" * 10,
        lambda b: bytes(range(256)) * 4,
        lambda b: b[:-100],  # truncated inside the pixel data
        lambda b: b[:5],  # truncated inside an element header
        _grow_pixel_length,
        lambda b: b + b"\x00\x00",  # trailing bytes that are not an element
    ],
    ids=["empty", "text", "bytes", "truncated", "header", "length", "trailing"],
)
def test_malformed_datasets_are_cannot_decode(ct_slice: Dataset, corrupt: object) -> None:
    body = corrupt(_encode(ct_slice))  # type: ignore[operator]
    with pytest.raises(DicomIngestError) as err:
        check_encoding(body, ExplicitVRLittleEndian)
    assert err.value.status == DicomIngestError.CANNOT_DECODE == 0xC210


def test_explicit_bytes_under_implicit_syntax_fail(ct_slice: Dataset) -> None:
    with pytest.raises(DicomIngestError):
        check_encoding(_encode(ct_slice, implicit=False), ImplicitVRLittleEndian)


def test_bad_deflate_fails() -> None:
    with pytest.raises(DicomIngestError) as err:
        check_encoding(b"\xff\xff\xff not deflate", DeflatedExplicitVRLittleEndian)
    assert err.value.status == 0xC210


_SQ = b"\x08\x00\x18\x22SQ\x00\x00\xff\xff\xff\xff"  # (0008,2218), undefined length
_ITEM = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # item, undefined length
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_CS = b"\x08\x00\x00\x01SH\x02\x00T1"  # (0008,0100) inside the item


def test_undefined_length_sequences() -> None:
    check_encoding(_SQ + _ITEM + _CS + _ITEM_END + _SEQ_END, ExplicitVRLittleEndian)
    for broken in (_SQ + _ITEM + _CS + _ITEM_END, _SQ + _ITEM + _CS + _SEQ_END, _SQ + _CS):
        with pytest.raises(DicomIngestError):
            check_encoding(broken, ExplicitVRLittleEndian)


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


def test_odd_and_non_uid_files_are_not_valid_paths() -> None:
    assert not os.path.isabs(str(dicom_files._path_component("/etc/passwd")))


# --------------------------------------------------------------------------- raw-header index


def _raw_index(ds: Dataset, ts: str = ExplicitVRLittleEndian) -> tuple[object, object]:
    implicit, little = ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian
    return index_header(scan_dataset(_encode(ds, implicit, little), ts), ts)


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
    return head + _encode(ds, implicit, little)


def test_raw_header_index_equals_pydicom_index_on_shared_files(shared_data: Path) -> None:
    checked = 0
    for f in sorted((shared_data / "dicom").rglob("*")):
        if not f.is_file() or f.name == "DIRFILE" or f.name.startswith("LICENSE"):
            continue
        body, ts = _body_of(f)
        scan = scan_dataset(body, ts)
        if scan.header_length is None:
            continue
        assert index_header(scan, ts) == index_instance(pydicom.dcmread(f, stop_before_pixels=True))
        checked += 1
    assert checked > 100


def test_scan_reports_where_the_header_ends(ct_slice: Dataset) -> None:
    body = _encode(ct_slice)
    scan = scan_dataset(body, ExplicitVRLittleEndian)
    assert scan.header_length == body.index(b"\xe0\x7f\x10\x00")
    assert check_encoding(body, ExplicitVRLittleEndian) == scan.header_length
    no_pixels = copy.deepcopy(ct_slice)
    del no_pixels.PixelData
    assert check_encoding(_encode(no_pixels), ExplicitVRLittleEndian) == len(_encode(no_pixels))


def test_raw_header_refuses_keywords_it_does_not_collect() -> None:
    header = RawHeader({}, ExplicitVRLittleEndian)
    with pytest.raises(KeyError):
        header.get("PatientBirthDate")
    with pytest.raises(KeyError):  # not swallowed on the way: a forgotten keyword is a bug
        dicom_files._text(header, "PatientBirthDate")


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
    body = _encode(ds).replace(b"ISO_IR 100", b"ISO_IR\x00100")
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
    body = _encode(padded).replace(b"ISO_IR 100  ", b"ISO_IR 100\x00\x00")
    assert pydicom.dcmread(io.BytesIO(head + body)).PatientName == "Müller"
    scan = scan_dataset(body, ExplicitVRLittleEndian)
    assert index_header(scan, ExplicitVRLittleEndian)[1]["patient_name"] == "Müller"


# --------------------------------------------------------------------------- file meta, files


def test_encoded_file_meta_reads_back(ct_slice: Dataset, tmp_path: Path) -> None:
    head = encode_file_meta(ct_slice.SOPClassUID, "1.2.3.45", JPEG2000Lossless, "CT_SCANNER_1")
    assert len(head) % 2 == 0 and head[128:132] == b"DICM"
    path = tmp_path / "x.dcm"
    path.write_bytes(head + _encode(ct_slice))
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
    path.write_bytes(head + _encode(ct_slice))
    fields, attrs, ae = read_instance_file(path)
    assert (fields, attrs) == index_instance(ct_slice) and ae == "MOD1"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DicomIngestError):
        read_instance_file(path)
    path.write_bytes(b"\x00" * 300)
    with pytest.raises(DicomIngestError):
        read_instance_file(path)


# --------------------------------------------------------------------------- compressed


def _encapsulated_body(ct_slice: Dataset, fragment: bytes, ts: str) -> bytes:
    ds = copy.deepcopy(ct_slice)
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = ts
    return _encode(ds)


@pytest.mark.parametrize(
    ("ts", "fragment"),
    [
        (JPEGBaseline8Bit, b"\xff\xd8\xff\xe0rest"),
        (JPEGLosslessSV1, b"\xff\xd8\xff\xc3rest"),
        (JPEGLSLossless, b"\xff\xd8\xff\xf7rest"),
        (JPEG2000Lossless, b"\xff\x4f\xff\x51rest"),
        (JPEG2000, b"\x00\x00\x00\x0cjP  \r\n\x87\n"),
        (RLELossless, (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + b"\x00" * 56),
    ],
)
def test_codestream_starts_are_recognised(ct_slice: Dataset, ts: str, fragment: bytes) -> None:
    body = _encapsulated_body(ct_slice, fragment, ts)
    at = check_encoding(body, ts)
    assert at is not None
    check_codestream(body, at, ts)
    bad = _encapsulated_body(ct_slice, b"GIF89a" + fragment, ts)
    with pytest.raises(DicomIngestError) as err:
        check_codestream(bad, check_encoding(bad, ts) or 0, ts)
    assert err.value.status == DicomIngestError.CANNOT_DECODE


def test_native_pixels_under_a_compressed_syntax_fail(ct_slice: Dataset) -> None:
    body = _encode(ct_slice)
    with pytest.raises(DicomIngestError, match="native"):
        check_codestream(body, check_encoding(body, JPEGLosslessSV1) or 0, JPEGLosslessSV1)
    check_codestream(
        body, check_encoding(body, ExplicitVRLittleEndian) or 0, ExplicitVRLittleEndian
    )


def test_every_negotiated_syntax_has_a_decoder() -> None:
    from triage.ingest.dicom_scp import TRANSFER_SYNTAXES

    assert [ts for ts in TRANSFER_SYNTAXES if not decoder_available(ts)] == []
    assert not decoder_available("1.2.3.4.5")
