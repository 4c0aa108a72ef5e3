"""Study completion: a study is complete when no instance has arrived for a while."""

from __future__ import annotations

from datetime import datetime, timedelta

from triage.store import Database, StudyState
from triage.store.models import utcnow
from triage.store.repo import stable_studies


def complete_stable_studies(
    db: Database, stable_seconds: float, now: datetime | None = None
) -> list[str]:
    """Mark RECEIVING studies idle for ``stable_seconds`` as COMPLETE; return their UIDs.

    Idempotent: a study is returned once per quiet period. A late instance puts it back to
    RECEIVING (see ``record_instance``), so it completes, and is processed, again.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=stable_seconds)
    done: list[str] = []
    with db.session() as s:
        for study in stable_studies(s, cutoff):
            study.state = StudyState.COMPLETE
            study.completed_at = now
            s.add(study)
            done.append(study.study_uid)
    return done
