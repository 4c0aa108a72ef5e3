"""Re-scoring in the pipeline: aging on a tick (with an injected clock, no sleeps), a rules
file changed while the engine runs (a bad one refused, the old rules kept), and the history
row written for each change of engine priority with its cause. Real SQLite store, real rules,
a real MLLP peer as the RIS."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select
from support.paths import REPO_ROOT
from support.ris_peer import FakeRIS
from test_pipeline import ScriptedAnalyzer, add_order, add_study, positive, study

from triage.api.worklist import worklist
from triage.completion import CompletionPolicy
from triage.config import load_settings
from triage.errors import RulesError
from triage.outbound import RISNotifier
from triage.pipeline import MAX_FAILURES, Pipeline
from triage.routing import load_routing_rules
from triage.scoring import UrgencyRulesWatcher, load_urgency_rules
from triage.store import Database, OutboundMessage, Study, StudyState
from triage.store.models import PriorityChange, RulesVersion, utcnow

SHIPPED = REPO_ROOT / "rules" / "urgency.yaml"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)

    def set_to_completion_of(self, st: Study) -> None:
        """Now = the moment ``st`` completed (the completion step uses the real time)."""
        assert st.completed_at is not None
        done = st.completed_at
        self.now = done if done.tzinfo is not None else done.replace(tzinfo=UTC)


@pytest.fixture
def ris():
    r = FakeRIS()
    yield r
    r.close()


def make(tmp_path: Path, analyzer, ris: FakeRIS, rules_file: Path | None = None):
    env = {
        "TRIAGE_DATA_DIR": str(tmp_path),
        "TRIAGE_STUDY_STABLE_SECONDS": "0.05",
        "TRIAGE_RIS_HOST": "127.0.0.1",
        "TRIAGE_RIS_PORT": str(ris.port),
    }
    settings = load_settings(environ=env, overrides={"retry_seconds": 0.2})
    db = Database(settings.resolved_database_url)
    db.create_all()
    routing = load_routing_rules(REPO_ROOT / "rules" / "routing.yaml")
    clock = Clock()
    watcher = UrgencyRulesWatcher(rules_file) if rules_file is not None else None
    pipeline = Pipeline(
        db,
        routing,
        load_urgency_rules(SHIPPED),
        analyzer,
        RISNotifier(settings, db),
        completion=CompletionPolicy(
            stable_seconds_for=settings.stable_seconds_for,
            shortest_seconds=0.05,
            expected_series_quiet_seconds=0.05,
        ),
        retry_seconds=0.2,
        match_window_hours=settings.order_match_window_hours,
        rules_watcher=watcher,
        clock=clock,
    )
    return db, pipeline, clock


def changes(db: Database, uid: str) -> list[PriorityChange]:
    with db.session() as s:
        rows = s.exec(
            select(PriorityChange)
            .where(PriorityChange.study_uid == uid)
            .order_by(col(PriorityChange.id))
        ).all()
        return list(rows)


def orms(db: Database) -> list[str]:
    with db.session() as s:
        rows = s.exec(
            select(OutboundMessage)
            .where(OutboundMessage.kind == "ORM")
            .order_by(col(OutboundMessage.id))
        ).all()
        return [m.raw for m in rows]


def test_aging_lifts_a_waiting_study_on_a_tick(tmp_path, ris):
    """An emergency head CT, negative, waits: past its 30-minute target each minute adds a
    point; at 55 it becomes A (ASAP), the RIS is told once, and the history says aging."""
    db, p, clock = make(tmp_path, ScriptedAnalyzer([positive(0.1)]), ris)
    add_order(db, "ACC1", "R", "E")
    add_study(db, "1.1", accession="ACC1")
    p.tick()
    st = study(db, "1.1")
    assert (st.state, st.engine_priority, st.score) == (StudyState.SCORED, "R", 40)
    clock.set_to_completion_of(st)
    assert [(c.from_priority, c.to_priority, c.cause) for c in changes(db, "1.1")] == [
        ("", "R", "finding")
    ]

    clock.advance(40)  # 10 minutes late: +10, still R; the reasons say so
    p.tick()
    st = study(db, "1.1")
    assert st.score == 50 and st.engine_priority == "R"
    assert any(r.startswith("waiting 40 of 30 min: +10") for r in json.loads(st.reasons))
    assert len(changes(db, "1.1")) == 1 and orms(db) == []

    clock.advance(0.5)  # the scheduled re-score waits its rescore_every_seconds (60 s)
    p.tick()
    assert study(db, "1.1").score == 50

    clock.advance(5)  # 15 minutes late: 55 -> A
    p.tick()
    st = study(db, "1.1")
    assert st.score == 55 and st.engine_priority == "A" and st.sent_priority == "A"
    last = changes(db, "1.1")[-1]
    assert (last.from_priority, last.to_priority, last.cause) == ("R", "A", "aging")
    assert last.from_score == 50 and last.to_score == 55 and last.announced == "A"
    assert any("waiting 45 of 30 min: +15" in r for r in json.loads(last.reasons))
    assert len(orms(db)) == 1 and "|A" in orms(db)[0]
    assert len(ris.messages) == 2  # the ORM, and the AI result the RIS had not been told

    with db.session() as sess:  # the worklist API shows the reasons and the history
        (item,) = worklist(sess, p.urgency, now=clock.now)
    assert "waiting 45 of 30 min: +15" in item["reasons"]
    assert item["waiting_minutes"] == 45.5 and item["rules_version"] == p.urgency.version_id
    assert [(c["from"], c["to"], c["cause"]) for c in item["priority_changes"]] == [
        ("R", "A", "aging"),
        ("", "R", "finding"),
    ]
    assert item["engine_priority"] == "A" and item["score"] == 55  # the old fields stay

    clock.advance(600)  # capped at +30: no new change, nothing more sent
    p.tick()
    assert study(db, "1.1").score == 70 and len(changes(db, "1.1")) == 2
    assert len(orms(db)) == 1 and len(ris.messages) == 2


def test_a_study_completed_long_ago_is_no_longer_aged(tmp_path, ris):
    db, p, clock = make(tmp_path, ScriptedAnalyzer([positive(0.1)]), ris)
    add_order(db, "ACC2", "R", "E")
    add_study(db, "2.1", accession="ACC2")
    p.tick()
    clock.advance(25 * 60)  # past stop_after_hours (24)
    p.tick()
    assert study(db, "2.1").score == 40


def write_rules(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_a_changed_rules_file_is_picked_up_and_a_bad_one_refused(tmp_path, ris, caplog):
    rules_file = tmp_path / "urgency.yaml"
    text = SHIPPED.read_text(encoding="utf-8")
    write_rules(rules_file, text)
    db, p, _clock = make(tmp_path, ScriptedAnalyzer([positive(0.1)]), ris, rules_file)
    first = p.urgency.version_id
    add_order(db, "ACC3", "R", "E")
    add_study(db, "3.1", accession="ACC3")
    p.tick()
    assert study(db, "3.1").score == 40 and study(db, "3.1").rules_version == first

    # A manager makes emergency patients worth 40: the open study is re-scored at the tick.
    tuned = text.replace("E: {label: Emergency, points: 20", "E: {label: Emergency, points: 40")
    write_rules(rules_file, tuned)
    p.tick()
    st = study(db, "3.1")
    second = p.urgency.version_id
    assert second != first and st.rules_version == second
    assert st.score == 60 and st.engine_priority == "A" and st.sent_priority == "A"
    last = changes(db, "3.1")[-1]
    assert (last.to_priority, last.cause, last.cause_ref) == ("A", "rules", second)
    assert last.rules_version == second

    # A bad file: refused with file, line and reason; the tuned rules stay in force.
    bad = tuned.replace("  max_points: 30", "  max_points: lots")
    write_rules(rules_file, bad)
    with caplog.at_level(logging.ERROR, logger="triage.scoring"):
        p.tick()
        p.tick()
    line = next(i for i, x in enumerate(bad.splitlines(), 1) if "max_points: lots" in x)
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1  # logged once, not at every tick
    assert f"{rules_file}:{line}: 'max_points' must be a number" in refused[0].getMessage()
    assert isinstance(p.rules_watcher.refused, RulesError)
    assert p.urgency.version_id == second and study(db, "3.1").score == 60

    # Back to the shipped numbers: the internal score drops, the announced priority does not.
    write_rules(rules_file, text)
    p.tick()
    st = study(db, "3.1")
    assert p.urgency.version_id == first and st.rules_version == first
    assert st.score == 40 and st.engine_priority == "R"
    assert st.sent_priority == "A" and len(orms(db)) == 1  # the RIS is never sent a lower one
    last = changes(db, "3.1")[-1]
    assert (last.from_priority, last.to_priority, last.cause) == ("A", "R", "rules")
    assert last.announced == "A"
    with db.session() as s:
        versions = set(s.exec(select(RulesVersion.version_id)).all())
    assert versions == {first, second}


def test_rules_changed_while_the_engine_was_stopped_are_the_cause_at_start(tmp_path, ris):
    """The file edited while the engine was down: at start-up the open studies are re-scored
    with cause "rules" and the version in force (they were recorded as caused by "order",
    from the start-up's re-applied orders, with no line naming the new rules)."""
    rules_file = tmp_path / "urgency.yaml"
    text = SHIPPED.read_text(encoding="utf-8")
    write_rules(rules_file, text)
    db, p, _clock = make(tmp_path, ScriptedAnalyzer([positive(0.1)]), ris, rules_file)
    add_order(db, "ACC5", "R", "E")
    add_study(db, "5.1", accession="ACC5")
    p.tick()
    assert study(db, "5.1").score == 40
    tuned = text.replace("E: {label: Emergency, points: 20", "E: {label: Emergency, points: 40")
    write_rules(rules_file, tuned)  # while stopped
    db2, p2, _ = make(tmp_path, ScriptedAnalyzer([]), ris, rules_file)  # the restart
    p2.recover()
    st = study(db2, "5.1")
    assert st.score == 60 and st.rules_version == p2.urgency.version_id
    last = changes(db2, "5.1")[-1]
    assert (last.to_priority, last.cause, last.cause_ref) == ("A", "rules", st.rules_version)
    p2.recover()  # a plain restart, nothing changed: nothing more recorded
    assert changes(db2, "5.1")[-1].id == last.id


def test_every_priority_change_has_its_cause(tmp_path, ris):
    """A finding raises, an order change raises further; a re-score that changes nothing
    writes nothing."""
    db, p, _clock = make(tmp_path, ScriptedAnalyzer([positive(0.8)]), ris)
    add_order(db, "ACC4", "R", "O")
    add_study(db, "4.1", accession="ACC4")
    p.tick()  # 20 + 0 + 48 = 68 -> A
    order_id = add_order(db, "ACC4", "R", "E")  # now emergency: 88 -> S
    p.on_order(order_id)
    p.on_order(order_id)  # the same again: no change
    p.tick()
    rows = changes(db, "4.1")
    assert [(c.from_priority, c.to_priority, c.cause) for c in rows] == [
        ("", "A", "finding"),
        ("A", "S", "order"),
    ]
    finding_id = rows[0].cause_ref
    assert finding_id.isdigit() and rows[1].cause_ref == str(order_id)
    assert rows[1].from_score == 68 and rows[1].to_score == 88 and rows[1].announced == "S"
    assert all(c.rules_version == p.urgency.version_id for c in rows)
    assert "Emergency patient (E): +20" in json.loads(rows[1].reasons)
    # the RIS got ORM + ORU for the finding, then only the new priority (same AI result)
    assert len(orms(db)) == 2 and len(ris.messages) == 3


def test_watcher_refuses_unreadable_files_and_remembers_versions(tmp_path, caplog):
    path = tmp_path / "urgency.yaml"
    text = SHIPPED.read_text(encoding="utf-8")
    path.write_text(text, encoding="utf-8")
    w = UrgencyRulesWatcher(path)
    assert w.poll() is None and list(w.versions) == [w.current.version_id]
    path.unlink()  # an editor that renames files: a moment without it
    with caplog.at_level(logging.ERROR, logger="triage.scoring"):
        assert w.poll() is None
        assert w.poll() is None
    assert "file not found" in caplog.text or "cannot read" in caplog.text
    assert caplog.text.count("refused") == 1
    path.write_text(text.replace("max_points: 30", "max_points: 25"), encoding="utf-8")
    new = w.poll()
    assert new is not None and new.aging.max_points == 25 and w.current is new
    assert len(w.versions) == 2 and w.refused is None


def test_a_study_that_failed_for_good_still_ages(tmp_path, ris):
    """A study whose processing failed MAX_FAILURES times (no more retries) is still unread: the
    scheduled re-score ages it like any other open study, keeps it FAILED with its failure
    reason, and the RIS is told when it rises."""
    db, p, clock = make(tmp_path, ScriptedAnalyzer([positive(0.1)]), ris)
    add_order(db, "ACC9", "R", "E")
    add_study(db, "9.1", accession="ACC9")
    p.tick()
    clock.set_to_completion_of(study(db, "9.1"))
    for _ in range(MAX_FAILURES):  # what the pipeline records when processing raises
        p._failed("9.1", OSError("disk unreadable"))
    st = study(db, "9.1")
    assert st.state == StudyState.FAILED and st.ai_next_attempt_at is None
    assert (st.engine_priority, st.score) == ("R", 40)

    clock.advance(45)  # 15 minutes past the emergency target: 55 -> A
    p.tick()
    st = study(db, "9.1")
    assert st.state == StudyState.FAILED  # still failed: nothing retried it
    assert (st.engine_priority, st.score, st.sent_priority) == ("A", 55, "A")
    reasons = json.loads(st.reasons)
    assert "waiting 45 of 30 min: +15" in reasons
    assert any(r.startswith("Processing failed (OSError: disk unreadable)") for r in reasons)
    last = changes(db, "9.1")[-1]
    assert (last.from_priority, last.to_priority, last.cause) == ("R", "A", "aging")
    assert len(orms(db)) == 1 and "|A" in orms(db)[0]
