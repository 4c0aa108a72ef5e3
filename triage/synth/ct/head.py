"""Head CT phantom: scalp, skull with diploe and skull base, brain (grey and white matter,
sulci, deep nuclei, texture), CSF spaces, falx, tentorium and dural sinuses; the five
hemorrhage kinds and the look-alikes (calcifications, beam hardening, motion). Generator 4
(:attr:`PhantomSpec.generator`) adds what lies below the brain (:class:`SkullBase`: the
floors of the cranial fossae, orbits, paranasal sinuses, nasal cavity and nasopharynx)."""

from __future__ import annotations

import functools
import itertools
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
    grid_box,
    grid_coords,
    log_uniform,
    mask_on,
    measure_lesion,
    uniform,
    union_box,
)
from triage.synth.ct.spec import HEAD_MIMICS, PhantomSpec


@dataclass(frozen=True)
class Head:
    """Random anatomy of one synthetic head (all mm / HU). Inner table semi-axes via
    :attr:`inner_axes`; the head centre is the origin."""

    skull_axes: tuple[float, float, float]
    skull_thickness: float
    scalp_thickness: float
    grey_hu: float
    white_hu: float
    csf_hu: float
    bone_hu: float
    ventricle_axes: tuple[float, float, float]
    ventricle_z: float
    sulci: tuple[float, float, float, float]  # angular frequency, z frequency, phase, width
    cistern_z: float
    sinus_hu: float  # dural venous sinuses (blood: 40-70 HU with the haematocrit)
    sinus_radius: float  # superior sagittal sinus at the torcula, mm
    cupping: float  # HU added to the brain next to the inner table (beam hardening, scatter)
    texture_hu: float  # RMS of the brain's slow density variations
    detail_seed: int  # the draws of the skull base detail, tentorium, texture and head holder

    @property
    def inner_axes(self) -> tuple[float, float, float]:
        t = self.skull_thickness
        ax, ay, az = self.skull_axes
        return (ax - t, ay - t, az - t)

    def ventricle_centres(self) -> tuple[tuple[float, float, float], ...]:
        vx = self.ventricle_axes[0] + 2.0
        return ((-vx, -5.0, self.ventricle_z), (vx, -5.0, self.ventricle_z))


def draw_head(rng: np.random.Generator) -> Head:
    scale = rng.uniform(0.93, 1.07)
    skull_thickness = uniform(rng, 5.5, 7.5)
    scalp_thickness = uniform(rng, 4.0, 6.0)
    grey = uniform(rng, 33.0, 46.0)  # scanners and ages differ by several HU
    white = grey - uniform(rng, 5.0, 12.0)
    return Head(
        skull_axes=(72.0 * scale, 92.0 * scale, 95.0 * scale),
        skull_thickness=skull_thickness,
        scalp_thickness=scalp_thickness,
        grey_hu=grey,
        white_hu=white,
        csf_hu=uniform(rng, 0.0, 10.0),
        bone_hu=uniform(rng, 1100.0, 1600.0),
        ventricle_axes=(uniform(rng, 4.0, 7.0), uniform(rng, 18.0, 24.0), uniform(rng, 12.0, 16.0)),
        ventricle_z=uniform(rng, 12.0, 20.0),
        sulci=(
            float(rng.integers(14, 22)),
            uniform(rng, 0.08, 0.14),
            uniform(rng, 0, 6.28),
            uniform(rng, 0.10, 0.16),
        ),
        cistern_z=uniform(rng, -14.0, -8.0),
        sinus_hu=uniform(rng, 42.0, 70.0),
        sinus_radius=uniform(rng, 3.0, 5.0),
        cupping=uniform(rng, -3.0, 8.0),
        texture_hu=uniform(rng, 1.0, 4.0),
        detail_seed=int(rng.integers(2**31)),
    )


@dataclass(frozen=True)
class SkullBase:
    """The floor of the skull and the face under it (generator 4; mm above or below the
    skull-base level ``zb`` of :class:`HeadCanvas`, HU). Real head CTs begin below the brain:
    their lowest slices hold the orbits, the sinuses and the nasopharynx, and no bone ring
    encloses them."""

    anterior: float  # anterior fossa floor (orbital roofs) above zb
    middle: float  # middle fossae floor relative to zb
    posterior: float  # depth of the posterior fossa below zb
    plate: float  # thickness of the floor's bone
    plate_hu: float  # its density, x the skull's
    soft_hu: float  # muscle and mucosa of the face
    fat_hu: float  # orbital and facial fat
    orbit_x: float  # orbit centres, x the inner half-width
    dome: float  # how high the orbital roofs rise into the anterior fossa, mm
    ripple: float  # the floor's waviness, mm
    detail_seed: int  # air cells of the ethmoid, turbinates


