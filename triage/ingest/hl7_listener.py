"""HL7 v2 MLLP listener: RIS orders in, durable, then acknowledged.

For every frame on a connection (a connection may carry any number of messages, answered in
order; the frames of one read are handed on together):

1. the frame joins the batch of every message waiting from all connections (group commit, up
   to ``hl7_commit_batch_max``); for each, the store decodes it (MSH-18), reads it with the
   sender's site mapping (:mod:`triage.hl7.inbound`), recognises a resend (same MSH-3, MSH-4,
   MSH-10 and content as a message already accepted), builds its ACK, stores the raw message
   with that ACK, and applies it (orders upserted by accession number + sending facility;
   ADT^A08/A31 patient names);
2. the whole batch is committed in ONE transaction (SQLite WAL, ``synchronous=FULL``: one
   fsync for the batch);
3. only after the commit, each connection writes its ACK; then ``on_order(order_id)`` is called
   for every order applied, from one worker thread, in order.

All of this runs in the listener's own thread and event loop (see :class:`HL7Listener`);
frames that arrive while a batch is being committed wait in their sockets and form the next
batch. On SQLite the store uses its own sqlite3 connection (DBAPI cursor, one
``BEGIN IMMEDIATE`` per batch); other databases go through SQLAlchemy Core.

So AA (enhanced mode: CA) means: stored durably and applied. A resend of an accepted message
gets the ACK sent the first time and changes nothing. A batch that fails is retried one
message per transaction, so one bad message never costs the others their AA; a message whose
own transaction fails is answered AE 207 (nothing of it applied). A frame over
``hl7_max_message_bytes`` is answered AR and the connection closed; a peer idle for
``hl7_idle_timeout_seconds`` is disconnected.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import socket
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from triage.config import Settings
from triage.errors import HL7Error, HL7ParseError, StoreError
from triage.hl7.inbound import (
    CANCEL_CONTROLS,
    Evaluation,
    canonical,
    decode_message,
    decode_payload,
    evaluate,
    make_ack,
)
from triage.hl7.mapping import DEFAULT_MAPPING, HL7Mapping, load_mapping_or_defaults
from triage.hl7.mllp import MLLPDecoder, MLLPFrameTooLarge, frame
from triage.hl7.parse import MessageHeader, ParsedOrder, peek_header
from triage.store.db import Database
from triage.store.models import HL7Message, Order, utcnow

__all__ = ["HL7Listener", "MessageStore", "Outcome", "decode_message", "mapping_for"]

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT = 300.0
READ_CHUNK = 64 * 1024
ACCEPTED = frozenset({"AA", "CA"})
ON_ORDER_DELAY = 0.005  # seconds: on_order calls due are handed to their thread in batches

# Order fields copied from the message when the message has a value for them.
_ORDER_FIELDS = (
    "placer_order_number",
    "filler_order_number",
    "patient_id",
    "patient_name",
    "patient_class",
    "ordered_priority",
    "procedure_code",
    "procedure_text",
    "modality",
    "study_uid",
    "ordering_location",
    "sending_application",
)

_MSG = HL7Message.__table__  # type: ignore[attr-defined]
_ORDER = Order.__table__  # type: ignore[attr-defined]
# Statements built once: SQLAlchemy caches their compiled form, which keeps the per-message
# cost of the ACK path small (building a statement per call costs more than SQLite's commit).
_INSERT_MSG = insert(_MSG)
_SELECT_RESENDS = (
    select(
        _MSG.c.id,
        _MSG.c.sending_application,
        _MSG.c.sending_facility,
        _MSG.c.raw,
        _MSG.c.ack,
        _MSG.c.ack_code,
    )
    .where(_MSG.c.control_id == bindparam("control_id"))
    .order_by(_MSG.c.id)
)
_SELECT_ORDER = (
    select(_ORDER)
    .where(
        _ORDER.c.accession_number == bindparam("accession_number"),
        _ORDER.c.sending_facility == bindparam("sending_facility"),
    )
    .order_by(_ORDER.c.updated_at.desc(), _ORDER.c.id.desc())
    .limit(1)
)
_INSERT_ORDER = insert(_ORDER)
_UPDATE_ORDER = update(_ORDER).where(_ORDER.c.id == bindparam("order_id"))
_UPDATE_PATIENT = update(_ORDER).where(_ORDER.c.patient_id == bindparam("pid"))


def mapping_for(settings: Settings) -> HL7Mapping:
    """The site mapping the settings name (``hl7_mapping_file``, else
    ``<rules_dir>/hl7-mapping.yaml`` when it exists, else the built-in defaults)."""
    if settings.hl7_mapping_file:
        return load_mapping_or_defaults(Path(settings.hl7_mapping_file), required=True)
    return load_mapping_or_defaults(settings.rules_dir / "hl7-mapping.yaml")


@dataclass
class Outcome:
    """What happened to one message. ``ack`` is the frame to send ("" when the sender asked
    for none, enhanced mode)."""

    ack: str
    ack_code: str
    order_ids: list[int] = field(default_factory=list)
    message_id: int | None = None
    error: str = ""
    duplicate_of: int | None = None
    notes: list[str] = field(default_factory=list)
    codec: str = "utf-8"  # the message's character set; the ACK is written in it


class _Ops:
    """The statements the store runs inside one transaction. Two implementations: the
    SQLAlchemy Core one (any database; ``triage hl7 replay``) and, for SQLite, the sqlite3
    DBAPI cursor of the listener's hot path (a Core ``execute`` costs ~70 µs of Python per
    statement, the raw cursor 5-15 µs)."""

    def resends(self, control_id: str) -> list[tuple[Any, ...]]:
        """(id, sending_application, sending_facility, raw, ack, ack_code) of the stored
        messages with this MSH-10, oldest first."""
        raise NotImplementedError

    def insert_message(self, row: dict[str, Any]) -> int:
        raise NotImplementedError

    def find_order(self, accession_number: str, sending_facility: str) -> dict[str, Any]:
        """The order with this key (the most recently updated), or {}."""
        raise NotImplementedError

    def insert_order(self, values: dict[str, Any]) -> int:
        raise NotImplementedError

    def update_order(self, order_id: int, values: dict[str, Any]) -> None:
        raise NotImplementedError

    def update_patient(self, patient_id: str, patient_name: str) -> None:
        raise NotImplementedError


class _CoreOps(_Ops):
    """SQLAlchemy Core, on any database."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def resends(self, control_id: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.conn.execute(_SELECT_RESENDS, {"control_id": control_id})]

    def insert_message(self, row: dict[str, Any]) -> int:
        result = self.conn.execute(_INSERT_MSG, {"received_at": utcnow(), **row})
        return _new_id(result.inserted_primary_key)

    def find_order(self, accession_number: str, sending_facility: str) -> dict[str, Any]:
        row = self.conn.execute(
            _SELECT_ORDER,
            {"accession_number": accession_number, "sending_facility": sending_facility},
        ).first()
        return dict(row._mapping) if row is not None else {}

    def insert_order(self, values: dict[str, Any]) -> int:
        result = self.conn.execute(_INSERT_ORDER, {"updated_at": utcnow(), **values})
        return _new_id(result.inserted_primary_key)

    def update_order(self, order_id: int, values: dict[str, Any]) -> None:
        self.conn.execute(_UPDATE_ORDER, {"order_id": order_id, "updated_at": utcnow(), **values})

    def update_patient(self, patient_id: str, patient_name: str) -> None:
        self.conn.execute(
            _UPDATE_PATIENT,
            {"pid": patient_id, "patient_name": patient_name, "updated_at": utcnow()},
        )


