"""The HL7 message store: every inbound message stored raw with its ACK, and applied, in
group-committed batches (what the MLLP listener's AA means).

For each message of a batch (:meth:`MessageStore.process_batch`): decode it (MSH-18), read it
with the sender's site mapping (:mod:`triage.hl7.inbound`), recognise a resend (same MSH-3,
MSH-4, MSH-10 and content as a message already accepted), build its ACK, store the raw message
with that ACK, and apply it (orders upserted by accession number + sending facility;
ADT^A08/A31 patient names). The whole batch is committed in ONE transaction (SQLite WAL,
``synchronous=FULL``: one fsync for the batch). On SQLite the store uses its own sqlite3
connection (DBAPI cursor, one ``BEGIN IMMEDIATE`` per batch); other databases go through
SQLAlchemy Core.

So AA (enhanced mode: CA) means: stored durably and applied. A resend of an accepted message
gets the ACK sent the first time and changes nothing. A batch that fails is retried one
message per transaction, so one bad message never costs the others their AA; a message whose
own transaction fails is answered AE 207 (nothing of it applied). ``triage hl7 replay``
reprocesses stored messages (:meth:`MessageStore.replay`).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from triage.config import Settings
from triage.errors import HL7Error, StoreError
from triage.hl7.inbound import (
    CANCEL_CONTROLS,
    Evaluation,
    canonical,
    decode_payload,
    evaluate,
    make_ack,
)
from triage.hl7.mapping import DEFAULT_MAPPING, HL7Mapping, load_mapping_or_defaults
from triage.hl7.parse import MessageHeader, ParsedOrder, peek_header
from triage.store.db import Database
from triage.store.models import HL7Message, Order, utcnow

__all__ = ["MessageStore", "Outcome", "ReplayResult", "mapping_for"]

log = logging.getLogger(__name__)

ACCEPTED = frozenset({"AA", "CA"})

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


def _new_id(key: Any) -> int:
    if not key or key[0] is None:  # pragma: no cover - SQLite and PostgreSQL return it
        raise StoreError("the database returned no id for the new row")
    return int(key[0])
