"""Scoring: a study's urgency score, engine priority and the reasons, from rules/urgency.yaml.

:func:`score_study` is a plain function (no I/O); :class:`UrgencyRulesWatcher` keeps the rules
in force current while the engine runs; :mod:`triage.scoring.history` records what changed.
"""

from triage.scoring.history import Cause
from triage.scoring.reload import UrgencyRulesWatcher
from triage.scoring.rules import UrgencyRules, load_urgency_rules
from triage.scoring.score import (
    FindingInput,
    ScoreResult,
    ScoreTerm,
    order_key,
    reading_target,
    score_study,
)

__all__ = [
    "Cause",
    "FindingInput",
    "ScoreResult",
    "ScoreTerm",
    "UrgencyRules",
    "UrgencyRulesWatcher",
    "load_urgency_rules",
    "order_key",
    "reading_target",
    "score_study",
]
