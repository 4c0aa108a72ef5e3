"""A received instance's header: decoded (pydicom, or cheaper: the raw values the structure walk
kept) and indexed into the attributes the ``Instance`` and ``Study`` tables need, tolerating
what real scanners send.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any, TypedDict

import pydicom
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRBigEndian, ImplicitVRLittleEndian

from triage.errors import DicomIngestError
from triage.ingest.dicom_paths import UID_MAX_LEN

if TYPE_CHECKING:
    from triage.ingest.dicom_walk import Scan


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
    # from ImageOrientationPatient: the slice normal within AXIAL_COSINE of the patient's
    # long axis (None: no usable orientation); series selection trusts it over ImageType
    axial: bool | None
    convolution_kernel: str
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


def text_value(
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


#: |cosine| between the slice normal and the patient's head-foot axis from which a slice
#: counts as axial (37 degrees: a gantry tilt of up to 30 degrees is still axial)
AXIAL_COSINE = 0.8


def _axial(ds: Dataset | RawHeader) -> bool | None:
    """Whether ImageOrientationPatient makes the image an axial slice; None without a usable
    orientation."""
    values = [_number(v) for v in _values(_value(ds, "ImageOrientationPatient"))]
    if len(values) != 6 or any(v is None for v in values):
        return None
    r = [float(v) for v in values if v is not None]
    nz = r[0] * r[4] - r[1] * r[3]  # z of row x column
    norm = math.sqrt((r[1] * r[5] - r[2] * r[4]) ** 2 + (r[2] * r[3] - r[0] * r[5]) ** 2 + nz**2)
    if not math.isfinite(norm) or norm < 1e-3:
        return None
    return abs(nz) / norm >= AXIAL_COSINE


def _int(ds: Dataset | RawHeader, keyword: str) -> int | None:
    f = _float(ds, keyword)
    if f is None or not f.is_integer() or abs(f) >= 2**31:
        return None
    return int(f)


def uid_value(ds: Dataset | RawHeader | dict[str, str] | None, keyword: str) -> str:
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
    uids = {key: uid_value(ds, keyword) for key, keyword in _REQUIRED_UIDS.items()}
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
    transfer_syntax = uid_value(meta, "TransferSyntaxUID")
    fields = InstanceFields(
        sop_instance_uid=uids["sop_instance_uid"],
        sop_class_uid=uids["sop_class_uid"],
        study_uid=uids["study_uid"],
        series_uid=uids["series_uid"],
        modality=text_value(ds, "Modality", 16, join=False).upper(),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        series_description=text_value(ds, "SeriesDescription"),
        image_type=text_value(ds, "ImageType"),
        slice_thickness=_float(ds, "SliceThickness"),
        image_position_z=_float(ds, "ImagePositionPatient", 2),
        axial=_axial(ds),
        convolution_kernel=text_value(ds, "ConvolutionKernel", 64),
        transfer_syntax=transfer_syntax[:UID_MAX_LEN],
    )
    date, time = text_value(ds, "StudyDate", join=False), text_value(ds, "StudyTime", join=False)
    study_attrs = {
        "accession_number": text_value(ds, "AccessionNumber", 64, join=False),
        "patient_id": text_value(ds, "PatientID", 64, join=False),
        "patient_name": text_value(ds, "PatientName", join=False),
        "body_part": text_value(ds, "BodyPartExamined", join=False).upper(),
        "study_description": text_value(ds, "StudyDescription"),
        "contrast_agent": text_value(ds, "ContrastBolusAgent"),
        "study_datetime": f"{date}{time}" if date else "",
    }
    return fields, study_attrs


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
    "ImageOrientationPatient": "DS",
    "ConvolutionKernel": "SH",
}
_TAG_OF = {keyword: int(tag_for_keyword(keyword) or 0) for keyword in INDEXED_KEYWORDS}
INDEXED_TAGS = frozenset(_TAG_OF.values())
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
