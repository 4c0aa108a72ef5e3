"""Messages we send to the RIS, in HL7 v2.5.1, checked with hl7apy before they leave.

Why 2.5.1: it is the version of the IHE radiology profiles (OMI/ORU), it still carries the
priority in ORC-7.6 / OBR-27.6 (TQ, kept for backward compatibility) which RIS of every age
read, and OBR-5 as well. Each segment is written as ER7 text with every value escaped by us
(:func:`triage.hl7.codec.escape`), in the order of the segments of hl7apy's ORM_O01, OMI_O23 and
ORU_R01 structures. Building is plain text joining (about 15 us a message; building through
hl7apy's object model cost 6-20 ms); the sender checks every message with
:func:`validation_error` (hl7apy, strict) before its first send, so a message that does not fit
the structure never leaves.

- :func:`build_order_change`: ORM^O01 with ORC-1 = XO (change order) carrying the new priority,
  or OMI^O23 (ORC-1 = XO, TQ1-9 the priority, IPC the accession and study) when the site mapping
  says ``outbound: order_change: OMI^O23``.
- :func:`build_ai_result`: ORU^R01 with the AI result as OBX segments.
- :func:`validation_error`: what is wrong with a message by hl7apy's v2.5.1 structures (strict),
  checked before any message leaves; ``""`` when nothing.

Both return the message as text with CR segment separators, MSH-3..6 from the
:class:`SenderIdentity` they are given (made once from the settings) and a fresh MSH-10 (or the
``control_id`` passed in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hl7apy import load_reference
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message
from hl7apy.validation import Validator

from triage.hl7.ack import hl7_timestamp, new_control_id
from triage.hl7.codec import escape
from triage.priority import codes_text, normalise_priority

if TYPE_CHECKING:
    from triage.config import Settings

VERSION = "2.5.1"
DISCLAIMER = "AI triage aid; model trained on synthetic phantoms; not for clinical use"
CODING_SYSTEM = "L"  # local codes for our OBX-3 identifiers

FINDINGS: dict[str, tuple[str, str, str]] = {
    # finding -> (code, text, OBX-8 abnormal flag)
    "positive": ("POS", "Positive", "A"),
    "negative": ("NEG", "Negative", "N"),
    "not_assessable": ("NA", "Not assessable", ""),
}


@dataclass(frozen=True)
class SenderIdentity:
    """Who the messages the engine sends are from and for: MSH-3/4 (``application``,
    ``facility``) and MSH-5/6 (``receiving_application``, ``receiving_facility``)."""

    application: str
    facility: str
    receiving_application: str
    receiving_facility: str

    @classmethod
    def from_settings(cls, settings: Settings) -> SenderIdentity:
        """From ``sending_application``, ``sending_facility``, ``receiving_application`` and
        ``receiving_facility`` of the settings."""
        return cls(
            application=settings.sending_application,
            facility=settings.sending_facility,
            receiving_application=settings.receiving_application,
            receiving_facility=settings.receiving_facility,
        )


@dataclass(frozen=True)
class OrderRef:
    """The order a message is about. Numbers and names use ``^`` between components, as the
    parser stores them (``"A103Z^MESA_ORDPLC"``, ``"DOE^JANE"``)."""

    accession_number: str
    placer_order_number: str = ""
    filler_order_number: str = ""
    patient_id: str = ""
    patient_name: str = ""
    patient_class: str = ""
    procedure_code: str = ""
    procedure_text: str = ""
    modality: str = ""
    study_uid: str = ""

    @classmethod
    def from_row(cls, row: Any, **overrides: str) -> OrderRef:
        """From any object with these attribute names (an Order row, a ParsedOrder)."""
        values = {name: str(getattr(row, name, "") or "") for name in cls.__dataclass_fields__}
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class AIResult:
    """One model result for one study."""

    model_name: str
    finding: str  # positive, negative, not_assessable
    model_version: str = ""
    probability: float | None = None
    threshold: float | None = None
    finding_name: str = ""  # what the model looks for, e.g. "Pulmonary embolism"
    reasons: Sequence[str] = field(default_factory=tuple)
    observed_at: datetime | None = None


def _components(value: str) -> str:
    """Escape each ``^``-separated component of a stored value (trailing empty components
    dropped, as HL7 allows)."""
    return "^".join(escape(part) for part in value.split("^")).rstrip("^")


def _segment(*fields: str) -> str:
    """One segment as ER7 text: the fields (each escaped by the caller) joined with ``|``,
    trailing empty fields dropped."""
    return "|".join(fields).rstrip("|")


def _msh(sender: SenderIdentity, msg_type: str, control_id: str, when: str) -> str:
    return _segment(
        "MSH",
        "^~\\&",
        escape(sender.application),
        escape(sender.facility),
        escape(sender.receiving_application),
        escape(sender.receiving_facility),
        when,
        "",
        msg_type,
        escape(control_id),
        "P",
        VERSION,
    )


def _pid(order: OrderRef) -> str:
    return _segment(
        "PID", "1", "", _components(order.patient_id), "", _components(order.patient_name)
    )


def _procedure(order: OrderRef) -> str:
    if not order.procedure_code and not order.procedure_text:
        return ""
    return f"{escape(order.procedure_code)}^{escape(order.procedure_text)}^{CODING_SYSTEM}"


ORDER_CHANGE_MESSAGES = ("ORM^O01", "OMI^O23")


def _order_message(
    sender: SenderIdentity, msg_type: str, order: OrderRef, control_id: str | None, now: str
) -> list[str]:
    """The start of an order message (ORM_O01, OMI_O23): MSH and the patient group (PID, and
    PV1 when the order has a patient class); the order group's segments follow."""
    segments = [_msh(sender, msg_type, control_id or new_control_id(), now), _pid(order)]
    if order.patient_class:
        segments.append(_segment("PV1", "1", escape(order.patient_class)))
    return segments


