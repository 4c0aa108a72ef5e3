"""CSRF: a state-changing request made with a session cookie must carry the session's token."""

from __future__ import annotations

import pytest
from fastapi import Depends, FastAPI, Request
from sqlmodel import select

from auth.authkit import API_TOKEN, sign_in
from triage.auth.deps import require
from triage.auth.routes import csrf_token
from triage.auth.users import User
from triage.store.models import AuthSession


@pytest.fixture
def app(app: FastAPI) -> FastAPI:
    @app.post("/api/test/change")
    async def change(request: Request, user: User = Depends(require())) -> dict[str, str]:
        body = (await request.body()).decode()
        return {"by": user.name, "body": body}

    @app.get("/api/test/token")
    def token(request: Request, user: User = Depends(require())) -> dict[str, str]:
        return {"csrf": csrf_token(request)}

    return app


def session_csrf(db) -> str:
    with db.session() as s:
        return s.exec(select(AuthSession)).one().csrf_token


def test_post_without_token_is_403(client, users, db):
    assert sign_in(client, "rita").status_code == 303
    r = client.post("/api/test/change", data={"note": "x"})
    assert r.status_code == 403
    assert r.json()["error"] == "CSRF token missing or wrong"
    r = client.post("/api/test/change", json={"note": "x"})
    assert r.status_code == 403
    r = client.delete("/api/test/change")
    assert r.status_code == 403


def test_wrong_token_is_403_and_html_for_pages(client, users, db):
    assert sign_in(client, "rita").status_code == 303
    r = client.post("/api/test/change", headers={"X-CSRF-Token": "guess"})
    assert r.status_code == 403
    r = client.post(
        "/api/test/change",
        data={"csrf_token": "guess"},
        headers={"Accept": "text/html"},
    )
    assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")


def test_header_token_passes(client, users, db):
    assert sign_in(client, "rita").status_code == 303
    r = client.post("/api/test/change", headers={"X-CSRF-Token": session_csrf(db)}, json={"a": 1})
    assert r.status_code == 200 and r.json() == {"by": "rita", "body": '{"a":1}'}


def test_form_field_token_passes_and_the_endpoint_still_reads_the_whole_form(client, users, db):
    assert sign_in(client, "rita").status_code == 303
    token = client.get("/api/test/token").json()["csrf"]  # what templates get: csrf_token()
    assert token == session_csrf(db)
    note = "ok " * 5000  # a body of several chunks
    r = client.post("/api/test/change", data={"csrf_token": token, "note": note})
    assert r.status_code == 200
    from urllib.parse import parse_qs

    fields = parse_qs(r.json()["body"])
    assert fields["note"] == [note] and fields["csrf_token"] == [token]


def test_token_of_another_session_is_refused(client, users, db, app):
    from fastapi.testclient import TestClient

    assert sign_in(client, "rita").status_code == 303
    with TestClient(app) as other:
        assert sign_in(other, "mark").status_code == 303
        with db.session() as s:
            marks = s.exec(select(AuthSession).where(AuthSession.user_name == "mark")).one()
        r = client.post("/api/test/change", headers={"X-CSRF-Token": marks.csrf_token})
        assert r.status_code == 403


def test_bearer_requests_need_no_csrf_token(client):
    r = client.post("/api/test/change", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert r.status_code == 200 and r.json()["by"] == "api-token"


def test_safe_methods_need_no_token(client, users):
    assert sign_in(client, "rita").status_code == 303
    assert client.get("/api/worklist").status_code == 200


def test_logout_without_token_is_refused(client, users, db):
    assert sign_in(client, "rita").status_code == 303
    assert client.post("/logout", follow_redirects=False).status_code == 403
    # a Basic header (a proxy's, which browsers add by themselves) is no excuse
    basic = {"Authorization": "Basic cml0YTpwYXNz"}
    assert client.post("/logout", headers=basic, follow_redirects=False).status_code == 403
    assert client.get("/api/worklist").status_code == 200  # still signed in
