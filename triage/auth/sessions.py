"""Server-side browser sessions. The cookie holds a random 256-bit token; the database holds
its SHA-256, the user, the per-session CSRF token and the expiries. A session ends at the
first of: ``session_max_minutes`` after sign-in, ``session_idle_minutes`` without a request,
sign-out, or a new password for its user. The user's role is read at each request, so a role
change applies at once."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_
from sqlmodel import col, delete, select

from triage.auth.users import Clock, User, aware, token_hash
from triage.store import Database
from triage.store.models import AuthSession, UserAccount

#: ``last_seen_at`` is written at most this often per session (not at every request).
TOUCH_EVERY = timedelta(seconds=30)


@dataclass(frozen=True)
class ActiveSession:
    user: User
    csrf_token: str
    expires_at: datetime


class SessionStore:
    def __init__(self, db: Database, *, max_age: timedelta, idle: timedelta, clock: Clock) -> None:
        self.db = db
        self.max_age = max_age
        self.idle = idle
        self.clock = clock

    def create(self, user: User, address: str) -> tuple[str, ActiveSession]:
        """A new session for ``user``: (cookie token, the session)."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = self.clock()
        row = AuthSession(
            token_hash=token_hash(token),
            user_name=user.name,
            csrf_token=csrf,
            address=address,
            created_at=now,
            last_seen_at=now,
            expires_at=now + self.max_age,
        )
        with self.db.session() as s:
            s.add(row)
        return token, ActiveSession(user, csrf, row.expires_at)

    def get(self, token: str) -> ActiveSession | None:
        """The live session of a cookie token, or None (unknown, expired: then removed)."""
        if not token:
            return None
        now = self.clock()
        with self.db.session() as s:
            row = s.exec(select(AuthSession).where(AuthSession.token_hash == token_hash(token)))
            sess = row.first()
            if sess is None:
                return None
            if aware(sess.expires_at) <= now or aware(sess.last_seen_at) + self.idle <= now:
                s.delete(sess)
                return None
            acc = s.exec(select(UserAccount).where(UserAccount.name == sess.user_name)).first()
            if acc is None:
                s.delete(sess)
                return None
            if now - aware(sess.last_seen_at) >= TOUCH_EVERY:
                sess.last_seen_at = now
                s.add(sess)
            return ActiveSession(User(acc.name, acc.role), sess.csrf_token, aware(sess.expires_at))

    def end(self, token: str) -> None:
        with self.db.session() as s:
            s.exec(delete(AuthSession).where(col(AuthSession.token_hash) == token_hash(token)))

    def purge(self) -> int:
        """Remove expired sessions (run at each sign-in); returns how many."""
        now = self.clock()
        with self.db.session() as s:
            result = s.exec(
                delete(AuthSession).where(
                    or_(
                        col(AuthSession.expires_at) <= now,
                        col(AuthSession.last_seen_at) <= now - self.idle,
                    )
                )
            )
            return int(result.rowcount or 0)
