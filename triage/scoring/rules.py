"""Load and validate rules/urgency.yaml (errors name the file and line).

Priority codes are the engine's one vocabulary, HL7 table 0027 (:mod:`triage.priority`): the
file must rank every code and only those, so a priority it produces can always be sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from triage.errors import RulesError
from triage.priority import PRIORITY_LABELS, codes_text, is_priority_code
from triage.yamlfile import LineDict, check_keys, load_yaml, require


@dataclass(frozen=True)
class PriorityLevel:
    code: str
    label: str
    base: float
    rank: int  # 0 = most urgent


@dataclass(frozen=True)
class ClassPoints:
    code: str
    label: str
    points: float


@dataclass(frozen=True)
class FindingWeight:
    model: str
    label: str
    points: float
    scale_by_probability: bool


@dataclass(frozen=True)
class UrgencyRules:
    path: str
    priorities: dict[str, PriorityLevel]
    default_priority: str
    patient_class: dict[str, ClassPoints]
    unknown_patient_class_points: float
    findings: dict[str, FindingWeight]
    priority_from_score: tuple[tuple[float, str], ...]  # (min_score, code), descending

    def level(self, code: str) -> PriorityLevel:
        """The level of an HL7 priority code; unknown/empty codes fall back to the default."""
        return (
            self.priorities.get((code or "").strip().upper())
            or self.priorities[self.default_priority]
        )

    def more_urgent(self, a: str, b: str) -> str:
        return a if self.level(a).rank <= self.level(b).rank else b


def _mapping(path: Path, parent: LineDict, key: str) -> LineDict:
    value = require(path, parent, key, dict)
    assert isinstance(value, LineDict)
    return value


def _number(path: Path, m: LineDict, key: str) -> float:
    value = require(path, m, key, (int, float))
    return float(value)


def load_urgency_rules(path: Path, text: str | None = None) -> UrgencyRules:
    data = load_yaml(path, text)
    top = {
        "version",
        "priorities",
        "default_priority",
        "patient_class",
        "unknown_patient_class_points",
        "findings",
        "priority_from_score",
    }
    check_keys(path, data, top, "the top level")
    if require(path, data, "version", int) != 1:
        raise RulesError(str(path), "unsupported version (expected 1)", data.line_of("version"))

    priorities: dict[str, PriorityLevel] = {}
    table = _mapping(path, data, "priorities")
    for rank, (code, spec) in enumerate(table.items()):
        line = table.line_of(code)
        key = code.strip().upper()
        if not is_priority_code(key):
            raise RulesError(
                str(path),
                f"priority {code!r} is not an HL7 table 0027 code ({codes_text()}); a site's "
                "own codes are translated to these in rules/hl7-mapping.yaml (priority_codes)",
                line,
            )
        if key in priorities:
            raise RulesError(str(path), f"priority {key!r} is listed twice", line)
        if not isinstance(spec, LineDict):
            raise RulesError(str(path), f"priority {code!r} must be a mapping", line)
        check_keys(path, spec, {"label", "base"}, f"priority {code}")
        priorities[key] = PriorityLevel(
            key, str(require(path, spec, "label", str)), _number(path, spec, "base"), rank
        )
    missing = [c for c in PRIORITY_LABELS if c not in priorities]
    if missing:
        raise RulesError(
            str(path),
            f"priorities must rank every HL7 table 0027 code (any may arrive in an order); "
            f"missing: {', '.join(missing)}",
            data.line_of("priorities"),
        )
    default = str(require(path, data, "default_priority", str)).upper()
    if default not in priorities:
        raise RulesError(
            str(path),
            f"default_priority {default!r} is not one of the priorities",
            data.line_of("default_priority"),
        )

    classes: dict[str, ClassPoints] = {}
    for code, spec in _mapping(path, data, "patient_class").items():
        if not isinstance(spec, LineDict):
            raise RulesError(str(path), f"patient class {code!r} must be a mapping", data.line)
        check_keys(path, spec, {"label", "points"}, f"patient class {code}")
        classes[code.upper()] = ClassPoints(
            code.upper(), str(require(path, spec, "label", str)), _number(path, spec, "points")
        )
    unknown = _number(path, data, "unknown_patient_class_points")

    findings: dict[str, FindingWeight] = {}
    for model, spec in _mapping(path, data, "findings").items():
        if not isinstance(spec, LineDict):
            raise RulesError(str(path), f"finding {model!r} must be a mapping", data.line)
        check_keys(path, spec, {"label", "points", "scale_by_probability"}, f"finding {model}")
        scale = spec.get("scale_by_probability", True)
        if not isinstance(scale, bool):
            raise RulesError(
                str(path), "scale_by_probability must be true or false", spec.line_of("points")
            )
        findings[model] = FindingWeight(
            model, str(require(path, spec, "label", str)), _number(path, spec, "points"), scale
        )

    steps_raw = require(path, data, "priority_from_score", list)
    steps: list[tuple[float, str]] = []
    for step in steps_raw:
        if not isinstance(step, LineDict):
            raise RulesError(str(path), "priority_from_score entries must be mappings", data.line)
        check_keys(path, step, {"min_score", "priority"}, "priority_from_score")
        code = str(require(path, step, "priority", str)).upper()
        if code not in priorities:
            raise RulesError(
                str(path),
                f"unknown priority {code!r} (not an HL7 table 0027 code: {codes_text()})",
                step.line_of("priority"),
            )
        steps.append((_number(path, step, "min_score"), code))
    steps.sort(key=lambda s: -s[0])
    if not steps or steps[-1][0] > 0:
        raise RulesError(
            str(path),
            "priority_from_score needs an entry with min_score 0",
            data.line_of("priority_from_score"),
        )
    return UrgencyRules(str(path), priorities, default, classes, unknown, findings, tuple(steps))
