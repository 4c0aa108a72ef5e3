"""Files of received DICOM instances: where they live, how they are written, what is indexed.

Plain functions, no networking, so the Storage SCP stays thin and each rule is unit-tested:

- :func:`safe_instance_path`: ``<data_dir>/dicom/<study>/<series>/<sop>.dcm``, and never a path
  outside ``data_dir`` whatever the peer put in the UIDs.
- :func:`write_durably`: temp file + fsync + atomic rename + directory fsync, so a file we
  acknowledged survives power loss and a failed write leaves nothing behind.
- :func:`check_encoding`: a structural walk of an encoded data set; pydicom itself is lenient
  and reads garbage as a handful of odd elements, so "can this be decoded" is decided here.
- :func:`read_header` / :func:`index_instance`: decode only the header and pull out the
  attributes the ``Instance`` and ``Study`` tables need, tolerating what real scanners send.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypedDict

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from triage.errors import DicomIngestError, StoreError

DICOM_SUBDIR = "dicom"
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


# ---------------------------------------------------------------------------- durable writes


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs_durably(directory: Path) -> None:
    """``mkdir -p`` that also fsyncs the parent of every directory it creates, so the new
    directory entries themselves survive a crash."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):  # created concurrently: fine
            new.mkdir()
        _fsync_dir(new.parent)


def write_durably(path: Path, data: bytes | Iterable[bytes | memoryview]) -> int:
    """Write ``data`` (bytes, or an iterable of byte chunks) to ``path`` atomically and durably.

    The bytes go to a temp file in the same directory, which is flushed, fsynced and renamed
    over ``path`` (``os.replace``), then the directory is fsynced. Readers see the old file or
    the complete new one, never a partial one. On any error the temp file is removed and
    :class:`StoreError` is raised (errors raised by the ``data`` iterable itself propagate
    unchanged, after the same clean-up). Returns the number of bytes written.
    """
    path = Path(path)
    try:
        _make_dirs_durably(path.parent)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise StoreError(f"cannot create {path.parent}: {exc}") from exc
    tmp = Path(tmp_name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
                size += f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise StoreError(f"cannot write {path}: {exc}") from exc
        raise
    return size


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
_MAX_DEPTH = 32


class _Walker:
    """Walks an encoded data set element by element, checking that every header is well
    formed and every value fits in the bytes that are there. Values are not interpreted."""

    def __init__(self, buf: memoryview, implicit: bool, little: bool) -> None:
        self.buf = buf
        self.implicit = implicit
        self.e = "<" if little else ">"

    def fail(self, pos: int, why: str) -> DicomIngestError:
        return DicomIngestError(DicomIngestError.CANNOT_DECODE, f"byte {pos}: {why}")

    def u16(self, pos: int) -> int:
        return int(struct.unpack_from(self.e + "H", self.buf, pos)[0])

    def u32(self, pos: int) -> int:
        return int(struct.unpack_from(self.e + "L", self.buf, pos)[0])

    def tag(self, pos: int, end: int) -> int:
        if pos + 4 > end:
            raise self.fail(pos, "truncated element tag")
        return (self.u16(pos) << 16) | self.u16(pos + 2)

    def dataset(self, pos: int, end: int, depth: int, until_item_end: bool) -> int:
        """Walk elements from ``pos`` to ``end`` (or to an item delimiter); return the end."""
        if depth > _MAX_DEPTH:
            raise self.fail(pos, "sequences nested too deep")
        while pos < end:
            tag = self.tag(pos, end)
            if tag == _ITEM_END and until_item_end:
                return pos + 8
            if tag in (_ITEM, _ITEM_END, _SEQ_END):
                raise self.fail(pos, f"unexpected delimiter ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            pos = self.element(pos, end, tag, depth)
        if until_item_end:
            raise self.fail(pos, "item without delimiter")
        return pos

    def element(self, pos: int, end: int, tag: int, depth: int) -> int:
        if self.implicit:
            if pos + 8 > end:
                raise self.fail(pos, "truncated element header")
            length, pos = self.u32(pos + 4), pos + 8
            try:
                vr = dictionary_VR(tag) if length != _UNDEFINED else "SQ"
            except KeyError:
                vr = "UN"
        else:
            if pos + 8 > end:
                raise self.fail(pos, "truncated element header")
            vr = bytes(self.buf[pos + 4 : pos + 6]).decode("latin-1")
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise self.fail(pos, "truncated element header")
                length, pos = self.u32(pos + 8), pos + 12
            elif vr in _SHORT_VRS:
                length, pos = self.u16(pos + 6), pos + 8
            else:
                raise self.fail(pos, f"invalid VR {vr!r}")
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


def check_encoding(dataset_bytes: bytes | memoryview, transfer_syntax: str) -> None:
    """Raise ``DicomIngestError(CANNOT_DECODE)`` unless ``dataset_bytes`` (a data set without
    file meta) is well formed in ``transfer_syntax``: every element header valid, every value
    and sequence item inside the bytes received, nothing left over.

    Element values are not checked (real scanners send odd values; :func:`index_instance`
    tolerates them). Compressed transfer syntaxes use Explicit VR Little Endian for the data
    set, so they are walked the same way; their pixel fragments are not decompressed.
    """
    buf = memoryview(dataset_bytes).cast("B")
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        try:
            buf = memoryview(zlib.decompress(buf, -zlib.MAX_WBITS))
        except zlib.error as exc:
            raise DicomIngestError(DicomIngestError.CANNOT_DECODE, f"bad deflate: {exc}") from exc
    if not buf:
        raise DicomIngestError(DicomIngestError.CANNOT_DECODE, "empty data set")
    implicit = transfer_syntax == ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian
    try:
        _Walker(buf, implicit, little).dataset(0, len(buf), 0, until_item_end=False)
    except struct.error as exc:  # pragma: no cover - bounds are checked before unpacking
        raise DicomIngestError(DicomIngestError.CANNOT_DECODE, str(exc)) from exc


def read_header(encoded_file: bytes) -> Dataset:
    """Decode the header of a DICOM file held in memory (preamble + file meta + data set),
    stopping before the pixel data. Raises ``DicomIngestError(CANNOT_DECODE)``."""
    try:
        return pydicom.dcmread(io.BytesIO(encoded_file), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for bad input
        raise DicomIngestError(DicomIngestError.CANNOT_DECODE, f"cannot decode: {exc}") from exc


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


def _value(ds: Dataset, keyword: str) -> Any:
    """The value of ``keyword`` or None; a value pydicom cannot convert counts as absent."""
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


def _text(ds: Dataset, keyword: str, max_len: int | None = None, join: bool = True) -> str:
    """A tag as clean text: multiple values backslash-joined (or the first), bytes decoded
    as Latin-1, NUL/space padding and control characters removed, cut to ``max_len``."""
    parts = []
    for v in _values(_value(ds, keyword)):
        s = v.decode("latin-1") if isinstance(v, bytes) else str(v)
        s = "".join(ch for ch in s if ch.isprintable()).strip()
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


def _float(ds: Dataset, keyword: str, index: int = 0) -> float | None:
    vals = _values(_value(ds, keyword))
    return _number(vals[index]) if len(vals) > index else None


def _int(ds: Dataset, keyword: str) -> int | None:
    f = _float(ds, keyword)
    if f is None or not f.is_integer() or abs(f) >= 2**31:
        return None
    return int(f)


def _uid(ds: Dataset | None, keyword: str) -> str:
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


def index_instance(ds: Dataset) -> tuple[InstanceFields, dict[str, str]]:
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
