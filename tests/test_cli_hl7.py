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
