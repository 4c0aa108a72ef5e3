"""What the scheduled re-score reads and writes, as plain rows instead of ORM objects.

The pass (:meth:`triage.pipeline.Pipeline.rescore_open`) looks at every open study each minute.
Loading them as ORM objects, with every column of their findings (key image paths, model
inputs), and writing each changed one through the unit of work cost most of the pass; here it
reads only the columns scoring needs, in three queries on the session's connection (the
studies, their orders, their findings: each filtered by the same condition, no long
``IN (...)`` lists), and writes the changed scores with one ``UPDATE`` run over all of them
(executemany).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
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

#: The study columns every score needs (the rules may ask for more: ``extra`` below).
STUDY_COLUMNS = (
    "id",
    "study_uid",
    "state",
    "ordered_priority",
    "patient_class",
    "order_id",
    "score",
    "engine_priority",
    "rules_version",
    "reasons",
    "sent_priority",
    "sent_finding",
)
#: The finding columns a score and the RIS's "told" signature need (no key image, no inputs).
FINDING_COLUMNS = (
    "study_uid",
    "model_name",
    "model_version",
    "status",
    "probability",
    "positive",
    "threshold",
    "detail",
)


class OpenStudy(NamedTuple):
    """A row of :func:`open_study_rows`: the :data:`STUDY_COLUMNS`, ``since`` (completed,
    else last received), ``scored`` (scored before), and the ``extra`` columns by name."""

    id: int
    study_uid: str
    state: str
    ordered_priority: str
    patient_class: str
    order_id: int | None
    score: float
    engine_priority: str
    rules_version: str
    reasons: str
    sent_priority: str
    sent_finding: str
    since: datetime | None
    scored: bool
    extra: dict[str, Any]

    def __getattr__(self, name: str) -> Any:  # the rules' study.* fields
        try:
            return self.extra[name]
        except KeyError:
            raise AttributeError(name) from None


def _columns(model: Any, names: Iterable[str]) -> list[Any]:
    """The model's columns of these names, each once, unknown names skipped."""
    table = model.__table__
    out: list[Any] = []
    seen: set[str] = set()
    for name in names:
        if name in table.c and name not in seen:
            seen.add(name)
            out.append(table.c[name])
    return out


def _when(value: Any) -> datetime | None:
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


def open_study_rows(
    session: Session, where: ColumnElement[bool], extra: Iterable[str] = ()
) -> list[OpenStudy]:
    """The studies matching ``where`` (by id) as :class:`OpenStudy` rows, with the ``extra``
    study columns (those the urgency rules test)."""
    more = _columns(Study, extra)
    names = [c.name for c in more]
    since = func.coalesce(col(Study.completed_at), col(Study.last_received_at))
    query = select(
        *_columns(Study, STUDY_COLUMNS),
        type_coerce(since, String),
        col(Study.scored_at).is_not(None),
        *more,
    ).where(where)
    n = len(STUDY_COLUMNS)
    out: list[OpenStudy] = []
    for r in session.connection().execute(query.order_by(col(Study.id))):
        extras = dict(zip(names, r[n + 2 :], strict=True))
        out.append(OpenStudy._make((*r[:n], _when(r[n]), bool(r[n + 1]), extras)))
    return out


def order_rows(
    session: Session, where: ColumnElement[bool], columns: Iterable[str]
) -> dict[int, Any]:
    """The orders linked to the studies matching ``where``: id -> row of ``columns`` (``id``
    and ``ordering_location`` always included)."""
    cols = _columns(Order, ("id", "ordering_location", *columns))
    linked = select(col(Study.order_id)).where(where, col(Study.order_id).is_not(None))
    rows = session.connection().execute(
        select(*cols).where(col(Order.id).in_(linked.scalar_subquery()))
    )
    return {r.id: r for r in rows}


def latest_finding_rows(session: Session, where: ColumnElement[bool]) -> dict[str, list[Any]]:
    """The newest finding per model of each study matching ``where`` (as
    :func:`triage.store.repo.latest_findings`), rows of :data:`FINDING_COLUMNS`."""
    cols = _columns(Finding, FINDING_COLUMNS)
    studies = select(col(Study.study_uid)).where(where)
    rows = session.connection().execute(
        select(*cols)
        .where(col(Finding.study_uid).in_(studies.scalar_subquery()))
        .order_by(col(Finding.created_at).desc(), col(Finding.id).desc())
    )
    newest: dict[str, dict[str, Any]] = {}
    for f in rows:
        newest.setdefault(f.study_uid, {}).setdefault(f.model_name, f)
    return {uid: list(by_model.values()) for uid, by_model in newest.items()}


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
