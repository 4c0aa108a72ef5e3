"""What-if for managers: the stored history replayed under the current and proposed rules.

:func:`simulate` is a plain function (history in, figures out; no I/O): the command
``triage rules simulate`` and the web page call it with the same history and get the same
numbers. :func:`load_history` reads that history from the engine's database, read-only.

What is compared, for each rules file (``docs/rules.md``, "What-if"):

- a study's **class**: the engine priority the rules give it once complete, with its order and
  every AI result stored for it (no waiting); ``changed`` lists every study whose class differs;
- **alerts**: studies whose class is above their ordered priority (the engine raises them and
  tells the RIS at once); **false alerts**: alerts whose truth, from a final report or else a
  radiologist's feedback, is negative;
- the **wait** from completion to the start of reading, from a discrete-event model of the
  reading queue (:mod:`triage.scoring.reading_queue`): ``readers`` identical readers, always on
  duty, each taking the most urgent waiting study (the worklist order: priority, score,
  completion time, accession number, Study UID) as they become free. A study is re-scored at
  each decision with the simulated clock, so aging counts, and an AI result counts from the
  time it was stored. Each read takes the minutes of the study's first key found in
  ``read_minutes`` (:func:`read_keys`), else ``default`` (10 minutes unless given).
  **critical** studies are the positive ones (truth positive, or with no truth an AI result
  positive); **routine** ones are the others ordered routine (R, or no priority). Both groups
  are the same studies under both rules files.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from triage.errors import TriageError
from triage.scoring.reading_queue import QueueItem, run_reading_queue
from triage.scoring.rules import ORDER_FIELDS, STUDY_FIELDS, UrgencyRules
from triage.scoring.score import FindingInput, ScoreResult, order_key, score_study

DEFAULT_READ_MINUTES = 10.0
_CHUNK = 500


@dataclass(frozen=True)
class TimedFinding:
    """An AI result and the time it was stored (it counts from then on)."""

    at: datetime
    finding: FindingInput


@dataclass(frozen=True)
class HistoryStudy:
    """One complete study of the history, with what the rules read of it."""

    study_uid: str
    accession_number: str
    completed_at: datetime  # aware (UTC): it joins the reading queue then
    ordered_priority: str = ""
    patient_class: str = ""
    location: str = ""  # the order's PV1-3
    fields: Mapping[str, str] = field(default_factory=dict)  # "order.x" / "study.x" -> text
    findings: tuple[TimedFinding, ...] = ()
    routed_model: str = ""
    truth: str = ""  # positive, negative, "" (not known)

    def findings_at(self, when: datetime | None) -> list[FindingInput]:
        """The newest AI result of each model stored by ``when`` (None: all of them)."""
        newest: dict[str, TimedFinding] = {}
        for tf in self.findings:
            if when is not None and tf.at > when:
                continue
            old = newest.get(tf.finding.model)
            if old is None or tf.at >= old.at:
                newest[tf.finding.model] = tf
        return [newest[m].finding for m in sorted(newest)]

    @property
    def ai_positive(self) -> bool:
        return any(f.status == "done" and f.positive for f in self.findings_at(None))

    @property
    def critical(self) -> bool:
        """Positive: the truth says so, or, with no truth known, an AI result does."""
        return self.truth == "positive" or (not self.truth and self.ai_positive)

    @property
    def routine(self) -> bool:
        return not self.critical and self.ordered_priority.strip().upper() in ("", "R")


@dataclass(frozen=True)
class History:
    """The studies completed in a window ``since``..``until`` (aware datetimes)."""

    studies: tuple[HistoryStudy, ...]
    since: datetime
    until: datetime
    incomplete: int = 0  # studies received in the window that never completed (not queued)

    @property
    def days(self) -> float:
        """The window's length in days (at least one: figures per day over a short history
        would be blown up)."""
        return max(1.0, (self.until - self.since).total_seconds() / 86400.0)


def read_keys(study: HistoryStudy) -> tuple[str, ...]:
    """The ``read_minutes`` keys of a study, most specific first (lower case): its order's
    procedure code (``ctheadwo``), the model routing chose (``ich``), modality and body part
    (``ct-head``), the modality (``ct``); then ``default``."""
    f = study.fields
    modality = (f.get("study.modality") or f.get("order.modality") or "").strip().lower()
    body = (f.get("study.body_part") or "").strip().lower().replace(" ", "-")
    keys = [
        (f.get("order.procedure_code") or "").strip().lower(),
        study.routed_model.strip().lower(),
        f"{modality}-{body}" if modality and body else "",
        modality,
        "default",
    ]
    out: list[str] = []
    for k in keys:
        if k and k not in out:
            out.append(k)
    return tuple(out)


def parse_read_minutes(text: str) -> dict[str, float]:
    """``ct-head=6,pe=8,default=12`` -> {key: minutes}; ValueError naming what is wrong."""
    out: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise ValueError(f"{part.strip()!r}: expected KEY=MINUTES")
        try:
            minutes = float(value)
        except ValueError:
            raise ValueError(f"{key}: {value.strip()!r} is not a number of minutes") from None
        if not math.isfinite(minutes) or minutes <= 0:
            raise ValueError(f"{key}: read minutes must be above 0")
        out[key] = minutes
    return out


# -- the figures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Changed:
    study_uid: str
    accession_number: str
    before: str
    after: str
    before_score: float
    after_score: float


@dataclass
class RulesFigures:
    """What one rules file gives over the history."""

    path: str
    version: str
    days: float
    classes: list[str]  # per study (history order): priority once complete
    scores: list[float]
    alerts: int
    alerts_with_truth: int
    false_alerts: int
    raised_while_waiting: int  # not raised once complete, raised (aging) by the time read
    waits: dict[str, list[float]]  # critical / routine / all -> minutes, history order

    def per_day(self, n: int) -> float:
        return n / self.days

    def to_json(self) -> dict[str, Any]:
        return {
            "rules": self.path,
            "version": self.version,
            "alerts": self.alerts,
            "alerts_per_day": round(self.per_day(self.alerts), 2),
            "alerts_with_truth": self.alerts_with_truth,
            "false_alerts": self.false_alerts,
            "false_alerts_per_day": round(self.per_day(self.false_alerts), 2),
            "raised_while_waiting": self.raised_while_waiting,
            "wait_minutes": {group: summary(w) for group, w in self.waits.items()},
        }


def summary(waits: Sequence[float]) -> dict[str, Any]:
    """count, mean, median, 90th percentile (nearest rank) and max, in minutes (0.1)."""
    if not waits:
        return {"count": 0, "mean": None, "median": None, "p90": None, "max": None}
    s = sorted(waits)
    n = len(s)
    median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return {
        "count": n,
        "mean": round(sum(s) / n, 1),
        "median": round(median, 1),
        "p90": round(s[max(0, math.ceil(0.9 * n) - 1)], 1),
        "max": round(s[-1], 1),
    }


@dataclass
class SimulationResult:
    since: datetime
    until: datetime
    days: float
    studies: int
    incomplete: int
    readers: int
    read_minutes: dict[str, float]  # as given, with "default"
    unused_read_keys: list[str]  # keys given that no study used
    critical: int
    routine: int
    before: RulesFigures
    after: RulesFigures
    changed: list[Changed]

    def to_json(self) -> dict[str, Any]:
        """The figures as one JSON-ready object (what ``--json`` prints)."""
        return {
            "window": {
                "since": self.since.isoformat(),
                "until": self.until.isoformat(),
                "days": round(self.days, 3),
            },
            "studies": self.studies,
            "incomplete": self.incomplete,
            "critical": self.critical,
            "routine": self.routine,
            "readers": self.readers,
            "read_minutes": self.read_minutes,
            "unused_read_keys": self.unused_read_keys,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "changed": [
                {
                    "accession_number": c.accession_number,
                    "study_uid": c.study_uid,
                    "before": c.before,
                    "after": c.after,
                    "before_score": c.before_score,
                    "after_score": c.after_score,
                }
                for c in self.changed
            ],
        }


def score_at(
    rules: UrgencyRules, st: HistoryStudy, waited: float, when: datetime | None
) -> ScoreResult:
    """The score of a history study after ``waited`` minutes, with the AI results stored by
    ``when`` (None: all of them)."""
    findings = st.findings_at(when)
    routed = st.routed_model
    return score_study(
        rules,
        ordered_priority=st.ordered_priority,
        patient_class=st.patient_class,
        findings=findings,
        ai_pending=bool(routed) and not any(f.model == routed for f in findings),
        location=st.location,
        waiting_minutes=waited,
        fields=st.fields,
    )


def _ms(delta: timedelta) -> int:
    return round(delta.total_seconds() * 1000)


def _run(
    history: History, rules: UrgencyRules, readers: int, read_ms: Sequence[int]
) -> RulesFigures:
    studies = history.studies
    n = len(studies)
    once = [score_at(rules, st, 0.0, None) for st in studies]
    origin = min((st.completed_at for st in studies), default=history.since)
    arrival = [_ms(st.completed_at - origin) for st in studies]
    found = [sorted(_ms(tf.at - origin) for tf in st.findings) for st in studies]
    aging = rules.aging
    cap_ms = round(aging.stop_after_hours * 3_600_000)
    read_priority = [""] * n

    def key_at(i: int, now: int) -> tuple[tuple[Any, ...], int | None]:
        st = studies[i]
        waited_ms = min(now - arrival[i], cap_ms)  # the engine stops aging a study then
        result = score_at(rules, st, waited_ms / 60000.0, origin + timedelta(milliseconds=now))
        read_priority[i] = result.priority
        change = next((t for t in found[i] if t > now), None)
        target = result.target_minutes
        if target is not None and aging.points_per_minute > 0 and waited_ms < cap_ms:
            waited = waited_ms / 60000.0
            late = math.floor(waited - target) if waited > target else 0
            if late * aging.points_per_minute < aging.max_points:
                boundary = arrival[i] + math.ceil((target + late + 1) * 60000)
                if boundary - arrival[i] <= cap_ms:
                    change = boundary if change is None else min(change, boundary)
        key = order_key(
            rules, result.priority, result.score, st.completed_at, st.accession_number,
            st.study_uid,
        )  # fmt: skip
        return key, change

    items = [QueueItem(arrival[i], read_ms[i]) for i in range(n)]
    starts = run_reading_queue(items, readers, key_at) if n else []
    waits: dict[str, list[float]] = {"critical": [], "routine": [], "all": []}
    alerts = with_truth = false = while_waiting = 0
    for i, st in enumerate(studies):
        wait = (starts[i] - arrival[i]) / 60000.0
        waits["all"].append(wait)
        if st.critical:
            waits["critical"].append(wait)
        elif st.routine:
            waits["routine"].append(wait)
        if once[i].raised:
            alerts += 1
            if st.truth:
                with_truth += 1
                false += st.truth == "negative"
        elif read_priority[i] != once[i].ordered_priority:
            while_waiting += 1
    return RulesFigures(
        rules.path,
        rules.version_id,
        history.days,
        [r.priority for r in once],
        [r.score for r in once],
        alerts,
        with_truth,
        false,
        while_waiting,
        waits,
    )


def simulate(
    history: History,
    current_rules: UrgencyRules,
    proposed_rules: UrgencyRules,
    readers: int,
    read_minutes: Mapping[str, float],
) -> SimulationResult:
    """Replay ``history`` under both rules files; see the module's description."""
    if readers < 1:
        raise ValueError("at least one reader is needed")
    minutes = {k.strip().lower(): float(v) for k, v in read_minutes.items()}
    minutes.setdefault("default", DEFAULT_READ_MINUTES)
    if any(not math.isfinite(v) or v <= 0 for v in minutes.values()):
        raise ValueError("read minutes must be above 0")
    used: set[str] = set()
    read_ms: list[int] = []
    for st in history.studies:
        key = next(k for k in read_keys(st) if k in minutes)
        used.add(key)
        read_ms.append(max(1, round(minutes[key] * 60000)))
    before = _run(history, current_rules, readers, read_ms)
    after = _run(history, proposed_rules, readers, read_ms)
    changed = [
        Changed(st.study_uid, st.accession_number, b, a, bs, as_)
        for st, b, a, bs, as_ in zip(
            history.studies, before.classes, after.classes, before.scores, after.scores,
            strict=True,
        )
        if a != b
    ]  # fmt: skip
    return SimulationResult(
        since=history.since,
        until=history.until,
        days=history.days,
        studies=len(history.studies),
        incomplete=history.incomplete,
        readers=readers,
        read_minutes=minutes,
        unused_read_keys=sorted(k for k in minutes if k not in used and k != "default"),
        critical=sum(st.critical for st in history.studies),
        routine=sum(st.routine for st in history.studies),
        before=before,
        after=after,
        changed=changed,
    )


