"""FastAPI dependencies: who is asking, and may they.

    from triage.auth.deps import require

    @app.get("/api/worklist")
    def worklist(user: User = Depends(require(*READERS))) -> ...

A request is authenticated by, in turn: an ``Authorization: Bearer`` header (the
``api_token`` setting, radiologist role; else a personal token of ``triage users token``),
or the session cookie set at ``/login``. With an ``Authorization`` header the cookie is not
looked at (and no CSRF token is needed: a browser never adds that header by itself).

Without valid credentials, a page request (``Accept: text/html``) is redirected to
``/login?next=<where it was going>``; any other gets 401 JSON
``{"error": "authentication required", ...}``. A wrong role gets 403
``{"error": "forbidden", "detail": "..."}`` (an HTML page for a page request).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request

from triage.auth.sessions import ActiveSession, SessionStore
from triage.auth.users import (
    ADMIN,
    API_TOKEN_USER,
    RADIOLOGIST,
    READERS,
    ROLES,
    Clock,
    User,
    user_by_token,
)
from triage.errors import Forbidden, NotAuthenticated
from triage.store import Database

__all__ = [
    "READERS",
    "ROLES",
    "AuthContext",
    "User",
    "client_address",
    "current_user",
    "optional_user",
    "require",
]

SESSION_COOKIE = "triage_session"


@dataclass
class AuthContext:
    """What the auth code needs per app; ``install_auth`` puts it at ``app.state.auth``."""

    db: Database
    sessions: SessionStore
    api_token: str  # the api_token setting ("" none)
    cookie_secure: bool
    max_failures: int
    lockout: timedelta
    clock: Clock


def auth_context(request: Request) -> AuthContext:
    ctx = getattr(request.app.state, "auth", None)
    if not isinstance(ctx, AuthContext):
        raise RuntimeError("triage.auth.routes.install_auth was not called on this app")
    return ctx


def client_address(request: Request) -> str:
    """The client's IP address as the server saw it ("" when unknown)."""
    return request.client.host if request.client is not None else ""


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header; "" for another scheme or an empty
    token; None when there is no Authorization header."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def session_of(request: Request) -> ActiveSession | None:
    """The live browser session of this request (cached on ``request.state``)."""
    if hasattr(request.state, "auth_session"):
        cached: ActiveSession | None = request.state.auth_session
        return cached
    ctx = auth_context(request)
    sess = ctx.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    request.state.auth_session = sess
    return sess


def current_user(request: Request) -> User | None:
    """Who makes this request, or None (no valid credentials). Cached on the request."""
    if hasattr(request.state, "user"):
        cached: User | None = request.state.user
        return cached
    ctx = auth_context(request)
    user: User | None = None
    token = bearer_token(request)
    if token is not None:
        if token and ctx.api_token and hmac.compare_digest(token, ctx.api_token):
            user = User(API_TOKEN_USER, RADIOLOGIST)
        elif token:
            user = user_by_token(ctx.db, token)
    else:
        sess = session_of(request)
        user = sess.user if sess is not None else None
    request.state.user = user
    return user


def still_valid(request: Request) -> bool:
    """Whether this request's credentials are still good now (not the cached answer): a
    long-lived request - the worklist's event stream - ends when its session is signed out
    or expires, or its token is revoked."""
    for name in ("user", "auth_session"):
        if hasattr(request.state, name):
            delattr(request.state, name)
    return current_user(request) is not None


def optional_user(request: Request) -> User | None:
    """Dependency: the signed-in user, or None (never refuses)."""
    return current_user(request)


def require(*roles: str) -> Callable[[Request], User]:
    """Dependency factory: the request's :class:`User` when its role is one of ``roles``
    (admin always; none given: any signed-in user). Raises :class:`NotAuthenticated`
    (401 / redirect to the sign-in page) or :class:`Forbidden` (403)."""
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"unknown roles {unknown}: one of {ROLES}")

    def dependency(request: Request) -> User:
        user = current_user(request)
        if user is None:
            raise NotAuthenticated("authentication required")
        if not user.may(*roles):
            allowed = ", ".join(dict.fromkeys([*roles, ADMIN]))
            raise Forbidden(
                f"user {user.name!r} (role {user.role}) may not do this: needs {allowed}"
            )
        return user

    return dependency
