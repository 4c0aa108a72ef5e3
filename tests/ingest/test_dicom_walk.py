"""The structure walk: well-formed data sets pass, malformed ones are 0xC210 (cannot decode);
compressed pixel fragments are checked without decompressing; every negotiated syntax decodes."""

from __future__ import annotations

import copy
import re
import zlib
from pathlib import Path

import pytest
from ct_fixtures import body_of, encode, small_ct_slice
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
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
from triage.ingest.dicom_walk import (
    check_codestream,
    check_encoding,
    decoder_available,
    scan_dataset,
)


@pytest.fixture(scope="module")
def ct_slice(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return small_ct_slice(tmp_path_factory)


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
    check_encoding(encode(ds, implicit, little), ts)


def test_deflated_and_encapsulated_pass(ct_slice: Dataset) -> None:
    body = encode(ct_slice)
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    check_encoding(deflater.compress(body) + deflater.flush(), DeflatedExplicitVRLittleEndian)
    ds = copy.deepcopy(ct_slice)
    ds.PixelData = encapsulate([b"\xff\xd8fake-jpeg\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    check_encoding(encode(ds), JPEGBaseline8Bit)


def test_every_shared_file_passes(shared_data: Path) -> None:
    files = [
        p
        for p in (shared_data / "dicom").rglob("*")
        if p.is_file() and p.name != "DIRFILE" and not p.name.startswith("LICENSE")
    ]
    assert len(files) > 150
    for f in files:
        body, ts = body_of(f)
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
    body = corrupt(encode(ct_slice))  # type: ignore[operator]
    with pytest.raises(DicomIngestError) as err:
        check_encoding(body, ExplicitVRLittleEndian)
    assert err.value.status == DicomIngestError.CANNOT_DECODE == 0xC210


def test_explicit_bytes_under_implicit_syntax_fail(ct_slice: Dataset) -> None:
    with pytest.raises(DicomIngestError):
        check_encoding(encode(ct_slice, implicit=False), ImplicitVRLittleEndian)


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


def test_scan_reports_where_the_header_ends(ct_slice: Dataset) -> None:
    body = encode(ct_slice)
    scan = scan_dataset(body, ExplicitVRLittleEndian)
    assert scan.header_length == body.index(b"\xe0\x7f\x10\x00")
    assert check_encoding(body, ExplicitVRLittleEndian) == scan.header_length
    no_pixels = copy.deepcopy(ct_slice)
    del no_pixels.PixelData
    assert check_encoding(encode(no_pixels), ExplicitVRLittleEndian) == len(encode(no_pixels))


def _encapsulated_body(ct_slice: Dataset, fragment: bytes, ts: str) -> bytes:
    ds = copy.deepcopy(ct_slice)
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = ts
    return encode(ds)


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
    body = encode(ct_slice)
    with pytest.raises(DicomIngestError, match="native"):
        check_codestream(body, check_encoding(body, JPEGLosslessSV1) or 0, JPEGLosslessSV1)
    check_codestream(
        body, check_encoding(body, ExplicitVRLittleEndian) or 0, ExplicitVRLittleEndian
    )


def test_every_negotiated_syntax_has_a_decoder() -> None:
    from triage.ingest.dicom_scp import TRANSFER_SYNTAXES

    assert [ts for ts in TRANSFER_SYNTAXES if not decoder_available(ts)] == []
    assert not decoder_available("1.2.3.4.5")
