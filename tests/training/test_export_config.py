"""config.pbtxt written by training: three outputs, the engine contract still holds, other
parameters (input checks) kept, and the stock onnxruntime-backend example is valid."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from triage.inference.contract import load_contract
from triage.synth.ct import model_shape
from triage.training.export import read_threshold, seed_model_dir, write_config

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("name", ["ich", "pe"])
def test_rewrite_keeps_contract_and_parameters(name: str, tmp_path: Path) -> None:
    before = load_contract(MODELS / name / "config.pbtxt")
    shutil.copy(MODELS / name / "config.pbtxt", tmp_path / "config.pbtxt")
    model_dir = tmp_path / name
    model_dir.mkdir()
    shutil.move(tmp_path / "config.pbtxt", model_dir / "config.pbtxt")
    write_config(model_dir, 0.3125)
    after = load_contract(model_dir / "config.pbtxt")
    assert read_threshold(model_dir) == after.threshold == 0.3125
    assert after.backend == "python" and after.max_batch_size == before.max_batch_size
    assert [o.name for o in after.outputs] == ["probability", "slice_probabilities", "localization"]
    assert after.output("localization").dims == (16, 32, 32)
    assert after.input_shape == before.input_shape == model_shape(name)
    for key, value in before.parameters.items():  # input-check parameters survive
        if key not in ("threshold", "version", "description", "finding"):
            assert after.parameters[key] == value
    assert "synthetic phantoms" in after.description and "not for clinical use" in after.description
    text = (model_dir / "config.pbtxt").read_text()
    assert "dynamic_batching" in text and text.count("output [") == 1
    ort = load_contract(model_dir / "config.onnxruntime.pbtxt.example")
    assert ort.backend == "onnxruntime" and ort.threshold == 0.3125
    assert (
        'default_model_filename: "model.onnx"'
        in (model_dir / "config.onnxruntime.pbtxt.example").read_text()
    )
    write_config(model_dir, 0.5)  # idempotent apart from the threshold
    assert load_contract(model_dir / "config.pbtxt").outputs == after.outputs


def test_config_from_scratch(tmp_path: Path) -> None:
    write_config(tmp_path / "pe", 0.42)
    c = load_contract(tmp_path / "pe" / "config.pbtxt")
    assert c.name == "pe" and c.threshold == 0.42 and c.version.startswith("pe-")


def test_a_model_on_a_new_grid_gets_that_grid_in_its_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retraining on another input grid over an existing config: the input dims follow the
    network (they were kept from the old file, and Triton was then fed the old grid)."""
    import triage.synth.ct.grid as grid

    model_dir = tmp_path / "ich"
    model_dir.mkdir()
    shutil.copy(MODELS / "ich" / "config.pbtxt", model_dir / "config.pbtxt")
    monkeypatch.setitem(grid.MODEL_SHAPES, "ich", (64, 256, 256))
    write_config(model_dir, 0.25)
    after = load_contract(model_dir / "config.pbtxt")
    assert after.input_shape == (64, 256, 256)
    assert load_contract(model_dir / "config.onnxruntime.pbtxt.example").input_shape == (
        64,
        256,
        256,
    )
    assert after.parameters["body_part"] == "head"  # the rest of the file kept


@pytest.mark.parametrize("name", ["ich", "pe"])
def test_a_model_trained_into_a_new_repository_is_servable_and_checked(
    name: str, tmp_path: Path
) -> None:
    """Training into an empty folder: the contract keeps the shipped input checks (a bare
    one skips them all) and the Python backend's runner is there (Triton cannot load the
    model without it); what the folder already has is kept."""
    model_dir = tmp_path / name
    assert seed_model_dir(model_dir, MODELS / name) == ["config.pbtxt", "1/model.py"]
    write_config(model_dir, 0.3)
    shipped = load_contract(MODELS / name / "config.pbtxt").parameters
    after = load_contract(model_dir / "config.pbtxt")
    checks = {k for k in shipped if k not in ("threshold", "version", "description", "finding")}
    assert {"body_part", "min_slice_thickness_mm", "max_slice_thickness_mm"} <= checks
    assert all(after.parameters[k] == shipped[k] for k in checks)
    assert after.threshold == 0.3
    runner = (model_dir / "1" / "model.py").read_text()
    assert runner == (MODELS / name / "1" / "model.py").read_text()
    (model_dir / "1" / "model.py").write_text("# kept\n")
    assert seed_model_dir(model_dir, MODELS / name) == []
    assert (model_dir / "1" / "model.py").read_text() == "# kept\n"
    assert seed_model_dir(MODELS / name, MODELS / name) == []  # the shipped folder itself


def test_a_candidate_is_never_exported_under_the_shipped_version(tmp_path: Path) -> None:
    """A model trained into another repository (a candidate) kept the shipped version in its
    contract: its validation was refused as already in the ledger, and its stress and
    independent-look reports named it as the shipped model."""
    from triage.training.export import VERSIONS, candidate_version

    recipe = {"task": "ich", "width": 24, "steps": 5000}
    assert candidate_version("ich", recipe, MODELS) is None  # the repository's own models/
    v = candidate_version("ich", recipe, tmp_path / "models")
    assert v is not None and v.startswith(f"ich-{VERSIONS['ich']}-candidate-")
    assert v == candidate_version("ich", dict(reversed(list(recipe.items()))), tmp_path)
    assert v != candidate_version("ich", {**recipe, "width": 12}, tmp_path / "models")
    model_dir = tmp_path / "models" / "ich"
    seed_model_dir(model_dir)
    write_config(model_dir, 0.25, version=v)
    assert load_contract(model_dir / "config.pbtxt").version == v
    example = (model_dir / "config.onnxruntime.pbtxt.example").read_text(encoding="utf-8")
    assert f'string_value: "{v}"' in example
