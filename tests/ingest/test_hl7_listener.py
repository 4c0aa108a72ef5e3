"""HL7 listener end to end on loopback: our MLLP code, the real `mllp_send`, raw sockets."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import select

from triage.config import Settings
from triage.errors import StoreError
from triage.hl7.ack import read_ack
from triage.hl7.client import MLLPConnection, send_and_check
from triage.hl7.inbound import decode_message
from triage.hl7.mllp import MLLPDecoder, frame
from triage.ingest.hl7_listener import HL7Listener
from triage.ingest.hl7_store import MessageStore
from triage.store.db import Database
from triage.store.models import HL7Message, Order

REPO = Path(__file__).resolve().parent.parent.parent
DATA = REPO / "tests" / "data" / "hl7"
MLLP_SEND = REPO / ".venv" / "bin" / "mllp_send"


def sample(name: str, *, enhanced: bool = False) -> str:
    """A sample message with CR segment separators, as on the wire. Samples that ask for
    enhanced-mode acknowledgements (MSH-15 AL, MSH-16 NE) are turned into original mode unless
    ``enhanced``, so that they are answered AA/AE/AR."""
    text = (DATA / name).read_text(encoding="utf-8").strip("\n").replace("\n", "\r")
    return text if enhanced else text.replace("|||AL|NE||", "|||||||", 1)


class Running:
    """A listener served by an event loop in a background thread."""

    def __init__(self, tmp: Path, **kwargs: Any) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.settings = Settings(
            data_dir=tmp,
            hl7_port=0,
            bind_host="127.0.0.1",
            hl7_max_message_bytes=kwargs.pop("max_bytes", 1024 * 1024),
            hl7_allowed_peers=kwargs.pop("allowed", []),
            hl7_max_connections=kwargs.pop("max_connections", 256),
        )
        self.db = Database(f"sqlite:///{tmp / 'triage.db'}")
        self.db.create_all()
        self.calls: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.listener = HL7Listener(self.settings, self.db, self.calls.append, **kwargs)
        self.host, self.port = self.run(self.listener.start())

    def run(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout=10)

    def close(self) -> None:
        self.run(self.listener.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()
        self.db.dispose()

    def orders(self) -> list[Order]:
        with self.db.session() as s:
            return list(s.exec(select(Order).order_by(Order.id)).all())  # type: ignore[arg-type]

    def messages(self) -> list[HL7Message]:
        with self.db.session() as s:
            return list(s.exec(select(HL7Message).order_by(HL7Message.id)).all())  # type: ignore[arg-type]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(**kwargs: Any) -> Running:
        r = (
            Running(tmp_path / f"l{len(started)}", **kwargs)
            if started
            else Running(tmp_path, **kwargs)
        )
        started.append(r)
        return r

    yield start
    for r in started:
        r.close()


def wait_for_calls(r: Running, n: int) -> list[int]:
    """on_order runs after the ACK is written, so the test may see the ACK first."""
    deadline = time.monotonic() + 5
    while len(r.calls) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return r.calls


def ack_codes_from_threads(send: Callable[[int], list[str]], keys: range) -> list[str]:
    """``send(k)`` for every k at once, one thread (one connection) each; all the codes."""
    out: list[list[str]] = []
    workers = [threading.Thread(target=lambda k=k: out.append(send(k))) for k in keys]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    return [code for codes in out for code in codes]


def raw_exchange(sock: socket.socket, dec: MLLPDecoder, data: bytes) -> str:
    sock.sendall(data)
    sock.settimeout(5)
    while True:
        chunk = sock.recv(65536)
        assert chunk, "listener closed the connection"
        frames = dec.feed(chunk)
        if frames:
            assert len(frames) == 1
            return frames[0].decode("utf-8")


# -- happy path ------------------------------------------------------------------------------


def test_several_messages_on_one_connection_from_our_client(
    listener: Callable[..., Running],
) -> None:
    r = listener()
    assert r.listener.ready
    names = ["orm_nw_v251.hl7", "orm_nw_v231.hl7", "omi_o23.hl7"]
    with MLLPConnection(r.host, r.port, timeout=5) as conn:
        acks = [conn.exchange(sample(n)) for n in names]
    assert [read_ack(a)[:2] for a in acks] == [
        ("AA", "RIS00000101"),
        ("AA", "RIS00000102"),
        ("AA", "RIS00000103"),
    ]
    orders = r.orders()
    assert [(o.accession_number, o.ordered_priority, o.order_control) for o in orders] == [
        ("ACC-HCT-24001", "S", "NW"),
        ("ACC-CTPA-24007", "A", "NW"),
        ("ACC-CTPA-24011", "S", "NW"),
    ]
    head = orders[0]
    assert head.patient_name == "MÜLLER^ANNA^M" and head.patient_id == "MRN100234"
    assert head.study_uid == "1.2.826.0.1.3680043.8.498.10001" and head.modality == "CT"
    assert head.sending_facility == "GENHOSP" and head.patient_class == "E"
    msgs = r.messages()
    assert [m.ack_code for m in msgs] == ["AA", "AA", "AA"]
    assert all(m.processed and m.ack.startswith("MSH|") for m in msgs)
    assert head.message_id == msgs[0].id
    assert msgs[0].ack == acks[0]  # the ACK stored is the ACK sent
    assert msgs[0].message_type == "ORM^O01" and msgs[0].version == "2.5.1"
    assert wait_for_calls(r, 3) == [o.id for o in orders]  # on_order after each ACK


def test_send_and_check_against_listener(listener: Callable[..., Running]) -> None:
    r = listener()
    ack = send_and_check(r.host, r.port, sample("orm_nw_v251.hl7"), timeout=5)
    assert read_ack(ack)[0] == "AA"


def test_real_mllp_send_client(listener: Callable[..., Running], tmp_path: Path) -> None:
    r = listener()
    batch = tmp_path / "batch.hl7"
    batch.write_text(
        "\n".join(
            (DATA / n).read_text(encoding="utf-8")
            for n in ("orm_nw_v251.hl7", "orm_nw_v231.hl7", "omi_o23.hl7")
        ),
        encoding="utf-8",
    )
    proc = subprocess.run(
        [str(MLLP_SEND), "--loose", "-f", str(batch), "-p", str(r.port), r.host],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    acks = [f.decode() for f in MLLPDecoder().feed(proc.stdout)]
    assert [read_ack(a)[:2] for a in acks] == [  # 101 and 103 ask for enhanced mode
        ("CA", "RIS00000101"),
        ("AA", "RIS00000102"),
        ("CA", "RIS00000103"),
    ]
    assert [o.accession_number for o in r.orders()] == [
        "ACC-HCT-24001",
        "ACC-CTPA-24007",
        "ACC-CTPA-24011",
    ]
    assert len({m.peer for m in r.messages()}) == 1  # one connection


def test_mllp_send_framed_file(listener: Callable[..., Running], tmp_path: Path) -> None:
    """mllp_send without --loose reads MLLP-framed messages (its stdin mode is broken in hl7
    0.4.5: it reads str from sys.stdin, so a file is used)."""
    r = listener()
    framed = tmp_path / "framed.mllp"
    framed.write_bytes(
        frame(sample("orm_nw_v251.hl7").encode()) + frame(sample("adt_a01_v251.hl7").encode())
    )
    proc = subprocess.run(
        [str(MLLP_SEND), "-f", str(framed), "-p", str(r.port), r.host],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    acks = [f.decode() for f in MLLPDecoder().feed(proc.stdout)]
    assert [read_ack(a)[:2] for a in acks] == [("AA", "RIS00000101"), ("AA", "ADT00000901")]
    assert [m.ack_code for m in r.messages()] == ["AA", "AA"]


def test_xo_updates_and_ca_cancels(listener: Callable[..., Running]) -> None:
    r = listener()
    with MLLPConnection(r.host, r.port, timeout=5) as conn:
        for name in ("orm_nw_v251.hl7", "orm_nw_v231.hl7", "orm_xo_v251.hl7", "orm_ca_v251.hl7"):
            assert read_ack(conn.exchange(sample(name)))[0] == "AA"
    head, ctpa = r.orders()
    assert (head.order_control, head.ordered_priority, head.order_status) == ("XO", "R", "IP")
    assert head.study_uid == "1.2.826.0.1.3680043.8.498.10001"  # not blanked by the XO
    assert (ctpa.order_control, ctpa.order_status) == ("CA", "CA")
    assert ctpa.ordered_priority == "A"
    assert wait_for_calls(r, 4) == [head.id, ctpa.id, head.id, ctpa.id]


def test_a_cancel_for_an_unknown_order_is_noted_with_the_message(
    listener: Callable[..., Running],
) -> None:
    """A cancel whose accession matches no order (a RIS that leaves OBR-18 out of its cancels
    gets the fallback OBR-3 read): answered AA (an AE would stop many RIS queues), but the
    message says nothing was cancelled, so the integration engineer can see it."""
    r = listener()
    with MLLPConnection(r.host, r.port, timeout=5) as conn:
        assert read_ack(conn.exchange(sample("orm_ca_v251.hl7")))[0] == "AA"
    (msg,) = r.messages()
    assert "for an order not known here" in msg.error and "nothing was cancelled" in msg.error
    with MLLPConnection(r.host, r.port, timeout=5) as conn:
        for name in ("orm_nw_v231.hl7", "orm_ca_v251.hl7"):
            assert read_ack(conn.exchange(sample(name)))[0] == "AA"
    known = r.messages()[-1]
    assert "not known here" not in known.error  # the order is known now: cancelled


def test_only_allowed_addresses_may_send(listener: Callable[..., Running]) -> None:
    """hl7_allowed_peers: any host that reached the port could create and change orders (and
    send reports that become feedback) - found by a security audit. A connection from
    elsewhere is closed before anything is read; nothing is stored."""
    refused = listener(allowed=["10.9.9.9", "192.0.2.0/24"])
    with socket.create_connection((refused.host, refused.port), timeout=5) as sock:
        sock.sendall(frame(sample("orm_nw_v251.hl7").encode()))
        sock.settimeout(5)
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            data = b""
        assert data == b""  # closed, no ACK
    assert refused.messages() == [] and refused.orders() == []
    allowed = listener(allowed=["127.0.0.0/8"])
    ack = send_and_check(allowed.host, allowed.port, sample("orm_nw_v251.hl7"), timeout=5)
    assert read_ack(ack)[0] == "AA"


def test_non_order_message_is_acknowledged_not_applied(listener: Callable[..., Running]) -> None:
    r = listener()
    ack = send_and_check(r.host, r.port, sample("adt_a01_v251.hl7"), timeout=5)
    assert "ACK^A01^ACK" in ack
    assert r.orders() == [] and r.calls == []
    (msg,) = r.messages()
    assert (msg.ack_code, msg.message_type) == ("AA", "ADT^A01")


def test_an_acknowledgment_sent_to_us_is_stored_not_answered(
    listener: Callable[..., Running],
) -> None:
    """An ACK arriving on our port is kept and never acknowledged: the next message on the
    same connection gets the only answer, and it is that message's."""
    r = listener()
    ack_in = (
        "MSH|^~\\&|RIS|HOSP|TRIAGE|TRIAGE|20261207120000||ACK^O01^ACK|RISACK1|P|2.5.1\r"
        "MSA|AA|TRIAGE000001"
    )
    with socket.create_connection((r.host, r.port), timeout=5) as sock:
        dec = MLLPDecoder()
        sock.sendall(frame(ack_in.encode()) + frame(sample("orm_nw_v251.hl7").encode()))
        answer = raw_exchange(sock, dec, b"")
        assert read_ack(answer)[:2] == ("AA", "RIS00000101")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # nothing else comes
    kinds = sorted(m.message_type for m in r.messages())
    assert kinds == ["ACK^O01", "ORM^O01"]


