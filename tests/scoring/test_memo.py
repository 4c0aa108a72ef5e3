"""The re-score pass's memo gives exactly what score_study gives: same score, priority, reasons
and rules version, for any inputs, waits in any order, and rules changed in between."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from triage.priority import PRIORITY_LABELS
from triage.scoring import FindingInput, UrgencyRules, load_urgency_rules, score_study
from triage.scoring.memo import ScoreMemo, inputs_of

RULES_PATH = Path(__file__).resolve().parents[2] / "rules" / "urgency.yaml"
SHIPPED = load_urgency_rules(RULES_PATH)
CODES = list(PRIORITY_LABELS)

points = st.integers(0, 60)
minutes = st.one_of(st.integers(1, 120), st.sampled_from([7.5, 12.25, 0.5]))


@st.composite
def rules_files(draw: st.DrawFn) -> UrgencyRules:
    """A valid urgency.yaml with generated numbers, fractional reading targets and aging."""
    bases = sorted((draw(st.integers(0, 100)) for _ in CODES), reverse=True)
    prio = "\n".join(
        f"  {c}: {{label: L{c}, base: {b}}}" for c, b in zip(CODES, bases, strict=True)
    )
    scale = str(draw(st.booleans())).lower()
    per_minute = draw(st.sampled_from([0, 0.25, 0.5, 1, 1.5, 2, 3.3]))
    steps = sorted(draw(st.lists(st.integers(1, 100), max_size=2, unique=True)), reverse=True)
    to = [f"  - {{min_score: {s}, priority: {c}}}" for s, c in zip(steps, ["S", "A"], strict=False)]
    text = f"""version: 1
priorities:
{prio}
default_priority: R
patient_class:
  E: {{label: Emergency, points: {draw(points)}, reading_target_minutes: {draw(minutes)}}}
  I: {{label: Inpatient, points: {draw(points)}}}
unknown_patient_class: {{label: Unknown, points: {draw(points)}, reading_target_minutes: 60}}
locations:
  - {{label: ICU, match: '^ICU', points: {draw(points)}, reading_target_minutes: {draw(minutes)}}}
  - {{label: Ward, match: '^WARD', points: {draw(points)}}}
findings:
  ich: {{label: ICH, points: {draw(points)}, scale_by_probability: {scale}}}
  pe: {{label: PE, points: {draw(points)}}}
aging: {{points_per_minute: {per_minute}, max_points: {draw(points)}}}
rules:
  - name: trauma
    points: {draw(points)}
    when: {{order.procedure_text: trauma}}
  - name: stroke
    points: {draw(points)}
    when: {{order.ordering_location: '^STROKE', study.modality: [CT, MR]}}
