"""CTPA generator 4 (triage/synth/ct/skeleton.py): bone as cortex over marrow, the spine with
its posterior elements inside the back's muscles, ribs round the chest wall, cartilage to the
sternum, a table under the patient; the lungs' vessels and the emboli are generator 3's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from triage.synth import ct
from triage.synth.ct.ctpa import draw_chest, render_chest
from triage.synth.ct.grid import Grid
from triage.synth.ct.skeleton import Skeleton, draw_skeleton

from .test_phantoms import chest_grid


def skeleton(seed: int) -> Skeleton:
    chest = draw_chest(np.random.default_rng([seed, 0]))
    return draw_skeleton(
        np.random.default_rng([seed, 4]),
        chest.body_axes,
        chest.fat_thickness,
        chest.cortex_hu,
        chest.marrow_hu,
    )


def fine_grid(z: float, size: int = 512, fov: float = 380.0) -> Grid:
    return Grid.at(size, fov, np.array([z], dtype=np.float32), 1.0)


def value_at(vol: np.ndarray, g: Grid, x: float, y: float) -> float:
    j = int(np.argmin(np.abs(g.x[0, 0, :] - x)))
    i = int(np.argmin(np.abs(g.y[0, :, 0] - y)))
    return float(vol[0, i, j])


def spec(label: bool = False, generator: int = 4) -> ct.PhantomSpec:
    return ct.PhantomSpec(
        "pe",
        label,
        subtypes=("lobar",) if label else (),
        n_slices=60,
        slice_thickness=3.5,
        fov_mm=380.0,
        generator=generator,
    )


@pytest.mark.parametrize("seed", [2, 9])
def test_vertebral_bodies_are_cortex_over_marrow_with_discs_between(seed: int) -> None:
    sk = skeleton(seed)
    chest_spec = spec()
    x0, y0 = sk.body_centre
    bx, _ = sk.body_axes
    # mid-body: marrow inside a dense ring
    zc = min(sk.levels, key=lambda z: abs(z - 0.0))
    g = fine_grid(zc)
    vol, _, _ = render_chest(chest_spec, seed, g)
    centre = value_at(vol, g, x0, y0)
    assert centre < 0.8 * sk.cortex_hu and centre > 0.3 * sk.marrow_hu
    assert value_at(vol, g, x0 + bx - 0.6, y0) == pytest.approx(sk.cortex_hu)
    assert value_at(vol, g, x0 - bx + 0.6, y0) == pytest.approx(sk.cortex_hu)
    # between two bodies: the disc, not bone
    gap = fine_grid(zc + sk.level_height / 2.0)
    vol, _, _ = render_chest(chest_spec, seed, gap)
    assert value_at(vol, gap, x0, y0) == pytest.approx(sk.disc_hu)


@pytest.mark.parametrize("seed", [2, 9])
def test_posterior_elements_lie_in_the_back_muscles(seed: int) -> None:
    sk = skeleton(seed)
    zc = min(sk.levels, key=lambda z: abs(z - 20.0))
    g = fine_grid(zc + 0.15 * sk.level_height)
    vol, _, _ = render_chest(spec(), seed, g)
    cx, cy, cr = sk.canal
    assert abs(value_at(vol, g, cx, cy) - 20.0) < 1.0  # the canal: cord and CSF
    column = vol[0, :, int(np.argmin(np.abs(g.x[0, 0, :] - cx)))]
    behind = g.y[0, :, 0] > cy + cr
    assert (column[behind] > 500.0).sum() >= 4  # lamina / spinous process
    last_bone = float(g.y[0, :, 0][behind][column[behind] > 500.0].max())
    # covered by muscle then fat then skin, not lying in air
    y = g.y[0, :, 0]
    after = (y > last_bone) & (y < last_bone + 8.0)
    assert (column[after] > -150.0).all()


@pytest.mark.parametrize("seed", [2, 9])
def test_ribs_have_marrow_inside_their_cortex_the_whole_way_round(seed: int) -> None:
    sk = skeleton(seed)
    ribs = [t for t in sk.tubes if len(t.path) > 8 and t.radius - t.cortex_mm >= 2.0]
    assert len(ribs) >= 12
    chest_spec = spec()
    checked = 0
    for rib in ribs[:6]:
        # the joints between segments too, where one segment's cortex meets the next one
        points = list(rib.path[2:])
        points += [
            tuple((a + b) / 2.0 for a, b in zip(p0, p1, strict=True))
            for p0, p1 in zip(rib.path[2:-1], rib.path[3:], strict=True)
        ]
        for x, y, z in points:
            g = fine_grid(z, size=1024)
            vol, _, _ = render_chest(chest_spec, seed, g)
            v = value_at(vol, g, x, y)
            if v > -200.0:  # under a vessel or the lung detail the rib does not reach
                assert v < sk.cortex_hu - 50.0, (rib.path[0], (x, y, z), v)
                checked += 1
    assert checked >= 40


def test_costal_cartilage_joins_ribs_to_the_sternum() -> None:
    sk = skeleton(4)
    assert len(sk.cartilage) == 14  # ribs 1-7, both sides
    (_, m1, y, mw, _), (b0, _, _, bw, _) = sk.sternum
    for c in sk.cartilage:
        joint = c.path[-1]
        assert joint[1] == y and b0 <= joint[2] <= m1
        assert abs(joint[0]) in (mw + 1.0, bw + 1.0)
        assert 70.0 <= sk.cartilage_hu <= 200.0


def test_the_table_lies_under_the_patient_and_never_over_them() -> None:
    g = chest_grid(n=12)
    s3, s4 = spec(generator=3), spec()
    vol3, _, _ = render_chest(s3, 6, g)
    vol4, _, _ = render_chest(s4, 6, g)
    sk = skeleton(6)
    y = g.y[0, :, 0]
    mid = vol4[:, :, g.shape[2] // 2]  # [z, y] on the midline
    body = mid > -500.0
    lowest_tissue = max(float(y[np.flatnonzero(row)].max()) for row in body if row.any())
    shell = np.abs(y - sk.table_top) <= max(1.5, g.spacing)
    assert (mid[:, shell] > 100.0).any()
    assert sk.table_top > lowest_tissue
    # the patient's tissue is not where the table is, in either generator
    assert not (vol3[:, y > sk.table_top + 60.0] > 0).any()


def test_the_pulmonary_tree_and_emboli_are_generator_3s() -> None:
    g = chest_grid(n=40, size=128)
    for label in (False, True):
        v3, m3, l3 = render_chest(spec(label, 3), 11, g)
        v4, m4, l4 = render_chest(spec(label, 4), 11, g)
        assert (m3 == m4).all() and l3 == l4
        assert not np.array_equal(v3, v4)
    # the same studies otherwise: only the painter changes
    specs = ct.spec_set("pe", list(range(70, 80)), 0.3, generator=4)
    assert [replace(s, generator=3) for s in specs] == ct.spec_set("pe", list(range(70, 80)))


def test_mediastinal_fat_never_replaces_the_heart() -> None:
    """The fat is painted where the mediastinum is plain soft tissue; a chest whose soft
    tissue is drawn at the myocardium's 40 HU keeps its heart muscle."""
    seed = next(
        s for s in range(200) if abs(draw_chest(np.random.default_rng([s, 0])).soft_hu - 40.0) < 0.5
    )
    sk = skeleton(seed)
    g = Grid.at(256, 380.0, np.arange(-40.0, -14.0, 4.0, dtype=np.float32), 4.0)
    vol, _, _ = render_chest(spec(), seed, g)
    # the top of the heart, inside the mediastinal-fat ellipsoid: myocardium or a chamber
    j = int(np.argmin(np.abs(g.x[0, 0, :] - 15.0)))
    i = int(np.argmin(np.abs(g.y[0, :, 0] + 25.0)))
    assert (vol[:, i, j] > 0.0).all(), vol[:, i, j]
    assert sk.mediastinal_fat_hu < -50.0