def build_order_change(
    sender: SenderIdentity,
    order: OrderRef,
    new_priority: str,
    *,
    reason: str = "",
    control_id: str | None = None,
    when: datetime | None = None,
    message: str = "ORM^O01",
) -> str:
    """ORM^O01 (v2.5.1) asking the RIS to change the order's priority; with ``message`` =
    ``"OMI^O23"``, the same change as OMI^O23 (:func:`_build_omi_change`).

    PID-3/5 from the order; ORC-1 ``XO``, ORC-2/3 placer/filler numbers, ORC-7.6 the priority,
    ORC-9 now, ORC-16 the reason (text); OBR-2/3 the numbers, OBR-4 the procedure, OBR-5 and
    OBR-27.6 the priority, OBR-18 the accession number, OBR-24 the modality.
    ``new_priority`` must be a table-0027 code or word (S, A, R, P, C, T, STAT...) of
    :mod:`triage.priority`, the vocabulary the urgency rules are checked against on load.
    """
    priority = normalise_priority(new_priority)
    if not priority:
        raise ValueError(f"not an HL7 table 0027 priority ({codes_text()}): {new_priority!r}")
    if not order.accession_number and not order.filler_order_number:
        raise ValueError("an order change needs an accession or filler order number")
    if message not in ORDER_CHANGE_MESSAGES:
        raise ValueError(f"an order change is {' or '.join(ORDER_CHANGE_MESSAGES)}: {message!r}")
    now = hl7_timestamp(when)
    if message == "OMI^O23":
        return _build_omi_change(sender, order, priority, reason, control_id, now)
    segments = _order_message(sender, "ORM^O01^ORM_O01", order, control_id, now)
    placer = _components(order.placer_order_number)
    filler = _components(order.filler_order_number)
    timing = f"^^^^^{priority}"
    segments.append(
        _segment(
            "ORC", "XO", placer, filler, "", "", "", timing, "", now,
            "", "", "", "", "", "", f"^{escape(reason)}" if reason else "",
        )
    )  # fmt: skip
    obr = ["OBR", "1", placer, filler, _procedure(order), priority]
    obr += [""] * 12  # OBR-6 .. OBR-17
    obr += [escape(order.accession_number)]  # OBR-18
    obr += [""] * 5  # OBR-19 .. OBR-23
    obr += [escape(order.modality)]  # OBR-24
    obr += ["", ""]  # OBR-25, OBR-26
    obr += [timing]  # OBR-27
    segments.append(_segment(*obr))  # the order detail's choice: OBR
    return "\r".join(segments)


