"""The Monitoring and Integration pages and /metrics over HTTP (no browser): who may see
them (403 for the other roles), what they show, /metrics in the Prometheus text format, and
the dead-letter retry (CSRF token, the same code as ``triage outbox retry``, audited)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from triage.api.app import create_app
from triage.auth.users import add_user, new_token
from triage.feedback import record_verdict
from triage.store.models import AuditEvent, DicomAssociation, OutboundMessage, OutboxAction

from .conftest import PASSWORD, seed_study

HEALTH = {
    "dicom": {
        "ready": True,
        "address": ["127.0.0.1", 11112],
        "counters": {"released_mid_message": 0, "sop_class_refused": 2, "protocol_aborts": 1},
    },
    "hl7": {"ready": True, "address": ["127.0.0.1", 2575]},
    "ris": {"ready": True, "configured": True, "address": "ris.example:2576"},
}


def _client(db, rules, data_dir) -> TestClient:
    return TestClient(create_app(db, rules, lambda: HEALTH, data_dir), follow_redirects=False)


def _sign_in(client: TestClient, name: str) -> None:
    form = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    r = client.post(
        "/login", data={"csrf_token": token, "username": name, "password": PASSWORD, "next": "/"}
    )
    assert r.status_code == 303, r.text


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


@pytest.fixture
def accounts(db):
    add_user(db, "eddie", "engineer", PASSWORD)
    add_user(db, "ada", "admin", PASSWORD)
    return db


@pytest.mark.parametrize(
    ("user", "monitoring", "integration"),
    [("rita", 200, 403), ("mona", 200, 403), ("eddie", 403, 200), ("ada", 200, 200)],
)
def test_roles(accounts, rules, data_dir, user, monitoring, integration):
    c = _client(accounts, rules, data_dir)
    _sign_in(c, user)
    assert c.get("/monitoring").status_code == monitoring
    assert c.get("/integration").status_code == integration
    nav = c.get("/").text
    assert ('href="/monitoring"' in nav) == (monitoring == 200)
    assert ('href="/integration"' in nav) == (integration == 200)


def test_pages_and_metrics_need_credentials(db, rules, data_dir):
    c = _client(db, rules, data_dir)
    for path in ("/monitoring", "/integration"):
        r = c.get(path, headers={"Accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert c.get("/metrics").status_code == 401
    assert (
        c.get("/metrics", headers={"Authorization": "Bearer wrong-token-000000"}).status_code == 401
    )


def test_monitoring_page_shows_figures_and_changes_with_feedback(db, rules, data_dir):
    seed_study(db, rules, data_dir, study_uid="9.1", accession="POS1", probability=0.93)
    seed_study(db, rules, data_dir, study_uid="9.2", accession="NEG1", probability=0.1)
    c = _client(db, rules, data_dir)
    _sign_in(c, "mona")
    html = c.get("/monitoring").text
    assert "synthetic phantoms" in html and "model ich, version 1" in html
    row = re.search(r'<tr class="total">(.*?)</tr>', html, re.S).group(1)  # type: ignore[union-attr]
    cells = re.findall(r'<td class="num">(.*?)</td>', row, re.S)
    assert cells[0].strip() == "2"  # analysed
    assert cells[1].startswith("50 %") and "(1/2;" in cells[1]  # 1 of 2 positive
    assert cells[4].strip() == "0"  # no truth yet
    with db.session() as s:
        record_verdict(s, "9.1", "disagreed", who="rita")  # a false alert
    html = c.get("/monitoring").text
    row = re.search(r'<tr class="total">(.*?)</tr>', html, re.S).group(1)  # type: ignore[union-attr]
    cells = re.findall(r'<td class="num">(.*?)</td>', row, re.S)
    assert cells[4].strip() == "1"
    assert "0/1" in cells[7]  # PPV 0 of 1
    assert "(1/1;" in cells[8]  # one false alert per study judged
    with db.session() as s:
        views = s.exec(select(AuditEvent).where(AuditEvent.obj == "monitoring")).all()
    assert [v.user for v in views] == ["mona", "mona"]


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"(,|$)')


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A strict reading of the text format: each family declared (HELP, TYPE) before its
    samples; each sample ``name{label="value",...} number``."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter") and name not in types
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, body, value = m.groups()
        assert name in types, f"{name} has no TYPE line before it"
        labels: dict[str, str] = {}
        pos = 0
        while body and pos < len(body):
            lm = _LABEL.match(body, pos)
            assert lm, f"bad labels in {line!r}"
            labels[lm.group(1)] = lm.group(2).replace('\\"', '"').replace("\\\\", "\\")
            pos = lm.end()
        samples.setdefault(name, []).append((labels, float(value)))
    return samples


def test_metrics_text_format_with_model_and_version_labels(accounts, rules, data_dir):
    db = accounts
    seed_study(db, rules, data_dir, study_uid="8.1", accession="P1", probability=0.9)
    seed_study(db, rules, data_dir, study_uid="8.2", accession="N1", probability=0.2)
    with db.session() as s:
        record_verdict(s, "8.1", "agreed", who="rita")
        s.add(
            DicomAssociation(calling_ae='CT"1', address="10.0.0.5", outcome="released", stored=40)
        )
    token = new_token(db, "eddie")
    c = _client(db, rules, data_dir)
    r = c.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse_exposition(r.text)
    lab = {"model": "ich", "version": "1", "window": "28d"}
    assert m["triage_ai_studies_analysed"] == [(lab, 2.0)]
    assert m["triage_ai_positive_rate"] == [(lab, 0.5)]
    assert m["triage_ai_sensitivity"] == [(lab, 1.0)]
    (low,) = m["triage_ai_sensitivity_ci_low"]
    assert low[1] == pytest.approx(0.2065, abs=1e-4)  # Wilson 1/1
    assert "triage_ai_specificity" not in m  # no negative with a known truth: left out
    assert ({"notice": "models trained on synthetic phantoms; not for clinical use"}, 1.0) in m[
        "triage_ai_notice"
    ]
    assert ({"model": "ich", "version": "1", "status": "done"}, 2.0) in m[
        "triage_ai_findings_total"
    ]
    assert ({"outcome": "released"}, 40.0) in m["triage_dicom_instances_stored_total"]
    assert ({"event": "protocol_aborts"}, 1.0) in m["triage_dicom_protocol_events_total"]
    assert ({"component": "dicom"}, 1.0) in m["triage_component_ready"]
    assert {t["test"] for t, _ in m["triage_ai_drift_alert"]} >= {"positive_rate", "score_psi"}


def _dead_letter(db, study_uid: str = "7.1", **kw) -> int:
    with db.session() as s:
        msg = OutboundMessage(
            study_uid=study_uid,
            kind="ORU",
            control_id="TRG0007",
            raw="MSH|^~\\&|TRIAGE|TRIAGE|RIS|HOSP|||ORU^R01|TRG0007|P|2.5.1",
            status="rejected",
            order_key="ACC7",
            ack_code="AE",
            ris_error="unknown order",
            attempts=1,
            dead_at=datetime.now(UTC) - timedelta(minutes=5),
            **kw,
        )
        s.add(msg)
        s.flush()
        assert msg.id is not None
        return msg.id


def test_retry_a_dead_letter_from_the_integration_page(accounts, rules, data_dir):
    db = accounts
    mid = _dead_letter(db)
    c = _client(db, rules, data_dir)
    _sign_in(c, "eddie")
    html = c.get("/integration").text
    assert "unknown order" in html and "TRG0007" in html and "sop class refused: 2" in html
    url = f"/integration/outbox/{mid}/retry"
    assert c.post(url, data={"note": "fixed"}).status_code == 403  # no CSRF token
    r = c.post(url, data={"csrf_token": _csrf(html), "note": "order fixed in the RIS"})
    assert r.status_code == 303 and r.headers["location"].startswith("/integration?retried=")
    with db.session() as s:
        msg = s.get(OutboundMessage, mid)
        assert msg is not None and msg.status == "pending" and msg.dead_at is None
        (action,) = s.exec(select(OutboxAction)).all()
        assert (action.who, action.action, action.note) == (
            "eddie",
            "retry",
            "order fixed in the RIS",
        )
        (ev,) = s.exec(select(AuditEvent).where(AuditEvent.action == "outbox-retry")).all()
        assert (ev.user, ev.obj) == ("eddie", f"outbox:{mid}")
    sent = _dead_letter(db, study_uid="7.2")
    with db.session() as s:
        row = s.get(OutboundMessage, sent)
        assert row is not None
        row.status = "sent"
        s.add(row)
    refused = c.post(f"/integration/outbox/{sent}/retry", data={"csrf_token": _csrf(html)})
    assert refused.status_code == 409 and "only a dead letter" in refused.text
    # and a radiologist may not
    c2 = _client(db, rules, data_dir)
    _sign_in(c2, "rita")
    tok = _csrf(c2.get("/").text)
    assert c2.post(url, data={"csrf_token": tok}).status_code == 403
