"""Sign-in, sign-out, the session cookie, CSRF protection and the auth error answers.

``install_auth(app, db, settings)`` adds to a FastAPI app:

- ``GET /login``: a plain server-rendered form (labelled fields, keyboard only is enough);
  ``POST /login``: checks the password (argon2), the lock-out (``login_max_failures`` wrong
  passwords in a row lock the account for ``login_lockout_minutes``), starts a server-side
  session and redirects (303) to ``next``; every outcome is audited;
- ``POST /logout``: ends the session;
- the session cookie ``triage_session``: HttpOnly, SameSite=Strict, Secure when
  ``session_cookie_secure``, ending after ``session_max_minutes`` or ``session_idle_minutes``
  unused;
- CSRF: every POST/PUT/PATCH/DELETE made with a session cookie must carry the session's token,
  in the ``X-CSRF-Token`` header or a ``csrf_token`` form field (url-encoded forms), else 403.
  Templates get it from :func:`csrf_token`. Requests with an ``Authorization`` header are not
  checked (a browser never adds one by itself). The sign-in form has its own token (a
  short-lived cookie holding the same random value as the form);
- the answers for :class:`~triage.errors.NotAuthenticated` (401 JSON, or a redirect to
  ``/login?next=...`` for a page) and :class:`~triage.errors.Forbidden` (403).
"""

from __future__ import annotations

import hmac
import html
import secrets
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triage.auth.audit import audit
from triage.auth.deps import (
    SESSION_COOKIE,
    AuthContext,
    auth_context,
    client_address,
    session_of,
    wants_html,
)
from triage.auth.sessions import SessionStore
from triage.auth.users import Clock, SignIn, authenticate, utcnow
from triage.config import Settings
from triage.errors import Forbidden, NotAuthenticated
from triage.store import Database

__all__ = ["CSRF_FIELD", "CSRF_HEADER", "csrf_token", "install_auth", "safe_next"]

CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
LOGIN_CSRF_COOKIE = "triage_login_csrf"
LOGIN_FORM_SECONDS = 3600  # the sign-in form's own token lives this long
MAX_FORM_BYTES = 1024 * 1024  # a url-encoded form read for its CSRF field; larger: 413
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def csrf_token(request: Request) -> str:
    """The CSRF token to put in a form (``<input type="hidden" name="csrf_token">``) or the
    ``X-CSRF-Token`` header of a script's request: the signed-in session's; "" without one."""
    sess = session_of(request)
    return sess.csrf_token if sess is not None else ""


def safe_next(target: str | None) -> str:
    """``target`` when it is a path on this server (no scheme, no host), else ``/``."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)
    ):
        return "/"
    return target


def _login_page(next_url: str, form_token: str, message: str = "", username: str = "") -> str:
    esc = html.escape
    alert = f'<p id="login-error" role="alert" class="error">{esc(message)}</p>' if message else ""
    described = ' aria-describedby="login-error"' if message else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in - Triage</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #111; }}
main {{ max-width: 22rem; margin: 4rem auto; background: #fff; padding: 1.5rem 2rem;
       border: 1px solid #ccd; border-radius: 6px; }}
label {{ display: block; margin-top: 1rem; font-weight: 600; }}
input {{ width: 100%; box-sizing: border-box; padding: .5rem; font-size: 1rem;
        margin-top: .25rem; }}
button {{ margin-top: 1.5rem; padding: .5rem 1.25rem; font-size: 1rem; }}
:focus-visible {{ outline: 3px solid #1a5fb4; outline-offset: 2px; }}
.error {{ color: #a51d2d; font-weight: 600; }}
.note {{ font-size: .85rem; color: #444; }}
</style>
</head>
<body>
<main>
<h1>Sign in</h1>
{alert}
<form method="post" action="/login">
<input type="hidden" name="{CSRF_FIELD}" value="{esc(form_token)}">
<input type="hidden" name="next" value="{esc(next_url)}">
<label for="username">User name</label>
<input id="username" name="username" autocomplete="username" required autofocus
 value="{esc(username)}"{described}>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>
<p class="note">Triage engine. AI findings come from models trained on synthetic phantoms
only; not for clinical use.</p>
</main>
</body>
</html>
"""


