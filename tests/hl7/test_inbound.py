"""Evaluation of inbound messages, acknowledgment modes and the site mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from triage.errors import HL7Error, RulesError
from triage.hl7.ack import read_ack
from triage.hl7.build import OrderRef, SenderIdentity, build_order_change
from triage.hl7.fieldmap import DEFAULT_SOURCES
from triage.hl7.header import read_header
from triage.hl7.inbound import decode_payload, evaluate, make_ack
from triage.hl7.mapping import DEFAULT_MAPPING, load_mapping
from triage.hl7.orders import parse_order

REPO = Path(__file__).resolve().parent.parent.parent
DATA = REPO / "tests" / "data" / "hl7"
MAPPING = REPO / "rules" / "hl7-mapping.yaml"


def own(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8").strip("\n").replace("\n", "\r")


# -- evaluation ------------------------------------------------------------------------------


def test_v23_priority_word_in_obr5_and_dc() -> None:
    ev = evaluate(own("orm_nw_v23.hl7"))
    assert ev.code == "AA" and ev.kind == "order"
    (o,) = ev.orders
    assert (o.ordered_priority, o.sources["ordered_priority"]) == ("R", "OBR-5.1")
    assert (o.accession_number, o.patient_class, o.modality) == ("ACC-XR-24100", "O", "DX")
    assert o.sources["modality"] == "inferred from the procedure"
    dc = evaluate(own("orm_dc_v23.hl7")).orders[0]
    assert dc.order_control == "DC"


def test_sc_with_orc5_cm_is_kept() -> None:
    (o,) = evaluate(own("orm_sc_cm_v251.hl7")).orders
    assert (o.order_control, o.order_status, o.sources["order_status"]) == ("SC", "CM", "ORC-5.1")


def test_adt_a08_is_a_patient_update() -> None:
    ev = evaluate(own("adt_a08_v251.hl7"))
    assert ev.kind == "patient_update" and ev.patient is not None
    assert (ev.patient.patient_id, ev.patient.patient_name) == (
        "MRN100234",
        "MUELLER-SMITH^ANNA^MARIA",
    )
    no_pid = evaluate(own("adt_a08_v251.hl7").replace("PID|1||MRN100234^^^GENHOSP^MR", "PID|1||"))
    assert no_pid.error is not None and no_pid.error.hl7_code == 101


@pytest.mark.parametrize(
    ("name", "code", "hl7_code"),
    [("bad_msh12.hl7", "AE", 203), ("no_msh10.hl7", "AE", 101), ("garbage.hl7", "AR", 100)],
)
def test_malformed_samples(name: str, code: str, hl7_code: int) -> None:
    ev = evaluate((DATA / name).read_text(encoding="utf-8"))
    assert ev.code == code and ev.error is not None and ev.error.hl7_code == hl7_code


def test_lying_charsets() -> None:
    latin = (DATA / "latin1_declared_utf8.hl7").read_bytes()
    text, codec, note = decode_payload(latin)
    assert codec == "latin-1" and "GONÇALVES^JOSÉ" in text and "does not fit" in note
    utf8_as_latin = own("omi_o23.hl7").replace("NGUYEN", "NGUYỄN").encode("utf-8")
    text, codec, note = decode_payload(utf8_as_latin)
    assert codec == "utf-8" and "NGUYỄN" in text and "8859/1" in note
    ascii_lie = own("orm_nw_v231.hl7").replace("|2.3.1", "|2.3.1||||||ASCII").replace("O'", "Ó")
    assert decode_payload(ascii_lie.encode("utf-8"))[1] == "utf-8"


# -- acknowledgment modes ------------------------------------------------------------------


def header(msh15: str, msh16: str) -> str:
    return own("orm_nw_v251.hl7").replace("|||AL|NE||", f"|||{msh15}|{msh16}||", 1)


@pytest.mark.parametrize(
    ("msh15", "msh16", "ok_answer", "error_answer"),
    [
        ("", "", "AA", "AE"),  # original mode
        ("AL", "NE", "CA", "CE"),
        ("AL", "AL", "CA", "CE"),  # one answer: the commit ACK (CA already means applied)
        ("ER", "NE", "", "CE"),
        ("SU", "NE", "CA", ""),
        ("NE", "AL", "AA", "AE"),  # no commit ACK asked: the application ACK instead
        ("NE", "ER", "", "AE"),
        ("NE", "NE", "", ""),
    ],
)
def test_acknowledgment_modes(msh15: str, msh16: str, ok_answer: str, error_answer: str) -> None:
    h = read_header(header(msh15, msh16))
    ack, _ = make_ack(h, "AA")
    assert (read_ack(ack)[0] if ack else "") == ok_answer
    err = HL7Error("no accession", hl7_code=101)
    ack, _ = make_ack(h, "AE", err)
    assert (read_ack(ack)[0] if ack else "") == error_answer
    if ack:
        assert read_ack(ack)[1] == "RIS00000101" and "101^" in ack


def test_enhanced_unsupported_version_is_commit_reject() -> None:
    ev = evaluate(header("AL", "NE").replace("|P|2.5.1|", "|P|2.1|", 1))
    ack, code = make_ack(ev.header, ev.code, ev.error)
    assert code == "CR" and read_ack(ack)[:2] == ("CR", "RIS00000101")


def test_an_acknowledgment_is_not_answered() -> None:
    """An ACK sent to us (a RIS answering on the wrong connection) gets no ACK back, in either
    mode: two systems acknowledging each other's acknowledgments would never stop."""
    for msh15, msh16 in (("", ""), ("AL", "AL")):
        ack_in = header(msh15, msh16).replace("ORM^O01", "ACK^O01^ACK", 1) + "\rMSA|AA|X1"
        ev = evaluate(ack_in)
        assert ev.header is not None and ev.header.message_type == "ACK"
        assert make_ack(ev.header, ev.code, ev.error) == ("", "AA")
    # any other message still is, in original mode
    ev = evaluate(header("", "").replace("ORM^O01", "ADT^A01", 1))
    assert read_ack(make_ack(ev.header, ev.code, ev.error)[0])[0] == "AA"


