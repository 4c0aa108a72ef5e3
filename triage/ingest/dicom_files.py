"""Files of received DICOM instances: where they live, how they are written, what is indexed.

Plain functions, no networking, so the Storage SCP stays thin and each rule is unit-tested:

- :func:`safe_instance_path`: ``<data_dir>/dicom/<study>/<series>/<sop>.dcm``, and never a path
  outside ``data_dir`` whatever the peer put in the UIDs.
- how files are made durable is :mod:`triage.store.durable`.
- :func:`check_encoding`: a structural walk of an encoded data set; pydicom itself is lenient
  and reads garbage as a handful of odd elements, so "can this be decoded" is decided here.
- :func:`read_header` / :func:`index_instance`: decode only the header and pull out the
  attributes the ``Instance`` and ``Study`` tables need, tolerating what real scanners send.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import pydicom
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from triage.errors import DicomIngestError

DICOM_SUBDIR = "dicom"
#: Our Implementation Class UID (file meta, A-ASSOCIATE-AC): a fixed UUID-derived UID (PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.306301879480639769131647343467511977568"
IMPLEMENTATION_VERSION_NAME = "TRIAGE"
UID_MAX_LEN = 64
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")

# ---------------------------------------------------------------------------- paths


def is_valid_uid(uid: str) -> bool:
    """True when ``uid`` follows the DICOM UID grammar (PS3.5 9.1): digits and dots, <=64."""
    return 0 < len(uid) <= UID_MAX_LEN and _UID_RE.fullmatch(uid) is not None


def _path_component(uid: str) -> str:
    """A file-name-safe component for a UID: the UID itself when it follows the grammar (so
    it contains only digits and dots and is never ``.``/``..``), else a hash of it. The ``h``
    prefix keeps hashed names apart from real UIDs, which never contain letters."""
    if is_valid_uid(uid):
        return uid
    digest = hashlib.sha256(uid.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return f"h{digest}"


def safe_instance_path(data_dir: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """Where an instance is stored: ``<data_dir>/dicom/<study>/<series>/<sop>.dcm``.

    UIDs come from the peer; one like ``../../etc/passwd``, with a slash or NUL, or longer than
    a file name may be, is replaced by a hash-based name, so the result is always inside
    ``data_dir``. The same UIDs always give the same path (a re-sent instance overwrites its
    own file, never another's).
    """
    root = Path(data_dir)
    path = (
        root
        / DICOM_SUBDIR
        / _path_component(study_uid)
        / _path_component(series_uid)
        / f"{_path_component(sop_uid)}.dcm"
    )
    # Belt and braces: the components above cannot climb, but check the final path anyway.
    base = os.path.abspath(root)
    if os.path.commonpath([base, os.path.abspath(path)]) != base:  # pragma: no cover
        raise DicomIngestError(DicomIngestError.CANNOT_UNDERSTAND, "unsafe instance path")
    return path


# ---------------------------------------------------------------------------- decoding

# Explicit VRs whose length field is 4 bytes (after 2 reserved bytes); PS3.5 7.1.2.
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_SHORT_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL"}
    | {"SS", "ST", "TM", "UI", "UL", "US"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_DELIMITERS = frozenset({_ITEM, _ITEM_END, _SEQ_END})
_SHORT_VRS_B = frozenset(vr.encode("ascii") for vr in _SHORT_VRS)
_MAX_DEPTH = 32


class _Walker:
    """Walks an encoded data set element by element, checking that every header is well
    formed and every value fits in the bytes that are there. Values are not interpreted."""

    def __init__(self, buf: memoryview, implicit: bool, little: bool) -> None:
        self.buf = buf
        self.implicit = implicit
        e = "<" if little else ">"
        self._u16 = struct.Struct(e + "H").unpack_from
        self._u32 = struct.Struct(e + "L").unpack_from
        self._tag = struct.Struct(e + "HH").unpack_from
        self._head = struct.Struct(e + "2sH").unpack_from  # explicit VR: VR, short length
        self.pixel_data_at: int | None = None  # offset of the top-level (7FE0,0010) element
        self.wanted: frozenset[int] = frozenset()  # top-level tags whose values to keep
        self.found: dict[int, tuple[int, int]] = {}  # tag -> (value offset, value length)

    def fail(self, pos: int, why: str) -> DicomIngestError:
        return DicomIngestError(DicomIngestError.CANNOT_DECODE, f"byte {pos}: {why}")

    def u16(self, pos: int) -> int:
        return int(self._u16(self.buf, pos)[0])

    def u32(self, pos: int) -> int:
        return int(self._u32(self.buf, pos)[0])

    def tag(self, pos: int, end: int) -> int:
        if pos + 4 > end:
            raise self.fail(pos, "truncated element tag")
        group, elem = self._tag(self.buf, pos)
        return int((group << 16) | elem)

    def dataset(self, pos: int, end: int, depth: int, until_item_end: bool) -> int:
        """Walk elements from ``pos`` to ``end`` (or to an item delimiter); return the end."""
        if depth > _MAX_DEPTH:
            raise self.fail(pos, "sequences nested too deep")
        while pos < end:
            tag = self.tag(pos, end)
            if tag == _ITEM_END and until_item_end:
                return pos + 8
            if tag in _DELIMITERS:
                raise self.fail(pos, f"unexpected delimiter ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if depth == 0:
                if tag == _PIXEL_DATA and self.pixel_data_at is None:
                    self.pixel_data_at = pos
                elif tag in self.wanted:
                    start = pos
                    pos = self.element(pos, end, tag, depth)
                    header = 8 if self.implicit or self._is_short(start) else 12
                    self.found[tag] = (start + header, pos - start - header)
                    continue
            pos = self.element(pos, end, tag, depth)
        if until_item_end:
            raise self.fail(pos, "item without delimiter")
        return pos

    def _is_short(self, pos: int) -> bool:
        """An explicit-VR element at ``pos`` has the 8-byte header (2-byte length)."""
        return bytes(self.buf[pos + 4 : pos + 6]) in _SHORT_VRS_B

    def element(self, pos: int, end: int, tag: int, depth: int) -> int:
        if pos + 8 > end:
            raise self.fail(pos, "truncated element header")
        if self.implicit:
            length, pos = self.u32(pos + 4), pos + 8
            try:
                vr = dictionary_VR(tag) if length != _UNDEFINED else "SQ"
            except KeyError:
                vr = "UN"
        else:
            raw_vr, short = self._head(self.buf, pos + 4)
            if raw_vr in _SHORT_VRS_B:
                # the common case: no further checks below apply to these VRs
                if pos + 8 + short > end:
                    raise self.fail(pos + 8, f"value of {short} bytes runs past the end")
                return int(pos + 8 + short)
            vr = raw_vr.decode("latin-1")
            if vr not in _LONG_VRS:
                raise self.fail(pos, f"invalid VR {vr!r}")
            if pos + 12 > end:
                raise self.fail(pos, "truncated element header")
            length, pos = self.u32(pos + 8), pos + 12
        if length == _UNDEFINED:
            if vr in ("SQ", "UN"):
                return self.sequence(pos, end, depth, defined_end=None, implicit_un=vr == "UN")
            if vr in ("OB", "OW"):
                return self.fragments(pos, end)
            raise self.fail(pos, f"undefined length for VR {vr}")
        if pos + length > end:
            raise self.fail(pos, f"value of {length} bytes runs past the end")
        if vr == "SQ":
            self.sequence(pos, end, depth, defined_end=pos + length, implicit_un=False)
        return pos + length

    def sequence(
        self, pos: int, end: int, depth: int, defined_end: int | None, implicit_un: bool
    ) -> int:
        """Walk the items of a sequence; ``defined_end`` None: up to a sequence delimiter."""
        walker = _Walker(self.buf, True, True) if implicit_un else self
        limit = end if defined_end is None else defined_end
        while pos < limit:
            tag = walker.tag(pos, limit)
            if pos + 8 > limit:
                raise self.fail(pos, "truncated item header")
            length = walker.u32(pos + 4)
            if tag == _SEQ_END and defined_end is None:
                return pos + 8
            if tag != _ITEM:
                raise self.fail(pos, "expected a sequence item")
            pos += 8
            if length == _UNDEFINED:
                pos = walker.dataset(pos, limit, depth + 1, until_item_end=True)
            else:
                if pos + length > limit:
                    raise self.fail(pos, "item runs past the end")
                walker.dataset(pos, pos + length, depth + 1, until_item_end=False)
                pos += length
        if defined_end is None:
            raise self.fail(pos, "sequence without delimiter")
        return pos

    def fragments(self, pos: int, end: int) -> int:
        """Encapsulated pixel data: items of defined length up to a sequence delimiter."""
        while True:
            tag = self.tag(pos, end)
            if pos + 8 > end:
                raise self.fail(pos, "truncated fragment header")
            length, pos = self.u32(pos + 4), pos + 8
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM or length == _UNDEFINED or pos + length > end:
                raise self.fail(pos, "malformed pixel data fragment")
            pos += length


@dataclass
class Scan:
    """What :func:`scan_dataset` learnt: where the header ends, and the raw values of the
    top-level elements :func:`index_header` needs (for uncompressed / encapsulated syntaxes)."""

    header_length: int | None  # offset of the top-level Pixel Data; None when deflated
    values: dict[int, bytes]  # tag -> raw value bytes (empty when deflated)


def scan_dataset(dataset_bytes: bytes | memoryview, transfer_syntax: str) -> Scan:
    """Raise ``DicomIngestError(CANNOT_DECODE)`` unless ``dataset_bytes`` (a data set without
    file meta) is well formed in ``transfer_syntax``: every element header valid, every value
    and sequence item inside the bytes received, nothing left over.

    Element values are not checked (real scanners send odd values; :func:`index_instance`
    tolerates them). Compressed transfer syntaxes use Explicit VR Little Endian for the data
    set, so they are walked the same way; their pixel fragments are not decompressed (see
    :func:`check_codestream`). On the way, the values of the elements that are indexed are
    kept, so the header need not be parsed a second time.
    """
    buf = memoryview(dataset_bytes).cast("B")
    deflated = transfer_syntax == DeflatedExplicitVRLittleEndian
    if deflated:
        try:
            buf = memoryview(zlib.decompress(buf, -zlib.MAX_WBITS))
        except zlib.error as exc:
            raise DicomIngestError(DicomIngestError.CANNOT_DECODE, f"bad deflate: {exc}") from exc
    if not buf:
        raise DicomIngestError(DicomIngestError.CANNOT_DECODE, "empty data set")
    implicit = transfer_syntax == ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian
    walker = _Walker(buf, implicit, little)
    walker.wanted = _INDEXED_TAGS
    try:
        walker.dataset(0, len(buf), 0, until_item_end=False)
    except struct.error as exc:  # pragma: no cover - bounds are checked before unpacking
        raise DicomIngestError(DicomIngestError.CANNOT_DECODE, str(exc)) from exc
    if deflated:
        return Scan(None, {})
    values = {tag: bytes(buf[at : at + n]) for tag, (at, n) in walker.found.items()}
    header_length = len(buf) if walker.pixel_data_at is None else walker.pixel_data_at
    return Scan(header_length, values)


def check_encoding(dataset_bytes: bytes | memoryview, transfer_syntax: str) -> int | None:
    """:func:`scan_dataset`, returning only the header length: the offset of the top-level
    Pixel Data element, or the whole length when there is none; ``None`` for the deflated
    syntax (its bytes are compressed, so there is no such offset in them)."""
    return scan_dataset(dataset_bytes, transfer_syntax).header_length


# ---------------------------------------------------------------------------- compressed pixels

#: Transfer syntaxes whose pixel data is encapsulated, with the bytes their first fragment
#: starts with (JPEG and JPEG-LS: the SOI marker; JPEG 2000 and HTJ2K: a codestream's SOC+SIZ
#: markers or a JP2 signature box; RLE: checked by its header instead).
_JPEG_SOI = (b"\xff\xd8",)
_J2K_START = (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")
CODESTREAM_STARTS: dict[str, tuple[bytes, ...]] = {
    JPEGBaseline8Bit: _JPEG_SOI,
    JPEGExtended12Bit: _JPEG_SOI,
    JPEGLossless: _JPEG_SOI,
    JPEGLosslessSV1: _JPEG_SOI,
    JPEGLSLossless: _JPEG_SOI,
    JPEGLSNearLossless: _JPEG_SOI,
    JPEG2000Lossless: _J2K_START,
    JPEG2000: _J2K_START,
    HTJ2KLossless: _J2K_START,
    HTJ2KLosslessRPCL: _J2K_START,
    HTJ2K: _J2K_START,
    RLELossless: (),
}


def check_codestream(
    dataset_bytes: bytes | memoryview, pixel_at: int, transfer_syntax: str
) -> None:
    """For a compressed (encapsulated) transfer syntax, check - without decompressing - that
    the Pixel Data element at ``pixel_at`` (see :func:`check_encoding`) is encapsulated and
    that its first fragment starts like a stream of that syntax. Raises
    ``DicomIngestError(CANNOT_DECODE)`` otherwise; does nothing for native syntaxes or when
    there is no pixel data. ``check_encoding`` has already checked the element structure.
    """
    starts = CODESTREAM_STARTS.get(transfer_syntax)
    buf = memoryview(dataset_bytes).cast("B")
    if starts is None or pixel_at + 12 > len(buf):
        return

    def fail(why: str) -> DicomIngestError:
        name = getattr(UID(transfer_syntax), "name", transfer_syntax)
        return DicomIngestError(DicomIngestError.CANNOT_DECODE, f"{why} for {name}")

    if struct.unpack_from("<L", buf, pixel_at + 8)[0] != _UNDEFINED:
        raise fail("native (not encapsulated) pixel data")
    pos = pixel_at + 12
    offset_table_length = struct.unpack_from("<L", buf, pos + 4)[0]  # item 1: offset table
    pos += 8 + offset_table_length
    tag = (struct.unpack_from("<H", buf, pos)[0] << 16) | struct.unpack_from("<H", buf, pos + 2)[0]
    length = struct.unpack_from("<L", buf, pos + 4)[0]
    if tag != _ITEM or length == 0:
        raise fail("no pixel data fragment")
    first = bytes(buf[pos + 8 : pos + 8 + min(length, 64)])
    if transfer_syntax == RLELossless:
        segments = struct.unpack_from("<L", first, 0)[0] if len(first) >= 8 else 0
        offset = struct.unpack_from("<L", first, 4)[0] if len(first) >= 8 else 0
        if not 1 <= segments <= 15 or offset != 64:
            raise fail("the first fragment is not an RLE header")
    elif not first.startswith(starts):
        raise fail("the first fragment is not a compressed image stream")


@functools.lru_cache(maxsize=64)
def decoder_available(transfer_syntax: str) -> bool:
    """True when pixel data in ``transfer_syntax`` can be decoded in this installation (pydicom
    natively, or with one of its plugins: pylibjpeg with libjpeg / OpenJPEG)."""
    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


# ---------------------------------------------------------------------------- file meta


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


def read_header(encoded_file: bytes) -> Dataset:
    """Decode the header of a DICOM file held in memory (preamble + file meta + data set),
    stopping before the pixel data. Raises ``DicomIngestError(CANNOT_DECODE)``."""
    try:
        return pydicom.dcmread(io.BytesIO(encoded_file), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for bad input
        raise DicomIngestError(DicomIngestError.CANNOT_DECODE, f"cannot decode: {exc}") from exc


def read_dataset_header(header: bytes | memoryview, transfer_syntax: str) -> Dataset:
    """Decode a data set header (no file meta, no pixel data: the first bytes that
    :func:`check_encoding` measured) in ``transfer_syntax``. The data set's ``file_meta`` gets
    the transfer syntax, for :func:`index_instance`. Raises ``DicomIngestError(CANNOT_DECODE)``.
    """
    try:
        ds = read_dataset(
            io.BytesIO(header),
            is_implicit_VR=transfer_syntax == ImplicitVRLittleEndian,
            is_little_endian=transfer_syntax != ExplicitVRBigEndian,
        )
    except Exception as exc:  # pydicom raises many types for bad input
        raise DicomIngestError(DicomIngestError.CANNOT_DECODE, f"cannot decode: {exc}") from exc
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    return ds


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
        transfer_syntax = _uid(meta, "TransferSyntaxUID")
        source_ae = _text(meta, "SourceApplicationEntityTitle", 16, join=False)
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


# ---------------------------------------------------------------------------- indexing


class InstanceFields(TypedDict):
    """Columns of :class:`~triage.store.models.Instance` read from the header. The caller adds
    ``path``, ``size_bytes`` and ``calling_ae``."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    modality: str
    series_number: int | None
    instance_number: int | None
    series_description: str
    image_type: str
    slice_thickness: float | None
    image_position_z: float | None
    transfer_syntax: str


def _value(ds: Dataset | RawHeader | dict[str, str], keyword: str) -> Any:
    """The value of ``keyword`` or None; a value pydicom cannot convert counts as absent.
    A :class:`RawHeader` asked for a keyword it does not collect raises ``KeyError`` (a bug:
    add the keyword to :data:`INDEXED_KEYWORDS`)."""
    if isinstance(ds, RawHeader):
        return ds.get(keyword)
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _values(value: Any) -> list[Any]:
    """The values of an element as a list. Only real multi-values are split: a PersonName,
    for one, is iterable (over its characters) but is a single value."""
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _text(
    ds: Dataset | RawHeader, keyword: str, max_len: int | None = None, join: bool = True
) -> str:
    """A tag as clean text: multiple values backslash-joined (or the first), bytes decoded
    as Latin-1, NUL/space padding and control characters removed, cut to ``max_len``."""
    parts = []
    for v in _values(_value(ds, keyword)):
        s = v.decode("latin-1") if isinstance(v, bytes) else str(v)
        if not s.isprintable():
            s = "".join(ch for ch in s if ch.isprintable())
        s = s.strip()
        parts.append(s)
    if not join:
        parts = parts[:1]
    text = "\\".join(parts).strip("\\")
    return text[:max_len] if max_len is not None else text


def _number(raw: Any) -> float | None:
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1")
    try:
        f = float(str(raw).strip().strip("\x00"))
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _float(ds: Dataset | RawHeader, keyword: str, index: int = 0) -> float | None:
    vals = _values(_value(ds, keyword))
    return _number(vals[index]) if len(vals) > index else None


def _int(ds: Dataset | RawHeader, keyword: str) -> int | None:
    f = _float(ds, keyword)
    if f is None or not f.is_integer() or abs(f) >= 2**31:
        return None
    return int(f)


def _uid(ds: Dataset | RawHeader | dict[str, str] | None, keyword: str) -> str:
    """The first value of a UI tag with its NUL/space padding removed (nothing else changed:
    a UID is an identifier, so it is checked, never "cleaned")."""
    vals = _values(_value(ds, keyword)) if ds is not None else []
    if not vals:
        return ""
    v = vals[0]
    return (v.decode("latin-1") if isinstance(v, bytes) else str(v)).strip("\x00 ")


_REQUIRED_UIDS = {
    "sop_instance_uid": "SOPInstanceUID",
    "sop_class_uid": "SOPClassUID",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
}


def index_instance(ds: Dataset | RawHeader) -> tuple[InstanceFields, dict[str, str]]:
    """Index one instance header: (``Instance`` columns, study attributes).

    The study attributes use the keys of :data:`triage.store.repo.STUDY_FIELDS`. Missing or
    malformed optional tags become ``""``/``None``. A missing SOP Instance, SOP Class, Study
    or Series UID raises ``DicomIngestError(DATASET_MISMATCH)`` (0xA900: the data set lacks
    Type 1 attributes of its SOP class); a UID longer than 64 characters or with control
    characters raises ``DicomIngestError(CANNOT_UNDERSTAND)``. Other non-conformant UIDs
    (letters, leading zeros) are accepted: real scanners send them, and
    :func:`safe_instance_path` stores them under a hashed name.
    """
    uids = {key: _uid(ds, keyword) for key, keyword in _REQUIRED_UIDS.items()}
    missing = [_REQUIRED_UIDS[k] for k, v in uids.items() if not v]
    if missing:
        raise DicomIngestError(
            DicomIngestError.DATASET_MISMATCH, f"missing required UID(s): {', '.join(missing)}"
        )
    for key, uid in uids.items():
        if len(uid) > UID_MAX_LEN or not uid.isprintable():
            raise DicomIngestError(
                DicomIngestError.CANNOT_UNDERSTAND, f"invalid {_REQUIRED_UIDS[key]}: {uid!r:.80}"
            )
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = _uid(meta, "TransferSyntaxUID")
    fields = InstanceFields(
        sop_instance_uid=uids["sop_instance_uid"],
        sop_class_uid=uids["sop_class_uid"],
        study_uid=uids["study_uid"],
        series_uid=uids["series_uid"],
        modality=_text(ds, "Modality", 16, join=False).upper(),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        series_description=_text(ds, "SeriesDescription"),
        image_type=_text(ds, "ImageType"),
        slice_thickness=_float(ds, "SliceThickness"),
        image_position_z=_float(ds, "ImagePositionPatient", 2),
        transfer_syntax=transfer_syntax[:UID_MAX_LEN],
    )
    date, time = _text(ds, "StudyDate", join=False), _text(ds, "StudyTime", join=False)
    study_attrs = {
        "accession_number": _text(ds, "AccessionNumber", 64, join=False),
        "patient_id": _text(ds, "PatientID", 64, join=False),
        "patient_name": _text(ds, "PatientName", join=False),
        "body_part": _text(ds, "BodyPartExamined", join=False).upper(),
        "study_description": _text(ds, "StudyDescription"),
        "contrast_agent": _text(ds, "ContrastBolusAgent"),
        "study_datetime": f"{date}{time}" if date else "",
    }
    return fields, study_attrs


# ---------------------------------------------------------------------------- raw header

#: Every keyword :func:`index_instance` reads (and SpecificCharacterSet, to decode text).
INDEXED_KEYWORDS: dict[str, str] = {
    "SpecificCharacterSet": "CS",
    "ImageType": "CS",
    "SOPClassUID": "UI",
    "SOPInstanceUID": "UI",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "AccessionNumber": "SH",
    "Modality": "CS",
    "StudyDescription": "LO",
    "SeriesDescription": "LO",
    "PatientName": "PN",
    "PatientID": "LO",
    "BodyPartExamined": "CS",
    "ContrastBolusAgent": "LO",
    "SliceThickness": "DS",
    "StudyInstanceUID": "UI",
    "SeriesInstanceUID": "UI",
    "SeriesNumber": "IS",
    "InstanceNumber": "IS",
    "ImagePositionPatient": "DS",
}
_TAG_OF = {keyword: int(tag_for_keyword(keyword) or 0) for keyword in INDEXED_KEYWORDS}
_INDEXED_TAGS = frozenset(_TAG_OF.values())
_CHARSET_VRS = frozenset({"SH", "LO", "PN", "ST", "LT", "UC", "UT"})


class RawHeader:
    """The indexed elements of a data set as raw bytes, read like a pydicom ``Dataset`` by
    :func:`index_instance` (``get(keyword)``, ``file_meta``): text decoded with the data set's
    Specific Character Set, multiple values split at backslashes, padding removed. Much
    cheaper than building a ``Dataset`` (a test checks both give the same index)."""

    def __init__(self, values: dict[int, bytes], transfer_syntax: str) -> None:
        self._values = values
        self.file_meta = {"TransferSyntaxUID": transfer_syntax}
        charset = self._decode(_TAG_OF["SpecificCharacterSet"], "CS", None)
        try:  # an unknown term only warns, and falls back to the default repertoire
            self._encodings = convert_encodings(_values(charset) or [""])
        except Exception as exc:
            # e.g. a NUL inside the value: pydicom cannot read such a file at all, so neither
            # could anything downstream; refuse it now rather than store what cannot be used
            raise DicomIngestError(
                DicomIngestError.CANNOT_DECODE,
                f"Specific Character Set {charset!r:.80} cannot be used: {exc}",
            ) from exc

    def _decode(self, tag: int, vr: str, encodings: list[str] | None) -> str | list[str] | None:
        raw = self._values.get(tag)
        if raw is None:
            return None
        if vr in _CHARSET_VRS and encodings is not None:
            text = decode_bytes(raw, encodings, {0x5C} if vr == "PN" else set())
        else:
            text = raw.decode("latin-1")
        parts = [p.strip(" \x00") for p in text.split("\\")]
        if not any(parts):
            return None
        return parts if len(parts) > 1 else parts[0]

    def get(self, keyword: str) -> str | list[str] | None:
        vr = INDEXED_KEYWORDS[keyword]  # KeyError: index_instance reads a tag not listed here
        try:
            return self._decode(_TAG_OF[keyword], vr, self._encodings)
        except Exception:  # undecodable text counts as absent, as with pydicom
            return None


def index_header(scan: Scan, transfer_syntax: str) -> tuple[InstanceFields, dict[str, str]]:
    """:func:`index_instance` from the raw values :func:`scan_dataset` kept."""
    return index_instance(RawHeader(scan.values, transfer_syntax))
