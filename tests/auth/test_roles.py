"""Who may do what: the 401/403 answers, the automation token, personal tokens, roles."""

from __future__ import annotations

import pytest
from fastapi import Depends, FastAPI

from auth.authkit import API_TOKEN, sign_in
from triage.auth.deps import require
from triage.auth.users import User, new_token, revoke_token, set_role

BEARER = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def app(app: FastAPI) -> FastAPI:
    """The engine's app with one endpoint per role-guarded action, as pages add them."""

    @app.post("/api/test/rules")
    def change_rules(user: User = Depends(require("manager"))) -> dict[str, str]:
        return {"by": user.name, "role": user.role}

    @app.post("/api/test/outbox")
    def outbox_action(user: User = Depends(require("engineer"))) -> dict[str, str]:
        return {"by": user.name}

    @app.post("/api/test/feedback")
    def feedback(user: User = Depends(require("radiologist"))) -> dict[str, str]:
        return {"by": user.name}

    @app.get("/api/test/anyone")
    def anyone(user: User = Depends(require())) -> dict[str, str]:
        return {"by": user.name}

    return app


def test_healthz_stays_open(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ready"


def test_no_credentials_401_json_for_api_redirect_for_pages(client):
    r = client.get("/api/worklist")
    assert r.status_code == 401
    assert r.json() == {
        "error": "authentication required",
        "detail": "sign in at /login, or send Authorization: Bearer <token>",
    }
    assert r.headers["www-authenticate"] == 'Bearer realm="triage"'
    r = client.get(
        "/api/worklist?since=1&x=a b",
        headers={"Accept": "text/html,application/xhtml+xml"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fapi%2Fworklist%3Fsince%3D1%26x%3Da%2520b"


def test_api_token_reads_as_radiologist_and_may_not_change_rules(client):
    r = client.get("/api/worklist", headers=BEARER)
    assert r.status_code == 200 and r.json()["count"] == 0
    assert client.post("/api/test/feedback", headers=BEARER).json() == {"by": "api-token"}
    r = client.post("/api/test/rules", headers=BEARER)
    assert r.status_code == 403
    body = r.json()
    assert body["error"] == "forbidden"
    assert "role radiologist" in body["detail"] and "manager, admin" in body["detail"]
    assert client.post("/api/test/outbox", headers=BEARER).status_code == 403


def test_wrong_or_malformed_bearer_is_401(client):
    for header in (f"Bearer {API_TOKEN}x", "Bearer ", f"Basic {API_TOKEN}", API_TOKEN):
        r = client.get("/api/worklist", headers={"Authorization": header})
        assert r.status_code == 401, header


def test_without_the_setting_no_bearer_token_is_accepted(db, clock):
    from fastapi.testclient import TestClient
    from support.paths import REPO_ROOT

    from triage.api.app import create_app
    from triage.config import Settings
    from triage.scoring import load_urgency_rules

    rules = load_urgency_rules(REPO_ROOT / "rules" / "urgency.yaml")
    app = create_app(db, rules, lambda: {}, settings=Settings(), clock=clock)
    with TestClient(app) as c:
        assert c.get("/api/worklist", headers={"Authorization": "Bearer "}).status_code == 401
        assert c.get("/api/worklist", headers=BEARER).status_code == 401


def test_personal_token_carries_its_users_role(client, users, db):
    token = new_token(db, "mark")
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/test/rules", headers=auth).json() == {
        "by": "mark",
        "role": "manager",
    }
    assert client.post("/api/test/feedback", headers=auth).status_code == 403
    assert client.get("/api/worklist", headers=auth).status_code == 200
    new_token(db, "mark")  # replaces the first
    assert client.post("/api/test/rules", headers=auth).status_code == 401
    token = new_token(db, "mark")
    revoke_token(db, "mark")
    r = client.get("/api/worklist", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("rita", {"feedback"}),
        ("mark", {"rules"}),
        ("erin", {"outbox"}),
        ("ada", {"rules", "outbox", "feedback"}),
    ],
)
def test_each_role_by_session(client, users, db, name, allowed):
    from sqlmodel import select

    from triage.store.models import AuthSession

    assert sign_in(client, name).status_code == 303
    assert client.get("/api/worklist").status_code == 200  # every role reads the worklist
    assert client.get("/api/test/anyone").json() == {"by": name}
    with db.session() as s:
        csrf = s.exec(select(AuthSession)).one().csrf_token
    for action in ("rules", "outbox", "feedback"):
        r = client.post(f"/api/test/{action}", headers={"X-CSRF-Token": csrf})
        assert (r.status_code == 200) == (action in allowed), (action, r.status_code)
        if r.status_code != 200:
            assert r.status_code == 403 and r.json()["error"] == "forbidden"


def test_role_change_applies_to_a_live_session(client, users, db):
    assert sign_in(client, "rita").status_code == 303
    assert client.get("/api/test/anyone").status_code == 200
    set_role(db, "rita", "manager")
    from sqlmodel import select

    from triage.store.models import AuthSession

    with db.session() as s:
        csrf = s.exec(select(AuthSession)).one().csrf_token
    r = client.post("/api/test/rules", headers={"X-CSRF-Token": csrf})
    assert r.json() == {"by": "rita", "role": "manager"}


def test_forbidden_page_request_gets_an_html_page(client, users):
    r = client.post(
        "/api/test/rules",
        headers={"Authorization": f"Bearer {API_TOKEN}", "Accept": "text/html"},
    )
    assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
    assert "may not do this" in r.text


def test_require_rejects_unknown_role_names():
    with pytest.raises(ValueError, match="unknown roles"):
        require("nurse")
