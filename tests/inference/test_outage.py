"""Triton fails mid-run; studies wait as "AI pending" at their ordered priority, nothing is
dropped, and they complete when Triton is back. The engine runs as a subprocess.

1. External Triton (``TRIAGE_TRITON_URL``) that this test starts, stops and starts again on
   the same ports.
2. The engine's own bundled Triton: the test SIGKILLs the tritonserver process; the engine
   notices, restarts it with backoff, reconnects, warms up, and reports it in /healthz.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import dcmtk

from triage.hl7.client import send_message
from triage.inference.keyimage import DISCLAIMER
from triage.inference.local_triton import LocalTriton, _free_ports
from triage.synth.ct import SyntheticStudy, write_head_ct
from triage.synth.orders import order_message

from .conftest import MODELS_DIR, group_pids, pid_alive
from .png_decode import read_png

pytestmark = pytest.mark.integration


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


API_TOKEN = "outage-tests-api-token"  # TRIAGE_API_TOKEN of the engines started here
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


class Engine:
    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.data = work / "var"
        self.log_path = work / "engine.log"
        full = dict(os.environ)
        full.pop("TRIAGE_CONFIG", None)
        full.pop("TRIAGE_TRITON_URL", None)
        full.update(
            TRIAGE_DATA_DIR=str(self.data),
            TRIAGE_DICOM_PORT="0",
            TRIAGE_HL7_PORT="0",
            TRIAGE_HTTP_PORT="0",
            TRIAGE_API_TOKEN=API_TOKEN,
            TRIAGE_STUDY_STABLE_SECONDS="1",
            TRIAGE_COMPLETION_POLL_SECONDS="0.3",
            TRIAGE_RETRY_SECONDS="1",
            TRIAGE_TRITON_TIMEOUT_SECONDS="10",
            TRIAGE_TRITON_RETRY_ATTEMPTS="2",
            TRIAGE_TRITON_BREAKER_FAILURES="2",
            TRIAGE_TRITON_BREAKER_RESET_SECONDS="1",
            **env,
        )
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "triage.cli", "serve"],
            cwd=work,
            env=full,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.ep: dict[str, Any] = wait_for(self._endpoints, 90, "engine endpoints")
        self.base = f"http://127.0.0.1:{self.ep['http'][1]}"

    def _endpoints(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"engine exited: {self.log_path.read_text()}")
        try:
            ep = json.loads((self.data / "endpoints.json").read_text())
        except (OSError, ValueError):
            return None
        return ep if "http" in ep and "dicom" in ep and "hl7" in ep else None

    def health(self) -> tuple[int, dict[str, Any]]:
        r = httpx.get(f"{self.base}/healthz", timeout=10)
        return r.status_code, r.json()

    def triton_health(self) -> dict[str, Any]:
        return dict(self.health()[1]["components"]["triton"])

    def wait_ready(self, timeout: float = 120) -> dict[str, Any]:
        wait_for(lambda: self.health()[0] == 200, timeout, "/healthz 200")
        return self.triton_health()

    def send(self, study: SyntheticStudy, priority: str = "R") -> None:
        ack = send_message(
            "127.0.0.1",
            self.ep["hl7"][1],
            order_message(
                accession=study.accession,
                patient_id=study.patient_id,
                priority=priority,
                patient_class="E",
                study_uid=study.study_uid,
            ),
            timeout=10,
        )
        assert "MSA|AA|" in ack
        subprocess.run(
            [dcmtk("storescu"), "-aec", "TRIAGE", "127.0.0.1", str(self.ep["dicom"][1])]
            + [str(f) for f in study.files],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def study(self, accession: str) -> dict[str, Any] | None:
        items = httpx.get(f"{self.base}/api/worklist", headers=AUTH, timeout=10).json()["studies"]
        return next((s for s in items if s["accession_number"] == accession), None)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    started: list[Engine] = []
    yield started
    for e in started:
        e.stop()


def _positive(work: Path, accession: str) -> SyntheticStudy:
    return write_head_ct(
        work / accession,
        hemorrhage=True,
        seed=11,
        patient_id="OUT" + accession,
        accession=accession,
        n_slices=24,
        size=256,
    )


def _assert_scored_positive(engine: Engine, accession: str) -> dict[str, Any]:
    def scored() -> dict[str, Any] | None:
        st = engine.study(accession)
        return st if st and st["state"] == "scored" else None

    st = wait_for(scored, 90, f"{accession} scored")
    assert st["engine_priority"] == "S" and st["ordered_priority"] == "R"
    (finding,) = st["findings"]
    assert finding["model"] == "ich" and finding["status"] == "done" and finding["positive"]
    assert finding["model_version"].startswith("ich-")
    return dict(st)


def test_external_triton_stopped_mid_run_studies_wait_then_complete(
    tmp_path: Path, engines: list[Engine]
) -> None:
    ports = tuple(_free_ports(3))
    triton = LocalTriton(MODELS_DIR, tmp_path / "triton", 60, ports=ports)  # type: ignore[arg-type]
    triton.start()
    try:
        engine = Engine(tmp_path, {"TRIAGE_TRITON_URL": triton.grpc_url})
        engines.append(engine)
        th = engine.wait_ready()
        assert th["mode"] == "external" and th["breaker"]["state"] == "closed"
        assert th["models"]["ich"] == "READY" and set(th["warmup_seconds"]) == {"ich", "pe"}

        triton.stop()  # Triton goes away
        wait_for(lambda: engine.health()[0] == 503, 30, "/healthz 503 with Triton down")
        study = _positive(tmp_path, "ACCOUT1")
        engine.send(study, priority="R")

        def pending() -> dict[str, Any] | None:
            st = engine.study("ACCOUT1")
            return st if st and st["state"] == "ai_pending" else None

        st = wait_for(pending, 60, "study AI pending")
        assert st["ai_status"] == "pending" and st["engine_priority"] == "R"
        assert st["findings"] == [] and any("AI pending" in r for r in st["reasons"])
        time.sleep(3)  # several retries while down: still listed, still pending
        st = engine.study("ACCOUT1")
        assert st is not None and st["state"] == "ai_pending"
        th = engine.triton_health()
        assert th["ready"] is False and th["breaker"]["times_opened"] >= 1

        triton.start()  # back, same ports: the client reconnects by itself
        st = _assert_scored_positive(engine, "ACCOUT1")
        wait_for(lambda: engine.health()[0] == 200, 30, "/healthz 200 again")
        assert engine.triton_health()["breaker"]["state"] == "closed"

        # the key image of the result, over HTTP
        url = st["findings"][0]["key_image_url"]
        assert url and url.startswith(f"/api/studies/{study.study_uid}/key-image")
        r = httpx.get(engine.base + url, headers=AUTH, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        rgb, text = read_png(r.content)
        assert rgb.shape[1] == 256 and DISCLAIMER in text["Description"]
        r = httpx.get(f"{engine.base}/api/studies/1.2.3.4/key-image", headers=AUTH, timeout=10)
        assert r.status_code == 404 and "error" in r.json()
    finally:
        triton.stop()


def test_bundled_triton_killed_is_restarted_and_studies_complete(
    tmp_path: Path, engines: list[Engine]
) -> None:
    engine = Engine(tmp_path, {})
    engines.append(engine)
    th = engine.wait_ready()
    assert th["mode"] == "local" and th["restarts"] == 0 and th["breaker"]["state"] == "closed"
    old_pid = th["pid"]
    assert old_pid and pid_alive(old_pid)

    os.kill(old_pid, signal.SIGKILL)  # the server dies under the engine
    study = _positive(tmp_path, "ACCOUT2")
    engine.send(study, priority="R")

    def restarted() -> dict[str, Any] | None:
        code, body = engine.health()
        t = body["components"]["triton"]
        return t if code == 200 and t["restarts"] >= 1 else None

    th = wait_for(restarted, 90, "bundled Triton restarted and ready")
    assert th["pid"] != old_pid and not pid_alive(old_pid)
    assert th["models"]["ich"] == "READY"
    _assert_scored_positive(engine, "ACCOUT2")
    log = engine.log_path.read_text()
    assert "exited with code" in log and "restarting the local Triton" in log

    new_pid = th["pid"]
    engine.stop()
    assert engine.proc.returncode == 0
    assert not pid_alive(new_pid) and group_pids(new_pid) == [] and group_pids(old_pid) == []
