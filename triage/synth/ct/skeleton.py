"""The chest's skeleton, back and table as a real CT shows them (CTPA generator 4,
:attr:`~triage.synth.ct.PhantomSpec.generator`).

Generator 3 painted ribs as solid 700 HU beads, the spine as one round column and the sternum
as a bar: nothing in it looked like the real chest wall that lit pe's localisation map over
the vertebrae, sternum, ribs, scapulae and table of the shared LIDC chest CT. Real bone is a
thin dense cortex around cancellous marrow of a few hundred HU - soft-tissue-like density
enclosed by something much brighter, the pattern an embolus makes inside an opacified artery -
and that is what this module paints:

- **vertebrae** (:class:`Skeleton` ``levels``): bodies with a cortical shell and textured
  marrow, intervertebral discs between them, and per level the posterior elements (pedicles,
  laminae, spinous process sloping down, transverse processes) around the spinal canal;
- **ribs**: twelve pairs, each a tube from the costovertebral joint round the chest wall,
  falling 25-55 mm from back to front, cortex over marrow; ribs 1-7 continue as costal
  cartilage (soft-tissue to 200 HU, sometimes with calcified spots) to the sternum;
- **sternum** (manubrium, body), **clavicles** at the top, **scapulae** (a thin plate outside
  the ribs, its spine and the glenoid neck);
- the **back**: the paraspinal muscles under a fat layer, so the posterior elements lie in
  muscle, not outside the patient;
- **mediastinal fat** round the great vessels, the **trachea** and main bronchi, the
  **oesophagus**;
- the **table**: a foam pad, then one or two thin curved shells and struts (generator 3's
  table was one dense band).

Every draw comes from its own stream ([seed, 4]); generator 3's draws are unchanged.
Synthetic phantoms; not for clinical use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from triage.synth.ct.grid import Grid, capsule_in, ellipsoid_in, grid_box, grid_coords, uniform

Point = tuple[float, float, float]


@dataclass(frozen=True)
class Tube:
    """A bone (or cartilage) along a polyline: a cortex ``cortex_mm`` thick over marrow."""

    path: tuple[Point, ...]
    radius: float
    cortex_mm: float


@dataclass(frozen=True)
class Plate:
    """A flat bone (the scapular body): an ellipsoid, ``angle`` its in-plane rotation."""

    centre: Point
    axes: Point
    angle: float


@dataclass(frozen=True)
class Skeleton:
    levels: tuple[float, ...]  # vertebral body centres (mm, z), top to bottom
    level_height: float
    disc_mm: float
    body_centre: tuple[float, float]  # (x, y) of the vertebral bodies
    body_axes: tuple[float, float]
    canal: tuple[float, float, float]  # (x, y, radius)
    cortex_hu: float
    marrow_hu: float
    texture: float  # marrow's relative modulation (trabecular texture)
    texture_phase: tuple[float, float, float]
    disc_hu: float
    tubes: tuple[Tube, ...]  # ribs, clavicles, posterior elements, scapular spines
    cartilage: tuple[Tube, ...]
    cartilage_hu: float
    calcifications: tuple[tuple[Point, float], ...]  # (centre, radius) in cartilage
    sternum: tuple[tuple[float, float, float, float, float], ...]  # (z0, z1, y, hx, hy)
    plates: tuple[Plate, ...]
    glenoids: tuple[tuple[Point, Point], ...]  # (centre, axes)
    back: tuple[float, float, float, float]  # paraspinal muscle ellipse: y, ax, ay, fat
    mediastinal_fat_hu: float
    trachea: tuple[Point, Point, float]  # top, carina, radius
    bronchi: tuple[tuple[Point, Point, float], ...]
    oesophagus: tuple[float, float, float]  # x, y, radius
    table_top: float  # y of the upper shell's centre on the midline
    table: tuple[float, float, float, float, float]  # curve, shell mm, gap mm, shell HU, pad HU
    struts: tuple[float, ...]  # x of the struts between the shells


def narrowing(z: np.ndarray | float) -> np.ndarray:
    """The chest's width at ``z`` (mm) relative to its widest: the body outline narrows toward
    the top (every generator's chest; :func:`~triage.synth.ct.ctpa.render_chest`)."""
    return np.clip(1.0 - ((z - 20.0) / 260.0) ** 2, 0.6, 1.0)


def table_half_width(body_a: float) -> float:
    """How far the table reaches either side of the midline under a chest of half-width
    ``body_a`` (mm)."""
    return 0.95 * body_a + 40.0


def draw_skeleton(
    rng: np.random.Generator,
    body_axes: tuple[float, float],
    fat_thickness: float,
    cortex_hu: float,
    marrow_hu: float,
) -> Skeleton:
    """The skeleton of one chest whose outline is ``body_axes`` (semi-axes, mm) under
    ``fat_thickness`` of fat; ``cortex_hu`` and ``marrow_hu`` are the chest's own draws
    (generator 3's vertebra), so the spine keeps its density range."""
    a, b = body_axes
    t = fat_thickness
    cortex = max(cortex_hu, uniform(rng, 700.0, 1300.0))
    height = uniform(rng, 23.0, 28.0)
    t1 = uniform(rng, 95.0, 125.0)  # first thoracic body's centre
    levels = tuple(t1 + height * k for k in range(3, -15, -1))  # C4 .. L2
    body_y = 72.0
    bx, by = uniform(rng, 16.0, 21.0), uniform(rng, 13.0, 17.0)
    canal_r = uniform(rng, 7.0, 9.0)
    canal_y = body_y + by + 2.0 + canal_r
    tubes: list[Tube] = []
    # Posterior elements of every level.
    for zc in levels:
        z = zc + 0.15 * height
        spine_drop = uniform(rng, 10.0, 20.0)
        for s in (-1.0, 1.0):
            px = s * (canal_r + 3.0)
            tubes.append(Tube(((s * 9.0, body_y + by - 3.0, z), (px, canal_y, z)), 3.5, 1.2))
            tubes.append(
                Tube(((px, canal_y + 2.0, z), (0.0, canal_y + canal_r + 5.0, z - 3.0)), 3.0, 1.0)
            )
            tubes.append(
                Tube(
                    ((px, canal_y, z), (s * uniform(rng, 26.0, 33.0), canal_y + 6.0, z - 2.0)),
                    uniform(rng, 3.5, 5.0),
                    1.2,
                )
            )
        tip = canal_y + canal_r + uniform(rng, 22.0, 30.0)
        tubes.append(
            Tube(
                ((0.0, canal_y + canal_r + 5.0, z - 3.0), (0.0, tip, z - spine_drop)),
                uniform(rng, 3.0, 4.5),
                1.0,
            )
        )
    # Ribs round the inner chest wall; θ from the back (0) to the front (π).
    cartilage: list[Tube] = []
    calcifications: list[tuple[Point, float]] = []
    sternum_y = -(b - t - 10.0)
    m_top = t1 - uniform(rng, 20.0, 35.0)
    m_len = uniform(rng, 40.0, 50.0)
    s_len = uniform(rng, 85.0, 105.0)
    mw, bw = uniform(rng, 20.0, 27.0), uniform(rng, 12.0, 16.0)
    sternum = (
        (m_top - m_len, m_top, sternum_y, mw, uniform(rng, 6.0, 8.0)),
        (m_top - m_len - 2.0 - s_len, m_top - m_len - 2.0, sternum_y, bw, uniform(rng, 5.0, 7.0)),
    )
    for k in range(12):
        zh = t1 - height * k + height * 0.5
        theta0 = uniform(rng, 0.3, 0.42)
        theta1 = (2.55 if k < 7 else 2.35 if k < 10 else 1.75) + uniform(rng, -0.1, 0.1)
        drop = uniform(rng, 25.0, 55.0)
        radius = uniform(rng, 4.0, 6.0) if k else uniform(rng, 5.0, 7.0)
        cortex_mm = uniform(rng, 1.0, 2.0)
        for s in (-1.0, 1.0):
            pts: list[Point] = [(s * 14.0, body_y + 6.0, zh), (s * 30.0, canal_y + 2.0, zh - 2.0)]
            for theta in np.linspace(theta0, theta1, 9):
                f = (theta - theta0) / (theta1 - theta0)
                z = zh - 4.0 - drop * f**1.2
                wall_a = a * float(narrowing(z)) - t - 8.0 - radius
                wall_b = b - t - 8.0 - radius
                pts.append((s * wall_a * math.sin(theta), wall_b * math.cos(theta), z))
            tubes.append(Tube(tuple(pts), radius, cortex_mm))
            if k < 7:  # costal cartilage to the sternum's edge
                end = pts[-1]
                zs = float(np.clip(end[2] + uniform(rng, 0.0, 15.0), sternum[1][0], sternum[0][1]))
                half = mw if zs >= sternum[0][0] else bw
                joint = (s * (half + 1.0), sternum_y, zs)
                mid = ((end[0] + joint[0]) / 2, min(end[1], joint[1]) - 4.0, (end[2] + zs) / 2)
                cartilage.append(Tube((end, mid, joint), radius * 0.9, 0.0))
                if rng.random() < 0.4:
                    c = (
                        (end[0] + mid[0]) / 2,
                        (end[1] + mid[1]) / 2,
                        (end[2] + mid[2]) / 2,
                    )
                    calcifications.append((c, uniform(rng, 1.0, 2.5)))
    # Clavicles (at the top; outside the coverage of most CTPAs' lower half).
    zc = t1 + uniform(rng, 0.0, 15.0)
    for s in (-1.0, 1.0):
        w = a * float(narrowing(zc))
        tubes.append(
            Tube(
                (
                    (s * (mw + 2.0), sternum_y - 4.0, m_top + 4.0),
                    (s * 0.5 * w, -0.8 * (b - t), zc + 6.0),
                    (s * 0.78 * w, -0.3 * (b - t), zc + 12.0),
                    (s * 0.84 * w, 0.15 * (b - t), zc + 10.0),
                ),
                uniform(rng, 5.5, 7.5),
                uniform(rng, 1.5, 2.5),
            )
        )
    # Scapulae: a thin plate outside the ribs, tangent to the back wall.
    plates: list[Plate] = []
    glenoids: list[tuple[Point, Point]] = []
    zs = uniform(rng, 30.0, 60.0)
    for s in (-1.0, 1.0):
        theta = uniform(rng, 0.6, 0.85)
        wa, wb = a * float(narrowing(zs)) - t + 2.0, b - t + 2.0
        cx, cy = s * wa * math.sin(theta), wb * math.cos(theta)
        angle = math.atan2(-wb * math.sin(theta), s * wa * math.cos(theta))
        half_u, half_z = uniform(rng, 25.0, 35.0), uniform(rng, 50.0, 70.0)
        plates.append(Plate((cx, cy, zs), (half_u, uniform(rng, 1.2, 2.2), half_z), angle))
        ux, uy = math.cos(angle), math.sin(angle)
        lateral = 1.0 if ux * s > 0 else -1.0  # the plate's end away from the spine
        gx, gy = cx + lateral * ux * half_u * 0.9, cy + lateral * uy * half_u * 0.9
        gz = zs + 0.5 * half_z
        glenoids.append(((gx, gy, gz), (uniform(rng, 8.0, 11.0), 11.0, uniform(rng, 12.0, 16.0))))
        medial = (cx - lateral * ux * half_u * 0.8, cy - lateral * uy * half_u * 0.8 + 3.0)
        tubes.append(
            Tube(
                ((medial[0], medial[1], gz + 5.0), (gx, gy + 8.0, gz + 8.0)),
                uniform(rng, 3.0, 4.5),
                1.2,
            )
        )
    phase = (uniform(rng, 0, 6.3), uniform(rng, 0, 6.3), uniform(rng, 0, 6.3))
    carina_z = uniform(rng, 15.0, 35.0)
    trachea_r = uniform(rng, 7.0, 10.0)
    carina = (-5.0, 10.0, carina_z)
    bronchi = tuple(
        (carina, (s * 42.0, 8.0, carina_z - uniform(rng, 8.0, 18.0)), trachea_r * 0.7)
        for s in (-1.0, 1.0)
    )
    return Skeleton(
        levels=levels,
        level_height=height,
        disc_mm=uniform(rng, 4.0, 6.5),
        body_centre=(0.0, body_y),
        body_axes=(bx, by),
        canal=(0.0, canal_y, canal_r),
        cortex_hu=cortex,
        marrow_hu=marrow_hu,
        texture=uniform(rng, 0.15, 0.4),
        texture_phase=phase,
        disc_hu=uniform(rng, 70.0, 110.0),
        tubes=tuple(tubes),
        cartilage=tuple(cartilage),
        cartilage_hu=uniform(rng, 70.0, 200.0),
        calcifications=tuple(calcifications),
        sternum=sternum,
        plates=tuple(plates),
        glenoids=tuple(glenoids),
        back=(
            b - 12.0,
            uniform(rng, 65.0, 85.0),
            uniform(rng, 22.0, 30.0),
            uniform(rng, 4.0, 10.0),
        ),
        mediastinal_fat_hu=uniform(rng, -110.0, -60.0),
        trachea=((-5.0, 25.0, 200.0), carina, trachea_r),
        bronchi=bronchi,
        oesophagus=(uniform(rng, 0.0, 10.0), body_y - by - uniform(rng, 8.0, 12.0), 7.0),
        table_top=b + 28.0 + uniform(rng, 3.0, 40.0),
        table=(
            uniform(rng, 0.0, 0.002),
            uniform(rng, 1.5, 3.5),
            uniform(rng, 15.0, 50.0) if rng.random() < 0.6 else 0.0,
            uniform(rng, 150.0, 700.0),
            uniform(rng, -960.0, -850.0),
        ),
        struts=tuple(uniform(rng, -0.7, 0.7) for _ in range(int(rng.integers(0, 4)))),
    )


def _marrow(sk: Skeleton, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Cancellous bone with a trabecular texture (a fixed field of position, so the anatomy
    does not depend on the grid)."""
    p = sk.texture_phase
    field = np.sin(1.3 * x + p[0]) * np.sin(1.1 * y + p[1]) * np.sin(0.9 * z + p[2])
    return (sk.marrow_hu * (1.0 + sk.texture * field)).astype(np.float32)


def _cylinder_in(
    g: Grid, centre: tuple[float, float], axes: tuple[float, float], z0: float, z1: float
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """(box, local mask) of an elliptic cylinder with flat ends at ``z0`` and ``z1``."""
    box = grid_box(
        g,
        (centre[0] - axes[0], centre[1] - axes[1], z0),
        (centre[0] + axes[0], centre[1] + axes[1], z1),
    )
    if box is None:
        return None
    x, y, z = grid_coords(g, box)
    inplane = ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 <= 1.0
    return box, np.broadcast_to(inplane, (z.shape[0], *inplane.shape[1:]))


def _paint(vol: np.ndarray, hit: tuple | None, hu: float | np.ndarray, where_soft: bool) -> None:
    if not hit:
        return
    box, m = hit[0], hit[1]
    sub = vol[box]
    if where_soft:
        m = m & (sub > -300.0)
    if isinstance(hu, np.ndarray):
        sub[m] = np.broadcast_to(hu, m.shape)[m]
    else:
        sub[m] = hu


def _paint_tube(vol: np.ndarray, g: Grid, sk: Skeleton, tube: Tube, hu: float) -> None:
    """Cortex (``hu``) along the whole path, then marrow inside it (tubes whose radius leaves
    room for it), so one segment's cortex never covers the next one's marrow."""
    segs = list(zip(tube.path[:-1], tube.path[1:], strict=True))
    for p0, p1 in segs:
        _paint(vol, capsule_in(g, p0, p1, tube.radius), hu, False)
    inner = tube.radius - tube.cortex_mm
    if tube.cortex_mm <= 0.0 or inner < 0.8:
        return
    for p0, p1 in segs:
        hit = capsule_in(g, p0, p1, inner)
        if hit:
            x, y, z = grid_coords(g, hit[0])
            _paint(vol, hit, _marrow(sk, x, y, z), False)


def paint_soft_tissue(
    vol: np.ndarray, g: Grid, sk: Skeleton, soft_hu: float, heart: np.ndarray
) -> None:
    """The back's muscles under their fat, mediastinal fat, trachea, main bronchi and
    oesophagus: painted after the lungs and heart (``heart``, its mask, is never made fat),
    before the vessels and the bones."""
    y_back, ax, ay, fat = sk.back
    for k in range(g.shape[0]):
        sl = vol[k]
        fat_m = (g.x[0] / (ax + fat)) ** 2 + ((g.y[0] - y_back) / (ay + fat)) ** 2 <= 1.0
        sl[fat_m & (sl < -500.0) & (g.y[0] > 0.0)] = -100.0
        muscle = (g.x[0] / ax) ** 2 + ((g.y[0] - y_back) / ay) ** 2 <= 1.0
        sl[muscle & (sl > -500.0) & (g.y[0] > 0.0)] = 55.0
    hit = ellipsoid_in(g, (0.0, -5.0, 30.0), (40.0, 55.0, 75.0))
    if hit:
        sub = vol[hit[0]]
        sub[hit[1] & (np.abs(sub - soft_hu) < 0.5) & ~heart[hit[0]]] = sk.mediastinal_fat_hu
    top, carina, r = sk.trachea
    for p0, p1, rad in ((top, carina, r), *sk.bronchi):
        _paint(vol, capsule_in(g, p0, p1, rad + 1.5), 35.0, False)
        _paint(vol, capsule_in(g, p0, p1, rad), -1000.0, False)
    ox, oy, orad = sk.oesophagus
    for hu, rad in ((40.0, orad), (-950.0, 1.5)):
        _paint(vol, capsule_in(g, (ox, oy, 150.0), (ox, oy, -160.0), rad), hu, False)


def paint_skeleton(vol: np.ndarray, g: Grid, sk: Skeleton) -> None:
    """Spine, ribs, cartilage, sternum, clavicles and scapulae (after the lungs: a rib that
    meets a lung pushes it aside)."""
    cx, cy = sk.body_centre
    bx, by = sk.body_axes
    zlo = sk.levels[-1] - sk.level_height
    zhi = sk.levels[0] + sk.level_height
    _paint(vol, _cylinder_in(g, (cx, cy), (bx - 0.5, by - 0.5), zlo, zhi), sk.disc_hu, False)
    half = (sk.level_height - sk.disc_mm) / 2.0
    for zc in sk.levels:
        _paint(vol, _cylinder_in(g, (cx, cy), (bx, by), zc - half, zc + half), sk.cortex_hu, False)
        hit = _cylinder_in(g, (cx, cy), (bx - 1.3, by - 1.3), zc - half + 1.0, zc + half - 1.0)
        if hit:
            x, y, z = grid_coords(g, hit[0])
            _paint(vol, hit, _marrow(sk, x, y, z), False)
    for tube in sk.tubes:
        _paint_tube(vol, g, sk, tube, sk.cortex_hu)
    for tube in sk.cartilage:
        _paint_tube(vol, g, sk, tube, sk.cartilage_hu)
    for c, r in sk.calcifications:
        _paint(vol, ellipsoid_in(g, c, (r, r, r * 1.5)), sk.cortex_hu * 0.6, False)
    ccx, ccy, cr = sk.canal
    _paint(vol, _cylinder_in(g, (ccx, ccy), (cr, cr), zlo, zhi), 20.0, False)
    for z0, z1, sy, hx, hy in sk.sternum:
        _paint(vol, _cylinder_in(g, (0.0, sy), (hx, hy), z0, z1), sk.cortex_hu, False)
        hit = _cylinder_in(g, (0.0, sy), (hx - 1.0, hy - 1.0), z0 + 1.0, z1 - 1.0)
        if hit:
            x, yy, z = grid_coords(g, hit[0])
            _paint(vol, hit, _marrow(sk, x, yy, z), False)
    for plate in sk.plates:
        _paint(vol, ellipsoid_in(g, plate.centre, plate.axes, plate.angle), sk.cortex_hu, True)
    for centre, axes in sk.glenoids:
        _paint(vol, ellipsoid_in(g, centre, axes), sk.cortex_hu, True)
        inner = (axes[0] - 1.5, axes[1] - 1.5, axes[2] - 1.5)
        hit = ellipsoid_in(g, centre, inner)
        if hit:
            x, y, z = grid_coords(g, hit[0])
            _paint(vol, hit, _marrow(sk, x, y, z), True)


def paint_table(vol: np.ndarray, g: Grid, sk: Skeleton, width: float) -> None:
    """A foam pad under the back, then the table's shell(s) and struts (only over air)."""
    curve, shell, gap, shell_hu, pad_hu = sk.table
    top = sk.table_top - curve * g.x[0] ** 2  # [1, W]
    y = g.y[0]  # [H, 1]
    inside = np.abs(g.x[0]) < width
    pad = (y >= top - 40.0) & (y < top - shell / 2) & inside
    shells = (np.abs(y - top) <= shell / 2) & inside
    if gap > 0.0:
        shells |= (np.abs(y - top - gap) <= shell / 2) & inside
        for sx in sk.struts:
            shells |= (np.abs(g.x[0] - sx * width) <= shell / 2) & (y >= top) & (y <= top + gap)
    for k in range(g.shape[0]):
        sl = vol[k]
        sl[pad & (sl < -900.0)] = pad_hu
        sl[shells & (sl < -500.0)] = shell_hu
