"""The re-score pass's rows: read from SQLite's cursor, they hold what the engine's own result
rows hold (the path other databases take), once times and booleans are read alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from triage.store import Database, Finding, Order, Study, StudyState, scoring_rows
from triage.store.scoring_rows import OPEN_ROW, open_findings, open_rows, stored_time

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
STATES = (StudyState.SCORED, StudyState.AI_PENDING, StudyState.FAILED)
FIELDS = ("order.procedure_text", "order.ordering_location", "study.modality")


@pytest.fixture
def db(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'rows.db'}")
    db.create_all()
    with db.session() as s:
        o = Order(accession_number="A1", ordering_location="ICU^1", procedure_text="CT 'x'")
        s.add(o)
        s.flush()
        rows = [
            ("1", StudyState.SCORED, T0, o.id, T0),  # with an order
            ("2", StudyState.AI_PENDING, None, None, T0),  # not completed: last received
            ("3", StudyState.FAILED, T0 - timedelta(hours=30), None, T0),  # too old
            ("4", StudyState.RECEIVING, T0, None, T0),  # not open
            ("5", StudyState.SCORED, None, None, T0 - timedelta(hours=30)),  # too old
            ("6", StudyState.FAILED, T0 - timedelta(hours=23), 999, T0),  # order gone
        ]
        for uid, state, done, order_id, last in rows:
            s.add(
                Study(
                    study_uid=uid,
                    state=state,
                    completed_at=done,
                    last_received_at=last,
                    order_id=order_id,
                    modality="CT",
                    scored_at=T0 if uid == "1" else None,
                )
            )
        for uid, model, p, minutes in (
            ("1", "ich", 0.9, 0),
            ("1", "ich", 0.2, 5),
            ("2", "pe", 0.7, 1),
        ):
            s.add(
                Finding(
                    study_uid=uid,
                    model_name=model,
                    probability=p,
                    positive=p > 0.5,
                    threshold=0.5,
                    created_at=T0 + timedelta(minutes=minutes),
                )
            )
    yield db
    db.dispose()


def read(db: Database):
    cutoff = T0 - timedelta(hours=24)
    with db.session() as s:
        rows = open_rows(s, STATES, cutoff, FIELDS)
        findings = open_findings(s, STATES, cutoff)
    since, scored = OPEN_ROW.index("since"), OPEN_ROW.index("scored")
    alike = []
    for r in rows:
        r = list(r)
        r[since] = stored_time(r[since])
        r[scored] = bool(r[scored])
        alike.append(tuple(r))
    return sorted(alike), {
        uid: [(*f[:3], bool(f[3]), *f[4:]) for f in fs] for uid, fs in findings.items()
    }


def test_raw_and_engine_rows_are_alike(db, monkeypatch):
    raw = read(db)
    monkeypatch.setattr(scoring_rows, "RAW_SQLITE", False)
    assert read(db) == raw
    rows, findings = raw
    assert [r[1] for r in rows] == ["1", "2", "6"]
    one = dict(zip(OPEN_ROW, rows[0], strict=False))
    assert one["location"] == "ICU^1" and rows[0][len(OPEN_ROW) :] == ("CT 'x'", "ICU^1", "CT")
    assert one["since"] == T0.replace(tzinfo=None) and one["scored"] is True
    assert rows[2][len(OPEN_ROW) - 1 :] == ("", "", "", "CT")  # no order: empty fields
    assert [f[2] for f in findings["1"]] == [0.2]  # the newest per model only
    assert set(findings) == {"1", "2"}
