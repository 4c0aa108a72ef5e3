"""Reading HL7 v2 order messages (ORM^O01, OMI^O23) from the RIS.

Real RIS traffic is messy: Z-segments, versions that do not match the structure, line breaks
inside fields, LF instead of CR. hl7apy's structured parser rejects or mis-groups much of it and
parses only ~100-150 ORMs/s, so this module reads messages with a small, strict-where-it-matters
splitter instead: segments by CR/LF/CRLF, fields/components/repetitions by the delimiters the
message declares in MSH-1/MSH-2, escape sequences decoded. Only the fields listed in
``docs/hl7-interface.md`` are read; everything else is kept verbatim in the stored raw message.

Precedence rules (first non-empty wins):

- accession number: IPC-1.1, OBR-18.1, OBR-3.1 (filler order number), ORC-3.1
- ordered priority: TQ1-9.1, ORC-7.6, OBR-27.6, OBR-5; each value is normalised to a table-0027
  code letter (S, A, R, P, C, T; the sender's site codes first) by :mod:`triage.priority`, the
  engine's one priority vocabulary; a value that does not normalise is skipped
- modality: OBR-24, IPC-5.1, then inferred from the procedure code/text; only known DICOM
  modality codes are kept
- study instance UID: ZDS-1.1, IPC-3.1 (of the order's own group first, then anywhere)
- procedure: OBR-4.1 / OBR-4.2, else OBR-44.1 / OBR-44.2
- patient id: PID-3.1 (first repetition), else PID-2.1
- placer / filler order number: ORC-2 / ORC-3, else OBR-2 / OBR-3 (entity id and namespace,
  joined with ``^``)

Errors raise :class:`~triage.errors.HL7ParseError` (answered AR) when the message cannot be read
at all, and :class:`~triage.errors.HL7Error` (answered AE) with a table-0357 code otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from triage.errors import HL7Error, HL7ParseError
from triage.priority import PRIORITY_CODES as PRIORITY_CODES  # re-exported: the one vocabulary
from triage.priority import normalise_priority as normalise_priority

ORDER_VERSIONS: dict[str, frozenset[str]] = {
    "ORM": frozenset({"2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6"}),
    "OMI": frozenset({"2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"}),
}
ORDER_TRIGGERS: dict[str, str] = {"ORM": "O01", "OMI": "O23"}
PATIENT_UPDATE_TRIGGERS = frozenset({"A08", "A31"})

MODALITIES = frozenset(
    {"CT", "MR", "US", "NM", "PT", "CR", "DX", "MG", "XA", "RF", "OT", "IO", "PX", "RG", "OP"}
)
_MODALITY_ALIASES = {"MRI": "MR", "PET": "PT", "XR": "DX", "RAD": "", "CUS": "US"}
_MODALITY_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(CT|CTA|CTPA|CAT|COMPUTED TOMOGRAPHY)\b"), "CT"),
    (re.compile(r"\b(MR|MRI|MRA|MAGNETIC RESONANCE)\b"), "MR"),
    (re.compile(r"\b(PET|PET-CT)\b"), "PT"),
    (re.compile(r"\b(US|ULTRASOUND|SONOGRAPHY|DOPPLER|ECHO)\b"), "US"),
    (re.compile(r"\b(MAMMO|MAMMOGRAPHY|MAMMOGRAM)\b"), "MG"),
    (re.compile(r"\b(NM|SCINTIGRAPHY|BONE SCAN)\b"), "NM"),
    (re.compile(r"\b(FLUORO|FLUOROSCOPY)\b"), "RF"),
    (re.compile(r"\b(ANGIO|ANGIOGRAPHY)\b"), "XA"),
    (re.compile(r"\b(X-RAY|XRAY|XR|RADIOGRAPH|RADIOGRAPHY)\b"), "DX"),
)

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Delimiters:
    """The message's encoding characters (MSH-1 and MSH-2)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @classmethod
    def from_msh(cls, line: str, *, strict: bool = True) -> Delimiters:
        """Read the delimiters from an MSH line. ``strict`` rejects invalid ones."""
        if len(line) < 4 or not line.startswith("MSH"):
            raise HL7ParseError("message does not start with an MSH segment", location="MSH")
        fs = line[3]
        end = line.find(fs, 4)
        enc = line[4:end] if end >= 0 else line[4:]
        if strict:
            chars = fs + enc
            if (
                not 2 <= len(enc) <= 5
                or len(set(chars)) != len(chars)
                or any(c.isalnum() or c.isspace() for c in chars)
            ):
                raise HL7ParseError(
                    f"invalid encoding characters {fs + enc!r} in MSH-1/MSH-2",
                    hl7_code=102,
                    location="MSH^1^2",
                )
        padded = (enc + "\0\0\0\0")[:4]
        return cls(
            field=fs,
            component=padded[0] if padded[0] != "\0" else "^",
            repetition=padded[1] if padded[1] != "\0" else "~",
            escape=padded[2] if padded[2] != "\0" else "",
            subcomponent=padded[3] if padded[3] != "\0" else "&",
        )

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


