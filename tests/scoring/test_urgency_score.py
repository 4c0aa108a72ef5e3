from __future__ import annotations

from pathlib import Path

import pytest

from triage.errors import RulesError
from triage.scoring import FindingInput, load_urgency_rules, score_study

RULES = Path(__file__).resolve().parents[2] / "rules" / "urgency.yaml"


@pytest.fixture(scope="module")
def rules():
    return load_urgency_rules(RULES)


def positive(model="ich", p=0.97):
    return FindingInput(model, "done", p, True, 0.5, "1")


def test_positive_emergency_head_ct_becomes_stat(rules):
    r = score_study(rules, ordered_priority="R", patient_class="E", findings=[positive()])
    assert r.priority == "S" and r.raised
    assert any("POSITIVE" in x and "synthetic phantoms" in x for x in r.reasons)
    assert r.reasons[-1].endswith("(raised from R)")


def test_negative_finding_keeps_ordered_priority(rules):
    neg = FindingInput("ich", "done", 0.05, False, 0.5, "1")
    r = score_study(rules, ordered_priority="R", patient_class="E", findings=[neg])
    assert r.priority == "R" and not r.raised


@pytest.mark.parametrize("ordered", ["S", "A", "R", "P", "C", "T"])
@pytest.mark.parametrize("pclass", ["E", "I", "O", "", "X"])
def test_never_below_ordered_priority(rules, ordered, pclass):
    for findings in ([], [positive(p=0.6)], [FindingInput("ich", "not_assessable", detail="x")]):
        r = score_study(rules, ordered_priority=ordered, patient_class=pclass, findings=findings)
        assert rules.level(r.priority).rank <= rules.level(ordered).rank


def test_score_monotonic_in_probability(rules):
    scores = [
        score_study(rules, ordered_priority="R", patient_class="O", findings=[positive(p=p)]).score
        for p in (0.5, 0.7, 0.9, 1.0)
    ]
    assert scores == sorted(scores) and scores[0] < scores[-1]


def test_not_assessable_is_never_negative(rules):
    na = FindingInput("ich", "not_assessable", detail="too few slices (3)")
    r = score_study(rules, ordered_priority="R", patient_class="E", findings=[na])
    assert any("not assessable (too few slices (3))" in x for x in r.reasons)
    assert not any("negative" in x for x in r.reasons)


def test_ai_pending_reason(rules):
    r = score_study(rules, ordered_priority="A", patient_class="E", ai_pending=True)
    assert r.priority == "A" and any("AI pending" in x for x in r.reasons)


def test_unknown_and_missing_priority_fall_back_to_default(rules):
    r = score_study(rules, ordered_priority="Q", patient_class="E")
    assert r.ordered_priority == "R" and "unknown" in r.reasons[0]
    r = score_study(rules, ordered_priority="", patient_class="")
    assert r.ordered_priority == "R" and "No ordered priority" in r.reasons[0]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("version: 1\npriorities: {R: {label: R, base: 1}}\ndefault_priority: S\n", 3, "default"),
        (
            "version: 1\npriorities:\n  R: {label: R, base: ten}\ndefault_priority: R\n",
            3,
            "number",
        ),
    ],
)
def test_invalid_urgency_rules(text, line, fragment):
    with pytest.raises(RulesError) as err:
        load_urgency_rules(Path("u.yaml"), text)
    assert err.value.line == line and fragment in str(err.value)
