"""The independent CTPA painter "b": determinism, truth, HU of named structures, the written
series as the engine reads it, and routing to the PE model. Painted at reduced size (same field
of view, coarser pixels and slices) to keep the file fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from triage.crosscheck import chest_b
from triage.crosscheck.study import lesion_instances
from triage.inference.volume import load_volume
from triage.routing.facts import RoutingFacts
from triage.routing.rules import load_routing_rules, route

SIZE, SLICES = 192, 70
RULES = Path(__file__).resolve().parents[2] / "rules" / "routing.yaml"


def _patch(hu: np.ndarray, v: tuple[int, int, int], r: int = 1) -> float:
    k, i, j = v
    return float(np.median(hu[k, i - r : i + r + 1, j - r : j + r + 1]))


def test_same_seed_same_study_and_positive_is_negative_plus_clot() -> None:
    a = chest_b.paint(5, True, size=96, max_slices=40)
    b = chest_b.paint(5, True, size=96, max_slices=40)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.lesion, b.lesion)
    assert a.acq == b.acq and a.header == b.header and a.kinds == b.kinds
    neg = chest_b.paint(5, False, size=96, max_slices=40)
    assert neg.acq == a.acq and not neg.lesion.any()
    assert a.lesion.any()
    other = chest_b.paint(6, True, size=96, max_slices=40)
    assert other.hu.shape != a.hu.shape or not np.array_equal(other.hu, a.hu)


@pytest.mark.parametrize("level", chest_b.LEVELS)
def test_every_level_paints_clot_inside_an_opacified_artery(level: str) -> None:
    p, probes = chest_b._paint(11, True, level=level, size=SIZE, max_slices=SLICES)
    assert level in p.kinds
    assert p.lesion.any() and p.hu.shape[1:] == (SIZE, SIZE)
    clot = p.hu[p.lesion]
    # 20-70 HU clot, blurred by the kernel and partial volume with contrast, plus noise; small
    # vessels at this coarse test grid also average with the lung around them
    if level in ("central", "lobar"):
        assert -10 < float(np.median(clot)) < 140, float(np.median(clot))
    # far below the opacified right heart: a filling defect, not a contrast-filled vessel
    assert float(np.median(clot)) < _patch(p.hu, probes["rv"], 2) - 60


@pytest.mark.parametrize("seed", [0, 3, 9])
def test_negatives_have_no_lesion_and_structures_hold_their_hu(seed: int) -> None:
    p, probes = chest_b._paint(seed, False, size=SIZE, max_slices=SLICES)
    assert not p.lesion.any() and p.kinds == ()
    hu = p.hu
    poor = "poor_contrast" in p.notes
    trunk = _patch(hu, probes["trunk"])
    assert abs(_patch(hu, probes["rv"], 2) - trunk) < 120  # right heart opacified alike
    assert (120 if poor else 200) < trunk < 560, trunk
    assert -950 < _patch(hu, probes["lung"], 8) < -700  # median: a vessel may cross
    assert 70 < _patch(hu, probes["aorta"]) < 420
    marrow = _patch(hu, probes["marrow"])
    # cancellous marrow 100-300 HU, 40-100 when osteoporotic (plus noise and blur)
    assert (10 < marrow < 140) if "osteoporotic" in p.notes else (70 < marrow < 360), marrow
    assert 60 < _patch(hu, probes["vein"]) < trunk + 40
    assert hu.dtype == np.float32 and float(hu.min()) >= -1024.0


def test_written_series_reads_back_as_painted_and_routes_to_pe(tmp_path: Path) -> None:
    seed = 2
    study = chest_b.write_study(tmp_path / "s", seed, True, size=96, max_slices=30)
    p = chest_b.paint(seed, True, size=96, max_slices=30)
    assert study.task == "pe" and study.label and study.kinds == p.kinds and study.kinds
    assert study.lesion_instances == lesion_instances(p.lesion, p.acq)
    series = [
        f
        for f in study.files
        if pydicom.dcmread(f, stop_before_pixels=True).SeriesNumber == p.acq.series_number
    ]
    assert len(series) == p.hu.shape[0]
    ds = pydicom.dcmread(series[0])
    assert ds.Modality == "CT" and ds.ContrastBolusAgent and ds.BodyPartExamined
    vol = load_volume(series)  # inferior -> superior: our slice 0 (most superior) comes last
    assert vol.hu.shape == p.hu.shape
    step = p.acq.rescale_slope / 2 + 1e-3
    assert float(np.abs(vol.hu[::-1] - np.clip(p.hu, -1024, 3071)).max()) <= step


def test_headers_route_to_the_pe_model() -> None:
    rules = load_routing_rules(RULES)
    seen = set()
    for seed in range(8):
        h = chest_b.paint(seed, False, size=48, max_slices=10).header
        seen.add(h.study_description)
        facts = RoutingFacts.build(
            modalities=["CT"],
            body_parts=[h.body_part],
            descriptions=[h.study_description, h.series_description, h.protocol_name],
            contrast=bool(h.contrast_agent),
        )
        rule = route(rules, facts)
        assert rule is not None and rule.model == "pe", h
    assert len(seen) > 2  # wording varies across seeds
