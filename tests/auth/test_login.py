"""Sign-in, lock-out, session expiry, sign-out (the clock is moved by the tests)."""

from __future__ import annotations

from sqlmodel import select

from auth.authkit import PASSWORD, form_token, sign_in
from triage.auth.users import set_password
from triage.store.models import AuthSession


def test_login_page_is_a_labelled_form(client):
    r = client.get("/login")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert '<label for="username">' in html and 'id="username"' in html
    assert '<label for="password">' in html and 'type="password"' in html
    assert '<form method="post" action="/login">' in html and '<button type="submit">' in html
    assert form_token(html)


def test_sign_in_sets_a_strict_httponly_session_cookie_and_redirects_to_next(client, users, db):
    r = sign_in(client, "rita", next_url="/api/worklist?x=1")
    assert r.status_code == 303 and r.headers["location"] == "/api/worklist?x=1"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("triage_session="))
    low = cookie.lower()
    assert "httponly" in low and "samesite=strict" in low and "path=/" in low
    assert "secure" not in low  # session_cookie_secure defaults to false
    assert "max-age" not in low and "expires" not in low  # ends with the browser
    token = cookie.split(";")[0].split("=", 1)[1]
    with db.session() as s:
        rows = s.exec(select(AuthSession)).all()
    assert len(rows) == 1 and rows[0].user_name == "rita"
    assert rows[0].token_hash != token  # only its hash is stored
    assert client.get("/api/worklist").status_code == 200


def test_secure_cookie_when_configured(db, clock, users):
    from fastapi.testclient import TestClient
    from support.paths import REPO_ROOT

    from triage.api.app import create_app
    from triage.config import Settings
    from triage.scoring import load_urgency_rules

    rules = load_urgency_rules(REPO_ROOT / "rules" / "urgency.yaml")
    app = create_app(
        db, rules, lambda: {}, settings=Settings(session_cookie_secure=True), clock=clock
    )
    with TestClient(app, base_url="https://testserver") as c:
        r = sign_in(c, "rita")
    assert r.status_code == 303
    assert "secure" in r.headers["set-cookie"].lower()


def test_next_must_stay_on_this_server(client, users):
    for bad in ("https://evil.example/", "//evil.example/x", "/\\evil", "javascript:x"):
        r = sign_in(client, "rita", next_url=bad)
        assert r.status_code == 303 and r.headers["location"] == "/", bad


def test_wrong_password_and_unknown_user_get_the_same_answer(client, users):
    a = sign_in(client, "rita", "wrong password!")
    b = sign_in(client, "nobody", "wrong password!")
    assert a.status_code == b.status_code == 401
    assert "Wrong user name or password." in a.text and "Wrong user name or password." in b.text
    assert "triage_session" not in client.cookies


def test_login_post_without_its_form_token_is_refused(client, users):
    client.get("/login")
    r = client.post(
        "/login",
        data={"username": "rita", "password": PASSWORD, "csrf_token": "forged", "next": "/"},
        follow_redirects=False,
    )
    assert r.status_code == 403 and "expired" in r.text
    assert "triage_session" not in client.cookies


def test_five_failures_lock_the_account_for_fifteen_minutes(client, users, clock):
    for i in range(4):
        r = sign_in(client, "rita", "wrong password!")
        assert r.status_code == 401, i
    r = sign_in(client, "rita", "wrong password!")  # the fifth
    assert r.status_code == 429
    assert "locked until 08:15 UTC" in r.text and int(r.headers["retry-after"]) == 900
    # locked: even the right password is refused, with the same clear message
    clock.advance(minutes=14)
    r = sign_in(client, "rita")
    assert r.status_code == 429 and "locked until 08:15 UTC" in r.text
    assert int(r.headers["retry-after"]) == 60
    # other accounts are not affected
    assert sign_in(client, "mark").status_code == 303
    clock.advance(minutes=1, seconds=1)
    assert sign_in(client, "rita").status_code == 303


