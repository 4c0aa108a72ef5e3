"""The DICOM upper layer on its own: pynetdicom as a well-behaved SCU, and a raw socket peer
for what no toolkit sends (PDVs on unknown contexts, data before a command, unknown PDUs,
odd fragmentation, small peer PDUs). The store handler here records what it is given; the
real one is tested in test_dicom_scp.py."""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ct_fixtures import encoded_dataset
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from raw_peer import (
    RawPeer,
    associate_ac,
    associate_rq,
    command_set,
    established,
    status_of,
)

from triage.ingest.dicom_dimse import encode_response, p_data_pdus, parse_command
from triage.ingest.dicom_pdu import Rejection, Status
from triage.ingest.dicom_ul import (
    Handlers,
    Limits,
    Peer,
    StoreRequest,
    StoreStart,
    UpperLayerServer,
)

pytestmark = pytest.mark.integration

SYNTAXES = [str(ExplicitVRLittleEndian)]


@dataclass
class Recorder:
    stored: list[StoreRequest] = field(default_factory=list)
    closed: list[tuple[Peer, str]] = field(default_factory=list)
    begun: list[StoreStart] = field(default_factory=list)
    answer: Status = field(default_factory=lambda: Status(0))
    reject: Rejection | None = None

    def handlers(self) -> Handlers:
        def store(request: StoreRequest) -> Status:
            self.stored.append(request)
            return self.answer

        def begin(start: StoreStart) -> None:
            self.begun.append(start)

        return Handlers(
            store=store,
            check=lambda _peer: self.reject,
            closed=lambda peer, how: self.closed.append((peer, how)),
            begin=begin,
        )


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def _server(rec: Recorder, **limits: object) -> UpperLayerServer:
    settings: dict[str, object] = {"ae_title": "TRIAGE", "acse_timeout": 5.0, **limits}
    return UpperLayerServer(
        Limits(**settings),  # type: ignore[arg-type]
        [str(Verification), str(CTImageStorage)],
        SYNTAXES,
        rec.handlers(),
    )


@pytest.fixture
def server(rec: Recorder) -> Iterator[tuple[str, int]]:
    srv = _server(rec)
    address = srv.start("127.0.0.1", 0)
    try:
        yield address
    finally:
        srv.stop()


def _dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "UL1"
    ds.Modality = "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _wait(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def raw(server: tuple[str, int]) -> Iterator[RawPeer]:
    peer = RawPeer(server)
    try:
        yield peer
    finally:
        peer.close()


# --------------------------------------------------------------------------- commands


def test_command_encoding_round_trips() -> None:
    rsp = encode_response(0x8001, 7, Status(0xA700, "disk full"), "1.2.3", "1.2.3.4")
    parsed = parse_command(rsp)
    assert struct.unpack("<I", parsed[0x0000])[0] == len(rsp) - 12
    assert parsed[0x0002] == b"1.2.3\x00"  # UIDs padded to even length with NUL
    assert struct.unpack("<H", parsed[0x0120])[0] == 7
    assert status_of(parsed) == 0xA700 and parsed[0x0902] == b"disk full "
    assert 0x0902 not in parse_command(encode_response(0x8001, 7, Status(0, "ignored")))


def test_p_data_is_split_to_the_peer_maximum() -> None:
    command = bytes(range(200))
    pdus = p_data_pdus(3, command, 64)
    got, i, controls = b"", 0, []
    while i < len(pdus):
        pdu_type, _, length = struct.unpack_from(">BBI", pdus, i)
        assert pdu_type == 4 and length <= 64  # the PDV list, as PS3.8 D.1 counts it
        _, cx, control = struct.unpack_from(">IBB", pdus, i + 6)
        assert cx == 3
        controls.append(control)
        got += pdus[i + 12 : i + 6 + length]
        i += 6 + length
    assert got == command
    assert controls[:-1] == [0x01] * (len(controls) - 1) and controls[-1] == 0x03
    assert len(p_data_pdus(1, command, 0)) == len(command) + 12


# --------------------------------------------------------------------------- a real SCU


