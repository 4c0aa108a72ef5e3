"""Database connection. SQLite by default (WAL, busy timeout), any SQLAlchemy URL otherwise.

Also the one place where database errors become :class:`~triage.errors.StoreError`
(:func:`database_errors`): the ORM sessions here, and the raw sqlite3 writers of the
listeners (:mod:`triage.store.instances`, :mod:`triage.store.messages`), all go through it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, SQLModel, create_engine

from triage.errors import StoreError
from triage.store import models  # noqa: F401  (registers the tables)

log = logging.getLogger("triage.store")

#: What the database layers raise: SQLAlchemy (ORM, Core) and sqlite3 (the raw writers).
DATABASE_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, sqlite3.Error)


def is_database_error(exc: BaseException) -> bool:
    """True for an error of the database layer, translated or not."""
    return isinstance(exc, StoreError | SQLAlchemyError | sqlite3.Error)


class OwnSQLite:
    """A sqlite3 connection of one component's own, opened through the engine (so with its
    pragmas: WAL, ``synchronous=FULL``, the busy timeout) and detached from the pool: the
    pool opens another for everyone else. Reopened after :meth:`close`. For the hot paths
    that use the sqlite3 cursor directly (the HL7 store's transactions, the on-order
    look-ups); one thread at a time."""

    def __init__(self, db: Database, what: str) -> None:
        self.db = db
        self.what = what  # for the error: "cannot open <what>"
        self.usable = db.engine.dialect.name == "sqlite" and db.engine.driver == "pysqlite"
        self._raw: Any = None

    def connection(self) -> sqlite3.Connection:
        if self._raw is None:
            with database_errors(f"cannot open {self.what}"):
                raw = self.db.engine.raw_connection()
            raw.detach()
            self._raw = raw
        con: sqlite3.Connection = self._raw.dbapi_connection
        return con

    def close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            with suppress(Exception):
                raw.close()


@contextmanager
def database_errors(what: str = "database error") -> Iterator[None]:
    """Translate database errors raised inside the block into :class:`StoreError`
    (``"<what>: <the library's message>"``, the original as ``__cause__``)."""
    try:
        yield
    except DATABASE_ERRORS as exc:
        raise StoreError(f"{what}: {exc}") from exc


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # an acknowledged row survives power loss
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Database:
    """Owns the SQLAlchemy engine. Use :meth:`session` for a unit of work."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        try:
            with database_errors(f"cannot open database {url!r}"):
                self.engine: Engine = create_engine(url, **kwargs)
        except (ImportError, ValueError) as exc:
            raise StoreError(f"cannot open database {url!r}: {exc}") from exc
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def create_all(self) -> None:
        """Create missing tables, then add columns that a newer engine version introduced to
        tables made by an older one (additive changes only; nothing is dropped or retyped)."""
        with database_errors(f"cannot create tables in {self.url!r}"):
            SQLModel.metadata.create_all(self.engine)
            self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        inspector = inspect(self.engine)
        dialect = self.engine.dialect
        for table in SQLModel.metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} "
                ddl += column.type.compile(dialect=dialect)
                default = getattr(column.default, "arg", None)
                if isinstance(default, bool):
                    ddl += f" DEFAULT {int(default)}"
                elif isinstance(default, int | float):
                    ddl += f" DEFAULT {default}"
                elif isinstance(default, str):
                    ddl += " DEFAULT '" + default.replace("'", "''") + "'"
                elif not column.nullable:
                    log.warning(
                        "column %s.%s is missing and has no constant default: not added",
                        table.name,
                        column.name,
                    )
                    continue
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(ddl)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with Session(self.engine, expire_on_commit=False) as s, database_errors():
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
