"""Local accounts: roles, passwords, lock-out, API tokens.

Roles (``ROLES``) and what each may do (docs/security.md):

- ``radiologist``: read the worklist and studies, give feedback on AI results;
- ``manager``: read, and change the urgency rules;
- ``engineer``: read, and the integration (outbox, HL7 tools);
- ``admin``: everything, users included.

Managers and engineers read the worklist too (they tune rules and check the integration
against it); only radiologists (and admins) give feedback.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select, update

from triage.auth.passwords import (
    MIN_PASSWORD_LENGTH,
    burn_verify,
    hash_password,
    needs_rehash,
    verify_password,
)
from triage.errors import AuthError
from triage.store import Database
from triage.store.models import AuthSession, UserAccount, aware

RADIOLOGIST = "radiologist"
MANAGER = "manager"
ENGINEER = "engineer"
ADMIN = "admin"
ROLES: tuple[str, ...] = (RADIOLOGIST, MANAGER, ENGINEER, ADMIN)

#: Roles that may read the worklist and the studies (patient data).
READERS: tuple[str, ...] = (RADIOLOGIST, MANAGER, ENGINEER, ADMIN)

#: The user name recorded for a request authenticated by ``TRIAGE_API_TOKEN``.
API_TOKEN_USER = "api-token"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class User:
    """Who a request is made by: an account's name and role (or ``api-token``)."""

    name: str
    role: str

    def may(self, *roles: str) -> bool:
        """True when this user's role is one of ``roles`` (an admin may do everything; no
        roles: any signed-in user)."""
        return not roles or self.role == ADMIN or self.role in roles


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise AuthError(
            f"invalid user name {name!r}: 1-64 letters, digits, '.', '_', '@', '-' "
            "(starting with a letter or digit)"
        )
    if name == API_TOKEN_USER:
        raise AuthError(f"{name!r} is reserved for requests made with TRIAGE_API_TOKEN")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    if password != password.strip() or "\n" in password:
        raise AuthError("password must not start or end with spaces, nor hold a line break")
    return password


def token_hash(token: str) -> str:
    """SHA-256 of an API token (tokens are 256-bit random: a fast hash is enough)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _account(s: Session, name: str) -> UserAccount | None:
    return s.exec(select(UserAccount).where(UserAccount.name == name)).first()


def _existing_account(s: Session, name: str) -> UserAccount:
    """The account ``name``; :class:`AuthError` when there is none."""
    acc = _account(s, name)
    if acc is None:
        raise AuthError(f"no user {name!r}")
    return acc


def add_user(db: Database, name: str, role: str, password: str) -> User:
    """Create an account; :class:`AuthError` when the name is taken or a value is invalid."""
    check_name(name)
    check_role(role)
    check_password(password)
    with db.session() as s:
        if _account(s, name) is not None:
            raise AuthError(f"user {name!r} exists (change the password: triage users passwd)")
        s.add(UserAccount(name=name, role=role, password_hash=hash_password(password)))
    return User(name, role)


def get_user(db: Database, name: str) -> User | None:
    with db.session() as s:
        acc = _account(s, name)
        return User(acc.name, acc.role) if acc is not None else None


def set_password(db: Database, name: str, password: str, now: datetime | None = None) -> None:
    """New password; also unlocks the account and ends its browser sessions."""
    check_password(password)
    with db.session() as s:
        acc = _existing_account(s, name)
        acc.password_hash = hash_password(password)
        acc.password_changed_at = now or utcnow()
        acc.failed_logins = 0
        acc.locked_until = None
        s.add(acc)
        for sess in s.exec(select(AuthSession).where(AuthSession.user_name == name)).all():
            s.delete(sess)


def set_role(db: Database, name: str, role: str) -> None:
    check_role(role)
    with db.session() as s:
        acc = _existing_account(s, name)
        acc.role = role
        s.add(acc)


def new_token(db: Database, name: str, now: datetime | None = None) -> str:
    """A new personal API token for ``name`` (shown once; only its hash is kept). It
    replaces the user's previous token."""
    token = secrets.token_urlsafe(32)
    with db.session() as s:
        acc = _existing_account(s, name)
        acc.token_hash = token_hash(token)
        acc.token_created_at = now or utcnow()
        s.add(acc)
    return token


def revoke_token(db: Database, name: str) -> bool:
    """Remove ``name``'s API token; False when it had none."""
    with db.session() as s:
        acc = _existing_account(s, name)
        had = bool(acc.token_hash)
        acc.token_hash = ""
        acc.token_created_at = None
        s.add(acc)
    return had


