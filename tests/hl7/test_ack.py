"""ACK construction: AA/AE/AR, ERR, fallbacks for messages that cannot be parsed."""

from __future__ import annotations

from pathlib import Path

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from triage.errors import HL7Error, HL7ParseError
from triage.hl7.ack import ack_for_error, build_ack, read_ack
from triage.hl7.codec import split_message

DATA = Path(__file__).resolve().parent.parent / "data" / "hl7"
ORM = (DATA / "orm_nw_v251.hl7").read_text(encoding="utf-8")


def seg(ack: str, name: str) -> list[str]:
    for line in ack.split("\r"):
        if line.startswith(name + "|"):
            return line.split("|")
    raise AssertionError(f"no {name} in {ack!r}")


def test_aa_swaps_applications_and_echoes_control_id() -> None:
    ack = build_ack(ORM, "AA", control_id="ACK1")
    assert "\n" not in ack and not ack.endswith("\r")
    msh = seg(ack, "MSH")
    # MSH-3/4 <- inbound MSH-5/6, MSH-5/6 <- inbound MSH-3/4
    assert msh[2:6] == ["TRIAGE", "GENHOSP", "RIS", "GENHOSP"]
    assert msh[8] == "ACK^O01^ACK" and msh[9] == "ACK1" and msh[10] == "P" and msh[11] == "2.5.1"
    assert seg(ack, "MSA")[1:3] == ["AA", "RIS00000101"]
    assert "ERR|" not in ack
    assert read_ack(ack) == ("AA", "RIS00000101", "")


def test_a_bare_component_separator_in_msh_10_is_echoed_whole() -> None:
    """MSH-10 is an ST: a sender that writes "AB^CD" there got MSA-2 "AB" back, which
    matches none of its messages (hostile-peer audit); the whole field is echoed, its "^"
    escaped, and the escaped form reads back as the sender's control id."""
    raw = ORM.replace("|RIS00000101|", "|AB^CD|", 1)
    ack = build_ack(raw, "AA", control_id="ACK2")
    assert seg(ack, "MSA")[2] == "AB\\S\\CD"
    assert read_ack(ack)[1] == "AB^CD"
    escaped = ORM.replace("|RIS00000101|", "|AB\\S\\CD|", 1)  # written as it should be
    assert read_ack(build_ack(escaped, "AA", control_id="ACK3"))[1] == "AB^CD"


def test_ack_is_valid_hl7apy_ack() -> None:
    ack = build_ack(ORM, "AE", hl7_code=101, text="ORC-1 missing", location="ORC^1^1")
    msg = parse_message(ack, validation_level=VALIDATION_LEVEL.TOLERANT)
    assert msg.name == "ACK"
    assert msg.msa.msa_2.value == "RIS00000101"
    assert msg.err.err_3.to_er7() == "101^Required field missing^HL70357"


def test_fresh_control_ids() -> None:
    a, b = build_ack(ORM, "AA"), build_ack(ORM, "AA")
    assert seg(a, "MSH")[9] != seg(b, "MSH")[9]
    assert len(seg(a, "MSH")[9]) == 20


def test_same_version_as_inbound() -> None:
    raw = (DATA / "orm_nw_v231.hl7").read_text(encoding="utf-8")
    ack = build_ack(raw, "AA")
    assert seg(ack, "MSH")[11] == "2.3.1"
    assert seg(ack, "MSH")[8] == "ACK^O01"


def test_ae_has_err_with_code_severity_location_and_message() -> None:
    err = HL7Error("unsupported version 2.1", hl7_code=203, location="MSH^1^12")
    ack = ack_for_error(ORM, err)
    msa, e = seg(ack, "MSA"), seg(ack, "ERR")
    assert msa[1:3] == ["AE", "RIS00000101"]
    assert e[2] == "MSH^1^12"
    assert e[3] == "203^Unsupported version id^HL70357"
    assert e[4] == "E"
    assert e[8] == "unsupported version 2.1"
    assert read_ack(ack) == ("AE", "RIS00000101", "unsupported version 2.1")


def test_pre_25_ack_also_has_err1() -> None:
    raw = (DATA / "orm_nw_v231.hl7").read_text(encoding="utf-8")
    ack = ack_for_error(raw, HL7Error("ORC-1 missing", hl7_code=101, location="ORC^1^1"))
    assert seg(ack, "ERR")[1] == "ORC^1^1^101&Required field missing&HL70357"


def test_text_is_escaped() -> None:
    ack = build_ack(ORM, "AE", hl7_code=207, text="bad | field ^ with & and ~ \\ chars")
    e = seg(ack, "ERR")
    assert e[8] == "bad \\F\\ field \\S\\ with \\T\\ and \\R\\ \\E\\ chars"
    assert split_message(ack).first("ERR").get(8) == "bad | field ^ with & and ~ \\ chars"  # type: ignore[union-attr]


def test_ar_for_garbage_has_empty_msa2_and_default_version() -> None:
    garbage = (DATA / "garbage.hl7").read_text(encoding="utf-8")
    ack = ack_for_error(garbage, HL7ParseError("no MSH"), sending_application="TRIAGE")
    msh = seg(ack, "MSH")
    assert msh[11] == "2.5.1" and msh[8] == "ACK" and msh[2] == "TRIAGE"
    assert seg(ack, "MSA")[1:3] == ["AR", ""]
    assert seg(ack, "ERR")[3].startswith("100^")


def test_ar_for_broken_message_still_reads_msh_by_splitting() -> None:
    broken = ORM.replace("MSH|^~\\&|", "MSH|^^\\&|", 1)  # invalid encoding characters
    ack = build_ack(broken, "AR", hl7_code=102, text="bad MSH-2", location="MSH^1^2")
    assert seg(ack, "MSA")[1:3] == ["AR", "RIS00000101"]
    assert seg(ack, "MSH")[4:6] == ["RIS", "GENHOSP"]


def test_missing_msh10_gives_empty_msa2() -> None:
    raw = ORM.replace("RIS00000101", "", 1)
    ack = build_ack(raw, "AE", hl7_code=101)
    assert seg(ack, "MSA")[1:3] == ["AE", ""]


def test_new_control_ids_are_unique_20_characters_and_differ_in_a_forked_child() -> None:
    import os

    from triage.hl7.ack import new_control_id

    ids = [new_control_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 20 and i.isalnum() and i.upper() == i for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids must not repeat the parent's
        os.write(write, new_control_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    mine = new_control_id()
    assert child[:10] != mine[:10] and child not in ids
