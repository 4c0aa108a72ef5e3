"""`triage hl7 check` (triage/cli_hl7.py): what the listener would take from a message file,
field by field, or why it would refuse it. `triage hl7 replay` is tested with the listener's
store (tests/ingest/test_hl7_listener.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from triage.cli import main

DATA = Path(__file__).resolve().parent / "data" / "hl7"


def own(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8").strip("\n").replace("\n", "\r")


def test_check_command_accepts_and_shows_sources(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["hl7", "check", str(DATA / "orm_nw_v231.hl7"), "--ack"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "priority           A  from OBR-27.6" in out
    assert "accession          ACC-CTPA-24007  from OBR-18.1" in out
    assert "answer: AA" in out and "MSA|AA|RIS00000102" in out


def test_check_command_rejects_with_exit_status(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["hl7", "check", str(DATA / "no_msh10.hl7")]) == 1
    out = capsys.readouterr().out
    assert "rejected: AE ERR-3 101 at MSH^1^10" in out
    # several messages in one file, MLLP-framed, one bad
    framed = tmp_path / "two.mllp"
    framed.write_bytes(
        b"\x0b" + own("orm_xo_v251.hl7").encode() + b"\x1c\x0d"
        b"\x0b" + own("bad_msh12.hl7").encode() + b"\x1c\x0d"
    )
    assert main(["hl7", "check", str(framed)]) == 1
    out = capsys.readouterr().out
    assert "message 1" in out and "message 2" in out and "ERR-3 203" in out


def test_check_command_with_bad_mapping(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "m.yaml"
    bad.write_text("version: 1\nsenders: 3\n")
    assert main(["hl7", "check", str(DATA / "orm_nw_v231.hl7"), "--mapping", str(bad)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err


def test_check_ack_is_printed_whole_when_redirected(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not on a terminal, rich wrapped at 80 columns: the ACK's MSH (and its MSH-10) came out
    on two lines, so an ACK copied from the output was not the ACK."""
    monkeypatch.setenv("COLUMNS", "40")  # narrower than any ACK line
    assert main(["hl7", "check", str(DATA / "bad_msh12.hl7"), "--ack"]) == 1
    out = capsys.readouterr().out
    msh = next(line for line in out.splitlines() if line.startswith("MSH|"))
    assert len(msh) > 40 and msh.count("|") >= 11, msh
    msa = next(line for line in out.splitlines() if line.startswith("MSA|"))
    assert msa.startswith("MSA|AE|") and len(msa.split("|")) >= 3
    assert "version V2.5" in out and "vV" not in out


def test_unsupported_version_answer_fits_msa3(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """MSA-3 is cut at 80 characters: the full list of versions lost its last ones there."""
    old = tmp_path / "v21.hl7"
    old.write_text(own("orm_nw_v251.hl7").replace("|P|2.5.1", "|P|2.1", 1))
    assert main(["hl7", "check", str(old), "--ack"]) == 1
    msa = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("MSA|"))
    text = msa.split("|")[3]
    assert len(text) <= 80 and text.endswith("supported: 2.2 to 2.6"), text


def test_encoding_characters_error_says_what_is_wrong() -> None:
    from triage.hl7.inbound import evaluate

    ev = evaluate("MSH|^^\\&|RIS|H|T|H|20240101||ORM^O01|M2|P|2.5.1\rPID|1||X\r")
    assert ev.error is not None and ev.error.hl7_code == 102
    assert "used twice" in str(ev.error) and "'" not in str(ev.error)


def test_replay_of_an_unknown_id_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "var").mkdir()
    assert main(["hl7", "replay", "--id", "9999", "--data-dir", str(tmp_path / "var")]) == 1
    assert "no HL7 message 9999" in capsys.readouterr().out


def test_check_says_an_acknowledgment_gets_no_answer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    f = tmp_path / "ack.hl7"
    f.write_text(
        "MSH|^~\\&|RIS|HOSP|TRIAGE|TRIAGE|20261207120000||ACK^O01^ACK|A1|P|2.5.1\rMSA|AA|X1\r"
    )
    assert main(["hl7", "check", str(f), "--ack"]) == 0
    out = capsys.readouterr().out
    assert "answer: nothing (an acknowledgment is not acknowledged; outcome AA)" in out
    assert "MSA|AA|A1" not in out
