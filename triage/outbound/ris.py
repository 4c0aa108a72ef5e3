"""The RIS outbox: messages are queued in the transaction that raised a study's priority, then
sent in order per order over MLLP by :class:`~triage.outbound.sender.OutboxSender` (states,
backoff and dead letters: :mod:`triage.outbound.outbox`). The ACK is checked (MSA-1 AA/CA,
MSA-2 = our MSH-10).

- The order change is ORM^O01, or OMI^O23 when ``rules/hl7-mapping.yaml`` says
  ``outbound: order_change: OMI^O23``.
- An order change is not queued when the order was already sent (or is about to be sent) the
  same or a more urgent priority: the RIS is never told a lower one.
- No RIS configured: the message is stored as ``skipped`` (the log says so once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlmodel import Session

from triage.config import Settings
from triage.hl7.build import (
    AIResult,
    OrderRef,
    SenderIdentity,
    build_ai_result,
    build_order_change,
)
from triage.hl7.header import control_id_of
from triage.outbound.outbox import DEAD, PENDING, SENT, SKIPPED, announced_rank
from triage.outbound.sender import OutboxSender
from triage.store import Database, Finding, Order, OutboundMessage, Study
from triage.store.models import utcnow
from triage.store.repo import study_reasons

log = logging.getLogger("triage.outbound")

FINDING_NAMES = {"ich": "Intracranial hemorrhage", "pe": "Pulmonary embolism"}


def _order_ref(study: Study, order: Order | None) -> OrderRef:
    if order is not None:
        return OrderRef.from_row(
            order,
            accession_number=order.accession_number or study.accession_number,
            study_uid=order.study_uid or study.study_uid,
        )
    return OrderRef(
        accession_number=study.accession_number,
        patient_id=study.patient_id,
        patient_name=study.patient_name,
        patient_class=study.patient_class,
        modality=study.modality,
        study_uid=study.study_uid,
    )


def _finding(f: Finding) -> str:
    if f.status == "not_assessable":
        return "not_assessable"
    return "positive" if f.positive else "negative"


def order_key_of(ref: OrderRef) -> str:
    """What orders the outbox: the accession number, else the filler order number."""
    return ref.accession_number or ref.filler_order_number


class RISNotifier:
    """Queues what the RIS must be told (:meth:`queue`, in the caller's transaction) and sends
    it (:meth:`send_pending`).

    ``rank`` (priority code -> urgency, 0 = most urgent) defaults to the order of the
    priorities in ``<rules_dir>/urgency.yaml``; ``order_change`` (ORM^O01 or OMI^O23) to the
    site mapping's ``outbound: order_change``; ``clock`` is for tests.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        rank: dict[str, int] | None = None,
        order_change: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.db = db
        self._warned = False
        if rank is None:
            from triage.scoring import load_urgency_rules

            urgency = load_urgency_rules(settings.rules_dir / "urgency.yaml")
            rank = {code: urgency.level(code).rank for code in urgency.priorities}
        self.rank = rank
        if order_change is None:
            from triage.ingest.hl7_store import mapping_for

            order_change = mapping_for(settings).order_change
        self.order_change = order_change
        self.sender = OutboxSender(settings, db, rank=rank, clock=clock)

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        self._settings = value
        self.sender_identity = SenderIdentity.from_settings(value)  # MSH-3..6 of what we send
        if hasattr(self, "sender"):
            self.sender.settings = value

    def queue(
        self,
        session: Session,
        study: Study,
        order: Order | None,
        findings: list[Finding],
        *,
        order_change: bool = True,
        corrected: bool = False,
    ) -> bool:
        """Queue ORM^O01 XO (the new priority, when ``order_change``) and one ORU^R01 per AI
        result of the study (result status C when ``corrected``).

        Returns False, queuing nothing, when the study has neither an accession number nor an
        order (the RIS would not know which order the messages are about); the pipeline then
        tries again once the order is linked.
        """
        ref = _order_ref(study, order)
        status = PENDING if self.settings.ris_configured else SKIPPED
        if not self.settings.ris_configured and not self._warned:
            log.warning("no RIS configured: order changes and AI results are stored, not sent")
            self._warned = True
        reasons = study_reasons(study)
        if not (ref.accession_number or ref.filler_order_number):
            log.warning(
                "study %s (priority %s) has no accession number or order yet: the RIS is "
                "told once the order is linked",
                study.study_uid,
                study.engine_priority,
            )
            return False
        key = order_key_of(ref)
        messages: list[tuple[str, str, str]] = []
        if order_change:
            best = announced_rank(session, key, self.rank, (PENDING, SENT, DEAD))
            mine = self.rank.get(study.engine_priority, len(self.rank))
            if best is not None and best[0] <= mine:
                log.info(
                    "study %s: order %s was already sent priority %s; %s is not announced",
                    study.study_uid,
                    key,
                    best[1],
                    study.engine_priority,
                )
            else:
                reason = reasons[-1] if reasons else "AI triage"
                change = build_order_change(
                    self.sender_identity,
                    ref,
                    study.engine_priority,
                    reason=reason,
                    message=self.order_change,
                )
                messages.append((self.order_change[:3], change, study.engine_priority))
        for f in findings:
            if f.status not in ("done", "not_assessable"):
                continue
            result = AIResult(
                model_name=f.model_name,
                finding=_finding(f),
                model_version=f.model_version,
                probability=f.probability,
                threshold=f.threshold,
                finding_name=FINDING_NAMES.get(f.model_name, ""),
                reasons=reasons,
            )
            oru = build_ai_result(self.sender_identity, ref, result, corrected=corrected)
            messages.append(("ORU", oru, ""))
        for kind, raw, priority in messages:
            session.add(
                OutboundMessage(
                    study_uid=study.study_uid,
                    kind=kind,
                    control_id=control_id_of(raw),
                    raw=raw,
                    status=status,
                    order_key=key,
                    priority=priority,
                )
            )
        return True

    def send_pending(self) -> None:
        """Send the pending messages that are due, in order per order (one round)."""
        self.sender.send_pending()

    def close(self) -> None:
        self.sender.close()
