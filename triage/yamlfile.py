"""Load a YAML rules file, keeping line numbers so validation errors name file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from triage.errors import RulesError


class LineDict(dict[str, Any]):
    """A mapping from a YAML file that remembers the line of itself and of each key."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"keys must be strings, not {key!r}", key_node.start_mark
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path, text: str | None = None) -> LineDict:
    """Parse ``path`` (or ``text`` attributed to it); the top level must be a mapping."""
    try:
        if text is None:
            text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_LineLoader)
    except FileNotFoundError:
        raise RulesError(str(path), "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(str(path), f"cannot read: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise RulesError(
            str(path), f"invalid YAML: {_plain(exc.problem or str(exc))}", line
        ) from None
    except yaml.YAMLError as exc:
        raise RulesError(str(path), f"invalid YAML: {exc}") from None
    if not isinstance(data, LineDict):
        raise RulesError(str(path), "the top level must be a mapping", 1)
    return data


# PyYAML's words for what it expected, in the words of someone editing the file
_YAML_WORDS = (
    ("<block end>", "the end of an indented block"),
    ("<block mapping start>", "a new indented 'key: value' block"),
    ("<block sequence start>", "a new '- item' list"),
    ("<block entry>", "a '- item'"),
    ("<document start>", "a new document"),
    ("<stream end>", "the end of the file"),
)


def _plain(problem: str) -> str:
    """PyYAML's problem text with its token names in plain words, and a hint for the usual
    cause (indentation) when a block was not closed where expected."""
    text = problem
    for token, words in _YAML_WORDS:
        text = text.replace(f"'{token}'", words).replace(token, words)
    if "indented" in text or "'key: value'" in text:
        text += " (check the indentation of this line against the lines above it)"
    return text


def require(
    path: Path, mapping: LineDict, key: str, kind: type | tuple[type, ...], what: str = ""
) -> Any:
    """``mapping[key]`` checked against ``kind``, or a RulesError naming file and line."""
    if key not in mapping:
        raise RulesError(str(path), f"missing required key {key!r} {what}".strip(), mapping.line)
    value = mapping[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise RulesError(
            str(path),
            f"{key!r} must be {_kind_name(kind)}, not {type(value).__name__}",
            mapping.line_of(key),
        )
    return value


def check_keys(path: Path, mapping: LineDict, allowed: set[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise RulesError(
                str(path),
                f"unknown key {key!r} in {where} (allowed: {', '.join(sorted(allowed))})",
                mapping.line_of(key),
            )


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", int: "a number"}
    names[float] = "a number"
    names[bool] = "true or false"
    return " or ".join(names.get(k, k.__name__) for k in _kinds(kind))