def test_pynetdicom_echo_and_store(server: tuple[str, int], rec: Recorder) -> None:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(*server, ae_title="TRIAGE")
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    ds = _dataset()
    assert int(assoc.send_c_store(ds).Status) == 0
    rec.answer = Status(0xA700, "no room on the data disk")
    rsp = assoc.send_c_store(_dataset())
    assert int(rsp.Status) == 0xA700
    assert rsp.ErrorComment == "no room on the data disk"  # the peer sees why
    assoc.release()
    (first, _) = rec.stored
    assert first.sop_instance_uid == ds.SOPInstanceUID
    assert first.sop_class_uid == CTImageStorage
    assert first.transfer_syntax == ExplicitVRLittleEndian
    assert first.peer.calling_ae == "PYSCU" and first.peer.address == "127.0.0.1"
    assert bytes(first.dataset) == encoded_dataset(ds)  # as sent, not decoded and re-encoded
    _wait(lambda: [how for _, how in rec.closed] == ["released"])


def _rejection(address: tuple[str, int], **kwargs: Any) -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ a raw peer gets. (Not pynetdicom as the
    requestor here: when the RJ arrives before its requesting thread has looked at the socket,
    pynetdicom 3 takes the closed transport for a failed connection and reports an abort.)"""
    peer = RawPeer(address)
    try:
        pdu_type, body = peer.associate(**kwargs)
        assert pdu_type == 0x03, f"A-ASSOCIATE-RJ expected, got PDU type {pdu_type}"
        assert peer.closed()
        return body[1], body[2], body[3]
    finally:
        peer.close()


def test_rejections_reach_the_peer(rec: Recorder) -> None:
    srv = _server(rec, max_associations=1)
    host, port = srv.start("127.0.0.1", 0)
    try:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(Verification)
        assert _rejection((host, port), called="SOMEONE") == (1, 1, 7)
        rec.reject = Rejection(1, 1, 3)
        assert _rejection((host, port)) == (1, 1, 3)
        rec.reject = None
        held = ae.associate(host, port, ae_title="TRIAGE")
        assert held.is_established
        assert _rejection((host, port)) == (2, 3, 2)  # transient: local limit exceeded
        held.release()
        _wait(lambda: not srv.active)
        again = ae.associate(host, port, ae_title="TRIAGE")
        assert again.is_established
        again.release()
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"version": 2}, (1, 2, 2)),  # protocol version 1 not offered
        ({"app_context": "1.2.3.4"}, (1, 1, 2)),  # not the DICOM application context
    ],
)
def test_associate_rq_we_cannot_honour_is_rejected(
    raw: RawPeer, kwargs: dict[str, object], expected: tuple[int, int, int]
) -> None:
    pdu_type, body = raw.associate(**kwargs)
    assert pdu_type == 0x03
    assert tuple(body[1:4]) == expected
    assert raw.closed()


# --------------------------------------------------------------------------- framing


def test_commands_and_data_split_anyhow_are_reassembled(raw: RawPeer, rec: Recorder) -> None:
    established(raw)
    ds = _dataset()
    data = encoded_dataset(ds)
    command = command_set(0x0001, 5, data=True, sop_class=CTImageStorage)
    # The command in three fragments over two PDUs, then the data set in uneven fragments,
    # several per PDU, the last fragment one byte long.
    raw.p_data((3, 0x01, command[:10]), (3, 0x01, command[10:30]))
    raw.p_data((3, 0x03, command[30:]), (3, 0x00, data[:7]))
    raw.p_data((3, 0x00, data[7:100]), (3, 0x00, data[100:-1]))
    raw.p_data((3, 0x02, data[-1:]))
    rsp = raw.response()
    assert status_of(rsp) == 0 and struct.unpack("<H", rsp[0x0120])[0] == 5
    (got,) = rec.stored
    assert bytes(got.dataset) == data and got.message_id == 5


def test_small_peer_pdu_gets_fragmented_responses(raw: RawPeer) -> None:
    established(raw, max_pdu=40)
    raw.p_data((1, 0x03, command_set(0x0030, 9, data=False, sop_class=Verification)))
    rsp = raw.response()  # asserts each PDU fits and reassembles
    assert status_of(rsp) == 0 and struct.unpack("<H", rsp[0x0100])[0] == 0x8030


def test_an_operation_we_do_not_serve_gets_0211(raw: RawPeer, rec: Recorder) -> None:
    established(raw)
    query = encoded_dataset(_dataset())
    raw.p_data((3, 0x03, command_set(0x0020, 11, data=True, sop_class=CTImageStorage)))
    raw.p_data((3, 0x02, query))  # its data set is read and dropped
    rsp = raw.response()
    assert status_of(rsp) == 0x0211
    assert struct.unpack("<H", rsp[0x0100])[0] == 0x8020
    # and the association goes on
    raw.p_data((1, 0x03, command_set(0x0030, 12, data=False, sop_class=Verification)))
    assert status_of(raw.response()) == 0
    assert rec.stored == []


def test_data_set_over_the_limit_is_drained_and_refused(rec: Recorder) -> None:
    srv = _server(rec, max_dataset_bytes=1000)
    address = srv.start("127.0.0.1", 0)
    peer = RawPeer(address)
    try:
        established(peer)
        big = b"\x00" * 5000
        peer.p_data((3, 0x03, command_set(0x0001, 1, data=True, sop_class=CTImageStorage)))
        for i in range(0, len(big), 600):
            last = i + 600 >= len(big)
            peer.p_data((3, 0x02 if last else 0x00, big[i : i + 600]))
        rsp = peer.response()
        assert status_of(rsp) == 0xA700 and b"limit" in rsp[0x0902]
        assert rec.stored == []
        small = encoded_dataset(_dataset())
        peer.p_data((3, 0x03, command_set(0x0001, 2, data=True, sop_class=CTImageStorage)))
        peer.p_data((3, 0x02, small))
        assert status_of(peer.response()) == 0 and len(rec.stored) == 1
    finally:
        peer.close()
        srv.stop()


# --------------------------------------------------------------------------- protocol errors


def _assert_aborted(raw: RawPeer, reason: int) -> None:
    pdu_type, body = raw.recv_pdu()
    assert pdu_type == 0x07, f"A-ABORT expected, got PDU type {pdu_type}"
    assert body[2:4] == bytes([2, reason])  # source: service provider
    assert raw.closed()


@pytest.mark.parametrize(
    ("pdvs", "reason"),
    [
        ([(9, 0x03, b"\x00" * 8)], 0x06),  # presentation context 9 was never negotiated
        ([(3, 0x02, b"\x00" * 8)], 0x05),  # a data set fragment with no command before it
        ([(3, 0x03, b"\x00\x00\x00\x00\xff")], 0x06),  # a command set cut mid-element
    ],
)
def test_pdvs_that_break_the_protocol_are_aborted(
    raw: RawPeer, rec: Recorder, pdvs: list[tuple[int, int, bytes]], reason: int
) -> None:
    established(raw)
    raw.p_data(*pdvs)
    _assert_aborted(raw, reason)
    assert rec.stored == []
    _wait(lambda: [how for _, how in rec.closed] == ["protocol"])


def test_pdv_longer_than_its_pdu_is_aborted(raw: RawPeer) -> None:
    established(raw)
    raw.sock.sendall(struct.pack(">BBI", 4, 0, 8) + struct.pack(">IBB", 100, 1, 3) + b"\x00\x00")
    _assert_aborted(raw, 0x06)


def test_unknown_pdu_type_is_aborted(raw: RawPeer) -> None:
    established(raw)
    raw.sock.sendall(b"\x09\x00\x00\x00\x00\x02\x00\x00")
    _assert_aborted(raw, 0x01)


def test_data_before_association_is_aborted(raw: RawPeer, rec: Recorder) -> None:
    raw.p_data((1, 0x03, b"\x00" * 8))
    _assert_aborted(raw, 0x02)


def test_undecodable_associate_rq_is_aborted(raw: RawPeer) -> None:
    raw.sock.sendall(b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16)
    _assert_aborted(raw, 0x06)


def test_stalled_data_set_is_aborted_after_the_dimse_timeout(rec: Recorder) -> None:
    srv = _server(rec, dimse_timeout=0.5)
    peer = RawPeer(srv.start("127.0.0.1", 0))
    try:
        established(peer)
        peer.p_data((3, 0x03, command_set(0x0001, 1, data=True, sop_class=CTImageStorage)))
        peer.p_data((3, 0x00, b"\x08\x00"))  # the data set starts, then nothing more
        start = time.monotonic()
        pdu_type, _ = peer.recv_pdu()
        assert pdu_type == 0x07 and time.monotonic() - start < 5
        assert peer.closed()
        _wait(lambda: [how for _, how in rec.closed] == ["timeout"])
    finally:
        peer.close()
        srv.stop()


def test_peer_abort_and_stop(rec: Recorder) -> None:
    srv = _server(rec)
    address = srv.start("127.0.0.1", 0)
    first = RawPeer(address)
    second = RawPeer(address)
    try:
        established(first)
        first.sock.sendall(bytes([7, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-ABORT from the peer
        assert first.closed()
        established(second)
        _wait(lambda: len(srv.active) == 1)
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        pdu_type, body = second.recv_pdu()  # the engine stopping aborts what is open
        assert pdu_type == 0x07 and body[2] == 0  # source: service user
        stopper.join(10)
        assert not stopper.is_alive() and srv.address is None
        assert sorted(how for _, how in rec.closed) == ["aborted", "shutdown"]
    finally:
        first.close()
        second.close()
        srv.stop()


def test_large_data_set_is_spooled_to_disk_and_handed_over_whole(
    rec: Recorder, tmp_path: Path
) -> None:
    seen: list[tuple[type, bytes]] = []

    def store(request: StoreRequest) -> Status:
        seen.append((type(request.dataset), bytes(memoryview(request.dataset))))
        return Status(0)

    srv = UpperLayerServer(
        Limits(ae_title="TRIAGE", spill_bytes=1000, spool_dir=tmp_path),
        [str(CTImageStorage)],
        SYNTAXES,
        Handlers(store=store),
    )
    peer = RawPeer(srv.start("127.0.0.1", 0))
    try:
        established(peer)
        data = os.urandom(10_000)
        # the raw peer proposed Verification as context 1 and CT as context 3; only CT here
        peer.p_data((3, 0x03, command_set(0x0001, 1, data=True, sop_class=CTImageStorage)))
        for i in range(0, len(data), 1500):
            peer.p_data((3, 0x02 if i + 1500 >= len(data) else 0x00, data[i : i + 1500]))
        assert status_of(peer.response()) == 0
        assert seen == [(mmap.mmap, data)]
        assert list(tmp_path.iterdir()) == []
    finally:
        peer.close()
        srv.stop()


def test_a_flood_of_idle_connections_is_turned_away_without_threads(
    rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    srv = _server(rec, max_associations=1, acse_timeout=10.0)
    address = srv.start("127.0.0.1", 0)
    idle = [RawPeer(address) for _ in range(srv.max_connections)]
    try:
        _wait(lambda: len(srv._connections) == srv.max_connections)
        threads = threading.active_count()
        late = RawPeer(address)
        pdu_type, body = late.recv_pdu()  # at once, without sending anything
        assert pdu_type == 0x03 and tuple(body[1:4]) == (2, 3, 2)  # transient, local limit
        assert late.closed()
        late.close()
        assert threading.active_count() == threads
        assert "turned away" in caplog.text
    finally:
        for peer in idle:
            peer.close()
    _wait(lambda: not srv._connections)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate(*address, ae_title="TRIAGE")
    assert assoc.is_established
    assoc.release()
    srv.stop()


def test_idle_connections_give_their_places_to_a_modality(
    rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Connections that never send an A-ASSOCIATE-RQ fill the listener; once they have been
    idle IDLE_EVICT_SECONDS, a modality's association takes the place of the oldest (they
    kept every sender out for the whole ACSE timeout - a hostile-peer audit: 24 idle
    sockets, 30 s of 'Local Limit Exceeded', renewable at will)."""
    from triage.ingest.dicom_ul import IDLE_EVICT_SECONDS

    srv = _server(rec, max_associations=1, acse_timeout=60.0)
    address = srv.start("127.0.0.1", 0)
    idle = [RawPeer(address) for _ in range(srv.max_connections)]
    try:
        _wait(lambda: len(srv._connections) == srv.max_connections)
        time.sleep(IDLE_EVICT_SECONDS + 0.2)
        for _ in range(2):  # and again: a place is free or an idle one gives its own
            ae = AE(ae_title="PYSCU")
            ae.add_requested_context(Verification)
            assoc = ae.associate(*address, ae_title="TRIAGE")
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0
            assoc.release()
        assert "without an A-ASSOCIATE-RQ" in caplog.text
        assert idle[0].closed()  # the oldest gave its place
    finally:
        for peer in idle:
            peer.close()
        srv.stop()