# -- errors ----------------------------------------------------------------------------------


def test_garbage_gets_ar_and_listener_keeps_serving(listener: Callable[..., Running]) -> None:
    r = listener()
    garbage = (DATA / "garbage.hl7").read_bytes()
    with socket.create_connection((r.host, r.port), timeout=5) as sock:
        dec = MLLPDecoder()
        ack = raw_exchange(sock, dec, frame(garbage))
        assert read_ack(ack)[:2] == ("AR", "")
        assert "ERR|" in ack
        # same connection still served
        ack2 = raw_exchange(sock, dec, frame(sample("orm_nw_v251.hl7").encode()))
        assert read_ack(ack2)[:2] == ("AA", "RIS00000101")
    # and a new connection too
    assert read_ack(send_and_check(r.host, r.port, sample("omi_o23.hl7"), timeout=5))[0] == "AA"
    codes = [m.ack_code for m in r.messages()]
    assert codes == ["AR", "AA", "AA"]
    assert r.messages()[0].error and r.messages()[0].raw.startswith("GET /")


@pytest.mark.parametrize(
    ("mutate", "code", "hl7_code"),
    [
        (lambda m: m.replace("|P|2.5.1|", "|P|2.1|", 1), "AE", "203"),
        (lambda m: m.replace("ORM^O01^ORM_O01", "ORM^O02", 1), "AE", "201"),
        (lambda m: m.replace("ORC|NW|", "ORC||", 1), "AE", "101"),
        (lambda m: m.replace("MSH|^~\\&|", "MSH|^^\\&|", 1), "AR", "102"),
    ],
)
def test_bad_messages_get_ae_or_ar_with_err(
    listener: Callable[..., Running], mutate: Callable[[str], str], code: str, hl7_code: str
) -> None:
    r = listener()
    with MLLPConnection(r.host, r.port, timeout=5) as conn:
        ack = conn.exchange(mutate(sample("orm_nw_v251.hl7")))
        assert read_ack(ack)[:2] == (code, "RIS00000101")
        err = next(ln for ln in ack.split("\r") if ln.startswith("ERR|"))
        assert err.split("|")[3].startswith(hl7_code + "^")
        assert read_ack(conn.exchange(sample("orm_nw_v231.hl7")))[0] == "AA"
    assert [o.accession_number for o in r.orders()] == ["ACC-CTPA-24007"]
    assert [m.ack_code for m in r.messages()] == [code, "AA"]


