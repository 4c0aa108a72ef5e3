"""Study completion: when a study has all its images and may be analysed.

DICOM has no "study finished" message, so completion is inferred, and made idempotent:

- **Quiet period**: no instance for ``stable_seconds_for(modality, calling AE)`` (per-AE, then
  per-modality overrides of ``study_stable_seconds``).
- **Expected series**: once every series the matching routing rule lists in
  ``expected_series`` is present, a shorter quiet period (``expected_series_quiet_seconds``)
  is enough. Completion does not route: it asks the ``expected_series_present`` callable it
  is given (the pipeline's, which routes the study once and keeps the rule for processing).
- **From the RIS**: an order with ORC-5 = CM (exam completed) completes its studies that have
  images at once (see :meth:`triage.pipeline.Pipeline.on_order`).

A late instance puts a study back to RECEIVING (``record_instance``), so it completes again;
the pipeline re-analyses it only when its set of instances changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, select

from triage.ports import ExpectedSeriesPresent
from triage.store import Database, Study, StudyState
from triage.store.models import utcnow


@dataclass(frozen=True)
class CompletionPolicy:
    stable_seconds_for: Callable[[str, str], float]  # (modality, calling AE) -> seconds
    shortest_seconds: float  # the shortest quiet period any study can have
    expected_series_quiet_seconds: float


def complete_stable_studies(
    db: Database,
    policy: CompletionPolicy,
    *,
    expected_series_present: ExpectedSeriesPresent | None = None,
    now: datetime | None = None,
) -> list[tuple[str, str]]:
    """Mark quiet RECEIVING studies COMPLETE; return (study UID, why) for each.

    ``expected_series_present(session, study)``: whether every series the study's routing
    rule expects is present (None: no rule expects any); asked only for a study quiet for
    ``expected_series_quiet_seconds`` but not yet for its whole quiet period."""
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
            elif (
                expected_series_present is not None
                and quiet >= policy.expected_series_quiet_seconds
                and expected_series_present(s, study)
            ):
                why = "every expected series is present"
            if why:
                study.state = StudyState.COMPLETE
                study.completed_at = now
                s.add(study)
                done.append((study.study_uid, why))
    return done
