"""Which newly acknowledged orders could concern a stored study (the HL7 listener's hand-off).

Orders usually arrive before their images, so most orders the listener acknowledges have no
study yet and nothing for the pipeline to do. :class:`OrderLinks` answers, for a batch of
order ids, those that share an order id, Study UID, accession number or patient id with a
stored study: a superset of those for which :func:`triage.store.repo.studies_for_order` finds
any study (it looks at studies linked to the order, with its Study UID or accession number,
or of its patient). One query per batch. On SQLite it runs on a connection of its own, through
the sqlite3 cursor: the pool check-out and SQLAlchemy's result processing cost more than the
indexed look-ups, and they took the interpreter lock from the listener at every batch
(docs/performance.md, "HL7 MLLP"). Used from one thread at a time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sqlalchemy import bindparam, text

from triage.store.db import Database, OwnSQLite, database_errors
from triage.store.models import Order, Study

__all__ = ["OrderLinks"]

IN_CHUNK = 500  # order ids per query (SQLite allows 32,766 parameters)

_O = Order.__table__.name  # type: ignore[attr-defined]
_S = Study.__table__.name  # type: ignore[attr-defined]


def _near(column: str) -> str:
    return f"(o.{column} != '' AND EXISTS (SELECT 1 FROM \"{_S}\" s WHERE s.{column} = o.{column}))"


#: The one query, with ``{ids}`` where the list of order ids goes: "(?, ?, ...)" for the
#: sqlite3 cursor, an expanding bind parameter for SQLAlchemy (other databases).
_SQL_NEAR = (
    f'SELECT o.id FROM "{_O}" o WHERE o.id IN {{ids}} AND ('
    f'EXISTS (SELECT 1 FROM "{_S}" s WHERE s.order_id = o.id) OR '
    + " OR ".join(_near(c) for c in ("study_uid", "accession_number", "patient_id"))
    + ")"
)
_CORE_NEAR = text(_SQL_NEAR.format(ids=":ids")).bindparams(bindparam("ids", expanding=True))


class OrderLinks:
    """:meth:`near_studies` for the listener's on-order thread; :meth:`close` releases the
    SQLite connection it keeps."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._own = OwnSQLite(db, "the order look-up connection")
        self.sqlite = self._own.usable

    def near_studies(self, order_ids: Sequence[int]) -> list[int]:
        """The orders among ``order_ids`` (in that order, once each) that share an order id,
        Study UID, accession number or patient id with a stored study."""
        ids = list(dict.fromkeys(order_ids))
        chunks = [ids[start : start + IN_CHUNK] for start in range(0, len(ids), IN_CHUNK)]
        keep: set[int] = set()
        with database_errors("cannot look up the studies of new orders"):
            if self.sqlite:
                con = self._connection()
                try:
                    for chunk in chunks:
                        sql = _SQL_NEAR.format(ids="(" + ", ".join("?" * len(chunk)) + ")")
                        keep.update(r[0] for r in con.execute(sql, chunk).fetchall())
                except sqlite3.Error:
                    self.close()  # a new connection next time
                    raise
            else:
                with self.db.engine.connect() as conn:
                    for chunk in chunks:
                        keep.update(conn.execute(_CORE_NEAR, {"ids": chunk}).scalars())
        return [i for i in ids if i in keep]

    def close(self) -> None:
        self._own.close()

    def _connection(self) -> sqlite3.Connection:
        con = self._own.connection()
        if con.in_transaction:  # a read left open would pin the WAL: never keep one
            con.rollback()
        return con
