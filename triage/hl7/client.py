"""Synchronous MLLP client for sending our ORM/ORU messages to the RIS.

One connection per message: connect, send one frame, wait for one framed ACK, close. Every
network failure (refused, timed out, closed before a complete ACK) is
:class:`~triage.errors.RISUnavailable` (retry later); an ACK that is not AA/CA or that
acknowledges another message is :class:`RISNegativeAck`, a
:class:`~triage.errors.RISRejected`.
"""

from __future__ import annotations

import socket
import time

from triage.errors import RISRejected, RISUnavailable
from triage.hl7.ack import read_ack
from triage.hl7.mllp import MLLPDecoder, MLLPError, frame
from triage.hl7.parse import control_id_of

MAX_ACK_BYTES = 1024 * 1024
ACCEPT_CODES = frozenset({"AA", "CA"})


class RISNegativeAck(RISRejected):
    """The RIS answered, but not with an acceptance of our message. ``ack`` is its text."""

    def __init__(self, message: str, ack: str, ack_code: str = "") -> None:
        self.ack = ack
        self.ack_code = ack_code
        super().__init__(message)


def decode_text(payload: bytes) -> str:
    """UTF-8, falling back to ISO 8859-1 (which decodes any byte)."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


def send_message(host: str, port: int, message: str, timeout: float) -> str:
    """Send one message (UTF-8, CR separators) and return the ACK text.

    ``timeout`` bounds the connect and the whole wait for the ACK. Raises
    :class:`~triage.errors.RISUnavailable` on any network failure.
    """
    data = frame(message.encode("utf-8"))
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise RISUnavailable(f"cannot connect to RIS {host}:{port}: {exc}") from exc
    with sock:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(data)
            decoder = MLLPDecoder(MAX_ACK_BYTES)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no ACK within the timeout")
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed before a complete ACK")
                frames = decoder.feed(chunk)
                if frames:
                    return decode_text(frames[0])
        except (OSError, MLLPError) as exc:
            raise RISUnavailable(f"RIS {host}:{port}: {exc}") from exc


def check_ack(ack: str, control_id: str) -> str:
    """Return ``ack`` if it accepts the message ``control_id`` (MSA-1 AA or CA, MSA-2 equal);
    raise :class:`RISNegativeAck` otherwise."""
    code, acked_id, detail = read_ack(ack)
    if not code:
        raise RISNegativeAck(f"RIS answered without a readable MSA: {ack[:200]!r}", ack)
    if code not in ACCEPT_CODES:
        why = f": {detail}" if detail else ""
        raise RISNegativeAck(f"RIS answered {code} for {control_id}{why}", ack, code)
    if acked_id != control_id:
        raise RISNegativeAck(
            f"RIS acknowledged {acked_id!r}, but we sent {control_id!r}", ack, code
        )
    return ack


def send_and_check(host: str, port: int, message: str, timeout: float) -> str:
    """:func:`send_message`, then :func:`check_ack` against the message's own MSH-10.

    Returns the ACK text. Raises :class:`~triage.errors.RISUnavailable` (retry later) or
    :class:`RISNegativeAck` (a :class:`~triage.errors.RISRejected`, carrying the ACK text).
    """
    control_id = control_id_of(message)
    if not control_id:
        raise ValueError("the message to send has no MSH-10")
    return check_ack(send_message(host, port, message, timeout), control_id)
