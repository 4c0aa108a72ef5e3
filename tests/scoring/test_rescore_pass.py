"""The scheduled re-score pass stores exactly what scoring each study afresh gives, pass after
pass: while studies wait, when their order, findings or priority change in the store behind
the pass's back, and when the rules change. Real SQLite store, no RIS (messages are queued)."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import col, select
from support.paths import REPO_ROOT

from triage.completion import CompletionPolicy
from triage.config import load_settings
from triage.outbound import RISNotifier
from triage.pipeline import RESCORED_STATES, Pipeline, _keep_failure
from triage.routing import load_routing_rules
from triage.scoring import Cause, UrgencyRules, load_urgency_rules
from triage.store import Database, Finding, Order, Study, StudyState
from triage.store.repo import latest_findings

SHIPPED = load_urgency_rules(REPO_ROOT / "rules" / "urgency.yaml")
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def build(tmp_path: Path, n: int = 80) -> tuple[Database, Pipeline, list[datetime]]:
    settings = load_settings(environ={"TRIAGE_DATA_DIR": str(tmp_path)})
    db = Database(settings.resolved_database_url)
    db.create_all()
    rnd = random.Random(15)
    states = [*RESCORED_STATES, StudyState.SCORED, StudyState.RECEIVING]
    with db.session() as s:
        for i in range(n):
            order = None
            if rnd.random() < 0.8:
                order = Order(
                    accession_number=f"A{i}",
                    ordered_priority=rnd.choice(["R", "R", "A", "S", "", "Q"]),
                    patient_class=rnd.choice(["E", "I", "O", ""]),
                    ordering_location=rnd.choice(["", "ICU^4", "STROKE^1", "WARD^2"]),
                    procedure_text=rnd.choice(["CT HEAD", "CT HEAD TRAUMA", "CT CHEST"]),
                )
                s.add(order)
                s.flush()
            done = T0 - timedelta(minutes=rnd.uniform(0, 200))
            s.add(
                Study(
                    study_uid=f"9.{i}",
                    accession_number=f"A{i}",
                    modality=rnd.choice(["CT", "MR"]),
                    state=rnd.choice(states),
                    completed_at=None if i % 9 == 0 else done,
                    last_received_at=done,
                    ordered_priority=order.ordered_priority if order else "",
                    patient_class=order.patient_class if order else "",
                    order_id=order.id if order else None,
                    reasons=json.dumps(["Processing failed (OSError: x); retry"]),
                )
            )
            for k in range(rnd.choice([0, 1, 1, 2])):  # a second one: a newer result
                p = rnd.random()
                s.add(
                    Finding(
                        study_uid=f"9.{i}",
                        model_name="ich",
                        model_version=str(k),
                        status=rnd.choice(["done", "done", "not_assessable"]),
                        probability=p,
                        positive=p >= 0.5,
                        threshold=0.5,
                        detail="",
                        created_at=T0 - timedelta(minutes=100 - k),
                    )
                )
    clock = [T0]
    pipeline = Pipeline(
        db,
        load_routing_rules(REPO_ROOT / "rules" / "routing.yaml"),
        SHIPPED,
        None,
        RISNotifier(settings, db),
        completion=CompletionPolicy(
            stable_seconds_for=settings.stable_seconds_for,
            shortest_seconds=10,
            expected_series_quiet_seconds=2,
        ),
        retry_seconds=15,
        match_window_hours=24,
        clock=lambda: clock[0],
    )
    return db, pipeline, clock


def check_fresh(db: Database, pipeline: Pipeline, now: datetime, failed: dict[str, str]) -> int:
    """Every open study holds score_study's result for its stored facts now (a FAILED study
    with its failure reason after them). Returns how many were checked."""
    checked = 0
    with db.session() as s:
        for st in s.exec(select(Study).order_by(col(Study.id))).all():
            if st.state not in RESCORED_STATES:
                assert st.scored_at is None  # never touched
                continue
            order = s.get(Order, st.order_id) if st.order_id is not None else None
            result = pipeline._score_one(st, order, latest_findings(s, st.study_uid), now)
            if st.state == StudyState.FAILED:
                result = _keep_failure(result, failed[st.study_uid])
            got = (st.score, st.engine_priority, json.loads(st.reasons), st.rules_version)
            want = (result.score, result.priority, result.reasons, result.rules_version)
            assert got == want, st.study_uid
            checked += 1
    return checked


def test_the_pass_stores_what_scoring_afresh_gives(tmp_path):
    db, p, clock = build(tmp_path)
    with db.session() as s:
        failed = {
            st.study_uid: st.reasons
            for st in s.exec(select(Study).where(Study.state == StudyState.FAILED)).all()
        }
    assert failed
    assert p.rescore_open(Cause.AGING) > 0
    assert check_fresh(db, p, clock[0], failed) > 40
    assert p.rescore_open(Cause.AGING) == 0  # the same moment again: nothing changes

    aged = 0
    for minutes in (1, 0.5, 6.5, 30, 240):  # into and past aging's points, and its cap
        clock[0] += timedelta(minutes=minutes)
        aged += p.rescore_open(Cause.AGING)
        check_fresh(db, p, clock[0], failed)
    assert aged > 0

    # facts changed in the store behind the pass's back: each is seen at the next pass
    with db.session() as s:
        for o in s.exec(select(Order)).all():
            o.procedure_text = "CT HEAD TRAUMA" if o.procedure_text != "CT HEAD TRAUMA" else ""
            o.ordering_location = "ICU^1"
            s.add(o)
        for st in s.exec(select(Study).where(col(Study.state).in_(RESCORED_STATES))).all():
            st.ordered_priority = "S" if st.ordered_priority != "S" else "R"
            st.modality = "MR" if st.modality == "CT" else "CT"
            s.add(st)
            s.add(
                Finding(
                    study_uid=st.study_uid,
                    model_name="ich",
                    model_version="9",
                    status="done",
                    probability=0.99,
                    positive=True,
                    threshold=0.5,
                    created_at=clock[0],
                )
            )
    assert p.rescore_open(Cause.AGING) > 40
    check_fresh(db, p, clock[0], failed)

    # other rules (the same version id, other numbers), then the first rules again
    other: UrgencyRules = replace(
        SHIPPED,
        findings={},
        aging=replace(SHIPPED.aging, points_per_minute=3, max_points=50),
    )
    for rules in (other, SHIPPED):
        p.urgency = rules
        assert p.rescore_open(Cause.RULES) > 0
        check_fresh(db, p, clock[0], failed)
