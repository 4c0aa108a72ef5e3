"""The audit log: sign-ins and views are written with user, time, address and object; rows
are never changed; the export writes them as JSON lines."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlmodel import col, select

from auth.authkit import API_TOKEN, sign_in
from triage.auth.audit import audit, export_jsonl
from triage.store import Finding, Study, StudyState
from triage.store.models import AuditEvent

BEARER = {"Authorization": f"Bearer {API_TOKEN}"}


def rows(db) -> list[AuditEvent]:
    with db.session() as s:
        return list(s.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all())


def test_sign_ins_are_audited(client, users, db, clock):
    sign_in(client, "rita", "wrong password!")
    sign_in(client, "ghost", "wrong password!")
    assert sign_in(client, "rita").status_code == 303
    for _ in range(5):
        sign_in(client, "mark", "wrong password!")
    sign_in(client, "mark")
    got = [(r.user, r.action, r.obj, r.address) for r in rows(db)]
    assert got[:3] == [
        ("rita", "sign-in-failed", "user:rita", "testclient"),
        ("ghost", "sign-in-failed", "user:ghost", "testclient"),
        ("rita", "sign-in", "user:rita", "testclient"),
    ]
    assert [a for _, a, _, _ in got[3:]] == ["sign-in-failed"] * 5 + ["sign-in-locked"]
    every = rows(db)
    assert every[0].detail == "wrong user name or password (1 in a row)"
    assert every[2].detail == "role radiologist"
    assert every[-2].detail == (
        "wrong user name or password (5 in a row); locked until 2026-12-01T08:15:00+00:00"
    )
    assert every[-1].detail == "locked until 2026-12-01T08:15:00+00:00"
    assert all(r.at is not None for r in every)


def test_sign_out_is_audited(client, users, db):
    sign_in(client, "rita")
    with db.session() as s:
        from triage.store.models import AuthSession

        csrf = s.exec(select(AuthSession)).one().csrf_token
    client.post("/logout", headers={"X-CSRF-Token": csrf})
    assert [(r.user, r.action) for r in rows(db)][-1] == ("rita", "sign-out")


def test_views_of_patient_data_are_audited_with_who_and_what(client, users, db, tmp_path):
    with db.session() as s:
        s.add(Study(study_uid="1.2.3", accession_number="A1", state=StudyState.SCORED))
        s.add(Finding(study_uid="1.2.3", model_name="ich", key_image=""))
    assert client.get("/api/worklist", headers=BEARER).status_code == 200
    sign_in(client, "erin")
    assert client.get("/api/worklist").status_code == 200
    assert client.get("/api/studies/1.2.3/key-image").status_code == 404
    assert client.get("/api/worklist", headers={"Authorization": "Bearer nope"}).status_code == 401
    views = [(r.user, r.action, r.obj, r.address, r.detail) for r in rows(db) if r.action == "view"]
    assert views == [
        ("api-token", "view", "worklist", "testclient", "1 studies"),
        ("erin", "view", "worklist", "testclient", "1 studies"),
        ("erin", "view", "study:1.2.3", "testclient", "key image"),
    ]


def test_refused_requests_write_no_view(client, db):
    client.get("/api/worklist")
    assert [r for r in rows(db) if r.action == "view"] == []


def test_rows_can_be_neither_changed_nor_deleted(db):
    audit(db, "rita", "view", "worklist", "10.0.0.1")
    with pytest.raises(Exception, match="never updated"), db.engine.begin() as conn:
        conn.execute(text("UPDATE auditevent SET user = 'someone else'"))
    with pytest.raises(Exception, match="never deleted"), db.engine.begin() as conn:
        conn.execute(text("DELETE FROM auditevent"))
    assert [(r.user, r.obj) for r in rows(db)] == [("rita", "worklist")]


def test_export_writes_json_lines_in_order_with_time_filters(db):
    t = [datetime(2026, 12, 1, h, 0, tzinfo=UTC) for h in (8, 9, 10)]
    audit(db, "rita", "sign-in", "user:rita", "10.0.0.1", "role radiologist", at=t[0])
    audit(db, "rita", "view", "worklist", "10.0.0.1", "3 studies", at=t[1])
    audit(db, "mark", "rules-change", "rules:urgency", "10.0.0.2", "weights \u00e9", at=t[2])
    out = io.StringIO()
    assert export_jsonl(db, out) == 3
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [set(x) for x in lines] == [
        {"id", "at", "user", "action", "object", "address", "detail"}
    ] * 3
    assert lines[0]["at"] == "2026-12-01T08:00:00+00:00"
    assert [x["action"] for x in lines] == ["sign-in", "view", "rules-change"]
    assert lines[2]["detail"] == "weights \u00e9" and lines[2]["object"] == "rules:urgency"
    out = io.StringIO()
    assert export_jsonl(db, out, since=t[1], until=t[2]) == 1
    assert json.loads(out.getvalue())["action"] == "view"


def test_export_reads_in_batches(db):
    from triage.auth.audit import events

    for i in range(7):
        audit(db, f"u{i}", "view", "worklist", "a")
    assert [e.user for e in events(db, batch=3)] == [f"u{i}" for i in range(7)]