def test_order_without_accession_is_ce_101_in_enhanced_mode(
    listener: Callable[..., Running], shared_data: Path
) -> None:
    r = listener()
    text_ = (shared_data / "hl7" / "hapi-hl7v2" / "messages.txt").read_text(encoding="utf-8")
    start = text_.index("MSH|^~\\&|DMCOE ||RADIS1||199405031738")
    nw = text_[start : text_.index("\n\n", start)].replace("\n", "\r")
    ack = send_message_ack(r, nw)
    # a real 1994 message asking for enhanced mode (MSH-15 AL): the commit ACK carries the error
    assert read_ack(ack)[:2] == ("CE", "940503173858000")
    assert "101^Required field missing" in ack
    assert r.orders() == []


def send_message_ack(r: Running, message: str) -> str:
    with MLLPConnection(r.host, r.port, timeout=5) as conn:
        return conn.exchange(message)


def test_oversize_frame_gets_ar_and_connection_closed(listener: Callable[..., Running]) -> None:
    r = listener(max_bytes=2048)
    big = sample("orm_nw_v251.hl7") + "\rNTE|1||" + "x" * 5000
    with socket.create_connection((r.host, r.port), timeout=5) as sock:
        dec = MLLPDecoder()
        ack = raw_exchange(sock, dec, frame(big.encode()))
        assert read_ack(ack)[:2] == ("AR", "RIS00000101")  # MSH-10 read from the head
        sock.settimeout(5)
        assert sock.recv(100) == b""  # closed
    assert r.orders() == []
    assert read_ack(send_message_ack(r, sample("orm_nw_v251.hl7")))[0] == "AA"


@pytest.mark.parametrize("others", [0, 1])
def test_frames_before_an_oversize_one_are_answered_first_in_order(
    listener: Callable[..., Running], others: int
) -> None:
    """Two orders and an oversized frame in one write: AA, AA, then AR, then the connection
    closes - alone and with another connection open (the two orders then go through the
    queue and the writer thread, and their ACKs come after their commit)."""
    from triage.synth.orders import order_message

    r = listener(max_bytes=4096)
    idle = [socket.create_connection((r.host, r.port), timeout=10) for _ in range(others)]
    try:
        time.sleep(0.1)
        small = [order_message(accession=f"OV{others}{i}", patient_id="PV") for i in range(2)]
        big = sample("orm_nw_v251.hl7") + "\rNTE|1||" + "x" * 8000
        with socket.create_connection((r.host, r.port), timeout=10) as sock:
            sock.sendall(b"".join(frame(m.encode()) for m in [*small, big]))
            acks = _read_acks(sock, 3)
            sock.settimeout(5)
            assert sock.recv(100) == b""  # then closed
        ids = [m.split("\r", 1)[0].split("|")[9] for m in small]
        assert [read_ack(a.decode())[:2] for a in acks] == [
            ("AA", ids[0]),
            ("AA", ids[1]),
            ("AR", "RIS00000101"),
        ]
    finally:
        for s in idle:
            s.close()
    assert len(r.orders()) == 2


