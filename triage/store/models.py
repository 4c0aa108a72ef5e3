"""Database tables. Each table is owned by one step of the data path:

- ``Instance``, ``Study``: written by DICOM ingest; ``Study`` state advanced by completion,
  routing, inference and scoring.
- ``HL7Message``: every inbound HL7 message, raw, with the ACK we answered.
- ``Order``: the RIS order, parsed from ORM/OMI messages.
- ``Finding``: one model result for one study.
- ``OutboundMessage``: every ORM/OMI/ORU we sent (or tried to send) to the RIS, with its ACK.
- ``OutboxAction``: what was done to an outbox message (retry, discard, dead letter), by whom.
- ``PriorityChange``: every change of a study's engine priority, with its cause (scoring).
- ``RulesVersion``: every urgency rules text the engine has put in force, by its id (scoring).
- ``RulesChange``: every rules text applied or restored on the Rules page: who, when, why.
- ``UserAccount``, ``AuthSession``: local accounts and signed-in sessions (``triage.auth``).
- ``AuditEvent``: the append-only audit log of views and changes (``triage.auth.audit``).
- ``Feedback``: a radiologist's verdict on an AI result, or a final report's coded result.
- ``DicomAssociation``: one row per DICOM association when it ends (peer, outcome, counts).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import DDL, event
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(when: datetime) -> datetime:
    """A stored time as UTC-aware (SQLite gives times back without their zone; they are
    stored in UTC)."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class StudyState(StrEnum):
    RECEIVING = "receiving"  # instances arriving; not yet stable
    COMPLETE = "complete"  # stable; waiting for routing/inference
    AI_PENDING = "ai_pending"  # routed to a model, inference not yet done (e.g. Triton down)
    SCORED = "scored"  # scoring done (with or without an AI finding)
    NOT_ROUTED = "not_routed"  # no routing rule matched; listed at ordered priority
    FAILED = "failed"  # processing raised an error; retried, listed at ordered priority or above


