"""Triton fails mid-run; studies wait as "AI pending" at their ordered priority, nothing is
dropped, and they complete when Triton is back. The engine runs as a subprocess.

1. External Triton (``TRIAGE_TRITON_URL``) that this test starts, stops and starts again on
   the same ports.
2. The engine's own bundled Triton: the test SIGKILLs the tritonserver process; the engine
   notices, restarts it with backoff, reconnects, warms up, and reports it in /healthz.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import engine as support_engine
from support.dcmtk import storescu
from support.net import wait_for
from support.paths import MODELS_DIR
from support.procs import group_pids, pid_alive

from triage.inference.keyimage import DISCLAIMER
from triage.inference.local_triton import LocalTriton, _free_ports
from triage.synth.ct import SyntheticStudy, write_head_ct

from .png_decode import read_png

pytestmark = pytest.mark.integration


API_TOKEN = "outage-tests-api-token"  # TRIAGE_API_TOKEN of the engines started here
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


class Engine(support_engine.Engine):
    """The engine (quick settings, this module's API token), started at once; ``triton``:
    the URL of a Triton this test runs, or True for the engine's bundled one."""

    def __init__(self, work: Path, triton: bool | str) -> None:
        super().__init__(work, triton=triton, api_token=API_TOKEN)
        self.start(timeout=90)

    def triton_health(self) -> dict[str, Any]:
        return dict(self.health()[1]["components"]["triton"])

    def wait_ready(self, timeout: float = 120) -> dict[str, Any]:
        wait_for(lambda: self.health()[0] == 200, timeout, "/healthz 200", every=0.25)
        return self.triton_health()

    def send(self, study: SyntheticStudy, priority: str = "R") -> None:
        self.order(study.accession, study.patient_id, study.study_uid, priority=priority)
        storescu(self.dicom_port, study.files, timeout=60, check=True)

    def study(self, accession: str) -> dict[str, Any] | None:
        items = httpx.get(f"{self.base}/api/worklist", headers=AUTH, timeout=10).json()["studies"]
        return next((s for s in items if s["accession_number"] == accession), None)


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

    st = wait_for(scored, 90, f"{accession} scored", every=0.25)
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
        engine = Engine(tmp_path, triton.grpc_url)
        engines.append(engine)
        th = engine.wait_ready()
        assert th["mode"] == "external" and th["breaker"]["state"] == "closed"
        assert th["models"]["ich"] == "READY" and set(th["warmup_seconds"]) == {"ich", "pe"}

        triton.stop()  # Triton goes away
        wait_for(lambda: engine.health()[0] == 503, 30, "/healthz 503 with Triton down", every=0.25)
        study = _positive(tmp_path, "ACCOUT1")
        engine.send(study, priority="R")

        def pending() -> dict[str, Any] | None:
            st = engine.study("ACCOUT1")
            return st if st and st["state"] == "ai_pending" else None

        st = wait_for(pending, 60, "study AI pending", every=0.25)
        assert st["ai_status"] == "pending" and st["engine_priority"] == "R"
        assert st["findings"] == [] and any("AI pending" in r for r in st["reasons"])
        time.sleep(3)  # several retries while down: still listed, still pending
        st = engine.study("ACCOUT1")
        assert st is not None and st["state"] == "ai_pending"
        th = engine.triton_health()
        assert th["ready"] is False and th["breaker"]["times_opened"] >= 1

        triton.start()  # back, same ports: the client reconnects by itself
        st = _assert_scored_positive(engine, "ACCOUT1")
        wait_for(lambda: engine.health()[0] == 200, 30, "/healthz 200 again", every=0.25)
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
    engine = Engine(tmp_path, True)
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

    th = wait_for(restarted, 90, "bundled Triton restarted and ready", every=0.25)
    assert th["pid"] != old_pid and not pid_alive(old_pid)
    assert th["models"]["ich"] == "READY"
    _assert_scored_positive(engine, "ACCOUT2")
    log = engine.log()
    assert "exited with code" in log and "restarting the local Triton" in log

    new_pid = th["pid"]
    assert engine.kill(signal.SIGINT) == 0  # Ctrl-C (the fixture's stop() would reap a Triton)
    assert not pid_alive(new_pid) and group_pids(new_pid) == [] and group_pids(old_pid) == []
