"""Painter "b" of head CT: deterministic, anatomy in its HU ranges, exact lesion truth,
partial volume and correlated noise, and written studies that the engine reads and routes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from triage.crosscheck import head_b
from triage.crosscheck.dicomio import instance_numbers
from triage.crosscheck.study import lesion_instances
from triage.inference.volume import load_volume
from triage.routing.facts import RoutingFacts
from triage.routing.rules import load_routing_rules, route

RULES = Path(__file__).resolve().parents[2] / "rules" / "routing.yaml"
KEEP = ("white", "grey", "ventricle", "bone", "sinus")


@pytest.fixture(scope="module")
def normal() -> head_b._Result:
    return head_b._paint(11, False, thickness=5.0, keep=KEEP)


def _first_seed_with(kind: str) -> int:
    """The first seed whose positive study carries ``kind`` (the plan only: cheap)."""
    for seed in range(200):
        rng = np.random.default_rng([seed, 0x4EAD, 1])
        if kind in [les["kind"] for les in head_b._sample_spec(rng, True).lesions]:
            return seed
    raise AssertionError(f"no seed paints {kind}")


def test_deterministic_from_the_seed(normal: head_b._Result) -> None:
    again = head_b._paint(11, False, thickness=5.0, keep=KEEP)
    assert np.array_equal(again.painted.hu, normal.painted.hu)
    assert again.painted.notes == normal.painted.notes
    other = head_b._paint(12, False, thickness=5.0, fine=2.0).painted
    assert other.hu.shape != normal.painted.hu.shape or not np.array_equal(
        other.hu, normal.painted.hu
    )


def test_normal_anatomy_in_its_ranges(normal: head_b._Result) -> None:
    p, m = normal.painted, normal.masks
    assert p.hu.dtype == np.float32 and p.hu.shape[1:] == (512, 512)
    assert not p.lesion.any() and p.kinds == ()
    white = float(np.median(p.hu[m["white"]]))
    grey = float(np.median(p.hu[m["grey"]]))
    assert 15.0 <= white <= 36.0
    assert 3.0 <= grey - white <= 15.0  # grey-white contrast
    assert -5.0 <= float(np.median(p.hu[m["ventricle"]])) <= 18.0
    assert 30.0 <= float(np.median(p.hu[m["sinus"]])) <= 80.0  # flowing blood, a mimic
    bone = p.hu[m["bone"]]
    assert float(np.median(bone)) > 250.0 and float(bone.max()) > 1000.0  # diploe, cortex
    # every structure is actually present in the volume
    assert all(int(m[k].sum()) > 500 for k in KEEP)


def test_partial_volume_and_correlated_noise(normal: head_b._Result) -> None:
    p, m = normal.painted, normal.masks
    k = int(np.argmax(m["white"].reshape(m["white"].shape[0], -1).sum(1)))
    h, w = p.hu[k].astype(np.float64), m["white"][k]
    inner = w & np.roll(w, 1, 1) & np.roll(w, -1, 1)
    # noise: a few HU at 5 mm, correlated between neighbouring pixels (a kernel's texture)
    sd = float(h[w].std())
    assert 1.5 <= sd <= 9.0
    a = h - np.median(h[w])
    corr = float(np.corrcoef(a[inner], np.roll(a, 1, 1)[inner])[0, 1])
    assert corr > 0.3
    # partial volume: bone edges pass through intermediate values into the brain
    ramp = (p.hu[k] > 120) & (p.hu[k] < 400)
    assert int(ramp.sum()) > 200


@pytest.mark.parametrize("kind", head_b.KINDS)
def test_positive_of_every_kind_has_its_lesion(kind: str) -> None:
    seed = _first_seed_with(kind)
    p = head_b._paint(seed, True, thickness=5.0, fine=2.0).painted
    assert kind in p.kinds
    assert p.lesion.dtype == bool and p.lesion.shape == p.hu.shape
    assert p.lesion.any()
    blood = float(np.median(p.hu[p.lesion]))
    assert 25.0 <= blood <= 110.0
    # the truth lies in the head: nearly all of it denser than water (a voxel that is half
    # blood may share its slab with bone or a sinus's air)
    assert float(np.mean(p.hu[p.lesion] > 0.0)) > 0.9


def test_negatives_never_have_a_lesion() -> None:
    for seed in (3, 8):
        p = head_b._paint(seed, False, thickness=5.0, fine=2.0).painted
        assert not p.lesion.any() and p.kinds == ()


def test_written_study_reads_back_and_routes_to_ich(tmp_path: Path) -> None:
    # seed 4 positive: 5 mm, numbered from the feet, signed pixels with intercept 0
    st = head_b.write_study(tmp_path / "s", 4, True)
    p = head_b.paint(4, True)
    series = [
        f
        for f in st.files
        if "LOCALIZER" not in pydicom.dcmread(f, stop_before_pixels=True).ImageType
    ]
    assert len(series) == p.hu.shape[0]
    assert st.task == "ich" and st.label and st.kinds == p.kinds
    assert st.lesion_instances == lesion_instances(p.lesion, p.acq) != ()
    assert sorted(instance_numbers(series)) == list(range(1, len(series) + 1))
    step = p.acq.rescale_slope / 2 + 1e-3
    ds = pydicom.dcmread(series[3])
    back = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.abs(back - p.hu[3]).max() <= step
    vol = load_volume(series)  # inferior -> superior: slice 0 (the top) comes last
    # the engine reads the padding outside the field of view (-2000, -3024) as air
    assert np.abs(vol.hu[::-1] - np.maximum(p.hu, -1024.0)).max() <= step
    hdr = p.header
    facts = RoutingFacts.build(
        modalities=[ds.Modality],
        body_parts=[str(ds.get("BodyPartExamined", ""))],
        descriptions=[str(ds.StudyDescription), str(ds.SeriesDescription), hdr.protocol_name],
        contrast=bool(ds.get("ContrastBolusAgent")),
    )
    rule = route(load_routing_rules(RULES), facts)
    assert rule is not None and rule.model == "ich"


@pytest.mark.parametrize("desc", head_b.STUDY_DESCRIPTIONS)
def test_every_description_routes_to_ich(desc: str) -> None:
    rules = load_routing_rules(RULES)
    for body in ("HEAD", "BRAIN", "SKULL", ""):
        facts = RoutingFacts.build(
            modalities=["CT"], body_parts=[body], descriptions=[desc, "AXIAL 5MM"]
        )
        rule = route(rules, facts)
        assert rule is not None and rule.model == "ich", (desc, body)
