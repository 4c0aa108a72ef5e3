"""The audit log: every view of patient data and every change, with who, when, from where
and what. Append-only: this module only inserts and reads; on SQLite, triggers made with the
table refuse any UPDATE or DELETE (``triage.store.models.AuditEvent``).

Actions written by the engine (docs/security.md lists them with their objects):
``sign-in``, ``sign-in-failed``, ``sign-in-locked``, ``sign-out``, ``view``, ``user-add``,
``user-passwd``, ``user-role``, ``user-token``, ``user-token-revoke``; the pages and
commands that change things add theirs (``feedback``, ``rules-change``, ``outbox-retry``...).
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

from sqlmodel import col, select

from triage.store import Database
from triage.store.models import AuditEvent, aware


def audit(
    db: Database,
    user: str,
    action: str,
    obj: str,
    address: str,
    detail: str = "",
    *,
    at: datetime | None = None,
) -> None:
    """Append one row to the audit log (its own transaction, committed on return)."""
    with db.session() as s:
        s.add(
            AuditEvent(
                at=at or datetime.now(UTC),
                user=user,
                action=action,
                obj=obj,
                address=address,
                detail=detail,
            )
        )


def cli_address() -> str:
    """The address recorded for a command run on the server: ``cli:<OS user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli:?"


def event_dict(ev: AuditEvent) -> dict[str, Any]:
    return {
        "id": ev.id,
        "at": aware(ev.at).isoformat(),
        "user": ev.user,
        "action": ev.action,
        "object": ev.obj,
        "address": ev.address,
        "detail": ev.detail,
    }


def events(
    db: Database,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    batch: int = 1000,
) -> Iterator[AuditEvent]:
    """Audit rows in the order written (by id), read in batches (the log can be long)."""
    last = 0
    while True:
        with db.session() as s:
            q = select(AuditEvent).where(col(AuditEvent.id) > last)
            if since is not None:
                q = q.where(col(AuditEvent.at) >= since)
            if until is not None:
                q = q.where(col(AuditEvent.at) < until)
            rows = list(s.exec(q.order_by(col(AuditEvent.id)).limit(batch)).all())
        yield from rows
        if len(rows) < batch:
            return
        last = rows[-1].id or last


def export_jsonl(
    db: Database,
    out: IO[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """Write the audit log as JSON lines (one object per row: id, at, user, action, object,
    address, detail); returns the number of lines."""
    n = 0
    for ev in events(db, since=since, until=until):
        out.write(json.dumps(event_dict(ev), ensure_ascii=False) + "\n")
        n += 1
    return n
