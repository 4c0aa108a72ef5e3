"""Load and validate rules/urgency.yaml (errors name the file and line).

Priority codes are the engine's one vocabulary, HL7 table 0027 (:mod:`triage.priority`): the
file must rank every code and only those, so a priority it produces can always be sent.

Every number a manager can set adds points (none may be negative): more evidence can only
raise a score, never lower it. Each loaded file gets a version id, a hash of its text, that
the pipeline records with every priority change it causes. ``docs/rules.md`` describes the
language.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from triage.errors import RulesError
from triage.priority import PRIORITY_LABELS, codes_text, is_priority_code
from triage.yamlfile import LineDict, check_keys, load_yaml, require

#: Fields a rule may test. ``order.*``: the order the study is linked to (from the HL7 message
#: as rules/hl7-mapping.yaml maps it); ``study.*``: the study's DICOM header fields as stored.
ORDER_FIELDS = (
    "accession_number",
    "placer_order_number",
    "filler_order_number",
    "order_control",
    "order_status",
    "patient_id",
    "patient_class",
    "ordered_priority",
    "procedure_code",
    "procedure_text",
    "modality",
    "study_uid",
    "ordering_location",
    "reason_for_study",
    "sending_application",
    "sending_facility",
)
STUDY_FIELDS = (
    "study_uid",
    "accession_number",
    "patient_id",
    "modality",
    "modalities",
    "body_part",
    "study_description",
    "contrast_agent",
    "calling_ae",
    "routed_model",
)
KNOWN_FIELDS = tuple(f"order.{f}" for f in ORDER_FIELDS) + tuple(f"study.{f}" for f in STUDY_FIELDS)

TOP_KEYS = {
    "version",
    "priorities",
    "default_priority",
    "patient_class",
    "unknown_patient_class",
    "locations",
    "findings",
    "aging",
    "rules",
    "priority_from_score",
}


@dataclass(frozen=True)
class PriorityLevel:
    code: str
    label: str
    base: float
    rank: int  # 0 = most urgent


@dataclass(frozen=True)
class ClassPoints:
    """A patient class (PV1-2) or a location (PV1-3): points, and the reading target."""

    code: str
    label: str
    points: float
    target_minutes: float | None = None  # None: no reading target, no aging


@dataclass(frozen=True)
class LocationRule:
    label: str
    pattern: re.Pattern[str]  # searched in the order's PV1-3, case-insensitive
    points: float
    target_minutes: float | None
    line: int


@dataclass(frozen=True)
class FindingWeight:
    model: str
    label: str
    points: float
    scale_by_probability: bool


@dataclass(frozen=True)
class Aging:
    points_per_minute: float  # for each whole minute past the reading target
    max_points: float
    stop_after_hours: float  # studies completed longer ago are not aged any more
    rescore_every_seconds: float


NO_AGING = Aging(0.0, 0.0, 24.0, 60.0)


@dataclass(frozen=True)
class Condition:
    field: str  # "order.procedure_text"
    pattern: re.Pattern[str] | None  # a regular expression, searched (case-insensitive)
    values: frozenset[str]  # or: any of these values, exactly (case-insensitive)

    def holds(self, value: str) -> bool:
        if self.pattern is not None:
            return self.pattern.search(value) is not None
        return value.strip().upper() in self.values


@dataclass(frozen=True)
class MatchRule:
    name: str
    points: float
    conditions: tuple[Condition, ...]  # all must hold
    line: int


@dataclass(frozen=True)
class UrgencyRules:
    path: str
    priorities: dict[str, PriorityLevel]
    default_priority: str
    patient_class: dict[str, ClassPoints]
    unknown_class: ClassPoints
    findings: dict[str, FindingWeight]
    priority_from_score: tuple[tuple[float, str], ...]  # (min_score, code), descending
    locations: tuple[LocationRule, ...] = ()
    aging: Aging = NO_AGING
    rules: tuple[MatchRule, ...] = ()
    version_id: str = ""  # sha256 of the file's text, 12 hex digits
    text: str = ""

    @property
    def unknown_patient_class_points(self) -> float:
        return self.unknown_class.points

    @property
    def fields_used(self) -> frozenset[str]:
        """The order/study fields the rules test (the pipeline gathers only these)."""
        return frozenset(c.field for r in self.rules for c in r.conditions)

    def level(self, code: str) -> PriorityLevel:
        """The level of an HL7 priority code; unknown/empty codes fall back to the default."""
        return (
            self.priorities.get((code or "").strip().upper())
            or self.priorities[self.default_priority]
        )

    def more_urgent(self, a: str, b: str) -> str:
        return a if self.level(a).rank <= self.level(b).rank else b


def version_id_of(text: str) -> str:
    """A rules file's version id: the first 12 hex digits of the sha256 of its text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _mapping(path: Path, parent: LineDict, key: str) -> LineDict:
    value = require(path, parent, key, dict)
    assert isinstance(value, LineDict)
    return value