DEFAULT_DELIMITERS = Delimiters()


def unescape(value: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Decode HL7 escape sequences: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\."""
    e = d.escape
    if not e or e not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c != e:
            out.append(c)
            i += 1
            continue
        j = value.find(e, i + 1)
        if j < 0:  # unterminated: keep literally
            out.append(value[i:])
            break
        seq = value[i + 1 : j]
        i = j + 1
        if seq == "F":
            out.append(d.field)
        elif seq == "S":
            out.append(d.component)
        elif seq == "T":
            out.append(d.subcomponent)
        elif seq == "R":
            out.append(d.repetition)
        elif seq == "E":
            out.append(e)
        elif seq == ".br":
            out.append("\n")
        elif seq.startswith("X") and len(seq) % 2 == 1:
            try:
                out.append(bytes.fromhex(seq[1:]).decode("latin-1"))
            except ValueError:
                out.append(e + seq + e)
        elif seq in ("H", "N") or seq.startswith((".", "C", "M", "Z")):
            continue  # highlighting, formatting, character set switches: dropped
        else:
            out.append(e + seq + e)
    return "".join(out)


# Characters that escape() changes with the default delimiters (most values have none).
_PLAIN = re.compile(r"[^\\|^&~\r\n\x0b\x1c]*")


def escape(value: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Encode text for an HL7 field: delimiters become escape sequences, line breaks \\.br\\."""
    if d is DEFAULT_DELIMITERS and _PLAIN.fullmatch(value):
        return value
    e = d.escape or "\\"
    out: list[str] = []
    table = {
        e: f"{e}E{e}",
        d.field: f"{e}F{e}",
        d.component: f"{e}S{e}",
        d.subcomponent: f"{e}T{e}",
        d.repetition: f"{e}R{e}",
    }
    text = _LINE_BREAKS.sub("\n", value)
    for c in text:
        if c in table:
            out.append(table[c])
        elif c == "\n":
            out.append(f"{e}.br{e}")
        elif c in "\x0b\x1c":
            continue  # never let MLLP block characters into a message
        else:
            out.append(c)
    return "".join(out)


@dataclass
class Segment:
    """One segment; ``fields[n]`` is field n (for MSH too: ``fields[1]`` is MSH-1)."""

    name: str
    fields: list[str]
    delimiters: Delimiters

    def raw(self, n: int) -> str:
        """Field ``n`` as on the wire (all repetitions, escapes not decoded)."""
        return self.fields[n] if 0 < n < len(self.fields) else ""

    def get(self, n: int, component: int = 1, subcomponent: int = 1) -> str:
        """Component (1-based) of the first repetition of field ``n``, unescaped and stripped."""
        fields = self.fields
        if not 0 < n < len(fields):
            return ""
        value = fields[n]
        if not value or (n <= 2 and self.name == "MSH"):
            return value
        d = self.delimiters
        if d.repetition in value:
            value = value.split(d.repetition, 1)[0]
        if d.component in value:
            parts = value.split(d.component)
            if component > len(parts):
                return ""
            value = parts[component - 1]
        elif component > 1:
            return ""
        if d.subcomponent in value:
            subs = value.split(d.subcomponent)
            if subcomponent > len(subs):
                return ""
            value = subs[subcomponent - 1]
        elif subcomponent > 1:
            return ""
        return unescape(value, d).strip()

    def components(self, n: int) -> str:
        """First repetition of field ``n``, components unescaped and joined with ``^``;
        trailing empty components removed (for names, order numbers, locations)."""
        d = self.delimiters
        value = self.raw(n).split(d.repetition, 1)[0]
        parts = [unescape(p, d).strip() for p in value.split(d.component)]
        while parts and not parts[-1]:
            parts.pop()
        return "^".join(parts)


@dataclass
class Message:
    """A message split into segments."""

    segments: list[Segment]
    delimiters: Delimiters

    def first(self, name: str) -> Segment | None:
        for seg in self.segments:
            if seg.name == name:
                return seg
        return None

    @property
    def msh(self) -> Segment:
        return self.segments[0]


def normalise_segments(text: str) -> list[str]:
    """Split a message into segment lines: CR, LF and CRLF all end a segment; blank lines are
    dropped; a line that does not start with a segment id (three upper-case letters/digits
    followed by the field separator) continues the previous segment (a line break inside a
    field, as some interface engines write them)."""
    text = text.lstrip("\ufeff\x0b \t\r\n").rstrip("\x1c")
    lines = [ln for ln in _LINE_BREAKS.split(text) if ln.strip()]
    if not lines:
        return []
    fs = lines[0][3] if lines[0].startswith("MSH") and len(lines[0]) > 3 else "|"
    out: list[str] = []
    for ln in lines:
        is_segment = bool(_SEGMENT_ID.match(ln)) and (len(ln) == 3 or ln[3] == fs)
        if is_segment or not out:
            out.append(ln)
        else:
            out[-1] += ln
    return out


def split_message(raw: str, *, strict: bool = True) -> Message:
    """Split ``raw`` into segments and fields. Raises :class:`HL7ParseError` (AR) when there is
    no MSH segment first or (``strict``) its encoding characters are invalid."""
    lines = normalise_segments(raw)
    if not lines or not lines[0].startswith("MSH"):
        raise HL7ParseError("message does not start with an MSH segment", location="MSH")
    d = Delimiters.from_msh(lines[0], strict=strict)
    segments: list[Segment] = []
    for ln in lines:
        parts = ln.split(d.field)
        name = parts[0].strip()
        if name == "MSH" and not segments:
            parts = ["MSH", d.field, *parts[1:]]
        segments.append(Segment(name=name, fields=parts, delimiters=d))
    return Message(segments=segments, delimiters=d)


@dataclass(frozen=True)
class MessageHeader:
    """The MSH fields the engine uses."""

    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_type: str = ""  # MSH-9.1, e.g. ORM
    trigger: str = ""  # MSH-9.2, e.g. O01
    structure: str = ""  # MSH-9.3, e.g. OMI_O23
    control_id: str = ""  # MSH-10
    processing_id: str = ""  # MSH-11.1
    version: str = ""  # MSH-12.1
    accept_ack_type: str = ""  # MSH-15: AL, NE, ER, SU ("" with MSH-16 "": original mode)
    application_ack_type: str = ""  # MSH-16: AL, NE, ER, SU
    charset: str = ""  # MSH-18 (first repetition)

    @property
    def type_code(self) -> str:
        """``ORM^O01`` style message type."""
        return f"{self.message_type}^{self.trigger}" if self.trigger else self.message_type

    @property
    def is_order(self) -> bool:
        return self.message_type in ORDER_TRIGGERS

    @property
    def is_patient_update(self) -> bool:
        """ADT^A08 / ADT^A31: demographics changed."""
        return self.message_type == "ADT" and self.trigger in PATIENT_UPDATE_TRIGGERS

    @property
    def enhanced_mode(self) -> bool:
        """True when MSH-15 or MSH-16 is valued (HL7 enhanced acknowledgment mode)."""
        return bool(self.accept_ack_type or self.application_ack_type)


def _header_from(msh: Segment) -> MessageHeader:
    return MessageHeader(
        sending_application=msh.get(3),
        sending_facility=msh.get(4),
        receiving_application=msh.get(5),
        receiving_facility=msh.get(6),
        message_type=msh.get(9, 1).upper(),
        trigger=msh.get(9, 2).upper(),
        structure=msh.get(9, 3).upper(),
        control_id=msh.get(10),
        processing_id=msh.get(11),
        version=msh.get(12),
        accept_ack_type=msh.get(15).upper(),
        application_ack_type=msh.get(16).upper(),
        charset=msh.get(18),
    )


def read_header(raw: str) -> MessageHeader:
    """MSH of a message. Raises :class:`HL7ParseError` when it cannot be read."""
    return _header_from(split_message(raw).msh)


def peek_header(raw: str) -> MessageHeader | None:
    """Best-effort MSH of a message that may be broken; ``None`` when there is no MSH at all.
    Never raises (used to address ACKs to messages that failed to parse)."""
    try:
        text = raw.lstrip("\ufeff\x0b \t\r\n")
        start = text.find("MSH")
        if start < 0:
            return None
        lines = _LINE_BREAKS.split(text[start:], 1)
        return _header_from(split_message(lines[0], strict=False).msh)
    except (HL7Error, IndexError, ValueError):
        return None


def control_id_of(raw: str) -> str:
    """MSH-10 of a message, or "" when it cannot be read."""
    header = peek_header(raw)
    return header.control_id if header else ""


def normalise_modality(value: str) -> str:
    """A DICOM modality code for an OBR-24 / IPC-5 value, or "" if it is not one."""
    v = value.strip().upper()
    if v in MODALITIES:
        return v
    return _MODALITY_ALIASES.get(v, "")


def infer_modality(*texts: str) -> str:
    """Guess the modality from procedure codes/texts ("CT HEAD W/O", "X-RAY ANKLE")."""
    for text in texts:
        t = text.upper()
        for pattern, modality in _MODALITY_HINTS:
            if pattern.search(t):
                return modality
    return ""


# -- where each value is read from (the site mapping) ------------------------------------------

_FIELD_REF = re.compile(r"^([A-Z][A-Z0-9]{2})-([1-9][0-9]{0,2})(?:\.([1-9][0-9]?))?$")

# Segments that belong to one ORC group: a value is read from the order's own group only.
# Others (PID, PV1, IPC, ZDS, Z-segments...) are read from the order's group first, then from
# the first such segment anywhere in the message.
GROUP_SEGMENTS = frozenset({"ORC", "OBR", "TQ1", "TQ2", "OBX", "NTE", "DG1", "CTI", "BLG"})


@dataclass(frozen=True)
class FieldRef:
    """Where a value is read: ``OBR-27.6`` (a component) or ``PID-5`` (the whole first
    repetition, components joined with ``^``, trailing empty ones removed)."""

    segment: str
    field: int
    component: int = 0  # 0: the whole field

    @classmethod
    def parse(cls, text: str) -> FieldRef:
        """``SEG-n`` or ``SEG-n.c``; raises ValueError otherwise."""
        m = _FIELD_REF.match(text.strip().upper())
        if not m:
            raise ValueError(f"{text!r} is not a field reference like OBR-27.6 or PID-5")
        return cls(m.group(1), int(m.group(2)), int(m.group(3) or 0))

    def __str__(self) -> str:
        return f"{self.segment}-{self.field}" + (f".{self.component}" if self.component else "")

    def read(self, seg: Segment) -> str:
        if self.component:
            return seg.get(self.field, self.component)
        if seg.name == "MSH" and self.field in (1, 2):
            return seg.raw(self.field)
        return seg.components(self.field)


def refs(*texts: str) -> tuple[FieldRef, ...]:
    return tuple(FieldRef.parse(t) for t in texts)


# Engine field -> where it is read by default (first non-empty value wins).
DEFAULT_SOURCES: dict[str, tuple[FieldRef, ...]] = {
    "accession_number": refs("IPC-1.1", "OBR-18.1", "OBR-3.1", "ORC-3.1"),
    "placer_order_number": refs("ORC-2", "OBR-2"),
    "filler_order_number": refs("ORC-3", "OBR-3"),
    "order_status": refs("ORC-5.1"),
    "patient_id": refs("PID-3.1", "PID-2.1"),
    "patient_name": refs("PID-5"),
    "patient_class": refs("PV1-2.1"),
    "ordered_priority": refs("TQ1-9.1", "ORC-7.6", "OBR-27.6", "OBR-5.1"),
    "procedure_code": refs("OBR-4.1", "OBR-44.1"),
    "procedure_text": refs("OBR-4.2", "OBR-44.2"),
    "modality": refs("OBR-24.1", "IPC-5.1"),
    "study_uid": refs("ZDS-1.1", "IPC-3.1"),
    "ordering_location": refs("PV1-3"),
}
MAPPED_FIELDS = tuple(DEFAULT_SOURCES)


@dataclass(frozen=True)
class FieldMap:
    """How one sender's messages are read: the sources of each engine field, site priority
    codes (value -> table-0027 letter, checked before the standard codes), and whether the
    modality may be inferred from the procedure text."""

    sources: dict[str, tuple[FieldRef, ...]] = field(default_factory=lambda: dict(DEFAULT_SOURCES))
    priority_codes: dict[str, str] = field(default_factory=dict)
    infer_modality: bool = True
    name: str = "defaults"  # the mapping entry used, for `triage hl7 check`

    def sources_of(self, name: str) -> tuple[FieldRef, ...]:
        return self.sources.get(name, DEFAULT_SOURCES[name])


DEFAULT_FIELD_MAP = FieldMap()


@dataclass
class ParsedOrder:
    """What the engine reads from one order (one ORC group) of an ORM^O01 / OMI^O23."""

    message_type: str  # ORM or OMI
    trigger: str  # O01 or O23
    version: str  # MSH-12
    control_id: str  # MSH-10
    sending_application: str = ""  # MSH-3.1
    sending_facility: str = ""  # MSH-4.1
    order_control: str = ""  # ORC-1: NW, XO, SC, CA, DC...
    order_status: str = ""  # ORC-5 (CM: exam completed)
    placer_order_number: str = ""  # ORC-2 (else OBR-2), "id^namespace"
    filler_order_number: str = ""  # ORC-3 (else OBR-3), "id^namespace"
    accession_number: str = ""  # IPC-1 | OBR-18 | OBR-3.1 | ORC-3.1
    patient_id: str = ""  # PID-3.1 (else PID-2.1)
    patient_name: str = ""  # PID-5, "FAMILY^GIVEN^MIDDLE..."
    patient_class: str = ""  # PV1-2
    ordered_priority: str = ""  # S/A/R/P/C/T or ""
    priority_source: str = ""  # where the priority came from, e.g. "ORC-7.6"
    procedure_code: str = ""  # OBR-4.1
    procedure_text: str = ""  # OBR-4.2
    modality: str = ""  # OBR-24 | IPC-5 | inferred
    study_uid: str = ""  # ZDS-1.1 | IPC-3
    ordering_location: str = ""  # PV1-3, "point of care^room^bed^facility..."
    sources: dict[str, str] = field(default_factory=dict)  # engine field -> "ORC-7.6"...
    warnings: list[str] = field(default_factory=list)

    @property
    def type_code(self) -> str:
        return f"{self.message_type}^{self.trigger}"


def check_order_header(header: MessageHeader) -> None:
    """Raise :class:`HL7Error` unless the header is an order message we support."""
    check_required_header(header)
    if header.message_type not in ORDER_TRIGGERS:
        raise HL7Error(
            f"unsupported message type {header.type_code}: only ORM^O01 and OMI^O23 are orders",
            hl7_code=200,
            location="MSH^1^9^1^1",
        )
    expected = ORDER_TRIGGERS[header.message_type]
    if header.trigger != expected:
        raise HL7Error(
            f"unsupported event {header.type_code}: expected {header.message_type}^{expected}",
            hl7_code=201,
            location="MSH^1^9^1^2",
        )
    if not header.version:
        raise HL7Error("MSH-12 (version id) is missing", hl7_code=101, location="MSH^1^12")
    supported = ORDER_VERSIONS[header.message_type]
    if header.version not in supported:
        raise HL7Error(
            f"unsupported version {header.version} for {header.type_code}; "
            f"supported: {', '.join(sorted(supported))}",
            hl7_code=203,
            location="MSH^1^12",
        )


def check_required_header(header: MessageHeader) -> None:
    """MSH-10 and MSH-9 must be valued (AE 101); MSH-12 must look like a v2 version (AE 203)."""
    if not header.control_id:
        raise HL7Error("MSH-10 (message control id) is missing", hl7_code=101, location="MSH^1^10")
    if not header.message_type:
        raise HL7Error("MSH-9 (message type) is missing", hl7_code=101, location="MSH^1^9")
    if not header.version:
        raise HL7Error("MSH-12 (version id) is missing", hl7_code=101, location="MSH^1^12")
    if not _VERSION_ID.match(header.version):
        raise HL7Error(
            f"MSH-12 {header.version!r} is not an HL7 v2 version id",
            hl7_code=203,
            location="MSH^1^12",
        )


_VERSION_ID = re.compile(r"^2\.[1-9](\.[0-9]{1,2})?$")


def _order_groups(msg: Message) -> list[list[Segment]]:
    groups: list[list[Segment]] = []
    for seg in msg.segments:
        if seg.name == "ORC":
            groups.append([seg])
        elif groups:
            groups[-1].append(seg)
    return groups


def _in(group: list[Segment], name: str) -> Segment | None:
    for seg in group:
        if seg.name == name:
            return seg
    return None


def _segment_for(ref: FieldRef, msg: Message, group: list[Segment] | None) -> Segment | None:
    if group is not None:
        seg = _in(group, ref.segment)
        if seg is not None or ref.segment in GROUP_SEGMENTS:
            return seg
    return msg.first(ref.segment)


def read_value(
    fmap: FieldMap, name: str, msg: Message, group: list[Segment] | None = None
) -> tuple[str, str]:
    """(value, source) of engine field ``name``: the first non-empty source (for the priority
    and the modality: the first that normalises to a code)."""
    for ref in fmap.sources_of(name):
        seg = _segment_for(ref, msg, group)
        if seg is None:
            continue
        value = ref.read(seg)
        if value:
            return value, str(ref)
    return "", ""


def _priority(fmap: FieldMap, msg: Message, group: list[Segment]) -> tuple[str, str, list[str]]:
    skipped: list[str] = []
    for ref in fmap.sources_of("ordered_priority"):
        seg = _segment_for(ref, msg, group)
        if seg is None:
            continue
        value = ref.read(seg)
        if not value:
            continue
        code = normalise_priority(value, fmap.priority_codes)
        if code:
            return code, str(ref), skipped
        skipped.append(f"{ref} priority {value!r} is not a table-0027 code; ignored")
    return "", "", skipped


def _modality(fmap: FieldMap, msg: Message, group: list[Segment], *texts: str) -> tuple[str, str]:
    for ref in fmap.sources_of("modality"):
        seg = _segment_for(ref, msg, group)
        if seg is not None:
            code = normalise_modality(ref.read(seg))
            if code:
                return code, str(ref)
    if fmap.infer_modality:
        code = infer_modality(*texts)
        if code:
            return code, "inferred from the procedure"
    return "", ""


def _order_from_group(
    header: MessageHeader, msg: Message, group: list[Segment], fmap: FieldMap
) -> ParsedOrder:
    orc = group[0]
    control = orc.get(1).upper()
    if not control:
        raise HL7Error("ORC-1 (order control) is missing", hl7_code=101, location="ORC^1^1")
    order = ParsedOrder(
        message_type=header.message_type,
        trigger=header.trigger,
        version=header.version,
        control_id=header.control_id,
        sending_application=header.sending_application,
        sending_facility=header.sending_facility,
        order_control=control,
    )
    order.sources["order_control"] = "ORC-1"
    for name in MAPPED_FIELDS:
        if name in ("ordered_priority", "modality"):
            continue
        value, source = read_value(fmap, name, msg, group)
        if name == "patient_class":
            value = value.upper()
        setattr(order, name, value)
        if source:
            order.sources[name] = source
    priority, source, warnings = _priority(fmap, msg, group)
    order.ordered_priority, order.priority_source = priority, source
    order.warnings.extend(warnings)
    if source:
        order.sources["ordered_priority"] = source
    modality, source = _modality(fmap, msg, group, order.procedure_text, order.procedure_code)
    order.modality = modality
    if source:
        order.sources["modality"] = source
    return order


def parse_orders(raw: str, fmap: FieldMap = DEFAULT_FIELD_MAP) -> list[ParsedOrder]:
    """Every order (ORC group) of an ORM^O01 / OMI^O23 message, in message order, read with
    ``fmap`` (the sender's site mapping; the defaults otherwise).

    Raises :class:`HL7ParseError` (AR) for text that is not an HL7 message, and
    :class:`HL7Error` (AE) for a message we do not support (200 type, 201 event, 203 version)
    or that lacks a required field (101: MSH-10, MSH-9, MSH-12, ORC, ORC-1). An order without
    any accession number is returned with ``accession_number == ""``; whether it can be applied
    is the caller's decision.
    """
    msg = split_message(raw)
    header = _header_from(msg.msh)
    check_order_header(header)
    return orders_of(msg, header, fmap)


def orders_of(msg: Message, header: MessageHeader, fmap: FieldMap) -> list[ParsedOrder]:
    """The orders of an already split order message (header already checked)."""
    groups = _order_groups(msg)
    if not groups:
        raise HL7Error("the message has no ORC segment", hl7_code=101, location="ORC^1")
    return [_order_from_group(header, msg, g, fmap) for g in groups]


def parse_order(raw: str, fmap: FieldMap = DEFAULT_FIELD_MAP) -> ParsedOrder:
    """The first order of an ORM^O01 / OMI^O23 message; see :func:`parse_orders`."""
    return parse_orders(raw, fmap)[0]


@dataclass
class PatientUpdate:
    """Demographics from an ADT^A08 / ADT^A31 (update patient information)."""

    patient_id: str
    patient_name: str
    sources: dict[str, str] = field(default_factory=dict)


def patient_update_of(msg: Message, fmap: FieldMap = DEFAULT_FIELD_MAP) -> PatientUpdate:
    """The patient id and name of an ADT update; AE 101 when PID or the patient id is missing."""
    if msg.first("PID") is None:
        raise HL7Error("the message has no PID segment", hl7_code=100, location="PID^1")
    pid, pid_source = read_value(fmap, "patient_id", msg)
    if not pid:
        raise HL7Error("PID-3 (patient identifier) is missing", hl7_code=101, location="PID^1^3")
    name, name_source = read_value(fmap, "patient_name", msg)
    sources = {"patient_id": pid_source}
    if name_source:
        sources["patient_name"] = name_source
    return PatientUpdate(pid, name, sources)


def message_of(raw: str) -> tuple[Message, MessageHeader]:
    """Split ``raw`` and read its header (AR on failure)."""
    msg = split_message(raw)
    return msg, _header_from(msg.msh)
