"""Runs the engine: store, listeners, HTTP API, scheduler and (by default) a local Triton.

Start order: database and rules (a bad rules file stops start-up) -> HTTP API (so /healthz
can say what is not ready yet) -> HL7 and DICOM listeners -> scheduler -> Triton (started in
the background; studies that complete before it is ready wait as "AI pending"). Ctrl-C or
SIGTERM stops everything, Triton included, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from triage.api.app import create_app
from triage.completion import CompletionPolicy
from triage.config import Settings
from triage.errors import TriageError, TritonUnavailable
from triage.inference.analyze import TritonAnalyzer
from triage.inference.client import InferenceClient
from triage.inference.local_triton import LocalTriton
from triage.ingest.dicom_scp import DicomListener
from triage.ingest.hl7_listener import HL7Listener
from triage.outbound.ris import RISNotifier
from triage.pipeline import Pipeline
from triage.routing import load_routing_rules
from triage.scoring import load_urgency_rules
from triage.store import Database

log = logging.getLogger("triage")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the engine owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.routing = load_routing_rules(settings.rules_dir / "routing.yaml")
        self.urgency = load_urgency_rules(settings.rules_dir / "urgency.yaml")
        self.db = Database(settings.resolved_database_url)
        self.db.create_all()
        self.triton: LocalTriton | None = None
        self.triton_url = settings.triton_url
        self.triton_error = ""
        self.client: InferenceClient | None = None
        self.analyzer = TritonAnalyzer(data_dir, settings.models_dir)
        self.notifier = RISNotifier(settings, self.db)
        self.pipeline = Pipeline(
            self.db,
            self.routing,
            self.urgency,
            self.analyzer,
            self.notifier,
            completion=CompletionPolicy(
                stable_seconds_for=settings.stable_seconds_for,
                shortest_seconds=min(
                    [
                        settings.study_stable_seconds,
                        *settings.stable_seconds_by_modality.values(),
                        *settings.stable_seconds_by_ae.values(),
                    ]
                ),
                expected_series_quiet_seconds=settings.expected_series_quiet_seconds,
                routing=self.routing,
            ),
            retry_seconds=settings.retry_seconds,
            match_window_hours=settings.order_match_window_hours,
        )
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        )
        self.dicom = DicomListener(settings, self.db, on_instance=None)
        self.hl7 = HL7Listener(settings, self.db, on_order=self._on_order)
        self.endpoints: dict[str, Any] = {}
        self._server: _Server | None = None

    # -- events from the listeners ------------------------------------------------------
    def _on_order(self, order_id: int) -> None:
        if self.scheduler.running:
            self.scheduler.add_job(self.pipeline.on_order, args=[order_id])

    # -- health ---------------------------------------------------------------------------
    def health(self) -> dict[str, dict[str, Any]]:
        s = self.settings
        parts: dict[str, dict[str, Any]] = {
            "dicom": {"ready": self.dicom.ready, "address": self.endpoints.get("dicom")},
            "hl7": {"ready": self.hl7.ready, "address": self.endpoints.get("hl7")},
            "scheduler": {"ready": self.scheduler.running},
            "ris": {
                "ready": True,
                "configured": s.ris_configured,
                "address": f"{s.ris_host}:{s.ris_port}" if s.ris_configured else None,
            },
        }
        triton: dict[str, Any] = {"ready": False, "url": self.triton_url or None}
        if self.client is None:
            triton["detail"] = self.triton_error or "starting"
        else:
            try:
                states = self.client.model_states()
                triton["models"] = states
                wanted = self.routing.models
                triton["ready"] = self.client.is_server_ready() and all(
                    states.get(m) == "READY" for m in wanted
                )
                if not triton["ready"]:
                    triton["detail"] = "server or a routed model is not ready"
            except TriageError as exc:
                triton["detail"] = str(exc)
        parts["triton"] = triton
        return parts

    # -- lifecycle ------------------------------------------------------------------------
    def _start_triton(self) -> None:
        s = self.settings
        try:
            if not self.triton_url:
                self.triton = LocalTriton(
                    s.models_dir, s.data_dir / "triton", s.triton_startup_seconds
                )
                self.triton_url = self.triton.start()
                log.info("Triton (local, bundled) ready at %s (gRPC)", self.triton_url)
            client = InferenceClient(self.triton_url, timeout=s.triton_timeout_seconds)
            self.analyzer.attach(client)
            self.client = client
            self.endpoints["triton"] = self.triton_url
            self._write_endpoints()
        except TritonUnavailable as exc:
            self.triton_error = str(exc)
            log.error("Triton not available: %s; studies wait as AI pending", exc)

    def _write_endpoints(self) -> None:
        path = self.settings.data_dir / "endpoints.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.endpoints, indent=2))
        tmp.replace(path)

    async def run(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        app = create_app(self.db, self.urgency, self.health)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.bind_host, s.http_port))
        except OSError as exc:
            raise TriageError(f"http_port: cannot bind {s.bind_host}:{s.http_port}: {exc}") from exc
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        server = _Server(config)
        self._server = server
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        triton_thread: threading.Thread | None = None
        try:
            host, port = sock.getsockname()[:2]
            self.endpoints["http"] = [host, port]
            log.info("HTTP API listening on http://%s:%d", host, port)
            self.endpoints["hl7"] = list(await self.hl7.start())
            log.info("HL7 MLLP listener on %s:%d", *self.endpoints["hl7"])
            self.endpoints["dicom"] = list(self.dicom.start())
            log.info("DICOM Storage SCP %s on %s:%d", s.dicom_ae_title, *self.endpoints["dicom"])
            if s.ris_configured:
                log.info("RIS at %s:%d (MLLP)", s.ris_host, s.ris_port)
            else:
                log.warning("no RIS configured (TRIAGE_RIS_HOST/PORT): nothing will be sent")
            self.scheduler.add_job(
                self.pipeline.tick, "interval", seconds=s.completion_poll_seconds, id="tick"
            )
            self.scheduler.start()
            self._write_endpoints()
            triton_thread = threading.Thread(target=self._start_triton, name="triton-start")
            triton_thread.start()
            await server.serve(sockets=[sock])
        finally:
            log.info("stopping")
            if self.scheduler.running:
                self.scheduler.shutdown(wait=True)
            await self.hl7.stop()
            self.dicom.stop()
            if triton_thread is not None:
                await asyncio.to_thread(triton_thread.join)
            if self.triton is not None:
                self.triton.stop()
            sock.close()
            self.db.dispose()
            with contextlib.suppress(FileNotFoundError):
                (s.data_dir / "endpoints.json").unlink()
            log.info("stopped")

    def request_stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    engine = Engine(settings)
    asyncio.run(engine.run())


def read_endpoints(data_dir: Path) -> dict[str, Any]:
    """The addresses a running engine wrote to ``data_dir/endpoints.json``."""
    return dict(json.loads((data_dir / "endpoints.json").read_text()))
