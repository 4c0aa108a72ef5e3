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
    assert "ICH 0.97 >= 0.50: +58.2 (POSITIVE, ich 1)" in r.reasons
    assert any("synthetic phantoms" in x for x in r.reasons)
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


SWAPPED_S_R = (
    "  S: {label: STAT, base: 70}",
    "  R: {label: Routine, base: 20}",
)


@pytest.mark.parametrize(
    ("swap", "fragment", "line_of"),
    [
        # R listed first (and S last): a STAT order would be "raised" to routine
        (SWAPPED_S_R, "S (stat) must be listed first", "  R: {label: Routine"),
        (
            ("  A: {label: ASAP, base: 50}", "  R: {label: Routine, base: 20}"),
            "A (ASAP) must be listed before R",
            "  A: {label: ASAP",
        ),
        (
            ("  C: {label: Callback, base: 30}", "  C: {label: Callback, base: 60}"),
            "C has base 60, more than T above it (50)",
            "  C: {label: Callback",
        ),
    ],
)
def test_a_ranking_against_table_0027_is_refused_on_load(swap, fragment, line_of):
    """Found by a manager's what-if: a file listing R above S was valid, and the engine then
    listed a STAT order as routine (never below the ordered priority, as ranked by that
    file) and queued an ORM with R for it."""
    a, b = swap
    text = RULES.read_text(encoding="utf-8")
    if b.startswith("  C:"):  # a changed base, not a swap
        text = _with(a, b)
    else:
        assert a in text and b in text
        text = text.replace(a, "@@").replace(b, a).replace("@@", b)
    with pytest.raises(RulesError) as err:
        load_urgency_rules(Path("u.yaml"), text)
    assert fragment in str(err.value)
    assert err.value.line == _line_of(text, line_of)


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


# -- the terms added for issue 15: location, aging, rules, and the reasons ------------------


def test_reasons_read_at_a_glance(rules):
    r = score_study(
        rules,
        ordered_priority="R",
        patient_class="E",
        findings=[FindingInput("ich", "done", 0.97, True, 0.8, "3")],
        waiting_minutes=42.5,
    )
    assert r.reasons[:3] == [
        "Ordered priority R (Routine): +20",
        "Emergency patient (E): +20",
        "ICH 0.97 >= 0.80: +58.2 (POSITIVE, ich 3)",
    ]
    assert "waiting 42 of 30 min: +12" in r.reasons
    assert r.score == 100.0 and r.reasons[-1] == "Score 100 -> priority S (raised from R)"
    assert r.rules_version == rules.version_id and r.target_minutes == 30
    assert [t.kind for t in r.terms] == ["ordered", "class", "finding", "aging"]


def test_negative_finding_reason_shows_the_operating_point(rules):
    r = score_study(
        rules,
        ordered_priority="R",
        patient_class="O",
        findings=[FindingInput("pe", "done", 0.12, False, 0.6)],
    )
    assert "PE 0.12 < 0.60: +0" in r.reasons and r.score == 20


def test_aging_counts_whole_minutes_past_the_target_up_to_the_cap(rules):
    def aged(minutes: float | None) -> float:
        return score_study(
            rules, ordered_priority="R", patient_class="E", waiting_minutes=minutes
        ).score

    def aged_reasons(minutes: float) -> list[str]:
        return score_study(
            rules, ordered_priority="R", patient_class="E", waiting_minutes=minutes
        ).reasons

    assert aged(None) == aged(10) == aged(30) == aged(30.9) == 40
    assert aged(31) == 41 and aged(42) == 52
    assert aged(60) == aged(600) == 70  # max_points 30
    r = score_study(rules, ordered_priority="R", patient_class="E", waiting_minutes=65)
    assert r.priority == "A" and "waiting >= 60 of 30 min: +30 (aging's most)" in r.reasons
    # a reason changes only with its points: the same text at every wait past the cap, and
    # one bound before the target
    assert [x for x in aged_reasons(61) if x.startswith("waiting")] == [
        "waiting >= 60 of 30 min: +30 (aging's most)"
    ]
    assert aged_reasons(600) == aged_reasons(61)
    assert "waiting > 15 of 30 min: +0" in aged_reasons(16) and aged_reasons(16) == aged_reasons(29)
    assert not any(x.startswith("waiting") for x in aged_reasons(15))


def test_icu_location_adds_points_and_shortens_the_target(rules):
    r = score_study(
        rules, ordered_priority="R", patient_class="I", location="ICU^12^B", waiting_minutes=45
    )
    assert "Intensive care (ICU^12^B): +15" in r.reasons
    assert r.target_minutes == 30 and "waiting 45 of 30 min: +15" in r.reasons
    r = score_study(
        rules, ordered_priority="R", patient_class="I", location="WARD3^12", waiting_minutes=45
    )
    assert not any("Intensive care" in x for x in r.reasons) and r.target_minutes == 120