def _number(path: Path, m: LineDict, key: str, *, low: float = 0.0) -> float:
    value = float(require(path, m, key, (int, float)))
    if value < low:
        why = (
            "points are never negative (the engine only raises studies)"
            if key.endswith("points") or key in ("base", "points_per_minute")
            else f"must be at least {low:g}"
        )
        raise RulesError(str(path), f"{key!r} is {value:g}: {why}", m.line_of(key))
    return value


def _target(path: Path, m: LineDict) -> float | None:
    if "reading_target_minutes" not in m:
        return None
    value = _number(path, m, "reading_target_minutes")
    if value <= 0:
        raise RulesError(
            str(path),
            "'reading_target_minutes' must be above 0",
            m.line_of("reading_target_minutes"),
        )
    return value


def _regex(path: Path, text: object, line: int, what: str) -> re.Pattern[str]:
    if not isinstance(text, str) or not text:
        raise RulesError(str(path), f"{what} must be a non-empty regular expression", line)
    try:
        return re.compile(text, re.IGNORECASE)
    except re.error as exc:
        raise RulesError(str(path), f"{what}: invalid regular expression: {exc}", line) from None


def _class_points(path: Path, code: str, spec: object, line: int, what: str) -> ClassPoints:
    if not isinstance(spec, LineDict):
        raise RulesError(str(path), f"{what} must be a mapping", line)
    check_keys(path, spec, {"label", "points", "reading_target_minutes"}, what)
    return ClassPoints(
        code,
        str(require(path, spec, "label", str)),
        _number(path, spec, "points"),
        _target(path, spec),
    )


def _priorities(path: Path, data: LineDict) -> dict[str, PriorityLevel]:
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
        base = _number(path, spec, "base")
        if base > 100:
            raise RulesError(
                str(path), f"'base' is {base:g}: scores run from 0 to 100", spec.line_of("base")
            )
        priorities[key] = PriorityLevel(key, str(require(path, spec, "label", str)), base, rank)
    missing = [c for c in PRIORITY_LABELS if c not in priorities]
    if missing:
        raise RulesError(
            str(path),
            f"priorities must rank every HL7 table 0027 code (any may arrive in an order); "
            f"missing: {', '.join(missing)}",
            data.line_of("priorities"),
        )
    _check_fixed_order(path, table, priorities)
    return priorities


