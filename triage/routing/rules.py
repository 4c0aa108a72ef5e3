"""Load and apply rules/routing.yaml. Matching is a plain function; no server needed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from triage.errors import RulesError
from triage.routing.facts import RoutingFacts
from triage.yamlfile import LineDict, check_keys, load_yaml, require

CONDITION_KEYS = {"body_part", "description", "procedure_code", "contrast"}
RULE_KEYS = {"name", "model", "modality", "require", "exclude", "expected_series"}


@dataclass(frozen=True)
class Condition:
    body_parts: frozenset[str] | None = None
    description: re.Pattern[str] | None = None
    procedure_codes: frozenset[str] | None = None
    contrast: bool | None = None

    def results(self, facts: RoutingFacts) -> list[bool]:
        """One boolean per condition that is set."""
        out: list[bool] = []
        if self.body_parts is not None:
            out.append(bool(self.body_parts & facts.body_parts))
        if self.description is not None:
            pattern = self.description
            out.append(any(pattern.search(d) for d in facts.descriptions))
        if self.procedure_codes is not None:
            out.append(bool(self.procedure_codes & facts.procedure_codes))
        if self.contrast is not None:
            out.append(facts.contrast == self.contrast)
        return out


@dataclass(frozen=True)
class RoutingRule:
    name: str
    model: str
    modalities: frozenset[str]
    require: tuple[Condition, ...]
    exclude: Condition | None
    line: int
    expected_series: tuple[re.Pattern[str], ...] = ()  # series descriptions; see completion

    def matches(self, facts: RoutingFacts) -> bool:
        if self.modalities and not (self.modalities & facts.modalities):
            return False
        if not all(any(group.results(facts)) for group in self.require):
            return False
        return not (self.exclude is not None and any(self.exclude.results(facts)))


@dataclass(frozen=True)
class RoutingRules:
    path: str
    rules: tuple[RoutingRule, ...]

    @property
    def models(self) -> set[str]:
        return {r.model for r in self.rules}


def route(rules: RoutingRules, facts: RoutingFacts) -> RoutingRule | None:
    """The first rule that matches ``facts``, or None."""
    for rule in rules.rules:
        if rule.matches(facts):
            return rule
    return None


def load_routing_rules(path: Path, text: str | None = None) -> RoutingRules:
    """Parse and validate routing rules; errors name the file and line."""
    data = load_yaml(path, text)
    check_keys(path, data, {"version", "rules"}, "the top level")
    version = require(path, data, "version", int)
    if version != 1:
        raise RulesError(str(path), f"unsupported version {version} (expected 1)", data.line)
    raw_rules = require(path, data, "rules", list)
    rules: list[RoutingRule] = []
    names: set[str] = set()
    for i, raw in enumerate(raw_rules):
        if not isinstance(raw, LineDict):
            raise RulesError(str(path), f"rule #{i + 1} must be a mapping", data.line_of("rules"))
        check_keys(path, raw, RULE_KEYS, f"rule #{i + 1}")
        name = require(path, raw, "name", str)
        if name in names:
            raise RulesError(str(path), f"duplicate rule name {name!r}", raw.line_of("name"))
        names.add(name)
        model = require(path, raw, "model", str)
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", model):
            raise RulesError(str(path), f"invalid model name {model!r}", raw.line_of("model"))
        modalities = frozenset(
            m.upper() for m in _str_list(path, raw, "modality", required=False) or []
        )
        groups_raw = raw.get("require", [])
        if not isinstance(groups_raw, list):
            raise RulesError(str(path), "'require' must be a list", raw.line_of("require"))
        groups = []
        for g in groups_raw:
            if not isinstance(g, LineDict) or not g:
                raise RulesError(
                    str(path), "each 'require' entry must be a mapping", raw.line_of("require")
                )
            groups.append(_condition(path, g))
        exclude = None
        if "exclude" in raw:
            ex = raw["exclude"]
            if not isinstance(ex, LineDict):
                raise RulesError(str(path), "'exclude' must be a mapping", raw.line_of("exclude"))
            exclude = _condition(path, ex)
        expected = []
        for text in _str_list(path, raw, "expected_series", required=False) or []:
            expected.append(_regex(path, raw, "expected_series", text))
        rules.append(
            RoutingRule(name, model, modalities, tuple(groups), exclude, raw.line, tuple(expected))
        )
    return RoutingRules(str(path), tuple(rules))


def _str_list(path: Path, m: LineDict, key: str, *, required: bool = True) -> list[str] | None:
    if key not in m:
        if required:
            raise RulesError(str(path), f"missing {key!r}", m.line)
        return None
    value = m[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RulesError(str(path), f"{key!r} must be a list of strings", m.line_of(key))
    return list(value)


def _regex(path: Path, m: LineDict, key: str, text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise RulesError(str(path), f"invalid regular expression: {exc}", m.line_of(key)) from None


def _condition(path: Path, m: LineDict) -> Condition:
    check_keys(path, m, CONDITION_KEYS, "a condition")
    body = _str_list(path, m, "body_part", required=False)
    codes = _str_list(path, m, "procedure_code", required=False)
    pattern = None
    if "description" in m:
        text = m["description"]
        if not isinstance(text, str):
            raise RulesError(str(path), "'description' must be a string", m.line_of("description"))
        pattern = _regex(path, m, "description", text)
    contrast = None
    if "contrast" in m:
        value = m["contrast"]
        if value not in ("present", "absent"):
            raise RulesError(
                str(path), "'contrast' must be present or absent", m.line_of("contrast")
            )
        contrast = value == "present"
    return Condition(
        body_parts=frozenset(b.upper() for b in body) if body is not None else None,
        description=pattern,
        procedure_codes=frozenset(codes) if codes is not None else None,
        contrast=contrast,
    )