def test_rules_match_order_and_dicom_fields(rules):
    fields = {
        "order.procedure_text": "CT HEAD TRAUMA",
        "order.ordering_location": "STROKE^1",
        "study.modality": "ct",
    }
    r = score_study(rules, ordered_priority="R", patient_class="O", fields=fields)
    assert "trauma: +15" in r.reasons and "stroke pathway: +20" in r.reasons
    assert r.score == 55 and r.priority == "A"
    r = score_study(
        rules, ordered_priority="R", patient_class="O", fields=fields | {"study.modality": "CR"}
    )
    assert "trauma: +15" in r.reasons and not any("stroke" in x for x in r.reasons)


def test_order_key_priority_then_score_then_completion_then_accession(rules):
    from datetime import UTC, datetime

    from triage.scoring import order_key

    t1 = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)
    t2 = datetime(2025, 1, 1, 11, 0, tzinfo=UTC)
    rows = [
        ("R", 40.0, t1, "B", "5"),
        ("S", 72.0, t2, "A", "1"),
        ("R", 40.0, t1, "A", "4"),
        ("R", 40.0, None, "A", "6"),
        ("A", 60.0, t2, "Z", "2"),
        ("R", 45.0, t2, "Z", "3"),
    ]
    ordered = sorted(rows, key=lambda x: order_key(rules, *x))
    assert [x[4] for x in ordered] == ["1", "2", "3", "4", "5", "6"]
    naive = order_key(rules, "R", 40.0, t1.replace(tzinfo=None), "A", "4")
    assert naive == order_key(rules, "R", 40.0, t1, "A", "4")


def test_version_id_is_the_hash_of_the_text(rules):
    text = RULES.read_text(encoding="utf-8")
    again = load_urgency_rules(Path("elsewhere.yaml"), text)
    assert again.version_id == rules.version_id and len(rules.version_id) == 12
    changed = load_urgency_rules(Path("u.yaml"), text.replace("points: 15\n", "points: 16\n", 1))
    assert changed.version_id != rules.version_id


@pytest.mark.parametrize(
    ("old", "new", "fragment", "at"),
    [
        (
            "      order.procedure_text: '\\b(trauma|polytrauma)\\b'",
            "      order.reason: 'anticoagul'",
            "unknown field 'order.reason'",
            "order.reason:",
        ),
        (
            "      order.procedure_text: '\\b(trauma|polytrauma)\\b'",
            "      order.procedure_text: '(trauma'",
            "invalid regular expression",
            "order.procedure_text: '(trauma'",
        ),
        (
            "  - name: trauma\n    points: 15",
            "  - name: trauma\n    points: -5",
            "never negative",
            "points: -5",
        ),
        ("  max_points: 30", "  max_points: -1", "never negative", "max_points: -1"),
        (
            "  E: {label: Emergency, points: 20, reading_target_minutes: 30}",
            "  E: {label: Emergency, points: 20, reading_target_minutes: 0}",
            "must be above 0",
            "E: {label: Emergency",
        ),
        (
            "  - {min_score: 55, priority: A}",
            "  - {min_score: 55, priority: A}\n  - {min_score: 60, priority: R}",
            "a higher score must never give a lower priority",
            "priority_from_score:",
        ),
        (
            "  - name: stroke pathway",
            "  - name: trauma",
            "listed twice",
            "  - name: trauma",
        ),
        ("aging:\n", "aging:\n  every: 5\n", "unknown key 'every' in aging", "every: 5"),
        (
            "  - {label: Intensive care, match: '^(ICU",
            "  - {label: Intensive care, matches: '^(ICU",
            "unknown key 'matches'",
            "Intensive care, matches",
        ),
    ],
)
def test_bad_rules_name_file_line_and_reason(old, new, fragment, at):
    text = _with(old, new)
    with pytest.raises(RulesError) as err:
        load_urgency_rules(Path("site/urgency.yaml"), text)
    line = max(i for i, x in enumerate(text.splitlines(), 1) if at in x)  # the last one
    assert fragment in str(err.value)
    assert str(err.value).startswith(f"site/urgency.yaml:{line}: "), (str(err.value), line)


def test_a_threshold_over_100_is_refused():
    """Scores are capped at 100: a typo such as 800 for 80 would silently never raise."""
    text = _with("  - {min_score: 80, priority: S}", "  - {min_score: 800, priority: S}")
    with pytest.raises(RulesError, match="800 can never be reached") as err:
        load_urgency_rules(Path("u.yaml"), text)
    assert err.value.line == _line_of(text, "min_score: 800")


def test_reason_words_read_as_english(rules):
    """'Inpatient patient (I)' and 'as ordered' for a study with no order read wrongly."""
    inpatient = score_study(rules, ordered_priority="R", patient_class="I", findings=[])
    assert "Inpatient (I): +10" in inpatient.reasons
    assert inpatient.reasons[-1].endswith("(as ordered)")
    no_order = score_study(rules, ordered_priority="", patient_class="", findings=[])
    assert no_order.reasons[-1].endswith("(not raised)")
