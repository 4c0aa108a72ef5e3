"""The engine's business logic: what happens after the listeners have persisted and acked.

Event handlers, each run on the single pipeline worker (so one study is never processed twice
at once):

- :meth:`Pipeline.tick`: complete stable studies, retry AI that was pending and studies whose
  processing failed, retry RIS sends.
- :meth:`Pipeline.on_order`: an order arrived or changed; link it and re-score its studies (and
  those it was linked to before: a lost link takes the old order's priority with it).

For a complete study: routing rules -> inference -> scoring -> outbound to the RIS. An error
while processing one study marks it FAILED (with the error as a reason, retried after
``retry_seconds``, at most :data:`MAX_FAILURES` times in a row); the others go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlmodel import Session, and_, col, or_, select

from triage.completion import CompletionPolicy, complete_stable_studies
from triage.errors import InferenceError, NotAssessable
from triage.routing import RoutingRules, route
from triage.routing.gather import facts_for_study
from triage.scoring import FindingInput, UrgencyRules, score_study
from triage.store import Database, Finding, Instance, Order, Study, StudyState
from triage.store.models import utcnow
from triage.store.repo import (
    latest_findings,
    link_order,
    studies_for_order,
    study_instances,
    study_reasons,
)

log = logging.getLogger("triage.pipeline")

MAX_FAILURES = 3  # processing errors in a row after which a study is no longer retried
FAILED_REASON = "Processing failed"


@dataclass(frozen=True)
class Analysis:
    """A model's answer for a study, ready to store as a Finding."""

    model_name: str
    model_version: str
    status: str  # done, not_assessable, error
    probability: float | None = None
    positive: bool = False
    threshold: float | None = None
    key_slice: int | None = None
    series_uid: str = ""
    detail: str = ""
    key_image: str = ""  # PNG path relative to the data dir; "" when none


class Analyzer(Protocol):
    def analyze(
        self, model: str, instances: list[Instance]
    ) -> Analysis:  # pragma: no cover - protocol
        """Run ``model`` on a study's instances. Raises NotAssessable / InferenceError."""
        ...


class Notifier(Protocol):
    """The RIS side, as an outbox: messages are queued in the scoring transaction, then sent."""

    def queue(
        self,
        session: Session,
        study: Study,
        order: Order | None,
        findings: list[Finding],
        *,
        order_change: bool = True,
        corrected: bool = False,
    ) -> bool:  # pragma: no cover - protocol
        """Queue an ORM XO (new priority, when ``order_change``) and an ORU per AI result
        (result status C when ``corrected``); False when nothing could be queued."""
        ...

    def send_pending(self) -> None:  # pragma: no cover - protocol
        """Send queued messages that are due; failures stay queued for a later retry."""
        ...