def test_lock_out_over_gives_a_full_set_of_tries(client, users, clock):
    for _ in range(5):
        sign_in(client, "rita", "wrong password!")
    clock.advance(minutes=16)
    for i in range(4):
        assert sign_in(client, "rita", "wrong password!").status_code == 401, i
    assert sign_in(client, "rita", "wrong password!").status_code == 429


def test_success_resets_the_failure_count(client, users):
    for _ in range(4):
        sign_in(client, "rita", "wrong password!")
    assert sign_in(client, "rita").status_code == 303
    for i in range(4):
        assert sign_in(client, "rita", "wrong password!").status_code == 401, i


def test_new_password_unlocks_and_ends_sessions(client, users, db):
    assert sign_in(client, "rita").status_code == 303
    assert client.get("/api/worklist").status_code == 200
    for _ in range(5):
        sign_in(client, "rita", "wrong password!")
    set_password(db, "rita", "a brand new password")
    assert client.get("/api/worklist").status_code == 401  # that session ended
    assert sign_in(client, "rita", "a brand new password").status_code == 303


def test_session_ends_when_idle(client, users, clock):
    assert sign_in(client, "rita").status_code == 303
    clock.advance(minutes=29)
    assert client.get("/api/worklist").status_code == 200  # used: idle time starts again
    clock.advance(minutes=29)
    assert client.get("/api/worklist").status_code == 200
    clock.advance(minutes=31)
    r = client.get("/api/worklist")
    assert r.status_code == 401 and r.json()["error"] == "authentication required"


def test_session_ends_after_its_maximum_age_even_when_used(client, users, clock):
    assert sign_in(client, "rita").status_code == 303
    for _ in range(16):  # 16 x 29 min = 7 h 44 min, never idle for 30 min
        clock.advance(minutes=29)
        assert client.get("/api/worklist").status_code == 200
    clock.advance(minutes=17)  # 8 h 01 min after sign-in
    assert client.get("/api/worklist").status_code == 401


def test_sign_out_ends_the_session(client, users, db):
    assert sign_in(client, "rita").status_code == 303
    token = client.cookies["triage_session"]
    page = client.get("/login")  # any page; the session's CSRF token comes from the store
    assert page.status_code == 200
    with db.session() as s:
        csrf = s.exec(select(AuthSession)).one().csrf_token
    r = client.post("/logout", headers={"X-CSRF-Token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    with db.session() as s:
        assert s.exec(select(AuthSession)).all() == []
    client.cookies.set("triage_session", token)  # the old cookie, replayed
    assert client.get("/api/worklist").status_code == 401


def test_expired_sessions_are_removed_at_the_next_sign_in(client, users, db, clock, app):
    from fastapi.testclient import TestClient

    assert sign_in(client, "rita").status_code == 303
    clock.advance(minutes=10)
    with TestClient(app) as other:
        assert sign_in(other, "mark").status_code == 303
    clock.advance(minutes=25)  # rita's session idle 35 min, mark's 25 min
    with TestClient(app) as third:
        assert sign_in(third, "erin").status_code == 303
    with db.session() as s:
        left = sorted(r.user_name for r in s.exec(select(AuthSession)).all())
    assert left == ["erin", "mark"]


def test_parallel_wrong_passwords_are_all_counted(db, users, clock):
    from concurrent.futures import ThreadPoolExecutor
    from datetime import timedelta

    from triage.auth.users import authenticate
    from triage.store.models import UserAccount

    def attempt(_: int):
        return authenticate(
            db,
            "rita",
            "wrong password!",
            max_failures=12,
            lockout=timedelta(minutes=15),
            now=clock(),
        )

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(attempt, range(12)))
    with db.session() as s:
        acc = s.exec(select(UserAccount).where(UserAccount.name == "rita")).one()
    assert acc.failed_logins == 12
    assert acc.locked_until is not None
    assert sorted(r.failures for r in results) == list(range(1, 13))
    assert [r.reason for r in results].count("locked") == 1
