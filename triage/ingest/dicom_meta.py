"""The File Meta Information of the files we store: encoded directly when an instance is
written, and read back with the whole file when the index is rebuilt (:func:`read_instance_file`).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

from pydicom.filereader import read_dataset

from triage.errors import DicomIngestError
from triage.ingest.dicom_header import (
    InstanceFields,
    index_instance,
    read_dataset_header,
    read_header,
    text_value,
    uid_value,
)
from triage.ingest.dicom_walk import check_codestream, check_encoding

#: Our Implementation Class UID (file meta, A-ASSOCIATE-AC): a fixed UUID-derived UID (PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.306301879480639769131647343467511977568"
IMPLEMENTATION_VERSION_NAME = "TRIAGE"


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB",):
        return struct.pack("<HH2s2xL", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def encode_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """The 128-byte preamble, ``DICM`` and the File Meta Information (group 0002, always
    Explicit VR Little Endian) of an instance we store, encoded directly (pydicom's encoder
    costs about as much as the rest of a C-STORE). ``source_ae`` is the calling AE title
    (Source Application Entity Title), so a file alone says who sent it."""
    elements = b"".join(
        (
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
            _element(0x0002, 0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
            _element(0x0002, 0x0010, b"UI", _padded(transfer_syntax, b"\x00")),
            _element(0x0002, 0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
            _element(0x0002, 0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ")),
            _element(0x0002, 0x0016, b"AE", _padded(source_ae.strip()[:16], b" ")),
        )
    )
    group_length = struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(elements))
    return b"\x00" * 128 + b"DICM" + group_length + elements


def read_instance_file(path: Path) -> tuple[InstanceFields, dict[str, str], str]:
    """Read back a file the SCP wrote: (``Instance`` columns, study attributes, source AE).

    The whole data set is checked as on receipt (:func:`check_encoding`,
    :func:`check_codestream`), so a file cut short by a crash is refused. Raises
    ``DicomIngestError`` (or ``OSError`` when it cannot be read).
    """
    raw = Path(path).read_bytes()
    if len(raw) < 144 or raw[128:132] != b"DICM" or raw[132:136] != b"\x02\x00\x00\x00":
        raise DicomIngestError(DicomIngestError.CANNOT_DECODE, "no DICOM file meta")
    body_at = 144 + int(struct.unpack_from("<L", raw, 140)[0])
    if body_at > len(raw):
        raise DicomIngestError(DicomIngestError.CANNOT_DECODE, "file meta runs past the end")
    try:
        meta = read_dataset(io.BytesIO(raw[132:body_at]), False, True)
        transfer_syntax = uid_value(meta, "TransferSyntaxUID")
        source_ae = text_value(meta, "SourceApplicationEntityTitle", 16, join=False)
    except Exception as exc:
        raise DicomIngestError(DicomIngestError.CANNOT_DECODE, f"bad file meta: {exc}") from exc
    body = memoryview(raw)[body_at:]
    header_length = check_encoding(body, transfer_syntax)
    if header_length is None:  # deflated: let pydicom inflate it
        ds = read_header(raw)
    else:
        check_codestream(body, header_length, transfer_syntax)
        ds = read_dataset_header(body[:header_length], transfer_syntax)
    fields, study_attrs = index_instance(ds)
    return fields, study_attrs, source_ae
