"""The scoring function: plain, deterministic, and explained.

Every number that goes into a score is written as a reason, so a radiologist can see why a
study moved. The engine priority is never lower than the ordered priority.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from triage.scoring.rules import UrgencyRules

SYNTHETIC_NOTE = "model trained on synthetic phantoms; not for clinical use"


@dataclass(frozen=True)
class FindingInput:
    model: str
    status: str  # done, not_assessable, error, pending
    probability: float | None = None
    positive: bool = False
    threshold: float | None = None
    model_version: str = ""
    detail: str = ""


@dataclass(frozen=True)
class ScoreResult:
    score: float
    priority: str
    ordered_priority: str
    raised: bool
    reasons: list[str] = field(default_factory=list)


def _fmt(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def score_study(
    rules: UrgencyRules,
    *,
    ordered_priority: str,
    patient_class: str,
    findings: Sequence[FindingInput] = (),
    ai_pending: bool = False,
) -> ScoreResult:
    reasons: list[str] = []
    level = rules.level(ordered_priority)
    given = (ordered_priority or "").strip().upper()
    if given and given in rules.priorities:
        reasons.append(f"Ordered priority {level.code} ({level.label}): +{_fmt(level.base)}")
    elif given:
        reasons.append(
            f"Ordered priority {given!r} unknown, taken as {level.code} ({level.label}): "
            f"+{_fmt(level.base)}"
        )
    else:
        reasons.append(
            f"No ordered priority, taken as {level.code} ({level.label}): +{_fmt(level.base)}"
        )
    score = level.base

    pc = (patient_class or "").strip().upper()
    cls = rules.patient_class.get(pc)
    if cls is not None:
        points = cls.points
        reasons.append(f"Patient class {cls.code} ({cls.label}): +{_fmt(points)}")
    else:
        points = rules.unknown_patient_class_points
        what = f"{pc!r} not in rules" if pc else "unknown (no order yet)"
        reasons.append(f"Patient class {what}: +{_fmt(points)}")
    score += points

    for f in findings:
        weight = rules.findings.get(f.model)
        label = weight.label if weight else f.model
        version = f" {f.model_version}" if f.model_version else ""
        name = f"AI {label} ({f.model}{version})"
        if f.status == "not_assessable":
            reasons.append(
                f"{name}: not assessable ({f.detail or 'no reason given'}); "
                "no AI points, listed at ordered priority or above"
            )
            continue
        if f.status != "done" or f.probability is None:
            reasons.append(f"{name}: no result ({f.status}{': ' + f.detail if f.detail else ''})")
            continue
        thr = f" (threshold {f.threshold:.2f})" if f.threshold is not None else ""
        if not f.positive:
            reasons.append(f"{name}: negative, probability {f.probability:.2f}{thr}: +0")
            continue
        add = weight.points if weight else 0.0
        if weight and weight.scale_by_probability:
            add *= max(0.0, min(1.0, f.probability))
        score += add
        reasons.append(
            f"{name}: POSITIVE, probability {f.probability:.2f}{thr}: +{_fmt(add)} "
            f"[{SYNTHETIC_NOTE}]"
        )
    if ai_pending:
        reasons.append("AI pending: listed at ordered priority until the result arrives")

    score = min(100.0, round(score, 1))
    from_score = next(code for min_score, code in rules.priority_from_score if score >= min_score)
    priority = rules.more_urgent(from_score, level.code)
    raised = rules.level(priority).rank < level.rank
    if raised:
        reasons.append(f"Score {_fmt(score)} -> priority {priority} (raised from {level.code})")
    else:
        reasons.append(f"Score {_fmt(score)} -> priority {priority} (as ordered)")
    return ScoreResult(score, priority, level.code, raised, reasons)
