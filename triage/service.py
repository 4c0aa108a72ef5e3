"""Runs the engine: store, listeners, HTTP API, scheduler and (by default) a local Triton.

Start order: database and rules (a bad rules file stops start-up) -> HTTP API (so /healthz
can say what is not ready yet) -> HL7 and DICOM listeners -> scheduler -> Triton (connected,
or started and supervised, in the background by :mod:`triage.inference.supervisor`; studies
that complete before it is ready wait as "AI pending"). Ctrl-C or SIGTERM stops everything,
Triton included, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlmodel import select

from triage.api.app import create_app
from triage.completion import CompletionPolicy, CompletionWaker
from triage.config import Settings
from triage.datadir import claim
from triage.errors import ConfigError, TriageError
from triage.inference.analyze import TritonAnalyzer
from triage.inference.breaker import CircuitBreaker
from triage.inference.slices import SliceCache
from triage.inference.supervisor import TritonSupervisor
from triage.inference.volume import CT_IMAGE_STORAGE
from triage.ingest.dicom_scp import DicomListener
from triage.ingest.hl7_listener import HL7Listener
from triage.outbound.outbox import load_backoff
from triage.outbound.ris import RISNotifier
from triage.pipeline import Pipeline
from triage.routing import load_routing_rules
from triage.scoring import UrgencyRulesWatcher, load_urgency_rules
from triage.store import Database, Study, StudyState
from triage.store.models import utcnow
from triage.store.order_links import OrderLinks

log = logging.getLogger("triage")


class _SkippedTickFilter(logging.Filter):
    """The scheduler warns when a tick falls due while the previous one still runs. With one
    worker and ``max_instances=1`` that is normal (a long study holds the worker): the record
    is demoted to DEBUG (shown only when the scheduler's logger is at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "maximum number of running instances" in str(
            record.msg
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_SKIPPED_TICK_FILTER = _SkippedTickFilter()


def new_scheduler() -> BackgroundScheduler:
    """The pipeline's scheduler: one worker thread, so a study is never processed twice at
    once; a tick due while the previous one runs is skipped (logged at DEBUG)."""
    logging.getLogger("apscheduler.scheduler").addFilter(_SKIPPED_TICK_FILTER)
    return BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
    )


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the engine owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        data_dir = settings.data_dir
        # made, checked and locked first: a second engine on it stops here, with one line
        self.data_lock = claim(data_dir)
        try:
            self._build(settings, data_dir)
        except BaseException:
            self.data_lock.release()
            raise

    def _build(self, settings: Settings, data_dir: Path) -> None:
        self.routing = load_routing_rules(settings.rules_dir / "routing.yaml")
        self.urgency = load_urgency_rules(settings.rules_dir / "urgency.yaml")
        # a changed urgency.yaml is put in force at the next tick (a bad one refused, logged)
        self.rules_watcher = UrgencyRulesWatcher(
            settings.rules_dir / "urgency.yaml", initial=self.urgency
        )
        self.db = Database(settings.resolved_database_url)
        self.db.create_all()
        self.breaker = CircuitBreaker(
            settings.triton_breaker_failures, settings.triton_breaker_reset_seconds
        )
        # CT slices are read while a study arrives, so that at completion its volume is only
        # stacked (docs/performance.md, "Latency")
        self.slices = SliceCache()
        self.analyzer = TritonAnalyzer(
            data_dir, settings.models_dir, key_images=settings.key_images, slices=self.slices
        )
        self.triton = TritonSupervisor(
            settings,
            self.routing.models,
            self.analyzer,
            self.breaker,
            on_connected=self._triton_connected,
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
            ),
            retry_seconds=settings.retry_seconds,
            match_window_hours=settings.order_match_window_hours,
            rules_watcher=self.rules_watcher,
        )
        self.scheduler = new_scheduler()
        self.waker = CompletionWaker(self._wake_completion)
        self.dicom = DicomListener(settings, self.db, on_stored=self._on_stored)
        self.order_links = OrderLinks(self.db)  # used in the listener's on-order thread
        self.hl7 = HL7Listener(settings, self.db, on_orders=self._on_orders)
        self.endpoints: dict[str, Any] = {}
        self._server: _Server | None = None

    # -- events from the listeners ------------------------------------------------------
    def _on_stored(self, row: dict[str, Any]) -> None:
        """A new instance is stored (the DICOM listener's thread): its study's completion is
        due when its quiet period ends (woken then, not at the next tick), and a CT image that
        may be part of a model's volume is queued to be read ahead
        (:mod:`triage.inference.slices`)."""
        quiet = self.settings.stable_seconds_for(
            str(row.get("modality", "")), str(row.get("calling_ae", ""))
        )
        if any(r.expected_series for r in self.routing.rules):
            quiet = min(quiet, self.settings.expected_series_quiet_seconds)
        self.waker.stored(str(row["study_uid"]), quiet)
        if (
            row.get("modality") == "CT"
            and row.get("sop_class_uid") == CT_IMAGE_STORAGE
            and "LOCALIZER" not in str(row.get("image_type", "")).upper()
        ):
            self.slices.offer(self.settings.data_dir / str(row["path"]))

    def _on_orders(self, order_ids: list[int]) -> None:
        """Orders the HL7 listener acknowledged in the last few milliseconds (called in its
        on_order thread): one pipeline job for those that share an identifier with a stored
        study. The others (the usual case: the order comes before its images) are left out:
        :meth:`Pipeline.on_order` would find no study for them, and its queries would take the
        interpreter lock from the listener (docs/performance.md, "The running engine")."""
        if not self.scheduler.running:
            return
        try:
            near = self.order_links.near_studies(order_ids)
        except Exception as exc:  # the pipeline decides, as before the filter
            log.warning("orders %s: study look-up failed (%s); all handed on", order_ids, exc)
            near = list(order_ids)
        if near:
            self.scheduler.add_job(self._apply_orders, args=[near])

    def _wake_completion(self) -> None:
        """A study's quiet period ended: a tick (completion first) on the pipeline worker now."""
        if self.scheduler.running:
            self.scheduler.add_job(self.pipeline.tick)

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
            "dicom": {
                "ready": self.dicom.ready,
                "address": self.endpoints.get("dicom"),
                "counters": self.dicom.counters,
            },
            "hl7": {"ready": self.hl7.ready, "address": self.endpoints.get("hl7")},
            "scheduler": {"ready": self.scheduler.running},
            "ris": {
                # never "not ready": a RIS that does not answer keeps nothing from coming in
                # (images and orders are taken, the outbox waits); its wait is shown instead
                "ready": True,
                "configured": s.ris_configured,
                "address": f"{s.ris_host}:{s.ris_port}" if s.ris_configured else None,
                **self._ris_wait(),
            },
        }
        parts["triton"] = self.triton.health()
        return parts

    def _ris_wait(self) -> dict[str, Any]:
        """The outbox's RIS-wide wait, when the RIS is failing: ``failing`` (refused
        connections or messages without an ACK, in a row) and ``next_try`` (UTC)."""
        try:
            failures, until = load_backoff(self.db)
        except TriageError:
            return {}
        if not failures:
            return {}
        return {"failing": failures, "next_try": until.isoformat() if until else None}

    # -- lifecycle ------------------------------------------------------------------------
    def _triton_connected(self, url: str) -> None:
        """A new Triton client is attached: publish its address, retry AI-pending studies."""
        self.endpoints["triton"] = url
        self._write_endpoints()
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

    def _write_endpoints(self) -> None:
        path = self.settings.data_dir / "endpoints.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.endpoints, indent=2))
        tmp.replace(path)

    async def run(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        app = create_app(
            self.db, lambda: self.pipeline.urgency, self.health, s.data_dir, settings=s
        )
        self._close_pages = app.state.worklist_feed.close  # open live pages end at stop
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.bind_host, s.http_port))
        except OSError as exc:
            sock.close()
            self.data_lock.release()
            raise ConfigError.listen("http_port", s.bind_host, s.http_port, exc) from exc
        # Listen now, not when uvicorn starts serving: endpoints.json is written before that,
        # and a client reading it must be queued in the backlog, not refused.
        sock.listen(2048)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        server = _Server(config)
        self._server = server
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            host, port = sock.getsockname()[:2]
            self.endpoints["http"] = [host, port]
            log.info("HTTP API listening on http://%s:%d", host, port)
            try:
                self.endpoints["hl7"] = list(await self.hl7.start())
            except OSError as exc:
                raise ConfigError.listen("hl7_port", s.bind_host, s.hl7_port, exc) from exc
            log.info("HL7 MLLP listener on %s:%d", *self.endpoints["hl7"])
            self.slices.start()
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
            self.waker.start()
            self._write_endpoints()
            self.triton.start()
            await server.serve(sockets=[sock])
        finally:
            log.info("stopping")
            self.waker.stop()
            if self.scheduler.running:
                self.scheduler.shutdown(wait=True)
            await self.hl7.stop()
            self.order_links.close()
            self.dicom.stop()
            self.slices.stop()
            await asyncio.to_thread(self.triton.stop)
            sock.close()
            self.db.dispose()
            with contextlib.suppress(FileNotFoundError):
                (s.data_dir / "endpoints.json").unlink()
            self.data_lock.release()
            log.info("stopped")

    def request_stop(self) -> None:
        if self._server is not None:
            self._close_pages()  # else uvicorn waits for the pages' event streams to end
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
