"""SIGKILL in the middle of a C-STORE transfer: what was answered Success survives.

The engine runs as a subprocess (``python -m triage.cli serve``; an unreachable external
Triton, so nothing heavy starts). dcmtk's storescu sends the 300-slice CT with ``-v``, which
prints ``Received Store Response (Success)`` after each acknowledged file; the engine is
killed with SIGKILL once a third of them are acknowledged, then restarted on the same data
directory. Every acknowledged instance must be on disk and indexed, and the study must
complete (no instance for ``study_stable_seconds``) after the restart.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from conftest import dcmtk, free_port
from ct_fixtures import ct300_study

from triage.synth.ct import SyntheticStudy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def ct300(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return ct300_study(tmp_path_factory)


def _wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Engine:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.data = work / "var"
        self.env = dict(os.environ)
        self.env.update(
            TRIAGE_DATA_DIR=str(self.data),
            TRIAGE_DICOM_PORT="0",
            TRIAGE_HL7_PORT="0",
            TRIAGE_HTTP_PORT="0",
            TRIAGE_TRITON_URL=f"127.0.0.1:{free_port()}",  # nothing listens: AI waits
            TRIAGE_STUDY_STABLE_SECONDS="2",
            TRIAGE_COMPLETION_POLL_SECONDS="0.3",
            TRIAGE_LOG_LEVEL="INFO",
        )
        for key in ("TRIAGE_CONFIG", "TRIAGE_RIS_HOST", "TRIAGE_RIS_PORT"):
            self.env.pop(key, None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> int:
        """Start the engine; return its DICOM port."""
        self.runs += 1
        endpoints = self.data / "endpoints.json"
        endpoints.unlink(missing_ok=True)
        log = (self.work / f"engine{self.runs}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "triage.cli", "serve"],
            cwd=self.work,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def port() -> int | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(self.log())
            try:
                return int(json.loads(endpoints.read_text())["dicom"][1])
            except (OSError, ValueError, KeyError):
                return None

        return int(_wait_for(port, 60, "the engine's DICOM port"))

    def log(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.work.glob("engine*.log")))

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        db = sqlite3.connect(f"file:{self.data / 'triage.db'}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = Engine(tmp_path)
    try:
        yield e
    finally:
        e.stop()


def test_sigkill_mid_transfer_loses_no_acknowledged_instance(
    engine: Engine, ct300: SyntheticStudy
) -> None:
    port = engine.start()
    storescu = subprocess.Popen(
        [dcmtk("storescu"), "-v", "-aet", "MODALITY", "-aec", "TRIAGE", "127.0.0.1", str(port)]
        + [str(f) for f in ct300.files],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )
    acknowledged: list[Path] = []
    killed = threading.Event()

    def follow() -> None:
        assert storescu.stdout is not None
        current: Path | None = None
        for raw in storescu.stdout:
            line = raw.decode(errors="replace")
            if "Sending file:" in line:
                current = Path(line.split("Sending file:", 1)[1].strip())
            elif "Received Store Response (Success)" in line and current is not None:
                acknowledged.append(current)
                if len(acknowledged) == 100:
                    engine.kill()  # SIGKILL, mid-transfer
                    killed.set()

    reader = threading.Thread(target=follow)
    reader.start()
    assert killed.wait(180), "storescu never got 100 acknowledgements"
    storescu.wait(timeout=60)
    reader.join(timeout=30)
    assert storescu.returncode != 0  # the transfer was cut
    assert 100 <= len(acknowledged) < 300

    engine.start()  # same data directory: start-up recovery runs before the SCP listens
    assert "DICOM start-up recovery" in engine.log()
    sop_uids = [
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in acknowledged
    ]
    indexed = dict(engine.query("SELECT sop_instance_uid, path FROM instance"))
    missing = [uid for uid in sop_uids if uid not in indexed]
    assert not missing, f"{len(missing)} acknowledged instance(s) lost: {missing[:3]}"
    for uid in sop_uids:
        stored = engine.data / str(indexed[uid])
        assert pydicom.dcmread(stored).SOPInstanceUID == uid
    assert not list((engine.data / "dicom").rglob(".*.tmp"))
    ((count,),) = engine.query(
        "SELECT instance_count FROM study WHERE study_uid = ?", ct300.study_uid
    )
    assert count == len(indexed) >= len(acknowledged)

    def completed() -> bool:
        ((state, completed_at),) = engine.query(
            "SELECT state, completed_at FROM study WHERE study_uid = ?", ct300.study_uid
        )
        return state != "receiving" and completed_at is not None

    _wait_for(completed, 30, "the study to complete after the restart")
