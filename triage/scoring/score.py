"""The scoring function: plain (no I/O), deterministic, and explained.

Every number that goes into a score is written as a reason a radiologist reads at a glance
("ICH 0.97 >= 0.80: +58", "emergency patient: +20", "waiting 42 of 30 min: +12"), and the last
reason is the outcome ("Score 97 -> priority S (raised from R)"). A reason's text changes only
when its points do: a wait past aging's cap reads "waiting >= 60 of 30 min: +30 (aging's most)",
one before its target "waiting > 15 of 30 min: +0" (the worklist shows the wait itself).

Invariants (tested as properties in tests/scoring/test_properties.py):

- the engine priority is never lower than the ordered priority;
- more evidence never lowers a score or a priority: a higher probability, a positive instead of
  a negative result, one more matching rule, a longer wait;
- a not-assessable or pending AI result never lowers anything (it adds nothing);
- :func:`order_key` orders studies deterministically: priority, score, completion time,
  accession number, Study UID.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from triage.scoring.rules import Aging, PriorityLevel, UrgencyRules

SYNTHETIC_NOTE = "AI models trained on synthetic phantoms; not for clinical use"


@dataclass(frozen=True)
class FindingInput:
    model: str
    status: str  # done, not_assessable, error, pending
    probability: float | None = None  # calibrated
    positive: bool = False  # at the model's operating point
    threshold: float | None = None  # the operating point
    model_version: str = ""
    detail: str = ""


class ScoreTerm(NamedTuple):
    """One contribution to a score, as the worklist API shows it."""

    kind: str  # ordered, class, location, finding, aging, rule
    label: str
    points: float


@dataclass(frozen=True)
class ScoreResult:
    score: float
    priority: str
    ordered_priority: str
    raised: bool
    reasons: list[str] = field(default_factory=list)
    terms: tuple[ScoreTerm, ...] = ()
    waiting_minutes: float | None = None
    target_minutes: float | None = None
    rules_version: str = ""


def _fmt(x: float) -> str:
    return "%.0f" % x if x == int(x) else "%.1f" % x  # noqa: UP031 - the fastest here


def reading_target(rules: UrgencyRules, patient_class: str, location: str) -> float | None:
    """How long (minutes from completion) a study may wait to be read: its patient class's
    ``reading_target_minutes`` (the unknown class's when not listed), replaced by the first
    matching location's when that is shorter; None: no target (no aging)."""
    cls = rules.patient_class.get((patient_class or "").strip().upper(), rules.unknown_class)
    target = cls.target_minutes
    if location:
        for loc in rules.locations:
            if loc.pattern.search(location):
                if loc.target_minutes is not None:
                    target = (
                        loc.target_minutes if target is None else min(target, loc.target_minutes)
                    )
                break
    return target


def score_study(
    rules: UrgencyRules,
    *,
    ordered_priority: str,
    patient_class: str,
    findings: Sequence[FindingInput] = (),
    ai_pending: bool = False,
    location: str = "",
    waiting_minutes: float | None = None,
    fields: Mapping[str, str] | None = None,
) -> ScoreResult:
    """Score one study.

    ``location``: the order's PV1-3 (assigned patient location); ``waiting_minutes``: time since
    the study completed (None: not known, no aging); ``fields``: the order and study fields the
    rules test (``order.procedure_text`` -> value; a missing one is empty).
    """
    fixed = fixed_part(
        rules, ordered_priority, patient_class, findings, ai_pending, location, fields
    )
    return complete(rules, fixed, waiting_minutes)


class FixedPart(NamedTuple):
    """What a score owes to everything but the wait: :func:`score_study` is
    :func:`complete` of it (:mod:`triage.scoring.memo` keeps it between re-scores)."""

    level: PriorityLevel
    score: float  # before aging and the matched rules
    target: float | None  # the reading target, minutes (None: no aging)
    # lists, shared by every result completed from this part: never changed once made
    reasons: list[str]  # before aging's
    terms: list[ScoreTerm]
    rule_reasons: list[str]  # the matched rules', after aging's
    rule_terms: list[ScoreTerm]


_new_part = tuple.__new__


def fixed_part(
    rules: UrgencyRules,
    ordered_priority: str,
    patient_class: str,
    findings: Sequence[FindingInput] = (),
    ai_pending: bool = False,
    location: str = "",
    fields: Mapping[str, str] | None = None,
) -> FixedPart:
    """The terms of a score that do not depend on the wait (see :func:`score_study`)."""
    reasons: list[str] = []
    terms: list[ScoreTerm] = []
    level = rules.level(ordered_priority)
    given = (ordered_priority or "").strip().upper()
    base = level.base
    if given and given in rules.priorities:
        reasons.append(f"Ordered priority {level.code} ({level.label}): +{_fmt(base)}")
    elif given:
        reasons.append(
            f"Ordered priority {given!r} unknown, taken as {level.code} ({level.label}): "
            f"+{_fmt(base)}"
        )
    else:
        reasons.append(f"No ordered priority, taken as {level.code} ({level.label}): +{_fmt(base)}")
    terms.append(ScoreTerm("ordered", level.code, base))
    score = base

    pc = (patient_class or "").strip().upper()
    cls = rules.patient_class.get(pc)
    if cls is not None:
        who = cls.label if cls.label.lower().endswith("patient") else f"{cls.label} patient"
        reasons.append(f"{who} ({cls.code}): +{_fmt(cls.points)}")
        terms.append(ScoreTerm("class", cls.code, cls.points))
    else:
        cls = rules.unknown_class
        what = f"{pc!r} not in rules" if pc else "unknown (no order yet)"
        reasons.append(f"Patient class {what}: +{_fmt(cls.points)}")
        terms.append(ScoreTerm("class", pc, cls.points))
    score += cls.points
    target = reading_target(rules, patient_class, location)

    if location:
        for loc in rules.locations:
            if loc.pattern.search(location):
                reasons.append(f"{loc.label} ({location}): +{_fmt(loc.points)}")
                terms.append(ScoreTerm("location", loc.label, loc.points))
                score += loc.points
                break

    positives = False
    for f in findings:
        weight = rules.findings.get(f.model)
        name = f.model.upper()
        if f.status == "not_assessable":
            reasons.append(
                f"{name} not assessable ({f.detail or 'no reason given'}): +0, "
                "listed at ordered priority or above"
            )
            continue
        if f.status != "done" or f.probability is None:
            detail = f": {f.detail}" if f.detail else ""
            reasons.append(f"{name} no result ({f.status}{detail}): +0")
            continue
        p = max(0.0, min(1.0, f.probability))
        # + 0.0: a threshold of -0.0 reads as 0.00, like 0.0 (equal inputs, equal reasons)
        thr = f.threshold + 0.0 if f.threshold is not None else None
        if not f.positive:
            cmp = f" < {thr:.2f}" if thr is not None else " negative"
            reasons.append(f"{name} {p:.2f}{cmp}: +0")
            continue
        add = weight.points if weight else 0.0
        if weight and weight.scale_by_probability:
            add *= p
        add = round(add, 1)
        score += add
        positives = True
        cmp = f" >= {thr:.2f}" if thr is not None else " positive"
        version = f", {f.model} {f.model_version}" if f.model_version else ""
        reasons.append(f"{name} {p:.2f}{cmp}: +{_fmt(add)} (POSITIVE{version})")
        terms.append(ScoreTerm("finding", f.model, add))
    if positives:
        reasons.append(SYNTHETIC_NOTE)
    if ai_pending:
        reasons.append("AI pending: listed at ordered priority until the result arrives")

    rule_reasons: list[str] = []
    rule_terms: list[ScoreTerm] = []
    if rules.rules:
        values = fields or {}
        for rule in rules.rules:
            for c in rule.conditions:
                if not c.holds(values.get(c.field) or ""):
                    break
            else:
                rule_reasons.append(f"{rule.name}: +{_fmt(rule.points)}")
                rule_terms.append(ScoreTerm("rule", rule.name, rule.points))
    # tuple.__new__ directly: a NamedTuple's own __new__ is a Python call (~0.4 us here)
    return _new_part(FixedPart, (level, score, target, reasons, terms, rule_reasons, rule_terms))


def aging_term(aging: Aging, target: float, waiting_minutes: float) -> tuple[float, str | None]:
    """Aging's points for a wait against its reading target, and its reason (None: none).
    A score depends on the wait through these two only (and the term's label)."""
    waited = max(0.0, waiting_minutes)
    late = math.floor(waited - target) if waited > target else 0
    add = min(aging.max_points, late * aging.points_per_minute)
    # The reason changes only when its points do (the re-score pass writes a study only
    # when something it shows changed): the minutes while they earn points, else a bound.
    if add > 0 and add >= aging.max_points:
        capped_at = target + math.ceil(aging.max_points / aging.points_per_minute)
        return add, (
            f"waiting >= {_fmt(capped_at)} of {_fmt(target)} min: +{_fmt(add)} (aging's most)"
        )
    if add > 0:
        return add, f"waiting {math.floor(waited)} of {_fmt(target)} min: +{_fmt(add)}"
    if waited > target / 2:  # say nothing of a wait far from its target
        return add, f"waiting > {_fmt(target / 2)} of {_fmt(target)} min: +0"
    return add, None


def complete(
    rules: UrgencyRules,
    fixed: FixedPart,
    waiting_minutes: float | None,
    aging: tuple[float, str | None] | None = None,
) -> ScoreResult:
    """The score of ``fixed`` after a wait of ``waiting_minutes``: aging, the matched rules,
    the priority. ``aging``: :func:`aging_term` of this wait when already known."""
    level, score, target, reasons, terms, rule_reasons, rule_terms = fixed
    reasons = reasons.copy()
    terms = terms.copy()
    if waiting_minutes is not None and target is not None:
        add, reason = (
            aging if aging is not None else aging_term(rules.aging, target, waiting_minutes)
        )
        if reason is not None:
            reasons.append(reason)
        if add > 0:
            waited = math.floor(max(0.0, waiting_minutes))
            terms.append(ScoreTerm("aging", f"{waited}/{_fmt(target)} min", add))
            score += add
    if rule_terms:
        for term in rule_terms:
            score += term.points
        reasons.extend(rule_reasons)
        terms.extend(rule_terms)

    score = min(100.0, round(score, 1))
    priority = level.code
    for min_score, code in rules.priority_from_score:
        if score >= min_score:
            if rules.priorities[code].rank < level.rank:
                priority = code
            break
    raised = priority != level.code
    if raised:
        reasons.append(f"Score {_fmt(score)} -> priority {priority} (raised from {level.code})")
    else:
        # "as ordered" only when there was one (no order: the default, not raised)
        kept = "as ordered" if reasons[0].startswith("Ordered priority") else "not raised"
        reasons.append(f"Score {_fmt(score)} -> priority {priority} ({kept})")
    return ScoreResult(
        score,
        priority,
        level.code,
        raised,
        reasons,
        tuple(terms),
        waiting_minutes,
        target,
        rules.version_id,
    )


def order_key(
    rules: UrgencyRules,
    priority: str,
    score: float,
    completed_at: datetime | None,
    accession: str,
    study_uid: str,
) -> tuple[int, float, int, str, str, str]:
    """Worklist order, most urgent first: priority, then score (higher first), then completion
    time (earlier first; unknown last), then accession number, then Study UID (a total order:
    the same studies always come out the same way, whatever order they were read in)."""
    if completed_at is None:
        when, stamp = 1, ""
    else:
        if completed_at.tzinfo is not None:
            completed_at = completed_at.astimezone(UTC).replace(tzinfo=None)
        when, stamp = 0, completed_at.isoformat()
    return (rules.level(priority).rank, -score, when, stamp, accession, study_uid)
