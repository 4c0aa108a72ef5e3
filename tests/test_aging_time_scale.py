"""The demo's compressed shift counts waiting time ``aging_time_scale`` times faster; the
engine's default counts it as it passes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from triage.completion import CompletionPolicy
from triage.pipeline import Pipeline
from triage.routing import load_routing_rules
from triage.scoring import load_urgency_rules
from triage.store import Database, Study, StudyState

RULES = Path(__file__).resolve().parents[1] / "rules"
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def pipeline(tmp_path: Path, scale: float) -> Pipeline:
    db = Database(f"sqlite:///{tmp_path / 'triage.db'}")
    db.create_all()
    return Pipeline(
        db,
        load_routing_rules(RULES / "routing.yaml"),
        load_urgency_rules(RULES / "urgency.yaml"),
        None,
        notifier=None,  # type: ignore[arg-type]  # nothing is sent here
        completion=CompletionPolicy(lambda m, a: 10.0, 10.0, 2.0),
        retry_seconds=15,
        match_window_hours=24,
        clock=lambda: NOW,
        aging_time_scale=scale,
    )


@pytest.mark.parametrize(
    ("scale", "reason", "aging"),
    [(1.0, None, 0), (60.0, "waiting >= 60 of 30 min: +30 (aging's most)", 30)],
)
def test_one_real_minute_counts_scale_minutes_of_waiting(tmp_path, scale, reason, aging) -> None:
    p = pipeline(tmp_path, scale)
    st = Study(
        study_uid="1.2.3",
        ordered_priority="R",
        patient_class="E",
        state=StudyState.SCORED,
        completed_at=NOW - timedelta(minutes=1),
    )
    result = p._score_one(st, None, [], NOW)
    waiting = [r for r in result.reasons if r.startswith("waiting")]
    assert waiting == ([reason] if reason else [])
    # routine (20) + emergency patient (20) + aging: 60 waited minutes lift it to ASAP
    assert result.score == 40 + aging
    assert result.priority == ("A" if aging else "R")