class Pipeline:
    def __init__(
        self,
        db: Database,
        routing: RoutingRules,
        urgency: UrgencyRules,
        analyzer: Analyzer | None,
        notifier: Notifier,
        *,
        completion: CompletionPolicy,
        retry_seconds: float,
        match_window_hours: float,
    ) -> None:
        self.db = db
        self.routing = routing
        self.urgency = urgency
        self.analyzer = analyzer
        self.notifier = notifier
        self.completion = completion
        self.retry_seconds = retry_seconds
        self.window = match_window_hours  # the order_match_window_hours setting

    # -- events -------------------------------------------------------------------------
    def tick(self) -> None:
        """Periodic work: completion, pending AI and failed-study retries, pending RIS sends."""
        done = complete_stable_studies(self.db, self.completion, match_window_hours=self.window)
        for uid, why in done:
            log.info("study %s complete: %s", uid, why)
            self.process_study(uid)
        for uid in self._due_retries():
            self.process_study(uid)
        self.notifier.send_pending()

    def on_order(self, order_id: int) -> None:
        """An order was stored: link it to its studies and re-score those already scored.

        The studies linked to the order before are linked again too: an order cancelled or
        moved to another study leaves them with the order they are linked to now, or none, and
        its priority and patient class go with it. ORC-5 = CM (exam completed) completes the
        order's studies that have images now.
        """
        to_process: list[str] = []
        to_retry: list[str] = []  # FAILED studies: processed again, not only re-scored
        to_rescore: list[str] = []
        with self.db.session() as s:
            order = s.get(Order, order_id)
            if order is None:
                return
            for st in studies_for_order(s, order, self.window):
                link_order(s, st, self.window)
                if st.state == StudyState.FAILED:
                    to_retry.append(st.study_uid)
                elif (
                    order.order_status.upper() == "CM"
                    and st.order_id == order.id
                    and st.state == StudyState.RECEIVING
                    and st.instance_count > 0
                ):
                    st.state = StudyState.COMPLETE
                    st.completed_at = utcnow()
                    to_process.append(st.study_uid)
                else:
                    to_rescore.append(st.study_uid)
                s.add(st)
        for uid in to_process:
            log.info("study %s complete: the RIS reports the exam completed (ORC-5 CM)", uid)
            self.process_study(uid)
        for uid in to_retry:
            log.info("study %s (failed before): processed again, its order changed", uid)
            self.process_study(uid)
        for uid in to_rescore:
            self.rescore(uid)

    def recover(self) -> None:
        """At start-up: apply again the orders of the last ``match_window_hours``.

        The listener acknowledges an order before the pipeline handles it; an engine killed in
        between would otherwise leave a study linked to an old priority. Handling an order is
        idempotent (nothing is re-sent unless a priority rises or a result changes).
        """
        since = utcnow() - timedelta(hours=self.window)
        with self.db.session() as s:
            ids = s.exec(
                select(Order.id).where(col(Order.updated_at) >= since).order_by(col(Order.id))
            ).all()
        for order_id in ids:
            if order_id is not None:
                self.on_order(order_id)
        if ids:
            log.info("start-up: %d recent orders applied again", len(ids))

    # -- steps --------------------------------------------------------------------------
    def process_study(self, study_uid: str) -> None:
        """Route, analyse and score one complete study.

        Idempotent: a study whose instance set was already analysed by the same model is only
        re-scored, never sent to the model again. An error marks the study FAILED (retried),
        never leaves it COMPLETE, and is not raised: the other studies go on.
        """
        try:
            self._process(study_uid)
        except Exception as exc:  # a bug or a broken store: this study only
            self._failed(study_uid, exc)

    def _process(self, study_uid: str) -> None:
        with self.db.session() as s:
            study = _study(s, study_uid)
            if study is None:
                return
            order = link_order(s, study, self.window)
            rule = route(self.routing, facts_for_study(s, study, order))
            instances = list(study_instances(s, study_uid)) if rule else []
            fingerprint = _fingerprint(instances)
            again = (
                rule is not None
                and study.routed_model == rule.model
                and study.analyzed_fingerprint == fingerprint
                and study.ai_status in ("done", "not_assessable")
            )
            study.routed_model = rule.model if rule else ""
            study.routing_rule = rule.name if rule else ""
            if rule is None:
                study.state = StudyState.NOT_ROUTED
                study.ai_status = ""
            s.add(study)
        if rule is None:
            log.info("study %s: no routing rule matched; listed at ordered priority", study_uid)
        elif again:
            log.info("study %s: same images as already analysed; re-scored only", study_uid)
        else:
            log.info("study %s routed to %s by rule %s", study_uid, rule.model, rule.name)
            self._analyze(study_uid, rule.model, instances, fingerprint)
        self._score(study_uid, processed=True)

    def _analyze(
        self, study_uid: str, model: str, instances: list[Instance], fingerprint: str
    ) -> None:
        analysis: Analysis | None = None
        error = ""
        if self.analyzer is None:
            error = "no inference server configured"
        else:
            try:
                analysis = self.analyzer.analyze(model, instances)
            except NotAssessable as exc:
                analysis = Analysis(model, "", "not_assessable", detail=exc.reason)
            except InferenceError as exc:  # server down, model not ready...: retried later
                error = str(exc)
            except Exception as exc:  # a bug or an unreadable file: not retried forever
                log.exception("study %s: analysis failed", study_uid)
                analysis = Analysis(model, "", "error", detail=f"analysis failed: {exc}")
        with self.db.session() as s:
            study = _study(s, study_uid)
            if study is None:
                return
            study.ai_attempts += 1
            if analysis is None:
                study.state = StudyState.AI_PENDING
                study.ai_status = "pending"
                study.ai_next_attempt_at = utcnow() + timedelta(seconds=self.retry_seconds)
                log.warning(
                    "study %s: AI pending (%s); retry in %.0fs",
                    study_uid,
                    error,
                    self.retry_seconds,
                )
            else:
                s.add(
                    Finding(
                        study_uid=study_uid,
                        model_name=analysis.model_name,
                        model_version=analysis.model_version,
                        status=analysis.status,
                        probability=analysis.probability,
                        positive=analysis.positive,
                        threshold=analysis.threshold,
                        key_slice=analysis.key_slice,
                        series_uid=analysis.series_uid,
                        detail=analysis.detail,
                        key_image=analysis.key_image,
                    )
                )
                study.ai_status = analysis.status
                study.ai_next_attempt_at = None
                study.analyzed_fingerprint = fingerprint
                study.state = StudyState.COMPLETE  # analysed; scoring comes next
                log.info(
                    "study %s: %s %s p=%s", study_uid, model, analysis.status, analysis.probability
                )
            s.add(study)

    def rescore(self, study_uid: str) -> None:
        """Score again a study already processed (its order changed); others wait their turn.
        An error marks the study FAILED, as in :meth:`process_study`."""
        try:
            self._score(study_uid, processed=False)
        except Exception as exc:  # a bug or a broken store: this study only
            self._failed(study_uid, exc)

    def _failed(self, study_uid: str, exc: Exception) -> None:
        """Record an error while processing a study: state FAILED, the error as a reason (the
        worklist shows it, at the study's ordered priority or above), and a retry after
        ``retry_seconds`` times the failures so far, up to :data:`MAX_FAILURES` in a row; then
        it waits for new images or an order change."""
        log.error("study %s: processing failed", study_uid, exc_info=exc)
        try:
            with self.db.session() as s:
                study = _study(s, study_uid)
                if study is None or study.state == StudyState.RECEIVING:
                    return  # gone, or new images came: it completes and is processed again
                study.failures += 1
                delay = self.retry_seconds * study.failures
                retried = study.failures < MAX_FAILURES
                study.state = StudyState.FAILED
                study.ai_next_attempt_at = utcnow() + timedelta(seconds=delay) if retried else None
                then = (
                    f"retry {study.failures} of {MAX_FAILURES - 1} in {delay:g} s"
                    if retried
                    else "no more retries until new images or an order change"
                )
                reasons = [r for r in study_reasons(study) if not r.startswith(FAILED_REASON)]
                reasons.append(
                    f"{FAILED_REASON} ({type(exc).__name__}: {exc}); {then}; "
                    "listed at ordered priority or above"
                )
                study.reasons = json.dumps(reasons)
                s.add(study)
            log.warning("study %s marked failed (%d in a row): %s", study_uid, study.failures, then)
        except Exception:
            log.exception(
                "study %s: cannot record the failure; retried at the next tick", study_uid
            )

    def _score(self, study_uid: str, *, processed: bool) -> None:
        """Score a study from its order and latest findings; notify the RIS when it rose."""
        waiting = (
            {StudyState.RECEIVING}
            if processed
            else {StudyState.RECEIVING, StudyState.COMPLETE, StudyState.FAILED}
        )
        with self.db.session() as s:
            study = _study(s, study_uid)
            if study is None or study.state in waiting:
                return
            order = link_order(s, study, self.window)
            displaced: list[str] = []
            if order is not None and study.order_link != "patient":
                # a study guessed by patient loses this order to the study it names
                displaced = list(
                    s.exec(
                        select(Study.study_uid).where(
                            Study.order_id == order.id,
                            Study.order_link == "patient",
                            Study.study_uid != study_uid,
                        )
                    ).all()
                )
            findings = latest_findings(s, study_uid)
            pending = study.state == StudyState.AI_PENDING
            result = score_study(
                self.urgency,
                ordered_priority=study.ordered_priority,
                patient_class=study.patient_class,
                findings=[
                    FindingInput(
                        f.model_name,
                        f.status,
                        f.probability,
                        f.positive,
                        f.threshold,
                        f.model_version,
                        f.detail,
                    )
                    for f in findings
                ],
                ai_pending=pending,
            )
            study.score = result.score
            study.engine_priority = result.priority
            study.reasons = json.dumps(result.reasons)
            study.scored_at = utcnow()
            if not pending and study.state != StudyState.NOT_ROUTED:
                study.state = StudyState.SCORED
            study.failures = 0
            sent = study.sent_priority
            raised_further = result.raised and (
                not sent or self.urgency.level(result.priority).rank < self.urgency.level(sent).rank
            )
            told = _finding_signature(findings)
            corrected = bool(sent) and not raised_further and told != study.sent_finding
            if raised_further:
                log.info(
                    "study %s raised %s -> %s (score %.1f)",
                    study_uid,
                    result.ordered_priority,
                    result.priority,
                    result.score,
                )
            elif corrected:
                log.info(
                    "study %s: AI result changed since the RIS was told; correcting", study_uid
                )
            if raised_further or corrected:
                queued = self.notifier.queue(
                    s, study, order, findings, order_change=raised_further, corrected=corrected
                )
                if queued:
                    study.sent_finding = told
                    if raised_further:
                        study.sent_priority = result.priority
                else:
                    raised_further = corrected = False
            s.add(study)
        for uid in displaced:
            log.info("study %s: its order belongs to study %s; linked again", uid, study_uid)
            self.rescore(uid)
        if raised_further or corrected:
            self.notifier.send_pending()

    def _due_retries(self) -> list[str]:
        """AI-pending and failed studies whose retry is due, and any study left COMPLETE (a
        study is COMPLETE only while this worker processes it, so one seen here was left by
        an engine that stopped, or an error that could not be recorded)."""
        now = utcnow()
        with self.db.session() as s:
            rows = s.exec(
                select(Study.study_uid)
                .where(
                    or_(
                        Study.state == StudyState.COMPLETE,
                        and_(
                            col(Study.state).in_((StudyState.AI_PENDING, StudyState.FAILED)),
                            col(Study.ai_next_attempt_at) <= now,
                        ),
                    )
                )
                .order_by(col(Study.id))
            ).all()
        return list(rows)


def _fingerprint(instances: list[Instance]) -> str:
    """Identifies a set of instances: the same images give the same fingerprint."""
    digest = hashlib.sha256()
    for uid in sorted(i.sop_instance_uid for i in instances):
        digest.update(uid.encode() + b"\0")
    return digest.hexdigest()[:32]


def _finding_signature(findings: list[Finding]) -> str:
    """What the RIS was told about a study's AI results (model and outcome)."""
    parts = []
    for f in sorted(findings, key=lambda f: f.model_name):
        outcome = f.status if f.status != "done" else ("positive" if f.positive else "negative")
        parts.append(f"{f.model_name}:{outcome}")
    return ",".join(parts)


def _study(session: Session, study_uid: str) -> Study | None:
    return session.exec(select(Study).where(Study.study_uid == study_uid)).first()
