"""What the engine makes of one inbound HL7 message, before anything is stored.

:func:`decode_payload` turns frame bytes into text (MSH-18), :func:`evaluate` reads the header
and, for orders (ORM^O01, OMI^O23) and patient updates (ADT^A08, ADT^A31), the values the engine
takes, with the site mapping of the sender, and for a final report (ORU^R01) its coded
results (:mod:`triage.hl7.reports`); :func:`make_ack` builds the answer for an outcome
in the message's acknowledgment mode (original: AA/AE/AR; enhanced: CA/CE/CR per MSH-15, or
AA/AE/AR per MSH-16 when no commit ACK is asked for). The listener, ``triage hl7 check`` and
``triage hl7 replay`` all go through these functions, so the check shows exactly what the
listener would do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from triage.errors import HL7Error
from triage.hl7.ack import ack_for_error, build_ack
from triage.hl7.codec import normalise_segments
from triage.hl7.fieldmap import DEFAULT_FIELD_MAP, FieldMap
from triage.hl7.header import (
    MessageHeader,
    check_order_header,
    check_required_header,
    message_of,
    peek_header,
)
from triage.hl7.mapping import DEFAULT_MAPPING, HL7Mapping
from triage.hl7.orders import ParsedOrder, PatientUpdate, orders_of, patient_update_of
from triage.hl7.reports import ParsedReport, reports_of

# HL7 table 0211 (character sets) -> Python codec
CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
}
_SINGLE_BYTE = frozenset(c for c in CHARSETS.values() if c not in ("ascii", "utf-8"))

# ORC-1 values that create or update the order, and those that cancel it (with ORC-5 to set).
UPDATE_CONTROLS = frozenset({"NW", "OK", "SN", "NA", "XO", "XR", "SC"})
CANCEL_CONTROLS: dict[str, str] = {
    "CA": "CA",
    "CR": "CA",
    "OC": "CA",
    "DC": "DC",
    "DR": "DC",
    "OD": "DC",
}
APPLIED_CONTROLS = UPDATE_CONTROLS | frozenset(CANCEL_CONTROLS)

# Original-mode code -> enhanced-mode commit code. AE for an unsupported type, event,
# processing id or version is a commit reject (CR); other AE (content, internal) is CE.
_COMMIT_REJECT_CODES = frozenset({200, 201, 202, 203})


def declared_charset(payload: bytes) -> str:
    """MSH-18 (first repetition) read from the raw bytes, upper-case; "" when absent."""
    if not payload.startswith(b"MSH") or len(payload) < 8:
        return ""
    end = len(payload)
    for sep in (b"\r", b"\n"):
        i = payload.find(sep)
        if 0 <= i < end:
            end = i
    fs = payload[3:4]
    parts = payload[:end].split(fs)
    if len(parts) < 18:
        return ""
    rep = parts[1][1:2] or b"~"
    return parts[17].split(rep)[0].decode("latin-1").strip().upper()


def decode_payload(payload: bytes) -> tuple[str, str, str]:
    """(text, codec, note) for a frame payload.

    The MSH-18 character set is used when the bytes fit it. A message that declares a
    single-byte set (8859/n) but whose non-ASCII bytes are valid UTF-8 is read as UTF-8 (a
    sender that lies in MSH-18: Latin-1 text practically never forms valid multi-byte UTF-8).
    Bytes that do not fit the declaration (or no declaration) are read as UTF-8, else
    ISO 8859-1, which decodes anything. ``note`` says when the declaration was not followed.
    """
    name = declared_charset(payload)
    declared = CHARSETS.get(name, "")
    if declared in _SINGLE_BYTE and not payload.isascii():
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return text, "utf-8", f"MSH-18 says {name} but the bytes are UTF-8; read as UTF-8"
    for codec in dict.fromkeys(c for c in (declared, "utf-8", "latin-1") if c):
        try:
            text = payload.decode(codec)
        except UnicodeDecodeError:
            continue
        note = ""
        if name and codec != declared:
            why = "is not supported" if not declared else "does not fit the bytes"
            note = f"MSH-18 {name!r} {why}; read as {codec}"
        return text, codec, note
    return payload.decode("latin-1"), "latin-1", ""  # pragma: no cover - latin-1 never fails


def decode_message(payload: bytes) -> tuple[str, str]:
    """(text, codec) of a frame payload; see :func:`decode_payload`."""
    text, codec, _ = decode_payload(payload)
    return text, codec


def canonical(raw: str) -> str:
    """The message with CR segment separators and no blank lines (to compare resends)."""
    return "\r".join(normalise_segments(raw))


@dataclass
class Evaluation:
    """What the engine would do with one message (nothing stored yet)."""

    raw: str
    codec: str = "utf-8"
    header: MessageHeader | None = None
    kind: str = "other"  # order, patient_update, report, other, rejected
    orders: list[ParsedOrder] = field(default_factory=list)
    patient: PatientUpdate | None = None
    report: ParsedReport | None = None  # a final report's coded results (ORU^R01)
    error: HL7Error | None = None
    fmap: FieldMap = DEFAULT_FIELD_MAP
    notes: list[str] = field(default_factory=list)

    @property
    def code(self) -> str:
        """The original-mode outcome: AA, AE or AR."""
        return self.error.ack_code if self.error is not None else "AA"

    @property
    def applied_orders(self) -> list[ParsedOrder]:
        return [o for o in self.orders if o.order_control in APPLIED_CONTROLS]


def evaluate(raw: str, mapping: HL7Mapping = DEFAULT_MAPPING, codec: str = "utf-8") -> Evaluation:
    """Read ``raw`` as the listener does; never raises for bad input (``error`` is set)."""
    ev = Evaluation(raw=raw, codec=codec)
    try:
        try:
            msg, header = message_of(raw)
        except HL7Error:
            ev.header = peek_header(raw)  # what can be read, to address the answer
            raise
        ev.header = header
        ev.fmap = mapping.for_header(header)
        check_required_header(header)
        if header.is_order:
            check_order_header(header)
            ev.kind = "order"
            ev.orders = orders_of(msg, header, ev.fmap)
            for i, order in enumerate(ev.orders, start=1):
                ev.notes.extend(order.warnings)
                if not order.accession_number:
                    raise HL7Error(
                        "order has no accession number (" + _sources(ev.fmap) + " empty)",
                        hl7_code=101,
                        location=f"OBR^{i}^18",
                    )
            skipped = sorted({o.order_control for o in ev.orders} - APPLIED_CONTROLS)
            if skipped:
                ev.notes.append("order control not applied: " + ", ".join(skipped))
        elif header.is_patient_update:
            ev.kind = "patient_update"
            ev.patient = patient_update_of(msg, ev.fmap)
        elif header.type_code == "ORU^R01":
            ev.kind = "report"
            ev.report = reports_of(msg, ev.fmap, mapping.final_report)
            ev.notes.extend(ev.report.notes)
    except HL7Error as exc:
        ev.error = exc
        ev.kind = "rejected"
    return ev


def _sources(fmap: FieldMap) -> str:
    return ", ".join(str(r) for r in fmap.sources_of("accession_number"))


def _wanted(condition: str, ok: bool) -> bool:
    """Table 0155: AL always, NE never, ER only on error/reject, SU only on success."""
    if condition == "NE":
        return False
    if condition == "ER":
        return not ok
    if condition == "SU":
        return ok
    return True  # AL, empty (in enhanced mode) or unknown: always


def make_ack(
    header: MessageHeader | None,
    code: str,
    error: HL7Error | None = None,
    *,
    sending_application: str = "TRIAGE",
    sending_facility: str = "TRIAGE",
) -> tuple[str, str]:
    """(ACK text to send, its MSA-1) for an outcome ``code`` (AA, AE or AR) of a message.

    Original mode: the AA/AE/AR ACK, always. Enhanced mode (MSH-15 or MSH-16 valued): one
    answer at most, on the same connection: the commit ACK (CA/CE/CR) when MSH-15 asks for it
    (AL, ER on error, SU on success; empty counts as AL), else the application ACK (AA/AE/AR)
    when MSH-16 asks for it (empty counts as AL); else nothing (text ""; the code is still
    returned, for the record). Because Triage parses and applies before it commits, CA
    already means applied.

    An acknowledgment (MSH-9 ``ACK``) is never answered, in either mode (HL7 v2:
    acknowledgments are not acknowledged): a peer that sends us one - a RIS answering on the
    wrong connection, a misrouted interface - would otherwise get an ACK back, and two engines
    doing so would answer each other for ever. It is still stored (``triage hl7 messages``).
    """
    if header is not None and header.message_type == "ACK":
        return "", code
    ok = code == "AA"
    if header is not None and header.enhanced_mode:
        if ok:
            commit = "CA"
        elif error is not None and (
            error.ack_code == "AR" or error.hl7_code in _COMMIT_REJECT_CODES
        ):
            commit = "CR"
        else:
            commit = "CE"
        if _wanted(header.accept_ack_type, ok):
            chosen = commit
        elif _wanted(header.application_ack_type, ok):
            chosen = code
        else:
            return "", commit
    else:
        chosen = code
    if error is None:
        return (
            build_ack(
                header,
                chosen,
                sending_application=sending_application,
                sending_facility=sending_facility,
            ),
            chosen,
        )
    err = HL7Error(str(error), ack_code=chosen, hl7_code=error.hl7_code, location=error.location)
    return (
        ack_for_error(
            header,
            err,
            sending_application=sending_application,
            sending_facility=sending_facility,
        ),
        chosen,
    )
