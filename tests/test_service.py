"""The engine process as a whole (in-process here, external Triton that is not there)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from support.net import free_port

from triage.config import Settings
from triage.service import Engine, new_scheduler, read_endpoints


def test_every_address_in_endpoints_json_accepts_connections_when_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients (tests, `triage demo`, operators' scripts) poll endpoints.json and connect at
    once: the HTTP port must already be listening then, not only bound."""
    settings = Settings(
        data_dir=tmp_path / "var",
        dicom_port=0,
        hl7_port=0,
        http_port=0,
        triton_url=f"http://127.0.0.1:{free_port()}",  # nothing there: AI pending
        triton_warmup=False,
    )
    engine = Engine(settings)
    seen: dict[str, Any] = {}
    original = Engine._write_endpoints

    def write_then_connect(self: Engine) -> None:
        original(self)
        if "checked" in seen:
            return
        seen["checked"] = True
        for name in ("http", "hl7", "dicom"):
            host, port = self.endpoints[name]
            try:
                with socket.create_connection((host, port), timeout=5):
                    seen[name] = "accepted"
            except OSError as exc:
                seen[name] = repr(exc)
        self.request_stop()

    monkeypatch.setattr(Engine, "_write_endpoints", write_then_connect)
    runner = threading.Thread(target=asyncio.run, args=(engine.run(),))
    runner.start()
    runner.join(60)
    if runner.is_alive():
        engine.request_stop()
        runner.join(30)
    assert not runner.is_alive()
    assert seen == {"checked": True, "http": "accepted", "hl7": "accepted", "dicom": "accepted"}
    assert not (settings.data_dir / "endpoints.json").exists()  # removed on the way out


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        dicom_port=0,
        hl7_port=0,
        http_port=0,
        triton_url=f"http://127.0.0.1:{free_port()}",  # nothing there: AI pending
        triton_warmup=False,
        api_token=SERVICE_TOKEN,
    )


SERVICE_TOKEN = "service-tests-api-token"


def test_healthz_shows_the_dicom_listeners_counters(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    engine = Engine(settings)
    runner = threading.Thread(target=asyncio.run, args=(engine.run(),))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not (settings.data_dir / "endpoints.json").exists():
            assert time.monotonic() < deadline and runner.is_alive()
            time.sleep(0.05)
        ends = read_endpoints(settings.data_dir)
        url = "http://{}:{}/healthz".format(*ends["http"])

        def dicom() -> dict[str, Any]:
            request = urllib.request.Request(
                url, headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    body = resp.read()
            except urllib.error.HTTPError as exc:  # 503: Triton is not there
                body = exc.read()
            return dict(json.loads(body)["components"]["dicom"])

        assert dicom()["counters"] == {
            "released_mid_message": 0,
            "sop_class_refused": 0,
            "protocol_aborts": 0,
        }
        # A peer claiming a 4 GiB PDU is aborted (a protocol abort), before anything is read.
        with socket.create_connection(tuple(ends["dicom"]), timeout=10) as sock:
            sock.sendall(bytes([1, 0]) + (0xFFFFFFF0).to_bytes(4, "big"))
            assert sock.recv(1) == b"\x07"  # A-ABORT
        counters = dicom()["counters"]
        assert counters["protocol_aborts"] == 1 and counters["sop_class_refused"] == 0
    finally:
        engine.request_stop()
        runner.join(60)
    assert not runner.is_alive()


def test_a_tick_skipped_while_the_previous_runs_is_not_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With one worker and max_instances=1 a due tick is skipped while the previous one runs
    (a long study): normal, so the scheduler's warning about it is logged at DEBUG."""
    scheduler = new_scheduler()
    release, skipped = threading.Event(), threading.Event()
    scheduler.add_listener(lambda _event: skipped.set(), EVENT_JOB_MAX_INSTANCES)
    scheduler.add_job(release.wait, "interval", seconds=0.05, args=[30], id="tick")
    caplog.set_level(logging.DEBUG, logger="apscheduler")
    scheduler.start()
    try:
        assert skipped.wait(30)
    finally:
        release.set()
        scheduler.shutdown(wait=True)
    skips = [r for r in caplog.records if "maximum number of running instances" in r.msg]
    assert skips and {r.levelno for r in skips} == {logging.DEBUG}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="apscheduler")
    logging.getLogger("apscheduler.scheduler").warning(
        'Execution of job "%s" skipped: maximum number of running instances reached (%d)',
        "tick",
        1,
    )
    assert caplog.records == []  # at WARNING (as `triage serve` sets it): not shown at all


def test_healthz_shows_the_ris_wait_when_the_ris_is_failing(tmp_path: Path) -> None:
    """The outbox's RIS-wide wait (refused connections or messages without an ACK, in a row)
    is in the ris part; the RIS never makes the engine "not ready"."""
    from datetime import UTC, datetime, timedelta

    from triage.outbound.outbox import save_backoff

    settings = _settings(tmp_path).model_copy(update={"ris_host": "127.0.0.1", "ris_port": 9})
    engine = Engine(settings)
    try:
        assert "failing" not in engine.health()["ris"]
        now = datetime.now(UTC)
        save_backoff(engine.db, 3, now + timedelta(seconds=60), now)
        ris = engine.health()["ris"]
        assert ris["ready"] is True and ris["failing"] == 3 and ris["next_try"]
    finally:
        engine.db.dispose()
        engine.data_lock.release()
