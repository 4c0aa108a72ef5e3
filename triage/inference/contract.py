"""The tensor contract of a model, read from its Triton ``config.pbtxt`` (or the server's config).

``config.pbtxt`` is protobuf text format. A small parser here reads the subset Triton configs use
(scalars, nested messages with ``{}`` or ``<>``, lists in ``[]``, ``#`` comments, strings with
escapes, optional ``:`` before a message, ``,``/``;`` separators) into a tree, from which
:class:`ModelContract` is built and checked against what the engine needs. No protobuf dependency;
tests cross-check the result against ``google.protobuf.text_format`` with tritonclient's
``model_config_pb2``.

Engine contract (see models/README.md): exactly one FP32 input with 3 positive dims (z, y, x; HU,
inferior -> superior), outputs ``probability`` FP32 [1] and ``slice_probabilities`` FP32 [z], a
``threshold`` parameter in [0, 1] (the operating point), optionally a ``version`` parameter and
``z_resampling`` (``linear``, the default, or ``nearest``: how slices reach the input's z dims).
Problems raise :class:`~triage.errors.RulesError` naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triage.errors import RulesError

PROBABILITY = "probability"
Z_RESAMPLING = ("linear", "nearest")  # how triage.inference.volume.resample goes along z
SLICE_PROBABILITIES = "slice_probabilities"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton's enum name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]  # without the batch dimension


@dataclass(frozen=True)
class ModelContract:
    """What the engine needs to know to call a model and read its answer."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: Mapping[str, str] = field(default_factory=dict)
    backend: str = ""
    source: str = ""  # file path, or "triton:<url>" for a config read from the server

    @property
    def input(self) -> TensorSpec:
        """The (single) volume input."""
        return self.inputs[0]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        z, y, x = self.input.dims
        return (z, y, x)

    @property
    def threshold(self) -> float:
        """Operating point: probability >= threshold is a positive finding."""
        return float(self.parameters["threshold"])

    @property
    def version(self) -> str:
        return self.parameters.get("version", "")

    @property
    def z_resampling(self) -> str:
        """How slices are brought to the input's z dims: ``linear`` (default) or ``nearest``
        (:func:`triage.inference.volume.resample`); the model was trained on one of them."""
        return self.parameters.get("z_resampling", "linear")

    @property
    def description(self) -> str:
        return self.parameters.get("description", "")

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


# -- text-format parser -------------------------------------------------------------------------


@dataclass
class _Scalar:
    value: str | int | float
    kind: str  # "string", "number", "ident"
    line: int


@dataclass
class _Message:
    line: int
    fields: dict[str, list[_Scalar | _Message]] = field(default_factory=dict)

    def add(self, key: str, value: _Scalar | _Message) -> None:
        self.fields.setdefault(key, []).append(value)


