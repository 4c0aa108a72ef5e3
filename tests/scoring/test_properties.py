"""The scoring invariants as properties, over generated studies, on the shipped rules and on
generated rules files (any numbers a manager may write that the loader accepts)."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from triage.priority import PRIORITY_LABELS
from triage.scoring import FindingInput, UrgencyRules, load_urgency_rules, order_key, score_study

RULES_PATH = Path(__file__).resolve().parents[2] / "rules" / "urgency.yaml"
SHIPPED = load_urgency_rules(RULES_PATH)
CODES = list(PRIORITY_LABELS)

points = st.integers(min_value=0, max_value=60)


@st.composite
def rules_files(draw: st.DrawFn) -> UrgencyRules:
    """A valid urgency.yaml with generated numbers, ranks and thresholds."""
    # S first and A before R (their meaning is fixed, the loader refuses other orders); the
    # rest in any order
    rest = list(draw(st.permutations([c for c in CODES if c != "S"])))
    if rest.index("A") > rest.index("R"):
        i, j = rest.index("A"), rest.index("R")
        rest[i], rest[j] = rest[j], rest[i]
    order = ["S", *rest]
    bases = sorted((draw(st.integers(0, 100)) for _ in CODES), reverse=True)
    prio = "\n".join(
        f"  {c}: {{label: L{c}, base: {b}}}" for c, b in zip(order, bases, strict=True)
    )
    # thresholds: a higher score never gives a less urgent code
    steps = sorted(draw(st.lists(st.integers(1, 100), min_size=0, max_size=3, unique=True)))
    codes = sorted(
        draw(st.lists(st.sampled_from(order), min_size=len(steps) + 1, max_size=len(steps) + 1)),
        key=order.index,
    )
    lines = [f"  - {{min_score: 0, priority: {codes[-1]}}}"]
    for s, c in zip(steps, reversed(codes[:-1]), strict=True):
        lines.append(f"  - {{min_score: {s}, priority: {c}}}")
    e_target, icu_target = draw(st.integers(1, 120)), draw(st.integers(1, 60))
    scale = str(draw(st.booleans())).lower()
    per_minute = draw(st.floats(0, 5, allow_nan=False))
    text = f"""version: 1
priorities:
{prio}
default_priority: {draw(st.sampled_from(CODES))}
patient_class:
  E: {{label: Emergency, points: {draw(points)}, reading_target_minutes: {e_target}}}
  I: {{label: Inpatient, points: {draw(points)}}}
unknown_patient_class: {{label: Unknown, points: {draw(points)}, reading_target_minutes: 60}}
locations:
  - {{label: ICU, match: '^ICU', points: {draw(points)}, reading_target_minutes: {icu_target}}}
findings:
  ich: {{label: ICH, points: {draw(points)}, scale_by_probability: {scale}}}
  pe: {{label: PE, points: {draw(points)}}}
aging: {{points_per_minute: {per_minute:.3f}, max_points: {draw(points)}}}
rules:
  - name: trauma
    points: {draw(points)}
    when: {{order.procedure_text: trauma}}
  - name: stroke
    points: {draw(points)}
    when: {{order.ordering_location: '^STROKE', study.modality: [CT, MR]}}
