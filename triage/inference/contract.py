"""The tensor contract of a model, read from its Triton ``config.pbtxt`` (or the server's config).

``config.pbtxt`` is protobuf text format for Triton's ``ModelConfig`` message: it is parsed by
``google.protobuf.text_format`` into tritonclient's ``model_config_pb2.ModelConfig`` (both come
with tritonclient), a config read from the server (JSON) by ``google.protobuf.json_format``, so
both go through one message type and one set of checks. Protobuf's syntax errors carry line and
column and become :class:`~triage.errors.RulesError` here; for the engine's own checks, the
lines come from a walk of the file with protobuf's tokenizer (:func:`_locate`).

Engine contract (see models/README.md): exactly one FP32 input with 3 positive dims (z, y, x; HU,
inferior -> superior), outputs ``probability`` FP32 [1] and ``slice_probabilities`` FP32 [z], a
``threshold`` parameter in [0, 1] (the operating point), optionally a ``version`` parameter and
``z_resampling`` (``linear``, the default, or ``nearest``: how slices reach the input's z dims).
Problems raise :class:`~triage.errors.RulesError` naming the file and line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triage.errors import RulesError

if TYPE_CHECKING:
    from google.protobuf import text_format

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


# -- where things are in the file (for error messages) ------------------------------------------


@dataclass
class _Lines:
    """1-based lines in a config.pbtxt: of each value of each top-level field (a list's
    elements one by one) and of each parameter's ``key``. Empty for a server's JSON config."""

    fields: dict[str, list[int]] = field(default_factory=dict)
    keys: dict[str, int] = field(default_factory=dict)
    top: int | None = None  # what a missing top-level field is reported at

    def first(self, name: str) -> int | None:
        values = self.fields.get(name)
        return values[0] if values else self.top

    def nth(self, name: str, i: int) -> int | None:
        values = self.fields.get(name, [])
        return values[i] if i < len(values) else self.top


def _line(tok: text_format.Tokenizer) -> int:
    # the tokenizer tells its position only through the errors it makes (1-based line)
    line: int = tok.ParseError("").GetLine()
    return line


def _locate(text: str) -> _Lines:
    """Walk ``text``, which protobuf has already parsed (so it is well formed), with protobuf's
    tokenizer and note the lines :class:`_Lines` holds."""
    from google.protobuf import text_format

    lines = _Lines(top=1)
    tok = text_format.Tokenizer(text.split("\n"))
    depth = 0  # nesting of {} <> []
    name = ""  # the current top-level field
    at_value = False  # the next token starts a value of `name`
    while not tok.AtEnd():
        t = tok.token
        if at_value and t not in (":", "[", "]"):
            lines.fields.setdefault(name, []).append(_line(tok))
            at_value = False
            if t not in ("{", "<"):  # a scalar; adjacent strings are skipped below
                tok.NextToken()
                continue
        if t in ("{", "<", "["):
            at_value = depth == 0 and t == "["
            depth += 1
        elif t in ("}", ">", "]"):
            depth -= 1
        elif depth == 0 and t not in (":", ",", ";") and t[0] not in "'\"":
            name, at_value = t, True
        elif depth == 1 and t == "," and name in lines.fields:
            at_value = True  # the next element of a top-level list
        elif name == "parameters" and t == "key":
            tok.NextToken()
            tok.TryConsume(":")
            where = _line(tok)
            lines.keys[tok.ConsumeString()] = where
            continue
        tok.NextToken()
    return lines


# -- contract -----------------------------------------------------------------------------------


def _build(pb: Any, source: str, lines: _Lines) -> ModelContract:
    """Check a ``ModelConfig`` message against what the engine needs; a ModelContract."""
    from tritonclient.grpc import model_config_pb2

    def fail(message: str, line: int | None) -> RulesError:
        return RulesError(source, message, line)

    if not pb.name:
        raise fail("missing 'name'", None)

    def tensors(key: str) -> tuple[TensorSpec, ...]:
        specs = []
        for i, t in enumerate(getattr(pb, key)):
            if not t.name:
                raise fail(f"missing 'name' in {key!r}", lines.nth(key, i))
            if t.data_type == model_config_pb2.TYPE_INVALID:
                raise fail(f"missing 'data_type' in {key} {t.name!r}", lines.nth(key, i))
            dtype = model_config_pb2.DataType.Name(t.data_type)
            specs.append(TensorSpec(t.name, dtype, tuple(int(d) for d in t.dims)))
        return tuple(specs)

    params: dict[str, str] = {}
    for key, value in sorted(pb.parameters.items(), key=lambda kv: lines.keys.get(kv[0], 0)):
        if not value.string_value:
            raise fail(
                f"parameter {key!r} needs value {{ string_value: ... }}", lines.keys.get(key)
            )
        params[key] = value.string_value
    c = ModelContract(
        name=pb.name,
        max_batch_size=int(pb.max_batch_size),
        inputs=tensors("input"),
        outputs=tensors("output"),
        parameters=params,
        backend=pb.backend or pb.platform,
        source=source,
    )

    if c.max_batch_size < 0:
        raise fail("max_batch_size must be >= 0", lines.first("max_batch_size"))
    if len(c.inputs) != 1:
        raise fail(
            f"the engine needs exactly one input (a volume), found {len(c.inputs)}",
            lines.first("input"),
        )
    vol = c.inputs[0]
    if vol.data_type != "TYPE_FP32" or len(vol.dims) != 3 or min(vol.dims) <= 0:
        raise fail(
            f"input {vol.name!r} must be TYPE_FP32 with 3 positive dims [z, y, x], "
            f"got {vol.data_type} {list(vol.dims)}",
            lines.first("input"),
        )
    names = {o.name: o for o in c.outputs}
    expected = {PROBABILITY: (1,), SLICE_PROBABILITIES: (vol.dims[0],)}
    for oname, dims in expected.items():
        spec = names.get(oname)
        if spec is None:
            raise fail(f"missing output {oname!r}", lines.first("output"))
        if spec.data_type != "TYPE_FP32" or spec.dims != dims:
            raise fail(
                f"output {oname!r} must be TYPE_FP32 dims {list(dims)}, "
                f"got {spec.data_type} {list(spec.dims)}",
                lines.first("output"),
            )
    if "threshold" not in c.parameters:
        raise fail("missing parameter 'threshold' (the operating point)", lines.first("parameters"))
    where = lines.keys.get("threshold")
    try:
        t = float(c.parameters["threshold"])
    except ValueError:
        raise fail(
            f"parameter 'threshold' must be a number, got {c.parameters['threshold']!r}", where
        ) from None
    if not 0.0 <= t <= 1.0:
        raise fail(f"parameter 'threshold' must be within [0, 1], got {t}", where)
    if c.z_resampling not in Z_RESAMPLING:
        raise fail(
            f"parameter 'z_resampling' must be one of {', '.join(Z_RESAMPLING)}, "
            f"got {c.z_resampling!r}",
            lines.keys.get("z_resampling"),
        )
    return c


def parse_contract(text: str, source: str = "<config.pbtxt>") -> ModelContract:
    """Parse config.pbtxt text into a checked ModelContract (RulesError names source:line)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    pb = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, pb)
    except text_format.ParseError as exc:
        detail = str(exc).split(" : ", 1)[-1] if exc.GetLine() is not None else str(exc)
        column = exc.GetColumn()
        if column is not None:
            detail += f" (column {column})"
        raise RulesError(source, detail, exc.GetLine()) from None
    return _build(pb, source, _locate(text))


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
    ``get_model_config(..., as_json=True)``, HTTP or gRPC: int64 values may be strings).
    Fields this client's ModelConfig does not know (a newer server) are ignored."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    pb = model_config_pb2.ModelConfig()
    try:
        json_format.ParseDict(config, pb, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise RulesError(source, f"not a model config: {exc}") from None
    return _build(pb, source, _Lines())