def _sqlite_now() -> str:
    """utcnow() as SQLAlchemy stores a DateTime in SQLite (naive, microseconds)."""
    return utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")


def _column_defaults(table: Any) -> dict[str, Any]:
    """Column -> the constant SQLAlchemy would insert when a value is not given."""
    out: dict[str, Any] = {}
    for column in table.columns:
        if column.primary_key:
            continue
        arg = getattr(column.default, "arg", None)
        out[column.name] = None if callable(arg) else arg
    return out


_ORDER_DEFAULTS = _column_defaults(_ORDER)
_ORDER_COLUMNS = tuple(_ORDER_DEFAULTS)
_ORDER_DEFAULT_ITEMS = tuple(_ORDER_DEFAULTS.items())
_MSG_COLUMNS = tuple(_column_defaults(_MSG))
_SQL_INSERT_MSG = (
    f'INSERT INTO "{_MSG.name}" ({", ".join(_MSG_COLUMNS)}) '
    f"VALUES ({', '.join('?' * len(_MSG_COLUMNS))})"
)
_SQL_RESENDS = (
    "SELECT id, sending_application, sending_facility, raw, ack, ack_code "
    f'FROM "{_MSG.name}" WHERE control_id = ? ORDER BY id'
)
_SQL_SELECT_ORDER = (
    f'SELECT id, {", ".join(_ORDER_COLUMNS)} FROM "{_ORDER.name}" '
    "WHERE accession_number = ? AND sending_facility = ? "
    "ORDER BY updated_at DESC, id DESC LIMIT 1"
)
_SQL_INSERT_ORDER = (
    f'INSERT INTO "{_ORDER.name}" ({", ".join(_ORDER_COLUMNS)}) '
    f"VALUES ({', '.join('?' * len(_ORDER_COLUMNS))})"
)
_SQL_UPDATE_PATIENT = (
    f'UPDATE "{_ORDER.name}" SET patient_name = ?, updated_at = ? WHERE patient_id = ?'
)