# -- escaping both ways ----------------------------------------------------------------------


def test_builders_escape_and_parser_unescapes() -> None:
    nasty = "O|BRIEN&SONS~\\X"
    msg = build_order_change(
        SenderIdentity("TRIAGE", "TRIAGE", "RIS", "RIS"),
        OrderRef(
            accession_number="ACC|1^2",
            patient_id="P&1",
            patient_name=f"{nasty}^ANN",
            procedure_text="CT head ^ neck",
            placer_order_number="PL~1^EPR",
        ),
        "S",
        reason="raised: bleed | mass effect",
        control_id="X1",
    )
    o = parse_order(msg)
    assert o.accession_number == "ACC|1^2"
    assert o.patient_id == "P&1"
    assert o.patient_name == f"{nasty}^ANN"
    assert o.procedure_text == "CT head ^ neck"
    assert o.placer_order_number == "PL~1^EPR"
    assert o.ordered_priority == "S"


# -- mapping ---------------------------------------------------------------------------------


def test_repository_mapping_defaults_equal_built_in() -> None:
    mapping = load_mapping(MAPPING)
    assert mapping.defaults.sources == DEFAULT_SOURCES
    ev = evaluate(own("example_ris_site_codes.hl7"), mapping)
    (o,) = ev.orders
    assert ev.fmap.name == "example-ris"
    assert (o.ordered_priority, o.sources["ordered_priority"]) == ("S", "OBR-5.1")
    assert (o.accession_number, o.sources["accession_number"]) == ("EXACC-9", "OBR-19.1")
    # without the mapping "1" is no priority, and the filler number stands in for the accession
    (plain,) = evaluate(own("example_ris_site_codes.hl7"), DEFAULT_MAPPING).orders
    assert (plain.ordered_priority, plain.accession_number) == ("", "EXF-1")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("version: 2\n", 1, "unsupported version"),
        ("version: 1\nfoo: 1\n", 2, "unknown key 'foo'"),
        ("version: 1\ndefaults:\n  fields:\n    priority: [OBR-5]\n", 4, "unknown engine field"),
        ("version: 1\ndefaults:\n  fields:\n    modality: [OBR24]\n", 4, "not a field reference"),
        (
            "version: 1\nsenders:\n  - name: a\n    match: {sending_facility: X}\n"
            "    priority_codes:\n      '1': Q\n",
            6,
            "S A R P C T",
        ),
        ("version: 1\nsenders:\n  - name: a\n    match: {}\n", 4, "needs sending_application"),
        (
            "version: 1\nsenders:\n  - name: a\n    match: {sending_facility: X}\n"
            "  - name: a\n    match: {sending_facility: Y}\n",
            5,
            "duplicate sender",
        ),
    ],
)
def test_mapping_errors_name_file_and_line(text: str, line: int, words: str) -> None:
    path = Path("site/hl7-mapping.yaml")
    with pytest.raises(RulesError) as info:
        load_mapping(path, text)
    assert info.value.line == line and words in str(info.value)
    assert str(info.value).startswith(f"{path}:{line}:")
