"""``triage worklist [--follow]`` and ``triage status``."""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from sqlmodel import select

from triage.cli import main
from triage.store.models import AuditEvent
from triage.web.feed import WorklistFeed
from triage.web.terminal import follow_worklist
from triage.web.views import worklist_rows

from .conftest import LIVE_TOKEN, seed_study


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")


def test_worklist_prints_the_pages_rows_most_urgent_first(db, rules, data_dir, capsys):
    seed_study(
        db,
        rules,
        data_dir,
        study_uid="1.1",
        accession="ROUTINE9",
        probability=0.1,
        patient_class="O",
        location="OPD^1",
    )
    seed_study(db, rules, data_dir, study_uid="1.2", accession="BLEED9", probability=0.91)
    seed_study(
        db,
        rules,
        data_dir,
        study_uid="1.3",
        accession="PEND9",
        state="ai_pending",
        probability=None,
    )
    assert main(["worklist", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert out.index("BLEED9") < out.index("ROUTINE9")
    assert "STAT (S)" in out and "Intracranial hemorrhage suspected" in out and "0.91" in out
    assert "AI pending" in out and "Emergency (E) / ED 1" in out
    assert "synthetic phantoms" in out
    with db.session() as s:
        seen = s.exec(select(AuditEvent).where(AuditEvent.obj == "worklist")).all()
    assert len(seen) == 1 and seen[0].address.startswith("cli:")


def test_worklist_without_a_database_says_where_it_looked(tmp_path, capsys):
    assert main(["worklist", "--data-dir", str(tmp_path / "none")]) == 1
    assert "no engine database at" in capsys.readouterr().err


def test_follow_redraws_when_a_study_arrives(db, rules, data_dir):
    console = Console(record=True, width=220, force_terminal=True)
    feed = WorklistFeed(db, lambda: rules, worklist_rows)

    def arrive(_seconds: float) -> None:
        seed_study(db, rules, data_dir, study_uid="2.1", accession="LATECOMER", probability=0.9)

    follow_worklist(feed, console, sleep=arrive, rounds=1)
    text = console.export_text()
    assert "0 studies" in text and "LATECOMER" in text
    assert text.index("0 studies") < text.index("LATECOMER")


def test_status_reads_endpoints_json_and_names_what_is_not_ready(live_server, capsys, monkeypatch):
    monkeypatch.setenv("TRIAGE_API_TOKEN", LIVE_TOKEN)  # details need credentials
    port = int(live_server.url.rsplit(":", 1)[1])
    (live_server.data_dir / "endpoints.json").write_text(json.dumps({"http": ["127.0.0.1", port]}))
    args = ["status", "--data-dir", str(live_server.data_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "dicom" in out and "hl7" in out and "ready" in out and "NOT READY" not in out
    live_server.health["triton"] = {"ready": False, "detail": "starting"}
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "triton" in out and "NOT READY" in out and "detail=starting" in out


def test_status_without_the_token_shows_states_and_says_what_is_missing(live_server, capsys):
    port = int(live_server.url.rsplit(":", 1)[1])
    (live_server.data_dir / "endpoints.json").write_text(json.dumps({"http": ["127.0.0.1", port]}))
    live_server.health["triton"] = {"ready": False, "detail": "cannot reach 10.1.2.4:8001"}
    assert main(["status", "--data-dir", str(live_server.data_dir)]) == 1
    out = capsys.readouterr().out
    assert "triton" in out and "NOT READY" in out and "10.1.2.4" not in out
    assert "need credentials" in out and "TRIAGE_API_TOKEN" in out


def test_status_says_when_the_ris_is_not_answering(live_server, capsys):
    """The RIS refusing connections showed "ready" and exit 0 (found by an integration audit):
    the engine still takes everything in, but nothing reaches the RIS."""
    port = int(live_server.url.rsplit(":", 1)[1])
    (live_server.data_dir / "endpoints.json").write_text(json.dumps({"http": ["127.0.0.1", port]}))
    args = ["status", "--data-dir", str(live_server.data_dir)]
    live_server.health["ris"] = {
        "ready": True,
        "configured": True,
        "failing": 4,
        "next_try": "2026-12-07T22:30:00+00:00",
    }
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "NOT ANSWERING" in out and "failing=4" in out


def test_status_falls_back_to_the_configured_port(live_server, tmp_path, capsys):
    port = live_server.url.rsplit(":", 1)[1]
    args = ["status", "--data-dir", str(tmp_path), "--http-port", port]
    assert main(args) == 0  # no endpoints.json in tmp_path
    assert live_server.url in capsys.readouterr().out


def test_status_when_no_engine_answers(tmp_path, capsys):
    from support.net import free_port

    args = ["status", "--data-dir", str(tmp_path), "--http-port", str(free_port())]
    assert main(args) == 2
    assert "no engine answers" in capsys.readouterr().out
