"""The HL7 message store: every inbound message stored raw with its ACK, and applied, in
group-committed batches (what the MLLP listener's AA means).

For each message of a batch (:meth:`MessageStore.process_batch`): decode it (MSH-18), read it
with the sender's site mapping (:mod:`triage.hl7.inbound`), recognise a resend (same MSH-3,
MSH-4, MSH-10 and content as a message already accepted), build its ACK, store the raw message
with that ACK, and apply it (orders upserted by accession number + sending facility;
ADT^A08/A31 patient names; ORU^R01 final reports' coded results as feedback). The whole
batch is committed in ONE transaction (SQLite WAL, ``synchronous=FULL``: one fsync for the
batch). The statements and transactions are
:mod:`triage.store.messages`' (on SQLite the store's own sqlite3 connection, DBAPI cursor,
one ``BEGIN IMMEDIATE`` per batch; other databases go through SQLAlchemy Core).

So AA (enhanced mode: CA) means: stored durably and applied. A resend of an accepted message
gets the ACK sent the first time and changes nothing. A batch that fails is retried one
message per transaction, so one bad message never costs the others their AA; a message whose
own transaction fails is answered AE 207 (nothing of it applied). ``triage hl7 replay``
reprocesses stored messages (:meth:`MessageStore.replay`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from triage.config import Settings
from triage.errors import HL7Error
from triage.feedback import report_feedback_row
from triage.hl7.header import MessageHeader, peek_header
from triage.hl7.inbound import (
    CANCEL_CONTROLS,
    Evaluation,
    canonical,
    decode_payload,
    evaluate,
    make_ack,
)
from triage.hl7.mapping import DEFAULT_MAPPING, HL7Mapping, load_mapping_or_defaults
from triage.hl7.orders import ParsedOrder
from triage.store.db import Database, is_database_error
from triage.store.messages import MessageOps, MessageRows, ops_for
from triage.store.models import utcnow

__all__ = ["MessageStore", "Outcome", "ReplayResult", "mapping_for"]

log = logging.getLogger(__name__)

ACCEPTED = frozenset({"AA", "CA"})

# Order fields copied from the message when the message has a value for them.
_ORDER_FIELDS = (
    "placer_order_number",
    "filler_order_number",
    "patient_id",
    "patient_name",
    "patient_class",
    "ordered_priority",
    "procedure_code",
    "procedure_text",
    "modality",
    "study_uid",
    "ordering_location",
    "reason_for_study",
    "sending_application",
)


def mapping_for(settings: Settings) -> HL7Mapping:
    """The site mapping the settings name (``hl7_mapping_file``, else
    ``<rules_dir>/hl7-mapping.yaml`` when it exists, else the built-in defaults)."""
    if settings.hl7_mapping_file:
        return load_mapping_or_defaults(Path(settings.hl7_mapping_file), required=True)
    return load_mapping_or_defaults(settings.rules_dir / "hl7-mapping.yaml")


@dataclass
class Outcome:
    """What happened to one message. ``ack`` is the frame to send ("" when the sender asked
    for none, enhanced mode)."""

    ack: str
    ack_code: str
    order_ids: list[int] = field(default_factory=list)
    message_id: int | None = None
    error: str = ""
    duplicate_of: int | None = None
    notes: list[str] = field(default_factory=list)
    codec: str = "utf-8"  # the message's character set; the ACK is written in it


class MessageStore:
    """Stores and applies inbound messages; used by the listener's writer thread and by
    ``triage hl7 replay``. Not thread-safe: one writer at a time. Its transactions are
    ``self.rows``' (:class:`~triage.store.messages.MessageRows`); :meth:`close` releases
    its connection."""

    def __init__(self, settings: Settings, db: Database, mapping: HL7Mapping | None = None):
        self.settings = settings
        self.db = db
        self.mapping = mapping or DEFAULT_MAPPING
        self.rows = MessageRows(db)

    def close(self) -> None:
        """Close the store's own SQLite connection (reopened when needed again)."""
        self.rows.close()

    # -- acknowledgements --------------------------------------------------------------------

    def ack(
        self, header: MessageHeader | None, code: str, error: HL7Error | None = None
    ) -> tuple[str, str]:
        """(ACK text, MSA-1) for an outcome; see :func:`triage.hl7.inbound.make_ack`."""
        return make_ack(
            header,
            code,
            error,
            sending_application=self.settings.sending_application,
            sending_facility=self.settings.sending_facility,
        )

    # -- batches -----------------------------------------------------------------------------

    def process_batch(self, items: Sequence[tuple[bytes, str]]) -> list[Outcome]:
        """Decode, evaluate, store and apply ``(payload, peer)`` items in one transaction.
        Never raises: a failure becomes AE 207 for the message(s) concerned."""
        evaluations = [self.read_frame(payload) for payload, _ in items]
        return self.store_batch(evaluations, [peer for _, peer in items])

    def read_frame(self, payload: bytes) -> Evaluation:
        """One frame's payload decoded (MSH-18) and read with the sender's mapping; nothing
        stored. Never raises: a failure to read becomes an AE 207 evaluation, stored and
        answered like any rejected message."""
        try:
            text, codec, note = decode_payload(payload)
            ev = evaluate(text, self.mapping, codec)
        except Exception as exc:  # a defect in reading: the peer still gets its answer
            log.exception("HL7 frame of %d bytes: reading failed", len(payload))
            raw = payload.decode("latin-1")
            ev = Evaluation(raw=raw, codec="latin-1", header=peek_header(raw), kind="rejected")
            ev.error = HL7Error(f"could not read the message: {exc}", ack_code="AE", hl7_code=207)
            return ev
        if note:
            ev.notes.insert(0, note)
        return ev

    def store_batch(self, evaluations: Sequence[Evaluation], peers: Sequence[str]) -> list[Outcome]:
        """Store and apply evaluated messages in one transaction (one by one if it fails)."""
        outcomes = self._store_batch(evaluations, peers)
        for ev, outcome in zip(evaluations, outcomes, strict=True):
            outcome.codec = ev.codec
        return outcomes

    def _store_batch(
        self, evaluations: Sequence[Evaluation], peers: Sequence[str]
    ) -> list[Outcome]:
        try:
            return self._transaction(evaluations, peers)
        except Exception as exc:
            if len(evaluations) > 1:
                log.warning("HL7 batch of %d failed (%s); one by one", len(evaluations), exc)
                return [
                    self._store_batch([ev], [peer])[0]
                    for ev, peer in zip(evaluations, peers, strict=True)
                ]
            return [self._failed(evaluations[0], peers[0], exc)]

    def _transaction(
        self, evaluations: Sequence[Evaluation], peers: Sequence[str]
    ) -> list[Outcome]:
        with self.rows.batch() as ops:
            return [self._store(ops, ev, peer) for ev, peer in zip(evaluations, peers, strict=True)]

    def _failed(self, ev: Evaluation, peer: str, exc: Exception) -> Outcome:
        if is_database_error(exc) or isinstance(exc, OSError):
            log.error("HL7 from %s: database failure: %s", peer, exc)
        else:
            log.exception("HL7 from %s: applying failed", peer)
        err = HL7Error(f"could not store the message: {exc}", ack_code="AE", hl7_code=207)
        ack, code = self.ack(ev.header, "AE", err)
        message_id = self.record_failure(ev.raw, peer, ack, code, str(err), ev.header)
        return Outcome(ack, code, message_id=message_id, error=str(err))

    def record_failure(
        self,
        raw: str,
        peer: str,
        ack: str,
        ack_code: str,
        error: str,
        header: MessageHeader | None = None,
    ) -> int | None:
        """Store a message we could not take (best effort: the database may be what failed)."""
        try:
            with self.rows.transaction() as ops:
                return self._insert_message(
                    ops, raw, peer, header or peek_header(raw), ack, ack_code, error
                )
        except Exception as exc:
            log.error("HL7 from %s: could not record the %s answer: %s", peer, ack_code, exc)
            return None

    # -- one message, inside the batch transaction -------------------------------------------

    def _store(self, ops: MessageOps, ev: Evaluation, peer: str) -> Outcome:
        header = ev.header
        if ev.error is not None:
            ack, code = self.ack(header, ev.code, ev.error)
            log.info("HL7 from %s answered %s: %s", peer, code, ev.error)
            mid = self._insert_message(ops, ev.raw, peer, header, ack, code, str(ev.error))
            return Outcome(ack, code, message_id=mid, error=str(ev.error))
        assert header is not None  # no error: the header was read
        notes = list(ev.notes)
        dup = self._find_resend(ops, ev, header, notes)
        if dup is not None:
            row_id, ack, code = dup
            log.info(
                "HL7 from %s: %s %s is a resend of message #%d; answered %s again",
                peer,
                header.type_code,
                header.control_id,
                row_id,
                code or "nothing",
            )
            return Outcome(ack, code, message_id=row_id, duplicate_of=row_id)
        ack, code = self.ack(header, "AA")
        mid = self._insert_message(ops, ev.raw, peer, header, ack, code, "; ".join(notes))
        before = len(ev.notes)
        order_ids = self.apply(ops, ev, mid)
        if len(ev.notes) > before:  # what applying found (a cancel of an unknown order...)
            notes += ev.notes[before:]
            ops.mark_processed(mid, "; ".join(notes)[:2000])  # shown with the message
        return Outcome(ack, code, order_ids=order_ids, message_id=mid, notes=notes)

    @staticmethod
    def _find_resend(
        ops: MessageOps, ev: Evaluation, header: MessageHeader, notes: list[str]
    ) -> tuple[int, str, str] | None:
        rows = ops.resends(header.control_id)
        if not rows:
            return None
        content = canonical(ev.raw)
        reused: int | None = None  # the first accepted message with this MSH-10, other content
        # every accepted message with this MSH-10 is compared: a sender whose counter wrapped
        # reuses an MSH-10, and a resend of its second message is still a resend
        for row_id, application, facility, raw, ack, ack_code in rows:
            if (
                ack_code in ACCEPTED
                and application == header.sending_application
                and facility == header.sending_facility
            ):
                if canonical(raw) == content:
                    return int(row_id), str(ack), str(ack_code)
                if reused is None:
                    reused = int(row_id)
        if reused is not None:
            notes.append(
                f"MSH-10 {header.control_id} reused with different content "
                f"(first seen in message #{reused}); applied as a new message"
            )
        return None

    @staticmethod
    def _insert_message(
        ops: MessageOps,
        raw: str,
        peer: str,
        header: MessageHeader | None,
        ack: str,
        ack_code: str,
        error: str = "",
    ) -> int:
        h = header or MessageHeader()
        return ops.insert_message(
            {
                "peer": peer,
                "sending_application": h.sending_application,
                "sending_facility": h.sending_facility,
                "control_id": h.control_id,
                "message_type": h.type_code,
                "version": h.version,
                "raw": raw,
                "ack": ack,
                "ack_code": ack_code,
                "error": error[:2000],
                "processed": True,
            }
        )

    # -- replay ----------------------------------------------------------------------------

    def replay(
        self, *, since: datetime | None = None, ids: Sequence[int] | None = None
    ) -> list[ReplayResult]:
        """Apply stored messages again, oldest first, with the current mapping (one
        transaction each). Messages that still cannot be applied are reported, not changed."""
        rows = self.rows.stored(since=since, ids=ids)
        results: list[ReplayResult] = []
        for row in rows:
            mid = int(row.id)
            ev = evaluate(str(row.raw), self.mapping)
            base = (mid, str(row.message_type), str(row.control_id))
            if ev.error is not None:
                results.append(ReplayResult(*base, f"not applied: {ev.error}", failed=True))
                continue
            try:
                with self.rows.transaction() as ops:
                    order_ids = _replay_apply(self, ops, ev, mid)
                    note = "; ".join([*ev.notes, f"replayed {utcnow():%Y-%m-%d %H:%M:%S} UTC"])
                    ops.mark_processed(mid, note[:2000])
            except Exception as exc:
                log.error("replay of HL7 message #%d failed: %s", mid, exc)
                results.append(ReplayResult(*base, f"failed: {exc}", failed=True))
                continue
            if order_ids:
                what = f"orders {', '.join(map(str, order_ids))} applied"
            elif ev.kind == "patient_update":
                what = "patient name applied"
            else:
                what = "nothing to apply (" + (ev.kind if ev.kind != "order" else "no order") + ")"
            results.append(ReplayResult(*base, what))
        return results

    # -- applying ------------------------------------------------------------------------------

    def apply(self, conn: Connection | MessageOps, ev: Evaluation, message_id: int) -> list[int]:
        """Apply an accepted message's orders / patient update; returns the order ids changed.
        ``conn``: a SQLAlchemy connection in a transaction (or the store's own statements)."""
        if ev.kind == "order":
            ops = ops_for(conn)
            ids = []
            for o in ev.applied_orders:  # in order: a message may create, then cancel
                if o.order_control in CANCEL_CONTROLS and not ops.find_order(
                    o.accession_number, o.sending_facility
                ):
                    note = (
                        f"ORC-1 {o.order_control} for an order not known here (accession "
                        f"{o.accession_number!r}, facility {o.sending_facility!r}): nothing "
                        "was cancelled; recorded as a cancelled order. If the order came in "
                        "under another accession, the cancel carries it in another field"
                    )
                    log.warning("HL7 message #%d: %s", message_id, note)
                    ev.notes.append(note)
                ids.append(self.upsert_order(conn, o, message_id))
            return ids
        if ev.kind == "patient_update" and ev.patient is not None and ev.patient.patient_name:
            ops_for(conn).update_patient(ev.patient.patient_id, ev.patient.patient_name)
        if ev.kind == "report" and ev.report is not None:
            apply_report(ops_for(conn), ev, message_id)
        return []

    @staticmethod
    def upsert_order(
        conn: Connection | MessageOps, parsed: ParsedOrder, message_id: int, *, replay: bool = False
    ) -> int:
        """Create or update the order keyed by accession number + sending facility.

        With ``replay``, an order last changed by a newer message than ``message_id`` only gets
        the fields it lacks (a replay never undoes what a later message did)."""
        ops = ops_for(conn)
        current = ops.find_order(parsed.accession_number, parsed.sending_facility)
        carried = {name: v for name in _ORDER_FIELDS if (v := getattr(parsed, name))}
        values: dict[str, Any] = {}
        control = parsed.order_control
        newer = replay and (current.get("message_id") or 0) > message_id
        if newer:
            for name, value in carried.items():
                if not current.get(name):
                    values[name] = value
        else:
            values["order_control"] = control
            if control in CANCEL_CONTROLS:
                values["order_status"] = parsed.order_status or CANCEL_CONTROLS[control]
            else:
                if control == "NW" or parsed.order_status:
                    values["order_status"] = parsed.order_status
                values.update(carried)
            if not current:  # a first message that is not NW still records what it carries
                for name, value in carried.items():
                    values.setdefault(name, value)
            values["message_id"] = message_id
        if current:
            ops.update_order(int(current["id"]), values)
            return int(current["id"])
        values.update(
            accession_number=parsed.accession_number, sending_facility=parsed.sending_facility
        )
        return ops.insert_order(values)


