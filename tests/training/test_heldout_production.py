"""The held-out validation's production path: phantoms written as DICOM, analysed by the
engine's TritonAnalyzer (series selection, load_volume, resample, input checks) on the real
bundled Triton; the same probability as the in-memory path within tolerance, and a study the
input checks refuse is counted as not assessable (a miss for a positive)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from triage.inference.analyze import TritonAnalyzer
from triage.inference.client import InferenceClient
from triage.inference.local_triton import LocalTriton
from triage.synth import ct
from triage.training.validate import production_task

from .conftest import MODELS_DIR

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalTriton, Path]]:
    repo = tmp_path_factory.mktemp("repo") / "models"
    shutil.copytree(MODELS_DIR / "ich", repo / "ich", ignore=shutil.ignore_patterns("__pycache__"))
    server = LocalTriton(repo, tmp_path_factory.mktemp("triton"), startup_seconds=120)
    server.start()
    try:
        yield server, repo
    finally:
        server.stop()


def test_production_path_matches_in_memory(
    triton: tuple[LocalTriton, Path], tmp_path: Path
) -> None:
    server, repo = triton
    specs = [
        ct.PhantomSpec("ich", True, subtypes=("intraparenchymal",), size_mm=20.0, n_slices=28,
                       slice_thickness=5.0),
        ct.PhantomSpec("ich", False, n_slices=28, slice_thickness=5.0),
        # 8 slices of 5 mm: 35 mm of coverage, under the contract's min_coverage_mm
        ct.PhantomSpec("ich", True, subtypes=("subdural",), n_slices=8, slice_thickness=5.0),
    ]  # fmt: skip
    with InferenceClient(server.grpc_url, "grpc", timeout=60, models_dir=repo) as client:
        analyzer = TritonAnalyzer(tmp_path / "data", repo, key_images=False)
        analyzer.attach(client)
        h = production_task(
            "ich", analyzer, client, [701, 704, 709], workers=1, work_dir=tmp_path, specs=specs
        )
    assert [s.status for s in h.studies] == ["done", "done", "not_assessable"]
    assert "coverage" in h.studies[2].detail and h.studies[2].probability is None
    for s in h.studies[:2]:
        assert s.probability is not None and s.probability_in_memory is not None
        # 512 x 512 DICOM (int16) -> load_volume -> area average vs painting straight onto
        # the model grid: the noise is drawn differently, the anatomy is the same
        assert s.probability == pytest.approx(s.probability_in_memory, abs=0.06)
        assert (s.probability >= h.threshold) == (s.probability_in_memory >= h.threshold)
    summary = h.summary()
    assert summary["not_assessable_positives"] == 1 and summary["fn"] >= 1  # counted as a miss
    assert summary["key_slice_hits"][1] == 1
    assert not any(tmp_path.glob("ich-*"))  # each series removed once analysed


def test_independent_painter_through_the_production_path(
    triton: tuple[LocalTriton, Path], tmp_path: Path
) -> None:
    """``triage models crosscheck``'s path: two head CTs of painter a (a normal one at 5 mm,
    a bleed at 2.5 mm), routed by the rules from their headers and analysed by the engine
    on the real Triton; the truth travels beside them."""
    from triage.training.crosscheck import crosscheck_task

    server, repo = triton
    with InferenceClient(server.grpc_url, "grpc", timeout=60, models_dir=repo) as client:
        analyzer = TritonAnalyzer(tmp_path / "data", repo, key_images=False)
        analyzer.attach(client)
        h, routes = crosscheck_task(
            "ich", analyzer, [9_000_000, 9_000_001], work_dir=tmp_path, workers=1, painter="a"
        )
    assert routes == ["ich", "ich"]
    assert [s.label for s in h.studies] == [False, True]
    assert [s.status for s in h.studies] == ["done", "done"]
    neg, pos = h.studies
    assert not neg.lesion_instances and pos.lesion_instances and pos.kinds
    for s in h.studies:
        assert s.probability is not None and 0.0 <= s.probability <= 1.0
        assert s.key_instance is not None  # an InstanceNumber of the written series
    assert not list(tmp_path.glob("xich-*"))  # the written series are removed
