"""What is recorded about scoring: every engine priority change and every rules version.

The pipeline calls these in the transaction that changes the study, so a change and its
record are committed together.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

from sqlmodel import Session, col, select

from triage.scoring.rules import UrgencyRules
from triage.store.models import PriorityChange, RulesInForce, RulesVersion


class Cause(StrEnum):
    """What made the engine score a study again."""

    COMPLETED = "completed"  # the study was processed (routing, no new AI result)
    FINDING = "finding"  # a new AI result (cause_ref: the finding id)
    ORDER = "order"  # its order arrived or changed (cause_ref: the order id)
    AGING = "aging"  # the scheduled re-score: time passed
    RULES = "rules"  # a new urgency rules version (cause_ref: its id)


def record_change(
    session: Session,
    *,
    study_uid: str,
    at: datetime,
    from_priority: str,
    to_priority: str,
    from_score: float | None,
    to_score: float,
    cause: Cause,
    cause_ref: str,
    rules_version: str,
    reasons: Sequence[str],
    announced: str,
) -> PriorityChange:
    row = PriorityChange(
        study_uid=study_uid,
        at=at,
        from_priority=from_priority,
        to_priority=to_priority,
        from_score=from_score,
        to_score=to_score,
        cause=str(cause),
        cause_ref=cause_ref,
        rules_version=rules_version,
        reasons=json.dumps(list(reasons)),
        announced=announced,
    )
    session.add(row)
    return row


def record_in_force(session: Session, version_id: str, at: datetime) -> bool:
    """Record that ``version_id`` is in force from ``at``, unless it already is the last one
    recorded (a restart on the same rules); True when recorded."""
    last = session.exec(
        select(RulesInForce.version_id).order_by(col(RulesInForce.id).desc()).limit(1)
    ).first()
    if last == version_id:
        return False
    session.add(RulesInForce(version_id=version_id, at=at))
    return True


def in_force_since(session: Session, version_id: str) -> datetime | None:
    """When ``version_id`` last came into force (None: never recorded)."""
    return session.exec(
        select(RulesInForce.at)
        .where(RulesInForce.version_id == version_id)
        .order_by(col(RulesInForce.id).desc())
        .limit(1)
    ).first()


def remember_version(session: Session, rules: UrgencyRules, at: datetime) -> bool:
    """Store a rules version's text under its id; False when it was known already."""
    known = session.exec(
        select(RulesVersion.id).where(RulesVersion.version_id == rules.version_id)
    ).first()
    if known is not None:
        return False
    session.add(
        RulesVersion(
            version_id=rules.version_id, path=rules.path, text=rules.text, first_loaded_at=at
        )
    )
    return True