def _build_omi_change(
    sender: SenderIdentity,
    order: OrderRef,
    priority: str,
    reason: str,
    control_id: str | None,
    now: str,
) -> str:
    """OMI^O23 (v2.5.1) with ORC-1 ``XO``: PID/PV1 as in the ORM; ORC-2/3 the numbers, ORC-9
    now, ORC-16 the reason; TQ1-1 ``1``, TQ1-9 the priority; OBR-2/3/4, OBR-18, OBR-24 as in the
    ORM; IPC-1 the accession number, IPC-2 and IPC-4 the accession number too (the engine does
    not keep the RIS's requested procedure and step ids), IPC-3 the Study Instance UID, IPC-5
    the modality."""
    segments = _order_message(sender, "OMI^O23^OMI_O23", order, control_id, now)
    placer = _components(order.placer_order_number)
    filler = _components(order.filler_order_number)
    segments.append(
        _segment(
            "ORC", "XO", placer, filler, "", "", "", "", "", now,
            "", "", "", "", "", "", f"^{escape(reason)}" if reason else "",
        )
    )  # fmt: skip
    segments.append(_segment("TQ1", "1", "", "", "", "", "", "", "", priority))  # timing group
    obr = ["OBR", "1", placer, filler, _procedure(order)]
    obr += [""] * 13  # OBR-5 .. OBR-17
    obr += [escape(order.accession_number)]  # OBR-18
    obr += [""] * 5  # OBR-19 .. OBR-23
    obr += [escape(order.modality)]  # OBR-24
    segments.append(_segment(*obr))
    accession = escape(order.accession_number or order.filler_order_number.split("^")[0])
    segments.append(
        _segment(
            "IPC", accession, accession, escape(order.study_uid), accession,
            escape(order.modality),
        )
    )  # fmt: skip
    return "\r".join(segments)


def _relaxed(ref: Any, fields: frozenset[str]) -> Any:
    """hl7apy's structure ``ref`` with each child of a ``choice`` optional (hl7apy checks a
    choice like a sequence, so ORM_O01's OBR|RQD|RQ1|RXO|ODS|ODT would need all six) and the
    named ``fields`` optional."""
    if not isinstance(ref, tuple) or len(ref) < 2 or ref[0] not in ("sequence", "choice"):
        return ref
    children = []
    for child in ref[1]:
        name, sub, cardinality = child[0], child[1], child[2]
        if ref[0] == "choice" or name in fields:
            cardinality = (0, cardinality[1])
        children.append((name, _relaxed(sub, fields), cardinality, *child[3:]))
    return (ref[0], tuple(children), *ref[2:])


#: Fields the standard requires that the engine can only echo from the order: an order change
#: for an order that came without them is still sent (the RIS finds the order by its numbers).
ECHOED_FIELDS = frozenset({"PID_5", "OBR_4"})
_STRUCTURES: dict[str, Any] = {}
_CHOICES = {"ORM_O01_OBRRQDRQ1RXOODSODT_SUPPGRP"}  # exactly one child, checked here


