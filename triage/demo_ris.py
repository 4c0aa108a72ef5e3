"""A built-in test RIS for the demo and the latency benchmark: an MLLP server on 127.0.0.1 that
records each message the engine sends (with the time it arrived) and acknowledges it (AA,
MSA-2 = the message's MSH-10).

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


class TestRIS:
    """MLLP server on ``127.0.0.1:port`` (0: a free port) answering AA to every message.

    ``received`` holds every message in arrival order; ``on_message(received)`` is called for
    each, on the connection's thread, before the ACK is written. :meth:`close` stops it and
    its connections."""

    __test__ = False  # not a pytest test class

    def __init__(self, port: int = 0, on_message: Callable[[Received], None] | None = None) -> None:
        self.received: list[Received] = []
        self.on_message = on_message
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="test-ris", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        decoder = MLLPDecoder()
        try:
            with conn:
                while not self._stop.is_set():
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    for payload in decoder.feed(data):
                        msg = Received(time.monotonic(), payload.decode("utf-8", "replace"))
                        with self._lock:
                            self.received.append(msg)
                        if self.on_message is not None:
                            self.on_message(msg)
                        conn.sendall(frame(ack_for(msg.text).encode()))
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=2)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def ack_for(message: str) -> str:
    """An AA ACK for ``message`` (MSA-2 = its MSH-10, version as it came)."""
    msh = message.split("\r")[0].split("|")
    field = lambda i: msh[i] if len(msh) > i else ""  # noqa: E731
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    return (
        f"MSH|^~\\&|TESTRIS|DEMO|{field(2)}|{field(3)}|{stamp}||ACK|A{field(9)}|P|{field(11)}\r"
        f"MSA|AA|{field(9)}\r"
    )
