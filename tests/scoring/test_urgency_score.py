from __future__ import annotations

import subprocess
import sys
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
        (
            "version: 1\npriorities: {S: {label: S, base: 2}, A: {label: A, base: 2},\n"
            "  T: {label: T, base: 2}, C: {label: C, base: 2}, P: {label: P, base: 1},\n"
            "  R: {label: R, base: 1}}\ndefault_priority: Q\n",
            5,
            "default",
        ),
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


def _with(old: str, new: str) -> str:
    text = RULES.read_text(encoding="utf-8")
    assert old in text
    return text.replace(old, new)


def _line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


@pytest.mark.parametrize("code", ["U", "'1'", "STAT", "ss"])
def test_a_priority_outside_hl7_table_0027_is_refused_on_load(code):
    """A site code in urgency.yaml would be scored, then fail when the RIS is told."""
    text = _with(
        "  R: {label: Routine", f"  {code}: {{label: Site, base: 40}}\n  R: {{label: Routine"
    )
    with pytest.raises(RulesError) as err:
        load_urgency_rules(Path("site/urgency.yaml"), text)
    assert err.value.path == "site/urgency.yaml"
    assert err.value.line == _line_of(text, f"{code}: {{label: Site")
    assert f"priority {code.strip(chr(39))!r} is not an HL7 table 0027 code" in str(err.value)
    assert "hl7-mapping.yaml" in str(err.value)


def test_every_table_0027_code_must_be_ranked():
    text = _with("  T: {label: Timing critical, base: 50}\n", "")
    with pytest.raises(RulesError) as err:
        load_urgency_rules(Path("u.yaml"), text)
    assert err.value.line == _line_of(text, "priorities:") and "missing: T" in str(err.value)


def test_a_code_listed_twice_is_refused():
    text = _with(
        "  R: {label: Routine, base: 20}",
        "  R: {label: Routine, base: 20}\n  r: {label: x, base: 1}",
    )
    with pytest.raises(RulesError) as err:
        load_urgency_rules(Path("u.yaml"), text)
    assert err.value.line == _line_of(text, "r: {label: x") and "listed twice" in str(err.value)


def test_score_to_a_code_outside_the_table_is_refused():
    text = _with("  - {min_score: 55, priority: A}", "  - {min_score: 55, priority: U}")
    with pytest.raises(RulesError) as err:
        load_urgency_rules(Path("u.yaml"), text)
    assert err.value.line == _line_of(text, "priority: U") and "'U'" in str(err.value)


def test_rules_check_names_file_line_and_reason(tmp_path):
    bad = tmp_path / "urgency.yaml"
    bad.write_text(
        _with("  C: {label: Callback", "  U: {label: Urgent, base: 45}\n  C: {label: Callback")
    )
    r = subprocess.run(
        [sys.executable, "-m", "triage.cli", "rules", "check", "--urgency", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=RULES.parents[1],
    )
    line = _line_of(bad.read_text(), "U: {label: Urgent")
    assert r.returncode == 2
    assert f"triage: error: {bad}:{line}: priority 'U' is not an HL7 table 0027 code" in r.stderr
