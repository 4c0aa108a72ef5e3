"""Where each engine field is read in a message (the site mapping), and reading it.

Default sources, first non-empty wins (a sender's entry in ``rules/hl7-mapping.yaml`` may
replace them: :mod:`triage.hl7.mapping`):

- accession number: IPC-1.1, OBR-18.1, OBR-3.1 (filler order number), ORC-3.1
- ordered priority: TQ1-9.1, ORC-7.6, OBR-27.6, OBR-5; each value is normalised to a table-0027
  code letter (S, A, R, P, C, T; the sender's site codes first) by :mod:`triage.priority`, the
  engine's one priority vocabulary; a value that does not normalise is skipped
- modality: OBR-24, IPC-5.1, then inferred from the procedure code/text; only known DICOM
  modality codes are kept
- study instance UID: ZDS-1.1, IPC-3.1 (of the order's own group first, then anywhere)
- procedure: OBR-4.1 / OBR-4.2, else OBR-44.1 / OBR-44.2
- patient id: PID-3.1 (first repetition), else PID-2.1
- placer / filler order number: ORC-2 / ORC-3, else OBR-2 / OBR-3 (entity id and namespace,
  joined with ``^``)
- reason for study: OBR-31.2 (the text), else OBR-31.1 (a code, or a text some senders put
  there)
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field

from triage.hl7.codec import Message, Segment

_FIELD_REF = re.compile(r"^([A-Z][A-Z0-9]{2})-([1-9][0-9]{0,2})(?:\.([1-9][0-9]?))?$")

# Segments that belong to one ORC group: a value is read from the order's own group only.
# Others (PID, PV1, IPC, ZDS, Z-segments...) are read from the order's group first, then from
# the first such segment anywhere in the message.
GROUP_SEGMENTS = frozenset({"ORC", "OBR", "TQ1", "TQ2", "OBX", "NTE", "DG1", "CTI", "BLG"})


@dataclass(frozen=True)
class FieldRef:
    """Where a value is read: ``OBR-27.6`` (a component) or ``PID-5`` (the whole first
    repetition, components joined with ``^``, trailing empty ones removed)."""

    segment: str
    field: int
    component: int = 0  # 0: the whole field
    label: str = dataclasses.field(init=False, repr=False, compare=False)  # "OBR-27.6"

    def __post_init__(self) -> None:
        text = f"{self.segment}-{self.field}" + (f".{self.component}" if self.component else "")
        object.__setattr__(self, "label", text)

    @classmethod
    def parse(cls, text: str) -> FieldRef:
        """``SEG-n`` or ``SEG-n.c``; raises ValueError otherwise."""
        m = _FIELD_REF.match(text.strip().upper())
        if not m:
            raise ValueError(f"{text!r} is not a field reference like OBR-27.6 or PID-5")
        return cls(m.group(1), int(m.group(2)), int(m.group(3) or 0))

    def __str__(self) -> str:
        return self.label

    def read(self, seg: Segment) -> str:
        if self.component:
            return seg.get(self.field, self.component)
        if seg.name == "MSH" and self.field in (1, 2):
            return seg.raw(self.field)
        return seg.components(self.field)


def refs(*texts: str) -> tuple[FieldRef, ...]:
    return tuple(FieldRef.parse(t) for t in texts)


# Engine field -> where it is read by default (first non-empty value wins).
DEFAULT_SOURCES: dict[str, tuple[FieldRef, ...]] = {
    "accession_number": refs("IPC-1.1", "OBR-18.1", "OBR-3.1", "ORC-3.1"),
    "placer_order_number": refs("ORC-2", "OBR-2"),
    "filler_order_number": refs("ORC-3", "OBR-3"),
    "order_status": refs("ORC-5.1"),
    "patient_id": refs("PID-3.1", "PID-2.1"),
    "patient_name": refs("PID-5"),
    "patient_class": refs("PV1-2.1"),
    "ordered_priority": refs("TQ1-9.1", "ORC-7.6", "OBR-27.6", "OBR-5.1"),
    "procedure_code": refs("OBR-4.1", "OBR-44.1"),
    "procedure_text": refs("OBR-4.2", "OBR-44.2"),
    "modality": refs("OBR-24.1", "IPC-5.1"),
    "study_uid": refs("ZDS-1.1", "IPC-3.1"),
    "ordering_location": refs("PV1-3"),
    "reason_for_study": refs("OBR-31.2", "OBR-31.1"),
}
MAPPED_FIELDS = tuple(DEFAULT_SOURCES)
#: Fields whose values are normalised to a code as they are read (a value that does not
#: normalise is skipped): not read by :func:`read_plain_fields`.
NORMALISED_FIELDS = frozenset({"ordered_priority", "modality"})


@dataclass(frozen=True)
class FieldMap:
    """How one sender's messages are read: the sources of each engine field, site priority
    codes (value -> table-0027 letter, checked before the standard codes), and whether the
    modality may be inferred from the procedure text."""

    sources: dict[str, tuple[FieldRef, ...]] = field(default_factory=lambda: dict(DEFAULT_SOURCES))
    priority_codes: dict[str, str] = field(default_factory=dict)
    infer_modality: bool = True
    name: str = "defaults"  # the mapping entry used, for `triage hl7 check`

    def sources_of(self, name: str) -> tuple[FieldRef, ...]:
        return self.sources.get(name, DEFAULT_SOURCES[name])

    @functools.cached_property
    def plain_plan(self) -> tuple[tuple[str, tuple[tuple[FieldRef, bool], ...]], ...]:
        """The fields read as they are (not the priority and the modality, which are
        normalised), each with its sources and whether a source is read from the order's own
        group only (:data:`GROUP_SEGMENTS`), for :func:`read_plain_fields`."""
        return tuple(
            (
                name,
                tuple((r, r.segment in GROUP_SEGMENTS) for r in self.sources_of(name)),
            )
            for name in MAPPED_FIELDS
            if name not in NORMALISED_FIELDS
        )


DEFAULT_FIELD_MAP = FieldMap()


def _in(group: list[Segment], name: str) -> Segment | None:
    for seg in group:
        if seg.name == name:
            return seg
    return None


def segment_for(ref: FieldRef, msg: Message, group: list[Segment] | None) -> Segment | None:
    """The segment ``ref`` is read from: in the order's ``group`` if it is there (a group
    segment only there), else the first of its name in the message."""
    if group is not None:
        seg = _in(group, ref.segment)
        if seg is not None or ref.segment in GROUP_SEGMENTS:
            return seg
    return msg.first(ref.segment)


def read_plain_fields(
    fmap: FieldMap, msg: Message, group: list[Segment]
) -> dict[str, tuple[str, str]]:
    """{name: (value, source)} of every mapped field but the priority and the modality, for
    one order group: the same values as :func:`read_value` for each, in one pass (this runs
    for every order message the listener takes: one look-up of the group's segments, not one
    per source)."""
    local: dict[str, Segment] = {}
    for member in group:
        local.setdefault(member.name, member)
    first = msg.first
    out: dict[str, tuple[str, str]] = {}
    for name, sources in fmap.plain_plan:
        for ref, grouped in sources:
            seg = local.get(ref.segment)
            if seg is None and not grouped:
                seg = first(ref.segment)
            if seg is None:
                continue
            value = ref.read(seg)
            if value:
                out[name] = (value, ref.label)
                break
    return out


def read_value(
    fmap: FieldMap, name: str, msg: Message, group: list[Segment] | None = None
) -> tuple[str, str]:
    """(value, source) of engine field ``name``: the first non-empty source (for the priority
    and the modality: the first that normalises to a code)."""
    for ref in fmap.sources_of(name):
        seg = segment_for(ref, msg, group)
        if seg is None:
            continue
        value = ref.read(seg)
        if value:
            return value, ref.label
    return "", ""