def _error_page(status: int, title: str, message: str) -> HTMLResponse:
    esc = html.escape
    body = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}'
        f"</title></head><body><main><h1>{esc(title)}</h1><p>{esc(message)}</p>"
        '<p><a href="/">Back</a></p></main></body></html>\n'
    )
    return HTMLResponse(body, status_code=status)


# Password checks (argon2id, 64 MiB and ~0.2 s each) run at most PASSWORD_CHECKS at once; at
# most WAITING_CHECKS more wait for a turn, and a sign-in beyond that is answered 429 at once:
# a stranger's burst of sign-ins can take neither the memory nor the worker threads the
# pages use.
PASSWORD_CHECKS = 2
WAITING_CHECKS = 8
_checks = threading.BoundedSemaphore(PASSWORD_CHECKS)
_waiting = threading.BoundedSemaphore(PASSWORD_CHECKS + WAITING_CHECKS)


def _limited(check: Callable[..., SignIn], *args: Any, **kwargs: Any) -> SignIn | None:
    """``check(*args, **kwargs)`` when a turn comes (None: too many waiting already)."""
    if not _waiting.acquire(blocking=False):
        return None
    try:
        with _checks:
            return check(*args, **kwargs)
    finally:
        _waiting.release()


class CSRFMiddleware:
    """Refuses (403) a state-changing request made with a live session cookie unless it
    carries that session's CSRF token (header, or field of a url-encoded form)."""

    def __init__(self, app: ASGIApp, ctx: AuthContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        cookie = request.cookies.get(SESSION_COOKIE, "")
        bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
        # a browser never adds a Bearer header by itself (it does add a proxy's Basic one)
        if bearer or request.url.path == "/login" or not cookie:
            await self.app(scope, receive, send)  # require() answers 401 where it must
            return
        sess = await run_in_threadpool(self.ctx.sessions.get, cookie)
        request.state.auth_session = sess  # shared with the endpoint's Request (scope state)
        if sess is None:
            await self.app(scope, receive, send)
            return
        token = request.headers.get(CSRF_HEADER, "")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not token and ctype == "application/x-www-form-urlencoded":
            body = b""
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_FORM_BYTES:
                    await JSONResponse({"error": "form too large"}, 413)(scope, receive, send)
                    return
            fields = parse_qs(body.decode("latin-1"), keep_blank_values=True)
            token = (fields.get(CSRF_FIELD) or [""])[0]
            receive = _replay(body)
        if not token or not hmac.compare_digest(token.encode(), sess.csrf_token.encode()):
            detail = (
                "this request must carry the session's CSRF token "
                f"(header X-CSRF-Token or form field {CSRF_FIELD}); reload the page and retry"
            )
            response: Response
            if wants_html(request):
                response = _error_page(403, "Request refused", detail)
            else:
                response = JSONResponse(
                    {"error": "CSRF token missing or wrong", "detail": detail}, 403
                )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def install_auth(
    app: FastAPI, db: Database, settings: Settings, *, clock: Clock | None = None
) -> None:
    """Add sign-in/out, sessions, CSRF and the auth error answers to ``app`` (see the module
    docstring). ``clock``: the time source (tests move it); default: the real UTC time."""
    now = clock or utcnow
    ctx = AuthContext(
        db=db,
        sessions=SessionStore(
            db,
            max_age=timedelta(minutes=settings.session_max_minutes),
            idle=timedelta(minutes=settings.session_idle_minutes),
            clock=now,
        ),
        api_token=settings.api_token.get_secret_value(),
        cookie_secure=settings.session_cookie_secure,
        max_failures=settings.login_max_failures,
        lockout=timedelta(minutes=settings.login_lockout_minutes),
        clock=now,
    )
    app.state.auth = ctx
    app.add_middleware(CSRFMiddleware, ctx=ctx)

    @app.exception_handler(NotAuthenticated)
    async def _not_authenticated(request: Request, exc: NotAuthenticated) -> Response:
        if wants_html(request) and request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return JSONResponse(
            {
                "error": "authentication required",
                "detail": "sign in at /login, or send Authorization: Bearer <token>",
            },
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="triage"'},
        )

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        if wants_html(request):
            return _error_page(403, "Not allowed", str(exc))
        return JSONResponse({"error": "forbidden", "detail": str(exc)}, status_code=403)

    def form_response(
        next_url: str, message: str = "", username: str = "", status: int = 200
    ) -> HTMLResponse:
        form_token = secrets.token_urlsafe(32)
        response = HTMLResponse(
            _login_page(next_url, form_token, message, username), status_code=status
        )
        response.headers["Cache-Control"] = "no-store"
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            form_token,
            max_age=LOGIN_FORM_SECONDS,
            path="/login",
            httponly=True,
            samesite="strict",
            secure=ctx.cookie_secure,
        )
        return response

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(next: str = "/") -> HTMLResponse:
        return form_response(safe_next(next))

    @app.post("/login", response_model=None, include_in_schema=False)
    async def login(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > 64 * 1024:
            return JSONResponse({"error": "form too large"}, 413)
        fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)

        def field(name: str) -> str:
            return (fields.get(name) or [""])[0]

        next_url = safe_next(field("next"))
        # an account name is at most 64 characters without controls (users.py): anything
        # longer or stranger is no account, and is kept short wherever it is written down
        username = "".join(c for c in field("username").strip() if c.isprintable())[:80]
        password = field("password")
        address = client_address(request)
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        given = field(CSRF_FIELD)
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            return form_response(
                next_url, "The sign-in form has expired. Please sign in again.", username, 403
            )
        if not username or not password:
            return form_response(next_url, "Enter your user name and password.", username, 400)
        now = ctx.clock()
        result = await run_in_threadpool(
            _limited,
            authenticate,
            db,
            username,
            password,
            max_failures=ctx.max_failures,
            lockout=ctx.lockout,
            now=now,
        )
        if result is None:  # too many password checks at once (each costs 64 MiB)
            busy = form_response(
                next_url, "Too many sign-ins at this moment. Try again in a moment.", username, 429
            )
            busy.headers["Retry-After"] = "2"
            return busy
        obj = f"user:{username}"
        if result.user is None and result.reason == "locked" and result.locked_until:
            until = result.locked_until
            minutes = max(1, round((until - now).total_seconds() / 60))
            if result.checked:  # this wrong password locked the account
                action = "sign-in-failed"
                detail = (
                    f"wrong user name or password ({result.failures} in a row); "
                    f"locked until {_iso(until)}"
                )
            else:
                action, detail = "sign-in-locked", f"locked until {_iso(until)}"
            await run_in_threadpool(audit, db, username, action, obj, address, detail)
            message = (
                f"Too many failed sign-ins: this account is locked until "
                f"{until:%H:%M} UTC (about {minutes} min). Try again then, or ask an "
                "administrator to reset the password."
            )
            refused = form_response(next_url, message, username, 429)
            refused.headers["Retry-After"] = str(max(1, int((until - now).total_seconds())))
            return refused
        if result.user is None:
            await run_in_threadpool(
                audit,
                db,
                username,
                "sign-in-failed",
                obj,
                address,
                f"wrong user name or password ({result.failures} in a row)"
                if result.failures
                else "wrong user name or password",
            )
            return form_response(next_url, "Wrong user name or password.", username, 401)
        await run_in_threadpool(ctx.sessions.purge)  # expired sessions of anyone
        token, _sess = await run_in_threadpool(ctx.sessions.create, result.user, address)
        await run_in_threadpool(
            audit, db, result.user.name, "sign-in", obj, address, f"role {result.user.role}"
        )
        response = RedirectResponse(next_url, status_code=303)
        response.set_cookie(  # no Max-Age: the cookie ends with the browser (a shared
            SESSION_COOKIE,  # reading-room machine); the server ends the session anyway
            token,  # after session_max_minutes, or session_idle_minutes without use
            path="/",
            httponly=True,
            samesite="strict",
            secure=ctx.cookie_secure,
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return response

    @app.post("/logout", response_model=None, include_in_schema=False)
    def logout(request: Request) -> Response:
        # The CSRF middleware has checked the token of a live session already.
        sess = session_of(request)
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if sess is not None and cookie:
            auth_context(request).sessions.end(cookie)
            audit(db, sess.user.name, "sign-out", f"user:{sess.user.name}", client_address(request))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds")
