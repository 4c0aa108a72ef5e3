"""The engine process as a whole (in-process here, external Triton that is not there)."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from triage.config import Settings
from triage.service import Engine


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
