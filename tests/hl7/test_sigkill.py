"""The engine killed with SIGKILL in the middle of an HL7 stream, then restarted: every message
answered AA is stored exactly once, and the resends of the unanswered ones are taken once."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from support.engine import Engine

from triage.errors import RISUnavailable
from triage.hl7.ack import read_ack
from triage.hl7.client import MLLPConnection
from triage.synth.orders import order_message

pytestmark = pytest.mark.integration


def test_sigkill_in_an_hl7_stream(tmp_path: Path) -> None:
    engine = Engine(tmp_path, quick=False, log_level="WARNING")
    messages = [
        order_message(accession=f"K{i:04d}", patient_id=f"P{i % 7}", control_id=f"KILL{i:04d}")
        for i in range(400)
    ]
    acked: list[str] = []
    port = engine.start().hl7_port
    try:
        stop = threading.Event()

        def stream() -> None:
            try:
                with MLLPConnection("127.0.0.1", port, timeout=5) as conn:
                    for msg in messages:
                        if stop.is_set():
                            return
                        code, acked_id, _ = read_ack(conn.exchange(msg))
                        assert code == "AA"
                        acked.append(acked_id)
            except RISUnavailable:
                return  # the engine died under us

        sender = threading.Thread(target=stream)
        sender.start()
        deadline = time.monotonic() + 30
        while len(acked) < 60 and time.monotonic() < deadline and sender.is_alive():
            time.sleep(0.005)
        engine.kill(signal.SIGKILL, timeout=10)  # mid-stream
        sender.join(10)
        stop.set()
        assert 60 <= len(acked) < len(messages), len(acked)
        assert acked == [f"KILL{i:04d}" for i in range(len(acked))]

        # restart on the same data directory; the RIS resends what was not acknowledged,
        # starting with the message in flight (which may or may not have been committed)
        port = engine.start().hl7_port
        with MLLPConnection("127.0.0.1", port, timeout=5) as conn:
            resent = [read_ack(conn.exchange(m))[:2] for m in messages[len(acked) :]]
            # and, for good measure, one message that had been acknowledged already
            again = read_ack(conn.exchange(messages[0]))[:2]
        assert all(code == "AA" for code, _ in resent) and again == ("AA", "KILL0000")
    finally:
        engine.stop()
    db = sqlite3.connect(engine.data / "triage.db")
    counts = dict(
        db.execute("SELECT control_id, count(*) FROM hl7message GROUP BY control_id").fetchall()
    )
    orders = db.execute('SELECT count(*), count(DISTINCT accession_number) FROM "order"').fetchone()
    db.close()
    assert counts == {f"KILL{i:04d}": 1 for i in range(len(messages))}  # each stored once
    assert orders == (len(messages), len(messages))
