"""Order parsing: our own sample messages and real third-party files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hl7_samples import DATA, hapi_messages, own, shared

from triage.errors import HL7Error
from triage.hl7.codec import split_message
from triage.hl7.header import read_header
from triage.hl7.orders import parse_order, parse_orders

# -- our own samples -------------------------------------------------------------------------


def test_orm_nw_v251_head_ct() -> None:
    o = parse_order(own("orm_nw_v251.hl7"))
    assert (o.message_type, o.trigger, o.version, o.control_id) == (
        "ORM",
        "O01",
        "2.5.1",
        "RIS00000101",
    )
    assert (o.sending_application, o.sending_facility) == ("RIS", "GENHOSP")
    assert o.order_control == "NW" and o.order_status == "SC"
    assert o.placer_order_number == "PLC-778812^EPR"
    assert o.filler_order_number == "FIL-445120^RIS"
    assert o.accession_number == "ACC-HCT-24001"
    assert o.patient_id == "MRN100234"
    assert o.patient_name == "MÜLLER^ANNA^M"
    assert o.patient_class == "E"
    assert (o.ordered_priority, o.priority_source) == ("S", "ORC-7.6")
    assert (o.procedure_code, o.procedure_text) == ("CTHEADWO", "CT head without contrast")
    assert o.modality == "CT"
    assert o.study_uid == "1.2.826.0.1.3680043.8.498.10001"
    assert o.ordering_location == "ED^RESUS^03^GENHOSP"


def test_orm_nw_v231_ctpa_priority_from_obr27() -> None:
    o = parse_order(own("orm_nw_v231.hl7"))
    assert o.version == "2.3.1"
    assert o.accession_number == "ACC-CTPA-24007"
    assert (o.ordered_priority, o.priority_source) == ("A", "OBR-27.6")
    assert o.patient_name == "O'NEILL^PATRICK" and o.patient_class == "I"
    assert o.study_uid == "1.2.826.0.1.3680043.8.498.10002"


def test_omi_o23_tq1_priority_and_ipc() -> None:
    o = parse_order(own("omi_o23.hl7"))
    assert (o.message_type, o.trigger) == ("OMI", "O23")
    assert (o.ordered_priority, o.priority_source) == ("S", "TQ1-9.1")
    assert o.accession_number == "ACC-CTPA-24011"  # IPC-1
    assert o.study_uid == "1.2.826.0.1.3680043.8.498.10003"  # IPC-3
    assert o.modality == "CT"


def test_xo_and_ca() -> None:
    xo = parse_order(own("orm_xo_v251.hl7"))
    assert (xo.order_control, xo.ordered_priority, xo.accession_number) == (
        "XO",
        "R",
        "ACC-HCT-24001",
    )
    ca = parse_order(own("orm_ca_v251.hl7"))
    assert (ca.order_control, ca.accession_number) == ("CA", "ACC-CTPA-24007")


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_segment_separators_are_normalised(sep: str) -> None:
    raw = own("orm_nw_v251.hl7").replace("\n", sep)
    assert parse_order(raw) == parse_order(own("orm_nw_v251.hl7"))


def test_several_orders_in_one_message() -> None:
    raw = own("orm_nw_v251.hl7").rstrip("\n")
    raw += (
        "\nORC|NW|PLC-2^EPR|FIL-2^RIS||SC\nOBR|1|PLC-2^EPR|FIL-2^RIS|CTCSPINE^CT cervical spine^L|S"
    )
    orders = parse_orders(raw)
    assert [o.accession_number for o in orders] == ["ACC-HCT-24001", "FIL-2"]
    assert orders[1].ordered_priority == "S" and orders[1].priority_source == "OBR-5.1"
    assert orders[1].patient_id == "MRN100234"


# -- real third-party files --------------------------------------------------------------------


def test_dcm4che_orm_v231_with_zds(shared_data: Path) -> None:
    o = parse_order(shared(shared_data, "dcm4che/pre_ed2fd02e4/ORM^O01.hl7"))
    assert (o.message_type, o.version, o.control_id) == ("ORM", "2.3.1", "103106")
    assert o.order_control == "NW"
    assert o.accession_number == "MOF5026"  # OBR-18
    assert o.placer_order_number == "A103Z^MESA_ORDPLC"
    assert o.filler_order_number == "B103Z^MESA_ORDFIL"
    assert o.patient_id == "583295" and o.patient_name == "DOE^J1"
    assert o.patient_class == "E"
    assert (o.ordered_priority, o.priority_source) == ("S", "ORC-7.6")
    assert o.modality == "MR"
    assert o.study_uid == "1.113654.3.13.1026"  # ZDS-1, matches dicom/dcm4che-wrist-mr


def test_dcm4che_omi_o23_v251(shared_data: Path) -> None:
    o = parse_order(shared(shared_data, "dcm4che/pre_ed2fd02e4/OMI^O23.hl7"))
    assert (o.message_type, o.trigger, o.version) == ("OMI", "O23", "2.5.1")
    assert o.accession_number == "ACC"  # IPC-1
    assert o.study_uid == "1.2.392.200036.9125.0.199402091242.1"  # IPC-3
    assert o.modality == "CT"  # IPC-5
    assert (o.procedure_code, o.procedure_text) == ("24725-4", "Head CT")  # OBR-44
    assert o.patient_id == "4711471151"
    assert o.ordered_priority == ""  # TQ1-9, ORC-7, OBR-27, OBR-5 all empty


def test_dcm4che_head_omi_with_non_code_priority(shared_data: Path) -> None:
    o = parse_order(shared(shared_data, "dcm4che/head_5d3b07cb/OMI^O23-ImagingOrder.hl7"))
    assert o.accession_number == "AccessionNumber"
    assert o.study_uid == "1.2.392.200036.9125.0.198811291108.7"
    assert o.ordered_priority == ""
    assert any("RequestedProcedurePriority" in w for w in o.warnings)
    # The file named ORM^O01 says OMI^O23 in MSH-9; accession in OBR-18, UID in ZDS.
    g = parse_order(shared(shared_data, "dcm4che/head_5d3b07cb/ORM^O01-GeneralOrder.hl7"))
    assert (g.message_type, g.accession_number) == ("OMI", "AccessionNumber")
    assert g.study_uid == "1.2.392.200036.9125.0.198811291108.7"


def test_epic_orm_v23_with_line_break_inside_a_field(shared_data: Path) -> None:
    raw = shared(shared_data, "node-hl7-complete/catalyze-io/orm-example.hl7")
    o = parse_order(raw)
    assert (o.message_type, o.version, o.control_id) == ("ORM", "2.3", "497")
    assert (o.sending_application, o.sending_facility) == ("EPIC", "EPIC")
    assert o.placer_order_number == "987654^EPIC"
    assert o.accession_number == "1858"  # OBR-18 empty -> OBR-3.1
    assert o.patient_id == "20891312"
    assert o.patient_name == "APPLESEED^JOHN^A^^MR."
    assert (o.procedure_code, o.procedure_text) == ("73610", "X-RAY ANKLE 3+ VW")
    assert o.modality == "DX"  # inferred from the procedure text
    assert o.ordered_priority == ""
    # "(608)258-" LF "8866" is one field, not a segment called "8866"
    obr = split_message(raw).first("OBR")
    assert obr is not None and obr.get(17) == "(608)258-8866"
    assert [s.name for s in split_message(raw).segments] == [
        "MSH",
        "PID",
        "PD1",
        "PV1",
        "ORC",
        "OBR",
        "DG1",
    ]


def test_hapi_messages_txt_orms(shared_data: Path) -> None:
    blocks = hapi_messages(shared_data)
    assert len(blocks) == 18
    orms = [b for b in blocks if read_header(b).message_type == "ORM"]
    assert len(orms) == 3
    xr, cr, nw = (parse_order(b) for b in orms)
    assert (xr.version, xr.order_control, xr.control_id) == ("2.2", "XR", "940503151537000")
    assert xr.sending_application == "DMCOE"  # trailing blank stripped
    assert xr.accession_number == "0000000517"  # OBR-3.1
    assert xr.patient_id == "N00804" and xr.patient_name == "RADIOLOGY^OUTPAT^ONE"
    assert xr.procedure_text == "KNEE-RIGHT AP LAT"
    assert xr.ordered_priority == ""  # ORC-7.6 is "D", not a priority
    assert (cr.order_control, cr.accession_number) == ("CR", "0000000511")
    assert (nw.order_control, nw.patient_id, nw.patient_class) == ("NW", "N00829", "I")
    assert nw.accession_number == ""  # placer only: the listener refuses to apply it (AE 101)
    assert nw.modality == "CT"  # "CT BIOPSY (91-MIN OR MORE)"
    others = {read_header(b).type_code for b in blocks if read_header(b).message_type != "ORM"}
    assert {"ORU^R01", "BAR^P01", "QRY^Q01"} <= others


# -- errors ----------------------------------------------------------------------------------


def test_missing_control_id_and_order_control_are_101() -> None:
    with pytest.raises(HL7Error) as info:
        parse_order(own("orm_nw_v251.hl7").replace("RIS00000101", "", 1))
    assert (info.value.hl7_code, info.value.location) == (101, "MSH^1^10")
    with pytest.raises(HL7Error) as info:
        parse_order(own("orm_nw_v251.hl7").replace("ORC|NW|", "ORC||", 1))
    assert (info.value.hl7_code, info.value.location) == (101, "ORC^1^1")
    no_orc = "\n".join(ln for ln in own("orm_nw_v251.hl7").splitlines() if not ln.startswith("ORC"))
    with pytest.raises(HL7Error) as info:
        parse_order(no_orc)
    assert info.value.hl7_code == 101


def test_the_one_pass_reader_gives_what_each_field_read_alone_gives(shared_data: Path) -> None:
    """read_plain_fields (the listener's path, one pass per order group) against read_value
    field by field (the reference), on every message we have - ours and the real third-party
    ones, any type - each of their ORC/OBR groups and the whole message, with the default
    mapping and with a site mapping that moves sources around (group and non-group segments,
    components and whole fields)."""
    from triage.hl7.codec import split_message
    from triage.hl7.fieldmap import (
        DEFAULT_FIELD_MAP,
        MAPPED_FIELDS,
        NORMALISED_FIELDS,
        FieldMap,
        read_plain_fields,
        read_value,
        refs,
    )

    site = FieldMap(
        sources={
            **DEFAULT_FIELD_MAP.sources,
            "accession_number": refs("OBR-20.1", "ZDS-1", "ORC-2.2"),
            "patient_id": refs("PID-4.1", "PID-3"),
            "ordering_location": refs("ORC-13", "PV1-3.1", "MSH-4"),
            "reason_for_study": refs("NTE-3", "OBR-13", "MSH-2"),
        },
        name="site",
    )
    texts = [p.read_bytes().decode("latin-1") for p in sorted(DATA.glob("*.hl7"))]
    real = sorted((shared_data / "hl7").rglob("*.hl7"))
    texts += [p.read_bytes().decode("latin-1") for p in real]
    texts += hapi_messages(shared_data)
    checked = 0
    for text in texts:
        try:
            msg = split_message(text, strict=False)
        except HL7Error:
            continue
        groups = [msg.segments]
        groups += [[s] for s in msg.segments if s.name in ("ORC", "OBR")]
        for fmap in (DEFAULT_FIELD_MAP, site):
            for group in groups:
                want = {}
                for name in MAPPED_FIELDS:
                    if name in NORMALISED_FIELDS:
                        continue
                    value, source = read_value(fmap, name, msg, group)
                    if value:
                        want[name] = (value, source)
                assert read_plain_fields(fmap, msg, group) == want, text[:80]
                checked += 1
    assert checked > 200