class _SQLiteOps(_Ops):
    """The sqlite3 cursor of the store's own connection (SQLite only)."""

    _updates: dict[tuple[str, ...], str] = {}

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.cur = cursor
        self.now = _sqlite_now()  # one time for the transaction's received_at/updated_at

    def resends(self, control_id: str) -> list[tuple[Any, ...]]:
        return self.cur.execute(_SQL_RESENDS, (control_id,)).fetchall()

    def insert_message(self, row: dict[str, Any]) -> int:
        row["received_at"] = self.now
        row["processed"] = int(row["processed"])
        self.cur.execute(_SQL_INSERT_MSG, [row[c] for c in _MSG_COLUMNS])
        return _new_id((self.cur.lastrowid,))

    def find_order(self, accession_number: str, sending_facility: str) -> dict[str, Any]:
        row = self.cur.execute(_SQL_SELECT_ORDER, (accession_number, sending_facility)).fetchone()
        return dict(zip(("id", *_ORDER_COLUMNS), row, strict=True)) if row else {}

    def insert_order(self, values: dict[str, Any]) -> int:
        values["updated_at"] = self.now
        self.cur.execute(_SQL_INSERT_ORDER, [values.get(c, d) for c, d in _ORDER_DEFAULT_ITEMS])
        return _new_id((self.cur.lastrowid,))

    def update_order(self, order_id: int, values: dict[str, Any]) -> None:
        values["updated_at"] = self.now
        names = tuple(values)
        sql = self._updates.get(names)
        if sql is None:
            if not set(names) <= set(_ORDER_COLUMNS):
                raise StoreError(
                    f"unknown order columns: {sorted(set(names) - set(_ORDER_COLUMNS))}"
                )
            sets = ", ".join(f"{n} = ?" for n in names)
            sql = self._updates[names] = f'UPDATE "{_ORDER.name}" SET {sets} WHERE id = ?'
        self.cur.execute(sql, (*values.values(), order_id))

    def update_patient(self, patient_id: str, patient_name: str) -> None:
        self.cur.execute(_SQL_UPDATE_PATIENT, (patient_name, self.now, patient_id))


def _ops(conn: Connection | _Ops) -> _Ops:
    return conn if isinstance(conn, _Ops) else _CoreOps(conn)


