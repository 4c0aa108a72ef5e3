"""``Instance`` rows and their ``Study``: the one place instances are indexed.

:func:`record_instance` is the rule (ORM, any database): a new instance row, its study
created (and linked to its order) or updated by :func:`study_changes`. :class:`InstanceWriter`
is the Storage SCP's fast writer: on SQLite, an instance of a study already known is written
with three statements on the raw connection, in one ``BEGIN IMMEDIATE`` transaction, applying
the same :func:`study_changes` (a test runs both on the same inputs and compares the rows); a
new study, and any non-SQLite database, go through :func:`record_instance` itself.

The writer's connection commits with ``synchronous=NORMAL`` (WAL): a commit survives the
engine being killed, not necessarily a power cut within the next checkpoint; the SCP's start-up
recovery (:mod:`triage.ingest.dicom_index`) closes that gap. Database errors leave as
:class:`~triage.errors.StoreError` (:func:`triage.store.db.database_errors`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text
from sqlmodel import Session, select

from triage.errors import StoreError
from triage.store.db import Database, database_errors
from triage.store.models import Instance, Study, StudyState, utcnow
from triage.store.repo import link_order

log = logging.getLogger(__name__)

# Study-level attributes copied from an instance header when a study is first seen.
STUDY_FIELDS = (
    "accession_number",
    "patient_id",
    "patient_name",
    "body_part",
    "study_description",
    "contrast_agent",
    "study_datetime",
)
# A study's modality is taken from a later instance while it is only one of these.
REPLACEABLE_MODALITIES = ("SR", "PR", "KO", "OT")


def study_changes(
    study: Mapping[str, Any], modality: str, received_at: datetime, study_attrs: dict[str, str]
) -> dict[str, Any]:
    """The columns a new instance (``modality``, ``received_at``, its study-level tags)
    changes on its study, and their new values. ``study`` maps the study's current values
    (``STUDY_FIELDS``, ``modality``, ``modalities``, ``instance_count``,
    ``last_received_at``, ``state``). A study that had completed goes back to RECEIVING."""
    new: dict[str, Any] = {}
    for key in STUDY_FIELDS:
        if not study[key] and study_attrs.get(key):
            new[key] = study_attrs[key]
    mods = set(filter(None, (study["modalities"] or "").split("\\"))) | {modality}
    new["modalities"] = "\\".join(sorted(filter(None, mods)))
    if not study["modality"] or study["modality"] in REPLACEABLE_MODALITIES:
        new["modality"] = modality
    new["instance_count"] = int(study["instance_count"] or 0) + 1
    last = study["last_received_at"]
    if isinstance(last, datetime) and last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    if not isinstance(last, datetime) or received_at > last:
        new["last_received_at"] = received_at
    if study["state"] != StudyState.RECEIVING:
        new["state"] = StudyState.RECEIVING
    return new


_STUDY_READ: tuple[str, ...] = ("id", *STUDY_FIELDS, "modality", "modalities")
_STUDY_READ += ("instance_count", "last_received_at", "state")


def record_instance(
    session: Session,
    inst: Instance,
    study_attrs: dict[str, str],
    *,
    match_window_hours: float | None = None,
) -> bool:
    """Index a stored instance and update its study. Returns False for a duplicate SOP UID.

    ``study_attrs`` holds the study-level tags read from the instance (keys in STUDY_FIELDS).
    A study that had completed goes back to RECEIVING, so it completes (and is re-scored) again.
    A new study is linked to its order (:func:`~triage.store.repo.link_order`): by Study UID or
    accession number, and by patient only when ``match_window_hours`` (the
    ``order_match_window_hours`` setting) is given; otherwise the pipeline makes that match
    when the study completes.
    """
    existing = session.exec(
        select(Instance).where(Instance.sop_instance_uid == inst.sop_instance_uid)
    ).first()
    if existing is not None:
        return False
    session.add(inst)
    study = session.exec(select(Study).where(Study.study_uid == inst.study_uid)).first()
    now = inst.received_at or utcnow()
    if study is None:
        study = Study(study_uid=inst.study_uid, first_received_at=now, last_received_at=now)
        for key in STUDY_FIELDS:
            if study_attrs.get(key):
                setattr(study, key, study_attrs[key])
        study.modality = inst.modality
        study.calling_ae = inst.calling_ae
        link_order(session, study, match_window_hours)
    current = {key: getattr(study, key) for key in _STUDY_READ[1:]}
    for key, value in study_changes(current, inst.modality, now, study_attrs).items():
        setattr(study, key, value)
    session.add(study)
    return True


class InstanceWriter:
    """Writes the index rows of received instances on its own connection. Thread-safe (one
    connection, a lock). Every method raises :class:`~triage.errors.StoreError`; after an
    error the connection is rolled back and replaced."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._fast = db.engine.dialect.name == "sqlite"
        dialect = db.engine.dialect
        self._inst_cols = [c for c in Instance.__table__.columns if c.name != "id"]  # type: ignore[attr-defined]
        self._inst_bind = [
            c.type.dialect_impl(dialect).bind_processor(dialect) for c in self._inst_cols
        ]
        study_cols = Study.__table__.columns  # type: ignore[attr-defined]
        when = study_cols["last_received_at"].type.dialect_impl(dialect)
        self._when_bind = when.bind_processor(dialect)
        self._when_result = when.result_processor(dialect, None)
        names = ", ".join(c.name for c in self._inst_cols)
        marks = ", ".join("?" for _ in self._inst_cols)
        self._insert_sql = f"INSERT INTO instance ({names}) VALUES ({marks})"
        self._study_sql = f"SELECT {', '.join(_STUDY_READ)} FROM study WHERE study_uid = ?"

    # ------------------------------------------------------------------ connection

    def _connection(self) -> Connection:
        if self._conn is None:
            with database_errors("cannot open the index connection"):
                conn = self.db.engine.connect()
                if self._fast:
                    conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
                    conn.commit()
            self._conn = conn
        return self._conn

    def raw_connection(self) -> sqlite3.Connection:
        """The writer's sqlite3 connection (SQLite only)."""
        raw = self._connection().connection.dbapi_connection
        assert isinstance(raw, sqlite3.Connection)
        return raw

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def _reset(self) -> None:
        """After an error: roll back whatever is open and start again with a new connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                raw = conn.connection.dbapi_connection
                if isinstance(raw, sqlite3.Connection) and raw.in_transaction:
                    raw.rollback()
                conn.close()
            except Exception as exc:  # the connection may be broken; it is dropped anyway
                log.debug("closing the index connection after an error: %s", exc)

    def _query(self, sql: str, params: dict[str, Any]) -> list[Any]:
        with self._lock:
            try:
                with database_errors():
                    conn = self._connection()
                    rows = list(conn.execute(text(sql), params).all())
                    conn.rollback()
                    return rows
            except StoreError:
                self._reset()
                raise

    # ------------------------------------------------------------------ queries

    def is_stored(self, sop_instance_uid: str) -> bool:
        """True when an instance with this SOP Instance UID is indexed."""
        if not self._fast:
            sql = "SELECT 1 FROM instance WHERE sop_instance_uid = :u"
            return bool(self._query(sql, {"u": sop_instance_uid}))
        with self._lock:
            try:
                with database_errors():
                    row = (
                        self.raw_connection()
                        .execute(
                            "SELECT 1 FROM instance WHERE sop_instance_uid = ?",
                            (sop_instance_uid,),
                        )
                        .fetchone()
                    )
                    return row is not None
            except StoreError:
                self._reset()
                raise

    def newest_received(self) -> datetime | None:
        """When the newest indexed instance was received (aware), None when there is none."""
        ((value,),) = self._query("SELECT MAX(received_at) FROM instance", {})
        if value is None:
            return None
        if isinstance(value, str) and self._when_result is not None:
            value = self._when_result(value)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        return None

    def paths_of_study(self, study_uid: str) -> set[str]:
        """The stored paths of the study's indexed instances."""
        rows = self._query("SELECT path FROM instance WHERE study_uid = :u", {"u": study_uid})
        return {str(r[0]) for r in rows}

    def paths_under(self, prefix: str) -> set[str]:
        """The stored paths of indexed instances that start with ``prefix``."""
        sql = "SELECT path FROM instance WHERE substr(path, 1, :n) = :p"
        return {str(r[0]) for r in self._query(sql, {"n": len(prefix), "p": prefix})}

    # ------------------------------------------------------------------ writing

    def record(self, row: dict[str, Any], study_attrs: dict[str, str]) -> bool:
        """Index an instance and update its study, committed. ``row`` holds ``Instance``
        columns (at least the header fields, ``path``, ``size_bytes``, ``calling_ae`` and an
        aware ``received_at``; others take the model's defaults). False: the SOP UID is
        already indexed (nothing changed)."""
        with self._lock:
            try:
                with database_errors():
                    if self._fast:
                        done = self._record_fast(row, study_attrs)
                        if done is not None:
                            return done
                    return self._record_orm(Instance(**row), study_attrs)
            except StoreError:
                self._reset()
                raise

    def _record_orm(self, inst: Instance, study_attrs: dict[str, str]) -> bool:
        with Session(bind=self._connection(), expire_on_commit=False) as session:
            try:
                new = record_instance(session, inst, study_attrs)
                session.commit()
            except BaseException:
                session.rollback()
                raise
        return new

    def _record_fast(self, row: dict[str, Any], study_attrs: dict[str, str]) -> bool | None:
        """:func:`record_instance` for a known study, in SQL. None: the study is new (not
        handled here; nothing was written)."""
        raw = self.raw_connection()
        if raw.in_transaction:  # never expected; do not commit someone else's work
            raw.rollback()
        raw.execute("BEGIN IMMEDIATE")
        try:
            if raw.execute(
                "SELECT 1 FROM instance WHERE sop_instance_uid = ?", (row["sop_instance_uid"],)
            ).fetchone():
                raw.rollback()
                return False
            found = raw.execute(self._study_sql, (row["study_uid"],)).fetchone()
            if found is None:
                raw.rollback()
                return None
            study = dict(zip(_STUDY_READ, found, strict=True))
            values = []
            for col, bind in zip(self._inst_cols, self._inst_bind, strict=True):
                value = row[col.name] if col.name in row else _column_default(col.name)
                values.append(bind(value) if bind else value)
            raw.execute(self._insert_sql, values)
            last = study["last_received_at"]
            if isinstance(last, str) and self._when_result is not None:
                study["last_received_at"] = self._when_result(last)
            params = study_changes(
                study, row.get("modality") or "", row["received_at"], study_attrs
            )
            if "state" in params:
                params["state"] = str(params["state"])
            if self._when_bind is not None and "last_received_at" in params:
                params["last_received_at"] = self._when_bind(params["last_received_at"])
            assignments = ", ".join(f"{k} = :{k}" for k in params)
            raw.execute(
                f"UPDATE study SET {assignments} WHERE id = :id", {**params, "id": found[0]}
            )
            raw.commit()
            return True
        except BaseException:
            raw.rollback()
            raise


def _column_default(name: str) -> Any:
    """The model's default for an ``Instance`` column the SCP does not set."""
    field = Instance.model_fields[name]
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default
