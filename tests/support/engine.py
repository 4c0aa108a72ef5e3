"""The engine as a subprocess (``python -m triage.cli serve``) for the tests that need the real
thing: its own data directory, ephemeral ports read from ``<data_dir>/endpoints.json``, stopped
at the end (SIGINT, then SIGKILL) with any tritonserver it left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from support.net import free_port, wait_for
from support.procs import pid_alive
from triage.hl7.client import send_message
from triage.inference.local_triton import kill_leftovers
from triage.synth.orders import order_message

#: Short quiet period, fast polls and retries, small Triton timeouts and a quick circuit
#: breaker: the settings of an engine under test unless it asks for ``quick=False``.
QUICK: dict[str, object] = {
    "study_stable_seconds": 1,
    "completion_poll_seconds": 0.3,
    "retry_seconds": 1,
    "triton_timeout_seconds": 10,
    "triton_retry_attempts": 2,
    "triton_breaker_failures": 2,
    "triton_breaker_reset_seconds": 1,
}


SUPPORT_API_TOKEN = "support-engine-api-token"  # TRIAGE_API_TOKEN unless a test sets its own


class Engine:
    """``triage serve`` on ``work/var`` (run in ``work``, its log in ``work/engine<N>.log``),
    started and restarted as often as a test wants.

    The environment's ``TRIAGE_*`` variables are dropped; ``settings`` become ``TRIAGE_<NAME>``
    variables, over :data:`QUICK` (unless ``quick=False``). ``triton=False`` (default) points
    the engine at a Triton URL where nothing listens, without warm-up (studies that route to a
    model wait as AI pending; nothing heavy starts); ``triton=True`` lets it start and supervise
    its bundled Triton; a string is the URL of a Triton the test runs. ``ris_port``: the test
    RIS on 127.0.0.1.
    """

    def __init__(
        self,
        work: Path,
        *,
        triton: bool | str = False,
        ris_port: int | None = None,
        quick: bool = True,
        **settings: object,
    ) -> None:
        self.work = work
        self.data = work / "var"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
        env.update(
            TRIAGE_DATA_DIR=str(self.data),
            TRIAGE_DICOM_PORT="0",
            TRIAGE_HL7_PORT="0",
            TRIAGE_HTTP_PORT="0",
            TRIAGE_LOG_LEVEL="INFO",
            # /healthz shows each part's details (Triton's pid, addresses) to credentials only
            TRIAGE_API_TOKEN=SUPPORT_API_TOKEN,
        )
        if triton is False:
            env["TRIAGE_TRITON_URL"] = f"127.0.0.1:{free_port()}"  # nothing listens there
            env["TRIAGE_TRITON_WARMUP"] = "false"
        elif isinstance(triton, str):
            env["TRIAGE_TRITON_URL"] = triton
        if ris_port is not None:
            env.update(TRIAGE_RIS_HOST="127.0.0.1", TRIAGE_RIS_PORT=str(ris_port))
        for name, value in {**(QUICK if quick else {}), **settings}.items():
            env[f"TRIAGE_{name.upper()}"] = str(value)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.pids: list[int] = []
        self.endpoints: dict[str, Any] = {}

    # -- life cycle -------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> Engine:
        """Start the engine; return once endpoints.json names its three listeners."""
        assert self.proc is None or self.proc.poll() is not None, "engine already running"
        self.runs += 1
        endpoints = self.data / "endpoints.json"
        with contextlib.suppress(FileNotFoundError):
            endpoints.unlink()  # left by a killed engine
        with (self.work / f"engine{self.runs}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "triage.cli", "serve"],
                cwd=self.work,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.pids.append(self.proc.pid)

        def ready() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"engine exited:\n{self.log()[-4000:]}")
            try:
                ep = dict(json.loads(endpoints.read_text()))
            except (OSError, ValueError):
                return None
            return ep if {"http", "hl7", "dicom"} <= set(ep) else None

        self.endpoints = wait_for(ready, timeout, "the engine's endpoints.json", every=0.05)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def dicom_port(self) -> int:
        return int(self.endpoints["dicom"][1])

    @property
    def hl7_port(self) -> int:
        return int(self.endpoints["hl7"][1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.endpoints['http'][1]}"

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the process to end; its exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Stop the engine if it runs (SIGINT, then SIGKILL) and any Triton it left behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reap_triton()

    def reap_triton(self) -> None:
        """A SIGKILLed engine may leave its tritonserver (own process group) or that server's
        Python-backend stubs running: kill what is left of the group named by the pid file the
        engine keeps for that purpose."""
        pid_file = self.data / "triton" / "tritonserver.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        left = kill_leftovers(pid, self.data / "triton")
        wait_for(lambda: not any(pid_alive(p) for p in left), 10, f"{left} to die")

    # -- looking at it ------------------------------------------------------------------------
    def log(self) -> str:
        """The logs of every run, in order."""
        return "\n".join(
            p.read_text(errors="replace")
            for p in sorted(self.work.glob("engine*.log"), key=lambda p: int(p.stem[6:]))
        )

    def rss_bytes(self) -> int:
        """Resident memory of the engine process (VmRSS of /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` on the engine's SQLite database (read-only)."""
        db = sqlite3.connect(f"file:{self.data / 'triage.db'}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def health(self) -> tuple[int, dict[str, Any]]:
        """/healthz with this engine's API token: every part with its details."""
        token = self.env["TRIAGE_API_TOKEN"]
        r = httpx.get(
            f"{self.base}/healthz", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        return r.status_code, dict(r.json())

    def wait_healthy(self, timeout: float = 90) -> dict[str, Any]:
        """Wait for /healthz 200 (Triton ready and warm); the body."""
        return wait_for(
            lambda: (lambda h: h[1] if h[0] == 200 else None)(self.health()),
            timeout,
            "/healthz 200",
            every=0.2,
        )

    def dicom_files(self) -> list[Path]:
        folder = self.data / "dicom"
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []

    def order(self, accession: str, patient_id: str, study_uid: str, priority: str = "R") -> str:
        """An emergency-department order for the study, over MLLP; AA expected. The ACK."""
        ack = send_message(
            "127.0.0.1",
            self.hl7_port,
            order_message(
                accession=accession,
                patient_id=patient_id,
                priority=priority,
                patient_class="E",
                study_uid=study_uid,
            ),
            timeout=10,
        )
        assert "MSA|AA|" in ack, ack
        return ack
