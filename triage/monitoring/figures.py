"""The monitoring figures per model, version and day, as plain functions over the store.

One **outcome** per study and model: the study's newest finding of that model (a study
analysed again counts once, as it stands now), on the day (UTC) of that finding. From the
outcomes of a (model, version, day):

- **studies analysed** (every finding: done, not assessable, error), **positive rate**
  (positive / analysed) and **not-assessable rate**, each with a 95 % Wilson interval;
- **time from study complete to RIS ACK**: for each study with an acknowledged message
  (``OutboundMessage`` sent), its first ``sent_at`` after ``Study.completed_at``; median and
  95th percentile (studies without an ACK, e.g. no RIS configured, are left out and counted);
- where the truth is known (``Feedback``: per study and model, a final report's truth before
  a radiologist's, the newest first - as ``triage rules simulate`` takes it): the confusion
  counts of the AI flag (positive, or not: negative, not assessable and error are "no
  flag", so a not-assessable positive is a miss and a not-assessable negative no false
  alert, as the held-out validation counts them), **sensitivity**, **specificity**, **PPV**
  and **false alerts per study** (false positives / studies with a known truth), each with
  its Wilson interval.

These figures describe models trained on synthetic phantoms, running on this site's studies;
they are not a clinical validation.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from triage.monitoring.stats import Proportion, quantile, wilson
from triage.store.models import Feedback, Finding, OutboundMessage, Study, aware

SYNTHETIC = (
    "AI figures describe models trained on synthetic phantoms (not for clinical use), "
    "running on this site's studies; they are not a clinical validation."
)


@dataclass(frozen=True)
class Outcome:
    """One study's newest result of one model, with what is known about it."""

    study_uid: str
    model: str
    version: str
    at: datetime  # when the finding was stored
    status: str  # done, not_assessable, error
    positive: bool
    probability: float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    truth: str = ""  # positive, negative, "" not known
    ack_seconds: float | None = None  # study complete -> first RIS ACK

    @property
    def day(self) -> date:
        return aware(self.at).date()

    @property
    def flagged(self) -> bool:
        return self.status == "done" and self.positive