_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+) |
    (?P<nl>\n) |
    (?P<comment>\#[^\n]*) |
    (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*') |
    (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?[fF]?(?![A-Za-z_0-9.])) |
    (?P<ident>[-]?[A-Za-z_][A-Za-z0-9_.]*) |
    (?P<punct>[{}\[\]<>:,;])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\"}


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens: list[tuple[str, str, int]] = []
        line, pos = 1, 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise RulesError(source, f"unexpected character {text[pos]!r}", line)
            kind = m.lastgroup or ""
            if kind == "nl":
                line += 1
            elif kind not in ("ws", "comment"):
                self.tokens.append((kind, m.group(), line))
            pos = m.end()
        self.i = 0
        self.eof_line = line

    def error(self, message: str, line: int | None = None) -> RulesError:
        if line is None:
            line = self.tokens[self.i][2] if self.i < len(self.tokens) else self.eof_line
        return RulesError(self.source, message, line)

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise self.error("unexpected end of file")
        self.i += 1
        return tok

    def accept(self, text: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "punct" and tok[1] == text:
            self.i += 1
            return True
        return False

    def parse(self) -> _Message:
        msg = self.message(None, 1)
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return msg

    def message(self, close: str | None, line: int) -> _Message:
        msg = _Message(line)
        while True:
            tok = self.peek()
            if tok is None:
                if close is not None:
                    raise self.error(f"missing {close!r} for the message opened on line {line}")
                return msg
            if tok[0] == "punct" and tok[1] == close:
                self.i += 1
                return msg
            kind, text, tline = self.take()
            if kind != "ident":
                raise self.error(f"expected a field name, got {text!r}", tline)
            had_colon = self.accept(":")
            nxt = self.peek()
            if nxt is None:
                raise self.error(f"field {text!r} has no value")
            if nxt[0] == "punct" and nxt[1] == "[":
                self.i += 1
                for value in self.list_values():
                    msg.add(text, value)
            elif nxt[0] == "punct" and nxt[1] in "{<":
                self.i += 1
                msg.add(text, self.message("}" if nxt[1] == "{" else ">", nxt[2]))
            elif had_colon:
                msg.add(text, self.scalar())
            else:
                raise self.error(f"expected ':' after field name {text!r}", tline)
            if not self.accept(","):
                self.accept(";")

    def list_values(self) -> list[_Scalar | _Message]:
        values: list[_Scalar | _Message] = []
        if self.accept("]"):
            return values
        while True:
            tok = self.peek()
            if tok is not None and tok[0] == "punct" and tok[1] in "{<":
                self.i += 1
                values.append(self.message("}" if tok[1] == "{" else ">", tok[2]))
            else:
                values.append(self.scalar())
            if self.accept("]"):
                return values
            if not self.accept(","):
                raise self.error("expected ',' or ']' in a list")

    def scalar(self) -> _Scalar:
        kind, text, line = self.take()
        if kind == "string":
            value = _unescape(text[1:-1])
            # adjacent string literals concatenate
            while (nxt := self.peek()) is not None and nxt[0] == "string":
                value += _unescape(self.take()[1][1:-1])
            return _Scalar(value, "string", line)
        if kind == "number":
            t = text.rstrip("fF")
            try:
                return _Scalar(int(t), "number", line)
            except ValueError:
                return _Scalar(float(t), "number", line)
        if kind == "ident":
            return _Scalar(text, "ident", line)
        raise self.error(f"expected a value, got {text!r}", line)


def parse_text_proto(text: str, source: str = "<text>") -> dict[str, Any]:
    """Parse protobuf text format into plain data: a message is a dict of field -> list of values
    (str, int, float or nested dicts). Raises RulesError(source, ..., line)."""
    return _plain(_Parser(text, source).parse())


def _plain(node: _Scalar | _Message) -> Any:
    if isinstance(node, _Scalar):
        return node.value
    return {k: [_plain(v) for v in vs] for k, vs in node.fields.items()}


# -- contract -----------------------------------------------------------------------------------


class _Builder:
    """Turns a parsed config (from text or from the server's JSON) into a ModelContract."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str, node: _Scalar | _Message | None = None) -> RulesError:
        return RulesError(self.source, message, node.line if node is not None else None)

    def one(self, msg: _Message, key: str, kind: str, required: bool = True) -> _Scalar | None:
        values = msg.fields.get(key, [])
        if not values:
            if required:
                raise self.fail(f"missing {key!r}", msg if msg.line > 1 else None)
            return None
        if len(values) > 1:
            raise self.fail(f"{key!r} given more than once", values[1])
        v = values[0]
        if not isinstance(v, _Scalar):
            raise self.fail(f"{key!r} must be a value, not a message", v)
        if kind == "int" and not (isinstance(v.value, int) and v.kind == "number"):
            raise self.fail(f"{key!r} must be an integer, got {v.value!r}", v)
        if kind == "str" and v.kind not in ("string", "ident"):
            raise self.fail(f"{key!r} must be a string, got {v.value!r}", v)
        return v

    def tensors(self, msg: _Message, key: str) -> tuple[TensorSpec, ...]:
        specs = []
        for node in msg.fields.get(key, []):
            if not isinstance(node, _Message):
                raise self.fail(f"{key!r} entries must be messages", node)
            name = self.one(node, "name", "str")
            dtype = self.one(node, "data_type", "str")
            assert name is not None and dtype is not None
            dims = []
            for d in node.fields.get("dims", []):
                if not (isinstance(d, _Scalar) and isinstance(d.value, int)):
                    raise self.fail(f"{key} {name.value!r}: dims must be integers", d)
                dims.append(d.value)
            specs.append(TensorSpec(str(name.value), str(dtype.value), tuple(dims)))
        return tuple(specs)

    def parameters(self, msg: _Message) -> tuple[dict[str, str], dict[str, int]]:
        params: dict[str, str] = {}
        lines: dict[str, int] = {}
        for node in msg.fields.get("parameters", []):
            if not isinstance(node, _Message):
                raise self.fail("'parameters' entries must be messages", node)
            key = self.one(node, "key", "str")
            assert key is not None
            values = node.fields.get("value", [])
            if len(values) != 1 or not isinstance(values[0], _Message):
                raise self.fail(f"parameter {key.value!r} needs value {{ string_value: ... }}", key)
            sv = self.one(values[0], "string_value", "str")
            assert sv is not None
            params[str(key.value)] = str(sv.value)
            lines[str(key.value)] = key.line
        return params, lines

    def build(self, msg: _Message) -> ModelContract:
        name = self.one(msg, "name", "str")
        mbs = self.one(msg, "max_batch_size", "int", required=False)
        backend = self.one(msg, "backend", "str", required=False) or self.one(
            msg, "platform", "str", required=False
        )
        assert name is not None
        inputs = self.tensors(msg, "input")
        outputs = self.tensors(msg, "output")
        params, plines = self.parameters(msg)
        contract = ModelContract(
            name=str(name.value),
            max_batch_size=int(mbs.value) if mbs is not None else 0,
            inputs=inputs,
            outputs=outputs,
            parameters=params,
            backend=str(backend.value) if backend is not None else "",
            source=self.source,
        )
        self.check(contract, msg, plines)
        return contract

    def check(self, c: ModelContract, msg: _Message, plines: dict[str, int]) -> None:
        def line_of(key: str) -> _Scalar | _Message | None:
            values = msg.fields.get(key)
            return values[0] if values else None

        if c.max_batch_size < 0:
            raise self.fail("max_batch_size must be >= 0", line_of("max_batch_size"))
        if len(c.inputs) != 1:
            raise self.fail(
                f"the engine needs exactly one input (a volume), found {len(c.inputs)}",
                line_of("input") or msg,
            )
        vol = c.inputs[0]
        if vol.data_type != "TYPE_FP32" or len(vol.dims) != 3 or min(vol.dims) <= 0:
            raise self.fail(
                f"input {vol.name!r} must be TYPE_FP32 with 3 positive dims [z, y, x], "
                f"got {vol.data_type} {list(vol.dims)}",
                line_of("input"),
            )
        names = {o.name: o for o in c.outputs}
        expected = {PROBABILITY: (1,), SLICE_PROBABILITIES: (vol.dims[0],)}
        for oname, dims in expected.items():
            spec = names.get(oname)
            if spec is None:
                raise self.fail(f"missing output {oname!r}", line_of("output") or msg)
            if spec.data_type != "TYPE_FP32" or spec.dims != dims:
                raise self.fail(
                    f"output {oname!r} must be TYPE_FP32 dims {list(dims)}, "
                    f"got {spec.data_type} {list(spec.dims)}",
                    line_of("output"),
                )
        if "threshold" not in c.parameters:
            raise self.fail(
                "missing parameter 'threshold' (the operating point)",
                line_of("parameters") or msg,
            )
        tline = plines.get("threshold")
        where = _Scalar("", "ident", tline) if tline else None
        try:
            t = float(c.parameters["threshold"])
        except ValueError:
            raise self.fail(
                f"parameter 'threshold' must be a number, got {c.parameters['threshold']!r}", where
            ) from None
        if not 0.0 <= t <= 1.0:
            raise self.fail(f"parameter 'threshold' must be within [0, 1], got {t}", where)
        if c.z_resampling not in Z_RESAMPLING:
            zline = plines.get("z_resampling")
            raise self.fail(
                f"parameter 'z_resampling' must be one of {', '.join(Z_RESAMPLING)}, "
                f"got {c.z_resampling!r}",
                _Scalar("", "ident", zline) if zline else None,
            )


def parse_contract(text: str, source: str = "<config.pbtxt>") -> ModelContract:
    """Parse config.pbtxt text into a checked ModelContract (RulesError names source:line)."""
    return _Builder(source).build(_Parser(text, source).parse())


def load_contract(path: Path | str) -> ModelContract:
    """Read and check ``path`` (a model's config.pbtxt)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(str(p), f"cannot read: {exc}") from None
    return parse_contract(text, str(p))


def contract_from_config(config: Mapping[str, Any], source: str) -> ModelContract:
    """Build a checked ModelContract from a model config as JSON (tritonclient's
    ``get_model_config(..., as_json=True)``, HTTP or gRPC: int64 values may be strings)."""
    return _Builder(source).build(_from_json(config))


def _from_json(value: Any, line: int = 0) -> _Message:
    msg = _Message(line)
    for key, v in value.items():
        if key == "parameters" and isinstance(v, Mapping):
            for pkey, pval in v.items():
                entry = _Message(line)
                entry.add("key", _Scalar(str(pkey), "string", line))
                entry.add("value", _from_json(pval if isinstance(pval, Mapping) else {}, line))
                msg.add("parameters", entry)
            continue
        for item in v if isinstance(v, list) else [v]:
            if isinstance(item, Mapping):
                msg.add(key, _from_json(item, line))
            elif isinstance(item, bool):
                msg.add(key, _Scalar(str(item).lower(), "ident", line))
            elif isinstance(item, int | float):
                msg.add(key, _Scalar(item, "number", line))
            elif key in ("dims", "max_batch_size") and re.fullmatch(r"-?\d+", str(item)):
                msg.add(key, _Scalar(int(item), "number", line))
            else:
                msg.add(key, _Scalar(str(item), "string", line))
    return msg
