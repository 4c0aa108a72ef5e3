"""`triage outbox list | show | retry | discard` on the database of the engine's settings."""

from __future__ import annotations

import getpass

import pytest
from outbox_kit import RANK, Clock, actions, database, queue_oru, queue_xo, row, settings_for
from support.ris_peer import FakeRIS

from triage.cli import main
from triage.outbound.sender import OutboxSender


@pytest.fixture
def outbox(tmp_path, monkeypatch):
    """A rejected XO (AE with the RIS's text), a sent ORU, and a pending ORU, in the database
    of TRIAGE_DATA_DIR (as `triage serve` would use it)."""
    ris = FakeRIS()
    settings = settings_for(tmp_path, ris.port)
    db = database(settings)
    bad = queue_xo(db, settings, "ACC-1", "S")
    good = queue_oru(db, settings, "ACC-1")
    ris.reject[row(db, bad).control_id] = ("AE", "Order ACC-1 is closed")
    OutboxSender(settings, db, rank=RANK, clock=Clock()).send_pending()
    ris.close()
    waiting = queue_oru(db, settings, "ACC-2")
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("TRIAGE_DATABASE_URL", raising=False)
    monkeypatch.delenv("TRIAGE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./triage.toml
    yield db, bad, good, waiting


def test_list_shows_counts_and_dead_letters_with_the_ris_text(outbox, capsys) -> None:
    db, bad, good, waiting = outbox
    assert main(["outbox", "list"]) == 0
    out = capsys.readouterr().out
    assert "pending 1" in out and "sent 1" in out and "rejected 1" in out
    assert main(["outbox", "list", "--dead"]) == 0
    out = capsys.readouterr().out
    assert "Order ACC-1 is closed" in out and row(db, bad).control_id in out
    assert row(db, good).control_id not in out and row(db, waiting).control_id not in out


def test_show_prints_message_ack_and_action_log(outbox, capsys) -> None:
    _, bad, _, _ = outbox
    assert main(["outbox", "show", str(bad)]) == 0
    out = capsys.readouterr().out
    assert "rejected" in out and "Order ACC-1 is closed" in out
    assert "ORC|XO|" in out and "MSA|AE|" in out  # the message and the RIS's ACK
    assert "dead-letter" in out and "engine" in out


def test_retry_and_discard_are_recorded_with_who(outbox, capsys) -> None:
    db, bad, _, waiting = outbox
    assert main(["outbox", "retry", str(bad), "--note", "order reopened"]) == 0
    assert row(db, bad).status == "pending" and row(db, bad).failures == 0
    assert main(["outbox", "discard", str(waiting)]) == 0
    assert row(db, waiting).status == "discarded"
    log = [(a.action, a.message_id, a.from_status, a.to_status, a.note) for a in actions(db)]
    assert log[1:] == [
        ("retry", bad, "rejected", "pending", "order reopened"),
        ("discard", waiting, "pending", "discarded", ""),
    ]
    assert all(a.who.startswith(getpass.getuser() + "@") for a in actions(db)[1:])
    assert "retry: message" in capsys.readouterr().out


def test_retry_and_discard_are_in_the_audit_log(outbox, capsys) -> None:
    from triage.auth.audit import events

    db, bad, _, waiting = outbox
    assert main(["outbox", "retry", str(bad)]) == 0
    assert main(["outbox", "discard", str(waiting)]) == 0
    got = [(e.action, e.obj, e.address) for e in events(db)]
    me = f"cli:{getpass.getuser()}"
    assert got == [
        ("outbox-retry", f"outbox:{bad}", me),
        ("outbox-discard", f"outbox:{waiting}", me),
    ]
    assert all(e.user.startswith(getpass.getuser() + "@") for e in events(db))


def test_a_sent_message_cannot_be_retried_or_discarded(outbox, capsys) -> None:
    db, _, good, _ = outbox
    assert main(["outbox", "retry", str(good)]) == 1
    assert "only a dead letter" in capsys.readouterr().err
    assert main(["outbox", "discard", str(good), "999999"]) == 1
    assert row(db, good).status == "sent" and len(actions(db)) == 1
