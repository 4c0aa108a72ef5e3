"""The engine's business logic: what happens after the listeners have persisted and acked.

Event handlers, each run on the single pipeline worker (so one study is never processed twice
at once):

- :meth:`Pipeline.tick`: pick up a changed urgency rules file (re-scoring the open studies),
  complete stable studies, retry AI that was pending and studies whose processing failed,
  re-score the open studies every ``aging.rescore_every_seconds`` (aging), retry RIS sends.
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
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, and_, col, or_, select

from triage.completion import CompletionPolicy, complete_stable_studies
from triage.errors import InferenceError, NotAssessable
from triage.ports import Analysis, Analyzer, Notifier
from triage.routing import RoutingRule, RoutingRules, route
from triage.routing.gather import facts_for_study
from triage.scoring import FindingInput, UrgencyRules, UrgencyRulesWatcher, score_study
from triage.scoring.history import Cause, record_change, record_in_force, remember_version
from triage.scoring.memo import Inputs, ScoreMemo, rule_fields
from triage.scoring.score import ScoreResult
from triage.store import Database, Finding, Instance, Order, Study, StudyState
from triage.store.models import aware, utcnow
from triage.store.repo import (
    latest_findings,
    link_order,
    studies_for_order,
    study_instances,
    study_reasons,
)
from triage.store.scoring_rows import (
    OPEN_ROW,
    FindingRow,
    open_findings,
    open_rows,
    stored_time,
    write_scores,
)

log = logging.getLogger("triage.pipeline")

MAX_FAILURES = 3  # processing errors in a row after which a study is no longer retried
#: Studies the scheduled re-score (aging, a rules change) looks at: scored and not changing.
OPEN_STATES = (StudyState.SCORED, StudyState.NOT_ROUTED, StudyState.AI_PENDING)
#: ... and a study whose processing failed: unread, it ages like the others (its state stays).
RESCORED_STATES = (*OPEN_STATES, StudyState.FAILED)
FAILED_REASON = "Processing failed"


@dataclass(frozen=True)
class _Outcome:
    """What running a model gave: an analysis, or None and the error (AI pending)."""

    model: str
    analysis: Analysis | None
    error: str
    fingerprint: str  # of the instances analysed


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
        rules_watcher: UrgencyRulesWatcher | None = None,
        clock: Callable[[], datetime] = utcnow,
        aging_time_scale: float = 1.0,
    ) -> None:
        """``rules_watcher``: picks up a changed urgency rules file at each tick (None: the
        rules stay as given); ``clock``: the time aging is measured with (UTC);
        ``aging_time_scale``: minutes of waiting counted per minute that passes (1; the demo's
        compressed shift uses 60)."""
        self.aging_time_scale = aging_time_scale
        self.db = db
        self.routing = routing
        self.urgency = rules_watcher.current if rules_watcher is not None else urgency
        self.rules_watcher = rules_watcher
        self.clock = clock
        self._last_rescore = clock()  # the first scheduled re-score: one period from now
        self.analyzer = analyzer
        self.notifier = notifier
        self.completion = completion
        self.retry_seconds = retry_seconds
        self.window = match_window_hours  # the order_match_window_hours setting
        # Rules found by expected_series_present in this tick's completion, kept for the
        # processing that follows (a study is routed once): uid -> (images, order, rule).
        self._routed: dict[str, tuple[tuple[datetime, int], int | None, RoutingRule | None]] = {}
        # The re-score pass's memo of scores (same results as score_study), one pass at a time.
        self._memo = ScoreMemo()
        self._rescoring = threading.Lock()
        try:
            with self.db.session() as s:
                remember_version(s, self.urgency, self.clock())
                record_in_force(s, self.urgency.version_id, self.clock())
        except Exception:  # recorded again at the next rules change; scoring goes on
            log.exception("cannot record urgency rules version %s", self.urgency.version_id)

    # -- events -------------------------------------------------------------------------
    def tick(self) -> None:
        """Periodic work: a changed rules file, completion, pending AI and failed-study
        retries, the scheduled re-score (aging), pending RIS sends."""
        self.check_rules()
        try:
            done = complete_stable_studies(
                self.db, self.completion, expected_series_present=self.expected_series_present
            )
            for uid, why in done:
                log.info("study %s complete: %s", uid, why)
                self.process_study(uid)
        finally:
            self._routed.clear()
        for uid in self._due_retries():
            self.process_study(uid)
        self._scheduled_rescore()
        self.notifier.send_pending()

    def check_rules(self) -> bool:
        """Put a changed urgency rules file in force and re-score the open studies with it.
        A file with an error is refused by the watcher (logged with file, line and reason) and
        the rules in force stay. True when new rules were put in force."""
        if self.rules_watcher is None:
            return False
        new = self.rules_watcher.poll()
        if new is None:
            return False
        self.urgency = new
        try:
            with self.db.session() as s:
                remember_version(s, new, self.clock())
                record_in_force(s, new.version_id, self.clock())
        except Exception:
            log.exception("cannot record urgency rules version %s", new.version_id)
        changed = self.rescore_open(Cause.RULES, new.version_id)
        log.info("urgency rules %s in force: %d open studies changed", new.version_id, changed)
        return True

    def _scheduled_rescore(self) -> None:
        aging = self.urgency.aging
        if aging.points_per_minute <= 0 or aging.max_points <= 0:
            return
        now = self.clock()
        if (now - self._last_rescore).total_seconds() < aging.rescore_every_seconds:
            return
        self._last_rescore = now
        self.rescore_open(Cause.AGING)

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
            self.rescore(uid, Cause.ORDER, str(order_id))

    def recover(self) -> None:
        """At start-up: re-score the open studies when the urgency rules changed while the
        engine was stopped (cause ``rules``, with the version in force, as a live change);
        then apply again the orders of the last ``match_window_hours``.

        The listener acknowledges an order before the pipeline handles it; an engine killed in
        between would otherwise leave a study linked to an old priority. Handling an order is
        idempotent (nothing is re-sent unless a priority rises or a result changes).
        """
        version = self.urgency.version_id
        with self.db.session() as s:  # open studies last scored with other rules
            stale = s.exec(
                select(Study.id)
                .where(col(Study.state).in_(RESCORED_STATES))
                .where(Study.rules_version != "", Study.rules_version != version)
                .limit(1)
            ).first()
        if stale is not None:  # the rules file changed while the engine was stopped
            changed = self.rescore_open(Cause.RULES, version)
            log.info(
                "start-up: urgency rules %s in force (changed while the engine was stopped): "
                "%d open studies changed",
                version,
                changed,
            )
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

    def expected_series_present(self, session: Session, study: Study) -> bool:
        """Whether every series the study's routing rule lists in ``expected_series`` is
        present (completion asks). The study is linked to its order and routed here; the rule
        is kept for its processing in the same tick."""
        if not any(r.expected_series for r in self.routing.rules):
            return False
        order = link_order(session, study, self.window)
        rule = route(self.routing, facts_for_study(session, study, order))
        images = (study.last_received_at, study.instance_count)
        self._routed[study.study_uid] = (images, study.order_id, rule)
        if rule is None or not rule.expected_series:
            return False
        descriptions = session.exec(
            select(Instance.series_description)
            .where(Instance.study_uid == study.study_uid)
            .distinct()
        ).all()
        return all(any(p.search(d or "") for d in descriptions) for p in rule.expected_series)

    def _route(self, session: Session, study: Study, order: Order | None) -> RoutingRule | None:
        """The study's routing rule: the one completion just found, when neither its images
        nor its order changed since, else routed now."""
        kept = self._routed.pop(study.study_uid, None)
        images = (study.last_received_at, study.instance_count)
        if kept is not None and kept[:2] == (images, study.order_id):
            return kept[2]
        return route(self.routing, facts_for_study(session, study, order))

    def _process(self, study_uid: str) -> None:
        with self.db.session() as s:
            study = _study(s, study_uid)
            if study is None:
                return
            order = link_order(s, study, self.window)
            rule = self._route(s, study, order)
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
        outcome: _Outcome | None = None
        if rule is None:
            log.info("study %s: no routing rule matched; listed at ordered priority", study_uid)
        elif again:
            log.info("study %s: same images as already analysed; re-scored only", study_uid)
        else:
            log.info("study %s routed to %s by rule %s", study_uid, rule.model, rule.name)
            outcome = self._analyze(study_uid, rule.model, instances, fingerprint)
        try:
            self._score(study_uid, processed=True, cause=Cause.COMPLETED, outcome=outcome)
        except Exception:
            if outcome is not None:  # keep what the model said: a retry only scores again
                self._keep(study_uid, outcome)
            raise

    def _keep(self, study_uid: str, outcome: _Outcome) -> None:
        """Store an analysis on its own, when the transaction that was to store and score it
        failed (best effort: the store may be what failed)."""
        try:
            with self.db.session() as s:
                study = _study(s, study_uid)
                if study is not None:
                    self._record(s, study, outcome, quiet=True)
        except Exception as exc:
            log.error("study %s: cannot keep its analysis either: %s", study_uid, exc)
            return
        a = outcome.analysis
        log.warning(
            "study %s: scoring failed; its analysis kept (%s %s p=%s), scored on the retry",
            study_uid,
            outcome.model,
            a.status if a is not None else "pending",
            a.probability if a is not None else "-",
        )

    def _analyze(
        self, study_uid: str, model: str, instances: list[Instance], fingerprint: str
    ) -> _Outcome:
        """Run the model (nothing stored: :meth:`_record` does it, in the scoring's
        transaction)."""
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
        return _Outcome(model, analysis, error, fingerprint)

    def _record(
        self, s: Session, study: Study, outcome: _Outcome, *, quiet: bool = False
    ) -> int | None:
        """Store an analysis (its Finding; the finding's id) or that AI is pending (None), in
        the transaction that scores the study: the worklist never shows the new state
        without the score and reasons that go with it. A study that took new images while
        the model ran keeps RECEIVING: it completes, and is analysed, again."""
        study.ai_attempts += 1
        receiving = study.state == StudyState.RECEIVING
        analysis = outcome.analysis
        if analysis is None:
            if not receiving:
                study.state = StudyState.AI_PENDING
            study.ai_status = "pending"
            study.ai_next_attempt_at = utcnow() + timedelta(seconds=self.retry_seconds)
            if not quiet:
                log.warning(
                    "study %s: AI pending (%s); retry in %.0fs",
                    study.study_uid,
                    outcome.error,
                    self.retry_seconds,
                )
            s.add(study)
            return None
        finding = Finding(
            study_uid=study.study_uid,
            model_name=analysis.model_name,
            model_version=analysis.model_version,
            status=analysis.status,
            probability=analysis.probability,
            positive=analysis.positive,
            threshold=analysis.threshold,
            key_slice=analysis.key_slice,
            key_instance=analysis.key_instance,
            key_frame=analysis.key_frame,
            series_uid=analysis.series_uid,
            detail=analysis.detail,
            key_image=analysis.key_image,
            inputs=analysis.inputs,
        )
        s.add(finding)
        study.ai_status = analysis.status
        study.ai_next_attempt_at = None
        study.analyzed_fingerprint = outcome.fingerprint
        if not receiving:
            study.state = StudyState.COMPLETE  # analysed; scored below
        if not quiet:
            log.info(
                "study %s: %s %s p=%s",
                study.study_uid,
                outcome.model,
                analysis.status,
                analysis.probability,
            )
        s.add(study)
        s.flush()
        return finding.id

    def rescore(self, study_uid: str, cause: Cause = Cause.ORDER, ref: str = "") -> None:
        """Score again a study already processed (its order changed); others wait their turn.
        An error marks the study FAILED, as in :meth:`process_study`."""
        try:
            self._score(study_uid, processed=False, cause=cause, ref=ref)
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

    def _score(
        self,
        study_uid: str,
        *,
        processed: bool,
        cause: Cause,
        ref: str = "",
        outcome: _Outcome | None = None,
    ) -> None:
        """Score a study from its order and latest findings (first storing ``outcome``, the
        analysis just made, in the same transaction); notify the RIS when it rose."""
        waiting = (
            {StudyState.RECEIVING}
            if processed
            else {StudyState.RECEIVING, StudyState.COMPLETE, StudyState.FAILED}
        )
        with self.db.session() as s:
            study = _study(s, study_uid)
            if study is None:
                return
            if outcome is not None:
                finding_id = self._record(s, study, outcome)
                if finding_id is not None:
                    cause, ref = Cause.FINDING, str(finding_id)
            if study.state in waiting:
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
            now = self.clock()
            result = self._score_one(study, order, findings, now)
            if study.state != StudyState.AI_PENDING and study.state != StudyState.NOT_ROUTED:
                study.state = StudyState.SCORED
            study.failures = 0
            raised_further, corrected = self._apply(
                s, study, order, findings, result, now, cause, ref
            )
        for uid in displaced:
            log.info("study %s: its order belongs to study %s; linked again", uid, study_uid)
            self.rescore(uid, Cause.ORDER, str(order.id) if order is not None else "")
        if raised_further or corrected:
            self.notifier.send_pending()

    def _score_one(
        self, study: Study, order: Order | None, findings: Sequence[Any], now: datetime
    ) -> ScoreResult:
        """The plain scoring function on a study's stored facts (``findings``: Finding
        objects, or rows with the same attributes)."""
        rules = self.urgency
        waited = self._waited(study.completed_at or study.last_received_at, now)
        return score_study(
            rules,
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
            ai_pending=study.state == StudyState.AI_PENDING,
            location=(order.ordering_location or "") if order is not None else "",
            waiting_minutes=waited,
            fields=_rule_fields(rules.fields_used, study, order),
        )

    def _waited(self, since: datetime | None, now: datetime) -> float | None:
        """Minutes waited since ``since`` for aging (``aging_time_scale`` applied); None when
        the time is not known."""
        if since is None:
            return None
        return (now - aware(since)).total_seconds() / 60.0 * self.aging_time_scale

    def _apply(
        self,
        s: Session,
        study: Study,
        order: Order | None,
        findings: list[Finding],
        result: ScoreResult,
        now: datetime,
        cause: Cause,
        ref: str,
    ) -> tuple[bool, bool]:
        """Store a score on a study; queue the RIS messages when its priority rose above what
        the RIS was sent (never a lower one) or its AI result changed since; record a change
        of engine priority with its cause. Returns (raised further, corrected)."""
        before_priority = study.engine_priority
        before_score = study.score if study.scored_at is not None else None
        study.score = result.score
        study.engine_priority = result.priority
        study.reasons = json.dumps(result.reasons)
        study.scored_at = now
        study.rules_version = result.rules_version
        sent = study.sent_priority
        rank = self.urgency.level
        raised_further = result.raised and (
            not sent or rank(result.priority).rank < rank(sent).rank
        )
        told = _finding_signature(findings)
        corrected = bool(sent) and not raised_further and told != study.sent_finding
        uid = study.study_uid
        if raised_further:
            log.info(
                "study %s raised %s -> %s (score %.1f, %s)",
                uid,
                result.ordered_priority,
                result.priority,
                result.score,
                cause,
            )
        elif corrected:
            log.info("study %s: AI result changed since the RIS was told; correcting", uid)
        if raised_further or corrected:
            # the AI result goes again only when the RIS has not been told this one
            results = findings if told != study.sent_finding else []
            queued = self.notifier.queue(
                s, study, order, results, order_change=raised_further, corrected=corrected
            )
            if queued:
                study.sent_finding = told
                if raised_further:
                    study.sent_priority = result.priority
            else:
                raised_further = corrected = False
        if result.priority != before_priority:
            record_change(
                s,
                study_uid=uid,
                at=now,
                from_priority=before_priority,
                to_priority=result.priority,
                from_score=before_score,
                to_score=result.score,
                cause=cause,
                cause_ref=ref,
                rules_version=result.rules_version,
                reasons=result.reasons,
                announced=study.sent_priority,
            )
        s.add(study)
        return raised_further, corrected

    def rescore_open(self, cause: Cause, ref: str = "") -> int:
        """Score again every open study (scored, not routed, AI pending, or failed for good
        and still unread; completed within the rules' ``aging.stop_after_hours``) in one
        transaction: the scheduled aging pass, and after a rules change. Returns how many
        changed. An error is logged, and the pass is tried again at its next turn.

        It reads only the columns scoring needs, as plain rows
        (:mod:`triage.store.scoring_rows`), and scores through a :class:`ScoreMemo`: a study
        whose inputs (priority, class, location, findings, the rules' fields) are those of
        the last pass costs only its aging term; the result is always :func:`score_study`'s.
        It writes only the studies whose score, priority, rules version or reasons changed:
        those whose priority stays and that the RIS need not be told of in one executemany
        ``UPDATE``; the few others (a priority change is recorded, a rise queued for the RIS)
        as in :meth:`_score`. A FAILED study keeps its state and its failure reason."""
        with self._rescoring:
            return self._rescore_open(cause, ref)

    def _rescore_open(self, cause: Cause, ref: str) -> int:
        now = self.clock()
        rules = self.urgency
        cutoff = now - timedelta(hours=rules.aging.stop_after_hours)
        fields = rule_fields(rules)
        memo = self._memo
        outcome = memo.outcome
        pending, failed = StudyState.AI_PENDING, StudyState.FAILED
        rank = rules.level
        n = len(OPEN_ROW)
        changed = notify = 0
        try:
            with self.db.session() as s:
                rows = open_rows(s, RESCORED_STATES, cutoff, fields)
                findings = open_findings(s, RESCORED_STATES, cutoff)
                quick: list[dict[str, object]] = []
                slow: list[tuple[int, ScoreResult]] = []
                for row in rows:
                    (sid, uid, state, ordered, pclass, score, priority, version, reasons) = row[:9]
                    mine = findings.get(uid, ())
                    try:
                        waited = self._waited(stored_time(row[11]), now)
                        inputs: Inputs = (
                            ordered,
                            pclass,
                            mine,
                            state == pending,
                            row[13],
                            row[n:],
                        )
                        if state == failed:
                            result = _keep_failure(memo.result(rules, inputs, waited), reasons)
                            new = (
                                result.score,
                                result.priority,
                                result.raised,
                                json.dumps(result.reasons),
                                result.rules_version,
                            )
                        else:
                            new = outcome(rules, inputs, waited)
                    except Exception:  # a bug: this study keeps its score
                        log.exception("study %s: re-score failed", uid)
                        continue
                    if (
                        new[0] == score
                        and new[1] == priority
                        and new[4] == version
                        and new[3] == reasons
                        and row[12]
                    ):
                        continue
                    changed += 1
                    sent = row[9]
                    raised_further = new[2] and (not sent or rank(new[1]).rank < rank(sent).rank)
                    corrected = (
                        bool(sent)
                        and not raised_further
                        and _finding_signature([FindingRow._make(f) for f in mine]) != row[10]
                    )
                    if raised_further or corrected or new[1] != priority:
                        result = memo.result(rules, inputs, waited)
                        if state == failed:
                            result = _keep_failure(result, reasons)
                        slow.append((sid, result))
                    else:
                        quick.append(
                            {
                                "_id": sid,
                                "_score": new[0],
                                "_priority": new[1],
                                "_reasons": new[3],
                                "_scored_at": now,
                                "_rules_version": new[4],
                            }
                        )
                memo.end_pass()
                write_scores(s, quick)
                slow.sort(key=lambda item: item[0])  # by id: the RIS hears in a fixed order
                for study_id, result in slow:
                    st = s.get(Study, study_id)
                    if st is None:
                        continue
                    order = s.get(Order, st.order_id) if st.order_id is not None else None
                    mine_full = latest_findings(s, st.study_uid)
                    raised, corrected = self._apply(
                        s, st, order, mine_full, result, now, cause, ref
                    )
                    notify += raised or corrected
        except Exception:
            log.exception("re-score of the open studies (%s) failed; tried again later", cause)
            return 0
        if changed:
            log.info("re-score (%s): %d of the open studies changed", cause, changed)
        if notify:
            self.notifier.send_pending()
        return changed

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


def _finding_signature(findings: Sequence[Any]) -> str:
    """What the RIS was told about a study's AI results (model and outcome)."""
    parts = []
    for f in sorted(findings, key=lambda f: f.model_name):
        outcome = f.status if f.status != "done" else ("positive" if f.positive else "negative")
        parts.append(f"{f.model_name}:{outcome}")
    return ",".join(parts)


def _study(session: Session, study_uid: str) -> Study | None:
    return session.exec(select(Study).where(Study.study_uid == study_uid)).first()


def _rule_fields(used: frozenset[str], study: Any, order: Any | None) -> dict[str, str] | None:
    """The order/study fields the urgency rules test, as text ("" when absent)."""
    if not used:
        return None
    values: dict[str, str] = {}
    for name in used:
        where, _, attr = name.partition(".")
        row: object = study if where == "study" else order
        value = getattr(row, attr, "") if row is not None else ""
        values[name] = "" if value is None else str(value)
    return values


def _keep_failure(result: ScoreResult, stored: str) -> ScoreResult:
    """A FAILED study's new score keeps the failure reason :meth:`Pipeline._failed` wrote (the
    worklist shows why it is stuck), after the score's own reasons."""
    try:
        old = json.loads(stored or "[]")
    except ValueError:
        old = []
    kept = [r for r in old if isinstance(r, str) and r.startswith(FAILED_REASON)]
    return replace(result, reasons=[*result.reasons, *kept]) if kept else result
