"""CT pulmonary angiography phantom: chest wall, ribs, spine, lungs with veins, bronchi and
small vessels, heart, aorta, SVC, the contrast-filled pulmonary arterial tree; emboli from
central to subsegmental and the look-alikes (mixing, nodes, poor contrast, dense SVC, mucus,
atelectasis)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from triage.synth.ct.grid import (
    AIR_HU,
    Grid,
    Lesion,
    capsule_in,
    ellipsoid_in,
    full_mask,
    grid_coords,
    measure_lesion,
    uniform,
)
from triage.synth.ct.skeleton import (
    draw_skeleton,
    narrowing,
    paint_skeleton,
    paint_soft_tissue,
    paint_table,
    table_half_width,
)
from triage.synth.ct.spec import CTPA_MIMICS, PhantomSpec


@dataclass(frozen=True)
class Vessel:
    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    radius: float
    level: str  # an EMBOLUS_LEVELS entry, or "" for non-pulmonary vessels


@dataclass(frozen=True)
class Chest:
    body_axes: tuple[float, float]
    fat_thickness: float
    lung_axes: tuple[float, float]
    lung_hu: float
    soft_hu: float
    artery_hu: float
    aorta_hu: float
    tree: tuple[Vessel, ...]
    marrow_hu: float  # vertebral bodies: cancellous bone, 60 HU (osteoporotic) to 450
    cortex_hu: float
    detail_seed: int  # veins, bronchi, small vessels, scapulae, table


# Centre and hilum landmarks (mm); y grows posterior, x toward patient left.
_LUNG_CENTRES = (-78.0, 78.0)
_BIFURCATION = (5.0, -15.0, 15.0)
_HILA = ((-45.0, 0.0, 10.0), (45.0, 5.0, 18.0))


def _xyz(p: np.ndarray) -> tuple[float, float, float]:
    return (float(p[0]), float(p[1]), float(p[2]))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (float(np.linalg.norm(v)) or 1.0)


def draw_chest(rng: np.random.Generator) -> Chest:
    scale = uniform(rng, 0.92, 1.08)
    tree: list[Vessel] = [
        Vessel((5.0, -38.0, -25.0), _BIFURCATION, uniform(rng, 12.0, 15.0), "central"),
    ]
    la, lb = 55.0 * scale, 82.0 * scale

    def clamp(p: np.ndarray, side: float) -> np.ndarray:
        cx = _LUNG_CENTRES[0 if side < 0 else 1]
        d = np.array([(p[0] - cx) / (la - 6.0), (p[1] - 5.0) / (lb - 6.0)])
        n = float(np.linalg.norm(d))
        if n > 1.0:
            p = p.copy()
            p[0] = cx + (p[0] - cx) / n
            p[1] = 5.0 + (p[1] - 5.0) / n
        p[2] = float(np.clip(p[2], -100.0, 85.0))
        return p

    def grow(p0: np.ndarray, direction: np.ndarray, depth: int, side: float) -> None:
        levels = ("lobar", "segmental", "subsegmental")
        radius = {0: uniform(rng, 5.0, 7.0), 1: uniform(rng, 3.0, 4.5), 2: uniform(rng, 1.5, 2.5)}[
            depth
        ]
        length = {
            0: uniform(rng, 25.0, 40.0),
            1: uniform(rng, 20.0, 32.0),
            2: uniform(rng, 14.0, 24.0),
        }[depth]
        p1 = clamp(p0 + _unit(direction) * length, side)
        tree.append(Vessel(_xyz(p0), _xyz(p1), radius, levels[depth]))
        if depth < 2:
            for _ in range(2 if depth == 1 else int(rng.integers(2, 4))):
                jitter = rng.normal(0.0, 0.55, 3)
                grow(p1, _unit(direction) + jitter, depth + 1, side)

    for side, hilum in zip((-1.0, 1.0), _HILA, strict=True):
        tree.append(Vessel(_BIFURCATION, hilum, uniform(rng, 9.0, 12.0), "central"))
        h = np.array(hilum, dtype=np.float64)
        for d in ((side * 0.5, -0.2, 1.0), (side * 1.0, -0.6, -0.3), (side * 0.5, 0.5, -1.0)):
            grow(h, np.array(d) + rng.normal(0.0, 0.2, 3), 0, side)
    return Chest(
        body_axes=(160.0 * scale, 115.0 * scale),
        fat_thickness=uniform(rng, 8.0, 18.0),
        lung_axes=(la, lb),
        lung_hu=uniform(rng, -870.0, -830.0),
        soft_hu=uniform(rng, 38.0, 48.0),
        artery_hu=uniform(rng, 250.0, 450.0),
        aorta_hu=uniform(rng, 200.0, 330.0),
        tree=tuple(tree),
        marrow_hu=uniform(rng, 60.0, 450.0),
        cortex_hu=uniform(rng, 600.0, 1000.0),
        detail_seed=int(rng.integers(2**31)),
    )


def _paint_column(vol: np.ndarray, section: np.ndarray, hu: float) -> None:
    """``hu`` in every slice where the in-plane mask ``section`` [1, H, W] is set (the
    writes limited to its bounding box)."""
    rows = np.flatnonzero(section.any(axis=(0, 2)))
    cols = np.flatnonzero(section.any(axis=(0, 1)))
    if len(rows) == 0:
        return
    ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    np.copyto(vol[:, ys, xs], hu, where=section[:, ys, xs])


def _paint_capsule(vol: np.ndarray, g: Grid, v: Vessel, hu: float) -> None:
    hit = capsule_in(g, v.p0, v.p1, v.radius)
    if hit:
        vol[hit[0]][hit[1]] = hu


def _chest_wall_and_table(
    vol: np.ndarray, g: Grid, chest: Chest, rng: np.random.Generator, *, paint: bool = True
) -> None:
    """Scapulae (thin bone plates behind the upper ribs) and the scanner table (a dense
    curved band under the patient): bone and plastic that a real CTPA always shows. With
    ``paint`` False (generator 4, :mod:`.skeleton`) only the draws are made, so that the
    lung detail that follows draws what it drew under generator 3."""
    a, b = chest.body_axes
    hu = uniform(rng, 350.0, 900.0)
    for side in (-1.0, 1.0):
        centre = (
            side * uniform(rng, 0.5, 0.65) * a,
            uniform(rng, 0.55, 0.7) * b,
            uniform(rng, 30.0, 55.0),
        )
        axes = (uniform(rng, 22.0, 32.0), uniform(rng, 2.5, 4.5), uniform(rng, 45.0, 65.0))
        hit = ellipsoid_in(g, centre, axes, side * uniform(rng, 0.4, 0.8))
        if hit and paint:
            sub = vol[hit[0]]
            sub[hit[1] & (sub > -200.0)] = hu
    top = b + uniform(rng, 2.0, 25.0)
    thick = uniform(rng, 3.0, 8.0)
    curve = uniform(rng, 0.0, 0.002)
    table_y = top - curve * g.x**2
    band = (g.y >= table_y) & (g.y <= table_y + thick) & (np.abs(g.x) < table_half_width(a))
    table_hu = np.float32(uniform(rng, 100.0, 500.0))
    for k in range(g.shape[0] if paint else 0):
        vol[k][band[0] & (vol[k] < -500.0)] = table_hu


def _lung_detail(
    vol: np.ndarray,
    g: Grid,
    chest: Chest,
    lungs: np.ndarray,
    artery_hu: float,
    mimics: Sequence[str],
    rng: np.random.Generator,
) -> None:
    """What lies in real lungs beside the arteries: pulmonary veins (draining to the left
    atrium, less opacified than the arteries in the arterial phase), bronchi with their walls
    next to the larger arteries (filled with mucus in ``mucus_bronchi``), a few hundred small
    vessels of any orientation, and dependent atelectasis (``atelectasis``)."""
    vein_hu = artery_hu * uniform(rng, 0.45, 0.85)
    atrium = np.array([10.0, 15.0, -40.0])
    for side in (-1.0, 1.0):
        for dz in (15.0, -15.0):
            p0 = atrium + np.array([side * 15.0, 0.0, dz * 0.5])
            direction = np.array([side, uniform(rng, -0.2, 0.4), dz / 30.0])
            stack = [(p0, direction, 0)]
            while stack:
                p, d, depth = stack.pop()
                radius = (uniform(rng, 4.0, 6.0), uniform(rng, 2.5, 3.5), uniform(rng, 1.2, 2.0))[
                    depth
                ]
                length = (
                    uniform(rng, 30.0, 45.0),
                    uniform(rng, 20.0, 30.0),
                    uniform(rng, 12.0, 22.0),
                )[depth]
                q = p + _unit(d) * length
                _paint_capsule(vol, g, Vessel(_xyz(p), _xyz(q), radius, ""), vein_hu)
                if depth < 2:
                    for _ in range(2):
                        stack.append((q, _unit(d) + rng.normal(0.0, 0.6, 3), depth + 1))
    mucus = "mucus_bronchi" in mimics
    plugged = set(rng.choice(len(chest.tree), size=min(4, len(chest.tree)), replace=False))
    for i, v in enumerate(chest.tree):
        if v.level not in ("lobar", "segmental"):
            continue
        a0, a1 = np.array(v.p0), np.array(v.p1)
        axis = _unit(a1 - a0)
        normal = _unit(np.cross(axis, rng.normal(size=3)))
        r = 0.8 * v.radius
        off = normal * (v.radius + r + 1.5)
        q0, q1 = _xyz(a0 + off), _xyz(a1 + off)
        _paint_capsule(vol, g, Vessel(q0, q1, r + 1.0, ""), uniform(rng, 0.0, 40.0))
        mucus_hu = uniform(rng, 10.0, 40.0)  # drawn always: the mimic changes nothing else
        fill = mucus_hu if mucus and i in plugged else -950.0
        _paint_capsule(vol, g, Vessel(q0, q1, r, ""), fill)
    la, lb = chest.lung_axes
    for _ in range(int(rng.integers(150, 300))):
        side = -1.0 if rng.random() < 0.5 else 1.0
        c = np.array(
            [
                _LUNG_CENTRES[0 if side < 0 else 1] + uniform(rng, -0.8, 0.8) * la,
                5.0 + uniform(rng, -0.8, 0.8) * lb,
                uniform(rng, -110.0, 90.0),
            ]
        )
        d = _unit(rng.normal(size=3)) * uniform(rng, 3.0, 8.0)
        hit = capsule_in(g, list(c - d), list(c + d), uniform(rng, 0.5, 1.3))
        if hit:
            sub = vol[hit[0]]
            sub[hit[1] & lungs[hit[0]]] = artery_hu * uniform(rng, 0.4, 1.0)
    if "atelectasis" in mimics:
        rim = uniform(rng, 8.0, 25.0)
        collapsed_hu = np.float32(uniform(rng, 25.0, 70.0))
        low = g.z[:, 0, 0] < uniform(rng, -70.0, -30.0)
        back = g.y[0] > 5.0 + lb * 0.85 - rim  # the dependent rim of each lung
        for k in np.flatnonzero(low):
            vol[k][lungs[k] & back & (vol[k] < -300.0)] = collapsed_hu


HeartCavity = tuple[tuple[float, float, float], tuple[float, float, float], float, np.ndarray]


def _heart_interior(
    vol: np.ndarray,
    g: Grid,
    cavities: Sequence[HeartCavity],
    soft_hu: float,
    rng: np.random.Generator,
) -> None:
    """What lies inside the contrast-filled chambers of a real heart (generator 5): papillary
    muscles and trabeculae (myocardium at soft-tissue HU reaching in from the wall), the right
    ventricle's moderator band, and in some studies unopacified blood from the inferior vena
    cava swirling into the right atrium (the inflow pseudo-defect). Each is a soft-tissue
    shape with contrast around it - the look of a filling defect, in a chamber, not an artery.
    ``cavities``: (centre, axes, HU, mask) of the right heart, then the left."""
    for index, (centre, axes, blood_hu, mask) in enumerate(cavities):
        c = np.asarray(centre, dtype=np.float64)
        ax = np.asarray(axes, dtype=np.float64)
        muscle_hu = np.float32(uniform(rng, 30.0, 60.0))
        n = int(rng.integers(4, 10))
        for _ in range(n):
            d = _unit(rng.normal(size=3) * np.array([1.0, 1.0, 0.6]))
            p0 = c + d * ax * uniform(rng, 0.8, 1.0)  # at the wall
            p1 = c + d * ax * uniform(rng, 0.35, 0.7)  # reaching into the chamber
            hit = capsule_in(g, _xyz(p0), _xyz(p1), uniform(rng, 1.5, 4.5))
            if hit:
                sub = vol[hit[0]]
                sub[hit[1] & mask[hit[0]]] = muscle_hu
        if index == 0 and rng.random() < 0.7:  # moderator band across the right ventricle
            d = _unit(np.array([1.0, uniform(rng, -0.5, 0.5), uniform(rng, -0.4, 0.4)]))
            p0, p1 = c - d * ax[0] * 0.95, c + d * ax[0] * 0.95
            p0[2] -= 0.3 * ax[2]
            p1[2] -= 0.3 * ax[2]
            hit = capsule_in(g, _xyz(p0), _xyz(p1), uniform(rng, 1.5, 3.0))
            if hit:
                sub = vol[hit[0]]
                sub[hit[1] & mask[hit[0]]] = muscle_hu
        if index == 0 and rng.random() < 0.6:  # inflow of unopacified blood from the IVC
            lo = c + np.array([uniform(rng, -0.5, 0.0), uniform(rng, 0.0, 0.5), -0.5]) * ax
            size = (uniform(rng, 10.0, 18.0), uniform(rng, 8.0, 15.0), uniform(rng, 12.0, 22.0))
            inflow = ellipsoid_in(g, _xyz(lo), size, uniform(rng, 0.0, math.pi))
            if inflow:
                x, y, z = grid_coords(g, inflow[0])
                ph = rng.random(3) * 6.0
                swirl = 0.5 + 0.5 * np.sin(0.3 * x + ph[0]) * np.sin(0.25 * y + ph[1]) * np.cos(
                    0.2 * z + ph[2]
                )
                f = uniform(rng, 0.15, 0.45) + uniform(rng, 0.3, 0.55) * swirl  # share of contrast
                sub = vol[inflow[0]]
                m = inflow[1] & mask[inflow[0]]
                sub[m] = (soft_hu + (blood_hu - soft_hu) * f)[m]


def render_chest(
    spec: PhantomSpec, seed: int, g: Grid
) -> tuple[np.ndarray, np.ndarray, list[Lesion]]:
    chest = draw_chest(np.random.default_rng([seed, 0]))
    mrng = np.random.default_rng([seed, 3])
    mdraw = {m: mrng.random(8) for m in CTPA_MIMICS}
    artery_hu = chest.artery_hu
    if "poor_contrast" in spec.mimics:
        artery_hu = 140.0 + 100.0 * float(mdraw["poor_contrast"][0])
    aorta_hu = (
        min(chest.aorta_hu, artery_hu + 60.0) if "poor_contrast" in spec.mimics else chest.aorta_hu
    )
    vol = np.full(g.shape, AIR_HU, dtype=np.float32)
    a, b = chest.body_axes
    t = chest.fat_thickness
    zf = narrowing(g.z)
    # Slice by slice (the same element-wise arithmetic as on the whole grid, so the same
    # values, without full-grid temporaries that fit in no cache).
    y_body, y_muscle, y_inner = (g.y / b) ** 2, (g.y / (b - t)) ** 2, (g.y / (b - t - 12.0)) ** 2
    for k in range(g.shape[0]):
        zk, sl = zf[k : k + 1], vol[k : k + 1]
        sl[(g.x / (a * zk)) ** 2 + y_body <= 1.0] = -100.0
        sl[(g.x / (a * zk - t)) ** 2 + y_muscle <= 1.0] = 55.0
        sl[(g.x / (a * zk - t - 12.0)) ** 2 + y_inner <= 1.0] = chest.soft_hu
    skeleton = (
        draw_skeleton(
            np.random.default_rng([seed, 4]),
            chest.body_axes,
            chest.fat_thickness,
            chest.cortex_hu,
            chest.marrow_hu,
        )
        if spec.generator >= 4
        else None
    )
    # Ribs in the chest wall, sternum, vertebra and canal (generator 4: skeleton.py).
    for k in range(18 if skeleton is None else 0):
        ang = 2 * math.pi * (k + 0.5) / 18
        if abs(math.sin(ang)) > 0.97:
            continue
        rx, ry = (a * 0.97 - t - 6.0) * math.cos(ang), (b - t - 6.0) * math.sin(ang)
        for zc in np.arange(-110.0, 100.0, 28.0):
            hit = ellipsoid_in(g, (rx, ry, zc + 8.0 * math.cos(ang)), (6.0, 6.0, 7.0), ang)
            if hit:
                vol[hit[0]][hit[1]] = 700.0
    if skeleton is None:
        _paint_column(vol, (g.x / 12.0) ** 2 + ((g.y + b - t - 4.0) / 5.0) ** 2 <= 1.0, 600.0)
        _paint_column(vol, g.x**2 + (g.y - 72.0) ** 2 <= 19.0**2, chest.cortex_hu)
        _paint_column(vol, g.x**2 + (g.y - 72.0) ** 2 <= 16.0**2, chest.marrow_hu)
        _paint_column(vol, g.x**2 + (g.y - 100.0) ** 2 <= 8.0**2, 15.0)
    # Lungs, tapering to the apices and the bases.
    la, lb = chest.lung_axes
    lz = np.sqrt(np.clip(1.0 - ((g.z + 5.0) / 120.0) ** 2, 0.0, None))
    lungs = np.zeros(g.shape, dtype=bool)
    for k in range(g.shape[0]):  # slice by slice, as above
        lzk, lk = lz[k : k + 1], lungs[k : k + 1]
        for lx in _LUNG_CENTRES:
            lk |= ((g.x - lx) / (la * lzk + 1e-3)) ** 2 + (
                (g.y - 5.0) / (lb * lzk + 1e-3)
            ) ** 2 <= 1.0
    # Heart (lower, anterior, left) displaces lung.
    heart_hit = ellipsoid_in(g, (15.0, -25.0, -60.0), (58.0, 45.0, 48.0), 0.4)
    heart = full_mask(g, *heart_hit) if heart_hit else np.zeros(g.shape, dtype=bool)
    lungs &= ~heart
    vol[lungs] = chest.lung_hu
    vol[heart] = 40.0  # myocardium
    if skeleton is not None:
        paint_soft_tissue(vol, g, skeleton, chest.soft_hu, heart)
    drng = np.random.default_rng(chest.detail_seed)
    _chest_wall_and_table(vol, g, chest, drng, paint=skeleton is None)
    _lung_detail(vol, g, chest, lungs, artery_hu, spec.mimics, drng)
    if skeleton is not None:
        paint_skeleton(vol, g, skeleton)
        paint_table(vol, g, skeleton, table_half_width(a))
    interior = spec.generator >= 5  # generator 5 paints inside the chambers afterwards
    cavities = []
    for c, axes, hu in (
        ((-5.0, -35.0, -60.0), (28.0, 22.0, 30.0), artery_hu * 0.95),  # RV/RA
        ((30.0, -15.0, -62.0), (24.0, 22.0, 30.0), aorta_hu),
    ):  # LV
        hit = ellipsoid_in(g, c, axes, 0.4)
        if hit:
            vol[hit[0]][hit[1] & heart[hit[0]]] = hu
            if interior:
                cavities.append((c, axes, hu, full_mask(g, hit[0], hit[1]) & heart))
    if interior and len(cavities) == 2:
        _heart_interior(vol, g, cavities, chest.soft_hu, np.random.default_rng([seed, 6]))
    # Systemic vessels: aorta (ascending, arch, descending) and SVC.
    for p0, p1, r in (
        ((-15.0, -20.0, -45.0), (-15.0, -20.0, 42.0), 15.0),
        ((-15.0, -20.0, 42.0), (2.0, 15.0, 58.0), 13.0),
        ((2.0, 15.0, 58.0), (20.0, 52.0, 45.0), 12.0),
        ((20.0, 52.0, 45.0), (20.0, 55.0, -130.0), 11.0),
    ):
        _paint_capsule(vol, g, Vessel(p0, p1, r, ""), aorta_hu)
    svc_hu = artery_hu
    if "dense_svc" in spec.mimics:
        svc_hu = 700.0 + 900.0 * float(mdraw["dense_svc"][0])
    _paint_capsule(vol, g, Vessel((-38.0, -12.0, 110.0), (-36.0, -18.0, -5.0), 9.0, ""), svc_hu)
    if "dense_svc" in spec.mimics:  # streaks from the dense contrast column
        zmask = g.z > -5.0
        s_ang = np.arctan2(g.y + 15.0, g.x + 37.0)
        rr = np.hypot(g.y + 15.0, g.x + 37.0)
        phase = 6.0 * float(mdraw["dense_svc"][1])
        streak = (120.0 * np.sin(7.0 * s_ang + phase) * np.exp(-rr / 30.0)).astype(np.float32)
        away = rr > 10.0
        for k in np.flatnonzero(zmask[:, 0, 0]):  # only where it adds something, as above
            sl = vol[k : k + 1]
            np.add(sl, streak, out=sl, where=away & (sl > -200))
    # Pulmonary arterial tree.
    for v in chest.tree:
        _paint_capsule(vol, g, v, artery_hu)
    if "mixing_artefact" in spec.mimics:
        mix = mdraw["mixing_artefact"]
        for v in chest.tree[:3]:
            cap = capsule_in(g, v.p0, v.p1, v.radius)
            if cap is None:
                continue
            box, m, _ = cap
            x, y, z = grid_coords(g, box)
            field_ = 0.5 + 0.5 * np.sin(0.35 * x + 6.0 * mix[0]) * np.sin(
                0.3 * y + 6.0 * mix[1]
            ) * np.cos(0.25 * z + 6.0 * mix[2])
            f = 1.0 - (0.35 + 0.3 * float(mix[3])) * field_
            sub = vol[box]
            sub[m] = (chest.soft_hu + (artery_hu - chest.soft_hu) * f)[m]
    if "hilar_nodes" in spec.mimics:
        nd = mdraw["hilar_nodes"]
        for k, (hx, hy, hz) in enumerate(_HILA):
            for j in range(2):
                ang = 2 * math.pi * float(nd[2 * k + j])
                rad = 3.0 + 5.0 * float(nd[4 + k])
                d = 10.0 + rad
                centre = (hx + d * math.cos(ang) * 0.7, hy + d * math.sin(ang), hz - 8.0 + 16.0 * j)
                hit = ellipsoid_in(g, centre, (rad, rad * 1.2, rad), ang)
                if hit:
                    sub = vol[hit[0]]
                    sub[hit[1] & (sub < 100.0)] = 45.0 + 10.0 * float(nd[6])
    # Emboli.
    lesion = np.zeros(g.shape, dtype=bool)
    lesions: list[Lesion] = []
    lrng = np.random.default_rng([seed, 2])
    for i, level in enumerate(spec.subtypes):
        zlo, zhi = float(g.z[0, 0, 0]), float(g.z[-1, 0, 0])
        vessels = [
            v
            for v in chest.tree
            if v.level == level
            and min(v.p0[2], v.p1[2]) <= zhi - 3.0
            and max(v.p0[2], v.p1[2]) >= zlo + 3.0
        ]
        vessels = vessels or [v for v in chest.tree if v.level == "central"]
        v = vessels[int(lrng.integers(len(vessels)))]
        frac = uniform(lrng, 0.55, 1.0)
        t0, t1 = sorted((uniform(lrng, 0.0, 0.6), uniform(lrng, 0.5, 1.0)))
        t1 = max(t1, t0 + 0.3)
        p0 = np.array(v.p0) + (np.array(v.p1) - np.array(v.p0)) * t0
        p1 = np.array(v.p0) + (np.array(v.p1) - np.array(v.p0)) * min(t1, 1.0)
        size = 2.0 * v.radius * frac if spec.size_mm is None or i else spec.size_mm
        radius = min(size / 2.0, v.radius)
        hu = uniform(lrng, 20.0, 70.0)
        clot = capsule_in(g, list(p0), list(p1), radius)
        m = np.zeros(g.shape, dtype=bool)
        if clot:
            vessel = capsule_in(g, v.p0, v.p1, v.radius)
            m = full_mask(g, clot[0], clot[1])
            if vessel:
                m &= full_mask(g, vessel[0], vessel[1])
            vol[m] = hu
        lesion |= m
        lesions.append(measure_lesion(g, level, size, m))
    return vol, lesion, lesions
