"""The message header (MSH): the fields the engine uses, and the checks that decide whether a
message is taken at all (AE with a table-0357 code otherwise)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from triage.errors import HL7Error
from triage.hl7.codec import LINE_BREAKS, Message, Segment, split_message, unescape
from triage.hl7.vocabulary import ORDER_TRIGGERS, ORDER_VERSIONS, PATIENT_UPDATE_TRIGGERS


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
        # the whole field: an ST has no components, and a sender that writes its "^" bare
        # gets it echoed in MSA-2 (escaped), not its first part only
        control_id=unescape(msh.raw(10), msh.delimiters).strip(),
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
        lines = LINE_BREAKS.split(text[start:], 1)
        return _header_from(split_message(lines[0], strict=False).msh)
    except (HL7Error, IndexError, ValueError):
        return None


def control_id_of(raw: str) -> str:
    """MSH-10 of a message, or "" when it cannot be read."""
    header = peek_header(raw)
    return header.control_id if header else ""


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
            f"supported: {_version_range(supported)}",
            hl7_code=203,
            location="MSH^1^12",
        )


def _version_range(versions: frozenset[str]) -> str:
    """``2.2 to 2.6``: every v2 version between the two is supported (short enough for MSA-3,
    80 characters, which cut the full list)."""
    ordered = sorted(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
    return f"{ordered[0]} to {ordered[-1]}" if len(ordered) > 1 else ordered[0]


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


def message_of(raw: str) -> tuple[Message, MessageHeader]:
    """Split ``raw`` and read its header (AR on failure)."""
    msg = split_message(raw)
    return msg, _header_from(msg.msh)
