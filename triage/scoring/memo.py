"""Scores remembered between re-score passes: the same answer as :func:`score_study`, sooner.

The scheduled pass looks at every open study each minute, and almost none of them changed:
their findings, order and rules are those of the last pass, and their wait earned no new
aging point. A score depends on the wait only through aging's points and reason
(:func:`~triage.scoring.score.aging_term`), so :class:`ScoreMemo` keeps, for each exact set of
inputs, the part of the score that does not depend on the wait
(:func:`~triage.scoring.score.fixed_part`) and, for each aging term seen, the outcome the
pass compares with the stored one (score, priority, reasons as stored JSON). Each pass then
computes only the aging term of each study.

The memo holds the results of one rules object only: given another (a changed rules file,
even one with the same version id), it forgets everything. Keys are the inputs themselves
(no hash of them), so two different studies never share an entry by accident.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from triage.scoring.rules import UrgencyRules
from triage.scoring.score import (
    FindingInput,
    FixedPart,
    ScoreResult,
    aging_term,
    complete,
    fixed_part,
)

#: A finding as the memo takes it: the fields of :class:`FindingInput`, in its order (model,
#: status, probability, positive, threshold, model_version, detail).
FindingTuple = tuple[Any, ...]
#: The exact inputs of a score but the wait: ordered priority, patient class, the findings,
#: AI pending, location, the values of :func:`rule_fields` (in its order).
Inputs = tuple[str, str, tuple[FindingTuple, ...], bool, str, tuple[str, ...]]

_MOST_AGING_TERMS = 64  # outcomes kept per inputs (one per aging point while a study ages)


class Outcome(NamedTuple):
    """What the re-score pass compares with the stored score (and writes when it differs)."""

    score: float
    priority: str
    raised: bool
    reasons: str  # the reasons as stored: json.dumps of ScoreResult.reasons
    rules_version: str


class _Entry:
    __slots__ = ("fixed", "outcomes", "used")

    def __init__(self, fixed: FixedPart, used: int) -> None:
        self.fixed = fixed
        self.outcomes: dict[tuple[float, str | None] | None, Outcome] = {}
        self.used = used  # the pass that used it last


def rule_fields(rules: UrgencyRules) -> tuple[str, ...]:
    """The order/study fields the rules test, in the order :class:`ScoreMemo` takes their
    values."""
    return tuple(sorted(rules.fields_used))


class ScoreMemo:
    """Remembers :func:`score_study`'s results for the inputs of the last pass.

    :meth:`outcome` and :meth:`result` give exactly what :func:`score_study` gives for the same
    inputs (the property test in tests/scoring/test_memo.py holds them side by side).
    :meth:`end_pass` forgets the inputs not seen since the previous call, so the memo holds
    about one entry per open study."""

    def __init__(self) -> None:
        self._rules: UrgencyRules | None = None
        self._fields: tuple[str, ...] = ()
        self._entries: dict[Inputs, _Entry] = {}
        self._pass = 0

    def _entry(self, rules: UrgencyRules, inputs: Inputs) -> _Entry:
        if rules is not self._rules:  # other rules: nothing remembered holds
            self._rules = rules
            self._fields = rule_fields(rules)
            self._entries = {}
        entry = self._entries.get(inputs)
        if entry is None:
            ordered, pclass, findings, pending, location, values = inputs
            fields = dict(zip(self._fields, values, strict=True)) if self._fields else None
            fixed = fixed_part(
                rules,
                ordered,
                pclass,
                [FindingInput(*f) for f in findings],
                pending,
                location,
                fields,
            )
            entry = self._entries[inputs] = _Entry(fixed, self._pass)
        else:
            entry.used = self._pass
        return entry

    def outcome(
        self, rules: UrgencyRules, inputs: Inputs, waiting_minutes: float | None
    ) -> Outcome:
        """:func:`score_study`'s score, priority, reasons (as JSON) and rules version for
        ``inputs`` after a wait of ``waiting_minutes``."""
        entry = self._entry(rules, inputs)
        target = entry.fixed.target
        aging = (
            aging_term(rules.aging, target, waiting_minutes)
            if waiting_minutes is not None and target is not None
            else None
        )
        found = entry.outcomes.get(aging)
        if found is None:
            r = complete(rules, entry.fixed, waiting_minutes, aging)
            found = Outcome(r.score, r.priority, r.raised, json.dumps(r.reasons), r.rules_version)
            if len(entry.outcomes) >= _MOST_AGING_TERMS:
                entry.outcomes.clear()
            entry.outcomes[aging] = found
        return found

    def result(
        self, rules: UrgencyRules, inputs: Inputs, waiting_minutes: float | None
    ) -> ScoreResult:
        """:func:`score_study`'s whole result for ``inputs`` after ``waiting_minutes``."""
        return complete(rules, self._entry(rules, inputs).fixed, waiting_minutes)

    def end_pass(self) -> None:
        """Forget the inputs not used since the previous call (studies no longer open, or
        whose inputs changed)."""
        now = self._pass
        self._entries = {k: e for k, e in self._entries.items() if e.used == now}
        self._pass += 1

    def __len__(self) -> int:
        return len(self._entries)


def inputs_of(
    rules: UrgencyRules,
    *,
    ordered_priority: str,
    patient_class: str,
    findings: Sequence[FindingInput] = (),
    ai_pending: bool = False,
    location: str = "",
    fields: dict[str, str] | None = None,
) -> Inputs:
    """:func:`score_study`'s keyword arguments (but the wait) as :data:`Inputs`."""
    values = fields or {}
    return (
        ordered_priority,
        patient_class,
        tuple(
            (f.model, f.status, f.probability, f.positive, f.threshold, f.model_version, f.detail)
            for f in findings
        ),
        ai_pending,
        location,
        tuple(values.get(name) or "" for name in rule_fields(rules)),
    )
