"""Outbound ORM^O01 (XO) and ORU^R01 (AI result): content, escaping, round trips."""

from __future__ import annotations

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import given, settings
from hypothesis import strategies as st
from support.paths import REPO_ROOT

from triage.config import Settings
from triage.hl7.build import (
    DISCLAIMER,
    AIResult,
    OrderRef,
    SenderIdentity,
    build_ai_result,
    build_order_change,
    validation_error,
)
from triage.hl7.codec import split_message
from triage.hl7.header import control_id_of
from triage.hl7.orders import parse_order
from triage.priority import PRIORITY_CODES, normalise_priority
from triage.scoring import load_urgency_rules

SENDER = SenderIdentity(
    application="TRIAGE", facility="ED-AI", receiving_application="RIS",
    receiving_facility="GENHOSP",
)  # fmt: skip
ORDER = OrderRef(
    accession_number="ACC-CTPA-24007",
    placer_order_number="PLC-778950^EPR",
    filler_order_number="FIL-445188^RIS",
    patient_id="MRN200871",
    patient_name="O'NEILL^PATRICK",
    patient_class="E",
    procedure_code="CTPA",
    procedure_text="CT pulmonary angiogram",
    modality="CT",
    study_uid="1.2.826.0.1.3680043.8.498.10002",
)


def test_order_change_round_trips_through_our_parser() -> None:
    msg = build_order_change(SENDER, ORDER, "S", reason="AI: suspected PE")
    assert "\n" not in msg and msg.count("\r") >= 3
    o = parse_order(msg)
    assert (o.message_type, o.trigger, o.version) == ("ORM", "O01", "2.5.1")
    assert o.order_control == "XO"
    assert (o.ordered_priority, o.priority_source) == ("S", "ORC-7.6")
    assert o.accession_number == "ACC-CTPA-24007"
    assert o.placer_order_number == "PLC-778950^EPR"
    assert o.filler_order_number == "FIL-445188^RIS"
    assert (o.patient_id, o.patient_name, o.patient_class) == ("MRN200871", "O'NEILL^PATRICK", "E")
    assert (o.procedure_code, o.procedure_text, o.modality) == (
        "CTPA",
        "CT pulmonary angiogram",
        "CT",
    )
    m = split_message(msg)
    msh, orc, obr = m.msh, m.first("ORC"), m.first("OBR")
    assert orc is not None and obr is not None
    assert [msh.get(i) for i in (3, 4, 5, 6)] == ["TRIAGE", "ED-AI", "RIS", "GENHOSP"]
    assert msh.raw(9) == "ORM^O01^ORM_O01" and msh.get(10) == o.control_id
    assert obr.get(5) == "S" and obr.get(27, 6) == "S" and orc.get(7, 6) == "S"
    assert orc.get(16, 2) == "AI: suspected PE"


def test_sender_identity_is_taken_from_the_settings_field_by_field() -> None:
    settings = Settings(
        sending_application="APP3", sending_facility="FAC4", receiving_application="APP5",
        receiving_facility="FAC6",
    )  # fmt: skip
    sender = SenderIdentity.from_settings(settings)
    assert sender == SenderIdentity("APP3", "FAC4", "APP5", "FAC6")
    result = AIResult(model_name="ich", finding="negative")
    for msg in (build_order_change(sender, ORDER, "S"), build_ai_result(sender, ORDER, result)):
        msh = split_message(msg).msh
        assert [msh.get(i) for i in (3, 4, 5, 6)] == ["APP3", "FAC4", "APP5", "FAC6"]


def test_order_change_read_by_hl7apy_with_groups() -> None:
    msg = build_order_change(SENDER, ORDER, "A", control_id="CTRL0001")
    m = parse_message(msg, find_groups=True, validation_level=VALIDATION_LEVEL.TOLERANT)
    assert m.name == "ORM_O01"
    assert m.msh.msh_10.value == "CTRL0001"
    order = m.orm_o01_order
    assert order.orc.orc_1.value == "XO"
    assert order.orc.orc_7.to_er7() == "^^^^^A"
    obr = order.orm_o01_order_detail.orm_o01_obrrqdrq1rxoodsodt_suppgrp.obr
    assert obr.obr_18.value == "ACC-CTPA-24007"
    assert obr.obr_27.to_er7() == "^^^^^A"


def test_order_change_fresh_control_ids_and_priority_words() -> None:
    a = build_order_change(SENDER, ORDER, "stat")
    b = build_order_change(SENDER, ORDER, "STAT")
    assert control_id_of(a) != control_id_of(b)
    assert parse_order(a).ordered_priority == "S"


def test_order_change_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        build_order_change(SENDER, ORDER, "urgent-ish")
    with pytest.raises(ValueError):
        build_order_change(SENDER, OrderRef(accession_number=""), "S")


