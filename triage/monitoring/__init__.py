"""Monitoring: how each AI model version does at this site, as plain functions over the store.

- :mod:`triage.monitoring.stats`: Wilson intervals, quantiles, z-test, PSI, KS;
- :mod:`triage.monitoring.figures`: per model, version and day: studies analysed, positive and
  not-assessable rates, time from study complete to RIS ACK, and where the truth is known
  (``Feedback``) sensitivity, specificity, PPV and false alerts per study;
- :mod:`triage.monitoring.drift`: the validation baseline and the drift tests;
- :mod:`triage.monitoring.prometheus`: the same figures in the Prometheus text format.

:func:`report` reads a window of the store once and gives all of it; the web page
(``/monitoring``), ``/metrics`` and the tests call it. The models are trained on synthetic
phantoms: every figure here says so (:data:`SYNTHETIC`). docs/monitoring.md explains each.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from triage.monitoring.drift import Baseline, Drift, drift, load_baselines
from triage.monitoring.figures import (
    SYNTHETIC,
    ModelFigures,
    Outcome,
    Tally,
    figures,
    load_outcomes,
    window,
)
from triage.store import Database

DEFAULT_DAYS = 28


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    today: date
    models: list[ModelFigures]
    drift: list[Drift]

    def as_dict(self) -> dict[str, Any]:
        return {
            "notice": SYNTHETIC,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "models": [m.as_dict() for m in self.models],
            "drift": [d.as_dict() for d in self.drift],
        }


def report(
    db: Database,
    *,
    days: int = DEFAULT_DAYS,
    now: datetime | None = None,
    baselines: dict[tuple[str, str], Baseline] | None = None,
) -> Report:
    """The figures and drift tests of the last ``days`` whole days (UTC) up to ``now``."""
    now = now or datetime.now(UTC)
    since, until = window(days, now)
    with db.session() as s:
        outcomes = load_outcomes(s, since, until)
    groups = figures(outcomes)
    today = now.astimezone(UTC).date() if now.tzinfo else now.date()
    found = drift(groups, load_baselines() if baselines is None else baselines, today)
    return Report(since, until, today, groups, found)


__all__ = [
    "DEFAULT_DAYS",
    "SYNTHETIC",
    "Baseline",
    "Drift",
    "ModelFigures",
    "Outcome",
    "Report",
    "Tally",
    "drift",
    "figures",
    "load_baselines",
    "load_outcomes",
    "report",
]