class MessageStore:
    """Stores and applies inbound messages; used by the listener's writer thread and by
    ``triage hl7 replay``. Not thread-safe: one writer at a time.

    On SQLite the batches go through the store's own sqlite3 connection (opened through the
    engine, so with its pragmas: WAL, ``synchronous=FULL``), one ``BEGIN IMMEDIATE`` ...
    ``COMMIT`` per batch; other databases use SQLAlchemy Core. :meth:`close` releases it."""

    def __init__(self, settings: Settings, db: Database, mapping: HL7Mapping | None = None):
        self.settings = settings
        self.db = db
        self.mapping = mapping or DEFAULT_MAPPING
        self._sqlite = db.engine.dialect.name == "sqlite" and db.engine.driver == "pysqlite"
        self._raw: Any = None  # the pool connection detached for the store (SQLite)

    def close(self) -> None:
        """Close the store's own SQLite connection (reopened when needed again)."""
        raw, self._raw = self._raw, None
        if raw is not None:
            with contextlib.suppress(Exception):
                raw.close()

    def _connection(self) -> sqlite3.Connection:
        if self._raw is None:
            raw = self.db.engine.raw_connection()
            raw.detach()  # ours until close(); the pool opens another for everyone else
            self._raw = raw
        con: sqlite3.Connection = self._raw.dbapi_connection
        return con

    # -- acknowledgements --------------------------------------------------------------------

    def ack(
        self, header: MessageHeader | None, code: str, error: HL7Error | None = None
    ) -> tuple[str, str]:
        """(ACK text, MSA-1) for an outcome; see :func:`triage.hl7.inbound.make_ack`."""
        return make_ack(
            header,
            code,
            error,
            sending_application=self.settings.sending_application,
            sending_facility=self.settings.sending_facility,
        )

    # -- batches -----------------------------------------------------------------------------

    def process_batch(self, items: Sequence[tuple[bytes, str]]) -> list[Outcome]:
        """Decode, evaluate, store and apply ``(payload, peer)`` items in one transaction.
        Never raises: a failure becomes AE 207 for the message(s) concerned."""
        evaluations = []
        for payload, _ in items:
            text, codec, note = decode_payload(payload)
            ev = evaluate(text, self.mapping, codec)
            if note:
                ev.notes.insert(0, note)
            evaluations.append(ev)
        return self.store_batch(evaluations, [peer for _, peer in items])

    def store_batch(self, evaluations: Sequence[Evaluation], peers: Sequence[str]) -> list[Outcome]:
        """Store and apply evaluated messages in one transaction (one by one if it fails)."""
        outcomes = self._store_batch(evaluations, peers)
        for ev, outcome in zip(evaluations, outcomes, strict=True):
            outcome.codec = ev.codec
        return outcomes

    def _store_batch(
        self, evaluations: Sequence[Evaluation], peers: Sequence[str]
    ) -> list[Outcome]:
        try:
            return self._transaction(evaluations, peers)
        except Exception as exc:
            if len(evaluations) > 1:
                log.warning("HL7 batch of %d failed (%s); one by one", len(evaluations), exc)
                return [
                    self._store_batch([ev], [peer])[0]
                    for ev, peer in zip(evaluations, peers, strict=True)
                ]
            return [self._failed(evaluations[0], peers[0], exc)]

    def _transaction(
        self, evaluations: Sequence[Evaluation], peers: Sequence[str]
    ) -> list[Outcome]:
        pairs = zip(evaluations, peers, strict=True)
        if not self._sqlite:
            with self.db.engine.begin() as conn:
                core = _CoreOps(conn)
                return [self._store(core, ev, peer) for ev, peer in pairs]
        con = self._connection()
        try:
            # IMMEDIATE: the write lock from the start, so the resend and order look-ups see
            # what the batch's own writes will be applied to.
            con.execute("BEGIN IMMEDIATE")
            ops = _SQLiteOps(con.cursor())
            outcomes = [self._store(ops, ev, peer) for ev, peer in pairs]
            con.commit()
        except BaseException:
            try:
                con.rollback()
            except Exception:  # the connection itself failed: open a new one next time
                self.close()
            raise
        return outcomes

    def _failed(self, ev: Evaluation, peer: str, exc: Exception) -> Outcome:
        if (
            isinstance(exc, StoreError | OSError | sqlite3.Error)
            or "sqlalchemy" in type(exc).__module__
        ):
            log.error("HL7 from %s: database failure: %s", peer, exc)
        else:
            log.exception("HL7 from %s: applying failed", peer)
        err = HL7Error(f"could not store the message: {exc}", ack_code="AE", hl7_code=207)
        ack, code = self.ack(ev.header, "AE", err)
        message_id = self.record_failure(ev.raw, peer, ack, code, str(err), ev.header)
        return Outcome(ack, code, message_id=message_id, error=str(err))

    def record_failure(
        self,
        raw: str,
        peer: str,
        ack: str,
        ack_code: str,
        error: str,
        header: MessageHeader | None = None,
    ) -> int | None:
        """Store a message we could not take (best effort: the database may be what failed)."""
        try:
            with self.db.engine.begin() as conn:
                return self._insert_message(
                    _CoreOps(conn), raw, peer, header or peek_header(raw), ack, ack_code, error
                )
        except Exception as exc:
            log.error("HL7 from %s: could not record the %s answer: %s", peer, ack_code, exc)
            return None

    # -- one message, inside the batch transaction -------------------------------------------

    def _store(self, ops: _Ops, ev: Evaluation, peer: str) -> Outcome:
        header = ev.header
        if ev.error is not None:
            ack, code = self.ack(header, ev.code, ev.error)
            log.info("HL7 from %s answered %s: %s", peer, code, ev.error)
            mid = self._insert_message(ops, ev.raw, peer, header, ack, code, str(ev.error))
            return Outcome(ack, code, message_id=mid, error=str(ev.error))
        assert header is not None  # no error: the header was read
        notes = list(ev.notes)
        dup = self._find_resend(ops, ev, header, notes)
        if dup is not None:
            row_id, ack, code = dup
            log.info(
                "HL7 from %s: %s %s is a resend of message #%d; answered %s again",
                peer,
                header.type_code,
                header.control_id,
                row_id,
                code or "nothing",
            )
            return Outcome(ack, code, message_id=row_id, duplicate_of=row_id)
        ack, code = self.ack(header, "AA")
        mid = self._insert_message(ops, ev.raw, peer, header, ack, code, "; ".join(notes))
        order_ids = self.apply(ops, ev, mid)
        return Outcome(ack, code, order_ids=order_ids, message_id=mid, notes=notes)

    @staticmethod
    def _find_resend(
        ops: _Ops, ev: Evaluation, header: MessageHeader, notes: list[str]
    ) -> tuple[int, str, str] | None:
        rows = ops.resends(header.control_id)
        if not rows:
            return None
        content = canonical(ev.raw)
        for row_id, application, facility, raw, ack, ack_code in rows:
            if (
                ack_code in ACCEPTED
                and application == header.sending_application
                and facility == header.sending_facility
            ):
                if canonical(raw) == content:
                    return int(row_id), str(ack), str(ack_code)
                notes.append(
                    f"MSH-10 {header.control_id} reused with different content "
                    f"(first seen in message #{row_id}); applied as a new message"
                )
                return None
        return None

    @staticmethod
    def _insert_message(
        ops: _Ops,
        raw: str,
        peer: str,
        header: MessageHeader | None,
        ack: str,
        ack_code: str,
        error: str = "",
    ) -> int:
        h = header or MessageHeader()
        return ops.insert_message(
            {
                "peer": peer,
                "sending_application": h.sending_application,
                "sending_facility": h.sending_facility,
                "control_id": h.control_id,
                "message_type": h.type_code,
                "version": h.version,
                "raw": raw,
                "ack": ack,
                "ack_code": ack_code,
                "error": error[:2000],
                "processed": True,
            }
        )

    # -- replay ----------------------------------------------------------------------------

    def replay(
        self, *, since: datetime | None = None, ids: Sequence[int] | None = None
    ) -> list[ReplayResult]:
        """Apply stored messages again, oldest first, with the current mapping (one
        transaction each). Messages that still cannot be applied are reported, not changed."""
        query = select(_MSG.c.id, _MSG.c.raw, _MSG.c.message_type, _MSG.c.control_id).order_by(
            _MSG.c.id
        )
        if since is not None:
            query = query.where(_MSG.c.received_at >= since)
        if ids:
            query = query.where(_MSG.c.id.in_(list(ids)))
        with self.db.engine.connect() as conn:
            rows = conn.execute(query).all()
        results: list[ReplayResult] = []
        for row in rows:
            mid = int(row.id)
            ev = evaluate(str(row.raw), self.mapping)
            base = (mid, str(row.message_type), str(row.control_id))
            if ev.error is not None:
                results.append(ReplayResult(*base, f"not applied: {ev.error}", failed=True))
                continue
            try:
                with self.db.engine.begin() as conn:
                    order_ids = _replay_apply(self, conn, ev, mid)
                    note = "; ".join([*ev.notes, f"replayed {utcnow():%Y-%m-%d %H:%M:%S} UTC"])
                    conn.execute(
                        update(_MSG)
                        .where(_MSG.c.id == mid)
                        .values(processed=True, error=note[:2000])
                    )
            except Exception as exc:
                log.error("replay of HL7 message #%d failed: %s", mid, exc)
                results.append(ReplayResult(*base, f"failed: {exc}", failed=True))
                continue
            if order_ids:
                what = f"orders {', '.join(map(str, order_ids))} applied"
            elif ev.kind == "patient_update":
                what = "patient name applied"
            else:
                what = "nothing to apply (" + (ev.kind if ev.kind != "order" else "no order") + ")"
            results.append(ReplayResult(*base, what))
        return results

    # -- applying ------------------------------------------------------------------------------

    def apply(self, conn: Connection | _Ops, ev: Evaluation, message_id: int) -> list[int]:
        """Apply an accepted message's orders / patient update; returns the order ids changed.
        ``conn``: a SQLAlchemy connection in a transaction (or the store's own statements)."""
        if ev.kind == "order":
            return [self.upsert_order(conn, o, message_id) for o in ev.applied_orders]
        if ev.kind == "patient_update" and ev.patient is not None and ev.patient.patient_name:
            _ops(conn).update_patient(ev.patient.patient_id, ev.patient.patient_name)
        return []

    @staticmethod
    def upsert_order(
        conn: Connection | _Ops, parsed: ParsedOrder, message_id: int, *, replay: bool = False
    ) -> int:
        """Create or update the order keyed by accession number + sending facility.

        With ``replay``, an order last changed by a newer message than ``message_id`` only gets
        the fields it lacks (a replay never undoes what a later message did)."""
        ops = _ops(conn)
        current = ops.find_order(parsed.accession_number, parsed.sending_facility)
        values: dict[str, Any] = {}
        control = parsed.order_control
        newer = replay and (current.get("message_id") or 0) > message_id
        if newer:
            for name in _ORDER_FIELDS:
                value = getattr(parsed, name)
                if value and not current.get(name):
                    values[name] = value
        else:
            values["order_control"] = control
            if control in CANCEL_CONTROLS:
                values["order_status"] = parsed.order_status or CANCEL_CONTROLS[control]
            else:
                if control == "NW" or parsed.order_status:
                    values["order_status"] = parsed.order_status
                for name in _ORDER_FIELDS:
                    value = getattr(parsed, name)
                    if value:
                        values[name] = value
            if not current:  # a first message that is not NW still records what it carries
                for name in _ORDER_FIELDS:
                    value = getattr(parsed, name)
                    if value:
                        values.setdefault(name, value)
            values["message_id"] = message_id
        if current:
            ops.update_order(int(current["id"]), values)
            return int(current["id"])
        values.update(
            accession_number=parsed.accession_number, sending_facility=parsed.sending_facility
        )
        return ops.insert_order(values)


