"""The independent head CT painter: deterministic, anatomy in its HU ranges, partial volume at
the vertex, lesion truth exact and empty for negatives, written series read back by the
engine's reader and routed to the ich model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from triage.crosscheck import head
from triage.inference.volume import load_volume
from triage.routing.facts import RoutingFacts
from triage.routing.rules import load_routing_rules, route

RULES = Path(__file__).resolve().parents[2] / "rules" / "routing.yaml"


def _first_seed(pred, label: bool) -> int:  # type: ignore[no-untyped-def]
    """The first seed whose drawn parameters satisfy ``pred`` (drawing only, no painting)."""
    for seed in range(500):
        rng = np.random.default_rng([seed, 0x4EAD, int(label)])
        p = head._Params(rng, label, 512)
        if pred(p, head._Lesions(p, label)):
            return seed
    raise AssertionError("no seed found")


def test_deterministic_from_the_seed() -> None:
    a, _ = head.paint_detail(11, True, matrix=96)
    b, _ = head.paint_detail(11, True, matrix=96)
    c, _ = head.paint_detail(12, True, matrix=96)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.lesion, b.lesion)
    assert a.kinds == b.kinds and a.notes == b.notes and a.acq == b.acq
    assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)


@pytest.mark.parametrize("seed", range(6))
def test_negatives_carry_no_lesion_voxels(seed: int) -> None:
    p, det = head.paint_detail(seed, False, matrix=96)
    assert p.kinds == ()
    assert not p.lesion.any()
    assert not np.isin(
        det.cls, head.LESION_CLASSES
    ).any()  # not even below the half-voxel threshold


def test_every_kind_appears_over_seeds_and_is_painted() -> None:
    seen: set[str] = set()
    for kind in head.KINDS:
        seed = _first_seed(lambda p, les, k=kind: k in les.kinds, True)
        p, det = head.paint_detail(seed, True, matrix=192)
        assert kind in p.kinds
        assert p.lesion.any(), kind
        # the mask is where the finding lies: its voxels are mostly painted as haemorrhage
        assert np.mean(np.isin(det.cls[p.lesion], head.LESION_CLASSES)) > 0.6, kind
        seen.update(p.kinds)
    assert seen == set(head.KINDS)


def test_anatomy_hu_in_range() -> None:
    seed = _first_seed(lambda p, les: p.thick == 5.0, False)
    p, det = head.paint_detail(seed, False, matrix=256)
    calib = det.params["calib"]

    def med(c: int) -> float:
        m = (det.cls == c) & det.pure
        assert m.sum() > 30, head.CLASS_NAMES[c]
        return float(np.median(p.hu[m])) - calib

    assert 33 <= med(head.GM) <= 47  # realism: grey matter 35-45 (+ noise, kernel)
    assert 18 <= med(head.WM) <= 32  # white matter 20-30
    assert med(head.GM) - med(head.WM) >= 5
    assert -3 <= med(head.CSF_VENT) <= 16  # CSF 0-15
    assert 38 <= med(head.SINUS) <= 72  # flowing blood 40-70
    assert med(head.TABLE) >= 300  # skull
    # the noise has a texture: neighbouring voxels correlate
    m = (det.cls == head.WM) & det.pure
    m[:, :, 1:] &= m[:, :, :-1]
    n = p.hu - det.clean
    a, b = n[:, :, 1:][m[:, :, 1:]], n[:, :, :-1][m[:, :, 1:]]
    assert np.corrcoef(a, b)[0, 1] > 0.15
    assert 1.5 <= float(np.std(a)) <= 9


def test_vertex_slice_has_partial_volume_along_the_inner_table() -> None:
    seed = _first_seed(lambda p, les: p.thick == 5.0 and abs(p.pitch) < 0.15, False)
    p, det = head.paint_detail(seed, False, matrix=512)
    brain = np.isin(det.cls, [head.GM, head.WM, head.CSF, head.CSF_SULC, head.CSF_FISS])
    ks = np.flatnonzero(brain.reshape(brain.shape[0], -1).sum(1) > 200)
    found = 0
    for k in ks[:2]:  # the highest slices with brain: the curved vertex

        def grow(m: np.ndarray) -> np.ndarray:
            out = m.copy()
            for ax in (0, 1):
                for sh in (-3, -2, -1, 1, 2, 3):
                    out |= np.roll(m, sh, ax)
            return out

        clean = det.clean[k]
        inter = (clean > 50) & (clean < 200) & grow(clean > 300) & grow(brain[k])
        found += int(inter.sum())
        if inter.any():
            assert (p.hu[k][inter] > 30).mean() > 0.8  # still intermediate after noise
    assert found >= 100


def test_written_series_reads_back_and_routes_to_ich(tmp_path: Path) -> None:
    seed = _first_seed(lambda p, les: p.thick == 5.0, True)
    painted = head.paint(seed, True)
    st = head.write_study(tmp_path / "s", seed, True)
    assert st.task == "ich" and st.label and st.kinds == painted.kinds
    assert len(st.files) == painted.hu.shape[0] and st.lesion_instances
    ds = pydicom.dcmread(st.files[0])
    assert ds.Modality == "CT" and "ContrastBolusAgent" not in ds
    assert float(ds.SliceThickness) == painted.acq.slice_thickness
    vol = load_volume(list(st.files))
    assert np.abs(vol.hu[::-1] - painted.hu).max() <= 0.5 + 1e-3
    lesion_slices = np.flatnonzero(painted.lesion.any((1, 2))) + 1
    assert tuple(lesion_slices) == st.lesion_instances
    rules = load_routing_rules(RULES)
    for s in range(8):
        h = head.paint_detail(s, s % 2 == 0, matrix=32)[0].header
        facts = RoutingFacts.build(
            modalities=["CT"],
            body_parts=[h.body_part],
            descriptions=[h.study_description, h.series_description, h.protocol_name],
            contrast=h.contrast_agent is not None,
        )
        rule = route(rules, facts)
        assert rule is not None and rule.model == "ich", h.study_description
