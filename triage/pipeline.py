"""The engine's business logic: what happens after the listeners have persisted and acked.

Event handlers, each run on the single pipeline worker (so one study is never processed twice
at once):

- :meth:`Pipeline.tick`: complete stable studies, retry AI that was pending, retry RIS sends.
- :meth:`Pipeline.on_order`: an order arrived or changed; link it and re-score its studies.

For a complete study: routing rules -> inference -> scoring -> outbound to the RIS.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlmodel import Session, col, select

from triage.completion import complete_stable_studies
from triage.errors import InferenceError, ModelNotReady, NotAssessable, TritonUnavailable
from triage.routing import RoutingRules, route
from triage.routing.gather import facts_for_study
from triage.scoring import FindingInput, UrgencyRules, score_study
from triage.store import Database, Finding, Instance, Order, Study, StudyState
from triage.store.models import utcnow
from triage.store.repo import latest_findings, link_order, studies_for_order, study_instances

log = logging.getLogger("triage.pipeline")


@dataclass(frozen=True)
class Analysis:
    """A model's answer for a study, ready to store as a Finding."""

    model_name: str
    model_version: str
    status: str  # done, not_assessable
    probability: float | None = None
    positive: bool = False
    threshold: float | None = None
    key_slice: int | None = None
    series_uid: str = ""
    detail: str = ""


class Analyzer(Protocol):
    def analyze(
        self, model: str, instances: list[Instance]
    ) -> Analysis:  # pragma: no cover - protocol
        """Run ``model`` on a study's instances. Raises NotAssessable / InferenceError."""
        ...


class Notifier(Protocol):
    """The RIS side, as an outbox: messages are queued in the scoring transaction, then sent."""

    def queue(
        self, session: Session, study: Study, order: Order | None, findings: list[Finding]
    ) -> None:  # pragma: no cover - protocol
        """Queue an ORM XO (new priority) and an ORU (AI result) for a study that rose."""
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
        stable_seconds: float,
        retry_seconds: float,
    ) -> None:
        self.db = db
        self.routing = routing
        self.urgency = urgency
        self.analyzer = analyzer
        self.notifier = notifier
        self.stable_seconds = stable_seconds
        self.retry_seconds = retry_seconds

    # -- events -------------------------------------------------------------------------
    def tick(self) -> None:
        """Periodic work: completion, pending AI retries, pending RIS sends."""
        for uid in complete_stable_studies(self.db, self.stable_seconds):
            log.info("study %s complete", uid)
            self.process_study(uid)
        for uid in self._due_ai_retries():
            self.process_study(uid)
        self.notifier.send_pending()

    def on_order(self, order_id: int) -> None:
        """An order was stored: link it to its studies and re-score those already scored."""
        with self.db.session() as s:
            order = s.get(Order, order_id)
            if order is None:
                return
            uids = [st.study_uid for st in studies_for_order(s, order)]
        for uid in uids:
            self.rescore(uid)

    # -- steps --------------------------------------------------------------------------
    def process_study(self, study_uid: str) -> None:
        """Route, analyse and score one complete study."""
        with self.db.session() as s:
            study = _study(s, study_uid)
            if study is None:
                return
            order = link_order(s, study)
            rule = route(self.routing, facts_for_study(s, study, order))
            study.routed_model = rule.model if rule else ""
            study.routing_rule = rule.name if rule else ""
            instances = list(study_instances(s, study_uid)) if rule else []
            if rule is None:
                study.state = StudyState.NOT_ROUTED
                study.ai_status = ""
            s.add(study)
        if rule is not None:
            log.info("study %s routed to %s by rule %s", study_uid, rule.model, rule.name)
            self._analyze(study_uid, rule.model, instances)
        else:
            log.info("study %s: no routing rule matched; listed at ordered priority", study_uid)
        self._score(study_uid, processed=True)

    def _analyze(self, study_uid: str, model: str, instances: list[Instance]) -> None:
        analysis: Analysis | None = None
        error = ""
        if self.analyzer is None:
            error = "no inference server configured"
        else:
            try:
                analysis = self.analyzer.analyze(model, instances)
            except NotAssessable as exc:
                analysis = Analysis(model, "", "not_assessable", detail=exc.reason)
            except (TritonUnavailable, ModelNotReady) as exc:
                error = str(exc)
            except InferenceError as exc:
                error = str(exc)
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
                    )
                )
                study.ai_status = analysis.status
                study.ai_next_attempt_at = None
                study.state = StudyState.COMPLETE  # analysed; scoring comes next
                log.info(
                    "study %s: %s %s p=%s", study_uid, model, analysis.status, analysis.probability
                )
            s.add(study)

    def rescore(self, study_uid: str) -> None:
        """Score again a study already processed (its order changed); others wait their turn."""
        self._score(study_uid, processed=False)

    def _score(self, study_uid: str, *, processed: bool) -> None:
        """Score a study from its order and latest findings; notify the RIS when it rose."""
        waiting = (
            {StudyState.RECEIVING} if processed else {StudyState.RECEIVING, StudyState.COMPLETE}
        )
        with self.db.session() as s:
            study = _study(s, study_uid)
            if study is None or study.state in waiting:
                return
            order = link_order(s, study)
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
            must_notify = result.raised and study.sent_priority != result.priority
            if must_notify:
                study.sent_priority = result.priority
                log.info(
                    "study %s raised %s -> %s (score %.1f)",
                    study_uid,
                    result.ordered_priority,
                    result.priority,
                    result.score,
                )
                self.notifier.queue(s, study, order, findings)
            s.add(study)
        if must_notify:
            self.notifier.send_pending()

    def _due_ai_retries(self) -> list[str]:
        now = utcnow()
        with self.db.session() as s:
            rows = s.exec(
                select(Study.study_uid).where(
                    Study.state == StudyState.AI_PENDING,
                    col(Study.ai_next_attempt_at) <= now,
                )
            ).all()
        return list(rows)


def _study(session: Session, study_uid: str) -> Study | None:
    return session.exec(select(Study).where(Study.study_uid == study_uid)).first()