@dataclass
class ReplayResult:
    message_id: int
    message_type: str
    control_id: str
    result: str
    failed: bool = False


def _replay_apply(store: MessageStore, conn: Connection, ev: Evaluation, mid: int) -> list[int]:
    if ev.kind == "order":
        return [store.upsert_order(conn, o, mid, replay=True) for o in ev.applied_orders]
    return store.apply(conn, ev, mid)


@dataclass
class _Pending:
    payload: bytes
    peer: str
    future: asyncio.Future[Outcome]


class HL7Listener:
    """MLLP server storing RIS orders. ``on_order(order_id)`` runs after each ACK.

    The listener runs in its own thread with its own event loop: the connections' I/O, the
    parsing and the database transaction of each batch all happen there, so a message costs no
    hand-over between threads before its ACK (a thread wake-up costs ~0.1-0.2 ms of CPU on these
    machines), and the caller's event loop (the HTTP API) is never blocked by a commit.
    :meth:`start` and :meth:`stop` are awaited from the caller's loop."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        on_order: Callable[[int], None] | None = None,
        *,
        idle_timeout: float | None = None,
        mapping: HL7Mapping | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.on_order = on_order
        self.idle_timeout = idle_timeout or settings.hl7_idle_timeout_seconds
        self.store = MessageStore(settings, db, mapping or mapping_for(settings))
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._queue: list[_Pending] = []
        self._batch_scheduled = False
        self._writing = False  # a batch is in the writer thread
        self._writer: ThreadPoolExecutor | None = None
        self._notifier: ThreadPoolExecutor | None = None
        self._due: list[int] = []  # orders whose ACK is written, for the next on_order batch
        self._flush_scheduled = False

    @property
    def ready(self) -> bool:
        """True while the listener accepts connections."""
        server = self._server
        return server is not None and server.is_serving()

    @property
    def address(self) -> tuple[str, int] | None:
        return self._address

    async def start(self) -> tuple[str, int]:
        """Bind ``bind_host:hl7_port`` (port 0: an ephemeral one) and return the address."""
        if self._thread is not None:
            raise RuntimeError("listener already started")
        started: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="hl7-listener", daemon=True
        )
        self._thread.start()
        try:
            return await asyncio.wrap_future(started)
        except BaseException:
            thread, self._thread = self._thread, None
            await asyncio.to_thread(thread.join)
            raise

    async def stop(self) -> None:
        """Stop accepting, drop open connections, finish the batch being committed, wait for
        on_order calls already due."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(stopping.set)
        await asyncio.to_thread(thread.join)
        self._thread = None
        log.info("HL7 listener stopped")

    # -- the listener's thread ------------------------------------------------------------

    def _run(self, started: concurrent.futures.Future[tuple[str, int]]) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(started))
        except BaseException as exc:  # pragma: no cover - _serve reports its own failures
            if not started.done():
                started.set_exception(exc)
            log.exception("HL7 listener failed")
        finally:
            loop.close()

    async def _serve(self, started: concurrent.futures.Future[tuple[str, int]]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="hl7-writer")
        self._notifier = ThreadPoolExecutor(1, thread_name_prefix="hl7-on-order")
        try:
            server = await asyncio.start_server(
                self._on_connection, host=self.settings.bind_host, port=self.settings.hl7_port
            )
        except BaseException as exc:
            started.set_exception(exc)
            self._writer.shutdown(wait=False)
            self._notifier.shutdown(wait=False)
            return
        self._server = server
        sockname = server.sockets[0].getsockname()
        self._address = (str(sockname[0]), int(sockname[1]))
        log.info("HL7 listener on %s:%d (mapping: %s)", *self._address, self.store.mapping.path)
        started.set_result(self._address)
        try:
            await self._stopping.wait()
        finally:
            await self._shutdown(server)

    async def _shutdown(self, server: asyncio.Server) -> None:
        self._server = None
        server.close()
        await asyncio.sleep(0)  # let handlers of just-accepted connections start (and quit)
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._queue.clear()  # frames of the dropped connections not stored yet: not answered
        if self._writer is not None:  # the batch being committed
            await asyncio.to_thread(self._writer.shutdown, wait=True)
        self._flush_on_order()
        if self._notifier is not None:  # on_order calls already due
            await asyncio.to_thread(self._notifier.shutdown, wait=True)
        self.store.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=5)

    # -- group commit ---------------------------------------------------------------------

    def _submit(self, payload: bytes, peer: str) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome] = loop.create_future()
        self._queue.append(_Pending(payload, peer, fut))
        if not self._batch_scheduled and not self._writing:
            # After the handlers that got data in this loop iteration: they all join the batch.
            self._batch_scheduled = True
            loop.call_soon(self._commit_queue)
        return fut

    def _commit_queue(self) -> None:
        """Store the messages waiting, up to ``hl7_commit_batch_max`` per transaction, one
        transaction at a time.

        With one connection open, the transaction runs right here, in the listener's loop: the
        peer waits for its ACK anyway, and a hand-over to another thread and back would cost
        more than the parsing. With several, it runs in the writer thread, so that this loop
        keeps reading the other connections meanwhile: everything that arrives during a
        commit is stored by the next one (group commit)."""
        self._batch_scheduled = False
        limit = self.settings.hl7_commit_batch_max
        while self._queue and not self._writing:
            batch, self._queue = self._queue[:limit], self._queue[limit:]
            items = [(p.payload, p.peer) for p in batch]
            if len(self._connections) > 1 and self._writer is not None:
                self._writing = True
                future = asyncio.get_running_loop().run_in_executor(
                    self._writer, self.store.process_batch, items
                )
                future.add_done_callback(functools.partial(self._stored, batch))
                return
            try:
                outcomes = self.store.process_batch(items)
            except Exception as exc:  # pragma: no cover - process_batch does not raise
                self._resolve(batch, None, exc)
            else:
                self._resolve(batch, outcomes, None)

    def _stored(self, batch: list[_Pending], future: asyncio.Future[list[Outcome]]) -> None:
        self._writing = False
        if future.cancelled():  # pragma: no cover - the writer's futures are not cancelled
            self._resolve(batch, None, asyncio.CancelledError())
        elif future.exception() is not None:  # pragma: no cover - process_batch does not raise
            self._resolve(batch, None, future.exception())
        else:
            self._resolve(batch, future.result(), None)
        self._commit_queue()

    @staticmethod
    def _resolve(
        batch: list[_Pending], outcomes: list[Outcome] | None, exc: BaseException | None
    ) -> None:
        if outcomes is None:
            log.error("HL7 store failed: %s", exc)
        for i, p in enumerate(batch):
            if p.future.done():
                continue
            if outcomes is None:
                p.future.set_exception(exc or RuntimeError("HL7 store failed"))
            else:
                p.future.set_result(outcomes[i])

    def _after_ack(self, order_ids: list[int]) -> None:
        """Queue on_order for orders whose ACK is written. They go to the on_order thread
        together, ``ON_ORDER_DELAY`` after the first (one thread wake-up for all the messages
        of those milliseconds, not one per message; stop() hands over what is left)."""
        if self.on_order is None or not order_ids or self._notifier is None:
            return
        self._due.extend(order_ids)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(ON_ORDER_DELAY, self._flush_on_order)

    def _flush_on_order(self) -> None:
        self._flush_scheduled = False
        due, self._due = self._due, []
        if due and self._notifier is not None:
            with contextlib.suppress(RuntimeError):  # the pool is shut down: stopping
                self._notifier.submit(self._call_on_order, due)

    def _call_on_order(self, order_ids: list[int]) -> None:
        assert self.on_order is not None
        for order_id in order_ids:
            try:
                self.on_order(order_id)
            except Exception:
                log.exception("on_order(%d) failed", order_id)

    # -- connections ------------------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._server is None:  # accepted while stopping
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer_info = writer.get_extra_info("peername")
        peer = f"{peer_info[0]}:{peer_info[1]}" if peer_info else "?"
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = MLLPDecoder(self.settings.hl7_max_message_bytes)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        data = await reader.read(READ_CHUNK)
                except TimeoutError:
                    log.info("HL7 peer %s idle for %.0fs: disconnecting", peer, self.idle_timeout)
                    break
                if not data:
                    break
                try:
                    frames = decoder.feed(data)
                except MLLPFrameTooLarge as exc:
                    await self._answer(exc.complete_frames, peer, writer)
                    await self._answer_oversize(exc, peer, writer)
                    break
                await self._answer(frames, peer, writer)
        except (ConnectionError, OSError) as exc:
            log.info("HL7 peer %s: connection lost: %s", peer, exc)
        except asyncio.CancelledError:
            pass
        finally:
            if decoder.pending:
                log.warning(
                    "HL7 peer %s left %d bytes of an unfinished frame", peer, decoder.pending
                )
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=2)
            if task is not None:
                self._connections.discard(task)

    async def _answer(self, payloads: list[bytes], peer: str, writer: asyncio.StreamWriter) -> None:
        """Hand every frame of one read to the store together; answer them in order."""
        if not payloads:
            return
        futures = [self._submit(p, peer) for p in payloads]
        for fut in futures:
            outcome = await fut
            if outcome.ack:
                writer.write(frame(outcome.ack.encode(outcome.codec, errors="replace")))
                await writer.drain()
            self._after_ack(outcome.order_ids)

    async def _answer_oversize(
        self, exc: MLLPFrameTooLarge, peer: str, writer: asyncio.StreamWriter
    ) -> None:
        head, _ = decode_message(exc.head)
        header = peek_header(head)
        err = HL7ParseError(str(exc), hl7_code=207)
        ack, code = self.store.ack(header, "AR", err)
        if not ack:  # the sender asked for no ACK; it still must learn why we hang up
            ack, code = self.store.ack(None if header is None else _original(header), "AR", err)
        log.warning("HL7 peer %s: %s; closing the connection", peer, exc)
        self.store.record_failure(head, peer, ack, code, str(exc), header)
        writer.write(frame(ack.encode("utf-8")))
        await writer.drain()


def _new_id(key: Any) -> int:
    if not key or key[0] is None:  # pragma: no cover - SQLite and PostgreSQL return it
        raise StoreError("the database returned no id for the new row")
    return int(key[0])


def _original(header: MessageHeader) -> MessageHeader:
    from dataclasses import replace

    return replace(header, accept_ack_type="", application_ack_type="")
