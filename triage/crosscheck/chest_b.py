"""CT pulmonary angiogram painter "b": an independent synthetic CTPA built from CT anatomy and
physics, for an independent look at the PE model (sensitivity, and false alerts on normals).

What a study holds (every number is sampled per study from the range given; the ranges are
textbook CT values and those in the project's CT realism notes, the noise level measured on the
real LIDC chest CT in the shared data, about 18 HU at 1 mm with a sharp-ish kernel):

- Body: ellipse 150-175 x 105-125 mm half-axes times a size factor 0.85-1.25; skin 1-2 mm
  (10-50 HU), subcutaneous fat 4-45 mm (-120..-80), chest-wall muscle 8-20 mm (35-60),
  paraspinal muscles; a CT table under the patient; arms up (most) or down (humerus with dense
  cortex over fatty marrow, and horizontal streaks between the humeri); breasts in some women.
- Skeleton: vertebral bodies stacked with discs (70-110 HU), cortex 1-1.5 mm (450-900) over
  cancellous marrow 100-300 (40-100 when osteoporotic, older patients), spinal canal 5-35,
  pedicles, spinous and transverse processes; twelve pairs of ribs as flattened tubes of cortex
  over marrow following the chest wall and falling 55-95 mm from head to front; costal cartilage
  80-150 (calcified spots in older patients); sternum, clavicles, scapulae.
- Lungs -880..-820 with a gravity gradient (dependent lung 20-60 HU denser), parenchymal texture,
  major and minor fissures (thin oblique/horizontal sheets), dependent atelectasis (-500..0,
  3-15 mm) at the bases, emphysema holes (< -950) in some, a pleural effusion (0-20) in some.
- Mediastinum: heart with pericardial fat (-110..-60), myocardium (70-120), right atrium and
  ventricle opacified like the pulmonary arteries (atrium with unopacified inflow swirls), left
  atrium and ventricle at 35-80 % of that (pulmonary timing) behind an interventricular septum;
  aorta (root, arch, descending) 120-350 HU, arch vessels, SVC (undiluted contrast 800-2500 HU
  with streaks in some, else 250-600), brachiocephalic veins, azygos, IVC (40-110), oesophagus,
  trachea and main bronchi with walls, thymic remnant (fat or soft tissue), hilar and
  mediastinal lymph nodes 20-60 HU; liver, spleen and stomach below the diaphragm.
- Pulmonary arteries: trunk (12-16 mm radius), main, lobar, then grown as a tree inside the
  lungs (Murray's law radii, 15-60 degree branch angles) down to about 0.7 mm: segmental,
  subsegmental and beyond; 250-500 HU when well timed, 150-250 when poorly timed. Pulmonary
  veins grown the same way from four ostia on the left atrium (100-250 HU). Bronchi run beside
  the arteries (air lumen, soft-tissue wall); some filled with mucus (0-30 HU).
- Acquisition: 512 x 512, pixel 0.62-0.85 mm, slice thickness 0.625-1.25 mm mostly, 2-2.5 mm in
  some, 250-320 mm of z capped at 300 slices (slices then gapped); partial volume computed
  analytically per voxel (coverage of each tube/ellipsoid/surface over the voxel's extent, the
  slice thickness along the surface normal); a soft, standard or sharp kernel; correlated noise
  (7-14 HU at 1 mm times the patient size, more for thin slices); calibration offset -6..+6 HU;
  respiratory motion ghosting near the diaphragm, unopacified IVC inflow (a z band of lower
  pulmonary artery contrast), streaks from the dense SVC and from arms down, in some.
- Emboli (positives): 20-70 HU at central (trunk, main, saddle), lobar, segmental, subsegmental
  levels, one to several; partial (a central clot with contrast around it, or a mural one) or
  occlusive (filling the lumen, with the distal tree unopacified at 25-55 HU); some with
  suboptimal contrast. The truth mask holds a voxel when at least half of it is clot; the
  unopacified vessel beyond an occlusion is not marked.

Deterministic from the seed: the anatomy comes from ``seed`` alone (a positive is its negative
twin plus clots), the emboli from ``(seed, 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from triage.crosscheck.dicomio import (
    Acquisition,
    StudyHeader,
)
from triage.crosscheck.study import CrossStudy, Painted, write_painted

SIZE = 512
MAX_SLICES = 300
LEVELS = ("central", "lobar", "segmental", "subsegmental")

_SCANNERS = (
    ("SIEMENS", "SOMATOM Force", ("Bv36d", "Br40d", "Bv40d", "Br36d")),
    ("SIEMENS", "SOMATOM Definition Edge", ("B30f", "I30f", "B31f", "B45f")),
    ("GE MEDICAL SYSTEMS", "Revolution CT", ("STANDARD", "SOFT", "DETAIL")),
    ("GE MEDICAL SYSTEMS", "LightSpeed VCT", ("STANDARD", "SOFT", "CHEST")),
    ("Philips", "iCT 256", ("B", "C", "YB")),
    ("Philips", "Brilliance 64", ("B", "C", "CB")),
    ("TOSHIBA", "Aquilion ONE", ("FC08", "FC13", "FC17")),
    ("CANON_MEC", "Aquilion Prime SP", ("FC13", "FC17", "FC18")),
)
_SHARP = ("Br40d", "B45f", "DETAIL", "CHEST", "YB", "FC18")
_SOFT = ("Bv36d", "Br36d", "B30f", "I30f", "SOFT", "C", "CB", "FC08")
_STUDY_DESCRIPTIONS = (
    "CTA CHEST PE PROTOCOL",
    "CT PULMONARY ANGIOGRAM",
    "CTPA",
    "CT ANGIO CHEST W CONTRAST",
    "CTA THORAX PULMONARY EMBOLISM",
    "CT CHEST PE STUDY",
    "CT ANGIOGRAPHY PULMONARY ARTERIES",
)
_AGENTS = ("OMNIPAQUE 350", "Iomeron 400", "VISIPAQUE 320", "ULTRAVIST 370", "Iopamidol 370")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


# -- the canvas: a volume painted in body coordinates -------------------------------------------


class Canvas:
    """The HU volume and the geometry between body coordinates (mm; x to the patient's left,
    y posterior, z superior, origin at the body centre on the carina level) and voxels."""

    def __init__(
        self,
        n: int,
        nz: int,
        ps: float,
        thick: float,
        sz: float,
        z_top: float,
        ox: float,
        oy: float,
        theta: float,
    ) -> None:
        self.n, self.nz, self.ps, self.t, self.sz, self.z_top = n, nz, ps, thick, sz, z_top
        self.ox, self.oy = ox, oy
        self.c, self.s = math.cos(theta), math.sin(theta)
        self.hu = np.full((nz, n, n), -1000.0, np.float32)
        self.lesion = np.zeros((nz, n, n), bool)
        u = ((np.arange(n) - (n - 1) / 2) * ps).astype(np.float32)
        px, py = u[None, :], u[:, None]  # patient x (columns), y (rows)
        self.X = (self.c * (px - ox) + self.s * (py - oy)).astype(np.float32)
        self.Y = (-self.s * (px - ox) + self.c * (py - oy)).astype(np.float32)
        self.Z = (z_top - np.arange(nz) * sz).astype(np.float32)

    def to_pixel(self, xb: np.ndarray, yb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.ox + self.c * xb - self.s * yb
        y = self.oy + self.s * xb + self.c * yb
        h = (self.n - 1) / 2
        return y / self.ps + h, x / self.ps + h  # row, col

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Voxel slices covering the body-frame box [lo, hi] (None when outside)."""
        xs = np.array([lo[0], hi[0], lo[0], hi[0]])
        ys = np.array([lo[1], lo[1], hi[1], hi[1]])
        r, c = self.to_pixel(xs, ys)
        i0, i1 = max(int(np.floor(r.min())), 0), min(int(np.ceil(r.max())) + 1, self.n)
        j0, j1 = max(int(np.floor(c.min())), 0), min(int(np.ceil(c.max())) + 1, self.n)
        pad = self.t / 2
        k0 = max(int(np.floor((self.z_top - hi[2] - pad) / self.sz)), 0)
        k1 = min(int(np.ceil((self.z_top - lo[2] + pad) / self.sz)) + 1, self.nz)
        if i0 >= i1 or j0 >= j1 or k0 >= k1:
            return None
        return slice(k0, k1), slice(i0, i1), slice(j0, j1)

    def grids(self, b: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k, i, j = b
        return self.X[i, j][None], self.Y[i, j][None], self.Z[k][:, None, None]

    def width(self, nz2: np.ndarray) -> np.ndarray:
        """Ramp width (mm) of a surface whose normal has squared z component ``nz2``: the
        voxel's extent along the normal (pixel in-plane, slice thickness along z)."""
        return np.sqrt(self.ps**2 + (self.t**2 - self.ps**2) * nz2)

    def blend(
        self, b: tuple[slice, slice, slice], f: np.ndarray, value: float | np.ndarray
    ) -> None:
        v = self.hu[b]
        v += f * (value - v)


def _cover(d: np.ndarray, w: np.ndarray | float) -> np.ndarray:
    return np.clip(0.5 - d / w, 0.0, 1.0)


def _seg_field(
    cv: Canvas,
    b: tuple[slice, slice, slice],
    p0: np.ndarray,
    p1: np.ndarray,
    r0: float,
    r1: float,
    flat: np.ndarray | None = None,
    aspect: float = 1.0,
    end_inset: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (mm) to a tapered capsule p0-p1 and the ramp width, in box ``b``.
    ``flat``/``aspect``: an elliptical section, radius times ``aspect`` along ``flat``.
    ``end_inset``: flat ends instead of round caps (a cylinder), moved in by that much."""
    X, Y, Z = cv.grids(b)
    a = p1 - p0
    L2 = max(float(a @ a), 1e-9)
    dx, dy, dz = X - p0[0], Y - p0[1], Z - p0[2]
    tu = (dx * a[0] + dy * a[1] + dz * a[2]) / L2
    t = np.clip(tu, 0.0, 1.0)
    ex, ey, ez = dx - t * a[0], dy - t * a[1], dz - t * a[2]
    rho2 = ex * ex + ey * ey + ez * ez + 1e-6
    r = r0 + (r1 - r0) * t
    if flat is not None and aspect != 1.0:
        e1 = ex * flat[0] + ey * flat[1] + ez * flat[2]
        scale = np.sqrt(1.0 + (1.0 / aspect**2 - 1.0) * (e1 * e1) / rho2)
        d = np.sqrt(rho2) * scale - r
        d = d / scale
    else:
        d = np.sqrt(rho2) - r
    w = cv.width(ez * ez / rho2)
    if end_inset is not None:
        da = np.maximum(-tu, tu - 1.0) * math.sqrt(L2) + end_inset
        w = np.where(da > d, cv.width(np.array(a[2] ** 2 / L2, np.float32)), w)
        d = np.maximum(d, da)
    return d, w


def _seg_box(
    cv: Canvas, p0: np.ndarray, p1: np.ndarray, r: float
) -> tuple[slice, slice, slice] | None:
    m = r + 1.5 * max(cv.ps, cv.t)
    return cv.box(np.minimum(p0, p1) - m, np.maximum(p0, p1) + m)


def paint_tube(
    cv: Canvas,
    pts: np.ndarray,
    radii: np.ndarray,
    layers: list[tuple[float, float]],
    flat: list[np.ndarray] | None = None,
    aspect: float = 1.0,
    round_ends: bool = True,
) -> None:
    """A polyline tube, painted layer by layer (outermost first): each layer (inset mm, HU) is
    the tube shrunk by the inset, so inner layers never lose to a neighbouring segment's outer
    layer. ``round_ends`` False: flat-ended cylinders (vertebral bodies, discs, sternum)."""
    for inset, value in layers:
        for s in range(len(pts) - 1):
            r0, r1 = radii[s] - inset, radii[s + 1] - inset
            if max(r0, r1) <= 0.05:
                continue
            b = _seg_box(cv, pts[s], pts[s + 1], max(r0, r1))
            if b is None:
                continue
            fl = flat[s] if flat is not None else None
            d, w = _seg_field(
                cv,
                b,
                pts[s],
                pts[s + 1],
                max(r0, 0.05),
                max(r1, 0.05),
                fl,
                aspect,
                None if round_ends else inset,
            )
            cv.blend(b, _cover(d, w), value)


def _ellipsoid_field(
    cv: Canvas, b: tuple[slice, slice, slice], c: np.ndarray, axes: np.ndarray, rot: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    X, Y, Z = cv.grids(b)
    dx, dy, dz = X - c[0], Y - c[1], Z - c[2]
    u = [(dx * rot[0, i] + dy * rot[1, i] + dz * rot[2, i]) / axes[i] for i in range(3)]
    q = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2) + 1e-6
    g = [u[i] / axes[i] for i in range(3)]  # gradient of q*q/2 in the local frame
    gn = np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2) + 1e-9
    d = (q - 1.0) * q / gn
    gz = (g[0] * rot[2, 0] + g[1] * rot[2, 1] + g[2] * rot[2, 2]) / gn
    return d, cv.width(gz * gz)


def _rot(rng: np.random.Generator | None, axis: np.ndarray | None = None) -> np.ndarray:
    """Columns: an orthonormal frame (first column ``axis`` if given, else random)."""
    if axis is None:
        assert rng is not None
        m, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        return m
    a = _unit(axis)
    t = np.array([0.0, 0.0, 1.0]) if abs(a[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    b1 = _unit(np.cross(a, t))
    return np.stack([a, b1, np.cross(a, b1)], axis=1)


def paint_ellipsoid(
    cv: Canvas,
    c: np.ndarray,
    axes: np.ndarray,
    rot: np.ndarray,
    layers: list[tuple[float, float]],
    plane: tuple[np.ndarray, np.ndarray] | None = None,
    within: np.ndarray | None = None,
) -> np.ndarray | None:
    """Layers (inset mm, HU), outermost first. ``plane`` (point, normal): keep the side the
    normal points to. ``within``: a [z, y, x] coverage to multiply by (restricted to the box).
    Returns the innermost layer's coverage over the whole box (for masks)."""
    m = float(axes.max()) + 2 * max(cv.ps, cv.t)
    b = cv.box(c - m, c + m)
    if b is None:
        return None
    d, w = _ellipsoid_field(cv, b, c, axes, rot)
    clip: np.ndarray | float = 1.0
    if plane is not None:
        X, Y, Z = cv.grids(b)
        pn = _unit(plane[1])
        dp = -((X - plane[0][0]) * pn[0] + (Y - plane[0][1]) * pn[1] + (Z - plane[0][2]) * pn[2])
        clip = _cover(dp, cv.width(np.array(pn[2] ** 2, np.float32)))
    f = None
    for inset, value in layers:
        f = _cover(d + inset, w) * clip
        if within is not None:
            f = f * within[b]
        cv.blend(b, f, value)
    return f


# -- anatomy: sampled parameters ----------------------------------------------------------------


@dataclass
class Body:
    A: float  # body half-width at mid chest (mm)
    B: float  # body half-depth
    fat: float
    muscle: float
    wall: float  # rib layer
    Ac: float  # pleural cavity half-axes
    Bc: float
    cyc: float  # cavity centre y
    apex: float  # lung apex z
    ap0: float  # where the apex dome starts
    dome_r: float
    dome_l: float
    drop: float  # how far the diaphragm falls to the chest wall
    xm: float  # mediastinal band centre
    wm_up: float
    wm_low: float
    yt: float  # trachea centre y
    yv: float  # vertebral body centre y
    rv: float  # vertebral body radius
    vert_z: float = 0.0  # the centre of one vertebral body (for probes)
    heart_c: np.ndarray = field(default_factory=lambda: np.zeros(3))
    heart_ax: np.ndarray = field(default_factory=lambda: np.ones(3))
    heart_rot: np.ndarray = field(default_factory=lambda: np.eye(3))

    def cavity(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = np.sqrt(np.clip(1.0 - ((z - self.ap0) / (self.apex - self.ap0)) ** 2, 0.0, 1.0))
        g = np.where(z < self.ap0, 1.0, g)
        return self.Ac * g, self.Bc * g

    def dia(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Diaphragm height (z) under the point: a dome per side, falling to the wall."""
        right = x < self.xm
        top = np.where(right, self.dome_r, self.dome_l)
        xc = np.where(right, -0.45 * self.Ac, 0.45 * self.Ac)
        rr = ((x - xc) / (0.75 * self.Ac)) ** 2 + ((y - (self.cyc - 0.15 * self.Bc)) / self.Bc) ** 2
        return top - self.drop * rr

    def wm(self, z: np.ndarray) -> np.ndarray:
        return np.where(z > -20, self.wm_up, self.wm_low)

    def lung_margin(self, p: np.ndarray) -> np.ndarray:
        """How far (mm) the points [N, 3] lie inside a lung (negative: outside)."""
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        A, B = self.cavity(z)
        A, B = np.maximum(A, 1.0), np.maximum(B, 1.0)
        u, v = x / A, (y - self.cyc) / B
        q = np.sqrt(u * u + v * v) + 1e-6
        cav = -(q - 1) * q / np.sqrt((u / A) ** 2 + (v / B) ** 2 + 1e-12)
        med = np.abs(x - self.xm) - self.wm(z)
        dia = z - self.dia(x, y)
        spine = np.hypot(x, y - self.yv) - self.rv - 12
        d = p - self.heart_c
        loc = (d @ self.heart_rot) / (self.heart_ax + 6)
        heart = (np.sqrt((loc**2).sum(1)) - 1) * (self.heart_ax.min() + 6)
        return np.minimum.reduce([cav, med, dia, spine, heart])


@dataclass
class Seg:
    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    level: str
    parent: int
    lobe: str
    hu: float = 0.0
    kids: list[int] = field(default_factory=list)


def _grow(
    rng: np.random.Generator,
    body: Body,
    segs: list[Seg],
    p: np.ndarray,
    d: np.ndarray,
    r: float,
    gen: int,
    parent: int,
    lobe: str,
    goal: np.ndarray,
    r_min: float,
    vein: bool = False,
) -> None:
    """Grow a vascular tree from ``p`` along ``d`` inside the lung (radii by Murray's law)."""
    stack = [(p, d, r, gen, parent)]
    while stack:
        p, d, r, g, par = stack.pop()
        best, best_m = None, -1e9
        for attempt in range(4):
            L = r * (rng.uniform(5.0, 8.0) if g == 0 else rng.uniform(3.0, 6.0))
            dd = (
                d
                if attempt == 0
                else _unit(d + 0.5 * attempt * _unit(goal - p) + rng.normal(0, 0.15, 3))
            )
            end = p + dd * L
            m = float(body.lung_margin(end[None])[0])
            if m > r + 1.0:
                best, best_m, d = end, m, dd
                break
            if m > best_m:
                best, best_m = end, m
        if best is None or best_m < 0.5:
            continue
        if g == 0:
            level = "lobar"
        elif g <= 2:
            level = "segmental"
        elif g <= 4:
            level = "subsegmental"
        else:
            level = "distal"
        if vein:
            level = "vein"
        segs.append(Seg(p, best, r, r * 0.93, level, par, lobe))
        me = len(segs) - 1
        if par >= 0:
            segs[par].kids.append(me)
        r = r * 0.93
        r1 = r * rng.uniform(0.75, 0.9)
        r2 = max(r**3 - r1**3, (0.45 * r) ** 3) ** (1 / 3)
        e = _unit(np.cross(d, rng.normal(size=3)))
        f = np.cross(d, e)
        a1, a2 = np.radians(rng.uniform(10, 30)), np.radians(rng.uniform(30, 60))
        kids = [(r1, a1, e), (r2, a2, -e)]
        if g <= 1:  # lobar and segmental trunks give off a third, side branch
            kids.append(
                (
                    r * rng.uniform(0.5, 0.65),
                    np.radians(rng.uniform(45, 75)),
                    f if rng.random() < 0.5 else -f,
                )
            )
        for rc, a, ev in kids:
            if rc >= r_min:
                nd = _unit(d * math.cos(a) + ev * math.sin(a))
                stack.append((best, nd, rc, g + 1, me))


# -- the study ----------------------------------------------------------------------------------


def paint(
    task_seed: int, label: bool, *, size: int = SIZE, max_slices: int = MAX_SLICES
) -> Painted:
    """Paint one CTPA. ``size``/``max_slices`` shrink the grid for tests (same field of view
    and z range: coarser pixels and slices)."""
    return _paint(task_seed, label, size=size, max_slices=max_slices)[0]


Probes = dict[str, tuple[int, int, int]]


def _paint(
    task_seed: int,
    label: bool,
    *,
    size: int = SIZE,
    max_slices: int = MAX_SLICES,
    level: str | None = None,
) -> tuple[Painted, Probes]:
    """:func:`paint`, plus the voxels of named structures (for tests); ``level``: every
    embolus at that level."""
    rng = np.random.default_rng([task_seed, 0x7C7A])
    notes: list[str] = []
    age = int(rng.integers(22, 92))
    sex = str(rng.choice(["F", "M"]))
    size_f = float(rng.uniform(0.85, 1.25))
    A = rng.uniform(150, 175) * size_f
    Bb = rng.uniform(105, 125) * size_f
    fat = rng.uniform(4, 18) * size_f**3
    muscle = rng.uniform(8, 20)
    wall = rng.uniform(10, 14)
    inset = fat + muscle + wall + 1.5
    Ac, Bc = A - inset, Bb - inset * 0.9
    yt = rng.uniform(0.05, 0.2) * Bc
    rv = rng.uniform(14, 19)
    yv = yt + rng.uniform(28, 36)
    cyc = yv - Bc + rv + rng.uniform(8, 16)  # cavity reaches past the spine front
    apex = rng.uniform(80, 110)
    dome_r = -rng.uniform(100, 150)
    body = Body(
        A=A,
        B=Bb,
        fat=fat,
        muscle=muscle,
        wall=wall,
        Ac=Ac,
        Bc=Bc,
        cyc=cyc,
        apex=apex,
        ap0=apex - rng.uniform(35, 55),
        dome_r=dome_r,
        dome_l=dome_r - rng.uniform(5, 25),
        drop=rng.uniform(40, 75),
        xm=rng.uniform(-4, 6),
        wm_up=rng.uniform(18, 26),
        wm_low=rng.uniform(12, 20),
        yt=yt,
        yv=yv,
        rv=rv,
    )
    hz = 0.5 * (-40 + body.dome_l) + rng.uniform(-5, 5)
    body.heart_c = np.array([rng.uniform(12, 30), rng.uniform(-0.45, -0.25) * Bc, hz])
    body.heart_ax = np.array([rng.uniform(58, 72), rng.uniform(42, 52), rng.uniform(38, 48)])
    body.heart_rot = _rot(None, np.array([0.6, -0.5, -0.45]))
    arms_down = rng.random() < 0.25

    # acquisition
    thick = float(rng.choice([0.625, 0.75, 0.8, 1.0, 1.0, 1.25, 1.25, 2.0, 2.5], 1)[0])
    spacing = thick * (0.8 if rng.random() < 0.25 else 1.0)
    length = rng.uniform(250, 320)
    cap = max(8, max_slices)
    if length / spacing > cap:
        spacing = length / cap
        if spacing > thick * 1.05:
            notes.append("gapped_slices")
    nz = int(length // spacing) + 1
    z_bot = min(body.dome_l, body.dome_r) - body.drop - rng.uniform(0, 30)
    z_top = z_bot + (nz - 1) * spacing
    ps_full = rng.uniform(0.62, 0.85)
    ps = ps_full * SIZE / size
    cv = Canvas(
        size,
        nz,
        ps,
        max(thick, spacing) if size < SIZE else thick,
        spacing,
        z_top,
        rng.uniform(-20, 20),
        rng.uniform(-15, 15),
        np.radians(rng.uniform(-10, 10)),
    )

    # contrast
    poor = rng.random() < 0.15
    pa_hu = rng.uniform(150, 250) if poor else rng.uniform(250, 500)
    if poor:
        notes.append("poor_contrast")
    left_hu = max(pa_hu * rng.uniform(0.35, 0.8), 90.0)
    aorta_hu = float(np.clip(left_hu * rng.uniform(0.95, 1.15), 120, 350))
    vein_hu = float(np.clip(rng.uniform(100, 250), 90, 0.85 * pa_hu))
    dense_svc = rng.random() < 0.35
    svc_hu = rng.uniform(800, 2500) if dense_svc else rng.uniform(250, 600)
    if dense_svc:
        notes.append("dense_svc_streaks")
    inflow = rng.random() < 0.2
    inflow_z = rng.uniform(body.dome_r - 10, body.dome_r + 60)
    inflow_w = rng.uniform(10, 25)
    inflow_depth = rng.uniform(0.35, 0.65)
    if inflow:
        notes.append("ivc_inflow_pseudodefect")

    def pa_value(z: float) -> float:
        if not inflow:
            return pa_hu
        return pa_hu * (1 - inflow_depth * math.exp(-(((z - inflow_z) / inflow_w) ** 2)))

    _paint_trunk_regions(cv, rng, body, sex, arms_down, notes, age)
    _paint_skeleton(cv, rng, body, age, arms_down, notes)
    ctx = _paint_mediastinum(cv, rng, body, pa_hu, left_hu, aorta_hu, svc_hu, notes)

    # the pulmonary arterial tree
    r_min = 0.7 if size >= SIZE else 0.7 * SIZE / size
    arteries = _arterial_tree(rng, body, ctx, r_min)
    veins = _vein_tree(rng, body, ctx, r_min)
    lesion_rng = np.random.default_rng([task_seed, 1, 0x7C7A])
    plan = _plan_emboli(lesion_rng, arteries, level) if label else []
    stagnant = lesion_rng.uniform(25, 55)
    blocked: set[int] = set()
    for cl in plan:
        if cl["occlusive"]:
            stack = list(arteries[cl["seg"]].kids)
            while stack:
                k = stack.pop()
                blocked.add(k)
                stack.extend(arteries[k].kids)
    _paint_bronchi(cv, rng, body, arteries, notes)
    for s in veins:
        paint_tube(cv, np.stack([s.p0, s.p1]), np.array([s.r0, s.r1]), [(0.0, vein_hu)])
    for i, s in enumerate(arteries):
        v = stagnant if i in blocked else pa_value(float((s.p0[2] + s.p1[2]) / 2))
        paint_tube(cv, np.stack([s.p0, s.p1]), np.array([s.r0, s.r1]), [(0.0, v)])
    kinds: list[str] = []
    for cl in plan:
        if _paint_clot(cv, lesion_rng, arteries, cl):
            kinds.append(cl["level"])
            if cl.get("saddle"):
                notes.append("saddle")
    if label and not kinds:  # every clot fell below half a voxel: paint a sure central one
        cl = {
            "seg": 0,
            "level": "central",
            "occlusive": False,
            "hu": 45.0,
            "frac": (0.3, 0.9),
            "mural": False,
        }
        _paint_clot(cv, lesion_rng, arteries, cl)
        kinds.append("central")
    if label and any(c["occlusive"] for c in plan):
        notes.append("occlusive")
    if label and any(not c["occlusive"] for c in plan):
        notes.append("partial")

    probes = {
        name: _voxel(cv, pt)
        for name, pt in (
            ("trunk", 0.5 * (arteries[0].p0 + arteries[0].p1)),
            ("aorta", ctx.aorta),
            ("marrow", np.array([0.0, body.yv, ctx.vert_z])),
            ("lung", ctx.lung),
            ("vein", 0.5 * (veins[0].p0 + veins[0].p1)),
            ("rv", ctx.rv),
        )
    }
    _acquisition_effects(cv, rng, body, ctx, arms_down, dense_svc, size_f, notes)

    man, model, kernels = _SCANNERS[int(rng.integers(len(_SCANNERS)))]
    kernel = str(kernels[int(rng.integers(len(kernels)))])
    _kernel_and_noise(cv, rng, kernel, size_f, thick)
    offset = rng.uniform(-6, 6)
    cv.hu += np.float32(offset)
    np.maximum(cv.hu, -1024.0, out=cv.hu)
    if abs(offset) > 3:
        notes.append("calibration_offset")

    enc = int(rng.integers(3))
    acq = Acquisition(
        manufacturer=man,
        model=model,
        kernel=kernel,
        kvp=float(rng.choice([80.0, 100.0, 100.0, 120.0])),
        slice_thickness=thick,
        spacing_z=spacing,
        pixel_spacing=round(ps, 6),
        z_top=round(z_top - 160.0, 3),
        rescale_intercept=(-1024.0, -1000.0, 0.0)[enc],
        signed=enc > 0,
        bits_stored=12 if enc == 0 else 16,
        implicit_vr=rng.random() < 0.3,
        series_number=int(rng.integers(2, 8)),
        feet_first=rng.random() < 0.7,
    )
    desc = str(_STUDY_DESCRIPTIONS[int(rng.integers(len(_STUDY_DESCRIPTIONS)))])
    header = StudyHeader(
        patient_id=f"XB{task_seed:07d}",
        patient_name="CROSSCHECK^CHEST^B",
        patient_sex=sex,
        patient_age=f"{age:03d}Y",
        accession=f"XB{task_seed:06d}{int(label)}",
        study_description=desc,
        series_description=f"CTPA {thick:g}mm {kernel}",
        protocol_name=str(rng.choice(["PE PROTOCOL", "CTPA", "Pulmonary Angio"])),
        body_part=str(rng.choice(["CHEST", "CHEST", "CHEST", "THORAX"])),
        contrast_agent=str(_AGENTS[int(rng.integers(len(_AGENTS)))]),
        study_time=f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}00",
        station=f"CT{int(rng.integers(1, 9)):02d}",
    )
    notes.append("arms_down" if arms_down else "arms_up")
    painted = Painted(
        hu=cv.hu,
        lesion=cv.lesion,
        acq=acq,
        header=header,
        kinds=tuple(sorted(set(kinds), key=LEVELS.index)),
        notes=tuple(notes),
    )
    return painted, probes


def _voxel(cv: Canvas, p: np.ndarray) -> tuple[int, int, int]:
    r, c = cv.to_pixel(np.array([p[0]]), np.array([p[1]]))
    k = round((cv.z_top - float(p[2])) / cv.sz)
    return (min(max(k, 0), cv.nz - 1), round(float(r[0])), round(float(c[0])))


def write_study(
    folder: Path, seed: int, label: bool, *, size: int = SIZE, max_slices: int = MAX_SLICES
) -> CrossStudy:
    """Paint and write one CTPA under ``folder`` (a localizer first in some); returns its
    truth. ``size``/``max_slices`` as for :func:`paint`."""
    p = paint(seed, label, size=size, max_slices=max_slices)
    scout = bool(np.random.default_rng([seed, 2, 0x7C7A]).random() < 0.35)
    return write_painted(folder, "pe", seed, label, p, window=(100.0, 700.0), localizer=scout)


# -- large regions: body wall, lungs, abdomen ---------------------------------------------------


def _ellipse_sdf(
    X: np.ndarray, Y: np.ndarray, A: np.ndarray | float, B: np.ndarray | float, cy: float
) -> np.ndarray:
    u, v = X / A, (Y - cy) / B
    q = np.sqrt(u * u + v * v) + 1e-6
    return (q - 1) * q / np.sqrt((u / A) ** 2 + (v / B) ** 2 + 1e-12)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], passes: int, a: float = 0.25
) -> np.ndarray:
    """White noise smoothed in-plane by ``passes`` 3-tap filters, scaled to unit sd."""
    x = rng.standard_normal(shape, dtype=np.float32)
    for _ in range(passes):
        for ax in (-1, -2):
            x = (1 - 2 * a) * x + a * (np.roll(x, 1, ax) + np.roll(x, -1, ax))
    sd = float(x[: min(4, shape[0])].std()) or 1.0
    x /= sd
    return x


def _paint_trunk_regions(
    cv: Canvas,
    rng: np.random.Generator,
    body: Body,
    sex: str,
    arms_down: bool,
    notes: list[str],
    age: int,
) -> None:
    skin_hu, fat_hu, mus_hu = rng.uniform(10, 50), rng.uniform(-120, -80), rng.uniform(35, 60)
    med_hu = rng.uniform(-100, -70)
    liver_hu, abd_hu = rng.uniform(55, 80), rng.uniform(-60, 10)
    lung_hu = rng.uniform(-880, -820)
    grad = rng.uniform(20, 60)
    tex_amp = rng.uniform(10, 30)
    skin = rng.uniform(1.0, 2.0)
    shoulder = rng.uniform(0.03, 0.1)
    atel = rng.random() < 0.6
    atel_t, atel_hu = rng.uniform(3, 15), rng.uniform(-500, 0)
    eff_side = int(rng.choice([0, 0, 0, 0, 1, 2, 3]))  # 1 right, 2 left, 3 both
    eff_depth, eff_hu = rng.uniform(8, 45), rng.uniform(0, 20)
    comp_hu = rng.uniform(-400, -100)
    if atel:
        notes.append("dependent_atelectasis")
    if eff_side:
        notes.append("pleural_effusion")
    # fissures: major per side z = z0 + k*(y - cyc); minor right, horizontal
    fis = [(rng.uniform(10, 45), rng.uniform(0.8, 1.3)) for _ in range(2)]
    minor_z = rng.uniform(-45, -20)
    fis_amp = rng.uniform(250, 450)
    # a table under the patient
    ty = body.B + rng.uniform(2, 10)
    n_sl = 16
    tex_all = _smooth_noise(rng, (min(cv.nz, 24), cv.n, cv.n), 3)
    X2, Y2 = cv.X, cv.Y
    tab = (np.abs(Y2 - ty - 8 + 0.0004 * X2**2) < 8) & (np.abs(X2) < 230)
    walls: dict[int, np.ndarray] = {}
    cavs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def wall_image(zq: float) -> np.ndarray:
        """Air, table, skin, fat and muscle of one slice (cached: the wall changes in z only
        at the shoulders)."""
        top = float(np.clip((zq - body.ap0) / 60.0, 0, 1))
        key = round(top * 20)
        if key not in walls:
            top = key / 20
            A = body.A * (1 + shoulder * top) if arms_down else body.A * (1 - 0.1 * top)
            d = _ellipse_sdf(X2, Y2, float(A), body.B, 0.0)
            h = np.where(tab, np.float32(-300.0), np.float32(-1000.0))
            h += _cover(d, cv.ps) * (skin_hu - h)
            # fat thicker laterally in heavier patients (cos 2phi from the ellipse coordinates)
            u2, v2 = (X2 / A) ** 2, (Y2 / body.B) ** 2
            f_in = body.fat * (1 + 0.35 * (u2 - v2) / (u2 + v2 + 1e-6))
            h += _cover(d + skin, cv.ps) * (fat_hu - h)
            h += _cover(d + skin + f_in, cv.ps) * (mus_hu - h)
            walls[key] = h.astype(np.float32)
        return walls[key]

    def cavity_image(zq: float) -> tuple[np.ndarray, np.ndarray]:
        """Signed distance to the pleural cavity and its coverage (cached by the apex
        narrowing)."""
        Acz, _ = body.cavity(np.array([zq]))
        key = round(float(Acz[0]) / body.Ac * 200)
        if key not in cavs:
            g = key / 200
            Aq, Bq = max(body.Ac * g, 0.5), max(body.Bc * g, 0.5)
            dc = _ellipse_sdf(X2, Y2, Aq, Bq, body.cyc)
            cavs[key] = (dc.astype(np.float32), _cover(dc, cv.ps) * (Aq > 1.0))
        return cavs[key]

    # the cavity's bounding box in pixels (lungs, fissures and abdomen are painted there only)
    m = 4 * cv.ps
    bb = cv.box(
        np.array([-body.Ac - m, body.cyc - body.Bc - m, cv.Z[-1]]),
        np.array([body.Ac + m, body.cyc + body.Bc + m, cv.z_top]),
    )
    assert bb is not None
    _, bi, bj = bb
    Xc, Yc = cv.X[bi, bj][None], cv.Y[bi, bj][None]
    dzR = body.dia(Xc[0], Yc[0])[None]
    for k0 in range(0, cv.nz, n_sl):
        k1 = min(k0 + n_sl, cv.nz)
        for k in range(k0, k1):
            cv.hu[k] = wall_image(float(cv.Z[k]))
        Z = cv.Z[k0:k1, None, None]
        dc = np.stack([cavity_image(float(z))[0][bi, bj] for z in cv.Z[k0:k1]])
        fc = np.stack([cavity_image(float(z))[1][bi, bj] for z in cv.Z[k0:k1]])
        if not fc.any():
            continue
        Bcz = body.cavity(Z)[1]
        X, Y = Xc, Yc
        h = cv.hu[k0:k1, bi, bj]
        below = np.clip((dzR - (Z - cv.t / 2)) / cv.t, 0, 1)  # fraction under the diaphragm
        liver = np.where(25 + 0.3 * (Z - body.dome_r) > X, liver_hu, abd_hu)
        cav = med_hu + below * (liver - med_hu)
        h += fc * (cav - h)
        # lungs
        wm = body.wm(Z)
        fm = _cover(np.abs(X - body.xm) - wm, cv.ps)
        fs = _cover(np.hypot(X, Y - body.yv) - body.rv - 12, cv.ps)
        fl = np.minimum(np.minimum(fc, 1 - below), np.minimum(1 - fm, 1 - fs))
        ky = (Y - body.cyc) / body.Bc
        tex = tex_all[np.arange(k0, k1) % tex_all.shape[0]][:, bi, bj]
        lung = lung_hu + grad * ky + tex_amp * tex
        depth = -dc
        if atel:
            tz = np.clip((body.dome_r + 60 - Z) / 60, 0, 1) * atel_t
            wa = np.clip((tz - depth) / 2, 0, 1) * np.clip(ky / 0.4, 0, 1)
            lung += wa * (atel_hu - lung)
        if eff_side:
            side_ok = ((body.xm > X) & (eff_side in (1, 3))) | ((body.xm <= X) & (eff_side >= 2))
            ez = np.clip((body.dome_r + 70 - Z) / 70, 0, 1) * eff_depth
            y_lev = body.cyc + Bcz - ez
            fe = np.clip((Y - y_lev) / cv.ps + 0.5, 0, 1) * side_ok * (ez > 1)
            comp = np.clip((Y - y_lev + 10) / 10, 0, 1) * side_ok * (ez > 1)
            lung += comp * (comp_hu - lung) * 0.7
            lung += fe * (eff_hu - lung)
        # fissures (Gaussian sheets holding the thin pleura's attenuation)
        fiss = np.zeros_like(lung)
        for side, (z0, kk) in enumerate(fis):
            dist = np.abs(Z - z0 - kk * (Y - body.cyc)) / math.sqrt(1 + kk * kk)
            sig = max(0.5, 0.45 * math.sqrt((cv.ps * kk) ** 2 + cv.t**2) / math.sqrt(1 + kk * kk))
            sel = (body.xm > X) if side == 0 else (body.xm <= X)
            fiss += sel * np.exp(-np.minimum((dist / sig) ** 2, 30.0)) * (0.6 / (sig * 1.77))
        sig = max(0.5, 0.45 * cv.t)
        front = (Z - fis[0][0] - fis[0][1] * (Y - body.cyc)) < 0  # in front of the major
        near = np.exp(-np.minimum(((Z - minor_z) / sig) ** 2, 30.0))
        fiss += (body.xm > X) * front * near * (0.6 / (sig * 1.77))
        lung += np.minimum(fiss, 1.0) * fis_amp * 1.5
        h += fl * (lung - h)
        cv.hu[k0:k1, bi, bj] = h
    # emphysema: centrilobular holes (< -950 HU) in the upper lungs of some older patients
    if age > 50 and rng.random() < 0.3:
        notes.append("emphysema")
        cands = np.stack(
            [
                rng.uniform(-body.Ac, body.Ac, 400),
                rng.uniform(body.cyc - body.Bc, body.cyc + body.Bc, 400),
                rng.uniform(body.dome_r + 40, body.apex - 10, 400),
            ],
            axis=1,
        )
        radii = rng.uniform(2.0, 7.0, 400)
        ok = body.lung_margin(cands) > radii + 3
        for c, r in list(zip(cands[ok], radii[ok], strict=True))[: int(rng.integers(20, 70))]:
            paint_ellipsoid(cv, c, np.full(3, r), np.eye(3), [(0, rng.uniform(-1000, -960))])
    # arms down: an arm beside each side, humerus with fatty marrow
    if arms_down:
        for sgn in (-1.0, 1.0):
            xa = sgn * (body.A * 1.05 + rng.uniform(25, 45))
            top = np.array([xa, rng.uniform(-10, 20), cv.z_top + 20])
            bot = np.array([xa + sgn * rng.uniform(0, 20), rng.uniform(-10, 20), cv.Z[-1] - 20])
            ra = rng.uniform(40, 55)
            pts = np.stack([top, bot])
            paint_tube(
                cv,
                pts,
                np.array([ra, ra]),
                [(0, skin_hu), (skin, fat_hu), (skin + rng.uniform(5, 15), mus_hu)],
            )
            h0 = top + np.array([0, 0, 0])
            paint_tube(
                cv,
                np.stack([h0, bot]),
                np.array([11.0, 10.0]),
                [(0, rng.uniform(900, 1400)), (rng.uniform(2.5, 4), rng.uniform(-60, 30))],
            )
    if sex == "F" and rng.random() < 0.8:
        for sgn in (-1.0, 1.0):
            c = np.array(
                [sgn * rng.uniform(45, 75), -body.B + rng.uniform(0, 10), rng.uniform(-70, -30)]
            )
            ax = np.array([rng.uniform(50, 70), rng.uniform(25, 50), rng.uniform(45, 60)])
            paint_ellipsoid(
                cv,
                c,
                ax,
                np.eye(3),
                [(0, skin_hu), (skin, fat_hu), (rng.uniform(6, 15), rng.uniform(-40, 30))],
            )


# -- skeleton -----------------------------------------------------------------------------------


def _paint_skeleton(
    cv: Canvas, rng: np.random.Generator, body: Body, age: int, arms_down: bool, notes: list[str]
) -> None:
    osteo = age > 60 and rng.random() < 0.45
    if osteo:
        notes.append("osteoporotic")
    marrow = rng.uniform(40, 100) if osteo else rng.uniform(100, 300)
    cortex = rng.uniform(450, 900)
    cort_t = rng.uniform(1.0, 1.5)
    disc_hu = rng.uniform(70, 110)
    vh = rng.uniform(18, 24)  # vertebral body height, disc 4-6 mm
    disc = rng.uniform(4, 6)
    z = cv.Z[-1] - vh - disc + rng.uniform(0, vh + disc)
    yv, rv = body.yv, body.rv
    canal_hu = rng.uniform(5, 35)
    levels: list[float] = []
    while z < cv.z_top + vh:
        zc = z + vh / 2
        rr = rv * (0.8 + 0.2 * np.clip((body.apex - zc) / 200, 0, 1.2))
        # body: a short cylinder, cortex over marrow
        p0, p1 = np.array([0, yv, z]), np.array([0, yv, z + vh])
        paint_tube(
            cv,
            np.stack([p0, p1]),
            np.array([rr, rr]),
            [(0, cortex), (cort_t, marrow)],
            flat=[np.array([0.0, 1.0, 0.0])],
            aspect=0.85,
            round_ends=False,
        )
        pd = np.array([0, yv, z + vh]), np.array([0, yv, z + vh + disc])
        paint_tube(
            cv, np.stack(pd), np.array([rr * 0.95, rr * 0.95]), [(0, disc_hu)], round_ends=False
        )
        # canal, pedicles, lamina, spinous and transverse processes
        yc = yv + rr * 0.85 + 9
        for sgn in (-1.0, 1.0):
            a = np.array([sgn * rr * 0.6, yv + rr * 0.7, zc])
            bpt = np.array([sgn * 9, yc + 9, zc])
            paint_tube(
                cv, np.stack([a, bpt]), np.array([4.0, 4.0]), [(0, cortex * 0.8), (1.2, marrow)]
            )
            tp = np.array([sgn * 28, yc + 6, zc + 3])
            paint_tube(
                cv, np.stack([bpt, tp]), np.array([4.5, 3.5]), [(0, cortex * 0.8), (1.2, marrow)]
            )
        sp = np.stack([np.array([0, yc + 10, zc]), np.array([0, yc + 38, zc - 18])])
        paint_tube(cv, sp, np.array([4.5, 3.0]), [(0, cortex * 0.8), (1.2, marrow)])
        paint_tube(
            cv,
            np.stack([np.array([0, yc, z]), np.array([0, yc, z + vh + disc])]),
            np.array([8.0, 8.0]),
            [(0, canal_hu)],
        )
        levels.append(zc)
        z += vh + disc
    body.vert_z = float(min(levels, key=lambda q: abs(q - 0.5 * (cv.z_top + cv.Z[-1]))))
    # ribs: twelve per side, heads at thoracic levels from the apex down
    cart_hu = rng.uniform(80, 150)
    calc = age > 55
    rib_r = rng.uniform(5.5, 7.0)
    t1 = body.apex + rng.uniform(-5, 15)
    step = vh + disc
    for i in range(12):
        zh = t1 - i * step
        drop = rng.uniform(55, 95) * (0.6 if i < 2 else 1.0)
        phi1 = rng.uniform(2.1, 2.5) - (0.3 if i < 1 else 0.0) + (0.15 if i > 8 else 0.0)
        if i > 9:
            phi1 = rng.uniform(1.3, 1.8)  # floating ribs end laterally
        for sgn in (-1.0, 1.0):
            phis = np.linspace(0.42, phi1, 14)
            frac = (phis - phis[0]) / (phis[-1] - phis[0])
            zz = zh - drop * frac**1.3
            Az, Bz = body.cavity(zz)
            lift = rib_r + 1.5 + 2.0 * np.clip((zz - body.ap0) / 40, 0, 1)
            Az = np.maximum(Az, 30.0) + lift
            Bz = np.maximum(Bz, 30.0) + lift
            xs = sgn * Az * np.sin(phis)
            ys = body.cyc + Bz * np.cos(phis)
            pts = np.stack([xs, ys, zz], axis=1)
            pts[0] = np.array([sgn * (body.rv + 8), body.yv + 6, zh])
            radial = [_unit(np.array([p[0], p[1] - body.cyc, 0.0])) for p in pts]
            rr = np.full(len(pts), rib_r)
            paint_tube(
                cv, pts, rr, [(0, cortex), (rng.uniform(1.0, 1.8), marrow)], flat=radial, aspect=0.5
            )
            if i <= 9:  # costal cartilage to the sternum
                zs = zz[-1] + (rng.uniform(5, 35) if i >= 6 else rng.uniform(-8, 4))
                e = np.array([sgn * 14, -body.Bc + body.cyc - rib_r - 3, zs])
                cp = np.stack([pts[-1], 0.5 * (pts[-1] + e) + np.array([0, -4, 0]), e])
                paint_tube(
                    cv,
                    cp,
                    np.array([rib_r, rib_r * 0.9, rib_r * 0.8]),
                    [(0, cart_hu)],
                    flat=[radial[-1]] * 2,
                    aspect=0.6,
                )
                if calc and rng.random() < 0.6:
                    c = cp[1] + rng.normal(0, 1.5, 3)
                    paint_ellipsoid(
                        cv,
                        c,
                        np.full(3, rng.uniform(1.2, 2.5)),
                        np.eye(3),
                        [(0, rng.uniform(300, 700))],
                    )
    if calc:
        notes.append("costal_cartilage_calcification")
    # sternum: manubrium and body, flat, sloping forward as it descends
    ys0 = -body.Bc + body.cyc - rng.uniform(8, 12)
    zm = t1 - 0.6 * step
    for z0, z1, wdt in (
        (zm, zm - 45, rng.uniform(22, 28)),
        (zm - 50, zm - 50 - rng.uniform(85, 110), rng.uniform(13, 18)),
    ):
        p = np.stack([np.array([0, ys0, z0]), np.array([0, ys0 - 6, z1])])
        paint_tube(
            cv,
            p,
            np.array([wdt, wdt]),
            [(0, cortex * 0.8), (1.2, marrow)],
            flat=[np.array([0.0, 1.0, 0.0])],
            aspect=0.27,
            round_ends=False,
        )
    # clavicles: from the manubrium to the shoulder, an S curve
    for sgn in (-1.0, 1.0):
        zc = zm + rng.uniform(5, 15)
        cl = np.array(
            [
                [sgn * 22, ys0 - 4, zc],
                [sgn * 60, ys0 - 10, zc + 8],
                [sgn * 105, ys0 + 10, zc + 14],
                [sgn * 135, ys0 + 35, zc + 18],
            ]
        )
        paint_tube(
            cv,
            cl,
            np.array([9.0, 7.0, 7.0, 8.0]) * rng.uniform(0.85, 1.1),
            [(0, cortex), (2.0, marrow)],
        )
        # scapula: a thin plate behind the ribs, from the shoulder to the inferior angle
        zt = body.apex + rng.uniform(5, 20)
        zb = zt - rng.uniform(130, 160)
        a_in, b_in = body.Ac + body.wall + 10, body.Bc + body.wall + 10
        for phi in np.linspace(0.55, 1.25, 5):
            zlo = zb + (phi - 0.55) * 60
            sx, sy = sgn * a_in * math.sin(phi), body.cyc + b_in * math.cos(phi)
            paint_tube(
                cv,
                np.array([[sx, sy, zt], [sx, sy, zlo]]),
                np.array([4.0, 2.5]),
                [(0, cortex * 0.7), (1.5, marrow)],
                flat=[_unit(np.array([sgn * math.sin(phi), math.cos(phi), 0]))],
                aspect=0.5,
            )


# -- mediastinum --------------------------------------------------------------------------------


@dataclass
class Mediastinum:
    bif: np.ndarray  # pulmonary trunk bifurcation
    rpa: np.ndarray
    lpa: np.ndarray
    la: np.ndarray
    carina: np.ndarray
    svc: np.ndarray  # mean SVC position, for streaks
    aorta: np.ndarray  # a point in the descending aorta
    lung: np.ndarray  # a point deep in the right lung
    vert_z: float  # the centre of a vertebral body
    rv: np.ndarray  # the right ventricle's centre


def _paint_mediastinum(
    cv: Canvas,
    rng: np.random.Generator,
    body: Body,
    pa_hu: float,
    left_hu: float,
    aorta_hu: float,
    svc_hu: float,
    notes: list[str],
) -> Mediastinum:
    hc, ax, rot = body.heart_c, body.heart_ax, body.heart_rot
    yt = body.yt
    carina = np.array([body.xm * 0.5, yt, 0.0])
    # heart: pericardial fat, myocardium, chambers split by the septum
    myo = rng.uniform(70, 120)
    paint_ellipsoid(cv, hc, ax + rng.uniform(3, 8), rot, [(0, rng.uniform(-110, -60))])
    paint_ellipsoid(cv, hc, ax, rot, [(0, myo)])
    sept_n = _unit(np.array([0.55, 0.8, 0.1]))
    rv_c = hc + np.array([-8, -0.35 * ax[1], -5])
    lv_c = hc + np.array([16, 6, -8])
    rh = pa_hu * rng.uniform(0.9, 1.05)
    paint_ellipsoid(
        cv,
        lv_c,
        np.array([ax[0] * 0.5, ax[1] * 0.42, ax[2] * 0.55]),
        rot,
        [(0, left_hu)],
        plane=(hc + sept_n * 4, sept_n),
    )
    paint_ellipsoid(
        cv,
        rv_c,
        np.array([ax[0] * 0.55, ax[1] * 0.35, ax[2] * 0.6]),
        rot,
        [(0, rh)],
        plane=(hc - sept_n * 4, -sept_n),
    )
    ra = hc + np.array([-ax[0] * 0.55, 8, ax[2] * 0.35])
    paint_ellipsoid(cv, ra, np.array([22, 24, 26]) * rng.uniform(0.85, 1.1), np.eye(3), [(0, rh)])
    for _ in range(int(rng.integers(2, 5))):  # unopacified inflow swirling in the atrium
        c = ra + rng.normal(0, 7, 3)
        paint_ellipsoid(
            cv, c, rng.uniform(3, 8, 3), _rot(rng), [(0, rh * rng.uniform(0.3, 0.7))], within=None
        )
    la = np.array([body.xm + rng.uniform(0, 10), yt + rng.uniform(18, 26), hc[2] + ax[2] * 0.75])
    paint_ellipsoid(
        cv,
        la,
        np.array([30, 16, 18]) * rng.uniform(0.85, 1.1),
        np.eye(3),
        [(0, myo), (2.5, left_hu)],
    )
    # IVC from below into the right atrium: unopacified blood
    ivc_top = ra + np.array([0, 8, -18])
    paint_tube(
        cv,
        np.stack([np.array([ivc_top[0] + 5, body.yv - 25, cv.Z[-1] - 20]), ivc_top]),
        np.array([12.0, 13.0]),
        [(0, rng.uniform(40, 110))],
    )
    # oesophagus: behind the trachea and the left atrium, left of the spine front
    oy = body.yv - body.rv - 6
    oe = np.array([[2, yt + 14, cv.z_top + 20], [6, oy, -30], [12, oy - 4, cv.Z[-1] - 20]])
    paint_tube(
        cv,
        oe,
        np.array([8.0, 9.0, 9.0]),
        [(0, rng.uniform(35, 50)), (6.5, -900.0)]
        if rng.random() < 0.4
        else [(0, rng.uniform(35, 50))],
    )
    # aorta: root, ascending, arch, descending beside the spine
    ra_ = rng.uniform(13, 17)
    rd = ra_ * rng.uniform(0.72, 0.85)
    top = rng.uniform(25, 45)
    xa = 22 + 0.1 * body.rv
    aorta = np.array(
        [
            [hc[0] - 15, hc[1] + 10, hc[2] + ax[2] * 0.7],
            [body.xm - 8, -0.5 * body.Bc + 8, top - 30],
            [body.xm - 2, -0.4 * body.Bc, top - 5],
            [body.xm + 6, yt - 14, top],
            [xa, yt + 8, top - 12],
            [xa, body.yv - 18, top - 40],
            [xa - 3, body.yv - 20, -100],
            [xa - 10, body.yv - 20, cv.Z[-1] - 30],
        ]
    )
    rads = np.array([ra_, ra_, ra_, ra_ * 0.95, rd, rd, rd * 0.95, rd * 0.9])
    paint_tube(cv, aorta, rads, [(0, aorta_hu)])
    if rng.random() < 0.3:
        notes.append("aortic_calcification")
        for _ in range(int(rng.integers(2, 6))):
            i = int(rng.integers(2, 6))
            c = aorta[i] + _unit(rng.normal(size=3)) * rads[i]
            paint_ellipsoid(cv, c, rng.uniform(1, 3, 3), _rot(rng), [(0, rng.uniform(400, 900))])
    # arch vessels upward
    for dx, r in ((-10, 6.0), (4, 4.0), (14, 5.0)):
        p0 = aorta[3] + np.array([dx, 0, ra_ * 0.6])
        p1 = np.array([p0[0] * 2.2 - 5, p0[1] - 8, cv.z_top + 20])
        paint_tube(cv, np.stack([p0, p1]), np.array([r, r * 0.9]), [(0, aorta_hu)])
    # SVC and brachiocephalic veins; dense undiluted contrast from the injected arm
    sx = body.xm - rng.uniform(26, 36)
    svc = np.array(
        [
            [sx - 8, -0.3 * body.Bc, cv.z_top + 20],
            [sx, -0.25 * body.Bc, top + 10],
            [sx, -0.2 * body.Bc, ra[2] + 10],
        ]
    )
    right_arm = rng.random() < 0.7
    mix = svc_hu if right_arm else svc_hu * 0.35
    paint_tube(cv, svc, np.array([9.0, 10.0, 11.0]) * rng.uniform(0.9, 1.2), [(0, mix)])
    lbv = np.array([[60, -0.45 * body.Bc, top + 25], [sx + 8, -0.3 * body.Bc, top + 12]])
    paint_tube(cv, lbv, np.array([6.0, 7.0]), [(0, svc_hu if not right_arm else 90.0)])
    # azygos up the right of the spine, arching into the SVC over the right bronchus
    az = np.array(
        [
            [6 - body.rv, body.yv - 4, cv.Z[-1] - 20],
            [-body.rv, body.yv - 6, 0],
            [-20, yt + 6, 12],
            [sx, -0.2 * body.Bc + 6, 10],
        ]
    )
    paint_tube(cv, az, np.array([4.0, 5.0, 5.0, 5.0]), [(0, rng.uniform(100, 220))])
    # thymic remnant in front of the aorta
    young = rng.random() < 0.2
    paint_ellipsoid(
        cv,
        np.array([body.xm, -0.72 * body.Bc, top - 10]),
        np.array([20, 6, 25]),
        np.eye(3),
        [(0, rng.uniform(15, 40) if young else rng.uniform(-90, -40))],
    )
    # pulmonary trunk from the right ventricle outflow to the bifurcation
    bif = np.array([body.xm + rng.uniform(12, 22), yt - rng.uniform(14, 22), rng.uniform(-8, 4)])
    rvot = rv_c + np.array([18, -0.25 * ax[1], ax[2] * 0.45])
    rt = rng.uniform(12, 16)
    paint_tube(
        cv,
        np.stack([rvot, 0.5 * (rvot + bif) + np.array([4, 0, 0]), bif]),
        np.array([rt * 0.95, rt, rt]),
        [(0, rh)],
    )
    rpa = np.array([body.xm - 40, yt - 8, bif[2] - 8])
    lpa = np.array([body.xm + 42, yt + 6, bif[2] + 8])
    # trachea and main bronchi: wall then air
    rw = rng.uniform(1.5, 2.5)
    rtr = rng.uniform(8, 11)
    tr = np.array([[body.xm * 0.5, yt - 2, cv.z_top + 20], carina])
    paint_tube(
        cv,
        tr,
        np.array([rtr, rtr]),
        [(0, rng.uniform(30, 60)), (rw, -1000.0)],
        flat=[np.array([0.0, 1.0, 0.0])],
        aspect=1.1,
    )
    rmb = carina + np.array([-24, 6, -20])
    lmb = carina + np.array([38, 10, -26])
    for end, rb in ((rmb, rtr * 0.75), (lmb, rtr * 0.65)):
        paint_tube(
            cv,
            np.stack([carina, end]),
            np.array([rb, rb * 0.9]),
            [(0, rng.uniform(30, 60)), (rw * 0.8, -1000.0)],
        )
    # lymph nodes: subcarinal, paratracheal, aortopulmonary window, hilar
    spots = [
        carina + np.array([0, 10, -16]),
        carina + np.array([-16, -8, 22]),
        carina + np.array([20, -10, 10]),
        rpa + np.array([-6, 10, -8]),
        lpa + np.array([6, 8, -10]),
        rpa + np.array([-10, -6, -18]),
    ]
    nn = int(rng.integers(2, 7))
    for i in rng.permutation(len(spots))[:nn]:
        c = spots[i] + rng.normal(0, 2, 3)
        axn = np.array([rng.uniform(3, 7), rng.uniform(3, 6), rng.uniform(4, 9)])
        paint_ellipsoid(cv, c, axn, _rot(rng), [(0, rng.uniform(20, 60))])
    # upper abdomen: spleen and stomach under the left dome
    sp = np.array([body.Ac * 0.7, body.cyc + 0.45 * body.Bc, body.dome_l - 55])
    paint_ellipsoid(
        cv,
        sp,
        np.array([25, 45, 40]),
        _rot(None, np.array([0.5, 1, 0])),
        [(0, rng.uniform(70, 120))],
    )
    st = np.array([body.Ac * 0.4, body.cyc - 0.2 * body.Bc, body.dome_l - 50])
    paint_ellipsoid(
        cv,
        st,
        np.array([45, 35, 35]),
        np.eye(3),
        [(0, rng.uniform(30, 50)), (4, rng.uniform(0, 25))],
    )
    paint_ellipsoid(
        cv,
        st + np.array([0, -12, 0]),
        np.array([30, 18, 22]),
        np.eye(3),
        [(0, -1000.0)],
        plane=(st + np.array([0, -4, 0]), np.array([0, -1.0, 0])),
    )
    lung = np.array([-0.6 * body.Ac, body.cyc - 0.1 * body.Bc, -20.0])
    for zq in np.linspace(40, body.dome_r + 20, 12):
        cand = np.array([-0.6 * body.Ac, body.cyc - 0.1 * body.Bc, zq])
        if body.lung_margin(cand[None])[0] > 15:
            lung = cand
            break
    return Mediastinum(
        bif=bif,
        rpa=rpa,
        lpa=lpa,
        la=la,
        carina=carina,
        svc=svc[1],
        aorta=0.5 * (aorta[5] + aorta[6]),
        lung=lung,
        vert_z=body.vert_z,
        rv=rv_c,
    )


def _arterial_tree(rng: np.random.Generator, body: Body, m: Mediastinum, r_min: float) -> list[Seg]:
    segs: list[Seg] = []
    rm = rng.uniform(9, 12)
    trunk_r = rng.uniform(12, 16)
    # segment 0: the last part of the trunk (central), 1: right main, 2: left main
    up = m.bif + _unit(np.array([-0.3, -0.6, -0.5])) * 25
    segs.append(Seg(up, m.bif, trunk_r, trunk_r, "central", -1, "trunk"))
    segs.append(Seg(m.bif, m.rpa, rm, rm * 0.95, "central", 0, "right"))
    segs.append(Seg(m.bif, m.lpa, rm * 0.95, rm * 0.9, "central", 0, "left"))
    segs[0].kids += [1, 2]
    ac, bc, cy = body.Ac, body.Bc, body.cyc
    dz = body.dome_r
    lobes = [  # (parent, start, direction, radius, goal)
        (1, m.rpa, np.array([-0.5, -0.1, 1.0]), rm * 0.6, np.array([-0.55 * ac, cy, 60.0]), "RUL"),
        (
            1,
            m.rpa + np.array([-12, -2, -22]),
            np.array([-0.4, -1.0, -0.4]),
            rm * 0.45,
            np.array([-0.55 * ac, cy - 0.6 * bc, dz + 30]),
            "RML",
        ),
        (
            1,
            m.rpa + np.array([-12, 6, -22]),
            np.array([-0.25, 0.5, -1.0]),
            rm * 0.7,
            np.array([-0.5 * ac, cy + 0.4 * bc, dz - 10]),
            "RLL",
        ),
        (2, m.lpa, np.array([0.4, -0.3, 1.0]), rm * 0.6, np.array([0.55 * ac, cy, 60.0]), "LUL"),
        (
            2,
            m.lpa + np.array([8, 4, -22]),
            np.array([0.3, -1.0, -0.5]),
            rm * 0.45,
            np.array([0.55 * ac, cy - 0.6 * bc, dz + 20]),
            "lingula",
        ),
        (
            2,
            m.lpa + np.array([8, 10, -22]),
            np.array([0.2, 0.5, -1.0]),
            rm * 0.7,
            np.array([0.5 * ac, cy + 0.4 * bc, dz - 20]),
            "LLL",
        ),
    ]
    for par, start, d, r, goal, lobe in lobes:
        if not np.allclose(start, segs[par].p1):  # the interlobar part
            segs.append(Seg(segs[par].p1, start, rm * 0.8, rm * 0.75, "lobar", par, lobe))
            segs[par].kids.append(len(segs) - 1)
            par = len(segs) - 1
        _grow(rng, body, segs, start, _unit(d), r, 0, par, lobe, goal, r_min)
    return segs


def _vein_tree(rng: np.random.Generator, body: Body, m: Mediastinum, r_min: float) -> list[Seg]:
    segs: list[Seg] = []
    ac, bc, cy = body.Ac, body.Bc, body.cyc
    for dx, dz, goal in (
        (-1, 8, np.array([-0.6 * ac, cy - 0.3 * bc, 40.0])),
        (-1, -10, np.array([-0.6 * ac, cy + 0.3 * bc, body.dome_r + 10])),
        (1, 8, np.array([0.6 * ac, cy - 0.3 * bc, 40.0])),
        (1, -10, np.array([0.6 * ac, cy + 0.3 * bc, body.dome_l + 10])),
    ):
        o = m.la + np.array([dx * 26, 2, dz])
        hilum = o + np.array([dx * 28, -4, 2 * dz])
        segs.append(Seg(o, hilum, 7.5, 7.0, "vein", -1, "vein"))
        _grow(
            rng,
            body,
            segs,
            hilum,
            _unit(goal - hilum),
            rng.uniform(5.5, 7),
            1,
            len(segs) - 1,
            "vein",
            goal,
            r_min,
            vein=True,
        )
    return segs


def _paint_bronchi(
    cv: Canvas, rng: np.random.Generator, body: Body, arteries: list[Seg], notes: list[str]
) -> None:
    """Bronchi beside the arteries down to subsegmental branches: air lumen, soft wall; a
    few branches filled with mucus."""
    wall_hu = rng.uniform(20, 60)
    mucus_roots: set[int] = set()
    if rng.random() < 0.3:
        cands = [i for i, s in enumerate(arteries) if s.level in ("segmental", "subsegmental")]
        mucus_roots = {
            int(i) for i in rng.choice(cands, min(len(cands), int(rng.integers(1, 4))), False)
        }
        notes.append("mucus_filled_bronchi")
    mucus: set[int] = set()
    stack = list(mucus_roots)
    while stack:
        k = stack.pop()
        mucus.add(k)
        stack.extend(arteries[k].kids)
    mucus_hu = rng.uniform(0, 30)
    shift: dict[int, np.ndarray] = {}
    for i, s in enumerate(arteries):
        if s.level not in ("lobar", "segmental", "subsegmental"):
            continue
        if s.parent in shift:
            side = shift[s.parent]
        else:
            side = _unit(np.cross(s.p1 - s.p0, np.array([0.3, 0.2, 1.0])))
        a = _unit(s.p1 - s.p0)
        side = _unit(side - (side @ a) * a)
        shift[i] = side
        rb = s.r0 * rng.uniform(0.7, 1.0)
        off = side * (s.r0 + rb + 0.6)
        wall = max(0.5, 0.18 * rb)
        lumen = mucus_hu if i in mucus else -1000.0
        paint_tube(
            cv,
            np.stack([s.p0 + off, s.p1 + off]),
            np.array([rb, rb * 0.93]),
            [(0, wall_hu), (wall, lumen)],
        )


# -- emboli -------------------------------------------------------------------------------------


def _plan_emboli(
    rng: np.random.Generator, arteries: list[Seg], force: str | None = None
) -> list[dict]:
    n = int(rng.choice([1, 1, 1, 2, 2, 3, 4, 6]))
    out: list[dict] = []
    by_level: dict[str, list[int]] = {lv: [] for lv in LEVELS}
    for i, s in enumerate(arteries):
        if s.level in by_level and (s.level != "subsegmental" or s.r0 >= 1.0):
            by_level[s.level].append(i)
    used: set[int] = set()
    for _ in range(n):
        level = str(rng.choice(LEVELS, p=[0.15, 0.25, 0.35, 0.25]))
        level = force or level
        cands = [i for i in by_level[level] if i not in used] or by_level[level]
        i = int(rng.choice(cands))
        used.add(i)
        occl_p = {"central": 0.1, "lobar": 0.4, "segmental": 0.5, "subsegmental": 0.6}[level]
        cl: dict = {
            "seg": i,
            "level": arteries[i].level,
            "occlusive": rng.random() < occl_p,
            "hu": rng.uniform(20, 70),
        }
        if arteries[i].level == "central" and i == 0 and rng.random() < 0.5:
            cl["saddle"] = True
        a, b = sorted(rng.uniform(0.05, 0.95, 2))
        if b - a < 0.35:
            a, b = max(0.0, a - 0.2), min(1.0, b + 0.2)
        cl["frac"] = (a, 1.0) if cl["occlusive"] else (a, b)
        cl["mural"] = rng.random() < 0.4
        out.append(cl)
    return out


def _paint_clot(cv: Canvas, rng: np.random.Generator, arteries: list[Seg], cl: dict) -> bool:
    """Paint one clot inside its artery's lumen; True when it holds a voxel at least half
    clot."""
    s = arteries[cl["seg"]]
    a, b = cl["frac"]
    p0 = s.p0 + a * (s.p1 - s.p0)
    p1 = s.p0 + b * (s.p1 - s.p0)
    parts = [(s, p0, p1)]
    if cl.get("saddle") and s.kids:  # straddling the bifurcation into both main arteries
        p1 = s.p1
        parts = [(s, p0, p1)] + [
            (arteries[k], arteries[k].p0, arteries[k].p0 + 0.35 * (arteries[k].p1 - arteries[k].p0))
            for k in s.kids[:2]
        ]
    hit = False
    for seg, q0, q1 in parts:
        r = 0.5 * (seg.r0 + seg.r1)
        if cl["occlusive"]:
            rc, off = r * 1.1, np.zeros(3)
        else:
            rc = r * rng.uniform(0.45, 0.75)
            ax = _unit(seg.p1 - seg.p0)
            e = _unit(np.cross(ax, rng.normal(size=3)))
            off = e * (r - rc) * (rng.uniform(0.6, 1.0) if cl["mural"] else rng.uniform(0, 0.3))
        c0, c1 = q0 + off, q1 + off
        m = max(r, rc) + 2 * max(cv.ps, cv.t)
        box = cv.box(np.minimum(seg.p0, seg.p1) - m, np.maximum(seg.p0, seg.p1) + m)
        if box is None:
            continue
        d_l, w_l = _seg_field(cv, box, seg.p0, seg.p1, seg.r0, seg.r1)
        d_c, w_c = _seg_field(cv, box, c0, c1, rc, rc)
        f = np.minimum(_cover(d_l, w_l), _cover(d_c, w_c))
        cv.blend(box, f, float(cl["hu"]))
        sel = f >= 0.5
        if sel.any():
            cv.lesion[box] |= sel
            hit = True
    return hit


# -- acquisition ---------------------------------------------------------------------------------


def _acquisition_effects(
    cv: Canvas,
    rng: np.random.Generator,
    body: Body,
    m: Mediastinum,
    arms_down: bool,
    dense_svc: bool,
    size_f: float,
    notes: list[str],
) -> None:
    X, Y = cv.X, cv.Y
    if dense_svc:  # streaks radiating from the dense SVC, fading with distance
        ang = rng.uniform(0, np.pi, int(rng.integers(4, 9)))
        amp = rng.uniform(60, 250)
        dx, dy = X - m.svc[0], Y - m.svc[1]
        dist = np.hypot(dx, dy)
        pat = np.zeros_like(X)
        for i, t in enumerate(ang):
            perp = np.abs(dx * math.sin(t) - dy * math.cos(t))
            pat += (1 if i % 2 else -1.3) * np.exp(-((perp / rng.uniform(0.8, 2.0)) ** 2))
        pat *= amp / (1 + dist / 30) * (dist > 12)
        ks = np.flatnonzero((cv.z_top > cv.Z) & (m.svc[2] - 60 < cv.Z))
        for k in ks:
            cv.hu[k] += pat
    if arms_down:  # beam hardening between the humeri: dark horizontal bands at the shoulders
        amp = rng.uniform(20, 60)
        band = np.zeros_like(X)
        for _ in range(3):
            y0 = rng.uniform(-40, 40)
            band -= np.exp(-(((Y - y0 - 0.05 * X) / rng.uniform(1.5, 4)) ** 2))
        band *= amp * (np.abs(X) < body.A)
        for k in np.flatnonzero(body.apex - 80 < cv.Z):
            cv.hu[k] += band
    if rng.random() < 0.25:  # breathing: ghosted edges near the diaphragm
        notes.append("motion")
        zb = body.dome_r + rng.uniform(-20, 40)
        shift = round(rng.uniform(2, 6) / cv.ps)
        alpha = rng.uniform(0.25, 0.45)
        for k in np.flatnonzero(zb > cv.Z):
            cv.hu[k] = (1 - alpha) * cv.hu[k] + alpha * np.roll(cv.hu[k], shift, axis=0)


def _filter3(x: np.ndarray, a: float) -> np.ndarray:
    """In-plane 3-tap smoothing [a, 1 - 2a, a] along rows and columns (edges kept)."""
    y = x.copy()
    y[..., 1:-1, :] = (1 - 2 * a) * x[..., 1:-1, :] + a * (x[..., :-2, :] + x[..., 2:, :])
    z = y.copy()
    z[..., 1:-1] = (1 - 2 * a) * y[..., 1:-1] + a * (y[..., :-2] + y[..., 2:])
    return z


def _kernel_and_noise(
    cv: Canvas, rng: np.random.Generator, kernel: str, size_f: float, thick: float
) -> None:
    """The reconstruction kernel (soft: smoothing; sharp: edge enhancement) and correlated
    noise: a pool of filtered noise slices, each slice taking one, shifted at random."""
    a = 0.22 if kernel in _SOFT else 0.15
    sharp = kernel in _SHARP
    sigma = rng.uniform(7, 14) * size_f**1.5 / math.sqrt(max(thick, 0.5))
    sigma = float(np.clip(sigma, 6, 25))
    pool = _smooth_noise(rng, (min(48, cv.nz), cv.n, cv.n), 1 if sharp else 2) * np.float32(sigma)
    picks = rng.integers(0, pool.shape[0], cv.nz)
    shifts = rng.integers(0, cv.n, (cv.nz, 2))
    step = 32
    for k0 in range(0, cv.nz, step):
        v = cv.hu[k0 : k0 + step]
        sm = _filter3(v, a)
        v[...] = v + 0.5 * (v - sm) if sharp else sm
        for k in range(k0, min(k0 + step, cv.nz)):
            cv.hu[k] += np.roll(pool[picks[k]], tuple(shifts[k]), axis=(0, 1))
