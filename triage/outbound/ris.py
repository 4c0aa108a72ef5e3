"""The RIS outbox: messages are queued in the transaction that raised a study's priority, then
sent in order over MLLP. The ACK is checked (MSA-1 AA/CA, MSA-2 = our MSH-10).

- RIS unreachable: the message stays pending and is retried after ``retry_seconds``; later
  messages wait behind it, so the RIS sees them in order.
- RIS answers AE/AR or acknowledges another message: the message is marked ``rejected`` with
  the ACK kept for the integration engineer; it is not resent.
- No RIS configured: the message is stored as ``skipped`` (the log says so once).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlmodel import Session, col, select

from triage.config import Settings
from triage.errors import RISRejected, RISUnavailable
from triage.hl7.build import AIResult, OrderRef, build_ai_result, build_order_change
from triage.hl7.client import send_and_check
from triage.hl7.parse import control_id_of
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


class RISNotifier:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._warned = False

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
        status = "pending" if self.settings.ris_configured else "skipped"
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
        messages: list[tuple[str, str]] = []
        if order_change:
            reason = reasons[-1] if reasons else "AI triage"
            change = build_order_change(self.settings, ref, study.engine_priority, reason=reason)
            messages.append(("ORM", change))
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
            oru = build_ai_result(self.settings, ref, result, corrected=corrected)
            messages.append(("ORU", oru))
        for kind, raw in messages:
            session.add(
                OutboundMessage(
                    study_uid=study.study_uid,
                    kind=kind,
                    control_id=control_id_of(raw),
                    raw=raw,
                    status=status,
                )
            )
        return True

    def send_pending(self) -> None:
        """Send due pending messages in queue order; stop at the first unreachable RIS."""
        s = self.settings
        if not s.ris_configured:
            return
        now = utcnow()
        with self.db.session() as session:
            pending = session.exec(
                select(OutboundMessage)
                .where(OutboundMessage.status == "pending")
                .order_by(col(OutboundMessage.id))
            ).all()
        for msg in pending:
            if msg.next_attempt_at is not None and msg.next_attempt_at > now:
                return  # keep the order: nothing overtakes a message that is waiting
            msg.attempts += 1
            try:
                ack = send_and_check(s.ris_host, s.ris_port, msg.raw, s.ris_timeout_seconds)
            except RISUnavailable as exc:
                msg.error = str(exc)
                msg.next_attempt_at = utcnow() + timedelta(seconds=s.retry_seconds)
                self._save(msg)
                log.warning(
                    "RIS unavailable (%s); %s %s retried in %.0fs",
                    exc,
                    msg.kind,
                    msg.control_id,
                    s.retry_seconds,
                )
                return
            except RISRejected as exc:
                msg.status = "rejected"
                msg.error = str(exc)
                msg.ack = getattr(exc, "ack", "")
                self._save(msg)
                log.error("RIS rejected %s %s: %s", msg.kind, msg.control_id, exc)
                continue
            msg.status = "sent"
            msg.ack = ack
            msg.error = ""
            msg.sent_at = utcnow()
            self._save(msg)
            log.info("sent %s %s for study %s", msg.kind, msg.control_id, msg.study_uid)

    def _save(self, msg: OutboundMessage) -> None:
        with self.db.session() as session:
            session.add(msg)
