"""``HL7Message`` and ``Order`` rows: the SQL of the HL7 message store.

The logic (decoding, resends, ACKs, which order fields a message changes) is in
:mod:`triage.ingest.hl7_store`; it runs its statements through a :class:`MessageOps`:

- :class:`SQLiteOps`, the sqlite3 DBAPI cursor of the listener's hot path (a Core
  ``execute`` costs ~70 µs of Python per statement, the raw cursor 5-15 µs), on the store's
  own connection, one ``BEGIN IMMEDIATE`` ... ``COMMIT`` per batch (:meth:`MessageRows.batch`:
  the group commit; WAL, ``synchronous=FULL``: one fsync for the batch);
- :class:`CoreOps`, SQLAlchemy Core on any database (other databases, failures recorded
  apart, ``triage hl7 replay``: :meth:`MessageRows.transaction`).

Database errors leave every transaction as :class:`~triage.errors.StoreError`
(:func:`triage.store.db.database_errors`), the transaction rolled back.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, insert, select, update

from triage.errors import StoreError
from triage.store.db import Database, OwnSQLite, database_errors
from triage.store.models import Feedback, Finding, HL7Message, Order, Study, utcnow

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


class MessageOps:
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

    def mark_processed(self, message_id: int, note: str) -> None:
        """The stored message was applied (again): ``processed`` set, ``error`` = note."""
        raise NotImplementedError

    # final reports (ORU^R01) as feedback (triage.hl7.reports, triage.feedback)
    def report_studies(self, study_uid: str, accession_number: str) -> list[str]:
        """The Study UIDs a report names: by its Study UID, else by its accession number."""
        raise NotImplementedError

    def newest_finding(self, study_uid: str, model: str) -> dict[str, Any] | None:
        """{id, status, positive} of the newest finding of ``model`` for a study, or None."""
        raise NotImplementedError

    def insert_feedback(self, values: dict[str, Any]) -> bool:
        """Add a feedback row, unless this message gave it already (a replay); True if added."""
        raise NotImplementedError


class CoreOps(MessageOps):
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

    def mark_processed(self, message_id: int, note: str) -> None:
        self.conn.execute(
            update(_MSG).where(_MSG.c.id == message_id).values(processed=True, error=note)
        )

    def report_studies(self, study_uid: str, accession_number: str) -> list[str]:
        st = Study.__table__  # type: ignore[attr-defined]
        conn = self.conn
        if study_uid:
            rows = conn.execute(select(st.c.study_uid).where(st.c.study_uid == study_uid))
            found = [str(r[0]) for r in rows]
            if found:
                return found
        if not accession_number:
            return []
        rows = conn.execute(select(st.c.study_uid).where(st.c.accession_number == accession_number))
        return [str(r[0]) for r in rows]

    def newest_finding(self, study_uid: str, model: str) -> dict[str, Any] | None:
        f = Finding.__table__  # type: ignore[attr-defined]
        row = self.conn.execute(
            select(f.c.id, f.c.status, f.c.positive)
            .where(f.c.study_uid == study_uid, f.c.model_name == model)
            .order_by(f.c.created_at.desc(), f.c.id.desc())
            .limit(1)
        ).first()
        return dict(row._mapping) if row is not None else None

    def insert_feedback(self, values: dict[str, Any]) -> bool:
        fb = Feedback.__table__  # type: ignore[attr-defined]
        conn = self.conn
        known = conn.execute(
            select(fb.c.id).where(
                fb.c.message_id == values["message_id"],
                fb.c.study_uid == values["study_uid"],
                fb.c.model_name == values["model_name"],
            )
        ).first()
        if known is not None:
            return False
        conn.execute(insert(fb), values)
        return True


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


class SQLiteOps(MessageOps):
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

    def mark_processed(self, message_id: int, note: str) -> None:
        self.cur.execute(
            f'UPDATE "{_MSG.name}" SET processed = 1, error = ? WHERE id = ?', (note, message_id)
        )

    def report_studies(self, study_uid: str, accession_number: str) -> list[str]:
        table = Study.__table__.name  # type: ignore[attr-defined]
        for column, value in (("study_uid", study_uid), ("accession_number", accession_number)):
            if value:
                sql = f'SELECT study_uid FROM "{table}" WHERE {column} = ?'
                found = [str(r[0]) for r in self.cur.execute(sql, (value,)).fetchall()]
                if found:
                    return found
        return []

    def newest_finding(self, study_uid: str, model: str) -> dict[str, Any] | None:
        table = Finding.__table__.name  # type: ignore[attr-defined]
        row = self.cur.execute(
            f'SELECT id, status, positive FROM "{table}" WHERE study_uid = ? AND model_name = ? '
            "ORDER BY created_at DESC, id DESC LIMIT 1",
            (study_uid, model),
        ).fetchone()
        return {"id": row[0], "status": row[1], "positive": bool(row[2])} if row else None

    def insert_feedback(self, values: dict[str, Any]) -> bool:
        table = Feedback.__table__.name  # type: ignore[attr-defined]
        known = self.cur.execute(
            f'SELECT id FROM "{table}" WHERE message_id = ? AND study_uid = ? AND model_name = ?',
            (values["message_id"], values["study_uid"], values["model_name"]),
        ).fetchone()
        if known is not None:
            return False
        row = {**values, "at": self.now}
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.cur.execute(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', tuple(row.values()))
        return True


class MessageRows:
    """The store's transactions. Not thread-safe: one writer at a time.

    On SQLite (pysqlite) the batches go through the store's own sqlite3 connection (opened
    through the engine, so with its pragmas: WAL, ``synchronous=FULL``); :meth:`close`
    releases it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._own = OwnSQLite(db, "the HL7 store's connection")
        self.sqlite = self._own.usable

    def close(self) -> None:
        """Close the store's own SQLite connection (reopened when needed again)."""
        self._own.close()

    def connection(self) -> sqlite3.Connection:
        """The store's own sqlite3 connection (SQLite only)."""
        return self._own.connection()

    @contextlib.contextmanager
    def batch(self) -> Iterator[MessageOps]:
        """One transaction for a batch of messages: committed when the block ends, rolled
        back when it raises. On SQLite, the store's connection and cursor."""
        if not self.sqlite:
            with self.transaction() as ops:
                yield ops
            return
        with database_errors():
            con = self.connection()
            try:
                # IMMEDIATE: the write lock from the start, so the resend and order look-ups
                # see what the batch's own writes will be applied to.
                con.execute("BEGIN IMMEDIATE")
                yield SQLiteOps(con.cursor())
                con.commit()
            except BaseException:
                try:
                    con.rollback()
                except Exception:  # the connection itself failed: open a new one next time
                    self.close()
                raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[CoreOps]:
        """A SQLAlchemy Core transaction on a pool connection (any database)."""
        with database_errors(), self.db.engine.begin() as conn:
            yield CoreOps(conn)

    def stored(
        self, *, since: datetime | None = None, ids: Sequence[int] | None = None
    ) -> Sequence[Row[Any]]:
        """(id, raw, message_type, control_id) of stored messages, oldest first."""
        query = select(_MSG.c.id, _MSG.c.raw, _MSG.c.message_type, _MSG.c.control_id).order_by(
            _MSG.c.id
        )
        if since is not None:
            query = query.where(_MSG.c.received_at >= since)
        if ids:
            query = query.where(_MSG.c.id.in_(list(ids)))
        with database_errors(), self.db.engine.connect() as conn:
            return conn.execute(query).all()


def ops_for(conn: Connection | MessageOps) -> MessageOps:
    """The statements for a Core connection in a transaction (or the statements given)."""
    return conn if isinstance(conn, MessageOps) else CoreOps(conn)


def _new_id(key: Any) -> int:
    if not key or key[0] is None:  # pragma: no cover - SQLite and PostgreSQL return it
        raise StoreError("the database returned no id for the new row")
    return int(key[0])
