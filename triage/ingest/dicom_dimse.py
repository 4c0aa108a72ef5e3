"""DIMSE command sets of the Storage SCP (PS3.7 9.3, E.1): reading a request's group-0000
elements, encoding a response, splitting it into P-DATA-TF PDUs, and whether an operation may
be served on the presentation context it came on (:func:`refuse_operation`)."""

from __future__ import annotations

import struct

from triage.errors import DicomProtocolError
from triage.ingest.dicom_negotiation import AcceptedContext
from triage.ingest.dicom_pdu import (
    C_ECHO_RQ,
    C_STORE_RQ,
    ELEMENT,
    HEADER,
    INVALID_PARAMETER,
    NO_DATA_SET,
    P_DATA,
    PDV,
    SOP_CLASS_NOT_SUPPORTED,
    US,
    VERIFICATION,
    Status,
)


def parse_command(data: bytes | bytearray) -> dict[int, bytes]:
    """Group-0000 elements of an implicit VR little endian command set: {element: value}."""
    out: dict[int, bytes] = {}
    i, end = 0, len(data)
    while i < end:
        if i + 8 > end:
            raise DicomProtocolError(INVALID_PARAMETER, "command set ends inside an element header")
        group, elem, length = ELEMENT.unpack_from(data, i)
        i += 8
        if group != 0x0000 or i + length > end:
            raise DicomProtocolError(
                INVALID_PARAMETER, f"bad command element ({group:04X},{elem:04X})"
            )
        out[elem] = bytes(data[i : i + length])
        i += length
    return out


def us_value(command: dict[int, bytes], elem: int) -> int | None:
    value = command.get(elem)
    return US.unpack(value)[0] if value is not None and len(value) == 2 else None


def text_value(command: dict[int, bytes], elem: int) -> str:
    return command.get(elem, b"").decode("ascii", "replace").strip("\x00 ")


def element(elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return ELEMENT.pack(0, elem, len(value)) + value


def encode_response(
    command_field: int, message_id: int, status: Status, sop_class: str = "", sop_instance: str = ""
) -> bytes:
    """A DIMSE response command set with no data set (implicit VR little endian)."""
    body = b""
    if sop_class:
        body += element(0x0002, sop_class.encode("ascii", "replace"))
    body += element(0x0100, US.pack(command_field))
    body += element(0x0120, US.pack(message_id))
    body += element(0x0800, US.pack(NO_DATA_SET))
    body += element(0x0900, US.pack(status.code))
    if status.comment and status.code != 0:
        comment = status.comment.encode("ascii", "replace")[:64]
        body += element(0x0902, comment if len(comment) % 2 == 0 else comment + b" ")
    if sop_instance:
        body += element(0x1000, sop_instance.encode("ascii", "replace"))
    return element(0x0000, struct.pack("<I", len(body))) + body


def p_data_pdus(context_id: int, command: bytes, peer_max_pdu: int) -> bytes:
    """``command`` as P-DATA-TF PDUs of at most ``peer_max_pdu`` bytes (0: no limit)."""
    room = len(command) if peer_max_pdu == 0 else max(1, peer_max_pdu - 6)
    out = []
    for start in range(0, len(command), room):
        chunk = command[start : start + room]
        control = 0x01 | (0x02 if start + room >= len(command) else 0)
        pdv = PDV.pack(len(chunk) + 2, context_id, control) + chunk
        out.append(HEADER.pack(P_DATA, 0, len(pdv)) + pdv)
    return b"".join(out)


def refuse_operation(field_: int, context: AcceptedContext, sop_class: str) -> Status | None:
    """Whether a C-STORE-RQ or C-ECHO-RQ may be served on the presentation context it came on
    (PS3.7 9.1.1, 9.1.5; PS3.8 7.1.1.13): a C-STORE's Affected SOP Class UID must be the
    context's abstract syntax, with us as the SCP of that SOP class (role negotiation); a
    C-ECHO must come on a Verification context (an empty Affected SOP Class UID is read as
    Verification). None: it may; else the status (0x0122 *SOP Class not supported*) to answer.
    Two string comparisons: it runs for every C-STORE."""
    if field_ == C_STORE_RQ:
        if sop_class != context.abstract_syntax:
            if not sop_class:
                return Status(SOP_CLASS_NOT_SUPPORTED, "C-STORE without an Affected SOP Class UID")
            return Status(
                SOP_CLASS_NOT_SUPPORTED,
                f"SOP Class is not context {context.context_id}'s abstract syntax",
            )
    elif field_ == C_ECHO_RQ:
        if context.abstract_syntax != VERIFICATION:
            return Status(
                SOP_CLASS_NOT_SUPPORTED, f"C-ECHO on context {context.context_id}: not Verification"
            )
        if sop_class and sop_class != VERIFICATION:
            return Status(
                SOP_CLASS_NOT_SUPPORTED, "C-ECHO's Affected SOP Class is not Verification"
            )
    else:
        return None
    if not context.as_scp:
        return Status(
            SOP_CLASS_NOT_SUPPORTED, f"we are not SCP on context {context.context_id} (roles)"
        )
    return None


def command_name(field_: int | None) -> str:
    return {C_STORE_RQ: "C-STORE", C_ECHO_RQ: "C-ECHO"}.get(field_ or 0, "DIMSE message")
