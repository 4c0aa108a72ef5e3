"""The acceptor's upper-layer state machine, event by event, over the wire.

PS3.8 Table 9-10 gives, for each state (Sta1-Sta13) and event (Evt1-Evt19), the action of a
DICOM upper layer. ``TABLE`` below is that table as it applies to our acceptor
(:mod:`triage.ingest.dicom_ul`): for every state a peer can put it in over a socket, and
every event a peer can cause, the PS3.8 action and what the peer sees. Each row is driven by
a raw socket peer: reach the state, cause the event, then read every PDU until the server
closes, and check the reaction, what the service user was told (the ``closed`` handler) and
that nothing was stored.

States an acceptor is never left in long enough for a peer to act (Sta3, Sta8), and those
only a requestor or a release collision reaches (Sta4, Sta5, Sta7, Sta9-Sta12), are listed in
``NOT_REACHABLE`` with the reason; deliberate deviations from the table are marked in their
rows and documented in docs/dicom-conformance.md.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from raw_peer import RawPeer, associate_rq, command_set, established, status_of

from triage.ingest.dicom_pdu import Status
from triage.ingest.dicom_ul import (
    Handlers,
    Limits,
    Peer,
    StoreRequest,
    UpperLayerServer,
)

pytestmark = pytest.mark.integration

#: The ACSE timer (ARTIM in PS3.8) while waiting for the A-ASSOCIATE-RQ: short, so that the
#: rows where it expires stay fast.
ARTIM = 0.5

# --------------------------------------------------------------------------- the PDUs of events

ABORT_PDU = bytes([7, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # A-ABORT, source service user
RELEASE_RQ_PDU = bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0])
RELEASE_RP_PDU = bytes([6, 0, 0, 0, 0, 4, 0, 0, 0, 0])
RJ_PDU = bytes([3, 0, 0, 0, 0, 4, 0, 1, 1, 7])


def _pdata(pdvs: list[tuple[int, int, bytes]]) -> bytes:
    body = b"".join(struct.pack(">IBB", len(v) + 2, cx, mch) + v for cx, mch, v in pdvs)
    return struct.pack(">BBI", 4, 0, len(body)) + body


ECHO_PDU = _pdata([(1, 0x03, command_set(0x0030, 7, data=False, sop_class=Verification))])
STORE_COMMAND_PDU = _pdata(
    [(3, 0x03, command_set(0x0001, 8, data=True, sop_class=CTImageStorage, sop_instance="1.2.3"))]
)
FIRST_FRAGMENT_PDU = _pdata([(3, 0x00, b"\x08\x00" * 64)])
LAST_FRAGMENT_PDU = _pdata([(3, 0x02, b"\x08\x00" * 64)])

#: Events a peer causes (PS3.8 Table 9-9): what it sends, or does.
EVENTS: dict[str, str] = {
    "Evt3": "A-ASSOCIATE-AC PDU received",
    "Evt4": "A-ASSOCIATE-RJ PDU received",
    "Evt6": "A-ASSOCIATE-RQ PDU received",
    "Evt10": "P-DATA-TF PDU received",
    "Evt12": "A-RELEASE-RQ PDU received",
    "Evt13": "A-RELEASE-RP PDU received",
    "Evt16": "A-ABORT PDU received",
    "Evt17": "transport connection closed",
    "Evt18": "ARTIM timer expired",
    "Evt19/unknown": "unrecognised PDU: type 0x09",
    "Evt19/length": "invalid PDU: an A-RELEASE-RQ 6 bytes long, not 4",
    "Evt19/empty": "invalid PDU: a P-DATA-TF with no PDV",
}


def _send(data: bytes) -> Callable[[RawPeer], None]:
    return lambda peer: peer.sock.sendall(data)


def _close(peer: RawPeer) -> None:
    peer.sock.shutdown(socket.SHUT_WR)  # the peer closes its side; we still read ours


def _wait_artim(_peer: RawPeer) -> None:
    pass  # send nothing: the timer runs out


CAUSE: dict[str, Callable[[RawPeer], None]] = {
    "Evt3": _send(b"\x02" + associate_rq()[1:]),  # an AC-shaped PDU
    "Evt4": _send(RJ_PDU),
    "Evt6": _send(associate_rq()),
    "Evt10": _send(ECHO_PDU),  # in Sta6-data: the last fragment of the data set instead
    "Evt12": _send(RELEASE_RQ_PDU),
    "Evt13": _send(RELEASE_RP_PDU),
    "Evt16": _send(ABORT_PDU),
    "Evt17": _close,
    "Evt18": _wait_artim,
    "Evt19/unknown": _send(bytes([9, 0, 0, 0, 0, 4, 0, 0, 0, 0])),
    "Evt19/length": _send(bytes([5, 0, 0, 0, 0, 6]) + bytes(6)),
    "Evt19/empty": _send(bytes([4, 0, 0, 0, 0, 0])),
}

# --------------------------------------------------------------------------- the table


class Abort(NamedTuple):
    """The peer receives an A-ABORT PDU (source, reason), then the connection closes."""

    source: int
    reason: int


class Reply(NamedTuple):
    """The peer receives this PDU type (and, for P-DATA, a response with this status)."""

    pdu_type: int
    status: int | None = None
    then_open: bool = False  # the association goes on (else: closed after it)


SILENT = "closed, nothing sent"


class Row(NamedTuple):
    action: str  # PS3.8 Table 9-10's action
    reaction: Abort | Reply | str
    told: str | None = None  # what the `closed` handler hears; None: never associated
    stored: int = 0
    deviation: str = ""


#: Sta6 with a C-STORE's data set partly received: the same upper-layer state, but the
#: DIMSE layer holds a half message (what becomes of it on each event is checked too).
STATES = ("Sta2", "Sta6", "Sta6-data", "Sta13-after-RJ", "Sta13-after-RP", "Sta13-after-abort")

_ABORT_TO_PEER = (
    "AA-1 names the service user as the source; we send source 2 (provider) with the "
    "reason, which a peer's log can show"
)
_AA7_NOT_SENT = (
    "AA-7 (send A-ABORT) is not done: our side of the connection is already shut after "
    "our last PDU, and nothing the peer sends then can start anything"
)


def _sta6(data_arriving: bool) -> dict[str, Row]:
    # the response, then the association goes on (the test releases it)
    pdata = Row("DT-2", Reply(0x04, 0x0000, then_open=True), "released", int(data_arriving))
    return {
        "Evt3": Row("AA-8", Abort(2, 2), "protocol"),
        "Evt4": Row("AA-8", Abort(2, 2), "protocol"),
        "Evt6": Row("AA-8", Abort(2, 2), "protocol"),
        "Evt10": pdata,
        # AR-2 then, at once, AR-4 (A-RELEASE response: always affirmative); a half message
        # is dropped, logged and counted (docs/dicom-conformance.md)
        "Evt12": Row("AR-2, AR-4", Reply(0x06), "released"),
        "Evt13": Row("AA-8", Abort(2, 2), "protocol"),
        "Evt16": Row("AA-3", SILENT, "aborted"),
        "Evt17": Row("AA-4", SILENT, "connection"),
        # Evt18: ARTIM does not run in Sta6 (the idle timeout is tested in test_dicom_ul.py)
        "Evt19/unknown": Row("AA-8", Abort(2, 1), "protocol"),
        "Evt19/length": Row("AA-8", Abort(2, 6), "protocol"),
        "Evt19/empty": Row("AA-8", Abort(2, 6), "protocol"),
    }


def _sta13() -> dict[str, Row]:
    ignored = Row("AA-6", SILENT)
    return {
        "Evt3": ignored,
        "Evt4": ignored,
        "Evt6": Row("AA-7", SILENT, deviation=_AA7_NOT_SENT),
        "Evt10": ignored,
        "Evt12": ignored,
        "Evt13": ignored,
        "Evt16": Row("AA-2", SILENT),
        "Evt17": Row("AR-5", SILENT),
        "Evt18": Row("AA-2", SILENT),
        "Evt19/unknown": Row("AA-7", SILENT, deviation=_AA7_NOT_SENT),
        "Evt19/length": Row("AA-7", SILENT, deviation=_AA7_NOT_SENT),
        "Evt19/empty": Row("AA-7", SILENT, deviation=_AA7_NOT_SENT),
    }


TABLE: dict[str, dict[str, Row]] = {
    "Sta2": {
        "Evt3": Row("AA-1", Abort(2, 2), deviation=_ABORT_TO_PEER),
        "Evt4": Row("AA-1", Abort(2, 2), deviation=_ABORT_TO_PEER),
        "Evt6": Row("AE-6, AE-7", Reply(0x02, then_open=True), "released"),
        "Evt10": Row("AA-1", Abort(2, 2), deviation=_ABORT_TO_PEER),
        "Evt12": Row("AA-1", Abort(2, 2), deviation=_ABORT_TO_PEER),
        "Evt13": Row("AA-1", Abort(2, 2), deviation=_ABORT_TO_PEER),
        "Evt16": Row("AA-2", SILENT),
        "Evt17": Row("AA-5", SILENT),
        "Evt18": Row("AA-2", SILENT),
        "Evt19/unknown": Row("AA-1", Abort(2, 1), deviation=_ABORT_TO_PEER),
        "Evt19/length": Row("AA-1", Abort(2, 2), deviation=_ABORT_TO_PEER),
        "Evt19/empty": Row("AA-1", Abort(2, 2), deviation=_ABORT_TO_PEER),
    },
    "Sta6": _sta6(data_arriving=False),
    "Sta6-data": _sta6(data_arriving=True),
    "Sta13-after-RJ": _sta13(),
    "Sta13-after-RP": _sta13(),
    "Sta13-after-abort": _sta13(),
}

#: (state, event) pairs the table leaves empty: the event cannot happen there.
NOT_APPLICABLE = {
    ("Sta6", "Evt18"): "ARTIM does not run in Sta6",
    ("Sta6-data", "Evt18"): "ARTIM does not run in Sta6",
}

NOT_REACHABLE = {
    "Sta1": "idle, no connection: nothing to send to",
    "Sta3": "the A-ASSOCIATE response is decided while the A-ASSOCIATE-RQ is handled, before "
    "anything more is read: a PDU sent meanwhile is read in Sta6 or Sta13",
    "Sta4": "requestor only (awaiting its transport connection)",
    "Sta5": "requestor only (awaiting A-ASSOCIATE-AC/RJ)",
    "Sta7": "we never request a release",
    "Sta8": "the A-RELEASE response is given at once: a PDU sent after an A-RELEASE-RQ is "
    "read in Sta13",
    "Sta9": "release collision: we never request a release",
    "Sta10": "release collision",
    "Sta11": "release collision",
    "Sta12": "release collision",
}

#: Local events (our own primitives), where they are exercised.
LOCAL_EVENTS = {
    "Evt1": "A-ASSOCIATE request: never (we are acceptor only)",
    "Evt2": "transport connect confirmation: requestor only",
    "Evt5": "transport connection indication: every row starts with it (AE-5)",
    "Evt7": "A-ASSOCIATE response (accept): Sta2 + Evt6",
    "Evt8": "A-ASSOCIATE response (reject): how the Sta13-after-RJ rows get there",
    "Evt9": "P-DATA request: our DIMSE responses (the DT-2 rows read them)",
    "Evt11": "A-RELEASE request: never",
    "Evt14": "A-RELEASE response: Sta6 + Evt12",
    "Evt15": "A-ABORT request: the engine stopping, test_local_abort_request below",
}

# --------------------------------------------------------------------------- the server


@dataclass
class Seen:
    stored: list[StoreRequest] = field(default_factory=list)
    closed: list[tuple[Peer, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def store(self, request: StoreRequest) -> Status:
        with self.lock:
            self.stored.append(request)
        return Status(0)

    def on_closed(self, peer: Peer, how: str) -> None:
        with self.lock:
            self.closed.append((peer, how))

    def of(self, port: int) -> tuple[list[StoreRequest], list[str]]:
        with self.lock:
            return (
                [r for r in self.stored if r.peer.port == port],
                [how for p, how in self.closed if p.port == port],
            )


def _new_server(seen: Seen) -> UpperLayerServer:
    limits = Limits(ae_title="TRIAGE", acse_timeout=ARTIM, dimse_timeout=10, network_timeout=10)
    handlers = Handlers(store=seen.store, closed=seen.on_closed)
    return UpperLayerServer(
        limits, [str(Verification), str(CTImageStorage)], [str(ExplicitVRLittleEndian)], handlers
    )


@pytest.fixture(scope="module")
def seen() -> Seen:
    return Seen()


@pytest.fixture(scope="module")
def server(seen: Seen) -> Iterator[UpperLayerServer]:
    srv = _new_server(seen)
    srv.start("127.0.0.1", 0)
    try:
        yield srv
    finally:
        srv.stop()


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def _open(srv: UpperLayerServer, port: int) -> bool:
    return port in {assoc.peer.port for assoc in list(srv._connections)}


def _reach(state: str, peer: RawPeer) -> None:
    if state == "Sta2":
        return
    if state == "Sta13-after-RJ":
        pdu_type, _ = peer.associate(called="NOTUS")
        assert pdu_type == 0x03
        return
    established(peer)
    if state == "Sta6-data":
        peer.sock.sendall(STORE_COMMAND_PDU + FIRST_FRAGMENT_PDU)
    elif state == "Sta13-after-RP":
        peer.sock.sendall(RELEASE_RQ_PDU)
        assert peer.recv_pdu()[0] == 0x06
    elif state == "Sta13-after-abort":
        peer.sock.sendall(bytes([9, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
        assert peer.recv_pdu()[0] == 0x07


def _until_closed(peer: RawPeer, close: bool = True) -> list[tuple[int, bytes]]:
    """Every PDU the server sends until it closes the connection; then the peer closes its
    side too (unless not ``close``), as a requestor does after an RJ, an RP or an A-ABORT."""
    got = []
    while True:
        try:
            got.append(peer.recv_pdu())
        except (EOFError, ConnectionResetError):
            if close:
                peer.close()
            return got


ROWS = [
    pytest.param(state, event, id=f"{state}-{event}")
    for state in STATES
    for event in EVENTS
    if (state, event) not in NOT_APPLICABLE
]


@pytest.mark.parametrize(("state", "event"), ROWS)
def test_state_event(server: UpperLayerServer, seen: Seen, state: str, event: str) -> None:
    row = TABLE[state][event]
    peer = RawPeer(server.address)  # type: ignore[arg-type]
    port = peer.sock.getsockname()[1]
    released_mid_message = server.counters.snapshot()["released_mid_message"]
    try:
        _reach(state, peer)
        if state == "Sta6-data" and event == "Evt10":
            peer.sock.sendall(LAST_FRAGMENT_PDU)
        else:
            CAUSE[event](peer)
        reaction = row.reaction
        if isinstance(reaction, Reply) and reaction.then_open:
            if reaction.pdu_type == 0x04:
                assert status_of(peer.response()) == reaction.status
            else:
                assert peer.recv_pdu()[0] == reaction.pdu_type
            peer.sock.sendall(RELEASE_RQ_PDU)  # end it normally
            assert _until_closed(peer) == [(0x06, b"\x00\x00\x00\x00")]
        else:
            # Evt18 in Sta13: the peer stays, the server closes when its timer runs out
            got = _until_closed(peer, close=event != "Evt18")
            if isinstance(reaction, Abort):
                assert [(t, tuple(b[2:4])) for t, b in got] == [(0x07, tuple(reaction))]
            elif isinstance(reaction, Reply):
                assert [t for t, _ in got] == [reaction.pdu_type]
            else:
                assert got == [], f"{row.action}: nothing should be sent, got {got}"
        _wait(lambda: not _open(server, port))  # the server let go of the connection
        assert len(seen.of(port)[0]) == row.stored
        if not state.startswith("Sta13"):  # (Sta13 rows: told when they got there)
            told = [row.told] if row.told else []
            _wait(lambda: len(seen.of(port)[1]) == len(told))
            assert seen.of(port)[1] == told
        counted = server.counters.snapshot()["released_mid_message"] - released_mid_message
        assert counted == (1 if (state, event) == ("Sta6-data", "Evt12") else 0)
    finally:
        peer.close()


def test_artim_expiry_in_sta2_waits_for_the_timer(server: UpperLayerServer) -> None:
    """Sta2 + Evt18 above closes because the timer ran out, not at once."""
    peer = RawPeer(server.address)  # type: ignore[arg-type]
    try:
        start = time.monotonic()
        assert _until_closed(peer) == []
        assert time.monotonic() - start >= ARTIM * 0.9
    finally:
        peer.close()


def test_the_table_covers_every_event_in_every_state() -> None:
    for state in STATES:
        for event in EVENTS:
            assert (event in TABLE[state]) != ((state, event) in NOT_APPLICABLE), (state, event)
    named = {s.split("-")[0] for s in STATES} | set(NOT_REACHABLE)
    assert named == {f"Sta{i}" for i in range(1, 14)}
    network = {e.split("/")[0] for e in EVENTS}
    assert network | set(LOCAL_EVENTS) == {f"Evt{i}" for i in range(1, 20)}


@pytest.mark.parametrize("state", ["Sta2", "Sta6", "Sta6-data"])
def test_local_abort_request(state: str) -> None:
    """Evt15, the engine stopping: AA-1 in Sta6 (A-ABORT, source service user); in Sta2
    there is no association to abort, the connection is closed."""
    seen = Seen()
    srv = _new_server(seen)
    peer = RawPeer(srv.start("127.0.0.1", 0))
    try:
        _reach(state, peer)
        _wait(lambda: len(srv._connections) == 1)
        if state != "Sta2":
            _wait(lambda: len(srv.active) == 1)
        srv.stop()
        got = _until_closed(peer)
        if state == "Sta2":
            assert got == []
        else:
            assert [(t, b[2]) for t, b in got] == [(0x07, 0)]  # source: service user
            assert [how for _, how in seen.closed] == ["shutdown"]
        assert seen.stored == []
    finally:
        peer.close()
        srv.stop()