def test_every_priority_the_urgency_rules_can_give_is_sent_and_read_back() -> None:
    """One vocabulary: scoring, building and parsing agree on every code."""
    rules = load_urgency_rules(REPO_ROOT / "rules" / "urgency.yaml")
    assert set(rules.priorities) == PRIORITY_CODES
    for code in rules.priorities:
        assert parse_order(build_order_change(SENDER, ORDER, code)).ordered_priority == code
    with pytest.raises(ValueError, match="table 0027"):
        build_order_change(SENDER, ORDER, "U")


def test_site_codes_are_read_through_the_same_vocabulary() -> None:
    site = {"1": "S", "URG": "A", "9": "X"}  # "9" maps to no code: not taken
    assert [normalise_priority(v, site) for v in ("1", " urg ", "9", "r", "Stat")] == [
        "S",
        "A",
        "",
        "R",
        "S",
    ]


def test_values_with_delimiters_are_escaped() -> None:
    odd = OrderRef(accession_number="A|1", patient_id="P&2~3", patient_name="SMITH&JONES^ANN")
    msg = build_order_change(SENDER, odd, "S", reason="x|y")
    o = parse_order(msg)
    assert o.accession_number == "A|1"
    assert o.patient_id == "P&2~3"
    assert o.patient_name == "SMITH&JONES^ANN"


def test_from_row_reads_attributes() -> None:
    parsed = parse_order(build_order_change(SENDER, ORDER, "S"))
    ref = OrderRef.from_row(parsed, study_uid="1.2.3")
    assert ref.accession_number == ORDER.accession_number and ref.study_uid == "1.2.3"


def _obx(msg: str) -> dict[str, list[list[str]]]:
    rows: dict[str, list[list[str]]] = {}
    for seg in split_message(msg).segments:
        if seg.name == "OBX":
            rows.setdefault(seg.get(3), []).append(seg.fields)
    return rows


def test_ai_result_oru() -> None:
    result = AIResult(
        model_name="pe_ctpa",
        model_version="1.0.0",
        probability=0.9312,
        threshold=0.5,
        finding="positive",
        finding_name="Pulmonary embolism",
        reasons=["AI positive for PE (p=0.93)", "Emergency patient"],
    )
    msg = build_ai_result(SENDER, ORDER, result, control_id="ORU0001")
    m = split_message(msg)
    assert m.msh.raw(9) == "ORU^R01^ORU_R01" and m.msh.get(10) == "ORU0001"
    assert [s.name for s in m.segments[:5]] == ["MSH", "PID", "PV1", "ORC", "OBR"]
    obr = m.first("OBR")
    assert obr is not None
    assert (
        obr.get(18) == "ACC-CTPA-24007"
        and obr.get(25) == "P"
        and obr.get(4, 2) == "CT pulmonary angiogram"
    )
    obx = _obx(msg)
    assert obx["AI-MODEL"][0][5] == "pe_ctpa"
    assert obx["AI-MODEL-VERSION"][0][5] == "1.0.0"
    assert obx["AI-PROB"][0][2] == "NM" and obx["AI-PROB"][0][5] == "0.9312"
    assert obx["AI-THRESHOLD"][0][5] == "0.5"
    finding = obx["AI-FINDING"][0]
    assert finding[2] == "CE" and finding[5] == "POS^Positive^L" and finding[8] == "A"
    assert [r[5] for r in obx["AI-REASON"]] == ["AI positive for PE (p=0.93)", "Emergency patient"]
    assert obx["AI-DISCLAIMER"][0][5] == DISCLAIMER
    assert obx["113014"][0][5] == "1.2.826.0.1.3680043.8.498.10002"
    set_ids = [s.get(1) for s in m.segments if s.name == "OBX"]
    assert set_ids == [str(i) for i in range(1, len(set_ids) + 1)]


