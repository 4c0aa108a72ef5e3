"""A built-in test RIS for the demo and the latency benchmark: an MLLP server on 127.0.0.1 that
records each message the engine sends (with the time it arrived) and acknowledges it (AA,
MSA-2 = the message's MSH-10). Its server part, :class:`LoopbackMLLPServer`, is also what the
test suite's misbehaving RIS is built on.

It is a stand-in for a real RIS on this machine only; it accepts anything framed as MLLP.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from triage.hl7.mllp import MLLPDecoder, frame


@dataclass(frozen=True)
class Received:
    """One message the test RIS received: when (``time.monotonic()``), its text, and its MSH
    fields of interest."""

    at: float
    text: str

    def segment(self, name: str) -> list[str]:
        """The first segment called ``name``, split on ``|`` ([] when absent)."""
        for seg in self.text.split("\r"):
            if seg.startswith(name + "|"):
                return seg.split("|")
        return []

    @property
    def kind(self) -> str:
        """Message type and trigger, e.g. ``ORM^O01``."""
        msh = self.segment("MSH")
        return "^".join(msh[8].split("^")[:2]) if len(msh) > 8 else ""

    @property
    def control_id(self) -> str:
        msh = self.segment("MSH")
        return msh[9] if len(msh) > 9 else ""

    @property
    def order_control(self) -> str:
        """ORC-1 (``XO`` for an order change), "" when there is no ORC."""
        orc = self.segment("ORC")
        return orc[1] if len(orc) > 1 else ""

    @property
    def priority(self) -> str:
        """The priority an order carries in ORC-7.6 ("" when absent)."""
        orc = self.segment("ORC")
        parts = orc[7].split("^") if len(orc) > 7 else []
        return parts[5] if len(parts) > 5 else ""

    @property
    def accession(self) -> str:
        """OBR-18 (placer field 1), where the engine writes the accession number."""
        obr = self.segment("OBR")
        return obr[18] if len(obr) > 18 else ""


class LoopbackMLLPServer:
    """An MLLP server on ``127.0.0.1:port`` (0: a free port), one thread per connection, that
    answers each message with what :meth:`answer` returns (``None``: close the connection
    without answering). :meth:`down` stops listening and drops the connections, :meth:`up`
    listens again on the same port, :meth:`close` stops it for good. ``connections`` counts
    the connections accepted."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.connections = 0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self.up()

    def answer(self, text: str) -> str | None:
        """The reply to one message (without its MLLP frame), or None to hang up."""
        raise NotImplementedError

    def answered(self, text: str, reply: str) -> None:
        """Called once ``reply`` to ``text`` is written to the socket (nothing by default)."""

    def up(self) -> None:
        """Listen (again, on the same port)."""
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, args=(self._stop,), daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop listening and drop every connection: connections are refused until :meth:`up`."""
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=2)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.down()

    def _serve(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                self._conns.add(conn)
            threading.Thread(target=self._handle, args=(conn, stop), daemon=True).start()

    def _handle(self, conn: socket.socket, stop: threading.Event) -> None:
        decoder = MLLPDecoder()
        try:
            with conn:
                while not stop.is_set():
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    for payload in decoder.feed(data):
                        text = payload.decode("utf-8", "replace")
                        reply = self.answer(text)
                        if reply is None:
                            return
                        conn.sendall(frame(reply.encode()))
                        self.answered(text, reply)
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)


class TestRIS(LoopbackMLLPServer):
    """Answers AA to every message. ``received`` holds every message in arrival order;
    ``on_message(received)`` is called for each, on the connection's thread, before the ACK
    is written."""

    __test__ = False  # not a pytest test class

    def __init__(self, port: int = 0, on_message: Callable[[Received], None] | None = None) -> None:
        self.received: list[Received] = []
        self.on_message = on_message
        super().__init__(port)

    def answer(self, text: str) -> str | None:
        msg = Received(time.monotonic(), text)
        with self._lock:
            self.received.append(msg)
        if self.on_message is not None:
            self.on_message(msg)
        return ack_for(msg.text)

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.received)


def ack_for(message: str) -> str:
    """An AA ACK for ``message`` (MSA-2 = its MSH-10, version as it came)."""
    msh = message.split("\r")[0].split("|")
    field = lambda i: msh[i] if len(msh) > i else ""  # noqa: E731
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    return (
        f"MSH|^~\\&|TESTRIS|DEMO|{field(2)}|{field(3)}|{stamp}||ACK|A{field(9)}|P|{field(11)}\r"
        f"MSA|AA|{field(9)}\r"
    )
