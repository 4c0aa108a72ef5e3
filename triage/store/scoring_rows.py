"""What the scheduled re-score reads and writes, as plain rows instead of ORM objects.

The pass (:meth:`triage.pipeline.Pipeline.rescore_open`) looks at every open study each minute.
Loading them as ORM objects, with every column of their findings (key image paths, model
inputs), and writing each changed one through the unit of work cost most of the pass; here it
reads only the columns scoring needs, in two queries on the session's connection (the
studies with their orders' fields, their findings: each filtered by the same condition, no long
``IN (...)`` lists), as plain tuples (on SQLite straight from the sqlite3 cursor: the ORM's
row processing cost more than the queries), and writes the changed scores with one ``UPDATE``
run over all of them (executemany).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    bindparam,
    func,
    or_,
    select,
    type_coerce,
    update,
)
from sqlmodel import Session, col

from triage.store.models import Finding, Order, Study

#: The columns of a row of :func:`open_rows`, in order; the values of the rules' fields follow.
OPEN_ROW = (
    "id",
    "study_uid",
    "state",
    "ordered_priority",
    "patient_class",
    "score",
    "engine_priority",
    "rules_version",
    "reasons",
    "sent_priority",
    "sent_finding",
    "since",  # completed, else last received (as stored: see stored_time)
    "scored",  # scored before (1/0 or True/False)
    "location",  # the linked order's ordering_location, "" without one
)


class FindingRow(NamedTuple):
    """A finding as scoring reads it: the fields of
    :class:`~triage.scoring.score.FindingInput`, in its order (:func:`open_findings` gives
    plain tuples laid out so)."""

    model_name: str
    status: str
    probability: float | None
    positive: bool
    threshold: float | None
    model_version: str
    detail: str


def stored_time(value: Any) -> datetime | None:
    """A stored time read as text (SQLite keeps ISO text; ``fromisoformat`` reads it several
    times faster than the ORM's DateTime type does), or as the driver gave it."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def open_condition(states: Sequence[str], cutoff: datetime) -> ColumnElement[bool]:
    """Studies in ``states`` completed (else last received, when not completed) at or after
    ``cutoff``."""
    return and_(
        col(Study.state).in_(states),
        or_(
            col(Study.completed_at) >= cutoff,
            and_(col(Study.completed_at).is_(None), col(Study.last_received_at) >= cutoff),
        ),
    )


#: Read SQLite's rows straight from its cursor (False: through the engine, as on other
#: databases; the tests compare both).
RAW_SQLITE = True
_CHUNK = 500  # rows fetched at a time: each chunk is dropped before the next is read


def _rows(session: Session, query: Select[*tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``query`` as plain tuples of the driver's values, a chunk at a time (few
    rows alive at once: the pass's garbage stays young and cheap to collect). SQLite: on the
    session's own sqlite3 connection (same transaction), skipping the result processing that
    costs more than the query here (times stay ISO text, booleans 0/1); other databases:
    through the engine as usual."""
    conn = session.connection()
    raw = conn.connection.dbapi_connection
    if not RAW_SQLITE or conn.dialect.name != "sqlite" or not isinstance(raw, sqlite3.Connection):
        result = conn.execute(query)
        try:
            while chunk := result.fetchmany(_CHUNK):
                yield from (tuple(r) for r in chunk)
        finally:
            result.close()
        return
    # the values are the engine's own (states, a cutoff time): written into the SQL text by
    # the dialect's literal rendering, the same text its bound parameters would compare
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    cursor = raw.cursor()
    try:
        cursor.execute(sql)
        while chunk := cursor.fetchmany(_CHUNK):
            yield from chunk
    finally:
        cursor.close()


def open_rows(
    session: Session, states: Sequence[str], cutoff: datetime, fields: Sequence[str] = ()
) -> Iterator[tuple[Any, ...]]:
    """The open studies (:func:`open_condition`) as tuples of :data:`OPEN_ROW`, then the value
    of each of ``fields`` ("order.procedure_text", "study.modality": "" when empty or without
    an order), in no particular order. Read as they are iterated: the session's connection is
    busy until the iteration ends."""
    study: Any = Study.__table__  # type: ignore[attr-defined]
    order: Any = Order.__table__  # type: ignore[attr-defined]
    extra = []
    for name in fields:
        table, _, column = name.partition(".")
        extra.append(func.coalesce((study if table == "study" else order).c[column], ""))
    since = func.coalesce(study.c.completed_at, study.c.last_received_at)
    query = (
        select(
            *(study.c[n] for n in OPEN_ROW[:11]),
            type_coerce(since, String),
            study.c.scored_at.is_not(None),
            func.coalesce(order.c.ordering_location, ""),
            *extra,
        )
        .select_from(study.outerjoin(order, order.c.id == study.c.order_id))
        .where(open_condition(states, cutoff))
    )
    return _rows(session, query)


def open_findings(
    session: Session, states: Sequence[str], cutoff: datetime
) -> dict[str, tuple[tuple[Any, ...], ...]]:
    """The newest finding per model of each open study (as
    :func:`triage.store.repo.latest_findings`: newest model first), by Study UID; each as a
    plain tuple laid out as :class:`FindingRow` (plain tuples: the collector stops tracking
    them, and the pass's memo keeps them as keys)."""
    studies = select(col(Study.study_uid)).where(open_condition(states, cutoff))
    query = (
        select(
            col(Finding.study_uid),
            *(Finding.__table__.c[n] for n in FindingRow._fields),  # type: ignore[attr-defined]
        )
        .where(col(Finding.study_uid).in_(studies.scalar_subquery()))
        .order_by(col(Finding.study_uid), col(Finding.created_at).desc(), col(Finding.id).desc())
    )
    out: dict[str, tuple[tuple[Any, ...], ...]] = {}
    uid: str | None = None
    group: list[tuple[Any, ...]] = []
    for r in _rows(session, query):
        if r[0] != uid:
            if uid is not None:
                out[uid] = tuple(group)
            uid, group = r[0], []
        if all(f[0] != r[1] for f in group):  # the newest of its model
            group.append(r[1:])
    if uid is not None:
        out[uid] = tuple(group)
    return out


_TABLE: Any = Study.__table__  # type: ignore[attr-defined]
_SCORE_UPDATE = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("_id"))
    .values(
        score=bindparam("_score"),
        engine_priority=bindparam("_priority"),
        reasons=bindparam("_reasons"),
        scored_at=bindparam("_scored_at"),
        rules_version=bindparam("_rules_version"),
    )
)


def write_scores(session: Session, scores: Sequence[dict[str, Any]]) -> None:
    """Store new scores with one statement run for each (executemany). Each item: ``_id``,
    ``_score``, ``_priority``, ``_reasons`` (the JSON text), ``_scored_at``,
    ``_rules_version``."""
    if scores:
        session.connection().execute(_SCORE_UPDATE, list(scores))
