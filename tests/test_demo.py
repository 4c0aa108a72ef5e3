"""`triage demo` in a reduced form: a few studies, time compressed 600x. Its own engine (with
the bundled Triton) and test RIS; the positive study must be raised, announced to the RIS
(XO and ORU) and listed first."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from triage.demo import AI_NOTE, Arrival, _relabelled, make_templates, moves, run_demo, shift

pytestmark = pytest.mark.integration


def test_a_short_shift_raises_the_positive_and_tells_the_ris(tmp_path) -> None:
    arrivals = [
        Arrival(0.0, "DEMOT1", "SYNT1", "chest", "R", "E", exam_completed=True),
        Arrival(1.0, "DEMOT2", "SYNT2", "head-pos", "R", "E", exam_completed=True),
        Arrival(2.0, "DEMOT3", "SYNT3", "abdomen", "A", "O", exam_completed=False),
    ]
    out = io.StringIO()
    result = run_demo(
        arrivals=arrivals,
        minutes=3,
        extra_minutes=1,
        compression=600,
        console=Console(file=out, width=120),
        keep=tmp_path / "kept",  # the data and the engine's log stay to look at
    )
    assert result.sent == 3
    assert (tmp_path / "kept" / "triage.db").is_file()
    assert "triage: stopped" in (tmp_path / "kept" / "engine.log").read_text()

    # the test RIS got the order change (XO, STAT) and the AI result for the positive only
    (xo,) = result.xo_for("DEMOT2")
    assert xo.priority == "S"
    orus = [m for m in result.ris if m.kind.startswith("ORU")]
    assert all("DEMOT2" in m.text for m in orus) and orus
    assert "synthetic phantoms" in orus[0].text
    assert {m.accession for m in result.ris} == {"DEMOT2"}

    # the worklist: the positive first (raised to S), then the ASAP study at its ordered
    # priority, then the routine one; the two without a model are listed, not routed
    order = [(r["accession_number"], r["engine_priority"], r["state"]) for r in result.worklist]
    assert order == [
        ("DEMOT2", "S", "scored"),
        ("DEMOT3", "A", "not_routed"),
        ("DEMOT1", "R", "not_routed"),
    ]
    screen = out.getvalue()
    assert "time compressed 600x" in screen and AI_NOTE in screen
    assert "DEMOT2 R -> S" in screen  # the raise is an event on screen


def test_the_shift_has_its_positives_among_routine_and_unrouted_work() -> None:
    studies = shift(40, positives=3)
    assert len(studies) == 40 and studies == sorted(studies, key=lambda a: a.minute)
    assert sum(a.positive for a in studies) == 3
    assert all(a.priority == "R" for a in studies if a.positive)  # the AI raises them
    assert sum(not a.routed for a in studies) >= 5  # work no model looks at
    assert {a.kind for a in studies if a.positive} == {"head-pos", "ctpa-pos"}
    assert max(a.minute for a in studies) <= 60


def test_relabelling_a_study_without_a_model_leaves_the_ctpa_template_alone(tmp_path) -> None:
    templates = make_templates(tmp_path, {"chest", "ctpa-neg"})
    before = str(templates["ctpa-neg"][0].StudyDescription)
    chest = _relabelled(templates["other"], Arrival(0, "A1", "P1", "chest", "R", "E", False))
    assert chest[0].StudyDescription == "CT CHEST WO CONTRAST"
    assert "ContrastBolusAgent" not in chest[0]
    ctpa = _relabelled(templates["ctpa-neg"], Arrival(1, "A2", "P2", "ctpa-neg", "R", "E", False))
    assert ctpa[0].StudyDescription == before and "ContrastBolusAgent" in ctpa[0]
    assert ctpa[0].StudyInstanceUID != chest[0].StudyInstanceUID


def test_only_changes_that_move_a_study_count_as_raises() -> None:
    """The first scoring is recorded as a change from nothing: at the ordered priority it
    moves nothing (the shift's summary once counted every scored study as raised)."""

    def change(at: str, was: str, to: str, cause: str = "finding") -> dict[str, str]:
        return {"at": at, "from": was, "to": to, "cause": cause}

    kept = {"ordered_priority": "R", "priority_changes": [change("t1", "", "R")]}
    assert moves(kept) == []
    raised = {"ordered_priority": "R", "priority_changes": [change("t1", "", "S")]}
    assert [(was, ch["to"]) for was, ch in moves(raised)] == [("R", "S")]
    later = {
        "ordered_priority": "R",
        "priority_changes": [change("t2", "R", "A", "aging"), change("t1", "", "R")],
    }  # newest first, as the worklist lists them
    assert [(was, ch["to"], ch["cause"]) for was, ch in moves(later)] == [("R", "A", "aging")]


def test_the_demo_paints_what_the_shipped_models_learned_from() -> None:
    from triage.demo import DEMO_GENERATOR
    from triage.training.train import DEFAULT_GENERATOR

    assert DEMO_GENERATOR == DEFAULT_GENERATOR
