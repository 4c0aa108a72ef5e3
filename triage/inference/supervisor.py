"""Keeps the engine connected to Triton: an external server (connect once; the client
reconnects by itself) or the bundled one (started, watched, restarted with capped backoff when
its process dies). Runs in its own thread, so ``/healthz`` answers while Triton starts; until
a client is attached, studies wait as AI pending.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from triage.config import Settings
from triage.errors import TriageError, TritonUnavailable
from triage.inference.analyze import TritonAnalyzer
from triage.inference.breaker import CircuitBreaker, RetryPolicy
from triage.inference.client import InferenceClient
from triage.inference.local_triton import LocalTriton

log = logging.getLogger("triage")

# /healthz asks Triton at most once per HEALTH_TTL_S seconds and waits at most
# HEALTH_PROBE_S for each answer; callers that come while a probe is out get the last answer
# (a hung server must not hold every web worker for the inference timeout)
HEALTH_TTL_S = 1.0
HEALTH_PROBE_S = 2.0


class TritonSupervisor:
    """Connects ``analyzer`` to Triton and keeps it connected.

    ``models``: the models the routing rules name (warmed up; health is ready when they are).
    ``on_connected(url)`` is called (in the supervisor's thread) each time a new client is
    attached, e.g. to publish the address and retry the studies waiting for AI.
    """

    def __init__(
        self,
        settings: Settings,
        models: Collection[str],
        analyzer: TritonAnalyzer,
        breaker: CircuitBreaker,
        on_connected: Callable[[str], None] = lambda url: None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.analyzer = analyzer
        self.breaker = breaker
        self.on_connected = on_connected
        self.local: LocalTriton | None = None
        self.url = settings.triton_url
        self.error = ""
        self.restarts = 0
        self.warmup: dict[str, float] = {}
        self.client: InferenceClient | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._probe = threading.Lock()
        self._probed: tuple[float, dict[str, Any]] | None = None  # (monotonic time, answer)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Connect (and, for the bundled Triton, start and watch it) in a background thread."""
        self._thread = threading.Thread(target=self._run, name="triton-start")
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, wait for the thread, stop the bundled Triton (blocking)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.local is not None:
            self.local.stop()

    # -- health ---------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """The ``triton`` entry of ``/healthz``: asked of Triton at most once a second, one
        caller at a time; the others get the last answer (marked ``stale``) meanwhile."""
        last = self._probed
        if last is not None and time.monotonic() - last[0] < HEALTH_TTL_S:
            return dict(last[1])
        if not self._probe.acquire(blocking=False):
            if last is not None:
                return dict(last[1], stale=True)
            self._probe.acquire()  # the very first answer: wait for it
        try:
            answer = self._health()
            self._probed = (time.monotonic(), answer)
            return dict(answer)
        finally:
            self._probe.release()

    def _health(self) -> dict[str, Any]:
        s = self.settings
        triton: dict[str, Any] = {
            "ready": False,
            "url": self.url or None,
            "mode": "external" if s.triton_url else "local",
            "breaker": self.breaker.snapshot(),
        }
        if not s.triton_url:
            triton["pid"] = self.local.pid if self.local is not None else None
            triton["restarts"] = self.restarts
        if self.warmup:
            triton["warmup_seconds"] = {m: round(v, 3) for m, v in self.warmup.items()}
        client = self.client
        if client is None:
            triton["detail"] = self.error or "starting"
            return triton
        try:
            probe = min(HEALTH_PROBE_S, s.triton_timeout_seconds)
            states = client.model_states(timeout=probe)
            wanted = self.models
            triton["models"] = {m: states.get(m, "UNAVAILABLE") for m in wanted} | states
            failed = dict(client.backend_failures)
            triton["ready"] = (
                client.is_server_ready(timeout=probe)
                and all(states.get(m) == "READY" for m in wanted)
                and triton["breaker"]["state"] != "open"
                and not failed
            )
            if failed:
                triton["detail"] = "backend process died: " + "; ".join(failed.values())
            elif not triton["ready"]:
                triton["detail"] = "server or a routed model is not ready, or breaker open"
        except TriageError as exc:
            triton["detail"] = str(exc)
        return triton

    # -- connecting -----------------------------------------------------------------------
    def _new_client(self, url: str) -> InferenceClient:
        s = self.settings
        return InferenceClient(
            url,
            s.triton_protocol,
            timeout=s.triton_timeout_seconds,
            models_dir=s.models_dir,
            retry=RetryPolicy(
                s.triton_retry_attempts, s.triton_retry_base_seconds, s.triton_retry_max_seconds
            ),
            breaker=self.breaker,
            shared_memory=None if s.triton_shared_memory else False,
        )

    def _connect(self, url: str) -> None:
        """New client on ``url``; warm-up; then attach it (health says ready only after)."""
        client = self._new_client(url)
        if self.settings.triton_warmup:
            try:
                self.warmup = client.warm_up(sorted(self.models))
                log.info(
                    "Triton warm-up: %s",
                    ", ".join(f"{m} {v:.2f} s" for m, v in self.warmup.items()) or "no model",
                )
            except TriageError as exc:
                log.warning("Triton warm-up failed (studies wait as AI pending): %s", exc)
        self.breaker.reset()
        old, self.client = self.client, client
        self.analyzer.attach(client)
        self.error = ""
        self.on_connected(url)
        if old is not None:
            old.close()

    def _run(self) -> None:
        """External Triton: connect once (the client reconnects by itself). Bundled Triton:
        start it and supervise it - when its process dies, restart it with backoff."""
        s = self.settings
        if s.triton_url:
            try:
                self._connect(s.triton_url)
                log.info("Triton (external) at %s (%s)", s.triton_url, s.triton_protocol)
            except TritonUnavailable as exc:
                self.error = str(exc)
                log.error("Triton not available: %s; studies wait as AI pending", exc)
            return
        self.local = LocalTriton(s.models_dir, s.data_dir / "triton", s.triton_startup_seconds)
        self._supervise(self.local)

    def _supervise(self, triton: LocalTriton) -> None:
        s = self.settings
        delay = 1.0
        first = True
        try:
            while not self._stop.is_set():
                if not first:
                    log.warning("restarting the local Triton in %.1f s", delay)
                    if self._stop.wait(delay):
                        return
                    delay = min(delay * 2.0, s.triton_restart_max_seconds)
                first = False
                try:
                    triton.start()
                except TritonUnavailable as exc:
                    self.error = str(exc)
                    log.error("local Triton did not start: %s; studies wait as AI pending", exc)
                    triton.stop()
                    continue
                self.url = triton.http_url if s.triton_protocol == "http" else triton.grpc_url
                log.info("Triton (local, bundled) ready at %s (%s)", self.url, s.triton_protocol)
                try:
                    self._connect(self.url)
                except TritonUnavailable as exc:
                    self.error = str(exc)
                started = time.monotonic()
                failed = ""
                while triton.is_running() and not self._stop.wait(0.5):
                    client = self.client
                    if client is not None and client.backend_failures:
                        # the server runs, but a model's backend process died: only a
                        # restart brings the model back
                        failed = "; ".join(client.backend_failures.values())
                        client.backend_failures.clear()  # answered by the restart below
                        break
                if self._stop.is_set():
                    return
                self.analyzer.attach(None)  # studies wait as AI pending from now on
                if failed:
                    self.error = f"a model backend of the local Triton died; restarting ({failed})"
                    log.error("local Triton (pid %s): %s", triton.pid, self.error)
                else:
                    code = triton.returncode
                    self.error = f"local Triton exited (code {code}); restarting"
                    log.error("local Triton (pid %s) exited with code %s", triton.pid, code)
                triton.stop()  # reap the process group (backend stubs)
                self.restarts += 1
                if time.monotonic() - started > 60.0:
                    delay = 1.0  # it ran a good while: restart soon
        finally:
            triton.stop()
