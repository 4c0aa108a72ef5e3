"""Reading HL7 v2 messages from the RIS: the names other modules import, from the modules that
own them (:mod:`~triage.hl7.codec` ER7, :mod:`~triage.hl7.vocabulary` what the engine
recognises, :mod:`~triage.hl7.header` MSH, :mod:`~triage.hl7.fieldmap` where each value is read,
:mod:`~triage.hl7.orders` orders and patient updates). New code imports from those modules.
"""

from __future__ import annotations

from triage.hl7.codec import (
    DEFAULT_DELIMITERS,
    Delimiters,
    Message,
    Segment,
    escape,
    normalise_segments,
    split_message,
    unescape,
)
from triage.hl7.fieldmap import (
    DEFAULT_FIELD_MAP,
    DEFAULT_SOURCES,
    GROUP_SEGMENTS,
    MAPPED_FIELDS,
    FieldMap,
    FieldRef,
    read_value,
    refs,
)
from triage.hl7.header import (
    MessageHeader,
    check_order_header,
    check_required_header,
    control_id_of,
    message_of,
    peek_header,
    read_header,
)
from triage.hl7.orders import (
    ParsedOrder,
    PatientUpdate,
    orders_of,
    parse_order,
    parse_orders,
    patient_update_of,
)
from triage.hl7.vocabulary import (
    MODALITIES,
    ORDER_TRIGGERS,
    ORDER_VERSIONS,
    PATIENT_UPDATE_TRIGGERS,
    infer_modality,
    normalise_modality,
)
from triage.priority import PRIORITY_CODES, normalise_priority

__all__ = [
    "DEFAULT_DELIMITERS",
    "DEFAULT_FIELD_MAP",
    "DEFAULT_SOURCES",
    "GROUP_SEGMENTS",
    "MAPPED_FIELDS",
    "MODALITIES",
    "ORDER_TRIGGERS",
    "ORDER_VERSIONS",
    "PATIENT_UPDATE_TRIGGERS",
    "PRIORITY_CODES",
    "Delimiters",
    "FieldMap",
    "FieldRef",
    "Message",
    "MessageHeader",
    "ParsedOrder",
    "PatientUpdate",
    "Segment",
    "check_order_header",
    "check_required_header",
    "control_id_of",
    "escape",
    "infer_modality",
    "message_of",
    "normalise_modality",
    "normalise_priority",
    "normalise_segments",
    "orders_of",
    "parse_order",
    "parse_orders",
    "patient_update_of",
    "peek_header",
    "read_header",
    "read_value",
    "refs",
    "split_message",
    "unescape",
]
