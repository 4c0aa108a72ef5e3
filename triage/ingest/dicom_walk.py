"""Can this data set be decoded? A structural walk of an encoded data set (pydicom itself is
lenient and reads garbage as a handful of odd elements, so it is decided here), and, for
compressed transfer syntaxes, a look at the first pixel fragment (without decompressing) and
whether this installation has a decoder for it.
"""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR
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
from triage.ingest.dicom_header import INDEXED_TAGS

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
    walker.wanted = INDEXED_TAGS
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
