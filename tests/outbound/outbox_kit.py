"""Shared helpers for the outbox tests: settings, a clock the test moves, queued messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import col, select

from triage.config import Settings, load_settings
from triage.hl7.build import (
    AIResult,
    OrderRef,
    SenderIdentity,
    build_ai_result,
    build_order_change,
)
from triage.hl7.header import control_id_of
from triage.store import Database, OutboundMessage
from triage.store.models import OutboxAction

RANK = {"S": 0, "A": 1, "T": 2, "R": 3, "P": 4, "C": 5}


class Clock:
    """UTC "now" that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def settings_for(tmp_path: Path, port: int, **extra: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": str(tmp_path),
        "ris_host": "127.0.0.1",
        "ris_port": port,
        "ris_timeout_seconds": 2.0,
        "retry_seconds": 1.0,
        "ris_backoff_max_seconds": 60.0,
        "ris_max_failures": 3,
    }
    values.update(extra)
    return load_settings(environ={}, overrides=values)


def database(settings: Settings) -> Database:
    db = Database(settings.resolved_database_url)
    db.create_all()
    return db


def ref(accession: str) -> OrderRef:
    return OrderRef(
        accession_number=accession,
        placer_order_number=f"P-{accession}^EPR",
        filler_order_number=f"F-{accession}^RIS",
        patient_id="MRN1",
        patient_name="DOE^JANE",
        patient_class="E",
        procedure_code="CTH",
        procedure_text="CT head",
        modality="CT",
        study_uid=f"1.2.826.0.1.3680043.8.498.{len(accession)}",
    )


def queue_xo(db: Database, settings: Settings, accession: str, priority: str, **kw: str) -> int:
    sender = SenderIdentity.from_settings(settings)
    raw = build_order_change(sender, ref(accession), priority, reason="AI", **kw)
    kind = "OMI" if kw.get("message") == "OMI^O23" else "ORM"
    return add(db, raw, accession, kind=kind, priority=priority)


def queue_oru(db: Database, settings: Settings, accession: str) -> int:
    result = AIResult(model_name="ich", finding="positive", probability=0.9, threshold=0.5)
    raw = build_ai_result(SenderIdentity.from_settings(settings), ref(accession), result)
    return add(db, raw, accession, kind="ORU")


def add(
    db: Database,
    raw: str,
    accession: str,
    *,
    kind: str,
    priority: str = "",
    validated: bool = False,
) -> int:
    with db.session() as s:
        row = OutboundMessage(
            study_uid=f"study-{accession}",
            kind=kind,
            control_id=control_id_of(raw),
            raw=raw,
            order_key=accession,
            priority=priority,
            validated=validated,
        )
        s.add(row)
        s.flush()
        assert row.id is not None
        return row.id


def rows(db: Database) -> list[OutboundMessage]:
    with db.session() as s:
        return list(s.exec(select(OutboundMessage).order_by(col(OutboundMessage.id))).all())


def row(db: Database, message_id: int) -> OutboundMessage:
    with db.session() as s:
        found = s.get(OutboundMessage, message_id)
        assert found is not None
        return found


def actions(db: Database) -> list[OutboxAction]:
    with db.session() as s:
        return list(s.exec(select(OutboxAction).order_by(col(OutboxAction.id))).all())
