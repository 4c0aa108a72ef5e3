"""The outbox as data: message states, the backoff, and what the integration engineer may do.

States of an :class:`~triage.store.OutboundMessage`::

    pending --ACK AA/CA--> sent
       |  \\--ACK AE/AR (or MSA-2 not ours)--> rejected       (dead letter; the RIS's ERR text kept)
       |  \\--no ACK ris_max_failures times--> dead           (dead letter)
       |  \\--fails hl7apy validation--------> dead           (dead letter; never sent)
       |  \\--an XO below a priority the RIS already has --> dead (superseded; never sent)
       \\--`triage outbox discard`--> discarded
    rejected | dead --`triage outbox retry`--> pending (same MSH-10: the RIS can dedupe on it)
    skipped: queued while no RIS was configured (never sent)

Per order (``order_key``: accession number, else filler order number) messages leave in the
order they were queued: one is sent only when every earlier one of that order is sent, a dead
letter, or discarded. Every retry, discard and dead-lettering is written to
:class:`~triage.store.models.OutboxAction` (who, when, what).
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlmodel import Session, col, select

from triage.errors import OutboxError as OutboxError
from triage.store import Database, OutboundMessage
from triage.store.models import OutboxAction, OutboxBackoff, utcnow

PENDING = "pending"
SENT = "sent"
REJECTED = "rejected"
DEAD = "dead"
DISCARDED = "discarded"
SKIPPED = "skipped"
DEAD_LETTERS = (REJECTED, DEAD)
STATUSES = (PENDING, SENT, REJECTED, DEAD, DISCARDED, SKIPPED)
ORDER_CHANGE_KINDS = ("ORM", "OMI")


def backoff_seconds(base: float, cap: float, failures: int) -> float:
    """Wait after ``failures`` failures in a row: ``base``, doubled each time, at most ``cap``."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2.0 ** min(failures - 1, 60))


def aware(value: datetime | None) -> datetime | None:
    """``value`` as UTC-aware (a database may give it back naive)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def load_backoff(db: Database) -> tuple[int, datetime | None]:
    """The stored RIS-wide backoff: failures in a row and the next try (UTC), or (0, None)."""
    with db.session() as s:
        row = s.get(OutboxBackoff, 1)
        if row is None:
            return 0, None
        return row.failures, aware(row.next_attempt_at)


def save_backoff(db: Database, failures: int, until: datetime | None, now: datetime) -> None:
    """Store the RIS-wide backoff (one row, replaced)."""
    with db.session() as s:
        row = s.get(OutboxBackoff, 1) or OutboxBackoff(id=1)
        row.failures = failures
        row.next_attempt_at = until
        row.updated_at = now
        s.add(row)


def who_am_i() -> str:
    """The OS user (and host) running a CLI action."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def record_action(
    session: Session,
    msg: OutboundMessage,
    action: str,
    to_status: str,
    *,
    who: str,
    note: str = "",
    at: datetime | None = None,
) -> None:
    """Change ``msg``'s status to ``to_status`` and log it (in the caller's transaction)."""
    assert msg.id is not None
    session.add(
        OutboxAction(
            at=at or utcnow(),
            who=who,
            action=action,
            message_id=msg.id,
            from_status=msg.status,
            to_status=to_status,
            note=note,
        )
    )
    msg.status = to_status
    session.add(msg)


@dataclass(frozen=True)
class Filter:
    status: str = ""  # one of STATUSES; "" any
    dead: bool = False  # only the dead letters (rejected and dead)
    order_key: str = ""
    study_uid: str = ""
    limit: int = 50


def list_messages(db: Database, f: Filter) -> list[OutboundMessage]:
    """Newest first."""
    with db.session() as s:
        q = select(OutboundMessage)
        if f.dead:
            q = q.where(col(OutboundMessage.status).in_(DEAD_LETTERS))
        if f.status:
            q = q.where(OutboundMessage.status == f.status)
        if f.order_key:
            q = q.where(OutboundMessage.order_key == f.order_key)
        if f.study_uid:
            q = q.where(OutboundMessage.study_uid == f.study_uid)
        q = q.order_by(col(OutboundMessage.id).desc()).limit(f.limit)
        return list(s.exec(q).all())


