"""Sending the outbox to the RIS over MLLP: in order per order, with capped exponential backoff,
dead letters after ``ris_max_failures``, and an hl7apy check before a message first leaves.

One round (:meth:`OutboxSender.send_pending`) reads the pending messages in queue order and
sends, on one kept-open connection, each whose order has nothing earlier still pending and whose
backoff is over. Outcomes:

- ACK AA/CA with MSA-2 = our MSH-10: ``sent``.
- ACK AE/AR, or one for another message: ``rejected`` (a dead letter), with the ACK and the
  RIS's error text; the order's next message goes on.
- Written, but no complete ACK (timed out, connection lost): a failure. The RIS may have stored
  it, so it is sent again **with the same MSH-10** after ``retry_seconds`` x 2^(failures-1),
  at most ``ris_backoff_max_seconds``; after ``ris_max_failures`` it is a dead letter. The round
  stops there (the RIS may be unwell) and the RIS gets the same backoff.
- The RIS refuses the connection: no message is charged; the round stops and the next one waits
  for the same capped exponential backoff. The RIS-wide wait (failures in a row, next try) is
  stored (:class:`~triage.store.models.OutboxBackoff`), like each message's own failures and
  next attempt: a restarted engine goes on waiting, and doubling, where it stopped.
- Fails hl7apy validation: a dead letter with the reason, never sent.
- An order change below a priority the RIS has already acknowledged for the order: a dead
  letter (superseded), never sent.

Each outcome is committed before the next message is sent, so a restart resends at most the
one message whose ACK had not been recorded yet (same MSH-10).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from triage.config import Settings
from triage.errors import RISUnavailable
from triage.hl7.ack import read_ack
from triage.hl7.build import validation_error
from triage.hl7.client import MLLPConnection, RISNegativeAck, RISNoAck, check_ack
from triage.outbound.outbox import (
    DEAD,
    ORDER_CHANGE_KINDS,
    PENDING,
    REJECTED,
    SENT,
    announced_rank,
    aware,
    backoff_seconds,
    load_backoff,
    record_action,
    save_backoff,
)
from triage.store import Database, OutboundMessage
from triage.store.models import utcnow

log = logging.getLogger("triage.outbound")

ENGINE = "engine"  # 'who' of the engine's own actions
ROUND_SECONDS = 2.0  # one round sends for at most this long; the rest goes at the next round
IDLE_CLOSE_SECONDS = 30.0  # a kept connection unused this long is closed before reuse


@dataclass
class SenderStats:
    """Counters since the sender started (for tests, logs and benchmarks)."""

    rounds: int = 0
    connects: int = 0
    connect_failures: int = 0
    written: int = 0
    sent: int = 0
    failures: int = 0
    rejected: int = 0
    dead: int = 0
    connect_times: list[datetime] = field(default_factory=list)


class OutboxSender:
    """Sends pending outbox messages. Not thread-safe: call from one thread (the pipeline
    worker); :meth:`stop` may be called from any thread and ends a round between messages.

    ``clock`` gives "now" (UTC-aware), for tests that shorten time; ``rank`` maps a priority
    code to its urgency (0 = most urgent) for the order-change guard.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        rank: dict[str, int] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.db = db
        self.rank = rank or {}
        self.clock = clock
        self.stats = SenderStats()
        self._conn: MLLPConnection | None = None
        self._conn_used = 0.0
        self._down_failures = 0  # RIS-level failures in a row (refused, or no ACK)
        self._down_until: datetime | None = None
        self._backoff_loaded = False  # read from the store at the first round
        self._stored: tuple[int, datetime | None] = (0, None)  # as last read or written
        self._stop = threading.Event()

    # -- control ------------------------------------------------------------------------
    def stop(self) -> None:
        """End the current round after the message in flight; later rounds do nothing."""
        self._stop.set()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def ris_down_until(self) -> datetime | None:
        return self._down_until

    # -- the round ----------------------------------------------------------------------
    def send_pending(self) -> int:
        """One round; returns how many messages were acknowledged."""
        s = self.settings
        if not s.ris_configured or self._stop.is_set():
            return 0
        if not self._backoff_loaded:
            self._down_failures, self._down_until = load_backoff(self.db)
            self._stored = (self._down_failures, self._down_until)
            self._backoff_loaded = True
        now = self.clock()
        if self._down_until is not None and now < self._down_until:
            stored = load_backoff(self.db)  # `triage outbox retry` may have cut the wait short
            if stored[1] is None or stored[1] < self._down_until:
                self._down_failures, self._down_until = stored
                self._stored = stored
            if self._down_until is not None and now < self._down_until:
                return 0
        self.stats.rounds += 1
        with self.db.session() as session:
            rows = session.exec(
                select(
                    OutboundMessage.id, OutboundMessage.order_key, OutboundMessage.next_attempt_at
                )
                .where(OutboundMessage.status == PENDING)
                .order_by(col(OutboundMessage.id))
            ).all()
        blocked: set[str] = set()
        sent = 0
        ends = time.monotonic() + ROUND_SECONDS
        for message_id, order_key, next_at in rows:
            if self._stop.is_set() or time.monotonic() > ends:
                break
            key = order_key or f"#{message_id}"
            if key in blocked:
                continue
            due = aware(next_at)
            if due is not None and due > now:
                blocked.add(key)  # nothing of this order overtakes a message that waits
                continue
            assert message_id is not None
            outcome = self._send_one(message_id)
            if outcome == SENT:
                sent += 1
            elif outcome in ("down", "failed"):
                self._ris_failed()
                break
            now = self.clock()
        if sent:
            self._down_failures = 0
        if (self._down_failures, self._down_until) != self._stored:
            self._save_backoff()
        return sent

    def _ris_failed(self) -> None:
        self._down_failures += 1
        wait = backoff_seconds(
            self.settings.retry_seconds, self.settings.ris_backoff_max_seconds, self._down_failures
        )
        self._down_until = self.clock() + timedelta(seconds=wait)
        self._save_backoff()

    def _save_backoff(self) -> None:
        state = (self._down_failures, self._down_until)
        try:
            save_backoff(self.db, *state, self.clock())
            self._stored = state
        except Exception:  # the wait still holds in memory; a restart would forget it
            log.exception("cannot store the RIS backoff (%d failures)", self._down_failures)

    def _connection(self) -> MLLPConnection:
        """The kept connection, or a new one. Raises RISUnavailable."""
        s = self.settings
        if self._conn is not None and (
            not self._conn.is_open
            or time.monotonic() - self._conn_used > IDLE_CLOSE_SECONDS
            or self._conn.peer_closed()  # the RIS dropped it while idle: not written into
        ):
            self.close()
        if self._conn is not None:
            return self._conn
        self.stats.connects += 1
        self.stats.connect_times.append(self.clock())
        try:
            self._conn = MLLPConnection(s.ris_host, s.ris_port, s.ris_timeout_seconds)
        except RISUnavailable:
            self.stats.connect_failures += 1
            raise
        return self._conn

    def _send_one(self, message_id: int) -> str:
        """Send one message; returns its outcome: sent, rejected, dead, failed, down, skip."""
        with self.db.session() as session:
            msg = session.get(OutboundMessage, message_id)
            if msg is None or msg.status != PENDING:
                return "skip"  # changed meanwhile (`triage outbox discard`)
            if not msg.validated:
                problem = validation_error(msg.raw)
                if problem:
                    self._dead(session, msg, f"invalid, not sent: {problem}")
                    return DEAD
                msg.validated = True
                session.add(msg)
            if msg.kind in ORDER_CHANGE_KINDS and msg.priority and self.rank:
                best = announced_rank(session, msg.order_key, self.rank, (SENT,))
                if best is not None and best[0] < self.rank.get(msg.priority, len(self.rank)):
                    self._dead(
                        session,
                        msg,
                        f"superseded, not sent: the RIS already has priority {best[1]} for "
                        f"order {msg.order_key}, above {msg.priority}",
                    )
                    return DEAD
        try:
            ack = self._exchange(msg)
        except RISNoAck as exc:
            return self._no_ack(msg, str(exc))
        except RISUnavailable as exc:  # could not connect: nothing was written
            self._log_down(exc)
            return "down"
        with self.db.session() as session:
            msg.ack = ack
            try:
                check_ack(ack, msg.control_id)
            except RISNegativeAck as exc:
                msg.ack_code = exc.ack_code
                msg.ris_error = exc.detail
                msg.error = str(exc)
                msg.dead_at = self.clock()
                msg.next_attempt_at = None
                record_action(
                    session, msg, "dead-letter", REJECTED, who=ENGINE, note=str(exc), at=msg.dead_at
                )
                self.stats.rejected += 1
                log.error("RIS rejected %s %s: %s", msg.kind, msg.control_id, exc)
                return REJECTED
            msg.ack_code = ack_code_of(ack)
            msg.status = SENT
            msg.error = ""
            msg.sent_at = self.clock()
            msg.next_attempt_at = None
            session.add(msg)
        self.stats.sent += 1
        self._down_failures = 0
        log.info("sent %s %s for study %s", msg.kind, msg.control_id, msg.study_uid)
        return SENT

    def _exchange(self, msg: OutboundMessage) -> str:
        """Write ``msg`` and read its ACK, once. A kept connection the RIS closed while idle is
        found before writing (:meth:`MLLPConnection.peer_closed`) and replaced; a message
        written and left without an ACK is a failure, sent again after ``retry_seconds`` -
        never at once (the RIS may have stored it, and a silent RIS must not get it twice in
        a row)."""
        conn = self._connection()
        msg.attempts += 1
        msg.last_attempt_at = self.clock()
        self.stats.written += 1
        try:
            ack = conn.exchange(msg.raw)
        except RISNoAck:
            self.close()
            raise
        self._conn_used = time.monotonic()
        return ack

    def _no_ack(self, msg: OutboundMessage, why: str) -> str:
        s = self.settings
        with self.db.session() as session:
            msg.failures += 1
            msg.error = f"no ACK ({why}); the RIS may have stored it"
            self.stats.failures += 1
            if msg.failures >= s.ris_max_failures:
                self._dead(session, msg, f"{msg.failures} tries without an ACK; last: {why}")
                return "failed"
            wait = backoff_seconds(s.retry_seconds, s.ris_backoff_max_seconds, msg.failures)
            msg.next_attempt_at = self.clock() + timedelta(seconds=wait)
            session.add(msg)
        log.warning(
            "RIS gave no ACK for %s %s (%s); failure %d of %d, sent again (same MSH-10) in %gs",
            msg.kind,
            msg.control_id,
            why,
            msg.failures,
            s.ris_max_failures,
            wait,
        )
        return "failed"

    def _dead(self, session: Session, msg: OutboundMessage, why: str) -> None:
        msg.error = why
        msg.dead_at = self.clock()
        msg.next_attempt_at = None
        record_action(session, msg, "dead-letter", DEAD, who=ENGINE, note=why, at=msg.dead_at)
        self.stats.dead += 1
        log.error("outbox: %s %s is a dead letter: %s", msg.kind, msg.control_id, why)

    def _log_down(self, exc: Exception) -> None:
        wait = backoff_seconds(
            self.settings.retry_seconds,
            self.settings.ris_backoff_max_seconds,
            self._down_failures + 1,
        )
        log.warning("RIS unavailable (%s); next try in %gs", exc, wait)


def ack_code_of(ack: str) -> str:
    return read_ack(ack)[0]
