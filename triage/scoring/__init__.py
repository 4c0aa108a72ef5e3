"""Scoring: a study's urgency score, engine priority and the reasons, from rules/urgency.yaml."""

from triage.scoring.rules import UrgencyRules, load_urgency_rules
from triage.scoring.score import FindingInput, ScoreResult, score_study

__all__ = ["FindingInput", "ScoreResult", "UrgencyRules", "load_urgency_rules", "score_study"]
