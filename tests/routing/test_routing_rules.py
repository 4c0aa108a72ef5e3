from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from triage.errors import RulesError
from triage.routing import RoutingFacts, load_routing_rules, route

RULES = Path(__file__).resolve().parents[2] / "rules" / "routing.yaml"


@pytest.fixture(scope="module")
def rules():
    return load_routing_rules(RULES)


def facts(**kw):
    kw.setdefault("modalities", ["CT"])
    return RoutingFacts.build(**kw)


@pytest.mark.parametrize(
    ("kw", "model"),
    [
        ({"body_parts": ["HEAD"], "descriptions": ["CT HEAD WO CONTRAST"]}, "ich"),
        ({"body_parts": [""], "descriptions": ["CT BRAIN WITHOUT CONTRAST"]}, "ich"),
        ({"body_parts": ["BRAIN"], "descriptions": []}, "ich"),
        # contrast, CTA and perfusion head studies are not sent to the non-contrast model
        ({"body_parts": ["HEAD"], "descriptions": ["CT HEAD"], "contrast": True}, None),
        ({"body_parts": ["HEAD"], "descriptions": ["CTA HEAD AND NECK"]}, None),
        ({"body_parts": ["HEAD"], "descriptions": ["CT PERFUSION"]}, None),
        ({"body_parts": ["HEAD"], "descriptions": ["CT HEAD W CONTRAST"]}, None),
        # with and without contrast: the plain series of the study is judged
        (
            {
                "body_parts": ["HEAD"],
                "descriptions": ["CT HEAD WITH AND WITHOUT CONTRAST"],
                "contrast": True,
            },
            "ich",
        ),
        ({"body_parts": ["HEAD"], "descriptions": ["CT HEAD W/WO"], "contrast": True}, "ich"),
        (
            {"body_parts": ["CHEST"], "descriptions": ["CTA CHEST PE PROTOCOL"], "contrast": True},
            "pe",
        ),
        ({"body_parts": [], "descriptions": ["CT PULMONARY ANGIOGRAM"]}, "pe"),
        ({"body_parts": ["CHEST"], "descriptions": ["CT CHEST WO CONTRAST"]}, None),
        # orders written in other languages, without BodyPartExamined
        ({"body_parts": [], "descriptions": ["CT Schädel nativ"]}, "ich"),
        ({"body_parts": [], "descriptions": ["CT Schaedel nativ"]}, "ich"),
        ({"body_parts": [], "descriptions": ["CCT nativ"]}, "ich"),
        ({"body_parts": [], "descriptions": ["Scanner crâne sans injection"]}, "ich"),
        ({"body_parts": [], "descriptions": ["TC de cabeza sin contraste"]}, "ich"),
        ({"body_parts": [], "descriptions": ["Angioscanner thoracique EP"]}, "pe"),
        ({"body_parts": [], "descriptions": ["CT-Angio Thorax Lungenembolie"]}, "pe"),
        ({"body_parts": [], "descriptions": ["Angio TC tórax TEP"]}, "pe"),
        ({"body_parts": ["CHEST"], "descriptions": ["CT CHEST WITHOUT CONTRAST"]}, None),
        ({"body_parts": ["CHEST"], "descriptions": ["CTA CHEST NON-CONTRAST"]}, None),
        # with and without contrast: the study holds the CTPA, which the engine judges
        ({"body_parts": ["CHEST"], "descriptions": ["CTA CHEST W/WO CONTRAST"]}, "pe"),
        ({"body_parts": ["CHEST"], "descriptions": ["CTA CHEST W WO CONTRAST"]}, "pe"),
        (
            {"body_parts": [], "descriptions": ["CT ANGIO CHEST WITH AND WITHOUT CONTRAST"]},
            "pe",
        ),
        ({"body_parts": ["CHEST"], "descriptions": []}, None),
        ({"modalities": ["MR"], "body_parts": ["HEAD"], "descriptions": ["MR BRAIN"]}, None),
    ],
)
def test_routing_decisions(rules, kw, model):
    rule = route(rules, facts(**kw))
    assert (rule.model if rule else None) == model


@pytest.mark.parametrize(
    ("agent", "given"),
    [
        ("OMNIPAQUE 350", True),
        ("Iohexol", True),
        ("IV", True),
        ("", False),
        (None, False),
        ("NONE", False),
        ("None", False),
        ("no", False),
        ("N/A", False),
        ("-", False),
        ("NON", False),
        (" none. ", False),
        ("Non contrast", False),
    ],
)
def test_a_contrast_agent_that_says_none_is_no_contrast(rules, agent, given):
    """ContrastBolusAgent "NONE" (or NO, N/A, -) on a plain head: sites write it rather than
    leave the attribute out, and it made the study 'with contrast', so ich never saw it."""
    from triage.routing.facts import contrast_given

    assert contrast_given(agent) is given
    f = facts(body_parts=["HEAD"], descriptions=["CT HEAD"], contrast=contrast_given(agent))
    rule = route(rules, f)
    assert (rule.model if rule else None) == (None if given else "ich")


def test_order_procedure_text_counts(rules):
    f = facts(body_parts=[], descriptions=["", "CT HEAD WO CONTRAST"])  # from the order
    assert route(rules, f).model == "ich"


def _real_facts(folder: Path) -> RoutingFacts:
    dsets = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            try:
                dsets.append(pydicom.dcmread(p, stop_before_pixels=True))
            except pydicom.errors.InvalidDicomError:
                continue  # LICENSE, Philips DIRFILE
    assert dsets
    return RoutingFacts.build(
        modalities=[str(d.get("Modality", "")) for d in dsets],
        body_parts=[str(d.get("BodyPartExamined", "")) for d in dsets],
        descriptions=[
            str(d.get(k, "")) for d in dsets for k in ("StudyDescription", "SeriesDescription")
        ],
        contrast=any(str(d.get("ContrastBolusAgent", "")).strip() for d in dsets),
    )


@pytest.mark.parametrize(
    ("folder", "model"),
    [
        ("dicom/ge-head-ct", "ich"),
        ("dicom/philips-head-phantom", "ich"),
        ("dicom/lidc-chest-ct", None),  # non-contrast chest CT is not a CTPA
        ("dicom/dcm4che-wrist-mr", None),
    ],
)
def test_real_scanner_studies(rules, shared_data, folder, model):
    rule = route(rules, _real_facts(shared_data / folder))
    assert (rule.model if rule else None) == model


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("version: 1\nrules:\n  - name: a\n    model: ich\n    colour: red\n", 5, "colour"),
        ("version: 1\nrules:\n  - name: a\n", 3, "model"),
        ("version: 2\nrules: []\n", 1, "version"),
        (
            "version: 1\nrules:\n  - name: a\n    model: ich\n    require:\n"
            "      - description: '(unclosed'\n",
            6,
            "regular expression",
        ),
        ("version: 1\nrules:\n  - name: a\n    model: ich\n  - name: a\n    model: pe\n", 5, "dup"),
        ("version: 1\nrules: [\n", 3, "YAML"),
        (
            "version: 1\nrules:\n  - name: a\n    model: ich\n    require:\n"
            "      - contrast: maybe\n",
            6,
            "contrast",
        ),
    ],
)
def test_invalid_rules_name_file_and_line(text, line, fragment):
    with pytest.raises(RulesError) as err:
        load_routing_rules(Path("site/routing.yaml"), text)
    assert err.value.line == line
    assert str(err.value).startswith(f"site/routing.yaml:{line}:")
    assert fragment in str(err.value)
