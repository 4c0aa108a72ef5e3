"""The independent CTPA painter: deterministic, emboli only in positives and where they belong
(inside opacified arteries), named structures in their HU ranges, and a written study that the
engine reads back and routes to the pe model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from triage.crosscheck import chest
from triage.crosscheck.study import lesion_instances
from triage.inference.volume import load_volume
from triage.routing.facts import RoutingFacts
from triage.routing.rules import load_routing_rules, route

ROOT = Path(__file__).resolve().parents[2]
SLICES = 14  # a short z window round the first clot (or the right hilum): fast tests


@pytest.fixture(scope="module")
def plans() -> list[chest.Chest]:
    return [chest.plan(seed, True) for seed in range(10)]


@pytest.fixture(scope="module")
def positive() -> tuple[chest.Painted, dict[str, np.ndarray]]:
    return chest.paint_detail(5, True, slices=SLICES, masks=True)


def test_deterministic_from_the_seed() -> None:
    a = chest.paint_detail(3, False, slices=6)[0]
    b = chest.paint_detail(3, False, slices=6)[0]
    c = chest.paint_detail(4, False, slices=6)[0]
    assert np.array_equal(a.hu, b.hu) and a.acq == b.acq and a.header == b.header
    assert not np.array_equal(a.hu[:, ::8, ::8], c.hu[:, ::8, ::8]) or a.acq != c.acq


def test_negatives_have_no_lesion_and_no_kinds() -> None:
    for seed in (11, 12):
        p = chest.paint_detail(seed, False, slices=10)[0]
        assert p.hu.shape == (10, 512, 512) and p.hu.dtype == np.float32
        assert not p.lesion.any() and p.kinds == ()


def test_every_level_is_planned_over_a_few_seeds(plans: list[chest.Chest]) -> None:
    seen: set[str] = set()
    modes: set[str] = set()
    for ch in plans:
        assert ch.kinds and set(ch.kinds) <= set(chest.LEVELS)
        seen |= set(ch.kinds)
        modes |= {c.mode for c in ch.clots}
        assert all(20 <= c.hu <= 70 for c in ch.clots)
    assert seen == set(chest.LEVELS)
    assert {"polo", "eccentric", "occlusive", "saddle"} <= modes
    assert not chest.plan(0, False).clots


@pytest.mark.parametrize("seed", [2, 9, 16])
def test_positives_paint_their_clot(seed: int) -> None:
    p = chest.paint_detail(seed, True, slices=SLICES)[0]
    assert p.lesion.any(), (seed, p.kinds)
    assert lesion_instances(p.lesion)


def test_hu_ranges_of_named_structures(
    positive: tuple[chest.Painted, dict[str, np.ndarray]],
) -> None:
    p, m = positive
    ch = chest.plan(5, True)
    hu = p.hu - ch.offset_hu

    def mean(name: str) -> float:
        assert m[name].sum() > 20, name
        return float(hu[m[name]].mean())

    if m["trunk"].sum() > 20:
        assert 150 - 15 <= mean("trunk") <= 500 + 15
    # the clot's painted core: its 20-70 HU, give or take the kernel's ringing at its edge
    clot = mean("clot")
    assert -10 <= clot <= 95 and clot < ch.pa_hu - 100
    assert -920 <= mean("lung") <= -650
    lo, hi = (40, 110) if ch.osteo else (100, 310)
    if m["marrow"].sum() > 20:
        assert lo - 10 <= mean("marrow") <= hi + 10
    if m["vein"].sum() > 20:
        assert 80 <= mean("vein") <= 260


def test_well_and_poorly_timed_trunks(plans: list[chest.Chest]) -> None:
    for ch in plans:
        assert (150 <= ch.pa_hu < 250) if ch.poor else (250 <= ch.pa_hu <= 500)
        assert ch.vein_hu < ch.pa_hu and 140 <= ch.aorta_hu <= 350
        assert ("poor_contrast" in ch.notes) == ch.poor


def test_clot_lies_in_opacified_lumen(
    positive: tuple[chest.Painted, dict[str, np.ndarray]],
) -> None:
    """Every lesion voxel lies inside an artery; a partial clot has contrast round it, an
    occlusive one ends the contrast column (no opacified lumen beyond its far end)."""
    p, m = positive
    assert p.lesion.any()
    assert (p.lesion & ~m["artery"]).sum() == 0
    ch = chest.plan(5, True)
    hu = p.hu - ch.offset_hu
    ring = m["artery"] & ~p.lesion
    grown = p.lesion.copy()
    for _ in range(3):
        g = grown.copy()
        g[:, 1:] |= grown[:, :-1]
        g[:, :-1] |= grown[:, 1:]
        g[:, :, 1:] |= grown[:, :, :-1]
        g[:, :, :-1] |= grown[:, :, 1:]
        grown = g
    beside = grown & ring
    modes = {c.mode for c in ch.clots}
    if modes & {"polo", "eccentric", "saddle"}:
        # contrast next to the clot, well above the clot's density
        assert float(np.median(hu[beside])) > 120


def test_occlusive_clot_ends_the_contrast_column(plans: list[chest.Chest]) -> None:
    occlusive = [(ch, c) for ch in plans for c in ch.clots if c.mode == "occlusive"]
    assert occlusive
    ch, c = occlusive[0]
    downstream = ch._descendants(ch.art, c.branch)
    assert downstream
    for j in downstream:
        assert ch.art[j].value < 70  # unopacified blood beyond the clot
    assert ch.art[c.branch].value > 140 or ch.poor


def test_written_study_reads_back_and_routes_to_pe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = chest.paint_detail(7, True, slices=8)[0]
    monkeypatch.setattr(chest, "paint", lambda seed, label: small)
    study = chest.write_study(tmp_path / "s", 7, True)
    assert study.task == "pe" and study.label and study.kinds == small.kinds
    assert len(study.files) == 8
    assert study.lesion_instances == lesion_instances(small.lesion)
    ds = pydicom.dcmread(study.files[0])
    assert ds.Modality == "CT" and ds.Rows == 512 and ds.get("ContrastBolusAgent")
    vol = load_volume(list(study.files))
    assert (
        np.abs(vol.hu[::-1] - np.clip(small.hu, -1024, 3071)).max()
        <= small.acq.rescale_slope / 2 + 1e-3
    )
    rules = load_routing_rules(ROOT / "rules" / "routing.yaml")
    h = small.header
    facts = RoutingFacts.build(
        modalities=[ds.Modality],
        body_parts=[h.body_part],
        descriptions=[h.study_description, h.series_description, h.protocol_name],
        contrast=bool(h.contrast_agent),
    )
    rule = route(rules, facts)
    assert rule is not None and rule.model == "pe"


def test_headers_vary_and_always_route_to_pe() -> None:
    rules = load_routing_rules(ROOT / "rules" / "routing.yaml")
    descs = set()
    for seed in range(6):
        h = chest.paint_detail(seed, False, slices=1)[0].header
        descs.add(h.study_description)
        facts = RoutingFacts.build(
            modalities=["CT"],
            body_parts=[h.body_part],
            descriptions=[h.study_description, h.series_description, h.protocol_name],
            contrast=bool(h.contrast_agent),
        )
        rule = route(rules, facts)
        assert rule is not None and rule.model == "pe", h
    assert len(descs) > 2
