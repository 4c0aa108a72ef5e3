"""Independent non-contrast head CT painter (the ich side of the crosscheck generator).

Written from CT anatomy and physics and the ranges in ``/work/shared/notes/ct-realism.md``,
apart from the training generator. Every number is drawn per study from a range; where a range
comes from is said beside it (``realism``: that note; ``GE head``: what the real GE HiSpeed head
in ``/work/shared/data/dicom/ge-head-ct`` measures - brain 20-57 HU at the 5th-95th centile,
noise about 3-6 HU in 4-7 mm slices, cortical bone up to 1500-2100 HU; ``anatomy``: textbook
adult dimensions, scaled with a head size drawn per study).

How a study is made:

- Geometry. A head frame ``(u, v, w)`` in mm (u to the patient's left, v posterior, w superior,
  origin at the centre of the cranial vault) is placed in the scanner with an offset of up to
  about 2 cm and a yaw / pitch / roll (in-plane rotation up to 12 deg, chin-down pitch up to
  18 deg as sites align to the orbitomeatal line instead of tilting the gantry).
- Every output slice is the average of ``ceil(thickness / 1 mm)`` sub-planes across its
  thickness (a box slice profile). The skull's inner and outer tables get an analytic coverage
  in each sub-plane (the fraction of a slab one sub-plane thick and one pixel wide that lies in
  bone, from the distance to the surface and the surface's slope), so a 5 mm slice through the
  curved vertex or skull base averages bone and brain into the 50-200 HU voxels real scans
  have (realism: "Partial volume across the slice").
- Anatomy: scalp (skin, fat, galea; temporalis over the temporal squama), a skull with
  cortical tables and diploe (thicker at the vertex and occiput, thin temporal squama, frontal
  sinus in some), a skull base (anterior fossa over the orbits, middle fossa with the sphenoid
  ridge and sella, posterior fossa to the foramen magnum; petrous ridges, clivus, mastoid and
  sphenoid air, ethmoid and nasal air, maxillary sinuses, orbits with globe, lens and fat,
  zygomatic arches, C1 and dens), the brain: cortex as a ribbon along gyri whose sulci are
  radial sheets of a random field, white matter, caudate, lentiform and thalami, lateral /
  third / fourth ventricles, Sylvian and interhemispheric fissures, basal cisterns, cisterna
  magna, cerebellum with folia and brainstem, falx and tentorium, the superior sagittal,
  straight, transverse and sigmoid sinuses and the basilar, middle cerebral and carotid
  arteries (flowing blood 40-70 HU from a haematocrit drawn per study; realism), and the
  physiological calcifications (pineal, choroid plexus, falx, globus pallidus, carotid siphon
  walls) with prevalences rising with age - in negatives and positives alike.
- Age (18-95, skewed old as head CT patients are) widens sulci, fissures, ventricles and the
  CSF over the convexity and makes calcifications more frequent.
- Positives carry one kind (sometimes two): epidural (a lens within one bone, stopped short of
  the coronal and lambdoid sutures), subdural (a crescent over a convexity, crossing sutures,
  not the midline; acute 50-80 HU, a third subacute 30-45 HU with mass effect, noted
  ``subacute``), subarachnoid (blood mixed with CSF in sulci, Sylvian fissure or basal
  cisterns), intraparenchymal (irregular, 5-50 mm, basal ganglia / lobar / cerebellar /
  pontine, often an oedema rim), intraventricular (a dependent layer in the occipital horns,
  level by gravity in the scanner frame, sometimes a third / fourth ventricle cast). Large ones
  shift the midline, compress the ipsilateral ventricle and efface the sulci near them.
- Acquisition: kernel (soft / standard / sharp: a 3-tap in-plane blur or edge enhancement),
  correlated noise (white noise shaped into a mid-frequency texture, 3-6 HU at 5 mm scaled by
  1/sqrt(thickness), higher in the posterior fossa; realism, GE head), beam hardening (a dark
  band between the petrous bones, streaks from the skull base), a denser rim under the skull or
  cupping, a calibration offset of a few HU (realism: accreditation tolerance), kVp, a carbon
  head holder with a foam pad under the occiput, the reconstruction circle.

``lesion`` marks the voxels of the written slices that are at least half haemorrhage (the
mean over the sub-planes of the lesion fraction, inner-table coverage included, is >= 0.5);
oedema is not haemorrhage and is not marked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triage.crosscheck.dicomio import Acquisition, StudyHeader
from triage.crosscheck.study import CrossStudy, Painted, write_painted

__all__ = ["CLASS_NAMES", "KINDS", "Detail", "paint", "paint_detail", "write_study"]

KINDS = ("epidural", "subdural", "subarachnoid", "intraparenchymal", "intraventricular")

# tissue classes (uint8)
AIR, FAT, SOFT, CSF, CSF_SULC, CSF_FISS, CSF_CIST, CSF_VENT = range(8)
GM, WM, DEEP, CBL, STEM, DURA, SINUS, ARTERY, CALC = range(8, 17)
BONE, AIRCELL, GLOBE, LENS, FOAM, HOLDER, OEDEMA = range(17, 24)
EDH, SDH, SAH, IPH, IVH = range(30, 35)
TABLE = 40  # vault/base bone painted analytically (cortex and diploe)
LESION_MIN = EDH  # classes EDH..IVH are haemorrhage
LESION_CLASSES = (EDH, SDH, SAH, IPH, IVH)
NCLS = 48
CLASS_NAMES = {
    AIR: "air", FAT: "fat", SOFT: "soft", CSF: "csf", CSF_SULC: "csf_sulcal",
    CSF_FISS: "csf_fissure", CSF_CIST: "csf_cistern", CSF_VENT: "csf_ventricle", GM: "gm",
    WM: "wm", DEEP: "deep_gm", CBL: "cerebellum", STEM: "brainstem", DURA: "dura",
    SINUS: "venous_sinus", ARTERY: "artery", CALC: "calcification", BONE: "bone",
    AIRCELL: "air_cells", GLOBE: "globe", LENS: "lens", FOAM: "foam", HOLDER: "holder",
    OEDEMA: "oedema", EDH: "epidural", SDH: "subdural", SAH: "subarachnoid",
    IPH: "intraparenchymal", IVH: "intraventricular", TABLE: "skull",
}  # fmt: skip

SUBPLANE_MM = 1.0  # sub-plane spacing across the slice thickness
STEP = 2  # in-plane painting step (pixels); the painted HU is upsampled bilinearly
SLAB_PLANES = 24  # sub-planes painted at once (memory: ~30 arrays of planes x crop float32)


@dataclass(frozen=True)
class Detail:
    """What tests measure a painted study by: per output voxel the tissue class at the slice
    centre and whether the voxel is pure (every sub-plane the same class, no skull coverage),
    the painted HU before kernel, noise and calibration, and the drawn parameters."""

    cls: np.ndarray  # uint8 [z, rows, cols]
    pure: np.ndarray  # bool [z, rows, cols]
    clean: np.ndarray  # float32 [z, rows, cols]: HU before kernel/noise/offset
    lut: dict[int, float]
    params: dict[str, float]
    head_w: np.ndarray  # float32 [z]: head-frame w of each slice centre at the head axis


def _sig(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cr, 0, sr], [0, 1, 0], [-sr, 0, cr]])
    return rz @ rx @ ry


class _Params:
    """Everything drawn for one study (a plain namespace; see the module docstring)."""

    def __init__(self, rng: np.random.Generator, label: bool, matrix: int) -> None:
        r = rng
        self.matrix = matrix
        # --- patient
        self.age = float(np.clip(r.normal(64, 17), 18, 95))  # head CT patients skew old
        self.atrophy = float(np.clip((self.age - 30) / 60, 0, 1) * r.uniform(0.5, 1.25))
        self.sex = str(r.choice(["F", "M"]))
        s = r.uniform(0.9, 1.07) * (1.03 if self.sex == "M" else 0.98)  # anatomy
        self.s = s
        self.a, self.b = 67 * s * r.uniform(0.94, 1.06), 85 * s * r.uniform(0.95, 1.05)
        self.c, self.c_low = 64 * s * r.uniform(0.94, 1.06), 76 * s
        self.t0 = r.uniform(4.5, 6.5)  # vault thickness mm (anatomy)
        self.k_vertex, self.k_occ = r.uniform(0.1, 0.45), r.uniform(0.2, 0.6)
        self.temporal = r.uniform(0.35, 0.6)  # squama / base thickness ratio
        self.t_ic, self.t_oc = r.uniform(0.8, 1.4), r.uniform(1.2, 2.0)
        self.frontal_sinus = r.random() < 0.8
        self.scalp = r.uniform(4.0, 7.0)
        self.scalp_fat = r.uniform(1.0, 3.0)
        self.skin = r.uniform(1.5, 2.5)
        at = self.atrophy
        self.gap = r.uniform(0.4, 1.2) + 3.0 * at  # convexity CSF (realism: widens with age)
        self.sulc_w = r.uniform(0.25, 0.5) + 1.3 * at  # sulcal half width
        self.sulc_depth = r.uniform(12, 18)
        self.ribbon = r.uniform(2.4, 3.4)  # cortical thickness
        self.fiss_w = r.uniform(0.6, 1.2) + 2.5 * at
        self.sylv_w = r.uniform(0.6, 1.2) + 2.0 * at
        self.vent = r.uniform(0.75, 1.0) + 0.9 * at  # lateral ventricle width factor
        self.vent3 = r.uniform(1.0, 2.0) + 3.0 * at
        self.gyr_lambda = r.uniform(20, 27)
        self.gyr_k = r.normal(size=(5, 3))
        self.gyr_k /= np.linalg.norm(self.gyr_k, axis=1, keepdims=True)
        self.gyr_phi = r.uniform(0, 2 * math.pi, 5)
        self.folia = r.uniform(5.0, 7.5)
        # --- densities (HU, before calibration offset)
        kvp = float(r.choice([100.0, 120.0, 120.0, 120.0, 140.0]))
        self.kvp = kvp
        bone_k = 1.0 + 0.12 * (120 - kvp) / 20  # bone HU falls with kVp
        wm = r.uniform(21, 30)  # realism 20-30; GE head 25-30
        gm = wm + r.uniform(7, 12)  # realism: difference 8-12
        csf = r.uniform(1, 12)
        self.hct = r.uniform(0.30, 0.55)
        blood = 40 + (self.hct - 0.30) * 120  # realism: 40-60, 60-70 with high haematocrit
        self.blood = blood
        lut = np.zeros(NCLS, np.float32)
        lut[AIR] = r.uniform(-1010, -990)
        lut[FAT] = r.uniform(-110, -70)
        lut[SOFT] = r.uniform(35, 55)
        lut[[CSF, CSF_SULC, CSF_FISS, CSF_CIST, CSF_VENT]] = csf
        lut[GM], lut[WM] = gm, wm
        lut[DEEP] = gm - r.uniform(0, 3)
        lut[CBL] = gm - r.uniform(0, 4)
        lut[STEM] = wm + r.uniform(0, 5)
        lut[DURA] = r.uniform(45, 70)
        lut[SINUS] = lut[ARTERY] = blood
        lut[CALC] = r.uniform(180, 700)  # realism: 100 to over 1000
        lut[BONE] = r.uniform(1300, 1900) * bone_k  # petrous, clivus: dense
        lut[AIRCELL] = r.uniform(-960, -850)  # air cells: air with bony septa
        lut[GLOBE], lut[LENS] = r.uniform(4, 15), r.uniform(70, 120)
        lut[FOAM], lut[HOLDER] = r.uniform(-950, -800), r.uniform(100, 350)
        lut[OEDEMA] = wm - r.uniform(5, 12)
        self.cortex = r.uniform(1150, 1750) * bone_k  # realism: 1000-2000 (kernel)
        self.diploe = r.uniform(300, 750) * bone_k  # realism: 200-800
        self.lut = lut
        # --- placement
        self.offset = np.array([r.uniform(-15, 15), r.uniform(-20, 10), 0.0])
        self.yaw = math.radians(r.uniform(-12, 12))
        self.pitch = math.radians(r.uniform(-8, 18))
        self.roll = math.radians(r.uniform(-5, 5))
        self.R = _rotation(self.yaw, self.pitch, self.roll)
        # --- acquisition (a site's mix: 5 mm most common, thin recons from modern scanners)
        t, sp = [(5.0, 5.0), (5.0, 5.0), (5.0, 5.0), (5.0, 4.0), (2.5, 2.5), (3.0, 3.0),
                 (1.25, 1.25), (1.25, 0.625), (0.625, 0.625),
                 (1.0, 1.0)][r.integers(10)]  # fmt: skip
        self.thick, self.spacing = t, sp
        self.fov = r.uniform(210, 250)  # realism: 200-250 mm
        self.ps = self.fov / 512
        self.w_top = self.c + self.t0 * (1 + self.k_vertex) + self.scalp - r.uniform(0, 5)
        self.w_bottom = -r.uniform(70, 82)  # foramen magnum / C1
        self.kernel_kind = str(r.choice(["soft", "standard", "standard", "sharp"]))
        self.noise5 = r.uniform(3.0, 5.5)  # realism 3-6 HU at 5 mm; GE head
        self.noise_pf = r.uniform(1.2, 1.8)  # posterior fossa noise factor
        self.calib = float(np.clip(r.normal(0, 2.5), -6, 6))  # realism +-5-7 HU
        self.bh_bar = r.uniform(6, 25)  # Hounsfield bar depth, HU
        self.streaks = int(r.integers(2, 9))
        self.rim = r.uniform(-3, 7)  # >0 a denser rim under the skull, <0 cupping
        self.rim_len = r.uniform(4, 12)
        self.holder_gap = r.uniform(3, 15)
        # --- physiological calcifications (prevalence rises with age)
        ag = float(np.clip((self.age - 20) / 50, 0, 1))
        self.calc_pineal = r.random() < 0.2 + 0.6 * ag
        self.calc_choroid = r.random() < 0.25 + 0.55 * ag
        self.calc_falx = r.random() < 0.05 + 0.45 * ag
        self.calc_bg = r.random() < 0.03 + 0.2 * ag
        self.calc_siphon = r.random() < 0.1 + 0.6 * ag
        self.rng = r
        self.calc_seed = int(r.integers(2**31))


def _ell(u: np.ndarray, v: np.ndarray, w: np.ndarray, c: tuple, h: tuple) -> np.ndarray:
    return ((u - c[0]) / h[0]) ** 2 + ((v - c[1]) / h[1]) ** 2 + ((w - c[2]) / h[2]) ** 2 < 1.0


def _tube(u, v, w, p0, p1, r):
    """Points within ``r`` of the segment p0-p1."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    L2 = float(d @ d)
    t = np.clip(((u - p0[0]) * d[0] + (v - p0[1]) * d[1] + (w - p0[2]) * d[2]) / L2, 0, 1)
    return (u - p0[0] - t * d[0]) ** 2 + (v - p0[1] - t * d[1]) ** 2 + (
        w - p0[2] - t * d[2]
    ) ** 2 < r * r