def counts(db: Database) -> dict[str, int]:
    """Messages per status."""
    from sqlalchemy import func

    with db.session() as s:
        rows = s.exec(
            select(OutboundMessage.status, func.count()).group_by(OutboundMessage.status)
        ).all()
    return {str(status): int(n) for status, n in rows}


def get_message(db: Database, message_id: int) -> tuple[OutboundMessage, list[OutboxAction]]:
    with db.session() as s:
        msg = s.get(OutboundMessage, message_id)
        if msg is None:
            raise OutboxError(f"no outbox message {message_id}")
        actions = s.exec(
            select(OutboxAction)
            .where(OutboxAction.message_id == message_id)
            .order_by(col(OutboxAction.id))
        ).all()
        return msg, list(actions)


def _dead_letter_or_pending(session: Session, message_id: int, refusal: str) -> OutboundMessage:
    """Message ``message_id`` when it is a dead letter (rejected, dead) or pending; otherwise
    :class:`OutboxError`: no such message, or ``message <id> is <status>: <refusal>``."""
    msg = session.get(OutboundMessage, message_id)
    if msg is None:
        raise OutboxError(f"no outbox message {message_id}")
    if msg.status not in (*DEAD_LETTERS, PENDING):
        raise OutboxError(f"message {message_id} is {msg.status}: {refusal}")
    return msg


def retry(db: Database, ids: Sequence[int], *, who: str, note: str = "") -> list[OutboundMessage]:
    """Put dead letters (rejected, dead) back in the queue, as they are (same MSH-10), to be
    sent at the next round; a pending message waiting for its backoff is made due now. Its
    failures start again from 0, and the RIS-wide wait is cut short too (the next round
    tries the RIS; if it still fails, the wait goes on doubling from where it was).
    Everything or nothing: an unknown id or a message in another state raises
    :class:`OutboxError` and changes nothing."""
    done: list[OutboundMessage] = []
    with db.session() as s:
        wait = s.get(OutboxBackoff, 1)
        if wait is not None and wait.next_attempt_at is not None:
            wait.next_attempt_at = None
            s.add(wait)
        for message_id in ids:
            msg = _dead_letter_or_pending(
                s,
                message_id,
                "only a dead letter (rejected, dead) or a pending message can be retried",
            )
            msg.failures = 0
            msg.next_attempt_at = None
            msg.dead_at = None
            record_action(s, msg, "retry", PENDING, who=who, note=note)
            done.append(msg)
    return done


def discard(db: Database, ids: Sequence[int], *, who: str, note: str = "") -> list[OutboundMessage]:
    """Never send these (pending or dead letters): later messages of the same order go on.
    Everything or nothing, as :func:`retry`."""
    done: list[OutboundMessage] = []
    with db.session() as s:
        for message_id in ids:
            msg = _dead_letter_or_pending(
                s, message_id, "only a pending message or a dead letter can be discarded"
            )
            record_action(s, msg, "discard", DISCARDED, who=who, note=note)
            done.append(msg)
    return done


def announced_rank(
    session: Session, order_key: str, rank: dict[str, int], statuses: Sequence[str]
) -> tuple[int, str] | None:
    """The most urgent priority (rank, code) an order change of ``order_key`` in one of
    ``statuses`` carries; None when there is none."""
    rows = session.exec(
        select(OutboundMessage.priority).where(
            OutboundMessage.order_key == order_key,
            col(OutboundMessage.kind).in_(ORDER_CHANGE_KINDS),
            col(OutboundMessage.status).in_(statuses),
            OutboundMessage.priority != "",
        )
    ).all()
    best: tuple[int, str] | None = None
    for code in rows:
        r = rank.get(code, len(rank))
        if best is None or r < best[0]:
            best = (r, code)
    return best
