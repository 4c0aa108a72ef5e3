"""Hostile and broken DICOM peers against the running engine: 50 associations against a limit
of 10, a PDU claiming 4 GiB, 200 fuzzed C-STORE streams (seeded byte flips and truncations of
a real storescu's stream) and UIDs with ``../``. Transient rejects or failure statuses only;
the engine's memory grows by less than 100 MB, nothing is written outside its data directory,
and it stores normally afterwards. docs/reliability.md, section 4."""

from __future__ import annotations

import random
import socket
import struct
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from support.dcmtk import store
from support.engine import Engine

from triage.synth.ct import write_head_ct

pytestmark = pytest.mark.integration

ASSOCIATIONS, LIMIT, FUZZED, SEED = 50, 10, 200, 14
MEMORY_LIMIT = 100 * 1024 * 1024


def associate_rq() -> bytes:
    """An A-ASSOCIATE-RQ proposing CT Image Storage (context 1), Explicit VR Little Endian."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID("1.2.840.10008.3.1.1.1")
    primitive.calling_ae_title = "HOSTILE"
    primitive.called_ae_title = "TRIAGE"
    cx = build_context(CTImageStorage, [ExplicitVRLittleEndian])
    cx.context_id = 1
    primitive.presentation_context_definition_list = [cx]
    item = MaximumLengthNotification()
    item.maximum_length_received = 0
    primitive.user_information = [item]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def read_pdus(sock: socket.socket, timeout: float = 15) -> list[tuple[int, bytes]]:
    """Every PDU the engine sends until it closes the connection (or ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    pdus, at = [], 0
    while at + 6 <= len(data):
        kind, length = data[at], struct.unpack(">I", data[at + 2 : at + 6])[0]
        pdus.append((kind, data[at + 6 : at + 6 + length]))
        at += 6 + length
    return pdus


def first_pdu(sock: socket.socket) -> tuple[int, bytes]:
    sock.settimeout(15)
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        assert chunk, "closed without a PDU"
        head += chunk
    length = struct.unpack(">I", head[2:])[0]
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return head[0], body


def c_store_statuses(pdus: list[tuple[int, bytes]]) -> list[int]:
    """Status (0000,0900) of each C-STORE-RSP among P-DATA-TF PDUs (implicit VR command)."""
    statuses = []
    for kind, body in pdus:
        at = body.find(b"\x00\x00\x00\x09\x02\x00\x00\x00") if kind == 0x04 else -1
        if at >= 0:
            statuses.append(struct.unpack("<H", body[at + 8 : at + 10])[0])
    return statuses


def capture_store(port: int, files: list[Path]) -> bytes:
    """What dcmtk's storescu sends to store ``files`` (recorded by a relay to the engine)."""
    server = socket.create_server(("127.0.0.1", 0))
    recorded = bytearray()

    def relay() -> None:
        conn, _ = server.accept()
        upstream = socket.create_connection(("127.0.0.1", port))

        def back() -> None:
            while data := upstream.recv(1 << 16):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=back, daemon=True)
        t.start()
        while data := conn.recv(1 << 16):
            recorded.extend(data)
            upstream.sendall(data)
        upstream.shutdown(socket.SHUT_WR)
        t.join(10)
        conn.close()
        upstream.close()

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    scu = store(server.getsockname()[1], files)
    thread.join(10)
    server.close()
    assert [s for _, s in scu.responses] == ["Success"] * len(files)
    return bytes(recorded)


def mutate(stream: bytes, rng: random.Random) -> bytes:
    """Flip 1-16 random bytes, or cut, or both, after the A-ASSOCIATE-RQ: in the P-DATA-TF
    PDUs (command, data set) and the A-RELEASE-RQ."""
    data = bytearray(stream)
    start = 6 + struct.unpack(">I", stream[2:6])[0]
    how = rng.choice(("flip", "truncate", "both"))
    if how in ("flip", "both"):
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(start, len(data))] ^= rng.randint(1, 255)
    if how in ("truncate", "both"):
        del data[rng.randrange(start, len(data)) :]
    return bytes(data)