def validation_error(text: str) -> str:
    """Why ``text`` is not a valid v2.5.1 ORM^O01, OMI^O23 or ORU^R01 by hl7apy's strict
    validation (structure, cardinality, data types), or ``""``. Two relaxations, both for what
    hl7apy cannot express or the engine cannot know: a choice group must hold exactly one of its
    segments (hl7apy would want all), and :data:`ECHOED_FIELDS` may be empty."""
    try:
        msg = parse_message(text, find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
        structure = str(msg.name)
        if structure not in ("ORM_O01", "OMI_O23", "ORU_R01"):
            return f"not a message the engine sends: {structure}"
        if str(msg.msh.msh_12.to_er7()) != VERSION:
            return f"MSH-12 is {msg.msh.msh_12.to_er7()!r}, not {VERSION}"
        ref = _STRUCTURES.get(structure)
        if ref is None:
            ref = _relaxed(load_reference(structure, "Message", VERSION), ECHOED_FIELDS)
            _STRUCTURES[structure] = ref
        Validator.validate(msg, reference=ref)
        problem = _choice_problem(msg)
        if problem:
            return problem
    except (HL7apyException, ValueError, KeyError, IndexError, AttributeError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return ""


def _choice_problem(element: Any) -> str:
    for child in getattr(element, "children", ()):
        if child.classname != "Group":
            continue
        if child.name in _CHOICES and len(child.children) != 1:
            kinds = ", ".join(c.name for c in child.children) or "none"
            return f"{child.name} must hold exactly one segment, holds: {kinds}"
        problem = _choice_problem(child)
        if problem:
            return problem
    return ""


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}".rstrip("0").rstrip(".") or "0"


def build_ai_result(
    sender: SenderIdentity,
    order: OrderRef,
    result: AIResult,
    *,
    control_id: str | None = None,
    when: datetime | None = None,
    corrected: bool = False,
) -> str:
    """ORU^R01 (v2.5.1) with one AI result, result status ``P`` (preliminary: it is a triage
    aid, never the report).

    ORC-1 ``RE``; OBR-2/3/4/18/24 as in the order, OBR-7 the observation time, OBR-25 ``P``;
    OBX (local codes, coding system ``L``): ``AI-MODEL`` (ST name), ``AI-MODEL-VERSION`` (ST),
    ``AI-PROB`` (NM probability), ``AI-THRESHOLD`` (NM, when known), ``AI-FINDING`` (CE
    POS/NEG/NA, OBX-8 A/N), one ``AI-REASON`` (ST) per reason, ``AI-DISCLAIMER`` (ST), and the
    Study Instance UID (``113014^DICOM Study^DCM``, HD) when known. OBX-11 ``P``.
    With ``corrected``, OBR-25 and OBX-11 are ``C``: this result replaces one sent before.
    """
    if result.finding not in FINDINGS:
        raise ValueError(f"finding must be one of {', '.join(FINDINGS)}: {result.finding!r}")
    now = hl7_timestamp(when)
    observed = hl7_timestamp(result.observed_at) if result.observed_at else now
    # patient result group: patient (PID, visit PV1), order observation (ORC, OBR, OBX...)
    segments = [_msh(sender, "ORU^R01^ORU_R01", control_id or new_control_id(), now), _pid(order)]
    if order.patient_class:
        segments.append(_segment("PV1", "1", escape(order.patient_class)))
    placer = _components(order.placer_order_number)
    filler = _components(order.filler_order_number)
    segments.append(_segment("ORC", "RE", placer, filler))
    obr = ["OBR", "1", placer, filler, _procedure(order) or "AI^AI triage^L", "", "", observed]
    obr += [""] * 10  # OBR-8 .. OBR-17
    obr += [escape(order.accession_number)]  # OBR-18
    obr += [""] * 5  # OBR-19 .. OBR-23
    status = "C" if corrected else "P"  # C: a correction of a result already sent
    obr += [escape(order.modality), status]  # OBR-24, OBR-25
    segments.append(_segment(*obr))

    code, text, flag = FINDINGS[result.finding]
    what = f"AI finding: {result.finding_name}" if result.finding_name else "AI finding"
    rows: list[tuple[str, str, str, str, str]] = [
        ("ST", "AI-MODEL^AI model^L", "", escape(result.model_name), ""),
        ("ST", "AI-MODEL-VERSION^AI model version^L", "", escape(result.model_version), ""),
    ]
    if result.probability is not None:
        rows.append(("NM", "AI-PROB^AI probability^L", "", _number(result.probability), ""))
    if result.threshold is not None:
        rows.append(
            ("NM", "AI-THRESHOLD^AI decision threshold^L", "", _number(result.threshold), "")
        )
    rows.append(("CE", f"AI-FINDING^{escape(what)}^L", "", f"{code}^{text}^L", flag))
    for i, reason in enumerate(result.reasons, start=1):
        rows.append(("ST", "AI-REASON^AI triage reason^L", str(i), escape(reason), ""))
    rows.append(("ST", "AI-DISCLAIMER^Disclaimer^L", "", escape(DISCLAIMER), ""))
    if order.study_uid:
        rows.append(("HD", "113014^DICOM Study^DCM", "", escape(order.study_uid), ""))
    rows = [row for row in rows if row[3]]
    for set_id, (vtype, ident, sub_id, value, abnormal) in enumerate(rows, start=1):
        segments.append(
            _segment(
                "OBX", str(set_id), vtype, ident, sub_id, value, "", "", abnormal, "", "",
                status, "", "", observed,
            )
        )  # fmt: skip
    return "\r".join(segments)