def _check_fixed_order(path: Path, table: LineDict, priorities: dict[str, PriorityLevel]) -> None:
    """What table 0027's codes mean is not the site's to change: S (stat) is the most urgent,
    A (ASAP) comes before R (routine); and down the list a base never rises (a less urgent
    order never starts above a more urgent one). The engine never lists a study below its
    ordered priority *as ranked here*: a file ranking R above S would let it turn a STAT
    order into a routine one."""
    line = {c.strip().upper(): table.line_of(c) for c in table}
    by_rank = sorted(priorities.values(), key=lambda p: p.rank)
    if by_rank[0].code != "S":
        raise RulesError(
            str(path),
            f"priorities: S (stat) must be listed first, the most urgent; {by_rank[0].code} is",
            line[by_rank[0].code],
        )
    if priorities["A"].rank > priorities["R"].rank:
        raise RulesError(
            str(path), "priorities: A (ASAP) must be listed before R (routine)", line["A"]
        )
    for higher, lower in itertools.pairwise(by_rank):
        if lower.base > higher.base:
            raise RulesError(
                str(path),
                f"priorities: {lower.code} has base {lower.base:g}, more than {higher.code} "
                f"above it ({higher.base:g}); the list is most urgent first and a less urgent "
                "priority may not start higher",
                line[lower.code],
            )


def _locations(path: Path, data: LineDict) -> tuple[LocationRule, ...]:
    if "locations" not in data:
        return ()
    out: list[LocationRule] = []
    for item in require(path, data, "locations", list):
        if not isinstance(item, LineDict):
            raise RulesError(
                str(path), "locations entries must be mappings", data.line_of("locations")
            )
        check_keys(path, item, {"label", "match", "points", "reading_target_minutes"}, "a location")
        out.append(
            LocationRule(
                str(require(path, item, "label", str)),
                _regex(path, require(path, item, "match", str), item.line_of("match"), "match"),
                _number(path, item, "points"),
                _target(path, item),
                item.line,
            )
        )
    return tuple(out)


def _aging(path: Path, data: LineDict) -> Aging:
    if "aging" not in data:
        return NO_AGING
    spec = _mapping(path, data, "aging")
    keys = {"points_per_minute", "max_points", "stop_after_hours", "rescore_every_seconds"}
    check_keys(path, spec, keys, "aging")
    aging = Aging(
        _number(path, spec, "points_per_minute"),
        _number(path, spec, "max_points"),
        _number(path, spec, "stop_after_hours") if "stop_after_hours" in spec else 24.0,
        _number(path, spec, "rescore_every_seconds", low=1.0)
        if "rescore_every_seconds" in spec
        else 60.0,
    )
    return aging


def _rules(path: Path, data: LineDict) -> tuple[MatchRule, ...]:
    if "rules" not in data:
        return ()
    out: list[MatchRule] = []
    names: set[str] = set()
    for item in require(path, data, "rules", list):
        if not isinstance(item, LineDict):
            raise RulesError(str(path), "rules entries must be mappings", data.line_of("rules"))
        check_keys(path, item, {"name", "points", "when"}, "a rule")
        name = str(require(path, item, "name", str)).strip()
        if not name:
            raise RulesError(
                str(path), "a rule needs a name (it is shown in the reasons)", item.line
            )
        if name in names:
            raise RulesError(str(path), f"rule {name!r} is listed twice", item.line_of("name"))
        names.add(name)
        when = _mapping(path, item, "when")
        if not when:
            raise RulesError(
                str(path), f"rule {name!r}: 'when' names no field", item.line_of("when")
            )
        conditions: list[Condition] = []
        for fname, test in when.items():
            line = when.line_of(fname)
            if fname not in KNOWN_FIELDS:
                raise RulesError(
                    str(path),
                    f"rule {name!r}: unknown field {fname!r} (known: {', '.join(KNOWN_FIELDS)})",
                    line,
                )
            if isinstance(test, list):
                if not test or not all(isinstance(v, str | int) for v in test):
                    raise RulesError(
                        str(path), f"rule {name!r}: {fname} needs a list of values", line
                    )
                values = frozenset(str(v).strip().upper() for v in test)
                conditions.append(Condition(fname, None, values))
            else:
                conditions.append(
                    Condition(
                        fname, _regex(path, test, line, f"rule {name!r}: {fname}"), frozenset()
                    )
                )
        out.append(MatchRule(name, _number(path, item, "points"), tuple(conditions), item.line))
    return tuple(out)


