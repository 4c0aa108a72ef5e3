"""The outbox sender against the test RIS: order per order, backoff, dead letters, rejections
with the RIS's text, validation before sending, and the order-change guard."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from outbox_kit import (
    RANK,
    Clock,
    actions,
    add,
    database,
    queue_oru,
    queue_xo,
    ref,
    row,
    rows,
    settings_for,
)
from support.ris_peer import FakeRIS, control_id

from triage.hl7.build import SenderIdentity, build_order_change
from triage.outbound.outbox import backoff_seconds
from triage.outbound.ris import RISNotifier
from triage.outbound.sender import OutboxSender
from triage.store import Study


@pytest.fixture
def ris() -> Iterator[FakeRIS]:
    peer = FakeRIS()
    yield peer
    peer.close()


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_seconds(15, 300, n) for n in range(0, 8)] == [
        0, 15, 30, 60, 120, 240, 300, 300,
    ]  # fmt: skip
    assert backoff_seconds(15, 300, 10_000) == 300


def test_lost_ack_is_resent_with_the_same_msh10_and_the_order_waits(tmp_path, ris) -> None:
    """The RIS stores A1 but its ACK is lost: A1 is sent again, byte for byte (same MSH-10),
    and A2 (same order) leaves only after A1 is acknowledged; B1 (another order) goes on."""
    settings = settings_for(tmp_path, ris.port)
    db, clock = database(settings), Clock()
    a1 = queue_xo(db, settings, "ACC-A", "A")
    b1 = queue_xo(db, settings, "ACC-B", "S")
    a2 = queue_oru(db, settings, "ACC-A")
    ris.lose_ack.add(row(db, a1).control_id)
    sender = OutboxSender(settings, db, rank=RANK, clock=clock)
    assert sender.send_pending() == 0  # A1 without an ACK: the round stops
    first = row(db, a1)
    assert (first.status, first.attempts, first.failures) == ("pending", 1, 1)
    assert "may have stored it" in first.error
    assert sender.send_pending() == 0  # the RIS backs off too: nothing before retry_seconds
    clock.advance(settings.retry_seconds)
    assert sender.send_pending() == 3
    ids = [row(db, i).control_id for i in (a1, b1, a2)]
    assert [control_id(m) for m in ris.messages] == [ids[0], ids[0], ids[1], ids[2]]
    assert ris.messages[0] == ris.messages[1]  # resent as it was
    assert ris.applied == ids and ris.acked == ids
    assert [r.status for r in rows(db)] == ["sent", "sent", "sent"]


def test_no_ack_on_a_kept_connection_is_one_failure_not_an_immediate_resend(tmp_path, ris) -> None:
    """A RIS that took a message and closed without its ACK on the connection kept from the
    message before got it twice in the same millisecond, and the count of failures was one
    short (found by an integration audit). Once written, a message waits retry_seconds."""
    settings = settings_for(tmp_path, ris.port)
    db, clock = database(settings), Clock()
    first = queue_xo(db, settings, "ACC-A", "A")
    sender = OutboxSender(settings, db, rank=RANK, clock=clock)
    assert sender.send_pending() == 1 and row(db, first).status == "sent"
    second = queue_xo(db, settings, "ACC-B", "S")
    ris.lose_ack.add(row(db, second).control_id)
    assert sender.send_pending() == 0
    lost = row(db, second)
    assert (lost.attempts, lost.failures) == (1, 1)
    assert [control_id(m) for m in ris.messages].count(lost.control_id) == 1
    clock.advance(settings.retry_seconds)
    assert sender.send_pending() == 1 and row(db, second).status == "sent"


def test_a_connection_the_ris_dropped_while_idle_costs_no_failure(tmp_path, ris) -> None:
    """The RIS closes connections it finds idle: the next message goes on a new connection,
    written once, with nothing counted against it."""
    settings = settings_for(tmp_path, ris.port)
    db, clock = database(settings), Clock()
    sender = OutboxSender(settings, db, rank=RANK, clock=clock)
    queue_xo(db, settings, "ACC-A", "A")
    assert sender.send_pending() == 1
    ris.down()  # drops the kept connection...
    ris.up()  # ...and listens again
    deadline = time.monotonic() + 5
    while sender._conn is not None and not sender._conn.peer_closed():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    later = queue_xo(db, settings, "ACC-B", "S")
    assert sender.send_pending() == 1
    sent = row(db, later)
    assert (sent.status, sent.attempts, sent.failures) == ("sent", 1, 0)
    assert [control_id(m) for m in ris.messages].count(sent.control_id) == 1


def test_a_message_that_never_gets_an_ack_becomes_a_dead_letter(tmp_path, ris) -> None:
    settings = settings_for(tmp_path, ris.port, ris_max_failures=3)
    db, clock = database(settings), Clock()
    stuck = queue_xo(db, settings, "ACC-A", "A")
    after = queue_oru(db, settings, "ACC-A")
    ris.ack_code = None  # takes the message, never answers
    sender = OutboxSender(settings, db, rank=RANK, clock=clock)
    waits = []
    for _ in range(3):
        before = clock.now
        sender.send_pending()
        due = row(db, stuck).next_attempt_at
        if due is not None:
            waits.append((due - before).total_seconds())
            clock.advance(waits[-1])
    dead = row(db, stuck)
    assert waits == [1.0, 2.0]  # retry_seconds, doubled; the third failure is the last
    assert (dead.status, dead.failures, dead.attempts) == ("dead", 3, 3)
    assert "3 tries without an ACK" in dead.error and dead.dead_at is not None
    assert row(db, after).attempts == 0  # nothing of the order overtook it
    log = actions(db)
    assert [(a.action, a.who, a.message_id, a.to_status) for a in log] == [
        ("dead-letter", "engine", stuck, "dead")
    ]
    ris.ack_code = "AA"  # the RIS recovers: the order's next message goes on
    clock.advance(settings.ris_backoff_max_seconds)
    assert sender.send_pending() == 1
    assert row(db, after).status == "sent"


def test_a_rejection_keeps_the_ris_error_text_and_the_order_goes_on(tmp_path, ris) -> None:
    settings = settings_for(tmp_path, ris.port)
    db, clock = database(settings), Clock()
    bad = queue_xo(db, settings, "ACC-9", "S")
    nxt = queue_oru(db, settings, "ACC-9")
    ris.reject[row(db, bad).control_id] = ("AE", "Unknown order ACC-9")
    sender = OutboxSender(settings, db, rank=RANK, clock=clock)
    assert sender.send_pending() == 1
    rejected = row(db, bad)
    assert (rejected.status, rejected.ack_code) == ("rejected", "AE")
    assert rejected.ris_error == "Unknown order ACC-9"
    assert "MSA|AE|" in rejected.ack and "Unknown order ACC-9" in rejected.error
    assert rejected.attempts == 1  # a rejection is not resent
    assert row(db, nxt).status == "sent"
    assert actions(db)[0].action == "dead-letter" and actions(db)[0].to_status == "rejected"


def test_a_message_failing_validation_is_a_dead_letter_never_sent(tmp_path, ris) -> None:
    settings = settings_for(tmp_path, ris.port)
    db, clock = database(settings), Clock()
    good = build_order_change(SenderIdentity.from_settings(settings), ref("ACC-V"), "S")
    no_orc = "\r".join(seg for seg in good.split("\r") if not seg.startswith("ORC"))
    broken = add(db, no_orc, "ACC-V", kind="ORM", priority="S")
    nxt = queue_oru(db, settings, "ACC-V")
    sender = OutboxSender(settings, db, rank=RANK, clock=clock)
    assert sender.send_pending() == 1
    dead = row(db, broken)
    assert dead.status == "dead" and dead.attempts == 0
    assert dead.error.startswith("invalid, not sent:") and "ORM_O01_ORDER.ORC" in dead.error
    assert [control_id(m) for m in ris.messages] == [row(db, nxt).control_id]
    assert row(db, nxt).validated


def test_the_ris_refusing_connections_charges_no_message(tmp_path, ris) -> None:
    settings = settings_for(tmp_path, ris.port)
    db, clock = database(settings), Clock()
    msg = queue_xo(db, settings, "ACC-D", "S")
    ris.down()
    sender = OutboxSender(settings, db, rank=RANK, clock=clock)
    sender.send_pending()
    assert sender.ris_down_until == clock.now + timedelta(seconds=1)  # retry_seconds
    r = row(db, msg)
    assert (r.status, r.attempts, r.failures, r.next_attempt_at) == ("pending", 0, 0, None)
    ris.up()
    clock.advance(1)
    assert sender.send_pending() == 1


def test_a_retry_by_hand_cuts_the_ris_wide_wait_short(tmp_path, ris) -> None:
    """`triage outbox retry` said "sent at the next round", but the round waited for the RIS
    to be tried again after its backoff (found by an integration audit)."""
    from triage.outbound.outbox import load_backoff, retry

    settings = settings_for(tmp_path, ris.port, retry_seconds=60)
    db, clock = database(settings), Clock()
    msg = queue_xo(db, settings, "ACC-E", "S")
    ris.down()
    sender = OutboxSender(settings, db, rank=RANK, clock=clock)
    sender.send_pending()
    assert sender.ris_down_until == clock.now + timedelta(seconds=60)
    ris.up()
    assert sender.send_pending() == 0  # still waiting
    retry(db, [msg], who="test")
    assert load_backoff(db) == (1, None)  # the failures stay, the wait is cut
    assert sender.send_pending() == 1 and row(db, msg).status == "sent"


def _study(accession: str, priority: str) -> Study:
    return Study(
        study_uid=f"1.2.3.{accession}",
        accession_number=accession,
        patient_id="MRN1",
        patient_name="DOE^JANE",
        modality="CT",
        engine_priority=priority,
        reasons=json.dumps(["AI positive"]),
    )


def test_an_order_change_never_announces_a_lower_priority(tmp_path, ris) -> None:
    """S queued for an order: a later A for the same order (another study, a re-link) is not
    queued; and an A retried after the RIS acknowledged S is not sent (superseded)."""
    settings = settings_for(tmp_path, ris.port)
    db, clock = database(settings), Clock()
    notifier = RISNotifier(settings, db, rank=RANK, clock=clock)
    with db.session() as s:
        assert notifier.queue(s, _study("ACC-X", "A"), None, [])
        assert notifier.queue(s, _study("ACC-X", "S"), None, [])
        assert notifier.queue(s, _study("ACC-X", "A"), None, [])  # not announced
        assert notifier.queue(s, _study("ACC-X", "S"), None, [])  # S again: nothing new
    assert [(r.kind, r.priority) for r in rows(db)] == [("ORM", "A"), ("ORM", "S")]
    notifier.send_pending()
    assert [r.status for r in rows(db)] == ["sent", "sent"]
    late = queue_xo(db, settings, "ACC-X", "R")  # e.g. a dead letter put back by hand
    assert notifier.sender.send_pending() == 0
    superseded = row(db, late)
    assert superseded.status == "dead" and "superseded" in superseded.error
    assert len(ris.messages) == 2


def test_omi_when_the_site_mapping_says_so(tmp_path, ris) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("version: 1\noutbound:\n  order_change: OMI^O23\n")
    settings = settings_for(tmp_path, ris.port, hl7_mapping_file=str(mapping))
    db = database(settings)
    notifier = RISNotifier(settings, db, rank=RANK)
    assert notifier.order_change == "OMI^O23"
    study = _study("ACC-O", "S")
    with db.session() as s:
        assert notifier.queue(s, study, None, [])
    notifier.send_pending()
    (sent,) = rows(db)
    assert (sent.kind, sent.status, sent.validated) == ("OMI", "sent", True)
    segments = [seg.split("|")[0] for seg in ris.messages[0].split("\r") if seg]
    assert segments == ["MSH", "PID", "ORC", "TQ1", "OBR", "IPC"]
    assert "|OMI^O23^OMI_O23|" in ris.messages[0]
    assert f"IPC|ACC-O|ACC-O|{study.study_uid}|ACC-O" in ris.messages[0]


def test_the_ris_backoff_survives_a_restart_and_the_order_holds(tmp_path, ris) -> None:
    """The RIS refuses twice; the engine restarts (a new sender on the same store): it waits out
    the stored backoff instead of trying at once, the next refusal doubles it again, and when
    the RIS returns the order's messages go in the order they were queued."""
    settings = settings_for(tmp_path, ris.port)  # retry 1 s, doubled, at most 60 s
    db, clock = database(settings), Clock()
    first = queue_xo(db, settings, "ACC-R", "A")
    second = queue_oru(db, settings, "ACC-R")
    ris.down()
    sender = OutboxSender(settings, db, rank=RANK, clock=clock)
    sender.send_pending()
    clock.advance(1)
    sender.send_pending()  # second refusal: 2 s
    assert sender.ris_down_until == clock.now + timedelta(seconds=2)
    assert sender.stats.connects == 2
    sender.close()

    restarted = OutboxSender(settings, db, rank=RANK, clock=clock)
    clock.advance(1)
    assert restarted.send_pending() == 0
    assert restarted.stats.connects == 0  # still within the stored wait: the RIS is not tried
    clock.advance(1)
    restarted.send_pending()  # third refusal: the wait doubles on, 4 s
    assert restarted.stats.connects == 1
    assert restarted.ris_down_until == clock.now + timedelta(seconds=4)

    ris.up()
    again = OutboxSender(settings, db, rank=RANK, clock=clock)  # another restart
    clock.advance(3)
    assert again.send_pending() == 0 and again.stats.connects == 0
    clock.advance(1)
    assert again.send_pending() == 2
    assert [control_id(m) for m in ris.messages] == [
        row(db, first).control_id,
        row(db, second).control_id,
    ]
    assert again.ris_down_until is None or again.ris_down_until <= clock.now
    assert OutboxSender(settings, db, rank=RANK, clock=clock).send_pending() == 0  # nothing left