def apply_report(ops: MessageOps, ev: Evaluation, message_id: int) -> int:
    """Store a final report's coded results as feedback (source ``report``) on the studies
    it names, once per message, study and model; a result for no stored study is noted."""
    added = 0
    sender = ev.header.sending_application if ev.header is not None else ""
    for result in ev.report.results if ev.report is not None else []:
        studies = ops.report_studies(result.study_uid, result.accession_number)
        if not studies:
            note = (
                f"report {result.accession_number or result.study_uid}: no such study here; "
                f"{result.model} {result.truth} not recorded"
            )
            log.info("HL7 message #%d: %s", message_id, note)
            ev.notes.append(note)
        for uid in studies:
            row = report_feedback_row(
                ops.newest_finding(uid, result.model),
                study_uid=uid,
                model=result.model,
                truth=result.truth,
                who=sender or "report",
                note=f"final report OBX {result.code}={result.value}",
                message_id=message_id,
            )
            added += ops.insert_feedback(row)
    return added


@dataclass
class ReplayResult:
    message_id: int
    message_type: str
    control_id: str
    result: str
    failed: bool = False


def _replay_apply(store: MessageStore, conn: MessageOps, ev: Evaluation, mid: int) -> list[int]:
    if ev.kind == "order":
        return [store.upsert_order(conn, o, mid, replay=True) for o in ev.applied_orders]
    return store.apply(conn, ev, mid)
