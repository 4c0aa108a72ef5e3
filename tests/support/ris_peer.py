"""A test RIS: an MLLP server on 127.0.0.1 that records each message and acknowledges it.

It counts what it receives and what it acknowledges, dedupes on MSH-10 as a RIS should
(``applied``: each control id once, in the order first received), and can misbehave: refuse
connections (:meth:`FakeRIS.down` / :meth:`FakeRIS.up`, same port), store a message and lose
its ACK (``lose_ack``), answer AE/AR with an ERR segment (``reject``), or never answer
(``ack_code = None``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

START = b"\x0b"
END = b"\x1c\x0d"


def control_id(msg: str) -> str:
    return msg.split("\r")[0].split("|")[9]


class FakeRIS:
    """Answers ``ack_code`` (AA by default) with MSA-2 echoing MSH-10; ``messages`` holds what
    arrived, in order (resends included). ``ack_code = None`` closes the connection without
    answering.

    - ``lose_ack``: control ids whose next receipt is stored (``messages``, ``applied``) but
      whose ACK is lost: the connection closes without it (once per id).
    - ``reject``: control id -> (MSA-1, error text): answered AE/AR with ERR-3 207 and ERR-8.
    - ``on_message``: called with each message after it is recorded, before the answer.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.messages: list[str] = []
        self.acked: list[str] = []  # control ids answered AA, in order
        self.applied: list[str] = []  # control ids, each once (a RIS deduping on MSH-10)
        self.ack_code: str | None = "AA"
        self.lose_ack: set[str] = set()
        self.reject: dict[str, tuple[str, str]] = {}
        self.on_message: Callable[[str], None] | None = None
        self.connections = 0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stop = False
        self.up()

    def up(self) -> None:
        """Listen (again, on the same port)."""
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def down(self) -> None:
        """Stop listening and drop every connection: connections are refused until :meth:`up`."""
        self._stop = True
        self.sock.close()
        self.thread.join(timeout=2)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with self._lock:
                self.connections += 1
                self._conns.add(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(10)
        try:
            with conn:
                while True:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                    while START in buf and END in buf:
                        start = buf.index(START)
                        end = buf.index(END, start)
                        msg = buf[start + 1 : end].decode("utf-8", "replace")
                        buf = buf[end + 2 :]
                        if not self._answer(conn, msg):
                            return
        finally:
            with self._lock:
                self._conns.discard(conn)

    def _answer(self, conn: socket.socket, msg: str) -> bool:
        """Record ``msg`` and answer it; False: close the connection."""
        cid = control_id(msg)
        with self._lock:
            self.messages.append(msg)
            if cid not in self._applied_set:
                self._applied_set.add(cid)
                self.applied.append(cid)
            lost = cid in self.lose_ack
            self.lose_ack.discard(cid)
        if self.on_message is not None:
            self.on_message(msg)
        if self.ack_code is None or lost:
            return False
        code, text = self.reject.get(cid, (self.ack_code, ""))
        msh = msg.split("\r")[0].split("|")
        ack = (
            f"MSH|^~\\&|RIS|HOSP|{msh[2]}|{msh[3]}|20260101000000||ACK|A{msh[9]}|P|"
            f"{msh[11]}\rMSA|{code}|{msh[9]}"
        )
        if text:
            ack += f"|{text}\rERR|||207^Application internal error^HL70357|E||||{text}"
        try:
            conn.sendall(START + (ack + "\r").encode() + END)
        except OSError:
            return False
        if code == "AA":
            with self._lock:
                self.acked.append(cid)
        return True

    @property
    def _applied_set(self) -> set[str]:
        if not hasattr(self, "_applied_ids"):
            self._applied_ids: set[str] = set()
        return self._applied_ids

    def close(self) -> None:
        self.down()
