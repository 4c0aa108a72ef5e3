from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from support.paths import REPO_ROOT

from triage.api.app import create_app
from triage.config import Settings
from triage.scoring import load_urgency_rules
from triage.store import Database, Finding, Study, StudyState


@pytest.fixture
def db(tmp_path):
    d = Database(f"sqlite:///{tmp_path / 't.db'}")
    d.create_all()
    yield d
    d.dispose()


@pytest.fixture
def rules():
    return load_urgency_rules(REPO_ROOT / "rules" / "urgency.yaml")


TOKEN = "api-token-of-these-tests"  # their api_token setting (TRIAGE_API_TOKEN)


def client(db, rules, parts, *, auth=True):
    c = TestClient(create_app(db, rules, lambda: parts, settings=Settings(api_token=TOKEN)))
    if auth:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
    return c


def test_healthz_503_names_the_part_that_is_not_ready(db, rules):
    parts = {"dicom": {"ready": True}, "triton": {"ready": False, "detail": "starting"}}
    r = client(db, rules, parts, auth=False).get("/healthz")  # open: no credentials needed
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "not ready"
    assert body["components"]["triton"] == {"ready": False}  # the detail needs credentials
    r = client(db, rules, parts).get("/healthz")
    assert r.status_code == 503
    assert r.json()["components"]["triton"] == {"ready": False, "detail": "starting"}


def test_healthz_shows_no_topology_without_credentials(db, rules):
    """/healthz is open (load balancers): without credentials it says which part is ready
    and whether the RIS is failing, never where the RIS or Triton are, process ids, counters
    or error texts (a security review found the RIS and Triton addresses there)."""
    parts = {
        "dicom": {"ready": True, "address": ["0.0.0.0", 11112], "counters": {"aborted": 2}},
        "ris": {
            "ready": True,
            "configured": True,
            "address": "10.1.2.3:2575",
            "failing": 3,
            "next_try": "2026-12-07T10:00:00+00:00",
        },
        "triton": {"ready": True, "url": "10.1.2.4:8001", "pid": 4242, "models": {"ich": "READY"}},
    }
    body = client(db, rules, parts, auth=False).get("/healthz").json()
    assert body["components"] == {
        "dicom": {"ready": True},
        "ris": {
            "ready": True,
            "configured": True,
            "failing": 3,
            "next_try": "2026-12-07T10:00:00+00:00",
        },
        "triton": {"ready": True},
    }
    assert "10.1.2" not in str(body) and "4242" not in str(body)
    assert "bearer token" in body["detail"]
    wrong = client(db, rules, parts, auth=False)
    wrong.headers["Authorization"] = "Bearer not-the-token-at-all"
    assert "10.1.2" not in wrong.get("/healthz").text
    assert client(db, rules, parts).get("/healthz").json()["components"] == parts


def test_healthz_200_when_all_ready(db, rules):
    parts = {"dicom": {"ready": True}, "hl7": {"ready": True}}
    r = client(db, rules, parts, auth=False).get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ready"


def test_worklist_most_urgent_first_with_reasons(db, rules):
    with db.session() as s:
        s.add(
            Study(
                study_uid="1",
                accession_number="ROUTINE",
                ordered_priority="R",
                engine_priority="R",
                score=30,
                state=StudyState.SCORED,
            )
        )
        s.add(
            Study(
                study_uid="2",
                accession_number="BLEED",
                ordered_priority="R",
                engine_priority="S",
                score=85,
                state=StudyState.SCORED,
                reasons=json.dumps(["Score 85 -> priority S (raised from R)"]),
            )
        )
        s.add(
            Study(
                study_uid="3",
                accession_number="ASAP",
                ordered_priority="A",
                state=StudyState.RECEIVING,
            )
        )
        s.add(
            Finding(
                study_uid="2",
                model_name="ich",
                model_version="v",
                probability=0.97,
                positive=True,
                threshold=0.5,
            )
        )
    r = client(db, rules, {}).get("/api/worklist")
    assert r.status_code == 200
    body = r.json()
    assert "synthetic phantoms" in body["notice"]
    assert [s["accession_number"] for s in body["studies"]] == ["BLEED", "ASAP", "ROUTINE"]
    top = body["studies"][0]
    assert top["findings"][0]["model"] == "ich" and top["findings"][0]["positive"] is True
    assert top["reasons"] == ["Score 85 -> priority S (raised from R)"]
    assert body["studies"][1]["engine_priority"] == "A"  # unscored: listed as ordered


def test_unknown_path_and_method_answer_json(db, rules):
    c = client(db, rules, {})
    r = c.get("/api/nothing")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}
    r = c.post("/api/worklist")
    assert r.status_code == 405 and "error" in r.json()


def test_worklist_refuses_query_parameters_it_would_ignore(db, rules):
    """?limit=abc&sort=bogus answered 200 with every study: a client's filter did nothing."""
    c = client(db, rules, {})
    r = c.get("/api/worklist?limit=abc&sort=bogus")
    assert r.status_code == 400
    assert "takes no query parameters (got limit, sort)" in r.json()["error"]
    assert c.get("/api/worklist").status_code == 200
    r = c.get("/api/studies/1.2.3/key-image?model=zzz")
    assert r.status_code == 404
    assert r.json()["error"] == "no key image of model 'zzz' for this study"


def test_worklist_needs_credentials(db, rules):
    r = client(db, rules, {}, auth=False).get("/api/worklist")
    assert r.status_code == 401
    assert r.json()["error"] == "authentication required"
    assert r.headers["www-authenticate"].startswith("Bearer")
