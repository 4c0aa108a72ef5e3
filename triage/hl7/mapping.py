"""Site mapping: ``rules/hl7-mapping.yaml`` says where each sender puts what.

RIS products disagree on where the priority, the accession number or the Study Instance UID
go. The mapping file lets an integration engineer say it per sender without code::

    version: 1
    defaults:                 # optional; applies to every sender (built-in defaults otherwise)
      fields:
        ordered_priority: [TQ1-9.1, ORC-7.6, OBR-27.6, OBR-5.1]
    senders:
      - name: genhosp-ris     # shown by `triage hl7 check`
        match:                # MSH-3.1 / MSH-4.1, case-insensitive; an omitted key matches any
          sending_application: RIS
          sending_facility: GENHOSP
        fields:               # engine field -> sources, first non-empty wins
          ordered_priority: [OBR-5.1]
        priority_codes:       # site values -> HL7 table 0027 (S A R P C T)
          "1": S
        infer_modality: true  # guess CT/MR/... from the procedure text when no source has it
    outbound:                 # optional: what the engine sends to the RIS
      order_change: OMI^O23   # ORM^O01 (default) or OMI^O23 for a raised priority
    final_report:             # optional: coded results of final reports (ORU^R01) as truth
      results:                # for the AI results (triage.hl7.reports)
        - {model: ich, code: [ICH], positive: [POS], negative: [NEG]}

A source is ``SEG-n`` (the whole field, components joined with ``^``) or ``SEG-n.c`` (one
component). Fields a sender entry does not name come from ``defaults``, then the built-in
defaults (:data:`triage.hl7.fieldmap.DEFAULT_SOURCES`). The first sender whose ``match`` fits the
message is used. The file is validated on load; an error names the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triage.errors import RulesError
from triage.hl7.fieldmap import (
    DEFAULT_FIELD_MAP,
    DEFAULT_SOURCES,
    MAPPED_FIELDS,
    FieldMap,
    FieldRef,
)
from triage.hl7.header import MessageHeader
from triage.hl7.reports import NO_FINAL_REPORT, FinalReportMap, load_final_report
from triage.priority import PRIORITY_CODES
from triage.yamlfile import LineDict, check_keys, load_yaml, require

TOP_KEYS = {"version", "defaults", "senders", "outbound", "final_report"}
OUTBOUND_KEYS = {"order_change"}
ORDER_CHANGE_MESSAGES = ("ORM^O01", "OMI^O23")
ENTRY_KEYS = {"fields", "priority_codes", "infer_modality"}
SENDER_KEYS = {"name", "match", *ENTRY_KEYS}
MATCH_KEYS = {"sending_application", "sending_facility"}


@dataclass(frozen=True)
class Sender:
    name: str
    application: str  # upper-case; "" matches any
    facility: str
    fields: FieldMap
    line: int

    def matches(self, header: MessageHeader) -> bool:
        if self.application and self.application != header.sending_application.upper():
            return False
        return not (self.facility and self.facility != header.sending_facility.upper())


@dataclass(frozen=True)
class HL7Mapping:
    path: str
    defaults: FieldMap
    senders: tuple[Sender, ...] = ()
    order_change: str = "ORM^O01"  # outbound: the message that carries a raised priority
    final_report: FinalReportMap = NO_FINAL_REPORT  # inbound ORU^R01: coded results as truth

    def for_header(self, header: MessageHeader | None) -> FieldMap:
        """The field map for a message from this sender (the defaults when none matches)."""
        if header is not None:
            for sender in self.senders:
                if sender.matches(header):
                    return sender.fields
        return self.defaults


DEFAULT_MAPPING = HL7Mapping("<built-in defaults>", DEFAULT_FIELD_MAP)


def load_mapping(path: Path, text: str | None = None) -> HL7Mapping:
    """Parse and validate a mapping file; errors name the file and line."""
    data = load_yaml(path, text)
    check_keys(path, data, TOP_KEYS, "the top level")
    version = require(path, data, "version", int)
    if version != 1:
        raise RulesError(str(path), f"unsupported version {version} (expected 1)", data.line)
    defaults = DEFAULT_FIELD_MAP
    if "defaults" in data:
        raw = require(path, data, "defaults", dict)
        check_keys(path, raw, ENTRY_KEYS, "defaults")
        defaults = _field_map(path, raw, DEFAULT_FIELD_MAP, "defaults")
    senders: list[Sender] = []
    names: set[str] = set()
    raw_senders = data.get("senders", [])
    if not isinstance(raw_senders, list):
        raise RulesError(str(path), "'senders' must be a list", data.line_of("senders"))
    for i, raw in enumerate(raw_senders):
        if not isinstance(raw, LineDict):
            raise RulesError(
                str(path), f"sender #{i + 1} must be a mapping", data.line_of("senders")
            )
        check_keys(path, raw, SENDER_KEYS, f"sender #{i + 1}")
        name = require(path, raw, "name", str)
        if name in names:
            raise RulesError(str(path), f"duplicate sender name {name!r}", raw.line_of("name"))
        names.add(name)
        match = require(path, raw, "match", dict)
        check_keys(path, match, MATCH_KEYS, f"match of sender {name!r}")
        if not match:
            raise RulesError(
                str(path),
                f"match of sender {name!r} needs sending_application and/or sending_facility",
                raw.line_of("match"),
            )
        for key in match:
            if not isinstance(match[key], str) or not match[key].strip():
                raise RulesError(
                    str(path), f"{key!r} must be a non-empty string", match.line_of(key)
                )
        fields = _field_map(path, raw, defaults, name)
        senders.append(
            Sender(
                name=name,
                application=str(match.get("sending_application", "")).strip().upper(),
                facility=str(match.get("sending_facility", "")).strip().upper(),
                fields=fields,
                line=raw.line,
            )
        )
    order_change = "ORM^O01"
    if "outbound" in data:
        out = require(path, data, "outbound", dict)
        check_keys(path, out, OUTBOUND_KEYS, "outbound")
        if "order_change" in out:
            value = out["order_change"]
            if value not in ORDER_CHANGE_MESSAGES:
                raise RulesError(
                    str(path),
                    f"outbound order_change must be {' or '.join(ORDER_CHANGE_MESSAGES)}, "
                    f"not {value!r}",
                    out.line_of("order_change"),
                )
            order_change = str(value)
    return HL7Mapping(
        str(path), defaults, tuple(senders), order_change, load_final_report(path, data)
    )


def _field_map(path: Path, raw: LineDict, base: FieldMap, name: str) -> FieldMap:
    sources: dict[str, tuple[FieldRef, ...]] = dict(base.sources)
    if "fields" in raw:
        fields = require(path, raw, "fields", dict)
        for key, value in fields.items():
            line = fields.line_of(key)
            if key not in DEFAULT_SOURCES:
                raise RulesError(
                    str(path),
                    f"unknown engine field {key!r} (known: {', '.join(MAPPED_FIELDS)})",
                    line,
                )
            items: Any = [value] if isinstance(value, str) else value
            if (
                not isinstance(items, list)
                or not items
                or not all(isinstance(v, str) for v in items)
            ):
                raise RulesError(
                    str(path), f"{key!r} must be a field reference or a list of them", line
                )
            try:
                sources[key] = tuple(FieldRef.parse(v) for v in items)
            except ValueError as exc:
                raise RulesError(str(path), f"{key}: {exc}", line) from None
    codes = dict(base.priority_codes)
    if "priority_codes" in raw:
        table = require(path, raw, "priority_codes", dict)
        for key, value in table.items():
            code = str(value).strip().upper() if isinstance(value, str) else ""
            if code not in PRIORITY_CODES:
                raise RulesError(
                    str(path),
                    f"priority code {key!r} must map to one of S A R P C T, not {value!r}",
                    table.line_of(key),
                )
            codes[str(key).strip().upper()] = code
    infer = base.infer_modality
    if "infer_modality" in raw:
        infer = require(path, raw, "infer_modality", bool)
    return FieldMap(sources=sources, priority_codes=codes, infer_modality=infer, name=name)


def load_mapping_or_defaults(path: Path, *, required: bool = False) -> HL7Mapping:
    """:func:`load_mapping`, or the built-in defaults when ``path`` does not exist and is not
    ``required`` (an explicitly configured file must exist)."""
    if not required and not path.exists():
        return DEFAULT_MAPPING
    return load_mapping(path)
