"""triage/inference/supervisor.py: /healthz's Triton entry asks Triton at most once a
second and one caller at a time, with a short timeout, so that a hung server cannot hold
every web worker (a hostile-peer audit: SIGSTOPped Triton, /healthz took 30 s, and 60
anonymous /healthz calls stalled the worklist for 28 s)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from triage.config import load_settings
from triage.inference.analyze import TritonAnalyzer
from triage.inference.breaker import CircuitBreaker
from triage.inference.supervisor import HEALTH_PROBE_S, TritonSupervisor


class SlowClient:
    """Answers like a server that takes ``delay`` seconds (or the timeout, if shorter)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls: list[float | None] = []
        self.backend_failures: dict[str, str] = {}

    def _wait(self, timeout: float | None) -> None:
        self.calls.append(timeout)
        time.sleep(min(self.delay, timeout if timeout is not None else self.delay))

    def model_states(self, timeout: float | None = None) -> dict[str, str]:
        self._wait(timeout)
        return {"ich": "READY"}

    def is_server_ready(self, timeout: float | None = None) -> bool:
        self._wait(timeout)
        return True


def _supervisor(tmp_path: Path, client: Any) -> TritonSupervisor:
    settings = load_settings(
        environ={"TRIAGE_DATA_DIR": str(tmp_path), "TRIAGE_TRITON_URL": "127.0.0.1:1"}
    )
    analyzer = TritonAnalyzer(tmp_path, settings.models_dir, key_images=False)
    sup = TritonSupervisor(settings, ["ich"], analyzer, CircuitBreaker())
    sup.client = client
    return sup


def test_concurrent_health_calls_share_one_probe(tmp_path: Path) -> None:
    client = SlowClient(0.4)
    sup = _supervisor(tmp_path, client)
    first = sup.health()  # the first answer is waited for
    assert first["ready"] is True and first["models"]["ich"] == "READY"
    assert len(client.calls) == 2
    assert sup.health() == first and len(client.calls) == 2  # within a second: no new probe
    time.sleep(1.05)
    answers: list[dict[str, Any]] = []
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: answers.append(sup.health())) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert len(client.calls) == 4  # one probe (two calls) for twenty callers
    assert sum(1 for a in answers if a.get("stale")) == 19
    assert all(a["ready"] for a in answers)
    assert elapsed < 0.4 * 2 + 0.5, elapsed  # nobody waited for more than the one probe


def test_a_hung_server_is_asked_with_a_short_timeout(tmp_path: Path) -> None:
    client = SlowClient(60.0)
    sup = _supervisor(tmp_path, client)
    started = time.monotonic()
    sup.health()
    assert client.calls and all(
        t == min(HEALTH_PROBE_S, sup.settings.triton_timeout_seconds) for t in client.calls
    )
    assert time.monotonic() - started < 2 * HEALTH_PROBE_S + 1.0
