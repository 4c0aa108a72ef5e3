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
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import and_, bindparam, exists, or_
from sqlmodel import select

from triage.api.app import create_app
from triage.completion import CompletionPolicy
from triage.config import Settings
from triage.errors import TriageError, TritonUnavailable
from triage.inference.analyze import TritonAnalyzer
from triage.inference.breaker import CircuitBreaker, RetryPolicy
from triage.inference.client import InferenceClient
from triage.inference.local_triton import LocalTriton
from triage.ingest.dicom_scp import DicomListener
from triage.ingest.hl7_listener import HL7Listener
from triage.outbound.ris import RISNotifier
from triage.pipeline import Pipeline
from triage.routing import load_routing_rules
from triage.scoring import UrgencyRulesWatcher, load_urgency_rules
from triage.store import Database, Order, Study, StudyState
from triage.store.models import utcnow

log = logging.getLogger("triage")

_IN_CHUNK = 500  # order ids per query (SQLite allows 32,766 parameters)


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
        # a changed urgency.yaml is put in force at the next tick (a bad one refused, logged)
        self.rules_watcher = UrgencyRulesWatcher(
            settings.rules_dir / "urgency.yaml", initial=self.urgency
        )
        self.db = Database(settings.resolved_database_url)
        self.db.create_all()
        self.triton: LocalTriton | None = None
        self.triton_url = settings.triton_url
        self.triton_error = ""
        self.triton_restarts = 0
        self.warmup: dict[str, float] = {}
        self.client: InferenceClient | None = None
        self.breaker = CircuitBreaker(
            settings.triton_breaker_failures, settings.triton_breaker_reset_seconds
        )
        self._triton_stop = threading.Event()
        self.analyzer = TritonAnalyzer(
            data_dir, settings.models_dir, key_images=settings.key_images
        )
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
            rules_watcher=self.rules_watcher,
        )
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        )
        self.dicom = DicomListener(settings, self.db, on_instance=None)
        self.hl7 = HL7Listener(settings, self.db, on_orders=self._on_orders)
        self.endpoints: dict[str, Any] = {}
        self._server: _Server | None = None

    # -- events from the listeners ------------------------------------------------------
    def _on_orders(self, order_ids: list[int]) -> None:
        """Orders the HL7 listener acknowledged in the last few milliseconds (called in its
        on_order thread): one pipeline job for those that share an identifier with a stored
        study. For the others (the usual case: the order comes before its images)
        :meth:`Pipeline.on_order` would find no study and do nothing, at ~1.5 ms of CPU per
        order and a scheduler job each, taken from the listener (one interpreter lock): that
        halved the engine's HL7 rate against the listener alone (docs/performance.md)."""
        if not self.scheduler.running:
            return
        try:
            near = orders_near_studies(self.db, order_ids)
        except Exception as exc:  # the pipeline decides, as before the filter
            log.warning("orders %s: study look-up failed (%s); all handed on", order_ids, exc)
            near = list(order_ids)
        if near:
            self.scheduler.add_job(self._apply_orders, args=[near])

    def _apply_orders(self, order_ids: list[int]) -> None:
        for order_id in order_ids:
            try:
                self.pipeline.on_order(order_id)
            except Exception:  # one order's failure does not keep the others waiting
                log.exception("order %d: the pipeline failed", order_id)

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
        triton: dict[str, Any] = {
            "ready": False,
            "url": self.triton_url or None,
            "mode": "external" if s.triton_url else "local",
            "breaker": self.breaker.snapshot(),
        }
        if not s.triton_url:
            triton["pid"] = self.triton.pid if self.triton is not None else None
            triton["restarts"] = self.triton_restarts
        if self.warmup:
            triton["warmup_seconds"] = {m: round(v, 3) for m, v in self.warmup.items()}
        client = self.client
        if client is None:
            triton["detail"] = self.triton_error or "starting"
        else:
            try:
                states = client.model_states()
                wanted = self.routing.models
                triton["models"] = {m: states.get(m, "UNAVAILABLE") for m in wanted} | states
                triton["ready"] = (
                    client.is_server_ready()
                    and all(states.get(m) == "READY" for m in wanted)
                    and triton["breaker"]["state"] != "open"
                )
                if not triton["ready"]:
                    triton["detail"] = "server or a routed model is not ready, or breaker open"
            except TriageError as exc:
                triton["detail"] = str(exc)
        parts["triton"] = triton
        return parts

    # -- lifecycle ------------------------------------------------------------------------
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
        s = self.settings
        client = self._new_client(url)
        if s.triton_warmup:
            try:
                self.warmup = client.warm_up(sorted(self.routing.models))
                log.info(
                    "Triton warm-up: %s",
                    ", ".join(f"{m} {v:.2f} s" for m, v in self.warmup.items()) or "no model",
                )
            except TriageError as exc:
                log.warning("Triton warm-up failed (studies wait as AI pending): %s", exc)
        self.breaker.reset()
        old, self.client = self.client, client
        self.analyzer.attach(client)
        self.triton_error = ""
        self.endpoints["triton"] = url
        self._write_endpoints()
        if old is not None:
            old.close()
        self._wake_pending()

    def _wake_pending(self) -> None:
        """Studies waiting as AI pending are retried at the next tick, not after their delay."""
        try:
            with self.db.session() as sess:
                rows = sess.exec(select(Study).where(Study.state == StudyState.AI_PENDING)).all()
                for st in rows:
                    st.ai_next_attempt_at = utcnow()
                    sess.add(st)
            if rows:
                log.info("Triton is back: %d AI-pending studies retried now", len(rows))
        except TriageError as exc:
            log.warning("cannot wake AI-pending studies: %s", exc)

    def _start_triton(self) -> None:
        """External Triton: connect once (the client reconnects by itself). Bundled Triton:
        start it and supervise it - when its process dies, restart it with backoff."""
        s = self.settings
        if s.triton_url:
            try:
                self._connect(self.triton_url)
                log.info("Triton (external) at %s (%s)", self.triton_url, s.triton_protocol)
            except TritonUnavailable as exc:
                self.triton_error = str(exc)
                log.error("Triton not available: %s; studies wait as AI pending", exc)
            return
        self.triton = LocalTriton(s.models_dir, s.data_dir / "triton", s.triton_startup_seconds)
        self._supervise(self.triton)

    def _supervise(self, triton: LocalTriton) -> None:
        s = self.settings
        delay = 1.0
        first = True
        try:
            while not self._triton_stop.is_set():
                if not first:
                    log.warning("restarting the local Triton in %.1f s", delay)
                    if self._triton_stop.wait(delay):
                        return
                    delay = min(delay * 2.0, s.triton_restart_max_seconds)
                first = False
                try:
                    triton.start()
                except TritonUnavailable as exc:
                    self.triton_error = str(exc)
                    log.error("local Triton did not start: %s; studies wait as AI pending", exc)
                    triton.stop()
                    continue
                self.triton_url = (
                    triton.http_url if s.triton_protocol == "http" else triton.grpc_url
                )
                log.info(
                    "Triton (local, bundled) ready at %s (%s)", self.triton_url, s.triton_protocol
                )
                try:
                    self._connect(self.triton_url)
                except TritonUnavailable as exc:
                    self.triton_error = str(exc)
                started = time.monotonic()
                while triton.is_running() and not self._triton_stop.wait(0.5):
                    pass
                if self._triton_stop.is_set():
                    return
                code = triton.returncode
                self.analyzer.attach(None)  # studies wait as AI pending from now on
                self.triton_error = f"local Triton exited (code {code}); restarting"
                log.error("local Triton (pid %s) exited with code %s", triton.pid, code)
                triton.stop()  # reap the process group (backend stubs)
                self.triton_restarts += 1
                if time.monotonic() - started > 60.0:
                    delay = 1.0  # it ran a good while: restart soon
        finally:
            triton.stop()

    def _write_endpoints(self) -> None:
        path = self.settings.data_dir / "endpoints.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.endpoints, indent=2))
        tmp.replace(path)

    async def run(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        app = create_app(self.db, lambda: self.pipeline.urgency, self.health, s.data_dir)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.bind_host, s.http_port))
        except OSError as exc:
            raise TriageError(f"http_port: cannot bind {s.bind_host}:{s.http_port}: {exc}") from exc
        # Listen now, not when uvicorn starts serving: endpoints.json is written before that,
        # and a client reading it must be queued in the backlog, not refused.
        sock.listen(2048)
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
            self.scheduler.add_job(self.pipeline.recover, id="recover")  # runs first
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
            self._triton_stop.set()
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