priority_from_score:
{chr(10).join(lines)}
"""
    return load_urgency_rules(Path("generated.yaml"), text)


any_rules = st.one_of(st.just(SHIPPED), rules_files())
probability = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def findings(draw: st.DrawFn) -> FindingInput:
    model = draw(st.sampled_from(["ich", "pe", "other"]))
    status = draw(st.sampled_from(["done", "done", "not_assessable", "pending", "error"]))
    if status != "done":
        return FindingInput(model, status, detail="x")
    thr = draw(probability)
    p = draw(probability)
    return FindingInput(model, status, p, p >= thr, thr)


@st.composite
def studies(draw: st.DrawFn) -> dict:
    return {
        "ordered_priority": draw(st.sampled_from([*CODES, "", "Q"])),
        "patient_class": draw(st.sampled_from(["E", "I", "O", "", "X"])),
        "findings": draw(st.lists(findings(), max_size=3)),
        "ai_pending": draw(st.booleans()),
        "location": draw(st.sampled_from(["", "ICU^1", "WARD^2", "STROKE^3"])),
        "waiting_minutes": draw(st.one_of(st.none(), st.floats(0, 2000, allow_nan=False))),
        "fields": {
            "order.procedure_text": draw(st.sampled_from(["CT HEAD", "CT TRAUMA"])),
            "order.ordering_location": draw(st.sampled_from(["", "STROKE^1", "ICU^2"])),
            "study.modality": draw(st.sampled_from(["CT", "MR", "CR"])),
        },
    }


def rank(rules: UrgencyRules, code: str) -> int:
    return rules.level(code).rank


def at_least(rules: UrgencyRules, a, b) -> None:
    """Result ``a`` is no lower than ``b``: score and priority."""
    assert a.score >= b.score, (a.reasons, b.reasons)
    assert rank(rules, a.priority) <= rank(rules, b.priority), (a.reasons, b.reasons)


@given(any_rules, studies())
def test_never_below_the_ordered_priority(rules, study):
    r = score_study(rules, **study)
    assert rank(rules, r.priority) <= rank(rules, study["ordered_priority"])
    assert r.score >= min(100.0, rules.level(study["ordered_priority"]).base)
    assert r.reasons[-1].startswith(f"Score {r.score:.0f}" if r.score.is_integer() else "Score")


@given(any_rules, studies(), st.integers(0, 2), probability, probability)
def test_a_higher_probability_never_lowers(rules, study, i, p1, p2):
    lo, hi = sorted((p1, p2))
    thr = 0.5
    base = study["findings"]
    f_lo = FindingInput("ich" if i else "pe", "done", lo, lo >= thr, thr)
    f_hi = replace(f_lo, probability=hi, positive=hi >= thr)
    a = score_study(rules, **(study | {"findings": [*base, f_hi]}))
    b = score_study(rules, **(study | {"findings": [*base, f_lo]}))
    at_least(rules, a, b)


@given(any_rules, studies(), probability)
def test_positive_never_scores_below_negative(rules, study, p):
    pos = FindingInput("ich", "done", p, True, 0.5)
    neg = replace(pos, positive=False)
    a = score_study(rules, **(study | {"findings": [*study["findings"], pos]}))
    b = score_study(rules, **(study | {"findings": [*study["findings"], neg]}))
    at_least(rules, a, b)


@given(any_rules, studies(), st.sampled_from(["not_assessable", "pending", "error"]), st.booleans())
def test_not_assessable_or_pending_never_lowers(rules, study, status, pending):
    plain = score_study(rules, **study)
    more = score_study(
        rules,
        **(
            study
            | {
                "findings": [*study["findings"], FindingInput("ich", status, detail="d")],
                "ai_pending": study["ai_pending"] or pending,
            }
        ),
    )
    assert more.score == plain.score and more.priority == plain.priority


@given(any_rules, studies())
def test_more_matching_rules_never_lower(rules, study):
    none = study | {"fields": {}}
    one = study | {"fields": {"order.procedure_text": "TRAUMA"}}
    two = study | {
        "fields": {
            "order.procedure_text": "TRAUMA",
            "order.ordering_location": "STROKE^A",
            "study.modality": "MR",
        }
    }
    a, b, c = (score_study(rules, **x) for x in (none, one, two))
    at_least(rules, b, a)
    at_least(rules, c, b)


@given(
    any_rules, studies(), st.floats(0, 2000, allow_nan=False), st.floats(0, 2000, allow_nan=False)
)
def test_waiting_longer_never_lowers(rules, study, w1, w2):
    lo, hi = sorted((w1, w2))
    at_least(
        rules,
        score_study(rules, **(study | {"waiting_minutes": hi})),
        score_study(rules, **(study | {"waiting_minutes": lo})),
    )
    at_least(
        rules,
        score_study(rules, **(study | {"waiting_minutes": lo})),
        score_study(rules, **(study | {"waiting_minutes": None})),
    )


@given(any_rules, studies())
def test_the_same_inputs_give_the_same_result(rules, study):
    assert score_study(rules, **study) == score_study(rules, **study)


@settings(max_examples=50)
@given(any_rules, st.lists(studies(), min_size=2, max_size=30), st.randoms(use_true_random=False))
def test_the_worklist_order_is_deterministic(rules, batch, rnd: random.Random):
    t0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    rows = []
    for n, study in enumerate(batch):
        r = score_study(rules, **study)
        completed = None if n % 7 == 3 else t0 + timedelta(minutes=rnd.choice([0, 5, 5, 10]))
        rows.append((r.priority, r.score, completed, rnd.choice(["A1", "A2", ""]), f"1.2.{n}"))
    first = sorted(rows, key=lambda x: order_key(rules, *x))
    for _ in range(3):
        shuffled = rows[:]
        rnd.shuffle(shuffled)
        assert sorted(shuffled, key=lambda x: order_key(rules, *x)) == first
    for a, b in itertools.pairwise(first):  # most urgent first, then highest score
        assert rank(rules, a[0]) <= rank(rules, b[0])
        if a[0] == b[0]:
            assert a[1] >= b[1]