def test_ai_result_passes_hl7apy_strict_validation() -> None:
    result = AIResult(
        model_name="ich_head_ct", finding="negative", probability=0.02, reasons=["x|y^z"]
    )
    msg = build_ai_result(SENDER, ORDER, result)
    m = parse_message(msg, find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
    m.validate()
    obs = m.oru_r01_patient_result.oru_r01_order_observation.oru_r01_observation
    values = [o.obx.obx_5.to_er7() for o in obs]
    assert "NEG^Negative^L" in values
    assert "x\\F\\y\\S\\z" in values
    assert DISCLAIMER in values


def test_ai_result_not_assessable_without_probability() -> None:
    result = AIResult(model_name="pe_ctpa", finding="not_assessable", reasons=["no CTPA series"])
    obx = _obx(build_ai_result(SENDER, OrderRef(accession_number="A1"), result))
    assert "AI-PROB" not in obx and "AI-MODEL-VERSION" not in obx
    assert obx["AI-FINDING"][0][5] == "NA^Not assessable^L"
    with pytest.raises(ValueError):
        build_ai_result(SENDER, ORDER, AIResult(model_name="m", finding="maybe"))


def test_omi_order_change_round_trips_and_validates() -> None:
    msg = build_order_change(SENDER, ORDER, "S", reason="AI: suspected PE", message="OMI^O23")
    assert validation_error(msg) == ""
    o = parse_order(msg)
    assert (o.message_type, o.trigger, o.order_control) == ("OMI", "O23", "XO")
    assert (o.ordered_priority, o.priority_source) == ("S", "TQ1-9.1")
    assert o.accession_number == "ACC-CTPA-24007" and o.study_uid == ORDER.study_uid
    ipc = split_message(msg).first("IPC")
    assert ipc is not None and ipc.get(3) == ORDER.study_uid and ipc.get(5) == "CT"
    with pytest.raises(ValueError, match="ORM\\^O01 or OMI\\^O23"):
        build_order_change(SENDER, ORDER, "S", message="OMG^O19")


def test_what_we_build_passes_validation_and_broken_messages_do_not() -> None:
    bare = OrderRef(accession_number="A1", patient_id="P1")  # no name, no procedure: echoed
    result = AIResult(model_name="ich", finding="positive", probability=0.9)
    for msg in (
        build_order_change(SENDER, ORDER, "A"),
        build_order_change(SENDER, bare, "A"),
        build_ai_result(SENDER, ORDER, result),
    ):
        assert validation_error(msg) == ""
    xo = build_order_change(SENDER, ORDER, "S")
    segs = xo.split("\r")
    no_orc = "\r".join(s for s in segs if not s.startswith("ORC"))
    assert "ORM_O01_ORDER.ORC" in validation_error(no_orc)
    two_in_choice = xo.replace("\rOBR|", "\rRQD|1\rOBR|")
    assert "exactly one segment" in validation_error(two_in_choice)
    bad_time = xo.replace("||ORM^O01", "x||ORM^O01")  # MSH-7 is no longer a time
    assert "not an HL7 valid date" in validation_error(bad_time)
    omi_no_uid = build_order_change(
        SENDER, OrderRef(accession_number="A1", patient_id="P1"), "S", message="OMI^O23"
    )
    assert "IPC.IPC_3" in validation_error(omi_no_uid)  # IPC-3 (Study UID) is required
    assert "not a message the engine sends" in validation_error(
        "MSH|^~\\&|A|B|C|D|20240101||ADT^A08^ADT_A01|X1|P|2.5.1\rEVN||20240101\rPID|1||P1||N"
    )


_TEXT = st.text(alphabet="AZaz09 -'^&\\|~é.", max_size=12)


@settings(max_examples=25, deadline=None)
@given(
    accession=st.text(alphabet="AZ09-", min_size=1, max_size=10),
    placer=_TEXT,
    filler=_TEXT,
    patient_name=_TEXT,
    patient_class=st.sampled_from(["", "E", "I", "O"]),
    procedure=_TEXT,
    reason=_TEXT,
    reasons=st.lists(_TEXT, max_size=4),
)
def test_messages_built_as_text_pass_hl7apy_and_read_back(
    accession: str,
    placer: str,
    filler: str,
    patient_name: str,
    patient_class: str,
    procedure: str,
    reason: str,
    reasons: list[str],
) -> None:
    """The builders write ER7 text themselves: whatever the order holds (delimiters included),
    the result fits hl7apy's strict v2.5.1 structures and its values read back as stored."""
    order = OrderRef(
        accession_number=accession,
        placer_order_number=placer,
        filler_order_number=filler,
        patient_id="MRN1",
        patient_name=patient_name,
        patient_class=patient_class,
        procedure_code="CT1",
        procedure_text=procedure,
        modality="CT",
        study_uid="1.2.3",
    )
    for message in ("ORM^O01", "OMI^O23"):
        msg = build_order_change(SENDER, order, "S", reason=reason, message=message)
        assert validation_error(msg) == ""
        o = parse_order(msg)
        assert (o.accession_number, o.ordered_priority) == (accession, "S")
        assert o.patient_class == patient_class
    result = AIResult(model_name="ich", finding="positive", probability=0.9, reasons=reasons)
    oru = build_ai_result(SENDER, order, result)
    assert validation_error(oru) == ""
    obx = [s for s in split_message(oru).segments if s.name == "OBX" and "AI-REASON" in s.raw(3)]
    assert [s.get(5) for s in obx] == [r.strip() for r in reasons if r]
