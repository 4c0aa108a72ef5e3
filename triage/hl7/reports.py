"""Final reports from the RIS (inbound ORU^R01) as truth for the AI results.

The ``final_report`` section of ``rules/hl7-mapping.yaml`` says which coded result in the
report means positive or negative for which model::

    final_report:
      result_status: [F, C]      # OBR-25 values that count (final, corrected); others ignored
      results:
        - model: ich
          code: [ICH]            # OBX-3.1 identifiers of the coded result
          positive: [POS, Y]     # OBX-5.1 values meaning "present"
          negative: [NEG, N]     # ... and "absent"

Without the section no report is read (the ORU is stored and acknowledged, nothing applied).
The study is found by the Study Instance UID (the mapping's ``study_uid`` sources) or the
accession number (``accession_number`` sources) of each OBR group, as for orders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from triage.errors import RulesError
from triage.hl7.codec import Message, Segment
from triage.hl7.fieldmap import FieldMap, read_value
from triage.yamlfile import LineDict, check_keys, require

REPORT_KEYS = {"result_status", "results"}
RESULT_KEYS = {"model", "code", "positive", "negative"}


@dataclass(frozen=True)
class ResultCode:
    model: str
    codes: frozenset[str]  # OBX-3.1, upper-case
    positive: frozenset[str]  # OBX-5.1, upper-case
    negative: frozenset[str]


@dataclass(frozen=True)
class FinalReportMap:
    result_status: frozenset[str] = frozenset()
    results: tuple[ResultCode, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.results)


NO_FINAL_REPORT = FinalReportMap()


@dataclass(frozen=True)
class ReportResult:
    """One coded result of a final report: the truth for one model on one study."""

    model: str
    truth: str  # positive, negative
    accession_number: str
    study_uid: str
    code: str
    value: str


@dataclass
class ParsedReport:
    results: list[ReportResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _values(path: Path, spec: LineDict, key: str, what: str) -> frozenset[str]:
    raw = require(path, spec, key, (list, str), what)
    items = [raw] if isinstance(raw, str) else raw
    values = frozenset(str(v).strip().upper() for v in items if str(v).strip())
    if not values:
        raise RulesError(
            str(path), f"{key!r} {what} must name at least one value", spec.line_of(key)
        )
    return values


def load_final_report(path: Path, data: LineDict) -> FinalReportMap:
    """The ``final_report`` section of a mapping file (errors name the file and line)."""
    if "final_report" not in data:
        return NO_FINAL_REPORT
    spec = require(path, data, "final_report", dict)
    check_keys(path, spec, REPORT_KEYS, "final_report")
    status = (
        _values(path, spec, "result_status", "in final_report")
        if "result_status" in spec
        else frozenset({"F", "C"})
    )
    raw = require(path, spec, "results", list, "in final_report")
    results: list[ResultCode] = []
    for i, item in enumerate(raw):
        if not isinstance(item, LineDict):
            raise RulesError(
                str(path),
                f"final_report result #{i + 1} must be a mapping",
                spec.line_of("results"),
            )
        what = f"in final_report result #{i + 1}"
        check_keys(path, item, RESULT_KEYS, f"final_report result #{i + 1}")
        model = str(require(path, item, "model", str, what)).strip()
        positive = _values(path, item, "positive", what)
        negative = _values(path, item, "negative", what)
        if positive & negative:
            raise RulesError(
                str(path),
                f"{', '.join(sorted(positive & negative))} both positive and negative {what}",
                item.line_of("negative"),
            )
        results.append(ResultCode(model, _values(path, item, "code", what), positive, negative))
    return FinalReportMap(status, tuple(results))


def _groups(msg: Message) -> list[list[Segment]]:
    """The OBR groups of a message: each OBR with the segments after it up to the next."""
    groups: list[list[Segment]] = []
    for seg in msg.segments:
        if seg.name == "OBR":
            groups.append([seg])
        elif groups:
            groups[-1].append(seg)
    return groups


def reports_of(msg: Message, fmap: FieldMap, spec: FinalReportMap) -> ParsedReport:
    """The coded results of an ORU^R01 that ``spec`` maps (none when it maps nothing)."""
    out = ParsedReport()
    if not spec.enabled:
        out.notes.append("no final_report section in the mapping: report not read")
        return out
    for group in _groups(msg):
        obr = group[0]
        status = obr.get(25).upper()
        accession, _ = read_value(fmap, "accession_number", msg, group)
        study_uid, _ = read_value(fmap, "study_uid", msg, group)
        if status not in spec.result_status:
            out.notes.append(
                f"report {accession or '?'}: OBR-25 {status or '(empty)'} is not a final "
                "result status; not applied"
            )
            continue
        for seg in group:
            if seg.name != "OBX":
                continue
            code = seg.get(3).upper()
            value = seg.get(5).upper()
            for rc in spec.results:
                if code not in rc.codes:
                    continue
                truth = (
                    "positive"
                    if value in rc.positive
                    else "negative"
                    if value in rc.negative
                    else ""
                )
                if not truth:
                    out.notes.append(
                        f"OBX {code}: value {value!r} is neither positive nor negative"
                    )
                    continue
                out.results.append(ReportResult(rc.model, truth, accession, study_uid, code, value))
    return out
