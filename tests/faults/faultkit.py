"""What the fault tests share: the engine as a subprocess (``triage serve``, ephemeral ports,
addresses read from ``<data_dir>/endpoints.json``), dcmtk's storescu followed response by
response, and small polling and counting helpers.

A plain module (not a conftest.py, which would shadow tests/conftest.py for
``from conftest import ...``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pydicom
from conftest import dcmtk, free_port
from pydicom.uid import generate_uid

from triage.hl7.client import send_message
from triage.synth.ct import SyntheticStudy, write_head_ct
from triage.synth.orders import order_message

T = TypeVar("T")

_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Engine:
    """``python -m triage.cli serve`` on ``work/var``, restarted as often as a test wants.

    ``triton=False`` (default) points the engine at a Triton URL where nothing listens (studies
    that route to a model wait as AI pending; nothing heavy starts); ``triton=True`` lets it
    start and supervise its bundled Triton. ``settings`` become ``TRIAGE_<NAME>`` variables.
    """

    def __init__(
        self,
        work: Path,
        *,
        triton: bool = False,
        ris_port: int | None = None,
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
            TRIAGE_STUDY_STABLE_SECONDS="1",
            TRIAGE_COMPLETION_POLL_SECONDS="0.3",
            TRIAGE_RETRY_SECONDS="1",
            TRIAGE_TRITON_TIMEOUT_SECONDS="10",
            TRIAGE_TRITON_RETRY_ATTEMPTS="2",
            TRIAGE_TRITON_BREAKER_FAILURES="2",
            TRIAGE_TRITON_BREAKER_RESET_SECONDS="1",
            TRIAGE_LOG_LEVEL="INFO",
        )
        if not triton:
            env["TRIAGE_TRITON_URL"] = f"127.0.0.1:{free_port()}"  # nothing listens there
            env["TRIAGE_TRITON_WARMUP"] = "false"
        if ris_port is not None:
            env.update(TRIAGE_RIS_HOST="127.0.0.1", TRIAGE_RIS_PORT=str(ris_port))
        for name, value in settings.items():
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
        """A SIGKILLed engine leaves its tritonserver (own process group) running: kill it by
        the pid file the engine keeps for that purpose."""
        pid_file = self.data / "triton" / "tritonserver.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return
        if b"tritonserver" in cmdline and str(self.data).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            wait_for(lambda: not pid_alive(pid), 10, f"tritonserver {pid} to die")

    # -- looking at it ------------------------------------------------------------------------
    def log(self) -> str:
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
        db = sqlite3.connect(f"file:{self.data / 'triage.db'}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def health(self) -> tuple[int, dict[str, Any]]:
        r = httpx.get(f"{self.base}/healthz", timeout=10)
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

    def order(self, accession: str, patient_id: str, study_uid: str, priority: str = "R") -> None:
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


# -- dcmtk's storescu --------------------------------------------------------------------------


class StoreSCU:
    """dcmtk's storescu sending ``files`` on one association, followed line by line: which file
    each response answered, and its status text (``Success``, ``Refused: OutOfResources``...).
    ``on_response(file, status)`` is called for each response; ``halt=False``: go on after a
    failure status (storescu stops at the first one by default)."""

    def __init__(
        self,
        port: int,
        files: Sequence[Path],
        *,
        aet: str = "MODALITY",
        on_response: Callable[[Path, str], None] | None = None,
        halt: bool = True,
    ) -> None:
        self.responses: list[tuple[Path, str]] = []
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [dcmtk("storescu"), "-v", "-aet", aet, "-aec", "TRIAGE"]
            + ([] if halt else ["--no-halt"])
            + ["127.0.0.1", str(port), *map(str, files)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        )
        self._on_response = on_response
        self._reader = threading.Thread(target=self._follow, daemon=True)
        self._reader.start()

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        current: Path | None = None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            if "Sending file:" in line:
                current = Path(line.split("Sending file:", 1)[1].strip())
                continue
            m = _RESPONSE.search(line)
            if m and current is not None:
                self.responses.append((current, m.group(1)))
                if self._on_response is not None:
                    self._on_response(current, m.group(1))

    def wait(self, timeout: float = 120) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def succeeded(self) -> list[Path]:
        return [f for f, status in self.responses if status == "Success"]


def store(port: int, files: Sequence[Path], timeout: float = 120, halt: bool = True) -> StoreSCU:
    """Send ``files`` on one association and wait for storescu to finish."""
    scu = StoreSCU(port, files, halt=halt)
    scu.wait(timeout)
    return scu


# -- what the RIS got --------------------------------------------------------------------------


def segment(message: str, name: str) -> list[str]:
    for seg in message.split("\r"):
        if seg.startswith(name + "|"):
            return seg.split("|")
    return []


def ris_summary(messages: Iterable[str]) -> dict[str, Any]:
    """Per accession number: the XO control ids and ORU control ids the RIS received."""
    out: dict[str, dict[str, list[str]]] = {}
    for msg in messages:
        msh = segment(msg, "MSH")
        kind = msh[8].split("^")[0]
        obr = segment(msg, "OBR")
        accession = obr[18] if len(obr) > 18 and obr[18] else (obr[3].split("^")[0] if obr else "")
        entry = out.setdefault(accession, {"XO": [], "ORU": [], "other": []})
        if kind == "ORM" and segment(msg, "ORC")[1] == "XO":
            entry["XO"].append(msh[9])
        elif kind == "ORU":
            entry["ORU"].append(msh[9])
        else:
            entry["other"].append(msh[9])
    return out


# -- studies -----------------------------------------------------------------------------------


def positive_head_ct(work: Path, accession: str, patient_id: str) -> SyntheticStudy:
    """A 24-slice 256 x 256 head CT with a bleed, the one the ich model scores positive in
    tests/inference/test_outage.py (seed 11); its UIDs follow accession and patient."""
    return write_head_ct(
        work / accession,
        hemorrhage=True,
        seed=11,
        patient_id=patient_id,
        accession=accession,
        n_slices=24,
        size=256,
    )


def with_derived_images(study: SyntheticStudy, total: int) -> list[Path]:
    """The study's files plus ``total - len(files)`` derived images (ImageType DERIVED\\
    SECONDARY, one more series, 128 x 128 copies of its slices), as reformats add to a real
    study: the model still gets the axial series, and the study has ``total`` instances."""
    files = list(study.files)
    extra = study.files[0].parent / "derived"
    extra.mkdir(exist_ok=True)
    series_uid = generate_uid(entropy_srcs=[study.study_uid, "derived"])
    for n in range(total - len(files)):
        ds = pydicom.dcmread(study.files[n % len(study.files)])
        pixels = ds.pixel_array[::2, ::2].copy()
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [float(v) * 2 for v in ds.PixelSpacing]
        ds.PixelData = pixels.tobytes()
        ds.ImageType = ["DERIVED", "SECONDARY", "REFORMATTED"]
        ds.SeriesDescription = "MPR REFORMAT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 99
        ds.InstanceNumber = n + 1
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[study.study_uid, "derived", str(n)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = extra / f"derived_{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files