def test_release_is_answered_and_the_peer_reads_it(raw: RawPeer, rec: Recorder) -> None:
    established(raw)
    raw.sock.sendall(bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
    assert raw.recv_pdu() == (0x06, b"\x00\x00\x00\x00")
    assert raw.closed()
    _wait(lambda: [how for _, how in rec.closed] == ["released"])


def test_a_trickled_associate_rq_is_cut_at_the_acse_timeout(rec: Recorder) -> None:
    """A peer sending its request a byte at a time, each byte within the timeout, still
    gets no more than the ACSE timeout in all."""
    srv = _server(rec, acse_timeout=1.0)
    peer = RawPeer(srv.start("127.0.0.1", 0))
    try:
        rq = associate_rq()
        start = time.monotonic()
        reply = b""
        for i in range(len(rq)):  # one byte every 0.1 s: each read is quick, the whole is not
            try:
                peer.sock.sendall(rq[i : i + 1])
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - start > 4:
                break
        peer.sock.settimeout(5)
        try:
            reply = peer.sock.recv(100)
        except OSError:
            reply = b""
        elapsed = time.monotonic() - start
        assert reply[:1] in (b"", b"\x07") and elapsed < 4  # closed (after an A-ABORT)
        assert rec.closed == []  # never associated
    finally:
        peer.close()
        srv.stop()


def test_negotiation_is_remembered_per_request_items(rec: Recorder) -> None:
    """The same proposed contexts from two AE titles: negotiated once, and each AC echoes
    its own request's AE titles; the association check still sees each calling AE."""
    srv = _server(rec)
    address = srv.start("127.0.0.1", 0)
    seen: list[str] = []
    srv.handlers.check = lambda peer: seen.append(peer.calling_ae)
    try:
        replies = []
        for calling in ("CT1", "CT2"):
            peer = RawPeer(address)
            try:
                pdu_type, body = peer.associate(calling=calling)
                assert pdu_type == 0x02
                replies.append(body)
                peer.p_data((1, 0x03, command_set(0x0030, 1, data=False, sop_class=Verification)))
                assert status_of(peer.response()) == 0
            finally:
                peer.close()
        assert seen == ["CT1", "CT2"] and len(srv._negotiated) == 1
        assert replies[0][20:36].strip() == b"CT1" and replies[1][20:36].strip() == b"CT2"
        assert replies[0][:4] == replies[1][:4] and replies[0][36:] == replies[1][36:]
        peer = RawPeer(address)  # other items (a different maximum PDU): negotiated anew
        try:
            assert peer.associate(max_pdu=1000)[0] == 0x02
        finally:
            peer.close()
        assert len(srv._negotiated) == 2
    finally:
        srv.stop()


def test_non_ascii_uids_in_a_command_still_get_a_response(raw: RawPeer, rec: Recorder) -> None:
    established(raw)
    command = parse_command(command_set(0x0001, 3, data=True, sop_class=CTImageStorage))
    command[0x1000] = "1.2.\u00e9\u00e9".encode("latin-1")
    body = b"".join(struct.pack("<HHI", 0, e, len(v)) + v for e, v in sorted(command.items()) if e)
    raw.p_data((3, 0x03, struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", len(body)) + body))
    raw.p_data((3, 0x02, encoded_dataset(_dataset())))
    rsp = raw.response()
    assert status_of(rsp) == 0 and rsp[0x1000].startswith(b"1.2.")


def test_an_oversized_associate_rq_is_aborted(raw: RawPeer) -> None:
    raw.sock.sendall(b"\x01\x00" + (2 << 20).to_bytes(4, "big") + b"\x00" * 1000)
    _assert_aborted(raw, 0x06)


# --------------------------------------------------------------------------- sink and after


@dataclass
class _Sink:
    fragments: list[bytes] = field(default_factory=list)
    discarded: int = 0

    def add(self, fragment: bytearray) -> None:
        self.fragments.append(bytes(fragment))

    def discard(self) -> None:
        self.discarded += 1


def _sink_server(
    store: Any, sinks: list[_Sink], starts: list[Any], **limits: Any
) -> UpperLayerServer:
    def begin(start: Any) -> _Sink:
        starts.append(start)
        sinks.append(_Sink())
        return sinks[-1]

    return UpperLayerServer(
        Limits(ae_title="TRIAGE", **limits),
        [str(CTImageStorage)],
        SYNTAXES,
        Handlers(store=store, begin=begin),
    )


def test_the_sink_gets_every_fragment_as_it_arrives_and_after_runs_once_answered() -> None:
    sinks: list[_Sink] = []
    starts: list[Any] = []
    answered = threading.Event()
    order: list[str] = []

    def after() -> None:
        # The peer must already hold the response: it sets `answered` only once it has it.
        order.append("after" if answered.wait(5) else "after, before the response")

    def store(request: StoreRequest) -> Status:
        assert request.sink is sinks[-1]
        # by now every fragment went to the sink, in order
        assert b"".join(request.sink.fragments) == bytes(memoryview(request.dataset))
        request.after = after
        return Status(0)

    srv = _sink_server(store, sinks, starts)
    peer = RawPeer(srv.start("127.0.0.1", 0))
    try:
        established(peer, calling="SINKPEER")
        data = os.urandom(5000)
        command = command_set(0x0001, 1, data=True, sop_class=CTImageStorage)
        peer.p_data((3, 0x03, command))
        for i in range(0, len(data), 700):
            peer.p_data((3, 0x02 if i + 700 >= len(data) else 0x00, data[i : i + 700]))
        assert status_of(peer.response()) == 0
        answered.set()
        peer.sock.sendall(bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-RELEASE-RQ
        assert peer.recv_pdu()[0] == 0x06  # read only after `after` returned
        assert order == ["after"]
        (start,) = starts
        assert start.sop_class_uid == CTImageStorage and start.peer.calling_ae == "SINKPEER"
        assert start.transfer_syntax == ExplicitVRLittleEndian
        (sink,) = sinks
        assert b"".join(sink.fragments) == data and len(sink.fragments) == 8
        assert sink.discarded == 1  # the caller always discards; a used sink ignores it
    finally:
        peer.close()
        srv.stop()


def test_the_sink_is_discarded_when_the_transfer_breaks_off(tmp_path: Path) -> None:
    sinks: list[_Sink] = []
    stored: list[StoreRequest] = []

    def store(request: StoreRequest) -> Status:
        stored.append(request)
        return Status(0)

    srv = _sink_server(store, sinks, [], spill_bytes=1000, spool_dir=tmp_path)
    address = srv.start("127.0.0.1", 0)
    aborted, spilled = RawPeer(address), RawPeer(address)
    try:
        established(aborted)
        aborted.p_data((3, 0x03, command_set(0x0001, 1, data=True, sop_class=CTImageStorage)))
        aborted.p_data((3, 0x00, b"\x08\x00" * 100))
        aborted.sock.sendall(bytes([7, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-ABORT mid-data set
        assert aborted.closed()
        _wait(lambda: len(sinks) == 1 and sinks[0].discarded == 1)
        assert stored == []
        # a data set that outgrows the memory spool is not written twice: the sink is dropped
        established(spilled)
        spilled.p_data((3, 0x03, command_set(0x0001, 2, data=True, sop_class=CTImageStorage)))
        for last in (False, False, True):
            spilled.p_data((3, 0x02 if last else 0x00, os.urandom(600)))
        assert status_of(spilled.response()) == 0
        assert sinks[1].discarded == 1 and len(sinks[1].fragments) == 1
        assert stored[0].sink is None
    finally:
        aborted.close()
        spilled.close()
        srv.stop()


# --------------------------------------------------------------------------- operation vs context


def _echo(raw: RawPeer, message_id: int, context_id: int = 1, sop_class: str = "") -> int:
    sop_class = sop_class or str(Verification)
    raw.p_data((context_id, 0x03, command_set(0x0030, message_id, data=False, sop_class=sop_class)))
    return status_of(raw.response())


def _store(raw: RawPeer, message_id: int, context_id: int, sop_class: str) -> dict[int, bytes]:
    ds = _dataset()
    command = command_set(
        0x0001, message_id, data=True, sop_class=sop_class, sop_instance=ds.SOPInstanceUID
    )
    raw.p_data((context_id, 0x03, command))
    raw.p_data((context_id, 0x02, encoded_dataset(ds)))
    return raw.response()


@pytest.mark.parametrize(
    ("context_id", "sop_class"),
    [
        (1, str(CTImageStorage)),  # a CT image on the Verification context
        (3, str(MRImageStorage)),  # an MR image on the CT context
        (3, ""),  # no Affected SOP Class UID: nothing says what it is
    ],
)
def test_a_c_store_off_its_context_gets_0122_and_nothing_is_stored(
    raw: RawPeer, rec: Recorder, context_id: int, sop_class: str
) -> None:
    established(raw)
    rsp = _store(raw, 1, context_id, sop_class)
    assert status_of(rsp) == 0x0122  # SOP Class not supported
    assert struct.unpack("<H", rsp[0x0100])[0] == 0x8001
    assert rsp[0x0902].strip()  # the Error Comment says why
    assert rec.stored == [] and rec.begun == []  # not handed over, no streamed write begun
    # the association goes on: Verification and a CT on its own context still work
    assert _echo(raw, 2) == 0
    assert status_of(_store(raw, 3, 3, str(CTImageStorage))) == 0
    assert len(rec.stored) == len(rec.begun) == 1


def test_a_c_echo_off_a_verification_context_gets_0122(raw: RawPeer, rec: Recorder) -> None:
    established(raw)
    assert _echo(raw, 1, context_id=3, sop_class=str(CTImageStorage)) == 0x0122
    assert _echo(raw, 2, context_id=3, sop_class=str(Verification)) == 0x0122
    assert _echo(raw, 3, context_id=1, sop_class=str(CTImageStorage)) == 0x0122
    assert _echo(raw, 4) == 0  # and then a proper one
    assert rec.stored == []


def test_refusals_are_logged_and_counted(rec: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    srv = _server(rec)
    peer = RawPeer(srv.start("127.0.0.1", 0))
    try:
        established(peer, calling="MODALITY")
        assert status_of(_store(peer, 1, 1, str(CTImageStorage))) == 0x0122
        assert _echo(peer, 2, context_id=3) == 0x0122
        assert _echo(peer, 3) == 0
        peer.sock.sendall(bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # a release between messages
        assert peer.recv_pdu()[0] == 0x06
        _wait(lambda: not srv.active)
        counts = srv.counters.snapshot()
        assert counts["sop_class_refused"] == 2 and counts["released_mid_message"] == 0
        assert "MODALITY" in caplog.text and str(CTImageStorage) in caplog.text
    finally:
        peer.close()
        srv.stop()


def _ac_results_and_roles(
    body: bytes,
) -> tuple[dict[int, int | None], dict[str, tuple[bool | None, bool | None]]]:
    ac = associate_ac(body)
    results = {
        int(cx.context_id or 0): cx.result for cx in ac.presentation_context_definition_results_list
    }
    roles = {
        str(item.sop_class_uid): (item.scu_role, item.scp_role)
        for item in ac.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
    }
    return results, roles


def test_a_requestor_that_wants_to_be_storage_scp_only_gets_its_context_rejected(
    raw: RawPeer, rec: Recorder
) -> None:
    """We are the SCP of every storage SOP class, never its SCU: a requestor proposing to be
    the SCP only (as for C-GET) gets that context rejected, not silently defaulted."""
    pdu_type, body = raw.associate(roles={str(CTImageStorage): (False, True)})
    assert pdu_type == 0x02
    results, roles = _ac_results_and_roles(body)
    assert results == {1: 0x00, 3: 0x01}  # CT: rejected by the acceptor (user)
    assert roles == {}
    raw.p_data((3, 0x03, command_set(0x0001, 1, data=True, sop_class=CTImageStorage)))
    _assert_aborted(raw, 0x06)  # not an accepted context
    assert rec.stored == []


def test_a_requestor_offering_both_roles_is_the_scu(raw: RawPeer, rec: Recorder) -> None:
    pdu_type, body = raw.associate(roles={str(CTImageStorage): (True, True)})
    assert pdu_type == 0x02
    results, roles = _ac_results_and_roles(body)
    assert results == {1: 0x00, 3: 0x00}
    assert roles == {str(CTImageStorage): (True, False)}  # it may be SCU, not SCP
    assert status_of(_store(raw, 1, 3, str(CTImageStorage))) == 0
    assert len(rec.stored) == 1


# --------------------------------------------------------------------------- release mid-message


@pytest.mark.parametrize("cut", ["data set", "command"])
def test_release_in_the_middle_of_a_message_is_answered_logged_counted_and_stores_nothing(
    caplog: pytest.LogCaptureFixture, cut: str
) -> None:
    sinks: list[_Sink] = []
    stored: list[StoreRequest] = []

    def store(request: StoreRequest) -> Status:
        stored.append(request)
        return Status(0)

    srv = _sink_server(store, sinks, [])
    peer = RawPeer(srv.start("127.0.0.1", 0))
    sop_instance = generate_uid()
    try:
        established(peer, calling="HALFWAY")
        command = command_set(
            0x0001, 1, data=True, sop_class=CTImageStorage, sop_instance=sop_instance
        )
        if cut == "data set":
            peer.p_data((3, 0x03, command))
            peer.p_data((3, 0x00, b"\x08\x00" * 500))  # some, not all, of the data set
        else:
            peer.p_data((3, 0x01, command[:20]))  # some, not all, of the command set
        peer.sock.sendall(bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-RELEASE-RQ
        assert peer.recv_pdu() == (0x06, b"\x00\x00\x00\x00")  # A-RELEASE-RP
        assert peer.closed()
        _wait(lambda: not srv.active)
        assert stored == []
        assert all(sink.discarded for sink in sinks)  # the streamed file, if any, removed
        assert len(sinks) == (1 if cut == "data set" else 0)
        assert srv.counters.snapshot()["released_mid_message"] == 1
        (warning,) = [r for r in caplog.records if "A-RELEASE-RQ in the middle" in r.message]
        assert warning.levelname == "WARNING"
        assert "127.0.0.1" in warning.message and "HALFWAY" in warning.message
        if cut == "data set":
            assert sop_instance in warning.message and "1000 bytes" in warning.message
        else:
            assert "SOP Instance unknown" in warning.message
    finally:
        peer.close()
        srv.stop()


# --------------------------------------------------------------------------- shared negotiation


def test_negotiated_contexts_are_immutable_and_one_association_cannot_change_anothers(
    rec: Recorder,
) -> None:
    """Two associations with the same request share one remembered negotiation: its contexts
    are frozen values in a read-only mapping, so neither can change what the other sees."""
    srv = _server(rec)
    address = srv.start("127.0.0.1", 0)
    first, second = RawPeer(address), RawPeer(address)
    try:
        established(first)
        established(second)
        _wait(lambda: len(srv.active) == 2)
        a, b = srv.active
        assert dict(a.contexts) == dict(b.contexts) and len(srv._negotiated) == 1
        context = a.contexts[3]
        with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
            context.abstract_syntax = str(MRImageStorage)  # type: ignore[misc]
        with pytest.raises(AttributeError):
            context.as_scp = False  # type: ignore[misc]
        with pytest.raises(TypeError):
            a.contexts[5] = context  # type: ignore[index]
        with pytest.raises(TypeError):
            del a.contexts[1]  # type: ignore[attr-defined]
        assert b.contexts[3].abstract_syntax == str(CTImageStorage) and 1 in b.contexts
        (negotiated,) = srv._negotiated.values()
        assert negotiated.accepted[3].abstract_syntax == str(CTImageStorage)
        # and both associations still store a CT on context 3
        assert status_of(_store(second, 1, 3, str(CTImageStorage))) == 0
        assert status_of(_store(first, 1, 3, str(CTImageStorage))) == 0
        assert len(rec.stored) == 2
    finally:
        first.close()
        second.close()
        srv.stop()