def user_by_token(db: Database, token: str) -> User | None:
    if not token:
        return None
    with db.session() as s:
        acc = s.exec(select(UserAccount).where(UserAccount.token_hash == token_hash(token))).first()
        return User(acc.name, acc.role) if acc is not None else None


def list_users(db: Database) -> list[UserAccount]:
    with db.session() as s:
        return list(s.exec(select(UserAccount).order_by(col(UserAccount.name))).all())


@dataclass(frozen=True)
class SignIn:
    """The outcome of :func:`authenticate`: ``user`` when it succeeded; else why not
    (``locked_until`` set while the account is locked)."""

    user: User | None
    reason: str = ""  # "", "wrong", "locked"
    locked_until: datetime | None = None
    failures: int = 0
    checked: bool = False  # the password was checked (and was wrong); False: refused unchecked


class _UnknownNames:
    """Failed sign-ins under names that are no account, counted (in memory, bounded) so that
    they lock as an account would: the answers - 401, then 429 "locked" after the same count,
    without a hash while locked - do not tell a stranger which names exist."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, tuple[int, datetime | None]] = OrderedDict()

    def locked(self, name: str, now: datetime) -> SignIn | None:
        with self._lock:
            failures, until = self._seen.get(name, (0, None))
        if until is not None and until > now:
            return SignIn(None, "locked", until, failures)
        return None

    def failed(self, name: str, now: datetime, max_failures: int, lockout: timedelta) -> SignIn:
        with self._lock:
            failures, until = self._seen.pop(name, (0, None))
            if until is not None and until <= now:
                failures = 0  # a lock-out that is over starts a full set of tries again
            failures += 1
            until = now + lockout if failures >= max_failures else None
            self._seen[name] = (failures, until)
            while len(self._seen) > self.LIMIT:
                self._seen.popitem(last=False)
        if until is not None:
            return SignIn(None, "locked", until, failures, True)
        return SignIn(None, "wrong", None, failures, True)


UNKNOWN_NAMES = _UnknownNames()


def authenticate(
    db: Database,
    name: str,
    password: str,
    *,
    max_failures: int,
    lockout: timedelta,
    now: datetime,
) -> SignIn:
    """Check a sign-in. ``max_failures`` wrong passwords in a row lock the account for
    ``lockout`` from the last one; while locked even the right password is refused. An
    unknown name costs the same time as a wrong password and gives the same answer.

    The slow hash check runs outside any database transaction; a failure is counted with
    one atomic UPDATE, so sign-ins tried in parallel cannot lose a count."""
    with db.session() as s:
        acc = _account(s, name)
    if acc is None:
        ghost = UNKNOWN_NAMES.locked(name, now)
        if ghost is not None:
            return ghost
        burn_verify(password)
        return UNKNOWN_NAMES.failed(name, now, max_failures, lockout)
    if acc.locked_until is not None and aware(acc.locked_until) > now:
        return SignIn(None, "locked", aware(acc.locked_until), acc.failed_logins)
    ok = verify_password(acc.password_hash, password)
    rehash = hash_password(password) if ok and needs_rehash(acc.password_hash) else ""
    account = col(UserAccount.id) == acc.id
    with db.session() as s:
        if ok:
            # the right password counts only if wrong ones checked meanwhile (in parallel)
            # have not locked the account: the lock is looked at again, in this transaction
            row = s.exec(select(UserAccount).where(account)).one()
            if row.locked_until is not None and aware(row.locked_until) > now:
                return SignIn(None, "locked", aware(row.locked_until), row.failed_logins)
            values: dict[str, Any] = {"failed_logins": 0, "locked_until": None}
            values["last_login_at"] = now
            if rehash:
                values["password_hash"] = rehash
            s.exec(update(UserAccount).where(account).values(**values))
            return SignIn(User(acc.name, acc.role))
        # a lock-out that is over starts a full set of tries again
        s.exec(
            update(UserAccount)
            .where(account, col(UserAccount.locked_until).is_not(None))
            .where(col(UserAccount.locked_until) <= now)
            .values(failed_logins=0, locked_until=None)
        )
        s.exec(
            update(UserAccount)
            .where(account)
            .values(failed_logins=col(UserAccount.failed_logins) + 1)
        )
        row = s.exec(select(UserAccount).where(account)).one()
        s.refresh(row)
        failures = row.failed_logins
        if failures >= max_failures:
            row.locked_until = now + lockout
            s.add(row)
            return SignIn(None, "locked", row.locked_until, failures, True)
        return SignIn(None, "wrong", None, failures, True)
