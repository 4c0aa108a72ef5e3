"""Synchronous MLLP client for sending our ORM/ORU messages to the RIS.

:func:`send_message` uses one connection per message: connect, send one frame, wait for one
framed ACK, close; :class:`MLLPConnection` keeps a connection for several messages. Every
network failure (refused, timed out, closed before a complete ACK) is
:class:`~triage.errors.RISUnavailable` (retry later): :class:`RISNoAck`, its subclass, when the
message was written and no complete ACK came back (the RIS may have stored it: the outbox sends
it again with the same MSH-10), plain ``RISUnavailable`` when it could not be written at all
(connection refused). An ACK that is not AA/CA or that acknowledges another message is
:class:`RISNegativeAck`, a :class:`~triage.errors.RISRejected`, with the RIS's error text.
"""

from __future__ import annotations

import select
import socket
import time
from collections import deque

from triage.errors import RISNegativeAck as RISNegativeAck
from triage.errors import RISNoAck as RISNoAck
from triage.errors import RISUnavailable
from triage.hl7.ack import read_ack
from triage.hl7.header import control_id_of
from triage.hl7.mllp import MLLPDecoder, MLLPError, frame

MAX_ACK_BYTES = 1024 * 1024
ACCEPT_CODES = frozenset({"AA", "CA"})


def decode_text(payload: bytes) -> str:
    """UTF-8, falling back to ISO 8859-1 (which decodes any byte)."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


class MLLPConnection:
    """One MLLP connection for any number of request/ACK exchanges (TCP_NODELAY on).

    ``timeout`` bounds the connect and each wait for an ACK. Every network failure raises
    :class:`~triage.errors.RISUnavailable`; after one, the connection is closed.
    """

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._decoder = MLLPDecoder(MAX_ACK_BYTES)
        self._pending: deque[bytes] = deque()  # replies decoded but not yet returned
        try:
            self._sock: socket.socket | None = socket.create_connection(
                (host, port), timeout=timeout
            )
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise RISUnavailable(f"cannot connect to {host}:{port}: {exc}") from exc

    def __enter__(self) -> MLLPConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pending.clear()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def peer_closed(self) -> bool:
        """True when a kept, idle connection can no longer be used: the peer closed or reset
        it, or sent something nobody asked for (readable while nothing is awaited). Checked
        before a message is written, so that a connection the RIS dropped while idle is
        replaced without the message being written into it."""
        sock = self._sock
        if sock is None:
            return True
        if self._pending:
            return True  # replies nobody waits for: the stream is out of step
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def exchange(self, message: str | bytes) -> str:
        """Send one message (str: UTF-8) and return the text of the next framed reply."""
        self.send(message)
        return self.receive()

    def send(self, *messages: str | bytes) -> None:
        """Send ``messages`` (str: UTF-8), each framed, in one write (a peer may pipeline:
        :meth:`receive` then returns their replies in turn)."""
        sock = self._open()
        data = b"".join(frame(m.encode("utf-8") if isinstance(m, str) else m) for m in messages)
        try:
            sock.settimeout(self.timeout)
            sock.sendall(data)  # from here on, a failure may leave the messages stored
        except OSError as exc:
            self.close()
            raise RISNoAck(f"{self.host}:{self.port}: no ACK: {exc}") from exc

    def receive(self) -> str:
        """The text of the next framed reply. Replies that arrived together in one read are
        kept, in order, for the next calls: none is lost when a peer answers several
        pipelined messages in one write."""
        if self._pending:
            return decode_text(self._pending.popleft())
        sock = self._open()
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no ACK within the timeout")
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed before a complete ACK")
                frames = self._decoder.feed(chunk)
                if frames:
                    self._pending.extend(frames[1:])
                    return decode_text(frames[0])
        except (OSError, MLLPError) as exc:
            self.close()
            raise RISNoAck(f"{self.host}:{self.port}: no ACK: {exc}") from exc

    def _open(self) -> socket.socket:
        if self._sock is None:
            raise RISUnavailable(f"connection to {self.host}:{self.port} is closed")
        return self._sock

    @property
    def is_open(self) -> bool:
        return self._sock is not None


def send_message(host: str, port: int, message: str, timeout: float) -> str:
    """Send one message (UTF-8, CR separators) on a new connection; return the ACK text.

    ``timeout`` bounds the connect and the wait for the ACK. Raises
    :class:`~triage.errors.RISUnavailable` on any network failure.
    """
    with MLLPConnection(host, port, timeout) as conn:
        return conn.exchange(message)


def check_ack(ack: str, control_id: str) -> str:
    """Return ``ack`` if it accepts the message ``control_id`` (MSA-1 AA or CA, MSA-2 equal);
    raise :class:`RISNegativeAck` otherwise."""
    code, acked_id, detail = read_ack(ack)
    if not code:
        raise RISNegativeAck(f"RIS answered without a readable MSA: {ack[:200]!r}", ack)
    if code not in ACCEPT_CODES:
        why = f": {detail}" if detail else ""
        raise RISNegativeAck(f"RIS answered {code} for {control_id}{why}", ack, code, detail)
    if acked_id != control_id:
        raise RISNegativeAck(
            f"RIS acknowledged {acked_id!r}, but we sent {control_id!r}", ack, code, detail
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