class Instance(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    sop_instance_uid: str = Field(index=True, unique=True, max_length=64)
    sop_class_uid: str = Field(default="", max_length=64)
    study_uid: str = Field(index=True, max_length=64)
    series_uid: str = Field(index=True, max_length=64)
    modality: str = Field(default="", max_length=16)
    series_number: int | None = None
    instance_number: int | None = None
    series_description: str = ""
    image_type: str = ""  # backslash-joined ImageType values
    slice_thickness: float | None = None
    image_position_z: float | None = None
    axial: bool | None = None  # from ImageOrientationPatient; None: unknown (see ImageType)
    convolution_kernel: str = ""
    transfer_syntax: str = Field(default="", max_length=64)
    path: str  # relative to the data directory
    size_bytes: int = 0
    calling_ae: str = Field(default="", max_length=16)
    received_at: datetime = Field(default_factory=utcnow)


class Study(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    study_uid: str = Field(index=True, unique=True, max_length=64)
    accession_number: str = Field(default="", index=True, max_length=64)
    patient_id: str = Field(default="", index=True, max_length=64)
    patient_name: str = ""
    modality: str = Field(default="", max_length=16)
    modalities: str = ""  # backslash-joined set of series modalities
    body_part: str = ""
    study_description: str = ""
    contrast_agent: str = ""
    study_datetime: str = ""
    instance_count: int = 0
    calling_ae: str = Field(default="", max_length=16)  # AE title that sent the first image
    first_received_at: datetime = Field(default_factory=utcnow)
    last_received_at: datetime = Field(default_factory=utcnow, index=True)
    state: str = Field(default=StudyState.RECEIVING, index=True)
    completed_at: datetime | None = None
    routed_model: str = ""  # model chosen by routing.yaml, empty when none
    routing_rule: str = ""
    ordered_priority: str = ""  # copied from the linked order (S, A, R, ...)
    patient_class: str = ""  # copied from the linked order (PV1-2)
    order_link: str = "none"  # none, study_uid, accession, patient
    order_id: int | None = Field(default=None, index=True)  # the linked order; None: none
    accession_from_order: bool = False  # accession_number was copied from the linked order
    engine_priority: str = ""  # our priority; never lower than ordered_priority
    sent_priority: str = ""  # last priority we told the RIS about (ORM XO)
    score: float = 0.0
    reasons: str = "[]"  # JSON list of human-readable reasons
    scored_at: datetime | None = None
    ai_attempts: int = 0
    ai_next_attempt_at: datetime | None = None  # when an AI_PENDING or FAILED study is retried
    failures: int = 0  # processing errors in a row (FAILED); 0 once it is scored
    ai_status: str = ""  # "", pending, done, not_assessable, error
    analyzed_fingerprint: str = ""  # hash of the instance set the last analysis saw
    sent_finding: str = ""  # AI result last told to the RIS (model:positive|negative|...)
    rules_version: str = ""  # id of the urgency rules version that gave the current score


class Order(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    accession_number: str = Field(default="", index=True, max_length=64)
    placer_order_number: str = ""
    filler_order_number: str = ""
    order_control: str = ""  # NW, XO, CA, SC, DC...
    order_status: str = ""  # ORC-5
    patient_id: str = Field(default="", index=True, max_length=64)
    patient_name: str = ""
    patient_class: str = ""  # PV1-2: E, I, O, ...
    ordered_priority: str = ""  # S, A, R, ...
    procedure_code: str = ""
    procedure_text: str = ""
    modality: str = ""
    study_uid: str = Field(default="", index=True, max_length=64)
    ordering_location: str = ""
    reason_for_study: str = ""  # OBR-31 (text, else code): urgency rules may test it
    sending_application: str = ""
    sending_facility: str = ""
    message_id: int | None = Field(default=None, foreign_key="hl7message.id")
    updated_at: datetime = Field(default_factory=utcnow)


class HL7Message(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(default_factory=utcnow, index=True)
    peer: str = ""
    sending_application: str = ""
    sending_facility: str = ""
    control_id: str = Field(default="", index=True)
    message_type: str = ""  # e.g. ORM^O01
    version: str = ""
    raw: str
    ack: str = ""
    ack_code: str = ""  # AA, AE, AR
    error: str = ""
    processed: bool = False


class Finding(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    study_uid: str = Field(index=True, max_length=64)
    model_name: str
    model_version: str = ""
    status: str = "done"  # done, not_assessable, error
    probability: float | None = None
    positive: bool = False
    threshold: float | None = None
    key_slice: int | None = None  # index in the series, 0 = most inferior
    key_instance: int | None = None  # the key slice's InstanceNumber (what a viewer shows)
    key_frame: int | None = None  # its frame number (from 1) in a multi-frame (Enhanced CT) image
    detail: str = ""
    series_uid: str = ""
    key_image: str = ""  # key image PNG, path relative to the data dir ("" when none)
    # JSON object: what went into the model (manufacturer, scanner model, kernel, slice
    # thickness, the reference tissue's median HU); "" when not known. Drift monitoring
    # (triage.monitoring) compares its mix over time.
    inputs: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class OutboundMessage(SQLModel, table=True):
    """One message to the RIS (the outbox; ``triage/outbound/``, docs/hl7-interface.md)."""

    id: int | None = Field(default=None, primary_key=True)
    study_uid: str = Field(index=True, max_length=64)
    kind: str  # ORM or OMI (order change XO), ORU (AI result)
    control_id: str = Field(index=True)  # MSH-10; a resend keeps it (the RIS dedupes on it)
    raw: str
    # pending, sent (acknowledged), rejected (AE/AR: dead letter), dead (dead letter: failures,
    # invalid, superseded), discarded (by the integration engineer), skipped (no RIS)
    status: str = Field(default="pending", index=True)
    order_key: str = Field(default="", index=True)  # accession (else filler number): ordering
    priority: str = ""  # the priority an order change announces ("" for an ORU)
    ack: str = ""
    ack_code: str = ""  # MSA-1 of the last ACK
    ris_error: str = ""  # the RIS's error text (ERR-8, ERR-3.2 or MSA-3) of an AE/AR
    error: str = ""  # why the last attempt failed, or why the message is a dead letter
    attempts: int = 0  # times written to the RIS
    failures: int = 0  # attempts with no acceptable ACK (timed out, connection lost)
    validated: bool = False  # checked with hl7apy (done once, before the first send)
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None
    dead_at: datetime | None = None


class OutboxBackoff(SQLModel, table=True):
    """The outbox sender's wait for the RIS itself (one row): RIS-level failures in a row (a
    refused connection, or no ACK) and when it may be tried again. Kept here, not in memory, so
    that a restarted engine keeps waiting (and doubling) instead of trying at once; each
    message's own failures and next attempt are on its :class:`OutboundMessage` row."""

    id: int | None = Field(default=None, primary_key=True)
    failures: int = 0
    next_attempt_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class OutboxAction(SQLModel, table=True):
    """Who did what to an outbox message, and when: `triage outbox retry|discard` (the OS
    user) and the engine's own dead-lettering (``engine``)."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    who: str = ""
    action: str = ""  # retry, discard, dead-letter
    message_id: int = Field(index=True)
    from_status: str = ""
    to_status: str = ""
    note: str = ""


class PriorityChange(SQLModel, table=True):
    """One change of a study's engine priority: when, from, to, why and what caused it."""

    id: int | None = Field(default=None, primary_key=True)
    study_uid: str = Field(index=True, max_length=64)
    at: datetime = Field(default_factory=utcnow, index=True)
    from_priority: str = ""  # "" for the first score of a study
    to_priority: str = ""
    from_score: float | None = None
    to_score: float = 0.0
    cause: str = ""  # completed, finding, order, aging, rules (see triage.scoring.history)
    cause_ref: str = ""  # the finding id, order id or rules version id, when there is one
    rules_version: str = ""  # the urgency rules version id that gave the new score
    reasons: str = "[]"  # JSON list: the reasons of the new score
    announced: str = ""  # the priority the RIS has been sent after this change ("" none)


class RulesVersion(SQLModel, table=True):
    """An urgency rules text the engine has put in force, remembered by its id (a hash)."""

    id: int | None = Field(default=None, primary_key=True)
    version_id: str = Field(index=True, unique=True, max_length=64)
    path: str = ""
    text: str = ""
    first_loaded_at: datetime = Field(default_factory=utcnow)


class RulesInForce(SQLModel, table=True):
    """Each time the engine put an urgency rules version in force (at start-up when it differs
    from the last one, and at every change while it runs, a version restored included): what
    "in force since" reads. ``RulesVersion.first_loaded_at`` is only the first time."""

    id: int | None = Field(default=None, primary_key=True)
    version_id: str = Field(index=True, max_length=64)
    at: datetime = Field(default_factory=utcnow, index=True)


class RulesChange(SQLModel, table=True):
    """An urgency rules text a manager applied on the Rules page (``triage.web.rules``), or a
    previous version restored: who, when, why, and the text written to the rules file. The
    engine puts it in force at its next tick (then it is also a ``RulesVersion``)."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    user: str = ""
    comment: str = ""
    version_id: str = Field(default="", index=True, max_length=64)  # of the text written
    previous_version_id: str = ""  # the rules file's version it replaced
    restored_from: str = ""  # the version id restored ("" for an edit)
    path: str = ""
    text: str = ""


class Feedback(SQLModel, table=True):
    """Whether an AI result was right: a radiologist's verdict on the study page (source
    ``radiologist``) or a final report's coded result from the RIS (source ``report``, an
    inbound ORU^R01 mapped by ``final_report`` in rules/hl7-mapping.yaml)."""

    id: int | None = Field(default=None, primary_key=True)
    study_uid: str = Field(index=True, max_length=64)
    model_name: str = ""  # the model whose result is judged
    finding_id: int | None = None  # the finding judged ("" result when there was none)
    ai_result: str = ""  # what the AI said then: positive, negative, not_assessable, pending
    source: str = ""  # radiologist, report
    verdict: str = ""  # agreed, disagreed ("" when there was no AI result to judge)
    truth: str = ""  # positive, negative ("" when not known)
    note: str = ""
    who: str = ""  # the signed-in user, or the report's sending application
    message_id: int | None = None  # the HL7Message of a report
    at: datetime = Field(default_factory=utcnow, index=True)


class DicomAssociation(SQLModel, table=True):
    """A DICOM association that ended (``triage.ingest.dicom_scp``): who, how it ended and
    what it brought. Written once, when it ends; associations rejected at negotiation are
    logged, not stored here."""

    id: int | None = Field(default=None, primary_key=True)
    ended_at: datetime = Field(default_factory=utcnow, index=True)
    first_store_at: datetime | None = None  # the first C-STORE answered (None: none)
    calling_ae: str = Field(default="", index=True, max_length=16)
    called_ae: str = Field(default="", max_length=16)
    address: str = ""
    port: int = 0
    # released, aborted (by the peer), timeout, protocol (we aborted), connection, shutdown
    outcome: str = ""
    stored: int = 0  # instances answered Success and stored
    duplicates: int = 0  # answered Success, already stored (not rewritten)
    refused: int = 0  # answered with a failure status
    statuses: str = "{}"  # JSON: failure status (hex) -> count, e.g. {"A700": 2}


class UserAccount(SQLModel, table=True):
    """A local account (``triage.auth``): its role, its argon2 password hash, the lock-out
    state of its sign-ins, and the hash of its personal API token (``triage users token``)."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=64)
    role: str = ""  # radiologist, manager, engineer, admin (triage.auth.users.ROLES)
    password_hash: str = ""  # argon2id, encoded with its parameters
    created_at: datetime = Field(default_factory=utcnow)
    password_changed_at: datetime = Field(default_factory=utcnow)
    failed_logins: int = 0  # failed sign-ins in a row
    locked_until: datetime | None = None  # sign-ins refused until then (lock-out)
    last_login_at: datetime | None = None
    token_hash: str = Field(default="", index=True)  # SHA-256 of the API token; "" none
    token_created_at: datetime | None = None


class AuthSession(SQLModel, table=True):
    """A signed-in browser session. The cookie carries a random token; only its SHA-256 is
    stored, with the per-session CSRF token and the two expiries."""

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(index=True, unique=True, max_length=64)
    user_name: str = Field(index=True, max_length=64)
    csrf_token: str = ""
    address: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    last_seen_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(default_factory=utcnow)  # absolute end (session_max_minutes)


class AuditEvent(SQLModel, table=True):
    """The append-only audit log (``triage.auth.audit``): who did or saw what, when, from
    where. Nothing in the engine updates or deletes a row; on SQLite triggers refuse it."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    user: str = Field(default="", index=True)
    action: str = Field(default="", index=True)  # sign-in, view, feedback, ... (docs/security.md)
    obj: str = ""  # what was seen or changed: "worklist", "study:<uid>", "user:<name>", ...
    address: str = ""  # the client's IP address, or "cli:<os user>"
    detail: str = ""


for _when, _verb in (("UPDATE", "updated"), ("DELETE", "deleted")):
    event.listen(
        AuditEvent.__table__,  # type: ignore[attr-defined]
        "after_create",
        DDL(
            f"CREATE TRIGGER IF NOT EXISTS auditevent_no_{_when.lower()} BEFORE {_when} "
            f"ON auditevent BEGIN SELECT RAISE(ABORT, 'audit log rows are never {_verb}'); END"
        ).execute_if(dialect="sqlite"),
    )
