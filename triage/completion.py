"""Study completion: when a study has all its images and may be analysed.

DICOM has no "study finished" message, so completion is inferred, and made idempotent:

- **Quiet period**: no instance for ``stable_seconds_for(modality, calling AE)`` (per-AE, then
  per-modality overrides of ``study_stable_seconds``).
- **Expected series**: once every series the matching routing rule lists in
  ``expected_series`` is present, a shorter quiet period (``expected_series_quiet_seconds``)
  is enough.
- **From the RIS**: an order with ORC-5 = CM (exam completed) completes its studies that have
  images at once (see :meth:`triage.pipeline.Pipeline.on_order`).

A late instance puts a study back to RECEIVING (``record_instance``), so it completes again;
the pipeline re-analyses it only when its set of instances changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from triage.routing import RoutingRules, route
from triage.routing.gather import facts_for_study
from triage.store import Database, Instance, Study, StudyState
from triage.store.models import utcnow
from triage.store.repo import link_order


@dataclass(frozen=True)
class CompletionPolicy:
    stable_seconds_for: Callable[[str, str], float]  # (modality, calling AE) -> seconds
    shortest_seconds: float  # the shortest quiet period any study can have
    expected_series_quiet_seconds: float
    routing: RoutingRules | None = None


def complete_stable_studies(
    db: Database,
    policy: CompletionPolicy,
    *,
    match_window_hours: float,
    now: datetime | None = None,
) -> list[tuple[str, str]]:
    """Mark quiet RECEIVING studies COMPLETE; return (study UID, why) for each.

    ``match_window_hours`` (the ``order_match_window_hours`` setting) is used to link a study
    to its order when the routing rule, hence the expected series, depends on the order."""
    now = now or utcnow()
    shortest = min(policy.shortest_seconds, policy.expected_series_quiet_seconds)
    done: list[tuple[str, str]] = []
    with db.session() as s:
        candidates = s.exec(
            select(Study).where(
                Study.state == StudyState.RECEIVING,
                col(Study.last_received_at) < now - timedelta(seconds=shortest),
            )
        ).all()
        for study in candidates:
            quiet = (now - study.last_received_at).total_seconds()
            needed = policy.stable_seconds_for(study.modality, study.calling_ae)
            why = ""
            if quiet >= needed:
                why = f"no new image for {needed:g} s"
            elif quiet >= policy.expected_series_quiet_seconds and _expected_series_present(
                s, study, policy.routing, match_window_hours
            ):
                why = "every expected series is present"
            if why:
                study.state = StudyState.COMPLETE
                study.completed_at = now
                s.add(study)
                done.append((study.study_uid, why))
    return done


def _expected_series_present(
    session: Session, study: Study, routing: RoutingRules | None, match_window_hours: float
) -> bool:
    if routing is None or not any(r.expected_series for r in routing.rules):
        return False
    order = link_order(session, study, match_window_hours)
    rule = route(routing, facts_for_study(session, study, order))
    if rule is None or not rule.expected_series:
        return False
    descriptions = session.exec(
        select(Instance.series_description).where(Instance.study_uid == study.study_uid).distinct()
    ).all()
    return all(any(p.search(d or "") for d in descriptions) for p in rule.expected_series)