def test_idle_peer_is_dropped(listener: Callable[..., Running]) -> None:
    r = listener(idle_timeout=0.3)
    with socket.create_connection((r.host, r.port), timeout=5) as sock:
        sock.sendall(b"\x0bMSH|^~\\&|partial")
        t0 = time.monotonic()
        sock.settimeout(5)
        assert sock.recv(100) == b""
        assert time.monotonic() - t0 < 4


def test_database_failure_answers_ae_207_and_applies_nothing(
    listener: Callable[..., Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = listener()
    calls = {"n": 0}
    real = MessageStore.upsert_order

    def failing(conn: Any, parsed: Any, message_id: int, **kw: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise StoreError("disk full (simulated)")
        return real(conn, parsed, message_id, **kw)

    monkeypatch.setattr(MessageStore, "upsert_order", staticmethod(failing))
    two = (
        sample("orm_nw_v251.hl7")
        + "\rORC|NW|PLC-2^EPR|FIL-2^RIS||SC\rOBR|1|PLC-2^EPR|FIL-2^RIS|CTC^CT C-spine^L|S"
    )
    ack = send_message_ack(r, two)
    assert read_ack(ack)[:2] == ("AE", "RIS00000101")
    assert "207^Application internal error" in ack
    assert r.orders() == []  # the first order of the message was rolled back too
    (msg,) = r.messages()
    assert msg.ack_code == "AE" and "disk full" in msg.error and msg.ack == ack
    assert r.calls == []


def test_missing_table_answers_ae_207(listener: Callable[..., Running]) -> None:
    r = listener()
    with r.db.engine.begin() as conn:
        conn.execute(text('DROP TABLE "order"'))
    ack = send_message_ack(r, sample("orm_nw_v251.hl7"))
    assert read_ack(ack)[:2] == ("AE", "RIS00000101")
    assert [m.ack_code for m in r.messages()] == ["AE"]
    assert read_ack(send_message_ack(r, sample("adt_a01_v251.hl7")))[0] == "AA"  # still serving


def test_stop_closes_listener(listener: Callable[..., Running]) -> None:
    r = listener()
    sock = socket.create_connection((r.host, r.port), timeout=5)
    ack = raw_exchange(sock, MLLPDecoder(), frame(sample("adt_a01_v251.hl7").encode()))
    assert read_ack(ack)[0] == "AA"  # the connection is open and being served
    r.run(r.listener.stop())
    assert not r.listener.ready
    sock.settimeout(5)
    assert sock.recv(10) == b""
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection((r.host, r.port), timeout=2).close()


# -- character sets --------------------------------------------------------------------------


def test_charset_from_msh18() -> None:
    latin = sample("omi_o23.hl7").replace("NGUYEN^THI^LAN", "NGUYỄN^THI").encode("utf-8")
    # declared 8859/1 but the bytes are UTF-8 (MSH-18 lies): read as UTF-8
    text, codec = decode_message(latin)
    assert codec == "utf-8" and "NGUYỄN^THI" in text
    utf8 = sample("orm_nw_v251.hl7").encode("utf-8")  # UNICODE UTF-8
    assert decode_message(utf8) == (sample("orm_nw_v251.hl7"), "utf-8")
    no_charset = sample("orm_nw_v231.hl7").replace("O'NEILL", "ÓNEILL")
    assert decode_message(no_charset.encode("latin-1")) == (no_charset, "latin-1")  # fallback
    assert decode_message(no_charset.encode("utf-8")) == (no_charset, "utf-8")
    ascii_declared = sample("orm_nw_v231.hl7").replace("|P|2.3.1", "|P|2.3.1||||||ASCII")
    assert decode_message(ascii_declared.encode())[1] == "ascii"


def test_latin1_message_stored_correctly(listener: Callable[..., Running]) -> None:
    r = listener()
    msg = sample("omi_o23.hl7").replace("NGUYEN^THI^LAN", "GONÇALVES^JOSÉ")
    with socket.create_connection((r.host, r.port), timeout=5) as sock:
        ack = raw_exchange(sock, MLLPDecoder(), frame(msg.encode("latin-1")))
    assert read_ack(ack)[0] == "AA"
    assert r.orders()[0].patient_name == "GONÇALVES^JOSÉ"


def test_a_full_listener_closes_the_connection_idle_longest_for_a_new_one(
    listener: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    """hl7_max_connections idle connections: a RIS connecting then takes the place of the
    one idle longest (20,000 idle connections exhausted the engine's file descriptors -
    every listener down - in a hostile-peer audit); while none has been idle 2 s, the new
    connection is closed instead, and a connection with a frame half read is never chosen."""
    from triage.ingest.hl7_listener import IDLE_EVICT_SECONDS

    r = listener(max_connections=3)
    half = socket.create_connection((r.host, r.port), timeout=5)
    half.sendall(b"\x0bMSH|^~\\&|")  # a frame begun, not ended
    time.sleep(0.1)
    idle = [socket.create_connection((r.host, r.port), timeout=5) for _ in range(2)]
    try:
        deadline = time.monotonic() + 5
        while len(r.listener._connections) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        # none idle long enough yet: the newcomer is closed at once
        with socket.create_connection((r.host, r.port), timeout=5) as early:
            assert early.recv(1) == b""
        time.sleep(IDLE_EVICT_SECONDS + 0.2)
        ack = send_message_ack(r, sample("orm_nw_v251.hl7"))
        assert read_ack(ack)[0] == "AA"
        assert idle[0].recv(1) == b""  # the first idle one gave its place
        assert "HL7 listener full" in caplog.text
        half.settimeout(0.3)
        with pytest.raises(TimeoutError):
            half.recv(1)  # still open: its frame is half read
    finally:
        for c in (half, *idle):
            c.close()


# -- resends, acknowledgment modes, more message kinds ---------------------------------------


def test_resend_gets_the_same_ack_and_is_not_applied_twice(
    listener: Callable[..., Running],
) -> None:
    r = listener()
    with MLLPConnection(r.host, r.port, timeout=5) as conn:
        first = conn.exchange(sample("orm_nw_v251.hl7"))
        again = conn.exchange(sample("orm_nw_v251.hl7"))
        lf = conn.exchange(sample("orm_nw_v251.hl7").replace("\r", "\n"))  # same content
    assert first == again == lf  # the very same ACK, MSH-10 included
    assert [m.ack_code for m in r.messages()] == ["AA"]
    assert len(r.orders()) == 1
    assert wait_for_calls(r, 1) == [r.orders()[0].id]
    time.sleep(0.1)
    assert len(r.calls) == 1
    # same MSH-10 from the same sender but another content: a new message
    changed = sample("orm_nw_v251.hl7").replace("ACC-HCT-24001", "ACC-HCT-24002")
    ack = send_message_ack(r, changed)
    assert read_ack(ack)[:2] == ("AA", "RIS00000101") and ack != first
    msgs = r.messages()
    assert len(msgs) == 2 and "reused with different content" in msgs[1].error
    # the second message under the reused MSH-10, resent: its own ACK again, not applied
    # again (only the first message under an MSH-10 was recognised before)
    assert send_message_ack(r, changed) == ack
    assert len(r.messages()) == 2 and len(r.orders()) == 2
    # same MSH-10 and content from another facility: another message too
    other = sample("orm_nw_v251.hl7").replace("|RIS|GENHOSP|", "|RIS|OTHERHOSP|", 1)
    assert read_ack(send_message_ack(r, other))[0] == "AA"
    assert len(r.messages()) == 3


def test_enhanced_mode_commit_ack_and_no_ack(listener: Callable[..., Running]) -> None:
    r = listener()
    silent = sample("orm_nw_v231.hl7").replace("|P|2.3.1", "|P|2.3.1|||NE|NE")
    with socket.create_connection((r.host, r.port), timeout=5) as sock:
        dec = MLLPDecoder()
        # MSH-15/16 NE: no answer at all; the next message is answered normally
        sock.sendall(frame(silent.encode()))
        ack = raw_exchange(sock, dec, frame(sample("orm_nw_v251.hl7", enhanced=True).encode()))
        assert read_ack(ack)[:2] == ("CA", "RIS00000101")
    msgs = r.messages()
    assert (msgs[0].control_id, msgs[0].ack_code, msgs[0].ack) == ("RIS00000102", "CA", "")
    assert msgs[1].ack == ack and msgs[1].ack_code == "CA"
    assert len(r.orders()) == 2


def test_adt_a08_cm_and_dc(listener: Callable[..., Running]) -> None:
    r = listener()
    names = [
        "orm_nw_v251.hl7",
        "orm_nw_v23.hl7",
        "orm_sc_cm_v251.hl7",
        "orm_dc_v23.hl7",
        "adt_a08_v251.hl7",  # last: an order message carries PID-5 and updates the name too
    ]
    with MLLPConnection(r.host, r.port, timeout=5) as conn:
        assert [read_ack(conn.exchange(sample(n)))[0] for n in names] == ["AA"] * 5
    head, xr = r.orders()
    assert head.patient_name == "MUELLER-SMITH^ANNA^MARIA"  # ADT^A08
    assert (head.order_control, head.order_status) == ("SC", "CM")  # exam completed
    assert head.ordered_priority == "S" and head.study_uid  # kept
    assert (xr.order_control, xr.order_status, xr.ordered_priority) == ("DC", "DC", "R")
    assert r.messages()[4].message_type == "ADT^A08"


def test_two_frames_in_one_write_and_a_10mb_obx(listener: Callable[..., Running]) -> None:
    r = listener(max_bytes=16 * 1024 * 1024)
    obx = "OBX|1|ED|PDF^Report^L||" + "A" * (10 * 1024 * 1024)
    big = sample("adt_a01_v251.hl7").replace("ADT00000901", "BIG0001") + "\r" + obx
    with socket.create_connection((r.host, r.port), timeout=10) as sock:
        dec = MLLPDecoder()
        sock.sendall(
            frame(sample("orm_nw_v231.hl7").encode()) + frame(sample("orm_xo_v251.hl7").encode())
        )
        sock.settimeout(10)
        acks: list[bytes] = []
        while len(acks) < 2:
            acks += dec.feed(sock.recv(65536))
        assert [read_ack(a.decode())[:2] for a in acks] == [
            ("AA", "RIS00000102"),
            ("AA", "RIS00000104"),
        ]
        ack = raw_exchange(sock, dec, frame(big.encode()))
        assert read_ack(ack)[:2] == ("AA", "BIG0001")
    assert len(r.messages()[-1].raw) > 10 * 1024 * 1024


def _read_acks(sock: socket.socket, n: int, timeout: float = 20) -> list[bytes]:
    dec = MLLPDecoder()
    acks: list[bytes] = []
    sock.settimeout(timeout)
    while len(acks) < n:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(acks)} of {n} ACKs"
        acks += dec.feed(chunk)
    return acks


@pytest.mark.parametrize("others", [0, 1])
def test_a_peer_that_half_closes_after_sending_still_gets_every_ack(
    listener: Callable[..., Running], others: int
) -> None:
    """A sender that writes its frames and shuts down its side at once (``shutdown(SHUT_WR)``)
    gets all its ACKs, in order, then the connection closes - alone (stored in the listener's
    loop) and with another connection open (through the queue and the writer thread)."""
    from triage.synth.orders import order_message

    r = listener()
    idle = [socket.create_connection((r.host, r.port), timeout=10) for _ in range(others)]
    try:
        time.sleep(0.1)  # the other connection is registered
        msgs = [order_message(accession=f"H{others}-{i}", patient_id="PH") for i in range(40)]
        with socket.create_connection((r.host, r.port), timeout=10) as sock:
            sock.sendall(b"".join(frame(m.encode()) for m in msgs))
            sock.shutdown(socket.SHUT_WR)
            acks = _read_acks(sock, len(msgs))
            sock.settimeout(5)
            assert sock.recv(65536) == b""  # then closed by the listener
        sent_ids = [m.split("\r", 1)[0].split("|")[9] for m in msgs]
        assert [read_ack(a.decode())[:2] for a in acks] == [("AA", c) for c in sent_ids]
    finally:
        for s in idle:
            s.close()
    assert len(r.orders()) == 40


def test_a_peer_that_does_not_read_its_acks_is_paused_not_buffered(
    listener: Callable[..., Running],
) -> None:
    """A peer that sends thousands of frames and reads none of the ACKs: the listener stops
    reading it once the ACKs it cannot send pile up (its frames wait in the peer's socket,
    not in our memory), serves other connections meanwhile, and answers every frame, in
    order, once the peer reads."""
    from triage.synth.orders import order_message

    r = listener()
    n = 3000
    # long control ids make long ACKs (2 KB; 6 MB in all): more than the kernel's socket
    # buffers (tcp_wmem 4 MB at most) and the transport's own can hold
    msgs = [
        order_message(accession=f"Q{i}", patient_id="PQ", control_id=f"Q{i:05d}" + "X" * 2000)
        for i in range(n)
    ]
    data = b"".join(frame(m.encode()) for m in msgs)
    with socket.create_connection((r.host, r.port), timeout=10) as sock:
        sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
        sender.start()
        stored, deadline = -1, time.monotonic() + 20
        while time.monotonic() < deadline:  # until the count stops growing
            time.sleep(0.5)
            now = len(r.messages())
            if now == stored:
                break
            stored = now
        assert 0 < stored < n  # reading stopped: the rest waits on the peer's side
        with MLLPConnection(r.host, r.port, timeout=10) as other:  # still served
            other_order = order_message(accession="OTHER1", patient_id="PO")
            assert read_ack(other.exchange(other_order))[0] == "AA"
        acks = _read_acks(sock, n, timeout=60)
        sender.join(30)
    assert [read_ack(a.decode())[1] for a in acks] == [
        m.split("\r", 1)[0].split("|")[9] for m in msgs
    ]
    assert len(r.orders()) == n + 1


def test_a_peer_sending_far_ahead_of_its_acks_waits_in_its_own_socket(
    listener: Callable[..., Running],
) -> None:
    """3,000 frames in one go (ACKs read as they come), another connection open so that they
    go through the queue, commits slower than the peer sends: the listener holds at most
    MAX_UNANSWERED frames of the connection read and not answered (plus what a read brings)
    instead of reading them all into memory; every frame is answered, in order."""
    from triage.ingest import hl7_listener
    from triage.synth.orders import order_message

    r = listener()
    most = [0]
    submit = r.listener._submit

    def counting(payload: bytes, conn: Any) -> None:
        submit(payload, conn)
        most[0] = max(most[0], len(r.listener._queue))

    r.listener._submit = counting  # type: ignore[method-assign]
    store_batch = r.listener.store.store_batch

    def slow_disk(*args: Any) -> Any:  # commits slower than the peer sends
        time.sleep(0.05)
        return store_batch(*args)

    r.listener.store.store_batch = slow_disk  # type: ignore[method-assign]
    n = 3000
    msgs = [order_message(accession=f"F{i}", patient_id="PF") for i in range(n)]
    with socket.create_connection((r.host, r.port), timeout=10) as other:
        time.sleep(0.1)
        with socket.create_connection((r.host, r.port), timeout=10) as sock:
            sender = threading.Thread(
                target=sock.sendall, args=(b"".join(frame(m.encode()) for m in msgs),)
            )
            sender.start()
            acks = _read_acks(sock, n, timeout=60)
            sender.join(30)
        other.close()
    assert [read_ack(a.decode())[1] for a in acks] == [
        m.split("\r", 1)[0].split("|")[9] for m in msgs
    ]
    # past the limit, reading stops after the read that crossed it: at most what one read
    # brings (asyncio's transports read up to 256 KiB at a time when the peer has sent that
    # much; with a busy machine it has)
    read_size = getattr(asyncio.selector_events._SelectorTransport, "max_size", 256 * 1024)
    one_read = read_size // min(len(m) for m in msgs) + 1
    assert most[0] <= hl7_listener.MAX_UNANSWERED + one_read < n, most[0]


def test_eight_connections_group_commit(listener: Callable[..., Running]) -> None:
    from triage.synth.orders import order_message

    r = listener()

    def send(k: int) -> list[str]:
        with MLLPConnection(r.host, r.port, timeout=10) as conn:
            return [
                read_ack(conn.exchange(order_message(accession=f"G{k}-{i}", patient_id=f"P{k}")))[0]
                for i in range(25)
            ]

    assert sorted(ack_codes_from_threads(send, range(8))) == ["AA"] * 200
    assert len(r.orders()) == 200 and len(r.messages()) == 200
    assert len(wait_for_calls(r, 200)) == 200


def test_on_orders_gets_every_order_once_in_order_in_batches(
    listener: Callable[..., Running],
) -> None:
    """Given on_orders, the listener hands over the ids of the orders acknowledged in the same
    few milliseconds in one call: all of them, once, in the order of their ACKs."""
    from triage.synth.orders import order_message

    batches: list[list[int]] = []
    r = listener(on_orders=batches.append)
    msgs = [order_message(accession=f"B{i}", patient_id="P1") for i in range(20)]
    with socket.create_connection((r.host, r.port), timeout=10) as sock:
        dec = MLLPDecoder()
        sock.sendall(b"".join(frame(m.encode()) for m in msgs))
        sock.settimeout(10)
        acks: list[bytes] = []
        while len(acks) < 20:
            acks += dec.feed(sock.recv(65536))
        for m in msgs[:3]:  # a resend applies nothing: no id
            raw_exchange(sock, dec, frame(m.encode()))
    deadline = time.monotonic() + 5
    while sum(map(len, batches)) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    ids = [o.id for o in r.orders()]
    assert [i for b in batches for i in b] == ids and len(ids) == 20
    assert len(batches) < 20 and all(batches)
    assert r.calls == ids  # on_order, given too, still runs for each


def test_group_commit_waits_for_peers_coming_back_but_not_for_silent_ones(
    listener: Callable[..., Running],
) -> None:
    """With several connections, a commit waits (briefly) for the peers the last one
    acknowledged: one that goes silent with its connection open, and one that hangs up,
    keep nobody waiting; every message of the busy peers is answered, in order."""
    from triage.synth.orders import order_message

    r = listener()
    seen: list[int] = []
    real = r.listener.store.store_batch  # every transaction, alone or through the queue

    def counted(evaluations: Any, peers: Any) -> Any:
        seen.append(len(evaluations))
        return real(evaluations, peers)

    r.listener.store.store_batch = counted  # type: ignore[method-assign]
    silent = socket.create_connection((r.host, r.port), timeout=10)
    leaving = socket.create_connection((r.host, r.port), timeout=10)
    try:
        for k, sock in enumerate((silent, leaving)):
            ack = raw_exchange(
                sock,
                MLLPDecoder(),
                frame(order_message(accession=f"Q{k}", patient_id="P").encode()),
            )
            assert read_ack(ack)[0] == "AA"
        leaving.close()

        def busy(k: int) -> list[str]:
            with MLLPConnection(r.host, r.port, timeout=10) as conn:
                return [
                    read_ack(conn.exchange(order_message(accession=f"W{k}-{i}", patient_id="P")))[1]
                    for i in range(30)
                ]

        out: dict[int, list[str]] = {}
        workers = [threading.Thread(target=lambda k=k: out.update({k: busy(k)})) for k in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
    finally:
        silent.close()
    assert out == {k: [f"ORMW{k}-{i}" for i in range(30)] for k in range(4)}
    assert len(r.orders()) == 122
    assert sum(seen) == 122


def test_one_transaction_at_a_time_alone_or_with_others(listener: Callable[..., Running]) -> None:
    """Alone, a connection's messages are stored in the listener's loop; with others open,
    through the queue, in the loop or the writer thread. Never two transactions at once,
    whatever opens or closes in between."""
    from triage.synth.orders import order_message

    r = listener()
    real = r.listener.store.store_batch  # every transaction, alone or through the queue
    lock = threading.Lock()
    state = {"inside": 0, "most": 0}
    threads: set[str] = set()

    def watched(evaluations: Any, peers: Any) -> Any:
        with lock:
            state["inside"] += 1
            state["most"] = max(state["most"], state["inside"])
            threads.add(threading.current_thread().name.split("_")[0])
        try:
            time.sleep(0.002)  # widen the window two transactions would overlap in
            return real(evaluations, peers)
        finally:
            with lock:
                state["inside"] -= 1

    r.listener.store.store_batch = watched  # type: ignore[method-assign]

    def burst(k: int) -> list[str]:
        """Five orders in one write, then five more one by one."""
        msgs = [order_message(accession=f"T{k}-{i}", patient_id=f"P{k}") for i in range(10)]
        with socket.create_connection((r.host, r.port), timeout=10) as sock:
            dec = MLLPDecoder()
            sock.sendall(b"".join(frame(m.encode()) for m in msgs[:5]))
            sock.settimeout(10)
            acks: list[bytes] = []
            while len(acks) < 5:
                acks += dec.feed(sock.recv(65536))
            for m in msgs[5:]:
                acks.append(raw_exchange(sock, dec, frame(m.encode())).encode())
        return [read_ack(a.decode())[0] for a in acks]

    assert burst(0) == ["AA"] * 10  # alone
    # others open: batches from every connection in the loop, the rest in the writer thread
    assert sorted(ack_codes_from_threads(burst, range(1, 7))) == ["AA"] * 60
    with socket.create_connection((r.host, r.port), timeout=10):  # silent: no batch has all
        time.sleep(0.1)
        assert sorted(ack_codes_from_threads(burst, range(7, 13))) == ["AA"] * 60
    assert len(r.orders()) == 130 and len(r.messages()) == 130
    assert state["most"] == 1
    assert threads == {"hl7-listener", "hl7-writer"}


def test_a_batch_from_every_open_connection_is_stored_in_the_loop(
    listener: Callable[..., Running],
) -> None:
    """Peers that wait for each ACK: a batch holding a frame of every open connection is
    stored in the listener's own loop (nothing can arrive meanwhile; no hand-over to the
    writer thread and back), any other batch in the writer thread. With one more connection
    open and silent, no batch holds everyone: all go to the writer thread."""
    from triage.synth.orders import order_message

    r = listener()
    seen: list[tuple[str, int, int]] = []  # thread, peers in the batch, connections open
    real = r.listener.store.store_batch

    def watched(evaluations: Any, peers: Any) -> Any:
        thread = threading.current_thread().name.split("_")[0]
        seen.append((thread, len(set(peers)), len(r.listener._connections)))
        return real(evaluations, peers)

    r.listener.store.store_batch = watched  # type: ignore[method-assign]

    def busy(k: int, tag: str) -> list[str]:
        with MLLPConnection(r.host, r.port, timeout=10) as conn:
            return [
                read_ack(conn.exchange(order_message(accession=f"{tag}{k}-{i}", patient_id="P")))[0]
                for i in range(40)
            ]

    assert ack_codes_from_threads(lambda k: busy(k, "E"), range(2)) == ["AA"] * 80
    in_loop = [s for s in seen if s[0] == "hl7-listener" and s[2] > 1]
    assert in_loop and all(peers == open_ for _, peers, open_ in in_loop)
    seen.clear()
    with socket.create_connection((r.host, r.port), timeout=10):  # open, never sends
        time.sleep(0.1)
        assert ack_codes_from_threads(lambda k: busy(k, "F"), range(2)) == ["AA"] * 80
    assert seen and {s[0] for s in seen} == {"hl7-writer"}
    assert len(r.orders()) == 160


@pytest.mark.parametrize(
    ("name", "code", "hl7_code"),
    [
        ("orm_nw_v23.hl7", "AA", ""),
        ("adt_a08_v251.hl7", "AA", ""),
        ("bad_msh12.hl7", "AE", "203"),
        ("no_msh10.hl7", "AE", "101"),
        ("latin1_declared_utf8.hl7", "AA", ""),
    ],
)
def test_mllp_send_lf_files(
    listener: Callable[..., Running], tmp_path: Path, name: str, code: str, hl7_code: str
) -> None:
    """The files as they are (LF separators, one is Latin-1 bytes declared UTF-8), sent by the
    hl7 package's mllp_send."""
    r = listener()
    proc = subprocess.run(
        [str(MLLP_SEND), "--loose", "-f", str(DATA / name), "-p", str(r.port), r.host],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    (ack,) = [f.decode("latin-1") for f in MLLPDecoder().feed(proc.stdout)]
    assert read_ack(ack)[0] == code
    if hl7_code:
        assert f"|{hl7_code}^" in ack
    (msg,) = r.messages()
    assert msg.ack_code == code
    if name.startswith("latin1"):
        assert r.orders()[0].patient_name == "GONÇALVES^JOSÉ"
        assert "does not fit" in msg.error


def test_replay_applies_after_a_mapping_fix(
    listener: Callable[..., Running], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from triage.cli import main

    r = listener()
    # accession only in OBR-19 and no filler number: AE 101 with the default mapping
    odd = (
        "MSH|^~\\&|ODD|ODDHOSP|TRIAGE|GENHOSP|20240312090000||ORM^O01|ODD1|P|2.4\r"
        "PID|1||ODD7^^^ODDHOSP^MR||ROE^RITA\rORC|NW|ODP-1\r"
        "OBR|1|ODP-1||CTHEAD^CT head^L|S||||||||||||||ODDACC-1"
    )
    assert read_ack(send_message_ack(r, odd))[:2] == ("AE", "ODD1")
    assert read_ack(send_message_ack(r, sample("orm_nw_v231.hl7")))[0] == "AA"
    mapping = tmp_path / "map.yaml"
    mapping.write_text(
        "version: 1\nsenders:\n  - name: odd\n    match: {sending_application: ODD}\n"
        "    fields:\n      accession_number: [OBR-19.1]\n"
    )
    args = ["hl7", "replay", "--all", "--data-dir", str(tmp_path), "--mapping", str(mapping)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "orders" in out and "applied" in out
    orders = {o.accession_number: o for o in r.orders()}
    assert set(orders) == {"ODDACC-1", "ACC-CTPA-24007"}
    assert orders["ODDACC-1"].ordered_priority == "S"
    assert main(args) == 0  # idempotent
    assert len(r.orders()) == 2 and len(r.messages()) == 2
    assert main(["hl7", "replay", "--data-dir", str(tmp_path)]) == 2  # says which messages


@pytest.mark.parametrize("connections", [1, 2])
def test_a_frame_that_fails_to_be_read_is_answered_ae_and_kept(
    listener: Callable[..., Running], monkeypatch: pytest.MonkeyPatch, connections: int
) -> None:
    """Frames are read as they arrive (outside the transaction). A defect in reading one
    (here: the parser raising) must still give its peer an AE 207 echoing MSH-10, keep the
    message, and leave the connection and the messages after it working; alone or with other
    connections open (the two paths to the transaction)."""
    import triage.ingest.hl7_store as hl7_store
    from triage.synth.orders import order_message

    real = hl7_store.evaluate

    def flaky(text: str, *args: Any, **kwargs: Any) -> Any:
        if "BOOM" in text:
            raise RuntimeError("parser defect")
        return real(text, *args, **kwargs)

    monkeypatch.setattr(hl7_store, "evaluate", flaky)
    r = listener()
    others = [
        socket.create_connection((r.host, r.port), timeout=10) for _ in range(connections - 1)
    ]
    try:
        with MLLPConnection(r.host, r.port, timeout=10) as conn:
            bad = read_ack(conn.exchange(order_message(accession="BOOM1", patient_id="P")))
            good = read_ack(conn.exchange(order_message(accession="OK1", patient_id="P")))
    finally:
        for sock in others:
            sock.close()
    assert bad[0] == "AE" and bad[1] == "ORMBOOM1" and "parser defect" in bad[2]
    assert good[:2] == ("AA", "ORMOK1")
    rows = r.messages()
    assert [m.ack_code for m in rows] == ["AE", "AA"]
    assert "BOOM1" in rows[0].raw and "parser defect" in rows[0].error
    assert [o.accession_number for o in r.orders()] == ["OK1"]