@dataclass
class Tally:
    """The counts behind the figures of a set of outcomes."""

    analysed: int = 0
    positive: int = 0
    not_assessable: int = 0
    errors: int = 0
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    ack_seconds: list[float] = field(default_factory=list)
    no_ack: int = 0
    probabilities: list[float] = field(default_factory=list)

    def add(self, o: Outcome) -> None:
        self.analysed += 1
        self.positive += o.flagged
        self.not_assessable += o.status == "not_assessable"
        self.errors += o.status not in ("done", "not_assessable")
        if o.status == "done" and o.probability is not None:
            self.probabilities.append(o.probability)
        if o.ack_seconds is None:
            self.no_ack += 1
        else:
            self.ack_seconds.append(o.ack_seconds)
        if o.truth == "positive":
            if o.flagged:
                self.tp += 1
            else:
                self.fn += 1
        elif o.truth == "negative":
            if o.flagged:
                self.fp += 1
            else:
                self.tn += 1

    @property
    def judged(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def positive_rate(self) -> Proportion:
        return wilson(self.positive, self.analysed)

    @property
    def not_assessable_rate(self) -> Proportion:
        return wilson(self.not_assessable, self.analysed)

    @property
    def sensitivity(self) -> Proportion:
        return wilson(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> Proportion:
        return wilson(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> Proportion:
        return wilson(self.tp, self.tp + self.fp)

    @property
    def false_alerts_per_study(self) -> Proportion:
        return wilson(self.fp, self.judged)

    @property
    def ack_median(self) -> float | None:
        return quantile(self.ack_seconds, 0.5)

    @property
    def ack_p95(self) -> float | None:
        return quantile(self.ack_seconds, 0.95)

    def as_dict(self) -> dict[str, Any]:
        return {
            "analysed": self.analysed,
            "positive": self.positive,
            "not_assessable": self.not_assessable,
            "errors": self.errors,
            "positive_rate": self.positive_rate.as_dict(),
            "not_assessable_rate": self.not_assessable_rate.as_dict(),
            "ack_seconds": {
                "median": self.ack_median,
                "p95": self.ack_p95,
                "n": len(self.ack_seconds),
                "without_ack": self.no_ack,
            },
            "confusion": {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn},
            "judged": self.judged,
            "sensitivity": self.sensitivity.as_dict(),
            "specificity": self.specificity.as_dict(),
            "ppv": self.ppv.as_dict(),
            "false_alerts_per_study": self.false_alerts_per_study.as_dict(),
        }


@dataclass
class ModelFigures:
    """One model version's figures: per day (oldest first) and over the whole window."""

    model: str
    version: str
    days: dict[date, Tally] = field(default_factory=dict)
    total: Tally = field(default_factory=Tally)
    outcomes: list[Outcome] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "total": self.total.as_dict(),
            "days": [{"day": d.isoformat(), **t.as_dict()} for d, t in sorted(self.days.items())],
        }


def figures(outcomes: Iterable[Outcome]) -> list[ModelFigures]:
    """Group outcomes by model and version, then by day; sorted by model, version."""
    groups: dict[tuple[str, str], ModelFigures] = {}
    for o in outcomes:
        g = groups.get((o.model, o.version))
        if g is None:
            g = groups[(o.model, o.version)] = ModelFigures(o.model, o.version)
        g.days.setdefault(o.day, Tally()).add(o)
        g.total.add(o)
        g.outcomes.append(o)
    for g in groups.values():
        g.days = dict(sorted(g.days.items()))
    return [groups[k] for k in sorted(groups)]


def truth_by_study(rows: Sequence[Feedback]) -> dict[tuple[str, str], str]:
    """(study, model) -> positive / negative: a final report's truth before a radiologist's,
    the newest of each first."""
    best: dict[tuple[str, str], tuple[int, datetime, int, str]] = {}
    for r in rows:
        if r.truth not in ("positive", "negative"):
            continue
        rank = 1 if r.source == "report" else 0
        key = (r.study_uid, r.model_name)
        candidate = (rank, aware(r.at), r.id or 0, r.truth)
        if key not in best or candidate[:3] > best[key][:3]:
            best[key] = candidate
    return {k: v[3] for k, v in best.items()}


def _inputs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def load_outcomes(session: Session, since: datetime, until: datetime) -> list[Outcome]:
    """The outcomes of studies whose newest finding of a model was stored in [since, until)."""
    found = session.exec(
        select(Finding)
        .where(col(Finding.created_at) >= since, col(Finding.created_at) < until)
        .order_by(col(Finding.created_at), col(Finding.id))
    ).all()
    newest: dict[tuple[str, str], Finding] = {}
    for f in found:
        newest[(f.study_uid, f.model_name)] = f  # ascending: the last one wins
    if not newest:
        return []
    uids = sorted({uid for uid, _ in newest})
    # a newer finding stored after ``until`` replaces it: the window sees the study as it was
    later = {
        (f.study_uid, f.model_name)
        for f in _chunked(
            session,
            uids,
            lambda chunk: select(Finding).where(
                col(Finding.study_uid).in_(chunk), col(Finding.created_at) >= until
            ),
        )
    }
    completed = {
        st.study_uid: st.completed_at
        for st in _chunked(
            session, uids, lambda chunk: select(Study).where(col(Study.study_uid).in_(chunk))
        )
    }
    acks: dict[str, list[datetime]] = defaultdict(list)
    for m in _chunked(
        session,
        uids,
        lambda chunk: select(OutboundMessage).where(
            col(OutboundMessage.study_uid).in_(chunk),
            OutboundMessage.status == "sent",
            col(OutboundMessage.sent_at).is_not(None),
        ),
    ):
        if m.sent_at is not None:
            acks[m.study_uid].append(aware(m.sent_at))
    truth = truth_by_study(
        list(
            _chunked(
                session,
                uids,
                lambda chunk: select(Feedback).where(col(Feedback.study_uid).in_(chunk)),
            )
        )
    )
    out: list[Outcome] = []
    for (uid, model), f in newest.items():
        if (uid, model) in later:
            continue
        done_at = completed.get(uid)
        ack = None
        if done_at is not None:
            after = [t for t in acks.get(uid, []) if t >= aware(done_at)]
            if after:
                ack = (min(after) - aware(done_at)).total_seconds()
        out.append(
            Outcome(
                study_uid=uid,
                model=model,
                version=f.model_version,
                at=aware(f.created_at),
                status=f.status,
                positive=f.positive,
                probability=f.probability,
                inputs=_inputs(f.inputs),
                truth=truth.get((uid, model), ""),
                ack_seconds=ack,
            )
        )
    return out


_CHUNK = 500  # UIDs per IN (...) query (SQLite's parameter limit is far above)


def _chunked(session: Session, uids: Sequence[str], query: Any) -> Iterable[Any]:
    for i in range(0, len(uids), _CHUNK):
        yield from session.exec(query(list(uids[i : i + _CHUNK]))).all()


def window(days: int, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[since, until) covering the last ``days`` whole UTC days up to the end of today."""
    now = aware(now or datetime.now(UTC))
    until = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return until - timedelta(days=days), until