class _Lesions:
    """The drawn finding(s) of a positive: parameters only, painted by the slab painter."""

    def __init__(self, p: _Params, label: bool) -> None:
        r = p.rng
        self.kinds: list[str] = []
        self.notes: list[str] = []
        self.conv: list[tuple] = []  # convexity lenses/crescents
        self.iph: tuple | None = None
        self.sah: list[tuple] = []
        self.ivh: tuple | None = None
        self.shift = 0.0  # midline shift, mm (toward -side_sign... signed along u)
        self.efface: tuple | None = None  # (centre, sigma, strength)
        self.vent_squeeze = (0.0, 0.0)  # left, right lateral ventricle compression
        if not label:
            return
        first = str(r.choice(KINDS, p=[0.15, 0.27, 0.22, 0.24, 0.12]))
        kinds = [first]
        if r.random() < 0.25:
            other = str(r.choice([k for k in KINDS if k != first]))
            kinds.append(other)
        acute = max(48.0, p.blood + r.uniform(8, 28))  # realism: acute 50-100
        for k in kinds:
            getattr(self, "_" + k)(p, r, acute)
            self.kinds.append(k)
        for c in self.conv:
            p.lut[c[0]] = c[6]
        if self.iph is not None:
            p.lut[IPH] = self.iph[5]
        for c in self.sah:
            p.lut[SAH] = c[2]
        if self.ivh is not None:
            p.lut[IVH] = self.ivh[2]

    def _direction(self, az: float, el: float, side: float) -> np.ndarray:
        a, e = math.radians(az), math.radians(el)
        return np.array([side * math.sin(a) * math.cos(e), -math.cos(a) * math.cos(e), math.sin(e)])

    def _mass(self, p: _Params, centre: np.ndarray, side: float, size: float) -> None:
        # size: an equivalent diameter in mm; mass effect from ~25 mm up
        if size < 25:
            return
        shift = min(14.0, (size - 20) * p.rng.uniform(0.15, 0.35))
        self.shift += -side * shift  # contents pushed away from the lesion's side
        self.efface = (centre, 15 + size * 0.8, p.rng.uniform(0.6, 1.0))
        sq = min(0.8, (size - 20) / 50)
        if side > 0:
            self.vent_squeeze = (sq, self.vent_squeeze[1])
        else:
            self.vent_squeeze = (self.vent_squeeze[0], sq)
        if shift >= 2:
            self.notes.append("midline_shift")

    def _epidural(self, p: _Params, r: np.random.Generator, acute: float) -> None:
        side = float(r.choice([-1.0, 1.0]))
        az = r.uniform(78, 118)  # temporoparietal, between coronal (~60) and lambdoid (~135)
        el = r.uniform(-8, 35)
        lim = min(az - 64, 130 - az, 58 - el, el + 30)  # stops short of the sutures
        theta = math.radians(min(r.uniform(10, 28), max(lim, 8)))
        tmax = r.uniform(4, 24)
        n0 = self._direction(az, el, side)
        hu = acute + r.uniform(0, 10)
        self.conv.append((EDH, n0, theta, theta, tmax, 0.7, hu, side))
        self._mass(p, n0 * np.array([p.a, p.b, p.c]), side, tmax * 1.6 + theta * 40)

    def _subdural(self, p: _Params, r: np.random.Generator, acute: float) -> None:
        side = float(r.choice([-1.0, 1.0]))
        az, el = r.uniform(45, 130), r.uniform(0, 40)
        th1, th2 = math.radians(r.uniform(35, 70)), math.radians(r.uniform(25, 50))
        tmax = float(r.choice([r.uniform(2, 5), r.uniform(5, 18)], p=[0.35, 0.65]))
        subacute = r.random() < 0.3
        if subacute:
            hu = r.uniform(30, 45)  # realism: isodense at 1-3 weeks
            tmax = max(tmax, r.uniform(6, 16))
            self.notes.append("subacute")
        else:
            hu = float(np.clip(acute, 50, 80))
        n0 = self._direction(az, el, side)
        self.conv.append((SDH, n0, th1, th2, tmax, 0.45, hu, side))
        size = tmax * 2.2 + 10 if not subacute else tmax * 2.5 + 15
        self._mass(p, n0 * np.array([p.a, p.b, p.c]), side, size)

    def _subarachnoid(self, p: _Params, r: np.random.Generator, acute: float) -> None:
        frac = r.uniform(0.45, 1.0)  # blood mixed with CSF
        hu = float(p.lut[CSF] + frac * (acute - p.lut[CSF]))
        pattern = str(r.choice(["convexity", "sylvian", "basal"], p=[0.45, 0.25, 0.3]))
        side = float(r.choice([-1.0, 1.0]))
        if pattern == "convexity":
            n0 = self._direction(r.uniform(20, 150), r.uniform(0, 55), side)
            centre = n0 * np.array([p.a, p.b, p.c]) * 0.9
            self.sah.append((centre, r.uniform(10, 35), hu))
        elif pattern == "sylvian":
            self.sah.append((np.array([side * 40, -10.0, -6.0]) * p.s, r.uniform(12, 30), hu))
        else:
            self.sah.append((np.array([0.0, -5.0, -28.0]) * p.s, r.uniform(18, 35), hu))
            if r.random() < 0.6:
                self.sah.append((np.array([side * 35, -10.0, -8.0]) * p.s, r.uniform(8, 22), hu))
        self.notes.append("sah_" + pattern)

    def _intraparenchymal(self, p: _Params, r: np.random.Generator, acute: float) -> None:
        site = str(r.choice(["deep", "lobar", "cerebellar", "pontine"], p=[0.45, 0.35, 0.13, 0.07]))
        side = float(r.choice([-1.0, 1.0]))
        s = p.s
        if site == "deep":
            c = np.array([side * r.uniform(14, 28), r.uniform(-12, 10), r.uniform(-6, 10)]) * s
            dmax = 45.0
        elif site == "lobar":
            n0 = self._direction(r.uniform(10, 160), r.uniform(-5, 50), side)
            c = n0 * np.array([p.a, p.b, p.c]) * r.uniform(0.55, 0.75)
            dmax = 50.0
        elif site == "cerebellar":
            c = np.array([side * r.uniform(12, 30), r.uniform(35, 50), -45.0]) * s
            dmax = 35.0
        else:
            c = np.array([r.uniform(-4, 4), 10.0 * s, -38.0 * s])
            dmax = 20.0
        diam = float(min(dmax, np.exp(r.uniform(math.log(5), math.log(50)))))
        rad = diam / 2
        hu = float(acute + r.uniform(0, 12))
        oedema = r.uniform(0.15, 0.6) * rad + 2 if r.random() < 0.65 and diam > 8 else 0.0
        wav = r.normal(size=(3, 3))
        wav /= np.linalg.norm(wav, axis=1, keepdims=True)
        amp = r.uniform(0.05, 0.2, 3)
        ax = r.uniform(0.75, 1.25, 3)
        self.iph = (c, rad, ax, wav, amp, hu, oedema)
        self.notes.append("iph_" + site)
        self._mass(p, c, side if abs(c[0]) > 5 else 1.0, diam + oedema * 1.5)

    def _intraventricular(self, p: _Params, r: np.random.Generator, acute: float) -> None:
        sides = [(-1.0, 1.0), (-1.0,), (1.0,)][int(r.choice(3, p=[0.6, 0.2, 0.2]))]
        depth = r.uniform(2, 8)  # layer thickness from the most dependent point
        cast = r.random() < 0.3
        self.ivh = (sides, depth, float(acute + r.uniform(-5, 8)), cast)