def draw_skull_base(rng: np.random.Generator) -> SkullBase:
    return SkullBase(
        anterior=uniform(rng, 20.0, 30.0),
        middle=uniform(rng, -4.0, 4.0),
        posterior=uniform(rng, 25.0, 35.0),
        plate=uniform(rng, 2.5, 6.0),
        plate_hu=uniform(rng, 0.5, 0.9),
        soft_hu=uniform(rng, 35.0, 55.0),
        fat_hu=uniform(rng, -110.0, -70.0),
        orbit_x=uniform(rng, 0.38, 0.46),
        dome=uniform(rng, 5.0, 12.0),
        ripple=uniform(rng, 1.5, 4.0),
        detail_seed=int(rng.integers(2**31)),
    )


def radius_terms(
    g: Grid, centre: Sequence[float], axes: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """The in-plane part [1, H, W] and the z part [N, 1, 1] of the squared normalised radius
    of an axis-aligned ellipsoid; their sum is the squared radius on the whole grid."""
    cx, cy, cz = centre
    ax, ay, az = axes
    return ((g.x - cx) / ax) ** 2 + ((g.y - cy) / ay) ** 2, ((g.z - cz) / az) ** 2


def inner_terms(g: Grid, head: Head, shrink: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`radius_terms` of the inner table shrunk by ``shrink`` mm."""
    ax, ay, az = head.inner_axes
    return radius_terms(g, (0.0, 0.0, 0.0), (ax - shrink, ay - shrink, az - shrink))


# For float32 r2 >= 0, sqrt(r2) <= 1 exactly when r2 <= the next float32 above 1 (sqrt rounds
# 1 + 2**-23 down to 1.0): the same masks as the normalised radius, without the square root.
UNIT_R2 = np.nextafter(np.float32(1.0), np.float32(2.0))


def within_inner(g: Grid, head: Head, shrink: float = 0.0) -> np.ndarray:
    """Full-grid mask of the voxels inside the inner table shrunk by ``shrink`` mm, computed
    slice by slice (the same values as on the whole grid, without its float temporaries)."""
    xy, zz = inner_terms(g, head, shrink)
    out = np.empty(g.shape, dtype=bool)
    for k in range(g.shape[0]):
        np.less_equal(xy + zz[k : k + 1], UNIT_R2, out=out[k : k + 1])
    return out


class HeadCanvas:
    """The head being painted: HU volume, named masks other structures need."""

    def __init__(self, g: Grid, head: Head, base: SkullBase | None = None) -> None:
        self.g, self.head = g, head
        self.vol = np.full(g.shape, AIR_HU, dtype=np.float32)
        ax, ay, az = head.skull_axes
        s, t = head.scalp_thickness, head.skull_thickness
        origin = (0.0, 0.0, 0.0)
        scalp = radius_terms(g, origin, (ax + s, ay + s, az + s))
        skull = radius_terms(g, origin, head.skull_axes)
        diploe = radius_terms(g, origin, (ax - t / 3, ay - t / 3, az - t / 3))
        inner, brain, deep = (inner_terms(g, head, shrink) for shrink in (0.0, 1.5, 7.0))
        # Sulci: CSF clefts through the cortical band (between 1.5 and ~7 mm deep).
        freq, zf, phase, width = head.sulci
        theta_flat = np.broadcast_to(freq * np.arctan2(g.y, g.x), (1, *g.shape[1:])).ravel()
        z_wave, z_wobble = zf * g.z, 1.7 * np.sin(0.05 * g.z)
        self.inside = np.empty(g.shape, dtype=bool)  # intracranial space
        self.sulci = np.empty(g.shape, dtype=bool)
        self.white = np.empty(g.shape, dtype=bool)
        # Slice by slice: the same element-wise arithmetic as on the whole grid (so the same
        # values), without full-grid temporaries that fit in no cache.
        for k in range(g.shape[0]):
            sl, z = self.vol[k : k + 1], slice(k, k + 1)
            sl[scalp[0] + scalp[1][z] <= 1.0] = 35.0
            sl[skull[0] + skull[1][z] <= 1.0] = head.bone_hu
            sl[diploe[0] + diploe[1][z] <= 1.0] = 0.6 * head.bone_hu
            inside = np.less_equal(inner[0] + inner[1][z], UNIT_R2, out=self.inside[z])
            sl[inside] = head.csf_hu
            in_brain = brain[0] + brain[1][z] <= UNIT_R2
            sl[in_brain] = head.grey_hu
            white = np.less_equal(deep[0] + deep[1][z], UNIT_R2, out=self.white[z])
            # the wave only where it can mark a sulcus: the cortical band
            band = np.flatnonzero(in_brain & ~white)
            wave = np.abs(np.sin(theta_flat[band] + z_wave[k, 0] + phase + z_wobble[k, 0]))
            sulci = self.sulci[k].reshape(-1)
            sulci[:] = False
            sulci[band[wave < width]] = True
            sl[self.sulci[z]] = head.csf_hu
            sl[white] = head.white_hu
        # Deep grey nuclei (basal ganglia, thalami): grey-matter islands beside the ventricles.
        for side in (-1.0, 1.0):
            hit = ellipsoid_in(g, (side * 18.0, 2.0, head.ventricle_z - 12.0), (8.0, 14.0, 9.0))
            if hit:
                self.vol[hit[0]][hit[1]] = head.grey_hu
        # Interhemispheric fissure with the falx (dura ~45 HU) above the tentorium.
        above = g.z[:, 0, 0] > head.cistern_z + 6.0
        plane = (np.abs(g.x) < 2.5) & (np.abs(g.y) < 0.9 * head.inner_axes[1])
        midline = plane & (np.abs(g.x) < 0.9)
        self.falx = np.zeros(g.shape, dtype=bool)
        for k in np.flatnonzero(above):  # only the slices it is in, as above
            fissure = self.inside[k : k + 1] & plane
            self.vol[k : k + 1][fissure] = head.csf_hu
            falx = np.logical_and(fissure, midline, out=self.falx[k : k + 1])
            self.vol[k : k + 1][falx] = 45.0
        # Basal cisterns: a CSF ring around the midbrain.
        self.cistern = np.zeros(g.shape, dtype=bool)
        hit = ellipsoid_in(g, (0.0, 8.0, head.cistern_z), (20.0, 18.0, 5.0))
        if hit:
            ring = hit[1].copy()
            core = ellipsoid_in(g, (0.0, 10.0, head.cistern_z), (11.0, 10.0, 6.0))
            if core:
                ring &= ~mask_on(hit[0], *core)
            np.logical_and(ring, self.inside[hit[0]], out=self.cistern[hit[0]])
            self.vol[hit[0]][self.cistern[hit[0]]] = head.csf_hu
        # Lateral ventricles and the third ventricle.
        self.ventricles = np.zeros(g.shape, dtype=bool)
        boxes = []
        for c in head.ventricle_centres():
            hit = ellipsoid_in(g, c, head.ventricle_axes)
            if hit:
                self.ventricles[hit[0]] |= hit[1]
                boxes.append(hit[0])
        hit = ellipsoid_in(g, (0.0, 2.0, head.ventricle_z - 10.0), (1.8, 12.0, 7.0))
        if hit:
            self.ventricles[hit[0]] |= hit[1]
            boxes.append(hit[0])
        around = union_box(boxes)  # nothing is set outside it
        if around is not None:
            self.vol[around][self.ventricles[around]] = head.csf_hu
        zb = head.cistern_z - 16.0
        self.skull_base_z = zb
        self.face = np.zeros(g.shape, dtype=bool)  # below the skull's floor (generator 4)
        if base is not None:
            self._paint_floor(base)
        # Skull base: dense petrous ridges and clivus low in the head.
        for c, axes, ang in (
            ((-34.0, 12.0, zb), (30.0, 7.0, 9.0), 0.6),
            ((34.0, 12.0, zb), (30.0, 7.0, 9.0), -0.6),
            ((0.0, -2.0, zb - 4.0), (8.0, 16.0, 10.0), 0.0),
        ):
            hit = ellipsoid_in(g, c, axes, ang)
            if hit:
                self.vol[hit[0]][hit[1]] = head.bone_hu * 0.9
        self._paint_sinuses()
        self._paint_detail(np.random.default_rng(head.detail_seed))
        # Cupping / pseudo-enhancement: the brain next to the inner table a few HU off.
        if head.cupping:
            xy, zz = inner_terms(g, head)
            xy_flat = xy.reshape(-1)
            for k in range(g.shape[0]):  # the brain voxels only, the same values as r_inner's
                sl = self.vol[k].reshape(-1)
                tissue = np.flatnonzero(self.inside[k] & (self.vol[k] < 100.0))
                r = np.sqrt(xy_flat[tissue] + zz[k, 0])
                ramp = np.clip((r - 0.75) / 0.25, 0.0, 1.0) ** 2
                sl[tissue] += np.float32(head.cupping) * ramp

    def floor_z(self, base: SkullBase) -> np.ndarray:
        """[H, W] height (mm) of the skull's inner floor: the anterior fossa over the orbits,
        the middle fossae (the sella between them higher), the posterior fossa sloping down
        behind the petrous ridges."""
        g, zb = self.g, self.skull_base_z
        ax, ay, _az = self.head.inner_axes
        yn = g.y[0] / ay  # [H, 1]
        xn = np.abs(g.x[0]) / ax  # [1, W]
        ant, mid, post = zb + base.anterior, zb + base.middle, zb - base.posterior
        # front of the middle fossae, then the petrous ridge: medially forward (the apex by
        # the clivus), laterally back (the mastoid)
        f = ant + (mid - ant) * np.clip((yn + 0.35) / 0.2, 0.0, 1.0)
        ridge = 0.35 * xn
        f = f + (post - mid) * np.clip((yn - ridge) / 0.3, 0.0, 1.0)
        f = f + 4.0 * np.clip(xn - 0.3, 0.0, None)  # the fossae deepest mid-way out
        # the orbital roofs dome up into the anterior fossa, the cribriform plate between them
        # lies low; no part of the floor is flat over a whole slice (a real one never is)
        front = np.clip(-(yn + 0.15) / 0.2, 0.0, 1.0)
        dome = np.exp(-0.5 * ((xn - base.orbit_x) / 0.2) ** 2 - 0.5 * ((yn + 0.65) / 0.22) ** 2)
        f = f + front * (base.dome * dome - 6.0 * (xn < 7.0 / ax))
        f = f + base.ripple * np.sin(0.21 * g.x[0] + 0.5 * base.dome) * np.sin(0.17 * g.y[0])
        sella = (xn < 14.0 / ax) & (yn > -0.3) & (yn < 0.0)
        return np.where(sella, np.maximum(f, zb + 0.5 * base.anterior), f).astype(np.float32)

    def _paint_floor(self, base: SkullBase) -> None:
        """Generator 4: the intracranial space ends at :meth:`floor_z`; a bone plate forms
        the floor and below it lie the face's tissues, orbits, ethmoid and maxillary sinuses,
        the nasal cavity and the nasopharynx. In front, under the anterior fossa, the skull's
        ring gives way to the face (thin walls of bone, not a closed ring)."""
        g, head = self.g, self.head
        ax, ay, _az = head.inner_axes
        floor = self.floor_z(base)
        outer = radius_terms(g, (0.0, 0.0, 0.0), head.skull_axes)
        front = (g.y[0] < -0.15 * ay) & np.ones(g.shape[1:], bool)
        plate_hu = np.float32(base.plate_hu * head.bone_hu)
        for k in range(g.shape[0]):
            z = float(g.z[k, 0, 0])
            below = z < floor
            cut = below & self.inside[k]
            if not below.any():
                continue
            sl = self.vol[k]
            sl[cut & (z >= floor - base.plate)] = plate_hu
            in_head = outer[0][0] + outer[1][k, 0, 0] <= 1.0
            face = (below & (z < floor - base.plate)) & (self.inside[k] | (front & in_head))
            # the face from the orbital roofs down: soft tissue where the skull ring was
            face &= self.inside[k] | (z < floor - base.plate - 4.0)
            sl[face] = np.float32(base.soft_hu)
            self.face[k] = face
            for m in (self.inside, self.white, self.sulci, self.ventricles, self.cistern):
                m[k] &= ~cut
        zo = self.skull_base_z + base.anterior - 16.0  # orbit centres
        rng = np.random.default_rng(base.detail_seed)
        fat, air = np.float32(base.fat_hu), np.float32(-950.0)
        wall = np.float32(0.5 * head.bone_hu)

        def paint(
            centre: Sequence[float],
            axes: Sequence[float],
            hu: np.float32,
            shell: float = 0.0,
            angle: float = 0.0,
        ) -> None:
            """An ellipsoid of ``hu`` in the face only, inside a bony shell if ``shell``."""
            if shell:
                paint(centre, tuple(a + shell for a in axes), wall, angle=angle)
            hit = ellipsoid_in(g, centre, axes, angle)
            if hit:
                self.vol[hit[0]][hit[1] & self.face[hit[0]]] = hu

        for side in (-1.0, 1.0):
            ox = side * base.orbit_x * ax
            paint((ox, -0.70 * ay, zo), (15.0, 24.0, 15.0), fat, shell=1.5)
            paint((ox, -0.88 * ay, zo), (11.5, 11.5, 11.5), np.float32(10.0))  # globe
            paint((ox, -0.88 * ay - 9.0, zo), (4.0, 1.8, 4.0), np.float32(85.0))  # lens
            paint((0.6 * ox, -0.45 * ay, zo + 2.0), (2.2, 16.0, 2.2), np.float32(35.0))  # nerve
            paint((side * 0.36 * ax, -0.62 * ay, zo - 34.0), (15.0, 17.0, 16.0), air, shell=1.5)
        # Ethmoid: a bony honeycomb between the orbits, then the nasal cavity under it.
        paint((0.0, -0.62 * ay, zo + 1.0), (11.0, 0.23 * ay, 12.0), wall)
        for _ in range(int(rng.integers(18, 30))):
            c = (uniform(rng, -8.0, 8.0), uniform(rng, -0.8, -0.42) * ay, zo + uniform(rng, -9, 10))
            paint(c, (uniform(rng, 1.5, 3.5),) * 3, air)
        paint((0.0, -0.62 * ay, zo - 32.0), (10.0, 0.25 * ay, 20.0), air)
        paint((0.0, -0.62 * ay, zo - 32.0), (1.0, 0.25 * ay, 20.0), wall)  # septum
        for side in (-1.0, 1.0):
            for dz in (-8.0, 4.0):
                turbinate = (side * 7.0, -0.62 * ay, zo - 32.0 + dz)
                paint(turbinate, (3.0, 0.22 * ay, 3.5), np.float32(base.soft_hu - 10.0))
        paint((0.0, -0.18 * ay, zo - 40.0), (11.0, 8.0, 12.0), air)  # nasopharynx

    def _paint_detail(self, rng: np.random.Generator) -> None:
        """What every real head CT has besides the large compartments: slow density
        variations of the brain (plane waves, 12-60 mm), the bony clutter of the skull base
        (clinoids, sphenoid wings, petrous apex: small dense bodies of any shape and density)
        with air cells (mastoid, sphenoid sinus), the tentorium (a thin dural sheet: faint
        partial-volume lines) and, in most scans, the head holder behind the head."""
        g, head = self.g, self.head
        ax, ay, _az = head.inner_axes
        # Brain texture.
        waves = []
        for _ in range(8):
            d = rng.normal(size=3)
            d /= float(np.linalg.norm(d)) or 1.0
            k = 2.0 * math.pi / uniform(rng, 12.0, 60.0)
            waves.append((d * k, uniform(rng, 0.0, 2.0 * math.pi)))
        amp = np.float32(head.texture_hu * math.sqrt(2.0 / len(waves)))
        w = g.shape[2]
        for j in range(g.shape[0]):  # the brain voxels only: their values as on whole planes
            z = float(g.z[j, 0, 0])
            sl = self.vol[j].reshape(-1)
            brain = np.flatnonzero(self.inside[j] & (self.vol[j] > 15.0) & (self.vol[j] < 60.0))
            xb, yb = g.x[0, 0][brain % w], g.y[0, :, 0][brain // w]
            field_ = np.zeros(len(brain), np.float32)
            for kv, phase in waves:
                field_ += np.sin(xb * kv[0] + yb * kv[1] + (z * kv[2] + phase))
            sl[brain] += amp * field_
        # Tentorium: from the transverse sinuses up to the incisura around the midbrain.
        zt = head.cistern_z - 3.0
        tent_hu = np.float32(uniform(rng, 42.0, 55.0))
        slope = uniform(rng, 0.25, 0.45)
        box = grid_box(g, (-ax, 0.0, zt - 2.0), (ax, ay, zt + slope * ay + 2.0))
        if box is not None:
            x, y, zz = grid_coords(g, box)
            r_xy = np.sqrt((x / ax) ** 2 + (y / ay) ** 2)
            height = zt + slope * ay * (1.0 - r_xy)
            sheet = (np.abs(zz - height) < 0.6) & (x**2 + (y - 10.0) ** 2 > 15.0**2) & (y > 0)
            sub = self.vol[box]
            sheet &= self.inside[box] & (sub < 100.0)
            sub[sheet] = tent_hu
        # Skull base clutter and air cells.
        zb = self.skull_base_z
        for _ in range(int(rng.integers(20, 41))):
            centre = (
                uniform(rng, -0.8, 0.8) * ax,
                uniform(rng, -0.8, 0.6) * ay,
                zb + uniform(rng, -8.0, 14.0),
            )
            axes = (uniform(rng, 1.5, 7.0), uniform(rng, 1.5, 7.0), uniform(rng, 1.5, 6.0))
            hu = uniform(rng, 250.0, 1400.0)
            hit = ellipsoid_in(g, centre, axes, uniform(rng, 0.0, math.pi))
            if hit:
                sub = self.vol[hit[0]]
                sub[hit[1] & (sub > -200.0)] = hu
        cells = [
            (
                (
                    side * uniform(rng, 0.75, 0.95) * ax,
                    uniform(rng, 0.1, 0.4) * ay,
                    zb + uniform(rng, -8, 6),
                ),
                (uniform(rng, 2.0, 5.0),) * 3,
            )
            for side in (-1.0, 1.0)
            for _ in range(4)
        ]
        cells.append(
            (
                (0.0, -0.3 * ay, zb - 6.0),
                (uniform(rng, 7, 11), uniform(rng, 7, 11), uniform(rng, 6, 9)),
            )
        )
        for centre, axes in cells:
            shell = ellipsoid_in(g, centre, tuple(a + 1.5 for a in axes))
            if shell:
                self.vol[shell[0]][shell[1]] = head.bone_hu * 0.8
            hit = ellipsoid_in(g, centre, axes)
            if hit:
                self.vol[hit[0]][hit[1]] = -900.0
        # Head holder: a thin dense arc behind the head, in most scans.
        if rng.random() < 0.7:
            gap = uniform(rng, 4.0, 20.0)
            s = head.scalp_thickness + head.skull_thickness + gap
            rr = np.sqrt((g.x[0] / (ax + s)) ** 2 + (g.y[0] / (ay + s)) ** 2)
            arc = (np.abs(rr - 1.0) * (ay + s) < uniform(rng, 0.8, 2.0)) & (g.y[0] > 0.2 * ay)
            holder_hu = np.float32(uniform(rng, 150.0, 600.0))
            for j in range(g.shape[0]):
                self.vol[j][arc & (self.vol[j] < -500.0)] = holder_hu

    def _paint_sinuses(self) -> None:
        """The dural venous sinuses, present in every head: superior sagittal (midline, under
        the vertex, widening backward), transverse and sigmoid (along the occipital and
        temporal inner table) and straight (torcula to the vein of Galen), all at the
        blood's HU (``sinus_hu``, 42-70: the range of an acute bleed's lower half)."""
        g, head = self.g, self.head
        _ax, ay, az = head.inner_axes
        big = head.sinus_radius
        zt = head.cistern_z - 3.0  # torcula / transverse sinus level
        segments: list[tuple[np.ndarray, np.ndarray, float]] = []

        def inset(p: np.ndarray, d: float, radial_xy: bool = False) -> np.ndarray:
            n = float(np.hypot(p[0], p[1])) if radial_xy else float(np.linalg.norm(p))
            if radial_xy:
                return np.array([p[0] * (1 - d / n), p[1] * (1 - d / n), p[2]])
            return p * (1.0 - d / max(n, 1e-3))

        phi_end = math.pi - math.asin(max(-0.9, min(0.9, zt / az)))
        phis = np.linspace(0.35, phi_end, 14)
        for a0, a1 in itertools.pairwise(phis):
            r = big * (0.35 + 0.65 * (a1 - phis[0]) / (phi_end - phis[0]))
            p0 = np.array([0.0, -ay * math.cos(a0), az * math.sin(a0)])
            p1 = np.array([0.0, -ay * math.cos(a1), az * math.sin(a1)])
            segments.append((inset(p0, r + 0.5), inset(p1, r + 0.5), r))
        torcula = inset(np.array(surface_point(head, math.pi / 2, zt)), big, radial_xy=True)
        for side in (-1.0, 1.0):
            thetas = math.pi / 2 - side * np.linspace(0.0, 1.15, 7)
            pts = [
                np.array(surface_point(head, float(t), zt - 4.0 * i / 6.0))
                for i, t in enumerate(thetas)
            ]
            thetas2 = math.pi / 2 - side * np.linspace(1.15, 1.5, 4)
            pts2 = [
                np.array(surface_point(head, float(t), zt - 4.0 - 22.0 * i / 3.0))
                for i, t in enumerate(thetas2)
            ]
            for seq, r in ((pts, 0.8 * big), (pts2, 0.7 * big)):
                for q0, q1 in itertools.pairwise(seq):
                    segments.append((inset(q0, r + 0.5, True), inset(q1, r + 0.5, True), r))
        galen = np.array([0.0, head.ventricle_axes[1] * 0.6, head.ventricle_z - 6.0])
        segments.append((torcula, galen, 0.5 * big))
        self.sinus = np.zeros(g.shape, dtype=bool)
        boxes = []
        for p0, p1, r in segments:
            hit = capsule_in(g, list(p0), list(p1), r)
            if hit:
                self.sinus[hit[0]] |= hit[1]
                boxes.append(hit[0])
        around = union_box(boxes)  # nothing is set outside it
        if around is not None:
            sinus = self.sinus[around]
            sinus &= self.inside[around] & ~self.ventricles[around]
            self.vol[around][sinus] = head.sinus_hu

    @functools.cached_property
    def r_inner(self) -> np.ndarray:
        """Normalised ellipsoidal radius w.r.t. the inner table (1.0 on it), full grid."""
        xy, zz = inner_terms(self.g, self.head)
        out = np.empty(self.g.shape, dtype=np.float32)
        for k in range(self.g.shape[0]):
            np.sqrt(xy + zz[k : k + 1], out=out[k : k + 1])
        return out

    def brain_tissue(self, margin: float = 3.0) -> np.ndarray:
        """Parenchyma at least ``margin`` mm inside the inner table, not CSF spaces."""
        return (
            within_inner(self.g, self.head, margin)
            & ~self.ventricles
            & ~self.cistern
            & ~self.sulci
            & (self.vol < 60.0)
            & (self.vol > 20.0)
            & (self.g.z > self.skull_base_z + 12.0)
            & self.inside
        )


def surface_point(head: Head, theta: float, z: float) -> tuple[float, float, float]:
    """The inner-table point at azimuth ``theta`` (radians, 0 = patient left) and height z."""
    ax, ay, az = head.inner_axes
    k = math.sqrt(max(1.0 - (z / az) ** 2, 0.05))
    return (ax * k * math.cos(theta), ay * k * math.sin(theta), z)


def _paint_iph(c: HeadCanvas, rng: np.random.Generator, size: float, hu: float) -> np.ndarray:
    """Intraparenchymal: lobulated (2-3 ellipsoids) blood with a thin oedema rim."""
    head, g = c.head, c.g
    ax, ay, az = head.inner_axes
    room = max(ax * 0.62 - size / 2, 8.0)
    lateral = min(2.0 * head.ventricle_axes[0] + 4.0 + size / 3.0, 0.9 * room)  # off midline
    side = 1.0 if rng.random() < 0.5 else -1.0
    centre = (
        side * uniform(rng, lateral, room),
        uniform(rng, -0.55, 0.55) * ay,
        uniform(rng, head.cistern_z + 14.0 + size / 2, 0.45 * az),
    )
    mask = np.zeros(g.shape, dtype=bool)
    for k in range(int(rng.integers(1, 4))):
        r = size / 2 * (1.0 if k == 0 else uniform(rng, 0.4, 0.7))
        off = (0.0, 0.0, 0.0) if k == 0 else tuple(uniform(rng, -0.5, 0.5) * size for _ in range(3))
        axes = (r * uniform(rng, 0.8, 1.2), r * uniform(rng, 0.8, 1.2), r * uniform(rng, 0.8, 1.2))
        hit = ellipsoid_in(
            g, tuple(a + b for a, b in zip(centre, off, strict=True)), axes, uniform(rng, 0, 3.14)
        )
        if hit:
            mask[hit[0]] |= hit[1]
    mask &= c.brain_tissue(3.0) | (c.vol > 20.0) & within_inner(g, head, 3.0)
    mask &= ~c.ventricles
    if size >= 10.0:  # perilesional oedema (hypodense), painted first
        rim = ellipsoid_in(g, centre, (size / 2 + 3.0,) * 3)
        if rim:
            oedema = full_mask(g, *rim) & c.brain_tissue(3.0) & ~mask
            c.vol[oedema] = np.minimum(c.vol[oedema], head.white_hu - 8.0)
    c.vol[mask] = hu
    return mask


def _paint_subdural(c: HeadCanvas, rng: np.random.Generator, size: float, hu: float) -> np.ndarray:
    """Subdural: a crescent under the inner table, crossing sutures, tapering at its ends."""
    g, head = c.g, c.head
    theta0 = uniform(rng, 0, 2 * math.pi)
    half = uniform(rng, 0.6, 1.1)  # angular half-extent, radians
    z0 = uniform(rng, 0.0, 0.4 * head.inner_axes[2])
    zh = uniform(rng, 25.0, 45.0)
    theta = np.arctan2(g.y, g.x)
    dang = np.angle(np.exp(1j * (theta - theta0)))
    across = np.clip(1.0 - (dang / half) ** 2, 0.0, None)
    along = np.clip(1.0 - ((g.z - z0) / zh) ** 2, 0.0, None)
    mean_axis = float(np.mean(head.inner_axes))
    xy, zz = inner_terms(g, head)
    mask = np.zeros(g.shape, dtype=bool)
    # slice by slice, only where the taper is not zero above the skull base: the same values
    # as on the whole grid (r as r_inner's)
    for k in np.flatnonzero((along[:, 0, 0] > 0) & (g.z[:, 0, 0] > c.skull_base_z + 6.0)):
        z = slice(k, k + 1)
        taper = across * along[z]
        depth = size * np.sqrt(taper)  # mm from the inner table
        r = np.sqrt(xy + zz[z])
        near = (r > 1.0 - depth / mean_axis) & (taper > 0)
        np.logical_and(c.inside[z] & near, ~c.falx[z], out=mask[z])
    c.vol[mask] = hu
    return mask


def _paint_epidural(c: HeadCanvas, rng: np.random.Generator, size: float, hu: float) -> np.ndarray:
    """Epidural: a biconvex lens against the inner table (does not cross sutures)."""
    g, head = c.g, c.head
    theta = uniform(rng, 0, 2 * math.pi)
    z = uniform(rng, 0.05, 0.45) * head.inner_axes[2]
    p = surface_point(head, theta, z)
    along = uniform(rng, 2.2, 3.2) * size
    hit = ellipsoid_in(g, p, (size, along, along * 0.8), theta)
    if hit is None:
        return np.zeros(g.shape, dtype=bool)
    mask = full_mask(g, *hit) & c.inside
    c.vol[mask] = hu
    return mask


def _paint_subarachnoid(
    c: HeadCanvas, rng: np.random.Generator, size: float, hu: float
) -> np.ndarray:
    """Subarachnoid: blood in the sulci of a region and/or in the basal cisterns."""
    g = c.g
    mask = np.zeros(g.shape, dtype=bool)
    if rng.random() < 0.5 and c.cistern.any():
        mask |= c.cistern
        if rng.random() < 0.5:  # only part of the cisterns
            mask &= g.x * uniform(rng, -1, 1) + g.y * uniform(rng, -1, 1) > 0
    centre = surface_point(
        c.head, uniform(rng, 0, 2 * math.pi), uniform(rng, 0.05, 0.5) * c.head.skull_axes[2]
    )
    reach = max(size * 2.0, 12.0)
    hit = ellipsoid_in(g, centre, (reach, reach, reach * 0.8))
    if hit:
        mask |= full_mask(g, *hit) & c.sulci
    blood = c.head.csf_hu + (hu - c.head.csf_hu) * uniform(rng, 0.8, 1.0)  # mixed with CSF
    c.vol[mask] = blood
    return mask


def _paint_intraventricular(
    c: HeadCanvas, rng: np.random.Generator, size: float, hu: float
) -> np.ndarray:
    """Intraventricular: blood layering in the dependent (posterior) part of a ventricle."""
    g, head = c.g, c.head
    centre = head.ventricle_centres()[int(rng.integers(2))]
    vy = head.ventricle_axes[1]
    level = centre[1] + vy - min(size, 1.6 * vy)  # fluid level: y >= level (posterior)
    mask = c.ventricles & (g.y >= level) & (np.abs(g.x - centre[0]) < head.ventricle_axes[0] + 1.0)
    if rng.random() < 0.4:  # both sides
        mask |= c.ventricles & (g.y >= level)
    c.vol[mask] = hu
    return mask


_HEAD_PAINTERS = {
    "intraparenchymal": (_paint_iph, (3.0, 40.0), (55.0, 85.0)),
    "subdural": (_paint_subdural, (2.0, 15.0), (55.0, 80.0)),
    "epidural": (_paint_epidural, (4.0, 20.0), (60.0, 90.0)),
    "subarachnoid": (_paint_subarachnoid, (3.0, 20.0), (55.0, 75.0)),
    "intraventricular": (_paint_intraventricular, (3.0, 20.0), (55.0, 80.0)),
}


def _head_mimics(c: HeadCanvas, rng: np.random.Generator, mimics: Sequence[str]) -> None:
    g, head = c.g, c.head
    draws = {m: rng.random(8) for m in HEAD_MIMICS}  # fixed consumption
    if "choroid_calcification" in mimics:
        r = draws["choroid_calcification"]
        for k, (cx, cy, cz) in enumerate(head.ventricle_centres()):
            hit = ellipsoid_in(
                g,
                (cx, cy + 0.6 * head.ventricle_axes[1], cz - 2.0),
                (1.5 + 2.0 * r[k], 2.0 + 2.5 * r[k + 2], 1.5 + 1.5 * r[k + 4]),
            )
            if hit:
                c.vol[hit[0]][hit[1]] = 120.0 + 250.0 * r[6]
    if "pineal_calcification" in mimics:
        r = draws["pineal_calcification"]
        hit = ellipsoid_in(
            g, (0.0, 16.0 + 4.0 * r[0], head.ventricle_z - 10.0), (1.5 + 2.0 * r[1],) * 3
        )
        if hit:
            c.vol[hit[0]][hit[1]] = 100.0 + 300.0 * r[2]
    if "falx_calcification" in mimics:
        r = draws["falx_calcification"]
        for k in range(2):
            y0 = (-0.7 + 1.0 * r[k]) * head.inner_axes[1]
            z0 = head.cistern_z + 20.0 + 40.0 * r[k + 2]
            length = 8.0 + 20.0 * r[k + 4]
            rows = np.abs(g.y[0] - y0) < length / 2
            for j in np.flatnonzero(np.abs(g.z[:, 0, 0] - z0) < 10.0):
                c.vol[j][c.falx[j] & rows] = 200.0 + 400.0 * r[6]
    if "beam_hardening" in mimics:
        r = draws["beam_hardening"]
        # Alternating dark/bright bands between the petrous ridges (Hounsfield bar) and
        # streaks fanning from them, in the slices just above the skull base.
        zmask = np.abs(g.z[:, 0, 0] - (c.skull_base_z + 6.0 + 6.0 * r[0])) < 6.0
        dy, dx = g.y - 12.0, g.x
        ang = np.arctan2(dy, dx)
        rad = np.hypot(dy, dx)
        fan = np.sin(9.0 * ang + 6.0 * r[1]) * np.exp(-rad / (20.0 + 15.0 * r[2]))
        bar = -30.0 * np.exp(-((dy / 3.5) ** 2)) * (np.abs(dx) < 30.0)
        change = ((20.0 + 25.0 * r[3]) * fan + bar)[0]
        for j in np.flatnonzero(zmask):  # the slices it is in; elsewhere it added 0
            brain = c.inside[j] & (c.vol[j] < 100.0)
            c.vol[j] += np.where(brain, change, 0.0).astype(np.float32)
    if "motion" in mimics:
        r = draws["motion"]
        n = g.shape[0]
        k0 = int(r[0] * max(n - 1, 1))
        k1 = min(n, k0 + max(2, int(n * (0.2 + 0.4 * r[1]))))
        shift = max(1, round((2.0 + 4.0 * r[2]) / g.spacing))
        axis = 1 if r[3] < 0.5 else 2
        part = c.vol[k0:k1]
        c.vol[k0:k1] = 0.6 * part + 0.4 * np.roll(part, shift, axis=axis)


def render_head(
    spec: PhantomSpec, seed: int, g: Grid
) -> tuple[np.ndarray, np.ndarray, list[Lesion]]:
    head = draw_head(np.random.default_rng([seed, 0]))
    base = draw_skull_base(np.random.default_rng([seed, 4])) if spec.generator >= 4 else None
    c = HeadCanvas(g, head, base)
    lesion = np.zeros(g.shape, dtype=bool)
    lesions: list[Lesion] = []
    lrng = np.random.default_rng([seed, 2])
    for i, kind in enumerate(spec.subtypes):
        painter, (lo, hi), (hlo, hhi) = _HEAD_PAINTERS[kind]
        size = spec.size_mm if (spec.size_mm is not None and i == 0) else log_uniform(lrng, lo, hi)
        hu = uniform(lrng, hlo, hhi)
        m = painter(c, lrng, size, hu)
        for _ in range(4):  # rare: drawn where nothing may bleed (e.g. all CSF); draw again
            if m.any():
                break
            m = painter(c, lrng, size, hu)
        lesion |= m
        lesions.append(measure_lesion(g, kind, size, m))
    _head_mimics(c, np.random.default_rng([seed, 3]), spec.mimics)
    return c.vol, lesion, lesions
