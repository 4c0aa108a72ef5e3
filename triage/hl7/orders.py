"""The orders of an ORM^O01 / OMI^O23 (one per ORC group) and the demographics of an ADT
update, read where a :class:`~triage.hl7.fieldmap.FieldMap` says.

Errors raise :class:`~triage.errors.HL7ParseError` (answered AR) when the message cannot be read
at all, and :class:`~triage.errors.HL7Error` (answered AE) with a table-0357 code otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from triage.errors import HL7Error
from triage.hl7.codec import Message, Segment
from triage.hl7.fieldmap import (
    DEFAULT_FIELD_MAP,
    FieldMap,
    read_plain_fields,
    read_value,
    segment_for,
)
from triage.hl7.header import MessageHeader, check_order_header, message_of
from triage.hl7.vocabulary import infer_modality, normalise_modality
from triage.priority import normalise_priority


@dataclass
class ParsedOrder:
    """What the engine reads from one order (one ORC group) of an ORM^O01 / OMI^O23."""

    message_type: str  # ORM or OMI
    trigger: str  # O01 or O23
    version: str  # MSH-12
    control_id: str  # MSH-10
    sending_application: str = ""  # MSH-3.1
    sending_facility: str = ""  # MSH-4.1
    order_control: str = ""  # ORC-1: NW, XO, SC, CA, DC...
    order_status: str = ""  # ORC-5 (CM: exam completed)
    placer_order_number: str = ""  # ORC-2 (else OBR-2), "id^namespace"
    filler_order_number: str = ""  # ORC-3 (else OBR-3), "id^namespace"
    accession_number: str = ""  # IPC-1 | OBR-18 | OBR-3.1 | ORC-3.1
    patient_id: str = ""  # PID-3.1 (else PID-2.1)
    patient_name: str = ""  # PID-5, "FAMILY^GIVEN^MIDDLE..."
    patient_class: str = ""  # PV1-2
    ordered_priority: str = ""  # S/A/R/P/C/T or ""
    priority_source: str = ""  # where the priority came from, e.g. "ORC-7.6"
    procedure_code: str = ""  # OBR-4.1
    procedure_text: str = ""  # OBR-4.2
    modality: str = ""  # OBR-24 | IPC-5 | inferred
    study_uid: str = ""  # ZDS-1.1 | IPC-3
    ordering_location: str = ""  # PV1-3, "point of care^room^bed^facility..."
    reason_for_study: str = ""  # OBR-31.2 | OBR-31.1
    sources: dict[str, str] = field(default_factory=dict)  # engine field -> "ORC-7.6"...
    warnings: list[str] = field(default_factory=list)

    @property
    def type_code(self) -> str:
        return f"{self.message_type}^{self.trigger}"


def _order_groups(msg: Message) -> list[list[Segment]]:
    groups: list[list[Segment]] = []
    for seg in msg.segments:
        if seg.name == "ORC":
            groups.append([seg])
        elif groups:
            groups[-1].append(seg)
    return groups


def _priority(fmap: FieldMap, msg: Message, group: list[Segment]) -> tuple[str, str, list[str]]:
    skipped: list[str] = []
    for ref in fmap.sources_of("ordered_priority"):
        seg = segment_for(ref, msg, group)
        if seg is None:
            continue
        value = ref.read(seg)
        if not value:
            continue
        code = normalise_priority(value, fmap.priority_codes)
        if code:
            return code, ref.label, skipped
        skipped.append(f"{ref} priority {value!r} is not a table-0027 code; ignored")
    return "", "", skipped


def _modality(fmap: FieldMap, msg: Message, group: list[Segment], *texts: str) -> tuple[str, str]:
    for ref in fmap.sources_of("modality"):
        seg = segment_for(ref, msg, group)
        if seg is not None:
            code = normalise_modality(ref.read(seg))
            if code:
                return code, ref.label
    if fmap.infer_modality:
        code = infer_modality(*texts)
        if code:
            return code, "inferred from the procedure"
    return "", ""


def _order_from_group(
    header: MessageHeader, msg: Message, group: list[Segment], fmap: FieldMap
) -> ParsedOrder:
    orc = group[0]
    control = orc.get(1).upper()
    if not control:
        raise HL7Error("ORC-1 (order control) is missing", hl7_code=101, location="ORC^1^1")
    order = ParsedOrder(
        message_type=header.message_type,
        trigger=header.trigger,
        version=header.version,
        control_id=header.control_id,
        sending_application=header.sending_application,
        sending_facility=header.sending_facility,
        order_control=control,
    )
    order.sources["order_control"] = "ORC-1"
    for name, (value, source) in read_plain_fields(fmap, msg, group).items():
        setattr(order, name, value.upper() if name == "patient_class" else value)
        order.sources[name] = source
    priority, source, warnings = _priority(fmap, msg, group)
    order.ordered_priority, order.priority_source = priority, source
    order.warnings.extend(warnings)
    if source:
        order.sources["ordered_priority"] = source
    modality, source = _modality(fmap, msg, group, order.procedure_text, order.procedure_code)
    order.modality = modality
    if source:
        order.sources["modality"] = source
    return order


def parse_orders(raw: str, fmap: FieldMap = DEFAULT_FIELD_MAP) -> list[ParsedOrder]:
    """Every order (ORC group) of an ORM^O01 / OMI^O23 message, in message order, read with
    ``fmap`` (the sender's site mapping; the defaults otherwise).

    Raises :class:`HL7ParseError` (AR) for text that is not an HL7 message, and
    :class:`HL7Error` (AE) for a message we do not support (200 type, 201 event, 203 version)
    or that lacks a required field (101: MSH-10, MSH-9, MSH-12, ORC, ORC-1). An order without
    any accession number is returned with ``accession_number == ""``; whether it can be applied
    is the caller's decision.
    """
    msg, header = message_of(raw)
    check_order_header(header)
    return orders_of(msg, header, fmap)


def orders_of(msg: Message, header: MessageHeader, fmap: FieldMap) -> list[ParsedOrder]:
    """The orders of an already split order message (header already checked)."""
    groups = _order_groups(msg)
    if not groups:
        raise HL7Error("the message has no ORC segment", hl7_code=101, location="ORC^1")
    return [_order_from_group(header, msg, g, fmap) for g in groups]


def parse_order(raw: str, fmap: FieldMap = DEFAULT_FIELD_MAP) -> ParsedOrder:
    """The first order of an ORM^O01 / OMI^O23 message; see :func:`parse_orders`."""
    return parse_orders(raw, fmap)[0]


@dataclass
class PatientUpdate:
    """Demographics from an ADT^A08 / ADT^A31 (update patient information)."""

    patient_id: str
    patient_name: str
    sources: dict[str, str] = field(default_factory=dict)


def patient_update_of(msg: Message, fmap: FieldMap = DEFAULT_FIELD_MAP) -> PatientUpdate:
    """The patient id and name of an ADT update; AE 101 when PID or the patient id is missing."""
    if msg.first("PID") is None:
        raise HL7Error("the message has no PID segment", hl7_code=100, location="PID^1")
    pid, pid_source = read_value(fmap, "patient_id", msg)
    if not pid:
        raise HL7Error("PID-3 (patient identifier) is missing", hl7_code=101, location="PID^1^3")
    name, name_source = read_value(fmap, "patient_name", msg)
    sources = {"patient_id": pid_source}
    if name_source:
        sources["patient_name"] = name_source
    return PatientUpdate(pid, name, sources)