class _Painter:
    """Paints sub-planes on a grid of every ``STEP``-th pixel of the crop holding the head."""

    def __init__(self, p: _Params, les: _Lesions) -> None:
        self.p = p
        self.les = les
        M = p.matrix
        self.ps = p.fov / M
        self.coord = (np.arange(M) - (M - 1) / 2) * self.ps  # x of columns, y of rows
        self.P0 = p.offset
        self.A = p.R.T  # scanner -> head frame
        ext = max(p.a, p.b) + 28
        cx = np.clip(np.searchsorted(self.coord, [self.P0[0] - ext, self.P0[0] + ext]), 0, M)
        cy = np.clip(np.searchsorted(self.coord, [self.P0[1] - ext, self.P0[1] + ext + 30]), 0, M)
        self.r0, self.c0 = int(cy[0]), int(cx[0])
        self.hc = max(2, (int(cy[1]) - self.r0 + 1) // STEP)
        self.wc = max(2, (int(cx[1]) - self.c0 + 1) // STEP)
        self.hc = min(self.hc, (M - 1 - self.r0) // STEP + 1)
        self.wc = min(self.wc, (M - 1 - self.c0) // STEP + 1)
        self.r1 = self.r0 + STEP * (self.hc - 1) + 1  # fine crop rows [r0, r1)
        self.c1 = self.c0 + STEP * (self.wc - 1) + 1
        self.ys = self.coord[self.r0 : self.r1 : STEP]
        self.xs = self.coord[self.c0 : self.c1 : STEP]
        self.step_mm = self.ps * STEP
        rr = p.b + 14 + p.holder_gap  # the head holder: an arc under the occiput
        self.holder = (self.P0[0], self.P0[1] + p.b + 10 + p.holder_gap - rr, rr)
        self.wave_k = 2 * math.pi / p.gyr_lambda
        self.nsub = max(1, math.ceil(p.thick / SUBPLANE_MM - 1e-9))
        self.dz = p.thick / self.nsub
        sr = np.random.default_rng(p.calc_seed + 1)  # streak sources near the skull base
        self.streak_par = [
            (
                sr.uniform(0, math.pi),
                (sr.uniform(-40, 40) * p.s, sr.uniform(0, 40) * p.s),
                float(sr.choice([-1, 1]) * sr.uniform(5, 20)),
                sr.uniform(0.5, 1.5),
            )
            for _ in range(p.streaks)
        ]
        self.z = np.zeros(0)
        self.U = self.V = self.W = self.Ui = self.Uf = np.zeros((0, 0, 0), np.float32)

    # ------------------------------------------------------------------ geometry helpers
    def grid(self, z: np.ndarray) -> None:
        X = (self.xs - self.P0[0]).astype(np.float32)
        Y = (self.ys - self.P0[1]).astype(np.float32)
        Z = (z - self.P0[2]).astype(np.float32)
        out = []
        for i in range(3):
            a = self.A[i].astype(np.float32)
            out.append(
                (a[0] * X)[None, None, :] + (a[1] * Y)[None, :, None] + (a[2] * Z)[:, None, None]
            )
        self.z = z
        self.U, self.V, self.W = out

    def win(self, c: object, rad: float) -> tuple[slice, slice, slice] | None:
        """The slab window holding a sphere of radius ``rad`` about head-frame point ``c``."""
        pc = self.P0 + self.p.R @ np.asarray(c, float)
        pl = np.flatnonzero(np.abs(self.z - pc[2]) <= rad)
        if pl.size == 0:
            return None
        i = (pc[1] - self.ys[0]) / self.step_mm
        j = (pc[0] - self.xs[0]) / self.step_mm
        h = rad / self.step_mm + 1
        r0, r1 = max(0, int(i - h)), min(self.hc, int(i + h) + 2)
        c0, c1 = max(0, int(j - h)), min(self.wc, int(j + h) + 2)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(int(pl[0]), int(pl[-1]) + 1), slice(r0, r1), slice(c0, c1)

    def E(self, lab, c, h, cls, shift=False, extra=None):
        """Paint ``cls`` in the ellipsoid (centre ``c``, half axes ``h``); ``shift``: in the
        midline-shifted frame; ``extra(window, u, v, w)``: a further condition."""
        w = self.win(c, max(h) + (abs(self.les.shift) if shift else 0.0))
        if w is None:
            return
        u = (self.Ui if shift else self.U)[w]
        v, ww = self.V[w], self.W[w]
        m = _ell(u, v, ww, c, h)
        if extra is not None:
            m &= extra(w, u, v, ww)
        lab[w][m] = cls

    def T(self, lab, p0, p1, r, cls, shift=False, extra=None):
        """Paint ``cls`` within ``r`` of the segment p0-p1 (see :meth:`E`)."""
        a, b = np.asarray(p0, float), np.asarray(p1, float)
        rad = float(np.linalg.norm(b - a)) / 2 + r + (abs(self.les.shift) if shift else 0.0)
        w = self.win((a + b) / 2, rad)
        if w is None:
            return
        u = (self.Ui if shift else self.U)[w]
        v, ww = self.V[w], self.W[w]
        m = _tube(u, v, ww, a, b, r)
        if extra is not None:
            m &= extra(w, u, v, ww)
        lab[w][m] = cls

    # ------------------------------------------------------------------ one slab
    def slab(self, z: np.ndarray, want_cls: bool):  # type: ignore[no-untyped-def]
        p = self.p
        self.grid(z)
        U, V, W = self.U, self.V, self.W
        s = p.s
        # --- the cranial cavity: vault ellipsoid cut by the skull-base floor
        cc = np.where(W > 0, np.float32(p.c), np.float32(p.c_low))
        ua, vb, wc = U / p.a, V / p.b, W / cc
        rho = np.sqrt(ua * ua + vb * vb + wc * wc) + 1e-6
        gu, gv, gw = ua / p.a, vb / p.b, wc / cc
        gn = np.sqrt(gu * gu + gv * gv + gw * gw) + 1e-9
        d_ell = (rho - 1) * rho / gn
        nu, nv, nw = ua / rho, vb / rho, wc / rho  # direction on the unit sphere
        au = np.abs(U)
        ant = _sig((-V - 20 * s) / 2.5)
        ridge = -5 + 0.7 * np.maximum(au - 12 * s, 0)
        post = _sig((V - ridge) / 2.0)
        mid = -36 * s - 12 * s * _sig((au - 16 * s) / 3)
        dome = 4 * np.exp(-(((au - 26 * s) / (10 * s)) ** 2))
        floor = ant * (-26 * s + dome) + (1 - ant) * ((1 - post) * mid + post * (-76 * s))
        d_floor = floor - W
        use_floor = d_floor > d_ell
        d = np.where(use_floor, d_floor, d_ell)
        rfm = np.sqrt(U * U + (V - 14 * s) ** 2)  # spinal canal through the foramen magnum
        canal = (-60 * s > W) & (rfm - 15 * s < d)
        d = np.where(canal, rfm - 15 * s, d)
        # slope of the surface along the scanner z: the coverage width of a sub-plane
        R2 = p.R[2]
        gz = np.where(use_floor, np.float32(-R2[2]), (R2[0] * gu + R2[1] * gv + R2[2] * gw) / gn)
        gz = np.where(canal, (R2[0] * U + R2[1] * (V - 14 * s)) / (rfm + 1e-6), gz)
        wid = np.sqrt((self.dz * gz) ** 2 + (self.ps**2) * np.maximum(1 - gz * gz, 0)) + 0.02
        # --- skull thickness by direction
        tf = np.exp(-(((nw + 0.15) / 0.3) ** 2)) * nu * nu * np.exp(-((nv / 0.5) ** 2))
        T = p.t0 * (1 + p.k_vertex * np.maximum(nw, 0) ** 2 + p.k_occ * np.maximum(nv, 0) ** 3)
        T = T * (1 - (1 - p.temporal) * tf)
        t_floor = ant * 2.0 + (1 - ant) * ((1 - post) * 4.5 + post * 7.0)
        T = np.where(use_floor | canal, t_floor, T)
        cov_in = np.clip(0.5 + d / wid, 0, 1)
        cov_out = np.clip(0.5 + (d - T) / wid, 0, 1)
        fi = 1 - cov_in
        fb = cov_in - cov_out
        fo = cov_out
        db = np.clip(d, 0, None)
        cort = (db < p.t_ic) | (db > T - p.t_oc) | (p.t_ic + p.t_oc + 1.0 > T)
        bone = np.where(cort, np.float32(p.cortex), np.float32(p.diploe))
        if p.frontal_sinus:
            fs_ = _ell(U, V, W, (0, -p.b - 3, -8 * s), (15 * s, 6, 14 * s)) & ~cort
            bone = np.where(fs_, np.float32(p.lut[AIRCELL]), bone)
        D = -d
        lab_in = self.inner(D, nu, nv, nw)
        lab_out = self.outer(d_ell, T)
        lut = p.lut
        hu_in = lut[lab_in] + self.artefacts(D)
        hu = fi * hu_in + fb * bone + fo * lut[lab_out]
        les = fi * ((lab_in >= EDH) & (lab_in <= IVH))
        cls = pure = None
        if want_cls:
            cls = np.where(fi >= 0.5, lab_in, np.where(fb >= 0.5, np.uint8(TABLE), lab_out))
            pure = (fi == 1) | (fo == 1) | (fb == 1)
        return hu.astype(np.float32), les.astype(np.float32), cls, pure

    # ------------------------------------------------------------------ intracranial
    def inner(self, D, nu, nv, nw):
        p, les, s = self.p, self.les, self.p.s
        U, V, W = self.U, self.V, self.W
        E, Tb = self.E, self.T
        lab = np.full(U.shape, CSF, np.uint8)
        # midline shift: deep structures move, the falx less (anchored at the vault)
        if les.shift:
            env = np.exp(-(((W - 5 * s) / (38 * s)) ** 2) - ((V / (70 * s)) ** 2))
            self.Ui = U - np.float32(les.shift) * env
            self.Uf = U - np.float32(les.shift * 0.5) * env * _sig((20 * s - W) / 8)
        else:
            self.Ui = self.Uf = U
        Ui, Uf = self.Ui, self.Uf
        # convexity collections (epidural lens, subdural crescent) push the brain in
        L = np.zeros(U.shape, np.float32)
        conv_lab: list[tuple[np.ndarray, int]] = []
        for kind, n0, th1, th2, tmax, expo, _hu, side in les.conv:
            e1 = np.cross([0.0, 0.0, 1.0], n0)
            e1 /= np.linalg.norm(e1)
            e2 = np.cross(n0, e1)
            cosang = nu * n0[0] + nv * n0[1] + nw * n0[2]
            x1 = (nu * e1[0] + nv * e1[1] + nw * e1[2]) / math.sin(th1)
            x2 = (nu * e2[0] + nv * e2[1] + nw * e2[2]) / math.sin(th2)
            r2 = x1 * x1 + x2 * x2
            prof = np.where((r2 < 1) & (cosang > 0), (1 - np.minimum(r2, 1)) ** expo, 0) * tmax
            prof = prof * (U * side > 1.0)  # never across the midline
            m = (prof > 0.3) & (prof > D) & (D > -3)
            if kind == SDH:  # a subdural stays under the dura, lateral to the falx
                m &= U * side > p.fiss_w + 1.0
            L = np.maximum(L, prof)
            conv_lab.append((m, kind))
        gap = np.float32(p.gap)
        sw = np.float32(p.sulc_w)
        if les.efface is not None:
            c, sig, st = les.efface
            prox = np.exp(-((U - c[0]) ** 2 + (V - c[1]) ** 2 + (W - c[2]) ** 2) / (2 * sig * sig))
            gap = gap * (1 - st * prox) + 0.1
            sw = sw * (1 - st * prox)
        B = D - gap - L  # depth below the brain surface
        brain = B > 0
        aui = np.abs(Ui)
        ridge = -5 + 0.7 * np.maximum(aui - 12 * s, 0)
        w_tent = -14 * s - 20 * s * (aui / (55 * s)) ** 1.3 - 8 * s * ((V - 20 * s) / (50 * s)) ** 2
        pf = (ridge < V) & (w_tent > W)
        supra = brain & ~pf
        infra = brain & pf
        # cerebrum: WM, a GM ribbon, radial sulci from a random field on the sphere
        lab[supra] = WM
        shell = supra & (p.sulc_depth + p.ribbon > B)
        R0 = 70.0 * s
        fn, fv, fw, fb_ = nu[shell], nv[shell], nw[shell], B[shell]
        f = np.zeros(fn.shape, np.float32)
        for kk, ph in zip(p.gyr_k, p.gyr_phi, strict=True):
            f += np.cos(np.float32(self.wave_k * R0) * (kk[0] * fn + kk[1] * fv + kk[2] * fw) + ph)
        G = self.wave_k * math.sqrt(len(p.gyr_phi) / 3) * np.clip(1 - fb_ / R0, 0.4, 1)
        dist = np.abs(f) / G
        sws = sw[shell] if isinstance(sw, np.ndarray) else sw
        ribbon = p.ribbon
        sub = np.full(fn.shape, WM, np.uint8)
        sub[(fb_ < ribbon) | (dist < sws + ribbon)] = GM
        sub[(dist < sws) & (fb_ < p.sulc_depth)] = CSF_SULC
        lab[shell] = sub
        # interhemispheric fissure with the falx (above the corpus callosum, and in front of
        # and behind it); medial cortex
        fiss = ~pf & (D > -1) & ((22 * s < W) | (-38 * s > V) | ((40 * s < V) & (-8 * s < W)))
        af = np.abs(Uf)
        lab[brain & fiss & (af < p.fiss_w + ribbon) & (lab == WM)] = GM
        lab[fiss & (af < p.fiss_w)] = CSF_FISS
        lab[fiss & (af < 0.6)] = DURA
        # Sylvian fissures: a cleft from the lateral surface in to the insula, thin in axial
        # slices (its stem runs across, tilted forward), insular cortex beside it
        vsyl = -8 * s + 0.45 * (W + 5 * s) - 0.2 * (aui - 34 * s)
        near = (-22 * s < W) & (8 * s > W) & (np.abs(V - vsyl) < p.sylv_w + ribbon + 4)
        ins = (-20 * s < W) & (12 * s > W) & (np.abs(V + 8 * s) < 22 * s)
        lab[ins & (np.abs(aui - 34 * s) < ribbon) & supra] = GM
        lab[near & (np.abs(V - vsyl) < p.sylv_w) & (aui > 34 * s) & ~pf & (D > 0)] = CSF_FISS
        # posterior fossa: cerebellum with folia and white matter cores, brainstem, cisterns
        lab[infra] = CBL
        fol = np.abs(np.cos(2 * math.pi * (W + 0.3 * V) / p.folia)) > 0.93 - 0.1 * p.atrophy
        lab[infra & fol & (B < 12)] = CSF_SULC
        for sg in (-1, 1):
            E(lab, (sg * 18 * s, 38 * s, -40 * s), (11 * s, 11 * s, 9 * s), WM, True,
              lambda w, u, v, ww: infra[w])  # fmt: skip
        vbs = 5 * s + 0.22 * (-20 * s - W)
        rbs = (9.5 + 4.5 * np.exp(-(((W + 40 * s) / (11 * s)) ** 2))) * s
        rr = np.sqrt(Ui * Ui + (V - vbs) ** 2)
        low = -6 * s > W
        lab[low & (rr < rbs + 4) & (vbs > V) & (-24 * s > W) & brain] = CSF_CIST  # prepontine
        amb = (rr < rbs + 2.5 + 2 * p.atrophy) & (-8 * s > W) & (-26 * s < W) & brain
        lab[amb] = CSF_CIST  # ambient
        lab[low & (rr < rbs) & (D > 0)] = STEM
        E(lab, (0, -8 * s, -27 * s), (13 * s, 9 * s, 5 * s), CSF_CIST, True,
          lambda w, u, v, ww: D[w] > 0)  # suprasellar  # fmt: skip
        E(lab, (0, 24 * s, -8 * s), (8 * s, 6 * s, 6 * s), CSF_CIST, True)  # quadrigeminal
        cm = 0.7 + 0.8 * p.atrophy
        E(lab, (0, p.b * 0.83, -60 * s), (12 * s * cm, 9 * s * cm, 9 * s), CSF_CIST, True,
          lambda w, u, v, ww: pf[w])  # cisterna magna  # fmt: skip
        notch = (aui < 13 * s) & (22 * s > V)
        lab[(np.abs(W - w_tent) < 0.7) & (ridge < V) & ~notch & (D > -1)] = DURA  # tentorium
        # deep grey matter
        for sg in (-1, 1):
            E(lab, (sg * 14 * s, -19 * s, 9 * s), (6 * s, 10 * s, 9 * s), DEEP, True)
            E(lab, (sg * 24 * s, -4 * s, 0), (6.5 * s, 15 * s, 10 * s), DEEP, True)
            E(lab, (sg * 10 * s, 8 * s, 0), (8.5 * s, 13 * s, 9 * s), DEEP, True)
        E(lab, (0, -12 * s, -37 * s), (6 * s, 5 * s, 4 * s), DEEP)  # pituitary
        # ventricles
        vw = p.vent
        for sg, q in ((1, les.vent_squeeze[0]), (-1, les.vent_squeeze[1])):
            k = vw * (1 - q)
            parts = [
                ((sg * (3.5 + 5 * k) * s, -24 * s, 12 * s), (4.5 * k * s, 13 * s, 8 * s)),
                (
                    (sg * (4 + 6 * k) * s, 0, 18 * s),
                    (5.5 * k * s, 20 * s, 5.5 * s * (0.7 + 0.3 * k)),
                ),
                ((sg * 21 * s, 24 * s, 9 * s), (6.5 * k * s, 10 * s, 8 * s)),
                ((sg * 19 * s, 40 * s, 6 * s), (3.5 * k * s, 12 * s, 4.5 * s)),
                ((sg * 31 * s, 4 * s, -16 * s), (2.5 * k * s, 14 * s, 3 * s)),
            ]  # frontal horn, body, atrium, occipital horn, temporal horn
            for c, h in parts:
                E(lab, c, h, CSF_VENT, True, lambda w, u, v, ww, sg=sg: u * sg > 0.6)
        E(lab, (0, 0, -4 * s), (p.vent3 / 2, 15 * s, 9 * s), CSF_VENT, True)
        v4 = 5 * s + 0.22 * 24 * s + 14 * s + 2 * s
        E(lab, (0, v4, -44 * s), (6 * s, 3.5 * s, 8 * s), CSF_VENT, True)
        # venous sinuses (flowing blood) in the dura
        sss = (D > -0.5) & (D < 7) & (np.abs(Uf) < (7 - D) * (0.35 + 0.25 * (V / p.b + 1)))
        lab[sss & (-28 * s < W) & (-p.b * 0.9 < V)] = SINUS
        ts = (np.abs(W + 30 * s + 0.08 * np.abs(U)) < 3.5) & (D > -0.5) & (D < 7) & (25 * s < V)
        lab[ts & (np.abs(U) < 48 * s)] = SINUS  # transverse
        for sg in (-1, 1):
            Tb(lab, (sg * 44 * s, 26 * s, -36 * s), (sg * 42 * s, 12 * s, -66 * s), 4.0 * s, SINUS,
               extra=lambda w, u, v, ww: D[w] > -1)  # sigmoid  # fmt: skip
        Tb(lab, (0, 20 * s, -4 * s), (0, p.b * 0.85, -28 * s), 2.6 * s, SINUS, True)  # straight
        # arteries: basilar in the prepontine cistern, carotids, middle cerebral
        Tb(lab, (0, -2 * s, -58 * s), (0, -3 * s, -26 * s), 1.8, ARTERY, True)
        for sg in (-1, 1):
            E(lab, (sg * 16 * s, -11 * s, -36 * s), (2.8, 3.5, 7), ARTERY, True)
            Tb(
                lab,
                (sg * 12 * s, -12 * s, -26 * s),
                (sg * 40 * s, -8 * s, -14 * s),
                1.4,
                ARTERY,
                True,
            )
        self.calcs(lab)
        self.lesions(lab, D, B, brain, conv_lab)
        self.base_bones(lab)  # petrous ridges and clivus reach into the cavity
        return lab

    def calcs(self, lab):
        p, s, E = self.p, self.p.s, self.E
        r = np.random.default_rng(p.calc_seed)  # the same draws in every slab
        if p.calc_pineal:
            rad = r.uniform(1.5, 4.0)
            E(lab, (0, 17 * s, -3 * s), (rad, rad * 1.2, rad), CALC, True)
        if p.calc_choroid:
            for sg in (-1, 1):
                rad = r.uniform(1.5, 4.5)
                E(lab, (sg * 22 * s, 25 * s, 9 * s), (rad, rad * 1.3, rad), CALC, True,
                  lambda w, u, v, ww: lab[w] == CSF_VENT)  # fmt: skip
        if p.calc_falx:
            for _ in range(int(r.integers(1, 4))):
                cv, cw = r.uniform(-50, 40) * s, r.uniform(25, 50) * s
                rl = r.uniform(3, 10)
                E(lab, (0, cv, cw), (1.1, rl, rl * 0.6), CALC, False,
                  lambda w, u, v, ww: np.abs(self.Uf[w]) < 1.1)  # fmt: skip
        if p.calc_bg:
            for sg in (-1, 1):
                rad = r.uniform(1.0, 3.0)
                E(lab, (sg * 18 * s, -3 * s, -2 * s), (rad, rad * 1.5, rad), CALC, True)
        if p.calc_siphon:
            for sg in (-1, 1):
                c = (sg * 16 * s, -11 * s, -36 * s)
                E(lab, c, (3.8, 4.5, 8), CALC, True,
                  lambda w, u, v, ww, c=c, sg=sg: ~_ell(u, v, ww, c, (2.8, 3.5, 7))
                  & (np.cos(1.3 * ww + sg * 2.0 * v) > 0.2))  # fmt: skip

    def lesions(self, lab, D, B, brain, conv_lab):
        les, p = self.les, self.p
        U, V, W, Ui = self.U, self.V, self.W, self.Ui
        for m, kind in conv_lab:
            lab[m] = kind
        if les.iph is not None:
            c, rad, ax, wav, amp, _hu, oed = les.iph
            w = self.win(c, rad * 1.6 + oed + abs(les.shift) + 2)
            if w is not None:
                x, y, zz = (Ui[w] - c[0]) / ax[0], (V[w] - c[1]) / ax[1], (W[w] - c[2]) / ax[2]
                rr = np.sqrt(x * x + y * y + zz * zz) + 1e-6
                mod = np.ones(x.shape, np.float32)
                for k in range(3):
                    arg = (x * wav[k, 0] + y * wav[k, 1] + zz * wav[k, 2]) / rr
                    mod += amp[k] * np.cos(3.0 * arg + k)
                inside = brain[w] & (B[w] > 1.0)
                lw = lab[w]
                if oed:
                    lw[inside & (rr < rad * mod + oed) & (lw != CSF_VENT)] = OEDEMA
                lw[inside & (rr < rad * mod)] = IPH
        for c, rad, _hu in les.sah:
            w = self.win(c, rad)
            if w is None:
                continue
            lw = lab[w]
            near = ((U[w] - c[0]) ** 2 + (V[w] - c[1]) ** 2 + (W[w] - c[2]) ** 2) < rad * rad
            csf = (
                (lw == CSF_SULC) | (lw == CSF_FISS) | (lw == CSF_CIST) | ((lw == CSF) & (D[w] > 0))
            )
            lw[near & csf] = SAH
        if les.ivh is not None:
            sides, depth, _hu, cast = les.ivh
            # gravity along the scanner's +y: the layer's level is a plane of scanner y
            ypat = p.R[1, 0] * U + p.R[1, 1] * V + p.R[1, 2] * W
            for sg in sides:
                tip = p.R[1] @ np.array([sg * 19, 52, 6]) * p.s
                horn = (lab == CSF_VENT) & (12 * p.s < V) & (Ui * sg > 0)
                lab[horn & (ypat > tip - depth)] = IVH
            if cast:
                third = (lab == CSF_VENT) & (np.abs(Ui) < 6 * p.s) & (5 * p.s > W) & (-15 * p.s < V)
                lab[third] = IVH

    def base_bones(self, lab):
        s = self.p.s
        for sg in (-1, 1):
            self.T(lab, (sg * 13 * s, -3 * s, -44 * s), (sg * 54 * s, 26 * s, -48 * s), 7 * s, BONE,
                   extra=lambda w, u, v, ww: ww < -40 * s + 0.15 * v)  # petrous  # fmt: skip
        self.T(lab, (0, -6 * s, -40 * s), (0, 8 * s, -74 * s), 6 * s, BONE)  # clivus

    # ------------------------------------------------------------------ outside the skull
    def outer(self, d_ell, T):
        p, s, E, Tb = self.p, self.p.s, self.E, self.T
        U, V, W = self.U, self.V, self.W
        lab = np.full(U.shape, AIR, np.uint8)
        e = d_ell - T  # distance beyond the outer table (vault)
        scalp = p.scalp + 9 * np.exp(-(((W + 5 * s) / (22 * s)) ** 2) - ((V / (35 * s)) ** 2))
        head = e < scalp
        lab[head] = SOFT
        lab[head & (e > scalp - p.skin - p.scalp_fat) & (e < scalp - p.skin)] = FAT
        # neck and face below the vault
        low = -40 * s > W
        neck = low & (((U / (54 * s)) ** 2 + ((V - 8 * s) / (58 * s)) ** 2) < 1) & (-62 * s > W)
        lab[neck & ~head] = SOFT
        E(lab, (0, -45 * s, -58 * s), (56 * s, 50 * s, 36 * s), SOFT,
          extra=lambda w, u, v, ww: ~head[w])  # face  # fmt: skip
        E(lab, (0, -92 * s, -62 * s), (10 * s, 14 * s, 18 * s), SOFT,
          extra=lambda w, u, v, ww: ww < -45 * s)  # nose  # fmt: skip
        for sg in (-1, 1):
            oc = (sg * 31 * s, -58 * s, -36 * s)
            E(lab, oc, (17 * s, 24 * s, 16 * s), BONE,
              extra=lambda w, u, v, ww: v > -66 * s)  # orbital walls behind the globe  # fmt: skip
            E(lab, oc, (15.5 * s, 22.5 * s, 14.5 * s), FAT)
            g = (sg * 32 * s, -70 * s, -36 * s)
            E(lab, g, (11.5 * s, 11.5 * s, 11.5 * s), GLOBE)
            E(lab, (g[0], g[1] - 10 * s, g[2]), (4.5, 2.0, 4.5), LENS)
            Tb(lab, (sg * 30 * s, -58 * s, -36 * s), (sg * 14 * s, -34 * s, -38 * s), 2.2, SOFT)
            mx = (sg * 26 * s, -58 * s, -74 * s)
            E(lab, mx, (16 * s, 18 * s, 16 * s), BONE)
            E(lab, mx, (14.5 * s, 16.5 * s, 14.5 * s), AIRCELL)
            mast = (sg * 50 * s, 26 * s, -55 * s), (10 * s, 12 * s, 13 * s)
            E(lab, *mast, BONE)
            E(lab, *mast, AIRCELL,
              extra=lambda w, u, v, ww: np.cos(1.7 * u) * np.cos(1.9 * v)
              * np.cos(1.5 * ww) > -0.25)  # fmt: skip
            Tb(lab, (sg * 46 * s, 8 * s, -50 * s), (sg * 80 * s, 8 * s, -50 * s), 4 * s, AIR)
            Tb(lab, (sg * 58 * s, -40 * s, -52 * s), (sg * 60 * s, 5 * s, -52 * s), 3 * s, BONE)
            E(lab, (sg * 21 * s, 10 * s, -80 * s), (8 * s, 9 * s, 7 * s), BONE)  # C1 mass
        # ethmoid and nasal air with bony septa
        eth = (0, -58 * s, -56 * s), (9 * s, 28 * s, 28 * s)
        E(lab, *eth, AIRCELL, extra=lambda w, u, v, ww: ww > -84 * s)
        E(lab, *eth, BONE, extra=lambda w, u, v, ww: (np.abs(u) < 0.9)
          | (np.cos(1.1 * u) * np.cos(0.9 * v) > 0.85))  # fmt: skip
        E(lab, (0, -18 * s, -50 * s), (14 * s, 12 * s, 11 * s), BONE)
        E(lab, (0, -18 * s, -50 * s), (12 * s, 10 * s, 9 * s), AIRCELL)  # sphenoid sinus
        E(lab, (0, 4 * s, -80 * s), (5.5 * s, 5.5 * s, 9 * s), BONE)  # dens
        self.base_bones(lab)
        # the head holder and its foam pad (scanner frame: under the occiput)
        xh, yh, rh = self.holder
        X = (self.xs - xh).astype(np.float32)[None, None, :]
        Y = (self.ys - yh).astype(np.float32)[None, :, None]
        rr = np.broadcast_to(np.sqrt(X * X + Y * Y), U.shape)
        arc = np.broadcast_to(0.45 * rh < Y, U.shape)
        air = lab == AIR
        lab[arc & (rr > rh) & (rr < rh + 4) & air] = HOLDER
        lab[arc & (rr > rh - 10 - p.holder_gap) & (rr <= rh) & air] = FOAM
        return lab

    # ------------------------------------------------------------------ artefacts
    def artefacts(self, D):
        p, s = self.p, self.p.s
        U, V, W = self.U, self.V, self.W
        out = np.float32(p.rim) * np.exp(-np.clip(D, 0, None) / p.rim_len)
        w = self.win((0, 8 * s, -44 * s), 60 * s)
        if w is not None:  # Hounsfield bar: a dark band between the petrous bones
            band = np.exp(-(((W[w] + 44 * s) / (6 * s)) ** 2) - (((V[w] - 8 * s) / (6 * s)) ** 2))
            out[w] -= np.float32(p.bh_bar) * band * np.exp(-((U[w] / (40 * s)) ** 2))
        w = self.win((0, 20 * s, -48 * s), 90 * s)
        if w is not None:  # streaks radiating from the skull base
            u, v, ww = U[w], V[w], W[w]
            fall = np.exp(-(((ww + 48 * s) / (14 * s)) ** 2))
            for a, b, amp, wv in self.streak_par:
                dist = np.abs(np.cos(a) * (v - b[1]) - np.sin(a) * (u - b[0]))
                out[w] += amp * np.exp(-((dist / wv) ** 2)) * fall
        return out


def _up2(a: np.ndarray) -> np.ndarray:
    """Bilinear upsampling by STEP=2 in-plane: [k, h, w] -> [k, 2h-1, 2w-1], the samples kept
    at the even positions."""
    k, h, w = a.shape
    out = np.empty((k, 2 * h - 1, 2 * w - 1), np.float32)
    out[:, ::2, ::2] = a
    out[:, 1::2, ::2] = 0.5 * (a[:, :-1] + a[:, 1:])
    out[:, :, 1::2] = 0.5 * (out[:, :, :-2:2] + out[:, :, 2::2])
    return out


def _near2(a: np.ndarray, grow: int = 0) -> np.ndarray:
    """Nearest-neighbour upsampling to the :func:`_up2` grid; ``grow``: also the odd pixels
    beside a True sample (for a mask meant conservatively)."""
    up = np.repeat(np.repeat(a, 2, 1), 2, 2)[:, : 2 * a.shape[1] - 1, : 2 * a.shape[2] - 1]
    if grow:
        up[:, 1::2] |= up[:, 2::2] if up.shape[1] > 2 else up[:, 1::2]
        up[:, :, 1::2] |= up[:, :, 2::2] if up.shape[2] > 2 else up[:, :, 1::2]
    return up


def _kernel3(a: np.ndarray, w: float) -> np.ndarray:
    """Separable 3-tap in-plane filter [w, 1-2w, w] on [z, rows, cols] (w < 0 sharpens),
    edges replicated."""
    out = (1 - 2 * w) * a
    out[:, 1:] += w * a[:, :-1]
    out[:, :-1] += w * a[:, 1:]
    out[:, 0] += w * a[:, 0]
    out[:, -1] += w * a[:, -1]
    b = out
    out = (1 - 2 * w) * b
    out[:, :, 1:] += w * b[:, :, :-1]
    out[:, :, :-1] += w * b[:, :, 1:]
    out[:, :, 0] += w * b[:, :, 0]
    out[:, :, -1] += w * b[:, :, -1]
    return out


def _descriptions(r: np.random.Generator) -> tuple[str, str, str]:
    study = str(r.choice(["CT HEAD WO CONTRAST", "CT HEAD WITHOUT CONTRAST",
                          "CT BRAIN NON CONTRAST",
                          "CT HEAD W/O CONTRAST", "HEAD ROUTINE", "CT CRANIUM PLAIN",
                          "CT HEAD NONCON TRAUMA", "CT BRAIN"]))  # fmt: skip
    proto = str(
        r.choice(["HEAD ROUTINE", "Head Seq", "BRAIN STANDARD", "TRAUMA HEAD", "Routine Head"])
    )
    return study, proto, str(r.choice(["HEAD", "HEAD", "BRAIN", "SKULL"]))


def _scanner(r: np.random.Generator, kind: str) -> tuple[str, str, str]:
    vendor = int(r.integers(4))
    kernels = {
        0: ("SIEMENS", "SOMATOM Definition Edge",
            {"soft": "H31s", "standard": "H40s", "sharp": "J70h"}),
        1: ("GE MEDICAL SYSTEMS", "Revolution CT",
            {"soft": "SOFT", "standard": "STANDARD", "sharp": "BONEPLUS"}),
        2: ("Philips", "iCT 256", {"soft": "UA", "standard": "UB", "sharp": "YC"}),
        3: ("TOSHIBA", "Aquilion ONE", {"soft": "FC21", "standard": "FC26", "sharp": "FC30"}),
    }  # fmt: skip
    man, model, ks = kernels[vendor]
    return man, model, ks[kind]


def _paint(task_seed: int, label: bool, matrix: int, detail: bool) -> tuple[Painted, Detail | None]:
    rng = np.random.default_rng([int(task_seed), 0x4EAD, int(label)])
    p = _Params(rng, label, matrix)
    les = _Lesions(p, label)
    painter = _Painter(p, les)
    M = matrix
    # slices: head first (index 0 most superior); z of slice centres in the scanner
    top_z = p.offset[2] + p.w_top * math.cos(p.pitch) * math.cos(p.roll) + 4
    bot_z = p.offset[2] + p.w_bottom
    n = math.floor((top_z - bot_z) / p.spacing) + 1
    zc = top_z - np.arange(n) * p.spacing
    nsub = painter.nsub
    offs = (np.arange(nsub) + 0.5) / nsub * p.thick - p.thick / 2
    hu = np.empty((n, M, M), np.float32)
    hu[:] = p.lut[AIR]
    lesion = np.zeros((n, M, M), bool)
    cls = np.full((n, M, M), AIR, np.uint8) if detail else None
    pure = np.ones((n, M, M), bool) if detail else None
    r0, r1, c0, c1 = painter.r0, painter.r1, painter.c0, painter.c1
    per = max(1, SLAB_PLANES // nsub)
    for k0 in range(0, n, per):
        k1 = min(n, k0 + per)
        zs = (zc[k0:k1, None] - offs[None, :]).ravel()  # offs>0 is higher... symmetric box
        h, lf, cl, pu = painter.slab(zs, detail)
        h = _up2(h.reshape(k1 - k0, nsub, *h.shape[1:]).mean(1))
        lf = _up2(lf.reshape(k1 - k0, nsub, *lf.shape[1:]).mean(1))
        hu[k0:k1, r0:r1, c0:c1] = h
        lesion[k0:k1, r0:r1, c0:c1] = lf >= 0.5
        if detail:
            assert cls is not None and pure is not None and cl is not None and pu is not None
            cl = cl.reshape(k1 - k0, nsub, *cl.shape[1:])
            pu = pu.reshape(k1 - k0, nsub, *pu.shape[1:])
            pu = pu.all(1) & (cl == cl[:, :1]).all(1)
            cls[k0:k1, r0:r1, c0:c1] = _near2(cl[:, nsub // 2])
            pure[k0:k1, r0:r1, c0:c1] = _near2(pu) & ~_near2(~pu, 1)
    clean = hu.copy() if detail else None
    # kernel, correlated noise, calibration, reconstruction circle
    kern = {"soft": 0.22, "standard": 0.12, "sharp": -0.12}[p.kernel_kind]
    nsr = np.random.default_rng(p.calc_seed + 2)
    sigma = p.noise5 * math.sqrt(5.0 / p.thick)
    head_w = ((zc - p.offset[2]) / max(math.cos(p.pitch), 0.5)).astype(np.float32)
    yy, xx = np.meshgrid(painter.coord, painter.coord, indexing="ij")
    circle = (xx**2 + yy**2) < (p.fov / 2) ** 2
    nk = {"soft": 0.25, "standard": 0.2, "sharp": 0.05}[p.kernel_kind]
    for k0 in range(0, n, 16):
        k1 = min(n, k0 + 16)
        blk = _kernel3(hu[k0:k1], kern)
        wn = nsr.standard_normal((k1 - k0, M, M), dtype=np.float32)
        nz = _kernel3(wn, nk)
        nz = nz - 0.6 * _kernel3(_kernel3(nz, 0.25), 0.25)
        nz *= np.float32(1.0 / (float(nz.std()) + 1e-6))
        fac = 1 + (p.noise_pf - 1) * _sig((-head_w[k0:k1] - 30 * p.s) / 5)
        blk = blk + nz * (np.float32(sigma) * fac[:, None, None]).astype(np.float32)
        blk += np.float32(p.calib)
        blk[:, ~circle] = -1024.0
        hu[k0:k1] = np.maximum(blk, -1024.0)
    lesion[:, ~circle] = False
    study_d, proto, body = _descriptions(rng)
    man, model, kname = _scanner(rng, p.kernel_kind)
    enc = int(rng.integers(3))
    acq = Acquisition(
        manufacturer=man,
        model=model,
        kernel=kname,
        kvp=p.kvp,
        slice_thickness=p.thick,
        spacing_z=p.spacing,
        pixel_spacing=p.ps * 512 / M,
        z_top=float(zc[0]),
        rescale_intercept=[-1024.0, -1024.0, 0.0][enc],
        rescale_slope=1.0,
        signed=enc == 2,
        bits_stored=[12, 16, 16][enc],
        implicit_vr=bool(rng.random() < 0.3),
        series_number=int(rng.choice([2, 3, 4, 201])),
    )
    acc = f"XH{task_seed % 10**8:08d}"
    header = StudyHeader(
        patient_id=f"XCH{task_seed % 10**7:07d}",
        patient_name="CROSSCHECK^HEAD",
        patient_sex=p.sex,
        patient_age=f"{int(p.age):03d}Y",
        accession=acc,
        study_description=study_d,
        series_description=f"AXIAL {p.thick:g}MM {p.kernel_kind.upper()}",
        protocol_name=proto,
        body_part=body,
        contrast_agent=None,
    )
    notes = list(les.notes)
    for flag, name in (
        (p.calc_pineal, "calcified_pineal"),
        (p.calc_choroid, "calcified_choroid_plexus"),
        (p.calc_falx, "falx_calcification"),
        (p.calc_bg, "basal_ganglia_calcification"),
        (p.calc_siphon, "carotid_siphon_calcification"),
    ):
        if flag:
            notes.append(name)
    if p.hct > 0.47:
        notes.append("dense_sinuses")
    if abs(p.calib) > 3:
        notes.append("calibration_offset")
    if p.atrophy > 0.6:
        notes.append("atrophy")
    if p.rim > 4:
        notes.append("dense_rim")
    notes.append(f"thickness_{p.thick:g}mm")
    painted = Painted(
        hu=hu,
        lesion=lesion,
        acq=acq,
        header=header,
        kinds=tuple(les.kinds),
        notes=tuple(notes),
    )
    if not detail:
        return painted, None
    assert cls is not None and pure is not None and clean is not None
    lut = {i: float(p.lut[i]) for i in range(NCLS)}
    for k, (_c, *_r) in enumerate(les.conv):
        lut[int(_c)] = float(les.conv[k][6])
    params = {"age": p.age, "thick": p.thick, "calib": p.calib, "noise5": p.noise5,
              "cortex": p.cortex, "diploe": p.diploe, "blood": p.blood}  # fmt: skip
    return painted, Detail(cls, pure, clean, lut, params, head_w)


def paint(task_seed: int, label: bool) -> Painted:
    """Paint one head CT study (numpy only, deterministic from ``task_seed``)."""
    return _paint(task_seed, label, 512, False)[0]


def paint_detail(task_seed: int, label: bool, matrix: int = 512) -> tuple[Painted, Detail]:
    """:func:`paint` with what tests measure (``matrix`` < 512: the same field of view on a
    coarser grid, for fast tests)."""
    painted, det = _paint(task_seed, label, matrix, True)
    assert det is not None
    return painted, det


def write_study(folder: Path, seed: int, label: bool) -> CrossStudy:
    """Paint a study and write it as one axial series under ``folder``; returns its truth."""
    return write_painted(folder, "ich", seed, label, paint(seed, label), window=(40.0, 80.0))
