"""The RIS down for an hour with 1,000 updates queued (a clock the test moves, no real hour):
when it returns every update is delivered, in order per order, with no duplicate across a
restart of the sender in the middle, and one resend (same MSH-10) where the RIS stored a
message but its ACK was lost. A second test kills the sending process (SIGKILL) mid-delivery."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

from outbox_kit import RANK, Clock, add, database, rows, settings_for
from support.paths import REPO_ROOT
from support.ris_peer import FakeRIS, control_id

from triage.config import Settings
from triage.outbound.sender import OutboxSender
from triage.store import Database

ORDERS = 250
PER_ORDER = 4  # XO to A, ORU, XO to S, corrected ORU


def message(n: int, accession: str, kind: str, priority: str) -> str:
    """A small v2.5.1 ORM/ORU (these rows are marked validated: building and checking 1,000
    messages with hl7apy would take most of this test's time; test_outbox_sender checks
    validation)."""
    if kind == "ORM":
        body = f"ORM^O01^ORM_O01|U{n:05d}|P|2.5.1\rPID|1||MRN{accession}\rORC|XO"
        body += f"|||||||^^^^^{priority}\rOBR|1||||{priority}|||||||||||||{accession}"
    else:
        body = f"ORU^R01^ORU_R01|U{n:05d}|P|2.5.1\rPID|1||MRN{accession}\rORC|RE\r"
        body += f"OBR|1||||||||||||||||||{accession}\rOBX|1|ST|AI-MODEL^AI model^L||ich"
    return f"MSH|^~\\&|TRIAGE|TRIAGE|RIS|RIS|20260301080000||{body}"


def queue_updates(db: Database, orders: int = ORDERS) -> dict[str, list[str]]:
    """``orders`` x 4 updates (1,000 by default), interleaved across the orders as they would
    be raised; returns each order's control ids in queue order."""
    expected: dict[str, list[str]] = defaultdict(list)
    plan = [("ORM", "A"), ("ORU", ""), ("ORM", "S"), ("ORU", "")]
    n = 0
    for step, (kind, priority) in enumerate(plan):
        for o in range(orders):
            accession = f"ACC{o:04d}"
            n += 1
            raw = message(n, accession, kind, priority)
            add(db, raw, accession, kind=kind, priority=priority, validated=True)
            expected[accession].append(control_id(raw))
            assert len(expected[accession]) == step + 1
    return expected


def check_delivery(ris: FakeRIS, expected: dict[str, list[str]], orders: int = ORDERS) -> None:
    """Each update applied once; per order, first receipts in queue order, and no message of
    an order received before the one before it was acknowledged."""
    all_ids = [cid for ids in expected.values() for cid in ids]
    assert sorted(ris.applied) == sorted(all_ids)
    assert len(ris.applied) == len(set(ris.applied)) == orders * PER_ORDER
    order_of = {cid: acc for acc, ids in expected.items() for cid in ids}
    seen: dict[str, list[str]] = defaultdict(list)
    for cid in ris.applied:
        seen[order_of[cid]].append(cid)
    assert seen == expected
    acked: set[str] = set(ris.acked)
    for msg in ris.messages:
        ids = expected[order_of[control_id(msg)]]
        before = ids[: ids.index(control_id(msg))]
        assert set(before) <= acked


def test_ris_down_an_hour_then_back_with_a_restart_and_a_lost_ack(tmp_path) -> None:
    ris = FakeRIS()
    try:
        settings = settings_for(
            tmp_path, ris.port, retry_seconds=1.0, ris_backoff_max_seconds=300.0
        )
        db, clock = database(settings), Clock()
        expected = queue_updates(db)
        ris.down()
        sender = OutboxSender(settings, db, rank=RANK, clock=clock)
        start = clock.now
        while (clock.now - start).total_seconds() < 3600:  # one tick a second for an hour
            assert sender.send_pending() == 0
            clock.advance(1)
        tries = sender.stats.connect_times
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(tries)]
        assert gaps[:9] == [1, 2, 4, 8, 16, 32, 64, 128, 256]  # doubling from retry_seconds
        assert max(gaps) == 300 and len(tries) <= 22  # capped: ~20 tries in the hour
        assert all(r.attempts == 0 and r.failures == 0 for r in rows(db))  # nobody charged

        # The RIS returns. At the 400th message the sender is stopped (an engine restart: the
        # message in flight completes); a new sender on a new connection to the database goes
        # on. The 700th message is stored by the RIS but its ACK is lost.
        ris.up()
        ris.lose_ack.add(expected["ACC0199"][2])
        stopped = threading.Event()

        def restart_at_400(msg: str) -> None:
            if len(ris.messages) == 400:
                sender.stop()
                stopped.set()

        ris.on_message = restart_at_400
        clock.advance(300)
        while not stopped.is_set():
            sender.send_pending()
        sender.close()
        assert len(ris.applied) == 400  # nothing more after the stop
        db.dispose()
        db2 = Database(settings.resolved_database_url)
        again = OutboxSender(settings, db2, rank=RANK, clock=clock)
        for _ in range(100):
            if all(r.status == "sent" for r in rows(db2)):
                break
            again.send_pending()
            clock.advance(settings.retry_seconds)
        assert all(r.status == "sent" for r in rows(db2))
        check_delivery(ris, expected)
        duplicates = len(ris.messages) - len(ris.applied)
        assert duplicates == 1  # the lost ACK, resent with the same MSH-10; none at the restart
        lost = [m for m in ris.messages if control_id(m) == expected["ACC0199"][2]]
        assert len(lost) == 2 and lost[0] == lost[1]
    finally:
        ris.close()


SENDER_SCRIPT = """
import sys, time
from triage.config import load_settings
from triage.outbound.sender import OutboxSender
from triage.store import Database
settings = load_settings(environ={}, overrides=dict(
    data_dir=sys.argv[1], ris_host="127.0.0.1", ris_port=int(sys.argv[2]),
    retry_seconds=0.05, ris_backoff_max_seconds=0.2, ris_timeout_seconds=2))
sender = OutboxSender(settings, Database(settings.resolved_database_url), rank={})
print("ready", flush=True)
while True:
    sender.send_pending()
    time.sleep(0.01)
"""


def start_sender(settings: Settings, port: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", SENDER_SCRIPT, str(settings.data_dir), str(port)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_sending_process_killed_mid_delivery(tmp_path) -> None:
    """SIGKILL while a message waits for its ACK: after the restart that message is sent again
    with the same MSH-10 (the RIS dedupes on it); every other update arrives exactly once."""
    ris = FakeRIS()
    procs: list[subprocess.Popen[str]] = []
    try:
        settings = settings_for(tmp_path, ris.port)
        db = database(settings)
        expected = queue_updates(db, orders=50)  # 200 updates: the process start dominates
        db.dispose()
        killed = threading.Event()

        def kill_at_120(msg: str) -> None:
            if len(ris.messages) == 120 and not killed.is_set():
                os.kill(procs[0].pid, signal.SIGKILL)  # before the RIS answers
                procs[0].wait()
                killed.set()

        ris.on_message = kill_at_120
        procs.append(start_sender(settings, ris.port))
        assert killed.wait(120)
        ris.on_message = None
        procs.append(start_sender(settings, ris.port))
        deadline = time.monotonic() + 120
        while len(ris.applied) < 50 * PER_ORDER or len(ris.acked) < len(ris.applied):
            assert time.monotonic() < deadline, "delivery did not finish"
            time.sleep(0.1)
        check_delivery(ris, expected, orders=50)
        assert len(ris.messages) - len(ris.applied) == 1  # the one in flight at the kill
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        ris.close()
