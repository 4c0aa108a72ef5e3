"""The HL7 listener inside the running engine (`triage serve` as a subprocess, its real
listeners on ephemeral ports), driven the way peers drive it: several frames per TCP write,
frames cut across writes (even between the block bytes), frames sent while the previous
commit is in flight, many fresh connections, the hl7 package's `mllp_send`, and 10,000
messages on one connection.

The engine gets a Triton URL where nothing listens (studies would wait as "AI pending"):
the HL7 path does not depend on Triton, and its start-up would cost seconds per test."""

from __future__ import annotations

import itertools
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.engine import Engine
from support.paths import REPO_ROOT

from triage.hl7.ack import read_ack
from triage.hl7.mllp import MLLPDecoder, frame
from triage.store import Database, Order, Study
from triage.store.order_links import OrderLinks
from triage.store.repo import studies_for_order
from triage.synth.orders import order_message

MLLP_SEND = REPO_ROOT / ".venv" / "bin" / "mllp_send"
TIMEOUT = 10.0  # seconds a peer waits for an ACK before the test calls it lost


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    e = Engine(tmp_path_factory.mktemp("hl7-engine"), quick=False)
    try:
        yield e.start()
    finally:
        e.stop()
    assert e.proc is not None and e.proc.returncode == 0, e.log()[-4000:]


def order_count(engine: Engine) -> int:
    return int(engine.query('SELECT count(*) FROM "order"')[0][0])


_serial = iter(range(10**9))


def orders(tag: str, n: int) -> list[tuple[bytes, str]]:
    """``n`` new ORM^O01 orders: (payload, MSH-10), every one with its own accession."""
    out = []
    for _ in range(n):
        k = next(_serial)
        control = f"{tag}{k}"
        text = order_message(
            accession=f"{tag}{k:07d}", patient_id=f"P{k % 97:05d}", control_id=control
        )
        out.append((text.encode(), control))
    return out


