"""A test RIS: an MLLP server on 127.0.0.1 that records each message and acknowledges it."""

from __future__ import annotations

import socket
import threading

START = b"\x0b"
END = b"\x1c\x0d"


class FakeRIS:
    """Answers ``ack_code`` (AA by default) with MSA-2 echoing MSH-10; ``messages`` holds what
    arrived, in order. ``ack_code = None`` closes the connection without answering."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port: int = self.sock.getsockname()[1]
        self.messages: list[str] = []
        self.ack_code: str | None = "AA"
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(10)
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
                    self.messages.append(msg)
                    if self.ack_code is None:
                        return
                    msh = msg.split("\r")[0].split("|")
                    ack = (
                        f"MSH|^~\\&|RIS|HOSP|{msh[2]}|{msh[3]}|20260101000000||ACK|A{msh[9]}|P|"
                        f"{msh[11]}\rMSA|{self.ack_code}|{msh[9]}\r"
                    )
                    conn.sendall(START + ack.encode() + END)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self.thread.join(timeout=2)
