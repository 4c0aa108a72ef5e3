"""MLLP client against a tiny loopback MLLP server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from support.net import free_port

from triage.errors import RISRejected, RISUnavailable
from triage.hl7.ack import build_ack
from triage.hl7.client import (
    MLLPConnection,
    RISNegativeAck,
    RISNoAck,
    send_and_check,
    send_message,
)
from triage.hl7.mllp import MLLPDecoder, frame

MESSAGE = "MSH|^~\\&|TRIAGE|TRIAGE|RIS|RIS|20240312||ORM^O01^ORM_O01|OUT0001|P|2.5.1\rPID|1||X"

Reply = Callable[[str], bytes | None]


class TinyServer:
    """Accepts connections and answers each frame with ``reply(text)`` (None: no answer)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.received: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(2)
        dec = MLLPDecoder()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for payload in dec.feed(data):
                    text = payload.decode("utf-8")
                    self.received.append(text)
                    answer = self.reply(text)
                    if answer is None:
                        return  # close without answering
                    conn.sendall(answer)
        except OSError:
            return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[Callable[[Reply], TinyServer]]:
    started: list[TinyServer] = []

    def start(reply: Reply) -> TinyServer:
        s = TinyServer(reply)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


def ack_with(code: str) -> Reply:
    return lambda text: frame(
        build_ack(text, code, hl7_code=None if code == "AA" else 207, text="no").encode()
    )


def test_aa_is_accepted(server: Callable[[Reply], TinyServer]) -> None:
    srv = server(ack_with("AA"))
    ack = send_and_check("127.0.0.1", srv.port, MESSAGE, timeout=5)
    assert "MSA|AA|OUT0001" in ack
    assert srv.received == [MESSAGE]


def test_ack_split_over_several_writes(server: Callable[[Reply], TinyServer]) -> None:
    def reply(text: str) -> bytes:
        data = frame(build_ack(text, "CA").encode())
        return b"junk" + data  # junk before the start block is skipped

    srv = server(reply)
    assert "MSA|CA|OUT0001" in send_and_check("127.0.0.1", srv.port, MESSAGE, timeout=5)


def test_ae_is_rejected_with_ack_text(server: Callable[[Reply], TinyServer]) -> None:
    srv = server(ack_with("AE"))
    with pytest.raises(RISRejected) as info:
        send_and_check("127.0.0.1", srv.port, MESSAGE, timeout=5)
    assert isinstance(info.value, RISNegativeAck)
    assert info.value.ack_code == "AE" and "MSA|AE|OUT0001" in info.value.ack
    assert "no" in str(info.value)


def test_wrong_msa2_is_rejected(server: Callable[[Reply], TinyServer]) -> None:
    srv = server(lambda text: frame(build_ack(text.replace("OUT0001", "OTHER"), "AA").encode()))
    with pytest.raises(RISRejected, match="OTHER"):
        send_and_check("127.0.0.1", srv.port, MESSAGE, timeout=5)


def test_unreadable_ack_is_rejected(server: Callable[[Reply], TinyServer]) -> None:
    srv = server(lambda text: frame(b"hello"))
    with pytest.raises(RISRejected):
        send_and_check("127.0.0.1", srv.port, MESSAGE, timeout=5)


def test_refused_port_is_unavailable() -> None:
    with pytest.raises(RISUnavailable):
        send_and_check("127.0.0.1", free_port(), MESSAGE, timeout=2)


def test_closed_without_ack_is_unavailable(server: Callable[[Reply], TinyServer]) -> None:
    srv = server(lambda text: None)
    with pytest.raises(RISUnavailable):
        send_message("127.0.0.1", srv.port, MESSAGE, timeout=5)


def test_no_ack_in_time_is_unavailable(server: Callable[[Reply], TinyServer]) -> None:
    srv = server(lambda text: b"\x0bMSH|partial")  # never completed
    with pytest.raises(RISUnavailable, match="timed out"):
        send_message("127.0.0.1", srv.port, MESSAGE, timeout=0.5)


def test_connection_reused_for_several_messages(server: Callable[[Reply], TinyServer]) -> None:
    srv = server(ack_with("AA"))
    with MLLPConnection("127.0.0.1", srv.port, timeout=5) as conn:
        for i in range(3):
            msg = MESSAGE.replace("OUT0001", f"OUT000{i}")
            assert f"MSA|AA|OUT000{i}" in conn.exchange(msg)
    assert len(srv.received) == 3


def test_no_ack_after_writing_is_told_apart_from_a_refused_connection(
    server: Callable[[Reply], TinyServer],
) -> None:
    """The outbox charges a message only when it was written and no ACK came (the RIS may
    have stored it); a refused connection charges nothing."""
    srv = server(lambda text: None)
    with pytest.raises(RISNoAck):
        send_message("127.0.0.1", srv.port, MESSAGE, timeout=5)
    assert srv.received == [MESSAGE]
    with pytest.raises(RISUnavailable) as refused:
        send_message("127.0.0.1", free_port(), MESSAGE, timeout=2)
    assert not isinstance(refused.value, RISNoAck)


def test_rejection_carries_the_ris_error_text(server: Callable[[Reply], TinyServer]) -> None:
    srv = server(
        lambda text: frame(build_ack(text, "AE", hl7_code=207, text="Unknown order").encode())
    )
    with pytest.raises(RISNegativeAck) as info:
        send_and_check("127.0.0.1", srv.port, MESSAGE, timeout=5)
    assert info.value.detail == "Unknown order" and info.value.ack_code == "AE"


def test_replies_that_arrive_in_one_read_are_all_returned(
    server: Callable[[Reply], TinyServer],
) -> None:
    """A peer that answers two pipelined messages in one write: both replies reach the
    caller, in order (the first read used to keep the first frame and drop the second)."""
    second = MESSAGE.replace("OUT0001", "OUT0002")

    def both_at_once(text: str) -> bytes:
        if "OUT0001" in text:
            return b""  # held back: answered together with the second
        return frame(build_ack(MESSAGE, "AA").encode()) + frame(build_ack(second, "AA").encode())

    srv = server(both_at_once)
    with MLLPConnection("127.0.0.1", srv.port, timeout=2.0) as conn:
        conn.send(MESSAGE, second)  # two frames in one write
        first_ack, second_ack = conn.receive(), conn.receive()
    assert "|OUT0001" in first_ack.split("\r")[1]
    assert "|OUT0002" in second_ack.split("\r")[1]


def test_exchange_keeps_a_reply_that_came_early(server: Callable[[Reply], TinyServer]) -> None:
    """Two replies in one write to one message: the next exchange gets the second one at
    once instead of waiting for a reply that was already read and dropped."""
    second = MESSAGE.replace("OUT0001", "OUT0002")
    replies = frame(build_ack(MESSAGE, "AA").encode()) + frame(build_ack(second, "AA").encode())
    srv = server(lambda text: replies if "OUT0001" in text else b"")
    with MLLPConnection("127.0.0.1", srv.port, timeout=1.0) as conn:
        assert "|OUT0001" in conn.exchange(MESSAGE).split("\r")[1]
        assert "|OUT0002" in conn.exchange(second).split("\r")[1]