# -- the history, read-only -------------------------------------------------------------------


def _aware(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _read_only_engine(url: str) -> Any:
    from sqlalchemy import create_engine

    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise TriageError(
                f"no engine database at {path} (set --data-dir, TRIAGE_DATA_DIR or --config "
                "as for serve)"
            )
        uri = path.resolve().as_uri() + "?mode=ro"

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
            return conn

        return create_engine("sqlite://", creator=connect)
    return create_engine(url)


@contextmanager
def _reading(url: str) -> Iterator[Any]:
    """A connection in a read-only transaction (SQLite: a ``mode=ro`` connection with
    ``query_only``; PostgreSQL: ``SET TRANSACTION READ ONLY``), rolled back at the end."""
    from triage.store.db import database_errors

    engine = _read_only_engine(url)
    try:
        with database_errors(f"cannot read the database {url!r}"), engine.connect() as conn:
            conn.begin()
            try:
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                yield conn
            finally:
                conn.rollback()
    finally:
        engine.dispose()


def _rows(
    conn: Any, model: Any, columns: Iterable[str], where: Any = None, *, key: str = "",
    keys: Sequence[Any] = (),
) -> list[dict[str, Any]]:  # fmt: skip
    """Rows of ``model``'s table as dicts, with only the columns the database has (a database
    from an older engine lacks newer ones: they read as empty), optionally ``key IN keys``."""
    from sqlalchemy import inspect, select

    table = model.__table__
    present = {c["name"] for c in inspect(conn).get_columns(table.name)}
    wanted = [c for c in columns if c in present]
    query = select(*(table.c[c] for c in wanted))
    if where is not None:
        query = query.where(where)
    if not key:
        return [dict(r._mapping) for r in conn.execute(query)]
    out: list[dict[str, Any]] = []
    values = list(keys)
    for i in range(0, len(values), _CHUNK):
        chunk = values[i : i + _CHUNK]
        out.extend(dict(r._mapping) for r in conn.execute(query.where(table.c[key].in_(chunk))))
    return out


def _truth(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Study -> positive / negative from feedback: per model, a final report's truth before a
    radiologist's, the newest first; a study is positive when any model's truth is."""
    best: dict[tuple[str, str], tuple[tuple[int, datetime, int], str]] = {}
    for r in rows:
        if r.get("truth") not in ("positive", "negative"):
            continue
        rank = (int(r.get("source") == "report"), _aware(r["at"]), int(r["id"]))
        k = (r["study_uid"], r.get("model_name") or "")
        if k not in best or rank > best[k][0]:
            best[k] = (rank, r["truth"])
    out: dict[str, str] = {}
    for (uid, _), (_, truth) in sorted(best.items()):
        if out.get(uid) != "positive":
            out[uid] = truth
    return out


def load_history(url: str, since: datetime, until: datetime) -> History:
    """The studies completed from ``since`` to ``until`` in the database at ``url``, with their
    orders, AI results and truth, read in one read-only transaction (SQLite: opened
    ``mode=ro``; PostgreSQL: ``SET TRANSACTION READ ONLY``). Nothing is written."""
    from sqlalchemy import and_, func, select

    from triage.store.models import Feedback, Finding, Order, Study

    since, until = _aware(since), _aware(until)
    lo, hi = since, until
    st = Study.__table__  # type: ignore[attr-defined]
    study_cols = (*STUDY_FIELDS, "ordered_priority", "patient_class", "order_id", "completed_at")
    with _reading(url) as conn:
        studies = _rows(
            conn, Study, study_cols, and_(st.c.completed_at >= lo, st.c.completed_at <= hi)
        )
        incomplete = conn.execute(
            select(func.count())
            .select_from(st)
            .where(
                st.c.completed_at.is_(None),
                st.c.first_received_at >= lo,
                st.c.first_received_at <= hi,
            )
        ).scalar_one()
        first = conn.execute(select(func.min(st.c.completed_at))).scalar_one()
        order_ids = sorted({s["order_id"] for s in studies if s.get("order_id") is not None})
        orders = {
            o["id"]: o for o in _rows(conn, Order, ("id", *ORDER_FIELDS), key="id", keys=order_ids)
        }
        uids = sorted(s["study_uid"] for s in studies)
        finding_cols = (
            "study_uid", "model_name", "model_version", "status", "probability", "positive",
            "threshold", "detail", "created_at",
        )  # fmt: skip
        findings: dict[str, list[TimedFinding]] = {}
        for f in _rows(conn, Finding, finding_cols, key="study_uid", keys=uids):
            if f["created_at"] is not None and _aware(f["created_at"]) > until:
                continue
            findings.setdefault(f["study_uid"], []).append(
                TimedFinding(
                    _aware(f["created_at"]) if f["created_at"] is not None else since,
                    FindingInput(
                        f["model_name"],
                        f.get("status") or "done",
                        f.get("probability"),
                        bool(f.get("positive")),
                        f.get("threshold"),
                        f.get("model_version") or "",
                        f.get("detail") or "",
                    ),
                )
            )
        feedback_cols = ("id", "study_uid", "model_name", "source", "truth", "at")
        truth = _truth(_rows(conn, Feedback, feedback_cols, key="study_uid", keys=uids))
    out: list[HistoryStudy] = []
    for s in sorted(studies, key=lambda s: (_aware(s["completed_at"]), s["study_uid"])):
        order = orders.get(s.get("order_id")) if s.get("order_id") is not None else None
        fields = {f"study.{n}": str(s.get(n) or "") for n in STUDY_FIELDS}
        fields.update({f"order.{n}": str((order or {}).get(n) or "") for n in ORDER_FIELDS})
        out.append(
            HistoryStudy(
                study_uid=s["study_uid"],
                accession_number=s.get("accession_number") or "",
                completed_at=_aware(s["completed_at"]),
                ordered_priority=s.get("ordered_priority") or "",
                patient_class=s.get("patient_class") or "",
                location=(order or {}).get("ordering_location") or "",
                fields=fields,
                findings=tuple(findings.get(s["study_uid"], ())),
                routed_model=s.get("routed_model") or "",
                truth=truth.get(s["study_uid"], ""),
            )
        )
    start = max(since, _aware(first)) if first is not None else since
    return History(tuple(out), min(start, until), until, int(incomplete))