def _orders_near_studies_query() -> Any:
    o, st = Order.__table__, Study.__table__  # type: ignore[attr-defined]

    def near(column: str) -> Any:
        return and_(o.c[column] != "", exists().where(st.c[column] == o.c[column]))

    return select(o.c.id).where(
        o.c.id.in_(bindparam("ids", expanding=True)),
        or_(
            exists().where(st.c.order_id == o.c.id),
            near("study_uid"),
            near("accession_number"),
            near("patient_id"),
        ),
    )


# Built once: SQLAlchemy caches its compiled form (one indexed look-up per order and key).
_ORDERS_NEAR_STUDIES = _orders_near_studies_query()


def orders_near_studies(db: Database, order_ids: Sequence[int]) -> list[int]:
    """The orders among ``order_ids`` (in that order) that share an order id, Study UID,
    accession number or patient id with a stored study: a superset of those for which
    :func:`triage.store.repo.studies_for_order` finds any study (it only looks at studies
    linked to the order, with its Study UID or accession number, or of its patient). For the
    others :meth:`Pipeline.on_order` has nothing to do. One query per call."""
    ids = list(dict.fromkeys(order_ids))
    keep: set[int] = set()
    with db.engine.connect() as conn:
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            keep.update(conn.execute(_ORDERS_NEAR_STUDIES, {"ids": chunk}).scalars())
    return [i for i in ids if i in keep]


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
