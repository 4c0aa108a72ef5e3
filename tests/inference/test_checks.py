"""Input checks before any claim, on the real shared DICOM and on synthetic studies: a study the
model may not judge is "not assessable" with the reason, never "negative", and it never waits
for Triton (the analyzer here has no inference server at all)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from triage.errors import TritonUnavailable
from triage.inference.analyze import TritonAnalyzer
from triage.inference.checks import InputFacts, InputLimits, problems
from triage.synth import ct

from .conftest import MODELS_DIR
from .test_volume import instance_rows

SHARED = SHARED_DATA / "dicom"


def _files(folder: str, pattern: str = "*") -> list[Path]:
    root = SHARED / folder
    assert root.is_dir(), f"shared test data not found: {root}"
    return sorted(p for p in root.glob(pattern) if p.is_file() and "LICENSE" not in p.name)


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory: pytest.TempPathFactory) -> TritonAnalyzer:
    return TritonAnalyzer(tmp_path_factory.mktemp("data"), MODELS_DIR)  # no client attached


def _not_assessable(analyzer: TritonAnalyzer, model: str, files: list[Path]) -> str:
    a = analyzer.analyze(model, instance_rows(files))
    assert a.status == "not_assessable", a
    assert a.probability is None and not a.positive
    assert a.model_name == model and a.model_version.startswith(f"{model}-")
    return a.detail


def _passes(analyzer: TritonAnalyzer, model: str, files: list[Path]) -> None:
    """Checks pass: the analyzer goes on to ask Triton (absent here)."""
    with pytest.raises(TritonUnavailable):
        analyzer.analyze(model, instance_rows(files))


def test_non_contrast_chest_ct_is_not_assessable_for_pe(analyzer: TritonAnalyzer) -> None:
    detail = _not_assessable(analyzer, "pe", _files("lidc-chest-ct"))
    assert "enhancement too low" in detail and "wrong body part" not in detail


def test_chest_ct_is_the_wrong_body_part_for_ich(analyzer: TritonAnalyzer) -> None:
    detail = _not_assessable(analyzer, "ich", _files("lidc-chest-ct"))
    assert "wrong body part" in detail and "head" in detail


def test_head_ct_is_the_wrong_body_part_for_pe(analyzer: TritonAnalyzer) -> None:
    detail = _not_assessable(analyzer, "pe", _files("ge-head-ct", "*.dcm"))
    assert "wrong body part" in detail and "chest" in detail


def test_head_ct_thicker_than_validated_is_not_assessable(analyzer: TritonAnalyzer) -> None:
    # 4 and 7 mm slices, median 5.5 mm: outside the ich contract's 0.6-5 mm
    detail = _not_assessable(analyzer, "ich", _files("ge-head-ct", "*.dcm"))
    assert "slice thickness 5.5 mm outside the validated range" in detail


def test_head_phantom_with_localizer_and_dose_screens_passes_for_ich(
    analyzer: TritonAnalyzer,
) -> None:
    files = [p for p in (SHARED / "philips-head-phantom").rglob("I*") if p.is_file()]
    assert files, "shared test data not found"
    _passes(analyzer, "ich", files)


@pytest.mark.parametrize("model", ["ich", "pe"])
def test_mr_never_goes_to_a_ct_model(analyzer: TritonAnalyzer, model: str) -> None:
    detail = _not_assessable(analyzer, model, _files("dcm4che-wrist-mr", "*.dcm"))
    assert "CT" in detail


def test_synthetic_studies(analyzer: TritonAnalyzer, tmp_path: Path) -> None:
    kw = {"patient_id": "P", "accession": "A", "size": 256}
    head = ct.write_head_ct(tmp_path / "h", hemorrhage=True, seed=3, **kw)
    _passes(analyzer, "ich", head.files)
    assert "wrong body part" in _not_assessable(analyzer, "pe", head.files)
    ctpa = ct.write_ctpa(tmp_path / "c", embolus=True, seed=3, **kw)
    _passes(analyzer, "pe", ctpa.files)
    assert "wrong body part" in _not_assessable(analyzer, "ich", ctpa.files)
    poor = ct.write_ctpa(tmp_path / "p", embolus=False, seed=3, mimics=("poor_contrast",), **kw)
    assert "enhancement too low" in _not_assessable(analyzer, "pe", poor.files)
    short = ct.write_head_ct(tmp_path / "s", hemorrhage=True, seed=3, n_slices=10, **kw)
    assert "too few slices: 10" in _not_assessable(analyzer, "ich", short.files)


def test_limits_from_contract_parameters() -> None:
    limits = InputLimits.from_parameters(
        "pe",
        {
            "body_part": "Chest",
            "min_slice_thickness_mm": "0.6",
            "max_slice_thickness_mm": "3",
            "min_slices": "32",
            "min_enhancement_hu": "200",
        },
    )
    assert limits.body_part == "chest" and limits.min_slices == 32
    assert limits.max_slice_thickness_mm == 3.0 and limits.min_coverage_mm is None
    facts = InputFacts("CT", 40, 100.0, 3.5, 300.0, 0.4, enhancement_hu=350.0)
    expected = "slice thickness 3.5 mm outside the validated range 0.6-3 mm"
    assert problems(limits, facts) == [expected]
    # no parameters: nothing is checked but the modality
    bare = InputLimits.from_parameters("x", {})
    assert problems(bare, InputFacts("CT", 2, 1.0, 20.0, None, None)) == []
    assert problems(bare, InputFacts("MR", 40, 100.0, 1.0, None, None)) != []


def test_content_checks_judge_a_256_grid_as_its_128_average() -> None:
    """pe's 256 x 256 input is measured at the 128 x 128 resolution the thresholds were
    calibrated on: a grid and its 2 x 2 repetition give the same facts."""
    from triage.inference.checks import content_grid, mediastinal_enhancement

    rng = np.random.default_rng(0)
    coarse = rng.normal(40.0, 30.0, (8, 128, 128)).astype(np.float32)
    fine = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)
    assert content_grid(fine).shape == (8, 128, 128)
    assert np.allclose(content_grid(fine), coarse)
    assert content_grid(coarse) is coarse
    odd = np.zeros((4, 200, 200), np.float32)
    assert content_grid(odd) is odd  # not a multiple of 128: left as it is
    assert mediastinal_enhancement(content_grid(fine)) == mediastinal_enhancement(coarse)