class Peer:
    """One MLLP connection, raw socket: what is written is exactly what goes on the wire."""

    def __init__(self, e: Engine) -> None:
        self.sock = socket.create_connection(("127.0.0.1", e.hl7_port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = MLLPDecoder()
        self.acks: list[bytes] = []

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self, count: int) -> list[tuple[str, str]]:
        """Wait for ``count`` more ACKs; (MSA-1, MSA-2) of each, in arrival order."""
        want = len(self.acks) + count
        while len(self.acks) < want:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                got = len(self.acks) - (want - count)
                raise AssertionError(
                    f"{got} of {count} ACKs within {TIMEOUT:.0f} s; the rest never came"
                ) from None
            assert chunk, "the engine closed the connection"
            self.acks += self.decoder.feed(chunk)
        return [read_ack(a.decode())[:2] for a in self.acks[want - count : want]]


def accepted(controls: list[str]) -> list[tuple[str, str]]:
    return [("AA", c) for c in controls]


# -- which orders the engine hands to the pipeline --------------------------------------------


@pytest.mark.parametrize("raw_sqlite", [True, False])
def test_orders_near_studies_is_a_superset_of_what_the_pipeline_would_touch(
    tmp_path: Path, raw_sqlite: bool
) -> None:
    """The engine hands the pipeline only the orders that share a key with a stored study;
    every order for which studies_for_order finds a study is among them."""
    db = Database(f"sqlite:///{tmp_path / 'triage.db'}")
    db.create_all()
    with db.session() as s:
        s.add(Study(study_uid="1.2.1", accession_number="ACC1", patient_id="PA"))
        s.add(Study(study_uid="1.2.2", patient_id="PB"))  # unlinked, no accession
        s.add(Study(study_uid="1.2.3", accession_number="ACC3", patient_id="PC", order_id=9))
    orders = [
        Order(accession_number="ACC1", patient_id="PX"),  # by accession
        Order(accession_number="NEW1", patient_id="PX", study_uid="1.2.2"),  # by Study UID
        Order(accession_number="NEW2", patient_id="PB"),  # by patient (unlinked study)
        Order(accession_number="NEW3", patient_id="PZ"),  # nothing
        Order(accession_number="", patient_id="", study_uid=""),  # nothing
        Order(accession_number="NEW4", patient_id="PY"),  # nothing
    ]
    with db.session() as s:
        for o in orders:
            s.add(o)
        s.flush()
        ids = [int(o.id) for o in orders if o.id is not None]
        s.add(Order(id=9, accession_number="OLD", patient_id="PQ"))  # linked by order_id
    ids.append(9)
    links = OrderLinks(db)
    links.sqlite = raw_sqlite  # False: the SQLAlchemy Core query other databases run
    near = links.near_studies(list(reversed(ids)) + ids[:2])
    assert near == [9, ids[2], ids[1], ids[0]]  # in the order given, once each
    with db.session() as s:
        touched = [i for i in ids if studies_for_order(s, s.get(Order, i), 24.0)]
    assert set(touched) <= set(near)
    assert links.near_studies([]) == []
    links.close()
    db.dispose()


# -- the stalls of issue 14 -------------------------------------------------------------------


@pytest.mark.integration
def test_two_frames_in_one_write_on_sixty_fresh_connections(engine: Engine) -> None:
    """A RIS that batches: both messages in one write, on a new connection; both ACKs."""
    for attempt in range(60):
        msgs = orders(f"TW{attempt}-", 2)
        with Peer(engine) as peer:
            peer.send(b"".join(frame(p) for p, _ in msgs))
            assert peer.receive(2) == accepted([c for _, c in msgs]), f"attempt {attempt}"


def cut_points(data: bytes) -> list[int]:
    """Where a stream of frames is cut: right after each start block, between each end block
    and its carriage return, right before each start block, and inside each payload."""
    points: set[int] = set()
    for i, byte in enumerate(data):
        if byte == 0x0B:
            points.update((i, i + 1, i + 40))
        elif byte == 0x1C:
            points.add(i + 1)
    return sorted(p for p in points if 0 < p < len(data))


@pytest.mark.integration
def test_frames_cut_across_writes(engine: Engine) -> None:
    """Every frame cut inside its block bytes and its payload, pieces written separately with
    a pause (so that the engine reads them separately); three frames per stream, 20
    connections. Every ACK arrives, in order."""
    for attempt in range(20):
        msgs = orders(f"CW{attempt}-", 3)
        stream = b"".join(frame(p) for p, _ in msgs)
        cuts = [0, *cut_points(stream)[attempt % 3 :: 2], len(stream)]
        with Peer(engine) as peer:
            for a, b in itertools.pairwise(cuts):
                peer.send(stream[a:b])
                time.sleep(0.002)
            assert peer.receive(3) == accepted([c for _, c in msgs]), f"attempt {attempt}"


def test_acknowledgments_sent_to_the_engine_are_kept_and_never_answered(engine: Engine) -> None:
    """ACKs (MSH-9 ACK: a RIS answering on the wrong connection) between orders, all in one
    write, then the same cut across writes: only the orders are answered, in order, and
    nothing else comes back; the ACKs are stored like any message."""
    for attempt, split in enumerate((False, True)):
        msgs = orders(f"AK{attempt}-", 3)
        acks = [
            (
                "MSH|^~\\&|RIS|HOSP|TRIAGE|TRIAGE|20261208010000||ACK^O01^ACK|"
                f"AKIN{attempt}{k}|P|2.5.1\rMSA|AA|TRIAGE{k:06d}"
            ).encode()
            for k in range(3)
        ]
        stream = b"".join(frame(a) + frame(p) for a, (p, _) in zip(acks, msgs, strict=True))
        with Peer(engine) as peer:
            if split:
                for a, b in itertools.pairwise([0, *cut_points(stream)[::2], len(stream)]):
                    peer.send(stream[a:b])
                    time.sleep(0.002)
            else:
                peer.send(stream)
            assert peer.receive(3) == accepted([c for _, c in msgs]), f"attempt {attempt}"
            peer.sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                peer.sock.recv(4096)  # no answer to any of the ACKs
        stored = engine.query(
            "SELECT count(*) FROM hl7message WHERE control_id LIKE ?", f"AKIN{attempt}%"
        )
        assert stored == [(3,)], f"attempt {attempt}"


@pytest.mark.integration
def test_frames_sent_while_the_previous_commit_is_in_flight(engine: Engine) -> None:
    """A pipelining peer: the next frame leaves while the previous one is being committed (no
    wait for its ACK), a frame's end and the next frame's start in one write."""
    for attempt in range(20):
        msgs = orders(f"PF{attempt}-", 6)
        wire = [frame(p) for p, _ in msgs]
        stream = b"".join(wire)
        # Cut in the middle of every frame: each write ends one frame and starts the next.
        cuts, at = [0], 0
        for w in wire:
            cuts.append(at + len(w) // 2)
            at += len(w)
        cuts.append(len(stream))
        with Peer(engine) as peer:
            for a, b in itertools.pairwise(cuts):
                peer.send(stream[a:b])
                time.sleep(0.0005 * (attempt % 4))
            assert peer.receive(6) == accepted([c for _, c in msgs]), f"attempt {attempt}"


@pytest.mark.integration
def test_many_peers_at_once_lock_step_pipelining_and_split(engine: Engine) -> None:
    """Several RIS interfaces at once, as the listener's two commit paths meet them: eight
    peers each waiting for every ACK (their batches hold every open connection: stored in
    the listener's loop), joined half-way by a peer sending two frames per write without
    waiting and one writing each frame in two pieces (then the batches go to the writer
    thread). Every peer gets every ACK, in order; every order is stored once."""
    before = order_count(engine)
    results: dict[str, list[tuple[str, str]]] = {}
    expected: dict[str, list[tuple[str, str]]] = {}
    failures: list[BaseException] = []
    halfway = threading.Barrier(9)

    def lock_step(k: int) -> None:
        msgs = orders(f"LS{k}-", 40)
        expected[f"lock{k}"] = accepted([c for _, c in msgs])
        got: list[tuple[str, str]] = []
        with Peer(engine) as peer:
            for i, (payload, _) in enumerate(msgs):
                if i == 20:
                    halfway.wait(timeout=30)
                peer.send(frame(payload))
                got += peer.receive(1)
        results[f"lock{k}"] = got

    def pipelining() -> None:
        msgs = orders("PL-", 40)
        expected["pipelining"] = accepted([c for _, c in msgs])
        with Peer(engine) as peer:
            for i in range(0, 40, 2):
                peer.send(frame(msgs[i][0]) + frame(msgs[i + 1][0]))
            results["pipelining"] = peer.receive(40)

    def split() -> None:
        msgs = orders("SP-", 20)
        expected["split"] = accepted([c for _, c in msgs])
        got: list[tuple[str, str]] = []
        with Peer(engine) as peer:
            for payload, _ in msgs:
                wire = frame(payload)
                peer.send(wire[: len(wire) // 2])
                time.sleep(0.001)
                peer.send(wire[len(wire) // 2 :])
                got += peer.receive(1)
        results["split"] = got

    def guarded(fn, *args):  # type: ignore[no-untyped-def]
        try:
            fn(*args)
        except BaseException as exc:  # reported below, with the peer's name
            failures.append(exc)

    def late_joiners() -> None:
        halfway.wait(timeout=30)
        joiners = [threading.Thread(target=guarded, args=(f,)) for f in (pipelining, split)]
        for t in joiners:
            t.start()
        for t in joiners:
            t.join(60)

    threads = [threading.Thread(target=guarded, args=(lock_step, k)) for k in range(8)]
    threads.append(threading.Thread(target=guarded, args=(late_joiners,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not failures, failures
    assert results == expected
    assert order_count(engine) == before + 8 * 40 + 40 + 20


@pytest.mark.integration
def test_mllp_send_real_client(engine: Engine, tmp_path: Path) -> None:
    """The hl7 package's `mllp_send` (one message, then its ACK, then the next) with a file of
    framed messages, three runs in a row on fresh connections."""
    for run in range(3):
        msgs = orders(f"MS{run}-", 25)
        path = tmp_path / f"batch{run}.hl7"
        path.write_bytes(b"".join(frame(p) for p, _ in msgs))
        out = subprocess.run(
            [str(MLLP_SEND), "-p", str(engine.hl7_port), "-f", str(path), "127.0.0.1"],
            capture_output=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        acks = MLLPDecoder().feed(out.stdout)
        assert [read_ack(a.decode())[:2] for a in acks] == accepted([c for _, c in msgs])


FAULT_COUNT = 10_000


@pytest.mark.integration
def test_ten_thousand_messages_two_per_write_on_one_connection(engine: Engine) -> None:
    """10,000 orders on one connection, two frames per TCP write, written as fast as the
    engine takes them (a sender thread; ACKs read meanwhile): 10,000 ACKs, in order, each
    MSA-2 echoing its MSH-10, and 10,000 more orders in the database."""
    before = order_count(engine)
    msgs = orders("TK", FAULT_COUNT)
    writes = [frame(msgs[i][0]) + frame(msgs[i + 1][0]) for i in range(0, FAULT_COUNT, 2)]
    failed: list[BaseException] = []

    with Peer(engine) as peer:

        def send_all() -> None:
            try:
                for data in writes:
                    peer.send(data)
            except BaseException as exc:  # reported by the test thread
                failed.append(exc)

        sender = threading.Thread(target=send_all)
        sender.start()
        try:
            got = peer.receive(FAULT_COUNT)
        finally:
            sender.join(TIMEOUT)
    assert not failed
    assert len(got) == FAULT_COUNT
    assert got == accepted([c for _, c in msgs])
    assert order_count(engine) - before == FAULT_COUNT


def test_a_reused_control_id_and_a_bare_caret_through_the_engine(engine: Engine) -> None:
    """A RIS whose counter wrapped: two different orders under one MSH-10 in one write, then
    the second one resent cut across writes - the resend gets the second order's own ACK and
    is not applied again. And an MSH-10 written with a bare "^" is echoed whole."""
    k = next(_serial)
    control = f"RU{k}"
    first, second = (
        order_message(accession=f"RU{k:07d}{n}", patient_id="PRU", control_id=control).encode()
        for n in (1, 2)
    )
    before = order_count(engine)
    with Peer(engine) as peer:
        peer.send(frame(first) + frame(second))
        assert peer.receive(2) == [("AA", control), ("AA", control)]
        second_ack = peer.acks[-1]
        again = frame(second)
        for a, b in itertools.pairwise([0, 1, len(again) // 2, len(again)]):
            peer.send(again[a:b])
            time.sleep(0.002)
        assert peer.receive(1) == [("AA", control)]
        assert peer.acks[-1] == second_ack  # the very same ACK, its own MSH-10 included
    assert order_count(engine) == before + 2
    stored = engine.query("SELECT count(*) FROM hl7message WHERE control_id = ?", control)
    assert stored == [(2,)]
    caret = order_message(accession=f"RC{k:07d}", patient_id="PRC", control_id=f"CA^{k}").encode()
    with Peer(engine) as peer:
        peer.send(frame(caret))
        assert peer.receive(1) == [("AA", f"CA^{k}")]
        assert f"|CA\\S\\{k}".encode() in peer.acks[-1]


def test_idle_connections_give_their_places_in_the_running_engine(tmp_path: Path) -> None:
    """`triage serve` with small connection limits: its HL7 and DICOM listeners filled with
    idle sockets (nothing sent); two seconds later an order over MLLP and dcmtk's echoscu are
    both answered, each taking the place of the oldest idle socket."""
    from support.dcmtk import echoscu

    e = Engine(tmp_path, hl7_max_connections=4, dicom_max_associations=2).start()
    hl7_idle: list[socket.socket] = []
    dicom_idle: list[socket.socket] = []
    try:
        hl7_idle = [socket.create_connection(("127.0.0.1", e.hl7_port)) for _ in range(4)]
        dicom_idle = [socket.create_connection(("127.0.0.1", e.dicom_port)) for _ in range(8)]
        time.sleep(2.5)
        ((payload, control),) = orders("IC", 1)
        with Peer(e) as peer:
            peer.send(frame(payload))
            assert peer.receive(1) == [("AA", control)]
        hl7_idle[0].settimeout(TIMEOUT)
        assert hl7_idle[0].recv(1) == b""  # the oldest gave its place
        echo = echoscu(e.dicom_port)
        assert echo.returncode == 0, echo.stdout + echo.stderr
        dicom_idle[0].settimeout(TIMEOUT)
        assert dicom_idle[0].recv(1) == b""
        log = e.log()
        assert "HL7 listener full" in log and "without an A-ASSOCIATE-RQ" in log
    finally:
        for s in hl7_idle + dicom_idle:
            s.close()
        e.stop()
