"""The Storage SCP's index writer: ``Instance`` rows and their ``Study``, fast, and recoverable.

What "Success" means:

1. before the response, the file is durable: written (while the data set arrived, see
   :mod:`triage.ingest.dicom_stream`), renamed to its final name, fsynced, its directory
   fsynced;
2. right after the response, before the association reads its next PDU, the index row is
   committed (this module, :meth:`InstanceIndex.record_acknowledged`), visible to every
   reader at once. A crash in between leaves a durable file without a row: the recovery
   below indexes it. A commit that fails while the engine runs is *owed*: kept and retried
   (:meth:`InstanceIndex.retry_owed`); an acknowledged file is never removed.

On SQLite the index connection commits with ``synchronous=NORMAL`` (WAL): a commit is in the
WAL file, so it survives the engine being killed (SIGKILL, OOM, crash), but not necessarily
a power cut or kernel crash that follows within the next checkpoint. That gap is closed by
:meth:`InstanceIndex.recover`, run at every start before the SCP listens: it indexes the
files written since shortly before the newest surviving row that have no row (and removes
temp files and files that are not a complete, well-formed instance: those were never
acknowledged). A commit with ``synchronous=FULL`` would cost a second flush of the disk cache
per instance (as much again as the file's own fsync); measured in docs/performance.md.

The common case (a new instance of a study already known) is written with three statements
on the raw SQLite connection, in one ``BEGIN IMMEDIATE`` transaction; it does exactly what
:func:`triage.store.repo.record_instance` does for an existing study (a test runs both on the
same inputs and compares the rows). A new study, and any non-SQLite database, go through
``record_instance`` itself (which also links the order).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from triage.errors import DicomIngestError, StoreError
from triage.ingest.dicom_files import DICOM_SUBDIR, is_valid_uid, read_instance_file
from triage.store import repo
from triage.store.db import Database
from triage.store.models import Instance, Study, StudyState

log = logging.getLogger(__name__)

#: Files whose directory changed up to this long before the newest indexed instance are
#: checked by :meth:`InstanceIndex.recover` (covers clock steps and slow concurrent stores).
RECOVERY_MARGIN = timedelta(minutes=10)

_REPLACEABLE_MODALITIES = ("SR", "PR", "KO", "OT")  # as in repo.record_instance
_STUDY_READ: tuple[str, ...] = ("id", *repo.STUDY_FIELDS, "modality", "modalities")
_STUDY_READ += ("instance_count", "last_received_at", "state")


@dataclass
class RecoveryReport:
    indexed: int = 0  # files that had no index row and now have one
    removed: int = 0  # temp files and incomplete/undecodable files removed
    checked_dirs: int = 0  # series directories looked into

    def __str__(self) -> str:
        return (
            f"{self.indexed} instance(s) re-indexed, {self.removed} incomplete file(s) "
            f"removed, {self.checked_dirs} series folder(s) checked"
        )


class InstanceIndex:
    """Writes the index rows of received instances. Thread-safe (one connection, a lock)."""

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
        # Rows of acknowledged instances whose commit failed (see record_acknowledged).
        self._owed: list[tuple[dict[str, Any], dict[str, str]]] = []
        self._owed_lock = threading.Lock()

    # ------------------------------------------------------------------ connection

    def _connection(self) -> Connection:
        if self._conn is None:
            try:
                conn = self.db.engine.connect()
                if self._fast:
                    conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
                    conn.commit()
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot open the index connection: {exc}") from exc
            self._conn = conn
        return self._conn

    def _raw(self) -> sqlite3.Connection:
        raw = self._connection().connection.dbapi_connection
        assert isinstance(raw, sqlite3.Connection)
        return raw

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    # ------------------------------------------------------------------ queries

    def is_stored(self, sop_instance_uid: str) -> bool:
        """True when an instance with this SOP Instance UID is indexed."""
        with self._lock:
            try:
                if self._fast:
                    raw = self._raw()
                    row = raw.execute(
                        "SELECT 1 FROM instance WHERE sop_instance_uid = ?", (sop_instance_uid,)
                    ).fetchone()
                    return row is not None
                conn = self._connection()
                found = conn.execute(
                    text("SELECT 1 FROM instance WHERE sop_instance_uid = :u"),
                    {"u": sop_instance_uid},
                ).first()
                conn.rollback()
                return found is not None
            except (sqlite3.Error, SQLAlchemyError) as exc:
                self._reset()
                raise StoreError(f"database error: {exc}") from exc

    def record(self, row: dict[str, Any], study_attrs: dict[str, str]) -> bool:
        """Index an instance and update its study, committed. ``row`` holds ``Instance``
        columns (at least the header fields, ``path``, ``size_bytes``, ``calling_ae`` and an
        aware ``received_at``; others take the model's defaults). False: the SOP UID is
        already indexed (nothing changed). Raises :class:`StoreError`."""
        with self._lock:
            try:
                if self._fast:
                    done = self._record_fast(row, study_attrs)
                    if done is not None:
                        return done
                return self._record_orm(Instance(**row), study_attrs)
            except (sqlite3.Error, SQLAlchemyError) as exc:
                self._reset()
                raise StoreError(f"database error: {exc}") from exc

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

    def _record_orm(self, inst: Instance, study_attrs: dict[str, str]) -> bool:
        with Session(bind=self._connection(), expire_on_commit=False) as session:
            try:
                new = repo.record_instance(session, inst, study_attrs)
                session.commit()
            except BaseException:
                session.rollback()
                raise
        return new

    def _record_fast(self, row: dict[str, Any], study_attrs: dict[str, str]) -> bool | None:
        """``record_instance`` for a known study, in SQL. None: the study is new (not handled
        here; nothing was written)."""
        raw = self._raw()
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
            sets, params = _study_update(study, row, study_attrs, self._when_result)
            if self._when_bind is not None and "last_received_at" in params:
                params["last_received_at"] = self._when_bind(params["last_received_at"])
            assignments = ", ".join(f"{k} = :{k}" for k in sets)
            raw.execute(
                f"UPDATE study SET {assignments} WHERE id = :id", {**params, "id": found[0]}
            )
            raw.commit()
            return True
        except BaseException:
            raw.rollback()
            raise

    # ------------------------------------------------------------------ rows owed

    def record_acknowledged(self, row: dict[str, Any], study_attrs: dict[str, str]) -> list[str]:
        """:meth:`record` for an instance already answered Success (its file is durable).
        Never raises: a commit that fails is logged and the row kept, to be retried first by
        the next call and by :meth:`retry_owed` (the start-up recovery indexes it after a
        crash). Returns the Study UIDs of the instances newly indexed by this call (this one,
        and any owed rows that went through)."""
        studies: list[str] = []
        if self._owed:
            try:
                studies += self.retry_owed()
            except StoreError as exc:  # this row still gets its own try
                log.debug("retrying owed index rows: %s", exc)
        try:
            if self.record(row, study_attrs):
                studies.append(row["study_uid"])
        except StoreError as exc:
            try:  # a commit can fail after it took effect: then the row is there
                if self.is_stored(row["sop_instance_uid"]):
                    return [*studies, row["study_uid"]]
            except StoreError:
                pass
            with self._owed_lock:
                self._owed.append((row, study_attrs))
            log.error(
                "instance %s stored in %s (acknowledged) but not indexed: %s; retried with the "
                "next instance, when an association ends, at stop, and by the start-up recovery",
                row["sop_instance_uid"],
                row["path"],
                exc,
            )
        return studies

    @property
    def owed(self) -> int:
        """How many acknowledged instances wait for their index row."""
        return len(self._owed)

    def retry_owed(self) -> list[str]:
        """Commit the owed rows; returns the Study UIDs of those newly indexed. Raises
        :class:`StoreError` at the first that fails again, which goes to the back of the list
        (one bad row cannot hold up the rest for ever)."""
        studies: list[str] = []
        with self._owed_lock:
            for _ in range(len(self._owed)):
                row, study_attrs = self._owed.pop(0)
                try:
                    new = self.record(row, study_attrs)
                except StoreError:
                    self._owed.append((row, study_attrs))
                    raise
                log.warning("instance %s indexed on retry", row["sop_instance_uid"])
                if new:
                    studies.append(row["study_uid"])
        return studies

    # ------------------------------------------------------------------ recovery

    def recover(self, data_dir: Path) -> RecoveryReport:
        """Index the instance files that have no index row (see the module docstring).

        Only series folders changed since :data:`RECOVERY_MARGIN` before the newest indexed
        instance are read (all of them when nothing is indexed), so the cost follows what was
        received lately, not the size of the archive.
        """
        report = RecoveryReport()
        root = Path(data_dir) / DICOM_SUBDIR
        if not root.is_dir():
            return report
        since = self._newest_received()
        cutoff = None if since is None else (since - RECOVERY_MARGIN).timestamp()
        for study_dir in _subdirs(root):
            for series_dir in _subdirs(study_dir):
                try:
                    if cutoff is not None and series_dir.stat().st_mtime < cutoff:
                        continue
                except OSError:
                    continue
                report.checked_dirs += 1
                self._recover_series(Path(data_dir), study_dir, series_dir, report)
        return report

    def _newest_received(self) -> datetime | None:
        with self._lock:
            try:
                conn = self._connection()
                value = conn.execute(text("SELECT MAX(received_at) FROM instance")).scalar()
                conn.rollback()
            except SQLAlchemyError as exc:
                self._reset()
                raise StoreError(f"database error: {exc}") from exc
        if value is None:
            return None
        if isinstance(value, str) and self._when_result is not None:
            value = self._when_result(value)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        return None

    def _indexed_paths(self, data_dir: Path, study_dir: Path) -> set[str]:
        prefix = study_dir.relative_to(data_dir).as_posix() + "/"
        with self._lock:
            try:
                conn = self._connection()
                if is_valid_uid(study_dir.name):  # the folder is named after the study UID
                    rows = conn.execute(
                        text("SELECT path FROM instance WHERE study_uid = :u"),
                        {"u": study_dir.name},
                    ).all()
                else:
                    rows = conn.execute(
                        text("SELECT path FROM instance WHERE substr(path, 1, :n) = :p"),
                        {"n": len(prefix), "p": prefix},
                    ).all()
                conn.rollback()
            except SQLAlchemyError as exc:
                self._reset()
                raise StoreError(f"database error: {exc}") from exc
        return {str(r[0]) for r in rows}

    def _recover_series(
        self, data_dir: Path, study_dir: Path, series_dir: Path, report: RecoveryReport
    ) -> None:
        indexed: set[str] | None = None
        for entry in sorted(os.scandir(series_dir), key=lambda e: e.name):
            if not entry.is_file(follow_symlinks=False):
                continue
            path = Path(entry.path)
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                _unlink(path, "temp file of an interrupted store")
                report.removed += 1
                continue
            if not entry.name.endswith(".dcm"):
                continue
            if indexed is None:
                indexed = self._indexed_paths(data_dir, study_dir)
            rel = path.relative_to(data_dir).as_posix()
            if rel in indexed:
                continue
            try:
                fields, study_attrs, source_ae = read_instance_file(path)
            except (DicomIngestError, OSError) as exc:
                _unlink(path, f"not a complete instance ({exc})")
                report.removed += 1
                continue
            mtime = datetime.fromtimestamp(entry.stat().st_mtime, UTC)
            row = {
                **fields,
                "path": rel,
                "size_bytes": entry.stat().st_size,
                "calling_ae": source_ae[:16],
                "received_at": mtime,
            }
            if self.record(row, study_attrs):
                report.indexed += 1
                log.info("re-indexed %s (no index row after a crash)", rel)


def _column_default(name: str) -> Any:
    """The model's default for an ``Instance`` column the SCP does not set."""
    field = Instance.model_fields[name]
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def _study_update(
    study: dict[str, Any],
    row: dict[str, Any],
    study_attrs: dict[str, str],
    parse_when: Any,
) -> tuple[list[str], dict[str, Any]]:
    """The columns ``repo.record_instance`` changes on an existing study, and their values."""
    modality = row.get("modality") or ""
    new: dict[str, Any] = {}
    for key in repo.STUDY_FIELDS:
        if not study[key] and study_attrs.get(key):
            new[key] = study_attrs[key]
    mods = set(filter(None, (study["modalities"] or "").split("\\"))) | {modality}
    new["modalities"] = "\\".join(sorted(filter(None, mods)))
    if not study["modality"] or study["modality"] in _REPLACEABLE_MODALITIES:
        new["modality"] = modality
    new["instance_count"] = int(study["instance_count"] or 0) + 1
    last = study["last_received_at"]
    if isinstance(last, str) and parse_when is not None:
        last = parse_when(last)
    now = row["received_at"]
    if isinstance(last, datetime) and last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    if not isinstance(last, datetime) or now > last:
        new["last_received_at"] = now
    if study["state"] != StudyState.RECEIVING:
        new["state"] = str(StudyState.RECEIVING)
    return list(new), new


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _unlink(path: Path, why: str) -> None:
    try:
        path.unlink()
        log.warning("removed %s: %s", path, why)
    except OSError as exc:
        log.warning("could not remove %s (%s): %s", path, why, exc)
