"""Generator 4 (triage/synth/ct: PhantomSpec.generator): the skull's floor and the face under
it, and the glare of the skull on what it encloses; the brain above the floor is the one
generator 3 paints."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from triage.synth import ct
from triage.synth.ct.grid import Grid
from triage.synth.ct.head import HeadCanvas, draw_head, draw_skull_base, render_head
from triage.synth.ct.scanner import render, skull_glare

from .test_phantoms import SMALL, head_grid


def canvas(seed: int, g: Grid) -> tuple[HeadCanvas, np.ndarray]:
    base = draw_skull_base(np.random.default_rng([seed, 4]))
    c = HeadCanvas(g, draw_head(np.random.default_rng([seed, 0])), base)
    return c, c.floor_z(base)


def test_a_generator_outside_the_known_ones_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown generator 6"):
        ct.PhantomSpec("ich", False, generator=6)
    specs = ct.spec_set("ich", list(range(50, 60)), 0.3, generator=4)
    assert {s.generator for s in specs} == {4}
    # the same studies otherwise: only the painter changes
    assert [replace(s, generator=3) for s in specs] == ct.spec_set("ich", list(range(50, 60)))


@pytest.mark.parametrize("seed", [3, 8])
def test_nothing_intracranial_below_the_floor(seed: int) -> None:
    g = head_grid()
    c, floor = canvas(seed, g)
    below = g.z < floor[None]
    for name in ("inside", "white", "sulci", "ventricles", "cistern"):
        assert not (getattr(c, name) & below).any(), name
    assert not (c.face & c.inside).any()
    assert (c.face & below).sum() == c.face.sum() > 0
    # the floor: lowest behind the petrous ridges, highest over the orbits
    ay = c.head.inner_axes[1]
    row = lambda yn: int(np.argmin(np.abs(g.y[0, :, 0] - yn * ay)))  # noqa: E731
    mid = SMALL // 2
    assert floor[row(-0.6), mid] > floor[row(-0.1), mid + 30] > floor[row(0.7), mid]


def test_the_face_has_orbits_sinuses_and_no_closed_skull_ring() -> None:
    g = head_grid()
    c, floor = canvas(5, g)
    vol, ay = c.vol, c.head.inner_axes[1]
    front = g.y[0] < -0.3 * ay  # [H, 1]
    orbit_roof = floor[int(np.argmin(np.abs(g.y[0, :, 0] + 0.6 * ay))), SMALL // 2]
    low = np.flatnonzero(g.z[:, 0, 0] < orbit_roof - 10.0)  # below the anterior fossa
    assert len(low) >= 3
    face = c.face & front[None]
    fat = face & (vol > -130) & (vol < -50)
    air = face & (vol < -800)
    assert fat.sum() > 200 and air.sum() > 200  # orbital fat; sinuses, nasal cavity
    plain = HeadCanvas(g, c.head)  # generator 3: the same head with a closed skull throughout
    k = low[0]
    ring3 = (plain.vol[k] > 300) & front
    ring4 = (vol[k] > 300) & front
    assert ring4.sum() < 0.5 * ring3.sum(), (ring4.sum(), ring3.sum())


@pytest.mark.parametrize("kind", ct.HEMORRHAGE_SUBTYPES)
def test_bleeds_stay_above_the_floor(kind: str) -> None:
    g = head_grid()
    spec = ct.PhantomSpec("ich", True, subtypes=(kind,), size_mm=12.0, generator=4)
    for seed in (1, 2):
        vol, mask, _ = render_head(spec, seed, g)
        assert mask.any(), (kind, seed)
        c, floor = canvas(seed, g)
        assert c.inside[mask].all()
        assert (g.z >= floor[None])[np.broadcast_to(True, g.shape) & mask].all()
        assert vol[mask].min() >= 45


def test_the_brain_above_the_floor_is_generator_3s() -> None:
    g = head_grid()
    spec3 = ct.PhantomSpec("ich", True, subtypes=("intraparenchymal",), size_mm=15.0)
    spec4 = replace(spec3, generator=4)
    v3, m3, _ = render_head(spec3, 9, g)
    v4, m4, _ = render_head(spec4, 9, g)
    c, floor = canvas(9, g)
    well_above = (g.z > floor[None] + 25.0) & c.inside
    assert well_above.sum() > 100_000
    assert np.array_equal(v3[well_above], v4[well_above])
    assert np.array_equal(m3, m4)  # this bleed lies above the floor in both


def test_glare_brightens_the_brain_toward_the_skull() -> None:
    g = head_grid(n=12, thickness=5.0, size=256)
    g = Grid.at(256, 230.0, g.z[:, 0, 0] + 40.0, 5.0)  # the cranial vault
    c = HeadCanvas(g, draw_head(np.random.default_rng([2, 0])))
    vol = c.vol.copy()
    skull_glare(vol, g, np.random.default_rng(0))
    added = vol - c.vol
    r = c.r_inner
    brain = c.inside & (c.vol > 15) & (c.vol < 60)
    mean_axis = float(np.mean(c.head.inner_axes))
    depth = (1.0 - r) * mean_axis  # mm inside the inner table (about)
    near = added[brain & (depth > 1.0) & (depth < 3.0)].mean()
    mid = added[brain & (depth > 8.0) & (depth < 12.0)].mean()
    core = added[brain & (depth > 40.0)].mean()
    assert near > mid > core >= 0.0, (near, mid, core)
    assert 10.0 < near < 80.0 and core < 8.0
    # generator 3 has none of it: render() adds the glare for generator 4 only
    spec = ct.PhantomSpec("ich", False, n_slices=12, slice_thickness=5.0)
    plain, _, _ = render(spec, 2, g)
    glared, _, _ = render(replace(spec, generator=4), 2, g)
    assert (glared - plain)[brain].mean() > 3.0


@pytest.mark.parametrize("f", [2, 4])
def test_glare_cells_come_back_linearly_interpolated(f: int) -> None:
    from triage.synth.ct.scanner import _upsample

    cells = np.add.outer(np.arange(6.0), 10.0 * np.arange(5.0)).astype(np.float32)  # ramps
    up = _upsample(cells, f)
    assert up.shape == (6 * f, 5 * f)
    # the straight line between cell values, fine pixel k at k / f - 1/2 cells (half a fine
    # pixel before its centre: the moving mean's window), the edges held
    pos = np.arange(6 * f) / f - 0.5
    rows = (pos >= 0) & (pos <= 5)
    column = f * 2 + f // 2  # at 2.0 cells
    assert np.allclose(up[rows, column], pos[rows] + 20.0)
    assert np.allclose(up[pos < 0, column], 20.0)  # beyond the outer cells' values: held
    assert np.allclose(up[pos > 5, column], 25.0)
    assert np.allclose(_upsample(np.full((3, 3), 7.0, np.float32), f), 7.0)  # flat stays flat