def replay(port: int, data: bytes) -> str:
    """Send ``data`` as a peer that then stops writing; what the engine answered, in short."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the engine closed first (A-ABORT, reject)
        pdus = read_pdus(sock)
    names = {1: "RQ", 2: "AC", 3: "RJ", 4: "P-DATA", 5: "RELEASE-RQ", 6: "RP", 7: "ABORT"}
    kinds = "+".join(dict.fromkeys(names.get(k, f"?{k}") for k, _ in pdus)) or "closed"
    statuses = c_store_statuses(pdus)
    return kinds + "".join(f" {s:#06x}" for s in statuses)


def outside(work: Path, data: Path) -> set[Path]:
    """Files under the test's folder that are not the engine's (data directory, logs)."""
    return {p for p in work.rglob("*") if p.is_file() and data not in p.parents}


def test_hostile_peers(tmp_path: Path) -> None:
    study = write_head_ct(
        tmp_path / "study",
        hemorrhage=False,
        seed=4,
        patient_id="PHOST",
        accession="HOST1",
        n_slices=6,
        size=64,
    )
    engine = Engine(
        tmp_path,
        dicom_max_associations=LIMIT,
        dicom_acse_timeout_seconds=3,
        dicom_dimse_timeout_seconds=3,
        dicom_network_timeout_seconds=5,
    )
    held: list[socket.socket] = []
    try:
        engine.start()
        port = engine.dicom_port
        stream = capture_store(port, study.files[:1])  # also warms the engine up
        files_before = outside(tmp_path, engine.data)
        rss_before = engine.rss_bytes()

        # 50 associations at once against a limit of 10, all held until all are answered.
        answers: Counter[str] = Counter()
        for _ in range(ASSOCIATIONS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=15)
            held.append(sock)
            sock.sendall(associate_rq())
        for sock in held:
            kind, body = first_pdu(sock)
            # A-ASSOCIATE-RJ: result (1 permanent, 2 transient), source, reason
            answers["AC" if kind == 2 else f"RJ {body[1]}/{body[2]}/{body[3]}"] += 1
        for sock in held:
            sock.close()
        held.clear()
        # 10 accepted; 40 rejected transient, service provider (ACSE), local limit exceeded
        assert answers == {"AC": LIMIT, "RJ 2/3/2": ASSOCIATIONS - LIMIT}, answers

        # A PDU claiming 4 GiB, after a valid association and as the first PDU.
        claims = []
        for prefix in (associate_rq(), b""):
            with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
                if prefix:
                    sock.sendall(prefix)
                    assert first_pdu(sock)[0] == 0x02
                sock.sendall(b"\x04\x00" + struct.pack(">I", 0xFFFFFFFF) + b"\x00" * 64)
                claims.append([k for k, _ in read_pdus(sock)])
        assert claims == [[0x07], [0x07]], claims  # A-ABORT, connection closed

        # 200 fuzzed C-STORE streams, eight peers at a time.
        rng = random.Random(SEED)
        mutants = [mutate(stream, rng) for _ in range(FUZZED)]
        with ThreadPoolExecutor(8) as pool:
            outcomes = Counter(pool.map(lambda m: replay(port, m), mutants))
        assert engine.proc is not None and engine.proc.poll() is None
        # The association request was intact: accepted; then a status, an A-ABORT, or (cut
        # short) the connection closed. Never 0x0110, the engine's "unexpected bug" status.
        assert all(o.startswith("AC") for o in outcomes), outcomes
        assert not [o for o in outcomes if "0x0110" in o], outcomes

        # UIDs with ../ in the SOP Instance UID and in the Study Instance UID.
        ae = AE(ae_title="HOSTILE")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        traversal = []
        for n, (field, value) in enumerate(
            (
                ("SOPInstanceUID", "1.2.3/../../../../../FAULTESCAPE1"),
                ("StudyInstanceUID", "../../../../FAULTESCAPE2"),
                ("SeriesInstanceUID", "1/../../../FAULTESCAPE3"),
            ),
            start=1,
        ):
            ds = pydicom.dcmread(study.files[n])
            setattr(ds, field, value)
            if field == "SOPInstanceUID":
                ds.file_meta.MediaStorageSOPInstanceUID = UID(value)
            assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
            assert assoc.is_established
            rsp = assoc.send_c_store(ds)
            assoc.release()
            traversal.append(int(rsp.Status) if rsp else -1)
        # Answered (Success: kept under a hashed file name, as docs/dicom-conformance.md says
        # for non-conformant UIDs; or a failure status), never outside the data directory.
        assert all(status == 0x0000 or status >= 0xA000 for status in traversal), traversal
        rows = engine.query(
            "SELECT path FROM instance WHERE sop_instance_uid LIKE '%FAULTESCAPE%'"
            " OR study_uid LIKE '%FAULTESCAPE%' OR series_uid LIKE '%FAULTESCAPE%'"
        )
        assert len(rows) == traversal.count(0x0000)
        for (path,) in rows:
            assert ".." not in Path(path).parts
            assert (engine.data / path).resolve().is_relative_to(engine.data.resolve())
            assert (engine.data / path).is_file()
        assert not list(Path("/").glob("FAULTESCAPE*"))
        assert not list(tmp_path.parent.rglob("FAULTESCAPE*"))
        assert not [p for p in engine.data.rglob("*FAULTESCAPE*")]

        rss_after = engine.rss_bytes()
        growth = rss_after - rss_before
        assert growth < MEMORY_LIMIT, f"engine RSS grew by {growth >> 20} MiB"
        assert outside(tmp_path, engine.data) == files_before  # nothing written outside
        for p in engine.data.rglob("*"):
            assert p.resolve().is_relative_to(engine.data.resolve()), p

        # And it serves: a normal store succeeds.
        after = store(port, study.files[4:])
        assert [s for _, s in after.responses] == ["Success"] * 2
        print(
            f"\nFIGURE 4: associations {dict(answers)}; 4 GiB claims -> A-ABORT; fuzzed "
            f"{FUZZED}: {dict(outcomes.most_common())}; ../ UIDs -> "
            f"{[f'{s:#06x}' for s in traversal]}; RSS {rss_before >> 20} -> {rss_after >> 20} "
            f"MiB ({growth / 2**20:+.1f} MiB)"
        )
    finally:
        for sock in held:
            sock.close()
        engine.stop()
