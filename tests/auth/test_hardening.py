"""What a security review of the HTTP side asked for (found by an audit): bounded request
bodies and password checks, no account enumeration through the lock-out, no framing or
caching of patient data, every view audited, live streams that end with their sign-in."""

from __future__ import annotations

import asyncio

from sqlmodel import select

from auth.authkit import form_token, sign_in
from triage.auth import routes as auth_routes
from triage.store.models import AuditEvent


def _login(client, name: str, password: str):
    page = client.get("/login")
    return client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": form_token(page.text)},
        follow_redirects=False,
    )


def test_a_body_over_the_limit_is_refused_before_it_is_read(client):
    """An unauthenticated 200 MiB POST /login was read whole before its size was checked."""
    from triage.api.guards import MAX_REQUEST_BYTES

    r = client.post(
        "/login",
        content=b"x" * (MAX_REQUEST_BYTES + 1),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_a_chunked_body_over_the_limit_is_answered_413(client):
    """Without Content-Length (chunked), the body is cut where it passes the limit and the
    answer is 413 - it was a 500 with a ClientDisconnect traceback in the log, per request."""
    from triage.api.guards import MAX_REQUEST_BYTES

    def chunks():
        for _ in range(MAX_REQUEST_BYTES // 65536 + 4):
            yield b"x" * 65536

    r = client.post(
        "/login", content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_unknown_names_lock_like_accounts_do(client, users):
    """A real account answered 429 after five failures, an unknown name 401 for ever: the
    lock-out told a stranger which names exist."""
    answers = {}
    for name in ("rita", "nobody-here"):
        codes = [_login(client, name, "wrong password!").status_code for _ in range(6)]
        answers[name] = codes
    assert answers["rita"] == answers["nobody-here"] == [401, 401, 401, 401, 429, 429]


def test_the_right_password_does_not_open_a_locked_account(client, users, db):
    for _ in range(5):
        _login(client, "rita", "wrong password!")
    assert sign_in(client, "rita").status_code == 429


def test_too_many_password_checks_at_once_are_answered_429(client, users):
    """Each argon2id check takes 64 MiB: a burst of sign-ins from a stranger is bounded."""
    held = [auth_routes._waiting.acquire(blocking=False) for _ in range(10)]
    try:
        assert all(held)
        r = _login(client, "rita", "whatever!")
        assert r.status_code == 429 and "Too many sign-ins" in r.text
        assert r.headers["retry-after"] == "2"
    finally:
        for _ in held:
            auth_routes._waiting.release()
    assert _login(client, "rita", "still wrong").status_code == 401


def test_pages_are_not_framed_cached_or_listed(client, users):
    sign_in(client, "rita")
    for path in ("/", "/api/worklist", "/login"):
        r = client.get(path)
        assert r.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["cache-control"] == "no-store", path
    assert client.get("/openapi.json").status_code == 404  # no route list for strangers


def test_an_id_past_the_integer_range_is_a_4xx(client, users):
    sign_in(client, "rita")
    r = client.get("/studies/1.2/findings/99999999999999999999999/plain.png")
    assert r.status_code == 404
    r = client.get("/api/studies/1.2/key-image", params={"model": "x" * 10})
    assert r.status_code == 404
    client.post("/logout", headers={"x-csrf-token": "none"})
    sign_in(client, "mark")  # a manager: the Rules page after an apply
    r = client.get("/rules", params={"applied": "99999999999999999999999"})
    assert 400 <= r.status_code < 500, r.status_code


def test_the_worklist_page_and_its_stream_are_audited(client, users, db):
    sign_in(client, "rita")
    assert client.get("/").status_code == 200
    with db.session() as s:
        views = s.exec(select(AuditEvent).where(AuditEvent.action == "view")).all()
    assert any(v.obj == "worklist" and v.user == "rita" for v in views)


def test_a_live_stream_ends_when_its_sign_in_is_no_longer_good(app):
    """Signed out, the worklist's event stream still pushed patient data every 30 s."""
    feed = app.state.worklist_feed
    good = [True]

    async def never() -> bool:
        return False

    async def read() -> list[str]:
        out = []
        async for chunk in feed.events(lambda rows: "", never, "", lambda: good[0]):
            out.append(chunk)
            good[0] = False  # signed out after the first event
        return out

    chunks = asyncio.run(asyncio.wait_for(read(), 10))
    assert chunks[0].startswith("retry:") and len(chunks) <= 2
