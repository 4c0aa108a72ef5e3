"""HL7 v2 acknowledgements (original mode ACK).

An ACK answers the message it acknowledges: MSH-3/4 and MSH-5/6 are the inbound MSH-5/6 and
MSH-3/4 swapped, MSH-11 and MSH-12 echo the inbound processing id and version (2.5.1 when the
inbound version cannot be read), MSH-10 is a fresh control id, MSA-2 echoes the inbound MSH-10.
AE and AR carry an ERR segment: ERR-2 location (when known), ERR-3 table-0357 code, ERR-4
severity ``E``, ERR-8 the user message; for versions before 2.5 ERR-1 carries the same in the
older ELD layout. Building an ACK never fails: a message that could not be parsed is answered
from whatever MSH fields can be read by splitting its first line.
"""

from __future__ import annotations

import itertools
import os
import re
import time
import uuid
from datetime import UTC, datetime
from functools import lru_cache

from triage.errors import HL7Error
from triage.hl7.codec import escape, split_message
from triage.hl7.header import MessageHeader, peek_header

DEFAULT_VERSION = "2.5.1"
ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})

# HL7 table 0357 (message error condition codes)
ERROR_TEXT: dict[int, str] = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}

_VERSION = re.compile(r"^2\.\d(\.\d)?$")
_LOCATION = re.compile(r"^[A-Z][A-Z0-9]{2}(\^\d*){0,5}$")


def new_control_id() -> str:
    """A fresh message control id (20 characters, fits MSH-10 in every v2 version): 40 random
    bits drawn when the process starts (and in a forked child), then a counter. Unique within
    the process, and across restarts but for a 1 in 10^12 chance; a fifth of the cost of a
    uuid4 per message (an ACK for every message received)."""
    return f"{_ids.prefix}{next(_ids.counter):010X}"


class _ControlIds:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = uuid.uuid4().hex[:10].upper()
        self.counter = itertools.count()


_ids = _ControlIds()
os.register_at_fork(after_in_child=_ids.reset)


_now_text: tuple[int, str] = (-1, "")  # (second, its timestamp): one strftime a second


def hl7_timestamp(when: datetime | None = None) -> str:
    """``YYYYMMDDHHMMSS`` in UTC with an explicit ``+0000`` offset."""
    global _now_text
    if when is None:
        second = int(time.time())
        cached = _now_text
        if cached[0] == second:
            return cached[1]
        text = datetime.fromtimestamp(second, UTC).strftime("%Y%m%d%H%M%S+0000")
        _now_text = (second, text)
        return text
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (2, 5, 1)


@lru_cache(maxsize=256)
def _ack_type(version: str, trigger: str) -> tuple[str, tuple[int, ...], str]:
    """(MSH-12 of the ACK, that version as a tuple, MSH-9 of the ACK) for an inbound
    MSH-12 and MSH-9.2."""
    if not _VERSION.match(version):
        version = DEFAULT_VERSION
    vt = _version_tuple(version)
    trigger = trigger if trigger.isalnum() else ""  # alphanumeric: nothing to escape
    if vt >= (2, 4) and trigger:
        msg_type = f"ACK^{trigger}^ACK"
    elif vt >= (2, 3) and trigger:
        msg_type = f"ACK^{trigger}"
    else:
        msg_type = "ACK"
    return version, vt, msg_type


_NO_HEADER = MessageHeader()


def build_ack(
    inbound: str | MessageHeader | None,
    ack_code: str = "AA",
    *,
    hl7_code: int | None = None,
    text: str = "",
    location: str = "",
    sending_application: str = "TRIAGE",
    sending_facility: str = "TRIAGE",
    control_id: str | None = None,
    when: datetime | None = None,
) -> str:
    """An ACK for ``inbound`` (raw text, an already-read header, or None when nothing could be
    read). ``ack_code`` is AA, AE or AR (CA/CE/CR accepted too). ``hl7_code`` (table 0357),
    ``text`` and ``location`` (ERL form, e.g. ``ORC^1^1``) go into ERR for AE/AR; AE/AR
    without ``hl7_code`` use 207. Our application/facility are used where the inbound MSH-5/6
    are empty. Segments are separated by CR; no trailing CR after the last segment."""
    code = ack_code.upper()
    if code not in ACK_CODES:
        raise ValueError(f"invalid ACK code {ack_code!r}")
    if isinstance(inbound, MessageHeader):
        h = inbound
    elif isinstance(inbound, str):
        h = peek_header(inbound) or _NO_HEADER
    else:
        h = _NO_HEADER
    version, vt, msg_type = _ack_type(h.version, h.trigger)
    processing = h.processing_id if h.processing_id in ("P", "D", "T") else "P"
    ack = (
        f"MSH|^~\\&|{escape(h.receiving_application or sending_application)}"
        f"|{escape(h.receiving_facility or sending_facility)}"
        f"|{escape(h.sending_application)}|{escape(h.sending_facility)}"
        f"|{hl7_timestamp(when)}||{msg_type}|{escape(control_id or new_control_id())}"
        f"|{processing}|{version}\rMSA|{code}|{escape(h.control_id)}"
    )
    if code in ("AA", "CA"):
        return ack
    if text:
        ack += "|" + escape(text[:80])
    err_code = hl7_code if hl7_code is not None else 207
    return ack + "\r" + _err_segment(err_code, text, location, vt)


def _err_segment(code: int, text: str, location: str, version: tuple[int, ...]) -> str:
    label = ERROR_TEXT.get(code, "")
    loc = location if _LOCATION.match(location or "") else escape(location or "")
    fields = [""] * 9
    fields[0] = "ERR"
    if version < (2, 5):
        # ERR-1 (ELD): segment^sequence^field^code&text&HL70357
        parts = [*loc.split("^"), "", "", ""][:3] if loc else ["", "", ""]
        fields[1] = "^".join([*parts, f"{code}&{escape(label)}&HL70357"])
    fields[2] = loc
    fields[3] = f"{code}^{escape(label)}^HL70357"
    fields[4] = "E"
    fields[8] = escape(text[:250])
    while fields and not fields[-1]:
        fields.pop()
    return "|".join(fields)


def ack_for_error(
    inbound: str | MessageHeader | None,
    error: HL7Error,
    *,
    sending_application: str = "TRIAGE",
    sending_facility: str = "TRIAGE",
    control_id: str | None = None,
) -> str:
    """The AE/AR ACK for ``error`` (its ack_code, hl7_code, message and location)."""
    return build_ack(
        inbound,
        error.ack_code,
        hl7_code=error.hl7_code,
        text=str(error),
        location=error.location,
        sending_application=sending_application,
        sending_facility=sending_facility,
        control_id=control_id,
    )


def read_ack(ack: str) -> tuple[str, str, str]:
    """(MSA-1, MSA-2, error text) of an ACK; empty strings when absent. Never raises."""
    try:
        msg = split_message(ack, strict=False)
    except HL7Error:
        return "", "", ""
    msa = msg.first("MSA")
    if msa is None:
        return "", "", ""
    err = msg.first("ERR")
    detail = ""
    if err is not None:
        detail = err.get(8) or err.get(3, 2) or err.get(1, 4, 2)
    return msa.get(1).upper(), msa.get(2), detail or msa.get(3)
