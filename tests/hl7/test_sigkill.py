"""The engine killed with SIGKILL in the middle of an HL7 stream, then restarted: every message
answered AA is stored exactly once, and the resends of the unanswered ones are taken once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port

from triage.errors import RISUnavailable
from triage.hl7.ack import read_ack
from triage.hl7.client import MLLPConnection
from triage.synth.orders import order_message

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent.parent


def start_engine(tmp: Path, data: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(os.environ)
    env.update(
        TRIAGE_DATA_DIR=str(data),
        TRIAGE_DICOM_PORT="0",
        TRIAGE_HL7_PORT="0",
        TRIAGE_HTTP_PORT="0",
        TRIAGE_TRITON_URL=f"127.0.0.1:{free_port()}",  # nothing there: no local Triton started
        TRIAGE_LOG_LEVEL="WARNING",
    )
    for key in ("TRIAGE_CONFIG", "TRIAGE_RIS_HOST", "TRIAGE_RIS_PORT"):
        env.pop(key, None)
    with contextlib.suppress(FileNotFoundError):
        (data / "endpoints.json").unlink()  # left by a killed engine
    log = (tmp / "engine.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "triage.cli", "serve"],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError((tmp / "engine.log").read_text())
        try:
            ep = json.loads((data / "endpoints.json").read_text())
            return proc, int(ep["hl7"][1])
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("engine did not write endpoints.json")


def test_sigkill_in_an_hl7_stream(tmp_path: Path) -> None:
    data = tmp_path / "var"
    messages = [
        order_message(accession=f"K{i:04d}", patient_id=f"P{i % 7}", control_id=f"KILL{i:04d}")
        for i in range(400)
    ]
    acked: list[str] = []
    proc, port = start_engine(tmp_path, data)
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
        proc.send_signal(signal.SIGKILL)  # mid-stream
        proc.wait(timeout=10)
        sender.join(10)
        stop.set()
        assert 60 <= len(acked) < len(messages), len(acked)
        assert acked == [f"KILL{i:04d}" for i in range(len(acked))]

        # restart on the same data directory; the RIS resends what was not acknowledged,
        # starting with the message in flight (which may or may not have been committed)
        proc, port = start_engine(tmp_path, data)
        with MLLPConnection("127.0.0.1", port, timeout=5) as conn:
            resent = [read_ack(conn.exchange(m))[:2] for m in messages[len(acked) :]]
            # and, for good measure, one message that had been acknowledged already
            again = read_ack(conn.exchange(messages[0]))[:2]
        assert all(code == "AA" for code, _ in resent) and again == ("AA", "KILL0000")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    db = sqlite3.connect(data / "triage.db")
    counts = dict(
        db.execute("SELECT control_id, count(*) FROM hl7message GROUP BY control_id").fetchall()
    )
    orders = db.execute('SELECT count(*), count(DISTINCT accession_number) FROM "order"').fetchone()
    db.close()
    assert counts == {f"KILL{i:04d}": 1 for i in range(len(messages))}  # each stored once
    assert orders == (len(messages), len(messages))