def load_urgency_rules(path: Path, text: str | None = None) -> UrgencyRules:
    """Read and check ``path`` (or ``text`` attributed to it); RulesError names file and line."""
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RulesError(str(path), "file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RulesError(str(path), f"cannot read: {exc}") from None
    data = load_yaml(path, text)
    check_keys(path, data, TOP_KEYS, "the top level")
    if require(path, data, "version", int) != 1:
        raise RulesError(str(path), "unsupported version (expected 1)", data.line_of("version"))

    priorities = _priorities(path, data)
    default = str(require(path, data, "default_priority", str)).upper()
    if default not in priorities:
        raise RulesError(
            str(path),
            f"default_priority {default!r} is not one of the priorities",
            data.line_of("default_priority"),
        )

    classes: dict[str, ClassPoints] = {}
    table = _mapping(path, data, "patient_class")
    for code, spec in table.items():
        key = code.strip().upper()
        classes[key] = _class_points(path, key, spec, table.line_of(code), f"patient class {code}")
    unknown = _class_points(
        path,
        "",
        require(path, data, "unknown_patient_class", dict),
        data.line_of("unknown_patient_class"),
        "unknown_patient_class",
    )

    findings: dict[str, FindingWeight] = {}
    table = _mapping(path, data, "findings")
    for model, spec in table.items():
        if not isinstance(spec, LineDict):
            raise RulesError(
                str(path), f"finding {model!r} must be a mapping", table.line_of(model)
            )
        check_keys(path, spec, {"label", "points", "scale_by_probability"}, f"finding {model}")
        scale = spec.get("scale_by_probability", True)
        if not isinstance(scale, bool):
            raise RulesError(
                str(path),
                "scale_by_probability must be true or false",
                spec.line_of("scale_by_probability"),
            )
        findings[model] = FindingWeight(
            model, str(require(path, spec, "label", str)), _number(path, spec, "points"), scale
        )

    steps_raw = require(path, data, "priority_from_score", list)
    steps: list[tuple[float, str]] = []
    for step in steps_raw:
        if not isinstance(step, LineDict):
            raise RulesError(
                str(path),
                "priority_from_score entries must be mappings",
                data.line_of("priority_from_score"),
            )
        check_keys(path, step, {"min_score", "priority"}, "priority_from_score")
        code = str(require(path, step, "priority", str)).upper()
        if code not in priorities:
            raise RulesError(
                str(path),
                f"unknown priority {code!r} (not an HL7 table 0027 code: {codes_text()})",
                step.line_of("priority"),
            )
        min_score = _number(path, step, "min_score")
        if min_score > 100:
            raise RulesError(
                str(path),
                f"min_score {min_score:g} can never be reached: scores are capped at 100",
                step.line_of("min_score"),
            )
        steps.append((min_score, code))
    steps.sort(key=lambda s: -s[0])
    if not steps or steps[-1][0] > 0:
        raise RulesError(
            str(path),
            "priority_from_score needs an entry with min_score 0",
            data.line_of("priority_from_score"),
        )
    for (hi, code_hi), (_lo, code_lo) in itertools.pairwise(steps):
        if priorities[code_hi].rank > priorities[code_lo].rank:
            raise RulesError(
                str(path),
                f"priority_from_score: min_score {hi:g} gives {code_hi}, less urgent than "
                f"{code_lo} below it (a higher score must never give a lower priority)",
                data.line_of("priority_from_score"),
            )
    return UrgencyRules(
        str(path),
        priorities,
        default,
        classes,
        unknown,
        findings,
        tuple(steps),
        locations=_locations(path, data),
        aging=_aging(path, data),
        rules=_rules(path, data),
        version_id=version_id_of(text),
        text=text,
    )
