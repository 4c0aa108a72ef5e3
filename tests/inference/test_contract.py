"""Model contract parsing: the repository's configs, protobuf text format and the server's JSON,
errors with lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from triage.errors import RulesError
from triage.inference.contract import (
    contract_from_config,
    load_contract,
    parse_contract,
)

MODELS = Path(__file__).resolve().parents[2] / "models"
CONFIGS = sorted(MODELS.glob("*/config.pbtxt"))

GOOD = """
# comment
name: "m"  # trailing comment
backend: "python"
max_batch_size: 4
dynamic_batching { max_queue_delay_microseconds: 100 }
input [ { name: "volume", data_type: TYPE_FP32, dims: [ 8, 16, 16 ] } ]
output [
  { name: "probability" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "slice_probabilities" data_type: TYPE_FP32 dims: [ 8 ] }
]
parameters { key: "threshold" value: { string_value: "0.3" } }
parameters: < key: 'version' value < string_value: "v\\"1\\"" > >
"""


def test_repository_has_both_models() -> None:
    assert {p.parent.name for p in CONFIGS} >= {"ich", "pe"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_repository_configs_follow_the_engine_contract(path: Path) -> None:
    c = load_contract(path)
    assert c.name == path.parent.name
    assert c.max_batch_size == 4
    assert c.input.name == "volume" and c.input.data_type == "TYPE_FP32"
    assert c.input_shape == {"ich": (64, 128, 128), "pe": (64, 256, 256)}[c.name]
    assert c.output("probability").dims == (1,)
    assert c.output("slice_probabilities").dims == (64,)
    assert 0.0 <= c.threshold <= 1.0
    assert c.version
    # medical honesty: every model says what it was trained on and that it is not clinical
    assert "synthetic" in c.description.lower() or "placeholder" in c.description.lower()
    assert "not for clinical use" in c.description.lower()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_file_and_server_json_give_the_same_contract(path: Path) -> None:
    """The file and its JSON form as the server gives it (gRPC: int64 as strings) agree."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    text = path.read_text()
    pb = text_format.Parse(text, model_config_pb2.ModelConfig())
    as_json = json_format.MessageToDict(pb, preserving_proto_field_name=True)
    assert isinstance(as_json["input"][0]["dims"][0], str)  # the int64-as-string shape
    from_file = parse_contract(text, "f")
    from_server = contract_from_config(as_json, "f")
    assert from_server == from_file
    assert dict(from_server.parameters) == dict(from_file.parameters)
    assert list(from_file.parameters)[:2] == ["z_resampling", "threshold"]  # file order


def test_text_format_subset() -> None:
    c = parse_contract(GOOD, "good.pbtxt")
    assert c.input_shape == (8, 16, 16)
    assert c.threshold == pytest.approx(0.3)
    assert c.version == 'v"1"'
    assert c.backend == "python" and c.max_batch_size == 4


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (GOOD.replace('name: "m"', 'name: "m'), 3, "missing ending quote"),
        (GOOD.replace("max_batch_size: 4", "max_batch_size 4"), 5, 'Expected ":"'),
        (GOOD.replace("dims: [ 8, 16, 16 ]", "dims: [ 8, 16 16 ]"), 7, 'Expected ","'),
        (GOOD.replace('"0.3"', '"high"'), 12, "threshold"),
        (GOOD.replace('"0.3"', '"1.5"'), 12, "within [0, 1]"),
        (GOOD.replace("dims: [ 8 ]", "dims: [ 9 ]"), 9, "slice_probabilities"),
        (GOOD.replace("TYPE_FP32, dims", "TYPE_UINT8, dims"), 7, "TYPE_FP32"),
        (GOOD.replace("max_batch_size: 4", 'max_batch_size: "4"'), 5, "integer"),
        (GOOD + "\ninput [ { name: 'x' data_type: TYPE_FP32 dims: [1,1,1] } ]", 7, "one input"),
        (GOOD.rstrip() + "\n{", 14, "Expected identifier"),
        (
            GOOD.replace("} ]\noutput", "\noutput", 1),
            8,
            'ModelInput" has no field named "output"',
        ),
        (GOOD + "foo: 1\n", 14, 'no field named "foo"'),
        (GOOD.replace('{ string_value: "0.3" }', "{ }"), 12, "'threshold' needs value"),
    ],
)
def test_malformed_config_names_file_and_line(text: str, line: int, words: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_contract(text, "models/x/config.pbtxt")
    assert info.value.path == "models/x/config.pbtxt"
    assert words in str(info.value)
    assert info.value.line == line, str(info.value)
    assert str(info.value).startswith(f"models/x/config.pbtxt:{line}: ")


def test_z_resampling_parameter() -> None:
    assert parse_contract(GOOD).z_resampling == "linear"  # absent: the default
    near = GOOD + 'parameters { key: "z_resampling" value: { string_value: "nearest" } }\n'
    assert parse_contract(near).z_resampling == "nearest"
    with pytest.raises(RulesError) as info:
        parse_contract(near.replace('"nearest"', '"cubic"'), "models/x/config.pbtxt")
    assert info.value.line == 14 and "linear, nearest" in str(info.value)


def test_missing_threshold_and_unreadable_file(tmp_path: Path) -> None:
    text = "\n".join(ln for ln in GOOD.splitlines() if "threshold" not in ln)
    with pytest.raises(RulesError, match="threshold"):
        parse_contract(text, "x")
    with pytest.raises(RulesError, match="cannot read"):
        load_contract(tmp_path / "absent.pbtxt")


def test_contract_from_server_json_grpc_and_http_shapes() -> None:
    grpc_json: dict[str, Any] = {
        "name": "ich",
        "max_batch_size": 4,
        "input": [{"name": "volume", "data_type": "TYPE_FP32", "dims": ["64", "128", "128"]}],
        "output": [
            {"name": "probability", "data_type": "TYPE_FP32", "dims": ["1"]},
            {"name": "slice_probabilities", "data_type": "TYPE_FP32", "dims": ["64"]},
        ],
        "parameters": {"threshold": {"string_value": "0.5"}, "version": {"string_value": "v"}},
        "dynamic_batching": {},
    }
    c = contract_from_config(grpc_json, "triton:x/ich")
    assert c.input_shape == (64, 128, 128) and c.threshold == 0.5 and c.version == "v"
    http_json = {**grpc_json, "input": [{**grpc_json["input"][0], "dims": [64, 128, 128]}]}
    assert contract_from_config(http_json, "triton:y").input_shape == (64, 128, 128)
    with pytest.raises(RulesError, match="triton:z"):
        contract_from_config({**grpc_json, "parameters": {}}, "triton:z")