priority_from_score:
{chr(10).join([*to, "  - {min_score: 0, priority: R}"])}
"""
    return load_urgency_rules(Path("generated.yaml"), text)


probability = st.one_of(st.floats(0.0, 1.0, allow_nan=False), st.sampled_from([0.0, -0.0, 1]))


@st.composite
def findings(draw: st.DrawFn) -> FindingInput:
    model = draw(st.sampled_from(["ich", "pe", "other"]))
    status = draw(st.sampled_from(["done", "done", "not_assessable", "pending", "error"]))
    if status != "done":
        return FindingInput(model, status, detail=draw(st.sampled_from(["", "x", "y"])))
    thr = draw(st.one_of(st.none(), probability))
    p = draw(probability)
    positive = draw(st.booleans()) if thr is None else p >= thr
    return FindingInput(model, status, p, positive, thr, draw(st.sampled_from(["", "3"])))


@st.composite
def studies(draw: st.DrawFn) -> dict:
    fields = {
        "order.procedure_text": draw(st.sampled_from(["", "CT HEAD", "CT TRAUMA"])),
        "order.ordering_location": draw(st.sampled_from(["", "STROKE^1", "ICU^2"])),
        "study.modality": draw(st.sampled_from(["CT", "MR", "CR"])),
    }
    return {
        "ordered_priority": draw(st.sampled_from([*CODES, "", "Q", " s"])),
        "patient_class": draw(st.sampled_from(["E", "I", "O", "", "X", "e "])),
        "findings": draw(st.lists(findings(), max_size=3)),
        "ai_pending": draw(st.booleans()),
        "location": draw(st.sampled_from(["", "ICU^1", "WARD^2", "STROKE^3"])),
        "fields": draw(st.one_of(st.none(), st.just(fields))),
    }


#: waits as a pass sees them: none, around the reading targets, whole and fractional minutes
waits = st.one_of(
    st.none(),
    st.floats(-5, 600, allow_nan=False),
    st.integers(0, 300).map(float),
    st.sampled_from([7.5, 12.25, 15.0, 30.0, 30.5, 59.999, 60.0, 60.001, 90.0]),
)


def same(memo: ScoreMemo, rules: UrgencyRules, study: dict, wait: float | None) -> None:
    fresh = score_study(rules, **study, waiting_minutes=wait)
    key = inputs_of(rules, **study)
    got = memo.outcome(rules, key, wait)
    assert (got.score, got.priority, got.raised, got.rules_version) == (
        fresh.score,
        fresh.priority,
        fresh.raised,
        fresh.rules_version,
    )
    assert got.reasons == json.dumps(fresh.reasons)
    assert memo.result(rules, key, wait) == fresh


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.just(SHIPPED), rules_files()), min_size=1, max_size=3),
    st.lists(studies(), min_size=1, max_size=6),
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 5), waits, st.booleans()),
        min_size=1,
        max_size=40,
    ),
)
def test_the_memo_gives_what_score_study_gives(rules_pool, batch, steps):
    """Passes over a few studies with waits in any order (each study's inputs and aging term
    seen again and again), the rules switched between them, some passes ended."""
    memo = ScoreMemo()
    for r, i, wait, end in steps:
        rules = rules_pool[r % len(rules_pool)]
        same(memo, rules, batch[i % len(batch)], wait)
        if end:
            memo.end_pass()


@settings(max_examples=100, deadline=None)
@given(studies(), st.lists(waits, min_size=2, max_size=20))
def test_a_study_waiting_pass_after_pass(study, seen):
    """One study, minute after minute past its target and beyond aging's cap."""
    memo = ScoreMemo()
    for wait in sorted(w for w in seen if w is not None):
        same(memo, SHIPPED, study, wait)
        memo.end_pass()


def test_other_rules_are_never_answered_from_the_memo():
    """Rules with the same version id but other numbers (as a test or a reload might build):
    the memo forgets everything when it is given another rules object."""
    study = {
        "ordered_priority": "R",
        "patient_class": "E",
        "findings": [FindingInput("ich", "done", 0.9, True, 0.5, "3")],
        "location": "ICU^1",
    }
    more_aging = replace(SHIPPED, aging=replace(SHIPPED.aging, points_per_minute=2, max_points=40))
    no_ich = replace(SHIPPED, findings={})
    assert more_aging.version_id == no_ich.version_id == SHIPPED.version_id
    memo = ScoreMemo()
    seen = set()
    for rules in (SHIPPED, more_aging, no_ich, SHIPPED, more_aging):
        for wait in (0.0, 45.0, 45.0, 200.0):
            same(memo, rules, study, wait)
            seen.add(memo.outcome(rules, inputs_of(rules, **study), wait))
    assert len(seen) > 4  # the three rules differ on this study: each answered for itself


def test_end_pass_forgets_what_the_pass_did_not_see():
    memo = ScoreMemo()
    a = inputs_of(SHIPPED, ordered_priority="R", patient_class="E")
    b = inputs_of(SHIPPED, ordered_priority="S", patient_class="I")
    memo.outcome(SHIPPED, a, 10.0)
    memo.outcome(SHIPPED, b, 10.0)
    memo.end_pass()
    assert len(memo) == 2
    memo.outcome(SHIPPED, a, 11.0)
    memo.end_pass()
    assert len(memo) == 1
    memo.end_pass()
    assert len(memo) == 0


def test_inputs_equal_as_keys_score_alike():
    """The memo's keys compare with ==: inputs that are equal so (a threshold of 0.0 and one of
    -0.0, a probability of 1 and 1.0, positive 1 and True) give the same reasons."""
    memo = ScoreMemo()
    for thr, p, positive in ((0.0, 1.0, True), (-0.0, 1, 1), (-0.0, 1.0, True)):
        study = {
            "ordered_priority": "R",
            "patient_class": "E",
            "findings": [FindingInput("ich", "done", p, positive, thr, "3")],
        }
        same(memo, SHIPPED, study, 20.0)
