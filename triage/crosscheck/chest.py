"""An independent CT pulmonary angiogram (CTPA) painter for the crosscheck.

Written from CT anatomy and physics alone (not from :mod:`triage.synth`): every study is drawn
from its own seed (``numpy.random.default_rng(seed)``), every number below is a range sampled
per study (or per structure), never a constant.

What a study holds (patient frame: ``u`` to the patient's left, ``v`` posterior, ``zc`` mm above
the carina; the image is that frame shifted up to 2 cm and turned up to 12 degrees):

- Body: an ellipse flattened at the back (half width 145-195 mm, AP/width 0.62-0.78), skin,
  subcutaneous fat 5-45 mm (-120 to -80 HU), muscle 35-60 HU, breasts in some; arms up mostly,
  arms down in about 1 in 5 (humerus with fatty marrow, a dark band and noise across the
  shoulders, the arms cut by the field of view where they do not fit); a pad and a curved
  table with shells.
- Skeleton: vertebral bodies T1-L1 with a cortex (900-1500 HU, 0.8-1.5 mm) over textured
  cancellous marrow (100-300 HU; 40-100 in about 1 in 5, osteoporosis), discs (60-110), end
  plates by partial volume, pedicles, laminae, transverse and spinous processes, the canal
  (sac 5-15, cord 30-40, epidural fat); twelve rib pairs as cortex-over-marrow tubes round the
  wall, falling toward the front; costal cartilage (60-140, calcified spots in some) to the
  sternum (manubrium and body); clavicles; scapular blades.
- Lungs: -880 to -780 HU with a dependent gradient and a 3-D texture; dependent atelectasis
  (-500 to 0) in some, centrilobular emphysema (below -950) and bullae in some; domes of the
  diaphragm (right higher) with liver, spleen and stomach beneath.
- Mediastinum: fat, heart (myocardium 50-90, pericardial fat; right atrium and ventricle
  opacified like the trunk with swirls of unopacified caval blood, left atrium and ventricle
  like the veins), aorta 140-350 with its arch branches, SVC with undiluted contrast
  (1000-2500 HU, streaks) in some or 250-700, brachiocephalic veins, azygos, IVC, trachea,
  main and lobar bronchi, oesophagus, hilar/subcarinal/paratracheal nodes (20-60 HU).
- Pulmonary arteries: trunk, right and left, lobar, segmental, subsegmental and two smaller
  generations, grown inside the lungs toward lobe targets, tapering (lobar radius 3.5-6 mm),
  opacified 250-500 HU (well timed) or 150-250 (poor timing); veins as their own tree from the
  left atrium (100-250 HU, below the arteries); bronchi with walls beside the lobar to
  subsegmental arteries; mucus-filled bronchi (0-30 HU) in some; IVC inflow (diluted contrast
  with soft margins in lower-lobe arteries) in some.
- Emboli (positives): 20-70 HU filling defects at the central (trunk, main arteries, saddle),
  lobar, segmental or subsegmental level; partial (concentric "polo mint" or eccentric mural)
  or occlusive (the clot fills the lumen, contrast cups round its rounded end, the arteries
  beyond hold unopacified blood 30-55 HU); one to four clots; poor contrast in some.
- Acquisition: pixel 0.6-0.86 mm (the field of view follows the patient), slices 0.625-1.25 mm
  mostly (2-3 mm in some, overlapping reconstructions in some), 250-320 mm of z (at most 300
  slices), partial volume across the slice (sub-slice sampling of tubes, box profile for
  prisms and surfaces), a soft / standard / sharp kernel, correlated noise (6-20 HU, more for
  big patients and thin slices; correlated between overlapping slices), a calibration offset of
  -6..+6 HU, respiratory motion near the diaphragm (stair-steps and blur) in some.

Sources of the ranges: /work/shared/notes/ct-realism.md (CTPA values and mimics: trunk, clot,
veins, aorta, SVC, lung, nodes, mucus, marrow), textbook thoracic anatomy for sizes and
positions (vertebral heights 17-25 mm, lobar/segmental/subsegmental artery diameters
7-12 / 4-6 / 2-4 mm, trachea 16-22 mm), the real LIDC chest in /work/shared/data for body
size, field of view, noise and the look of bone, pad and table.

Speed: the tubular structures (vessels, airways, ribs, posterior elements) are rasterised per
slab of slices, each segment in its bounding box; the rest is painted slice by slice with
closed-form coverage. A full study paints in a few seconds on one core.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from triage.crosscheck.dicomio import Acquisition, StudyHeader
from triage.crosscheck.study import CrossStudy, Painted, write_painted

N = 512
LEVELS = ("central", "lobar", "segmental", "subsegmental")
MAX_SLICES = 300
SLAB = 24  # slices rasterised together

Vec = tuple[float, float, float]


# -- small helpers ------------------------------------------------------------------------------


def _clip01(a: np.ndarray | float) -> np.ndarray:
    if isinstance(a, np.ndarray) and a.ndim:
        np.maximum(a, 0.0, out=a)
        return np.minimum(a, 1.0, out=a)
    return np.asarray(np.clip(a, 0.0, 1.0), dtype=np.float32)


def _overlap(z: float, t: float, lo: float, hi: float) -> float:
    """Fraction of the slice [z - t/2, z + t/2] inside [lo, hi] (box slice profile)."""
    a, b = max(z - t / 2, lo), min(z + t / 2, hi)
    return max(0.0, b - a) / t


def _blend(img: np.ndarray, value: np.ndarray | float, cov: np.ndarray) -> None:
    img += (value - img) * cov


def _smoothstep(x: np.ndarray | float, lo: float, hi: float) -> np.ndarray | float:
    t = np.clip((np.asarray(x, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    out = t * t * (3 - 2 * t)
    return float(out) if out.ndim == 0 else out


def _noise_tiles(
    rng: np.random.Generator, count: int, corr_mm: float, px: float, ramp: float
) -> np.ndarray:
    """``count`` 512x512 fields of unit variance with a CT-like texture: white noise filtered
    by a ramp (``ramp`` 0..1: how much low frequencies are suppressed) and a Gaussian of
    ``corr_mm``."""
    f = np.fft.fftfreq(N, d=px)
    fr = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    filt = ((1 - ramp) + ramp * np.minimum(fr * corr_mm * 2.5, 1.0)) * np.exp(
        -0.5 * (fr * corr_mm * 2 * math.pi) ** 2
    )
    out = np.empty((count, N, N), np.float32)
    for i in range(count):
        w = rng.standard_normal((N, N))
        t = np.fft.ifft2(np.fft.fft2(w) * filt).real
        out[i] = (t / t.std()).astype(np.float32)
    return out


def _box3(img: np.ndarray, w: float) -> np.ndarray:
    """Separable [w, 1-2w, w] filter in-plane (w > 0 blurs)."""
    out = img * (1 - 2 * w)
    out[:, 1:] += img[:, :-1] * w
    out[:, :-1] += img[:, 1:] * w
    out[:, 0] += img[:, 0] * w
    out[:, -1] += img[:, -1] * w
    res = out * (1 - 2 * w)
    res[1:] += out[:-1] * w
    res[:-1] += out[1:] * w
    res[0] += out[0] * w
    res[-1] += out[-1] * w
    return res


# -- tubes --------------------------------------------------------------------------------------


@dataclass
class Tubes:
    """Segments of one class (capsules with a linearly varying radius), in image mm and zc."""

    name: str
    p0: list[Vec] = field(default_factory=list)
    p1: list[Vec] = field(default_factory=list)
    r0: list[float] = field(default_factory=list)
    r1: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    cortex: list[float] = field(default_factory=list)  # > 0: bone tube with an inner marrow
    arr: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, a: Vec, b: Vec, ra: float, rb: float, val: float, cortex: float = 0.0) -> None:
        self.p0.append(a)
        self.p1.append(b)
        self.r0.append(ra)
        self.r1.append(rb)
        self.val.append(val)
        self.cortex.append(cortex)

    def freeze(self) -> None:
        p0 = np.array(self.p0, np.float64).reshape(-1, 3)
        p1 = np.array(self.p1, np.float64).reshape(-1, 3)
        rmax = np.maximum(np.array(self.r0), np.array(self.r1)) if self.r0 else np.zeros(0)
        self.arr = {
            "p0": p0,
            "p1": p1,
            "r0": np.array(self.r0, np.float64),
            "r1": np.array(self.r1, np.float64),
            "val": np.array(self.val, np.float64),
            "cortex": np.array(self.cortex, np.float64),
            "zlo": np.minimum(p0[:, 2], p1[:, 2]) - rmax,
            "zhi": np.maximum(p0[:, 2], p1[:, 2]) + rmax,
        }


class SlabBuffers:
    """Coverage (max over a class's segments) and the value where that max was reached."""

    def __init__(self, nk: int, h: int, w: int) -> None:
        self.shape = (nk, h, w)
        self.cov: dict[str, np.ndarray] = {}
        self.val: dict[str, np.ndarray] = {}
        self.inner: dict[str, np.ndarray] = {}
        self.ival: dict[str, np.ndarray] = {}


def _raster(
    tubes: Tubes,
    zsub: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    px: float,
    buf: SlabBuffers,
) -> None:
    """Rasterise ``tubes`` into the slab whose sub-slice planes are ``zsub`` [nk, nsub]."""
    a = tubes.arr
    _, nsub = zsub.shape
    if not len(a["val"]):
        return
    zmin, zmax = float(zsub.min()), float(zsub.max())
    idx = np.flatnonzero((a["zhi"] >= zmin - px) & (a["zlo"] <= zmax + px))
    if not len(idx):
        return
    bone = bool((a["cortex"][idx] > 0).any())
    if tubes.name not in buf.cov:
        buf.cov[tubes.name] = np.zeros(buf.shape, np.float32)
        buf.val[tubes.name] = np.zeros(buf.shape, np.float32)
    cov_b, val_b = buf.cov[tubes.name], buf.val[tubes.name]
    if bone and tubes.name not in buf.inner:
        buf.inner[tubes.name] = np.zeros(buf.shape, np.float32)
    in_b = buf.inner.get(tubes.name)
    W, H = len(xs), len(ys)
    zk_lo, zk_hi = zsub.min(1), zsub.max(1)
    x_org, y_org = float(xs[0]), float(ys[0])
    for i in idx:
        p0, p1 = a["p0"][i], a["p1"][i]
        r0, r1 = float(a["r0"][i]), float(a["r1"][i])
        rm = max(r0, r1) + px
        ks = np.flatnonzero((zk_hi >= a["zlo"][i] - px) & (zk_lo <= a["zhi"][i] + px))
        if not len(ks):
            continue
        c0 = max(0, int((min(p0[0], p1[0]) - rm - x_org) / px))
        c1 = min(W, int((max(p0[0], p1[0]) + rm - x_org) / px) + 2)
        w0 = max(0, int((min(p0[1], p1[1]) - rm - y_org) / px))
        w1 = min(H, int((max(p0[1], p1[1]) + rm - y_org) / px) + 2)
        if c1 <= c0 or w1 <= w0:
            continue
        X = (xs[c0:c1] - p0[0]).astype(np.float32)[None, None, :]
        Y = (ys[w0:w1] - p0[1]).astype(np.float32)[None, :, None]
        Z = (zsub[ks].reshape(-1) - p0[2]).astype(np.float32)[:, None, None]
        d = p1 - p0
        L2 = float(d @ d)
        if L2 > 1e-9:
            t = (X * (d[0] / L2) + Y * (d[1] / L2)) + Z * (d[2] / L2)
            np.clip(t, 0.0, 1.0, out=t)
            qx = X - t * d[0]
            qy = Y - t * d[1]
            qz = Z - t * d[2]
            dist = np.sqrt(qx * qx + qy * qy + qz * qz)
            r = r0 + t * (r1 - r0)
        else:
            dist = np.sqrt(X * X + Y * Y + Z * Z)
            r = np.float32(r0)
        cov = _clip01(0.5 + (r - dist) / px)
        cov = cov.reshape(len(ks), nsub, w1 - w0, c1 - c0).mean(1)
        reg = cov_b[ks, w0:w1, c0:c1]
        upd = cov > reg
        v = float(a["val"][i])
        rv = val_b[ks, w0:w1, c0:c1]
        rv[upd] = v
        val_b[ks, w0:w1, c0:c1] = rv
        cov_b[ks, w0:w1, c0:c1] = np.maximum(reg, cov)
        ct = float(a["cortex"][i])
        if ct > 0 and in_b is not None:
            ci = _clip01(0.5 + (r - ct - dist) / px)
            ci = ci.reshape(len(ks), nsub, w1 - w0, c1 - c0).mean(1)
            reg = in_b[ks, w0:w1, c0:c1]
            in_b[ks, w0:w1, c0:c1] = np.maximum(reg, ci)


# -- the study plan -----------------------------------------------------------------------------


@dataclass
class Branch:
    pts: list[np.ndarray]  # patient (u, v, zc)
    radii: list[float]
    gen: int  # -1 central, 0 lobar, 1 segmental, 2 subsegmental, 3+ smaller
    lobe: str
    parent: int
    children: list[int] = field(default_factory=list)
    value: float = 0.0


@dataclass
class Clot:
    level: str
    mode: str  # polo, eccentric, occlusive, saddle
    pts: list[np.ndarray]
    radii: list[float]
    hu: float
    branch: int


class Chest:
    """All of one study's random choices (drawn once, in a fixed order) and its painting."""

    def __init__(self, seed: int, label: bool) -> None:
        self.seed = seed
        self.label = label
        rng = np.random.default_rng([seed, 0xC7])
        self.rng = rng
        self.notes: list[str] = []
        self._acquisition(rng)
        self._body(rng)
        self._values(rng)
        self._skeleton_levels(rng)
        self.art: list[Branch] = []
        self.veins: list[Branch] = []
        self.tubes: dict[str, Tubes] = {
            n: Tubes(n)
            for n in (
                "sheath",
                "emph",
                "eso",
                "airwall",
                "airlumen",
                "node",
                "systemic",
                "vein",
                "artery",
                "clot",
                "cart",
                "bone",
                "m_trunk",
                "m_vein",
            )
        }
        self._central_vessels(rng)
        self._pulmonary_trees(rng)
        self._airways(rng)
        self._nodes(rng)
        self._emphysema(rng)
        self.clots: list[Clot] = []
        if label:
            self._emboli(rng)
        self._mimic_flow(rng)
        self._ribs(rng)
        self._spine_tubes(rng)
        self._extras(rng)
        self._emit_pulmonary()
        for t in self.tubes.values():
            t.freeze()
        self.kinds = tuple(lv for lv in LEVELS if any(c.level == lv for c in self.clots))

    # -- acquisition ----------------------------------------------------------------------------

    def _acquisition(self, rng: np.random.Generator) -> None:
        if rng.random() < 0.85:
            self.thick = float(rng.choice([0.625, 0.75, 0.8, 1.0, 1.25]))
        else:
            self.thick = float(rng.choice([2.0, 2.5, 3.0]))
        self.spacing = self.thick * (float(rng.choice([0.5, 0.8])) if rng.random() < 0.25 else 1.0)
        self.kernel_kind = str(rng.choice(["soft", "standard", "standard", "sharp"]))
        vendor = int(rng.integers(4))
        self.vendor = vendor
        self.kvp = float(rng.choice([100.0, 120.0, 120.0, 80.0 + 20 * int(rng.integers(0, 3))]))
        self.offset_hu = float(rng.uniform(-6, 6))
        self.pos = (float(rng.uniform(-20, 20)), float(rng.uniform(-20, 20)))
        self.theta = float(np.clip(rng.normal(0, 4.5), -12, 12)) * math.pi / 180
        self.z_carina_scanner = float(rng.uniform(-420, -60))
        self.motion = rng.random() < 0.25
        self.motion_amp = float(rng.uniform(2.0, 7.0))
        self.motion_period = float(rng.uniform(8.0, 22.0))
        self.motion_phase = float(rng.uniform(0, 2 * math.pi))

    def _body(self, rng: np.random.Generator) -> None:
        h = float(rng.beta(2.0, 2.5))  # habitus 0 thin .. 1 large
        self.habitus = h
        self.a = 145 + 45 * h + float(rng.normal(0, 6))
        self.b = self.a * float(rng.uniform(0.65, 0.8))
        self.fat = 5 + 38 * h**1.4 + float(rng.uniform(0, 6))
        self.fat_post = self.fat * float(rng.uniform(0.5, 0.9))
        self.muscle = float(rng.uniform(9, 18))
        self.muscle_post = float(rng.uniform(28, 45))
        self.back = self.b * float(rng.uniform(0.86, 0.94))
        self.female = rng.random() < 0.5
        self.breast = (
            float(rng.uniform(35, 65)),
            float(rng.uniform(20, 45)) * (0.6 + h),
            float(rng.uniform(0.15, 0.6)),
        )
        self.arms_down = rng.random() < 0.2
        self.arm_gap = float(rng.uniform(3, 25))
        self.arm_r = float(rng.uniform(38, 55)) * (0.85 + 0.4 * h)
        # cavity (inner surface of the ribs)
        wall = (self.fat + self.fat_post) / 2 + self.muscle + 12
        self.ac = self.a - wall
        self.bca = self.b - 0.6 * self.fat - self.muscle - 6
        self.bcp = self.back - self.fat_post - 0.5 * self.muscle - 10
        self.vcav = (self.bcp - self.bca) / 2  # centre of the cavity ellipse in v
        self.bcav = (self.bcp + self.bca) / 2
        self.apex = float(rng.uniform(85, 120))
        self.apex_len = float(rng.uniform(60, 85))
        self.dome_r = -float(rng.uniform(80, 115))
        self.dome_l = self.dome_r - float(rng.uniform(5, 25))
        self.dome_depth = float(rng.uniform(55, 85))
        self.scoliosis = float(rng.uniform(0, 9)) * float(rng.choice([-1, 1]))
        # fit the field of view to the patient
        need = self.a + abs(self.pos[0]) + 12
        if self.arms_down:
            need = max(need, self.a + self.arm_gap + 1.4 * self.arm_r + abs(self.pos[0]))
        self.px = float(np.clip(2 * need / N * float(rng.uniform(1.0, 1.12)), 0.6, 0.86))
        top = self.apex + float(rng.uniform(15, 40))
        zrange = float(rng.uniform(250, 320))
        lowest = min(self.dome_r, self.dome_l) - self.dome_depth - 15
        zrange = min(max(zrange, top - lowest), 330.0)
        self.z_top_anat = top
        n = int(zrange / self.spacing) + 1
        if n > MAX_SLICES:
            self.spacing = zrange / (MAX_SLICES - 1)
            if self.spacing > 1.6 * self.thick:
                self.thick = round(self.spacing, 3)
            n = MAX_SLICES
        self.n_slices = n

    def _values(self, rng: np.random.Generator) -> None:
        self.poor = rng.random() < 0.22
        self.pa_hu = float(rng.uniform(150, 245) if self.poor else rng.uniform(255, 500))
        if self.poor:
            self.notes.append("poor_contrast")
        self.vein_hu = float(np.clip(self.pa_hu * rng.uniform(0.4, 0.75), 95, 250))
        self.aorta_hu = float(np.clip(self.pa_hu * rng.uniform(0.5, 0.95), 140, 350))
        self.dense_svc = rng.random() < 0.45
        self.svc_hu = float(rng.uniform(1000, 2500) if self.dense_svc else rng.uniform(250, 700))
        self.streaks = self.dense_svc and rng.random() < 0.8
        if self.streaks:
            self.notes.append("dense_svc_streaks")
        elif self.dense_svc:
            self.notes.append("dense_svc")
        self.inject_right = rng.random() < 0.75
        self.blood = float(rng.uniform(35, 55))
        self.fat_hu = float(rng.uniform(-120, -80))
        self.muscle_hu = float(rng.uniform(35, 60))
        self.myo_hu = float(rng.uniform(50, 90))
        self.liver_hu = float(rng.uniform(50, 75))
        self.spleen_hu = float(rng.uniform(50, 80))
        self.lung_hu = float(rng.uniform(-880, -780))
        self.lung_grad = float(rng.uniform(30, 110))
        self.lung_tex = float(rng.uniform(8, 22))
        self.cortex_hu = float(rng.uniform(900, 1500))
        self.osteo = rng.random() < 0.2
        self.marrow_hu = float(rng.uniform(40, 100) if self.osteo else rng.uniform(110, 300))
        if self.osteo:
            self.notes.append("osteoporotic_spine")
        self.marrow_tex = float(rng.uniform(15, 40))
        self.disc_hu = float(rng.uniform(60, 110))
        self.cart_hu = float(rng.uniform(60, 140))
        self.skin_hu = float(rng.uniform(20, 50))
        self.node_hu = (20.0, 60.0)
        self.atelectasis = rng.random() < 0.35
        self.atel_hu = float(rng.uniform(-500, 0))
        self.atel_t = float(rng.uniform(5, 25))
        if self.atelectasis:
            self.notes.append("dependent_atelectasis")
        self.emphysema = rng.random() < 0.2
        if self.emphysema:
            self.notes.append("emphysema")
            self.lung_hu -= float(rng.uniform(20, 60))
        self.sigma = (
            float(rng.uniform(5.5, 9.0)) * (0.8 + 0.8 * self.habitus) * math.sqrt(1.25 / self.thick)
        )
        self.sigma = float(np.clip(self.sigma, 5.0, 20.0))
        if self.arms_down:
            self.notes.append("arms_down")
            self.sigma *= 1.2
        if self.motion:
            self.notes.append("motion")

    # -- geometry helpers -----------------------------------------------------------------------

    def cavity(self, zc: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cavity semi-axes (lateral, AP) and centre v at ``zc`` (scaled toward the apex)."""
        z = np.asarray(zc, dtype=np.float64)
        s = np.sqrt(np.clip((self.apex + 6 - z) / self.apex_len, 0.02, 1.0))
        s = 0.25 + 0.75 * s
        low = 1 - 0.06 * np.clip((self.dome_r - z) / 80, 0, 1)
        return self.ac * s * low, self.bcav * (0.55 + 0.45 * s), self.vcav + 0 * z

    def dome(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Height of the diaphragm (zc) below each (u, v) and the size of its gradient."""
        right = u < 0
        top = np.where(right, self.dome_r, self.dome_l)
        uc = np.where(right, -0.45, 0.45) * self.ac
        du = (u - uc) / self.ac
        dv = (v - (self.vcav - 0.15 * self.bcav)) / self.bcav
        kv = np.where(dv > 0, 1.0, 0.55)
        f = du * du + kv * dv * dv
        z = top - self.dome_depth * f
        gu = 2 * self.dome_depth * du / self.ac
        gv = 2 * self.dome_depth * kv * dv / self.bcav
        return z, np.sqrt(gu * gu + gv * gv)

    def to_image(self, p: np.ndarray) -> Vec:
        c, s = math.cos(self.theta), math.sin(self.theta)
        u, v, z = float(p[0]), float(p[1]), float(p[2])
        return (self.pos[0] + c * u - s * v, self.pos[1] + s * u + c * v, z)

    def heart_local(self, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
        c, s = math.cos(self.h_psi), math.sin(self.h_psi)
        du, dv = u - self.h_c[0], v - self.h_c[1]
        return c * du + s * dv, -s * du + c * dv, z - self.h_c[2]

    def lung_inside(self, p: np.ndarray, margin: float = 3.0) -> np.ndarray:
        """Whether points [n, 3] (patient frame) lie in a lung, ``margin`` mm from its edges."""
        u, v, z = p[:, 0], p[:, 1], p[:, 2]
        ac, bc, vc = self.cavity(z)
        ok = _cavity_rho(u, v, ac - margin, bc - margin, vc) < 1
        dz, _ = self.dome(u, v)
        ok &= z > dz + margin
        ok &= z < self.apex - margin
        a, b, c = self.heart_local(u, v, z)
        A = self.h_ax
        ok &= (a / (A[0] + 8 + margin)) ** 2 + (b / (A[1] + 8 + margin)) ** 2 + (
            c / (A[2] + 8 + margin)
        ) ** 2 > 1
        ok &= np.abs(u - self.band_u(z)) > self.band_w(z) + margin
        sp = (np.abs(u) < 32 + margin) & (v > self.v_vb(z) - 12 - margin)
        ok &= ~sp
        return ok

    def band_u(self, z: Any) -> np.ndarray:
        return 4.0 + 0 * np.asarray(z)

    def band_w(self, z: Any) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        return (
            self.band0
            + 6 * np.clip((z - 10) / 60, 0, 1)
            + 10 * np.clip((25 - np.abs(z - 5)) / 25, 0, 1)
        )

    def v_vb(self, z: np.ndarray | float) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        mid = (self.apex + self.dome_r) / 2
        return self.vb_v0 + self.kyph * (1 - ((z - mid) / 150) ** 2)

    # -- skeleton levels ------------------------------------------------------------------------

    def _skeleton_levels(self, rng: np.random.Generator) -> None:
        scale = float(rng.uniform(0.9, 1.1))
        heights = [(17 + 0.7 * i) * scale for i in range(14)]  # T1..L2
        discs = [(3.2 + 0.2 * i) * scale for i in range(14)]
        # the T4/T5 disc near the carina
        tops = []
        z = 5.0 + float(rng.uniform(-6, 6)) + discs[3] / 2 + sum(heights[:4]) + sum(discs[:3])
        for i in range(14):
            tops.append(z)
            z -= heights[i] + discs[i]
        self.vert = [(tops[i] - heights[i], tops[i]) for i in range(14)]  # (zlo, zhi)
        self.vb_half = [(15 + 0.55 * i) * scale for i in range(14)]  # lateral semi-axis
        self.vb_ap = [(12 + 0.45 * i) * scale for i in range(14)]
        self.vb_v0 = self.bcav + self.vcav - 35 - float(rng.uniform(0, 8))
        self.kyph = float(rng.uniform(0, 12))
        self.vb_cortex = float(rng.uniform(0.8, 1.5))
        self.band0 = float(rng.uniform(7, 13))
        self.canal = (float(rng.uniform(8, 10)), float(rng.uniform(7, 8.5)))

    def vertebra_at(self, z: float) -> int:
        for i, (lo, _hi) in enumerate(self.vert):
            if z >= lo - 6:
                return i
        return len(self.vert) - 1

    # -- central vessels ------------------------------------------------------------------------

    def _central_vessels(self, rng: np.random.Generator) -> None:
        ac = self.ac
        self.h_ax = (
            float(rng.uniform(55, 72)),
            float(rng.uniform(44, 56)),
            float(rng.uniform(38, 50)),
        )
        self.h_c = (
            float(rng.uniform(0.12, 0.25)) * ac,
            self.vcav - float(rng.uniform(0.15, 0.3)) * self.bcav,
            self.dome_l + self.h_ax[2] * float(rng.uniform(0.55, 0.8)),
        )
        self.h_psi = float(rng.uniform(25, 45)) * math.pi / 180
        hx, hy, hz = self.h_c
        A = self.h_ax
        tr_v = self.v_vb(0.0) - self.vb_ap[4] - float(rng.uniform(12, 18))
        self.tr_v = float(tr_v)
        self.tr_r = float(rng.uniform(8, 11))
        bif = np.array(
            [
                float(rng.uniform(8, 22)),
                self.tr_v - float(rng.uniform(14, 24)),
                float(rng.uniform(-2, 12)),
            ]
        )
        rvot = np.array([hx - 0.1 * A[0], hy - 0.75 * A[1], hz + 0.5 * A[2]])
        r_tr = float(rng.uniform(12, 16))
        mid = (rvot + bif) / 2 + np.array([4.0, -6.0, 0.0])
        self.trunk = [rvot, mid, bif]
        self.r_trunk = r_tr
        r_main = r_tr * float(rng.uniform(0.68, 0.8))
        hil_r = np.array(
            [-0.42 * ac, self.tr_v + float(rng.uniform(0, 10)), bif[2] - float(rng.uniform(8, 16))]
        )
        hil_l = np.array(
            [0.4 * ac, self.tr_v + float(rng.uniform(8, 18)), bif[2] + float(rng.uniform(-2, 8))]
        )
        rpa = [
            bif,
            np.array([-12.0, bif[1] + 14, bif[2] - 4]),
            np.array([-32.0, self.tr_v - 4, hil_r[2] + 2]),
            hil_r,
        ]
        lpa = [
            bif,
            np.array([bif[0] + 16, self.tr_v - 8, bif[2] + 8]),
            np.array([0.3 * ac, self.tr_v + 6, hil_l[2] + 5]),
            hil_l,
        ]
        self.art.append(Branch(self.trunk, [r_tr, r_tr, r_tr * 0.95], -1, "trunk", -1))
        self.art.append(Branch(rpa, [r_main, r_main, r_main * 0.92, r_main * 0.85], -1, "R", 0))
        self.art.append(Branch(lpa, [r_main, r_main, r_main * 0.92, r_main * 0.85], -1, "L", 0))
        self.art[0].children = [1, 2]
        self.hila = {"R": hil_r, "L": hil_l}
        # aorta
        ra = float(rng.uniform(14, 18))
        rd = float(rng.uniform(10.5, 13))
        root = np.array([hx - 0.35 * A[0], hy - 0.05 * A[1], hz + 0.45 * A[2]])
        asc = np.array([-14.0, self.tr_v - 38, float(rng.uniform(30, 42))])
        arch_top = np.array([-2.0, self.tr_v - 18, asc[2] + float(rng.uniform(12, 22))])
        arch_l = np.array([20.0, self.tr_v + 8, asc[2] + 8])
        vvb = float(self.v_vb(0.0))
        desc0 = np.array([24.0, vvb - 12, asc[2] - 10])
        desc1 = np.array([18.0, float(self.v_vb(-150)) - 14, min(self.dome_r, self.dome_l) - 70])
        aorta = [
            (root, ra),
            (asc, ra),
            (arch_top, (ra + rd) / 2),
            (arch_l, rd * 1.05),
            (desc0, rd),
            ((desc0 + desc1) / 2, rd),
            (desc1, rd * 0.95),
        ]
        self.aorta = aorta
        self._chain("systemic", aorta, self.aorta_hu, sheath=4.0)
        top = self.z_top_anat + 10
        for du, r in ((-6.0, 6.5), (6.0, 4.0), (17.0, 5.0)):
            a0 = arch_top + np.array([du, 4.0, 0.0])
            a1 = np.array(
                [du * 2.5 - (12 if du < 0 else 0), self.tr_v - 20 + (8 if du > 10 else 0), top]
            )
            self._chain("systemic", [(a0, r), (a1, r * 0.9)], self.aorta_hu, sheath=3.0)
        # veins of the upper mediastinum: SVC, brachiocephalic, azygos, IVC
        ra_c = np.array([hx - 0.6 * A[0], hy + 0.1 * A[1], hz + 0.3 * A[2]])
        self.ra_c = ra_c
        r_svc = float(rng.uniform(8.5, 12))
        svc_top = np.array([-32.0, self.tr_v - 26, 68.0])
        svc = [
            (svc_top, r_svc),
            (np.array([-30.0, self.tr_v - 22, 20.0]), r_svc),
            (ra_c + np.array([4.0, -6.0, 20.0]), r_svc * 1.1),
        ]
        self.svc = svc
        self._chain("systemic", svc, self.svc_hu, sheath=3.0)
        dense_r = self.svc_hu if self.inject_right else self.blood + 15
        dense_l = self.svc_hu if not self.inject_right else self.blood + 15
        self._chain(
            "systemic",
            [(svc_top, r_svc * 0.9), (np.array([-48.0, self.tr_v - 30, top]), 7.5)],
            dense_r,
            sheath=3.0,
        )
        self._chain(
            "systemic",
            [
                (svc_top + np.array([0.0, 0.0, 4.0]), 6.5),
                (np.array([10.0, self.tr_v - 42, 80.0]), 6.5),
                (np.array([0.45 * ac, self.tr_v - 34, top]), 6.5),
            ],
            dense_l,
            sheath=2.0,
        )
        az = [
            (np.array([-14.0, vvb - 4, min(self.dome_r, self.dome_l) - 40]), 4.0),
            (np.array([-14.0, vvb - 6, 10.0]), 4.5),
            (np.array([-22.0, self.tr_v + 2, 24.0]), 5.0),
            (np.array([-30.0, self.tr_v - 18, 26.0]), 5.0),
        ]
        self._chain("systemic", az, self.blood + float(rng.uniform(0, 40)), sheath=2.0)
        r_ivc = float(rng.uniform(11, 14))
        self.ivc_hu = self.blood + float(rng.uniform(10, 60))
        ivc = [
            (np.array([-0.2 * ac, vvb - 22, self.dome_r - 120]), r_ivc),
            (np.array([-0.25 * ac, vvb - 28, self.dome_r - 10]), r_ivc),
            (ra_c + np.array([0.0, 4.0, -0.45 * A[2]]), r_ivc),
        ]
        self._chain("systemic", ivc, self.ivc_hu, sheath=0.0)
        # oesophagus
        eso_r = float(rng.uniform(6.5, 9.5))
        eso = [
            (np.array([3.0, self.tr_v + self.tr_r + eso_r + 1, top]), eso_r),
            (np.array([8.0, vvb - 22, -20.0]), eso_r),
            (np.array([12.0, vvb - 30, self.dome_l - 10]), eso_r),
            (np.array([30.0, vvb - 40, self.dome_l - 60]), eso_r),
        ]
        self._chain("eso", eso, self.muscle_hu, sheath=2.0)
        if rng.random() < 0.4:
            self._chain("airlumen", [(eso[0][0], 2.5), (eso[1][0], 2.0)], -1000.0)

    def _chain(
        self,
        cls: str,
        pts: list[tuple[np.ndarray, float]],
        val: float,
        sheath: float = 0.0,
        cortex: float = 0.0,
    ) -> None:
        for (a, ra), (b, rb) in itertools.pairwise(pts):
            self.tubes[cls].add(self.to_image(a), self.to_image(b), ra, rb, val, cortex)
            if sheath > 0:
                self.tubes["sheath"].add(
                    self.to_image(a), self.to_image(b), ra + sheath, rb + sheath, 0.0
                )

    # -- pulmonary trees ------------------------------------------------------------------------

    def _lobe_targets(self, rng: np.random.Generator, lobe: str, n: int) -> list[np.ndarray]:
        side = -1.0 if lobe.startswith("R") else 1.0
        ac, bc, vc = self.ac, self.bcav, self.vcav
        dome = self.dome_r if side < 0 else self.dome_l
        boxes = {
            "RU": ((0.2, 0.9), (-0.7, 0.6), (15, self.apex - 10)),
            "RM": ((0.3, 0.9), (-0.9, -0.2), (dome + 5, -10)),
            "RL": ((0.2, 0.9), (-0.1, 0.9), (dome - 45, 5)),
            "LU": ((0.2, 0.9), (-0.7, 0.6), (15, self.apex - 10)),
            "LM": ((0.35, 0.9), (-0.9, -0.15), (dome + 10, -5)),
            "LL": ((0.2, 0.9), (-0.1, 0.9), (dome - 45, 5)),
        }
        (u0, u1), (v0, v1), (z0, z1) = boxes[lobe]
        out: list[np.ndarray] = []
        for _ in range(60):
            cand = np.stack(
                [
                    side * ac * rng.uniform(u0, u1, 32),
                    vc + bc * rng.uniform(v0, v1, 32),
                    rng.uniform(z0, z1, 32),
                ],
                axis=1,
            )
            ok = cand[self.lung_inside(cand, margin=12.0)]
            out.extend(ok[: n - len(out)])
            if len(out) >= n:
                break
        return out

    def _grow(
        self,
        rng: np.random.Generator,
        tree: list[Branch],
        parent: int,
        start: np.ndarray,
        direc: np.ndarray,
        r: float,
        gen: int,
        lobe: str,
        max_gen: int,
        target: np.ndarray | None = None,
    ) -> None:
        """Grow one branch from ``start`` (and its descendants) inside the lung."""
        length = float(np.clip(r * rng.uniform(8, 13), 9, 40))
        if target is not None:
            dist = float(np.linalg.norm(target - start))
            length = float(np.clip(dist * rng.uniform(0.45, 0.7), 8, 45))
        d = direc / (np.linalg.norm(direc) + 1e-9)
        pts = [start]
        p = start.copy()
        ok_len = 0.0
        nseg = 3
        for _ in range(nseg):
            bend = rng.normal(0, 0.12, 3)
            d2 = d + bend
            d2 /= np.linalg.norm(d2)
            q = p + d2 * (length / nseg)
            if not self.lung_inside(q[None], margin=r + 1.5)[0]:
                break
            pts.append(q)
            p, d = q, d2
            ok_len += length / nseg
        if len(pts) < 2:
            return
        radii = list(np.linspace(r, r * 0.9, len(pts)))
        idx = len(tree)
        tree.append(Branch(pts, radii, gen, lobe, parent))
        if parent >= 0:
            tree[parent].children.append(idx)
        if gen >= max_gen or r < 0.55:
            return
        nchild = 2 if gen >= 3 else int(rng.integers(2, 4))
        az0 = rng.uniform(0, 2 * math.pi)
        # two unit vectors perpendicular to d
        e1 = np.cross(d, [0.0, 0.0, 1.0])
        if np.linalg.norm(e1) < 1e-3:
            e1 = np.cross(d, [1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(d, e1)
        for k in range(nchild):
            az = az0 + 2 * math.pi * k / nchild + rng.normal(0, 0.3)
            ang = rng.uniform(0.35, 0.75)
            cd = math.cos(ang) * d + math.sin(ang) * (math.cos(az) * e1 + math.sin(az) * e2)
            rc = r * rng.uniform(0.62, 0.8)
            if gen + 1 == 1:
                rc = float(np.clip(rc, 1.9, 3.2))
            elif gen + 1 == 2:
                rc = float(np.clip(rc, 1.0, 1.9))
            self._grow(rng, tree, idx, pts[-1], cd, rc, gen + 1, lobe, max_gen)

    def _pulmonary_trees(self, rng: np.random.Generator) -> None:
        max_gen = 4
        for side in ("R", "L"):
            hil = self.hila[side]
            main = 1 if side == "R" else 2
            for lobe in (side + "U", side + "M", side + "L"):
                targets = self._lobe_targets(rng, lobe, int(rng.integers(3, 6)))
                if not targets:
                    continue
                centre = np.mean(targets, axis=0)
                r_lobar = float(rng.uniform(3.5, 6.0))
                d = centre - hil
                start = hil.copy()
                length = float(np.clip(np.linalg.norm(d) * rng.uniform(0.25, 0.4), 12, 35))
                end = start + d / np.linalg.norm(d) * length
                if not self.lung_inside(end[None], margin=r_lobar)[0]:
                    end = start + d / np.linalg.norm(d) * length * 0.5
                idx = len(self.art)
                self.art.append(
                    Branch(
                        [start, (start + end) / 2, end],
                        [r_lobar, r_lobar * 0.97, r_lobar * 0.93],
                        0,
                        lobe,
                        main,
                    )
                )
                self.art[main].children.append(idx)
                for t in targets:
                    self._grow(
                        rng,
                        self.art,
                        idx,
                        end,
                        t - end,
                        float(rng.uniform(2.0, 3.0)),
                        1,
                        lobe,
                        max_gen,
                        target=t,
                    )
        # veins: four trunks from the left atrium
        hx, hy, hz = self.h_c
        A = self.h_ax
        la = np.array([hx - 0.1 * A[0], hy + 0.65 * A[1], hz + 0.45 * A[2]])
        self.la_c = la
        for side, lobes in (
            ("R", ("RU", "RM")),
            ("R", ("RL",)),
            ("L", ("LU", "LM")),
            ("L", ("LL",)),
        ):
            sgn = -1 if side == "R" else 1
            up = lobes[0].endswith("U")
            ost = la + np.array([sgn * 0.35 * A[0], 6.0, (8.0 if up else -8.0)])
            r_v = float(rng.uniform(5, 7.5))
            lateral = ost + np.array(
                [
                    sgn * float(rng.uniform(18, 30)),
                    float(rng.uniform(-8, 8)),
                    (12.0 if up else -10.0),
                ]
            )
            idx = len(self.veins)
            self.veins.append(Branch([ost, lateral], [r_v, r_v * 0.9], 0, lobes[0], -1))
            for lobe in lobes:
                for t in self._lobe_targets(rng, lobe, int(rng.integers(2, 4))):
                    self._grow(
                        rng,
                        self.veins,
                        idx,
                        lateral,
                        t - lateral,
                        float(rng.uniform(2.2, 3.6)),
                        1,
                        lobe,
                        max_gen,
                        target=t,
                    )

    # -- airways --------------------------------------------------------------------------------

    def _airways(self, rng: np.random.Generator) -> None:
        wall = float(rng.uniform(1.2, 2.2))
        top = self.z_top_anat + 10
        car = np.array([0.0, self.tr_v, 0.0])
        self._airway(
            [
                (np.array([0.0, self.tr_v - 6, top]), self.tr_r),
                (np.array([0.0, self.tr_v - 2, 60.0]), self.tr_r),
                (car, self.tr_r * 0.9),
            ],
            -1000.0,
            wall,
            sheath=3.0,
        )
        rb = float(rng.uniform(6, 8))
        lb = float(rng.uniform(5, 7))
        self._airway(
            [(car, rb), (np.array([-0.3 * self.ac, self.tr_v + 10, -18.0]), rb * 0.85)],
            -1000.0,
            wall,
        )
        self._airway(
            [(car, lb), (np.array([0.33 * self.ac, self.tr_v + 16, -14.0]), lb * 0.85)],
            -1000.0,
            wall,
        )
        self.wall = wall
        self.mucus: set[int] = set()
        if rng.random() < 0.35:
            cand = [i for i, b in enumerate(self.art) if b.gen in (1, 2)]
            for i in rng.choice(cand, size=min(len(cand), int(rng.integers(1, 4))), replace=False):
                self.mucus.add(int(i))
            self.notes.append("mucus_bronchi")
        self.mucus_hu = float(rng.uniform(0, 30))
        # a bronchus beside each lobar, segmental and subsegmental artery, sharing its offset
        offsets: dict[int, np.ndarray] = {}
        for i, br in enumerate(self.art):
            if br.gen < 0 or br.gen > 2:
                continue
            p = np.array(br.pts)
            d = p[-1] - p[0]
            d /= np.linalg.norm(d) + 1e-9
            base = offsets.get(br.parent)
            if base is None:
                e = (
                    np.cross(d, [0.0, 0.0, 1.0])
                    if abs(d[2]) < 0.9
                    else np.cross(d, [1.0, 0.0, 0.0])
                )
                base = e / np.linalg.norm(e)
            off = base - (base @ d) * d
            off /= np.linalg.norm(off) + 1e-9
            offsets[i] = off
            rb_ = br.radii[0] * float(rng.uniform(0.65, 0.9))
            gap = br.radii[0] + rb_ + wall + 0.6
            pts = [(q + off * gap, rb_ * (1 - 0.1 * j / len(p))) for j, q in enumerate(p)]
            mucus = i in self.mucus or br.parent in self.mucus
            if mucus:
                self.mucus.add(i)
            self._airway(
                pts,
                self.mucus_hu if mucus else -1000.0,
                max(0.6, wall * (0.5 + 0.25 * (2 - br.gen))),
            )

    def _airway(
        self, pts: list[tuple[np.ndarray, float]], lumen: float, wall: float, sheath: float = 0.0
    ) -> None:
        for (a, ra), (b, rb) in itertools.pairwise(pts):
            A, B = self.to_image(a), self.to_image(b)
            self.tubes["airwall"].add(A, B, ra + wall, rb + wall, self.muscle_hu - 15)
            self.tubes["airlumen"].add(A, B, ra, rb, lumen)
            if sheath:
                self.tubes["sheath"].add(A, B, ra + wall + sheath, rb + wall + sheath, 0.0)

    def _nodes(self, rng: np.random.Generator) -> None:
        lobar = [b for b in self.art if b.gen in (-1, 0)]
        n = int(rng.integers(3, 9))
        for _ in range(n):
            br = lobar[int(rng.integers(len(lobar)))]
            k = int(rng.integers(len(br.pts)))
            c = br.pts[k]
            rn = float(rng.uniform(3, 7))
            d = rng.normal(0, 1, 3)
            d /= np.linalg.norm(d)
            p = c + d * (br.radii[min(k, len(br.radii) - 1)] + rn + 1.0)
            self._node(p, rn, float(rng.uniform(*self.node_hu)), rng)
        # subcarinal and right paratracheal
        self._node(
            np.array([2.0, self.tr_v + 8, -22.0]),
            float(rng.uniform(4, 9)),
            float(rng.uniform(*self.node_hu)),
            rng,
        )
        self._node(
            np.array([-self.tr_r - 7, self.tr_v - 4, 25.0]),
            float(rng.uniform(3, 7)),
            float(rng.uniform(*self.node_hu)),
            rng,
        )
        if rng.random() < 0.2:
            br = lobar[int(rng.integers(len(lobar)))]
            self._node(
                br.pts[-1] + np.array([0.0, 0.0, br.radii[-1] + 4.0]),
                3.0,
                float(rng.uniform(300, 800)),
                rng,
            )
            self.notes.append("calcified_node")
        self.notes.append("hilar_nodes")

    def _node(self, p: np.ndarray, r: float, hu: float, rng: np.random.Generator) -> None:
        d = rng.normal(0, 1, 3)
        d *= r * 0.5 / (np.linalg.norm(d) + 1e-9)
        self.tubes["node"].add(self.to_image(p - d), self.to_image(p + d), r, r * 0.9, hu)

    def _emphysema(self, rng: np.random.Generator) -> None:
        if not self.emphysema:
            return
        n = int(rng.integers(60, 220))
        pts: list[np.ndarray] = []
        for side in ("RU", "LU", "RL", "LL"):
            pts += self._lobe_targets(rng, side, n // 4 if side.endswith("U") else n // 12)
        for p in pts:
            r = float(rng.uniform(1.5, 5.0))
            self.tubes["emph"].add(
                self.to_image(p),
                self.to_image(p + rng.normal(0, 1, 3)),
                r,
                r,
                float(rng.uniform(-1000, -960)),
            )
        if rng.random() < 0.4:
            bulla = self._lobe_targets(rng, "RU" if rng.random() < 0.5 else "LU", 1)
            if bulla:
                r = float(rng.uniform(10, 22))
                self.tubes["emph"].add(
                    self.to_image(bulla[0]), self.to_image(bulla[0] + 2.0), r, r, -1000.0
                )

    # -- emboli and flow mimics -----------------------------------------------------------------

    def _path(self, tree: list[Branch], i: int) -> tuple[np.ndarray, np.ndarray]:
        """Points and radii along branch ``i`` continued into its first child (twice)."""
        pts = list(tree[i].pts)
        rad = list(tree[i].radii)
        j = i
        for _ in range(2):
            if not tree[j].children:
                break
            j = tree[j].children[0]
            pts += tree[j].pts[1:]
            rad += tree[j].radii[1:]
        return np.array(pts), np.array(rad)

    def _sub_path(
        self, pts: np.ndarray, rad: np.ndarray, s0: float, s1: float
    ) -> tuple[list[np.ndarray], list[float]]:
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        s1 = min(s1, float(s[-1]))
        s0 = min(s0, s1 - 1.0)
        grid = np.concatenate([[s0], s[(s > s0) & (s < s1)], [s1]])
        out = [np.array([np.interp(g, s, pts[:, k]) for k in range(3)]) for g in grid]
        return out, [float(np.interp(g, s, rad)) for g in grid]

    def _emboli(self, rng: np.random.Generator) -> None:
        n = 1 + int(rng.choice([0, 0, 0, 1, 1, 2, 3]))
        first = str(rng.choice(LEVELS, p=[0.2, 0.25, 0.33, 0.22]))
        levels = [first] + [str(rng.choice(LEVELS, p=[0.1, 0.3, 0.35, 0.25])) for _ in range(n - 1)]
        gen_of = {"central": -1, "lobar": 0, "segmental": 1, "subsegmental": 2}
        for level in levels:
            cand = [i for i, b in enumerate(self.art) if b.gen == gen_of[level]]
            if not cand:
                continue
            i = int(rng.choice(cand))
            hu = float(rng.uniform(20, 70))
            if level == "central" and rng.random() < 0.3:
                # saddle: across the bifurcation into both main arteries
                r_pts, _ = self._path(self.art, 1)
                l_pts, _ = self._path(self.art, 2)
                a = self._sub_path(r_pts, np.full(len(r_pts), 1.0), 0, float(rng.uniform(15, 30)))[
                    0
                ][-1]
                b = self._sub_path(l_pts, np.full(len(l_pts), 1.0), 0, float(rng.uniform(15, 30)))[
                    0
                ][-1]
                rc = self.art[1].radii[0] * float(rng.uniform(0.45, 0.65))
                pts = [a, self.art[1].pts[0] + np.array([0.0, 2.0, -1.0]), b]
                self.clots.append(Clot(level, "saddle", pts, [rc * 0.8, rc, rc * 0.8], hu, 1))
                continue
            path, rad = self._path(self.art, i)
            total = float(np.sum(np.linalg.norm(np.diff(path, axis=0), axis=1)))
            length = {
                "central": (20, 50),
                "lobar": (10, 28),
                "segmental": (7, 20),
                "subsegmental": (4, 12),
            }[level]
            ln = float(rng.uniform(*length))
            s0 = float(rng.uniform(0, max(0.5, min(total * 0.5, total - ln))))
            mode = str(rng.choice(["polo", "eccentric", "occlusive"], p=[0.4, 0.25, 0.35]))
            if level == "central" and mode == "occlusive":
                mode = "polo"
            if mode == "occlusive":
                # the clot reaches past the end of its branch: no contrast beyond it
                own = float(
                    np.sum(np.linalg.norm(np.diff(np.array(self.art[i].pts), axis=0), axis=1))
                )
                s0 = max(0.0, own - ln * 0.6)
            cp, cr = self._sub_path(path, rad, s0, s0 + ln)
            if mode == "occlusive":
                radii = [r * 1.03 for r in cr]
                # everything beyond is unopacified
                for j in self._descendants(self.art, i):
                    self.art[j].value = self.blood + float(rng.uniform(-5, 10))
                self.clots.append(Clot(level, mode, cp, radii, hu, i))
            else:
                f = float(rng.uniform(0.45, 0.75))
                radii = [r * f for r in cr]
                if mode == "eccentric":
                    d = cp[-1] - cp[0]
                    d /= np.linalg.norm(d) + 1e-9
                    e = rng.normal(0, 1, 3)
                    e -= (e @ d) * d
                    e /= np.linalg.norm(e) + 1e-9
                    ecc = float(rng.uniform(0.5, 0.9))
                    cp = [q + e * (r0 - r1) * ecc for q, r0, r1 in zip(cp, cr, radii, strict=True)]
                self.clots.append(Clot(level, mode, cp, radii, hu, i))

    def _descendants(self, tree: list[Branch], i: int) -> list[int]:
        """Branches downstream of the clot in branch ``i``: its children (the clot blocks the
        branch itself at its start, whose remainder after the clot is painted as clot-free
        unopacified lumen too)."""
        out = []
        stack = list(tree[i].children)
        while stack:
            j = stack.pop()
            out.append(j)
            stack += tree[j].children
        return out

    def _mimic_flow(self, rng: np.random.Generator) -> None:
        self.inflow = rng.random() < 0.25
        for b in self.art:
            if b.value == 0.0:
                b.value = self.pa_hu * (1 - 0.03 * max(b.gen, 0)) + float(rng.normal(0, 6))
        for b in self.veins:
            b.value = self.vein_hu + float(rng.normal(0, 8))
        if self.inflow:
            self.notes.append("ivc_inflow")
            lobe = str(rng.choice(["RL", "LL"]))
            lower = [b for b in self.art if b.lobe == lobe and b.gen >= 0]
            if lower:
                c = lower[int(rng.integers(len(lower)))].pts[0]
                s = float(rng.uniform(15, 35))
                depth = float(rng.uniform(0.35, 0.7))
                for b in lower:
                    m = np.mean(b.pts, axis=0)
                    w = depth * math.exp(-float(np.sum((m - c) ** 2)) / (2 * s * s))
                    if b.value > self.blood + 30:
                        b.value = b.value * (1 - w) + self.blood * w

    def _emit_pulmonary(self) -> None:
        for i, b in enumerate(self.art):
            for k in range(len(b.pts) - 1):
                A, B = self.to_image(b.pts[k]), self.to_image(b.pts[k + 1])
                self.tubes["artery"].add(A, B, b.radii[k], b.radii[k + 1], b.value)
                if b.gen == -1:
                    self.tubes["sheath"].add(A, B, b.radii[k] + 4, b.radii[k + 1] + 4, 0.0)
                    if i == 0:
                        self.tubes["m_trunk"].add(A, B, b.radii[k] - 2.5, b.radii[k + 1] - 2.5, 1.0)
        # the right ventricle's outflow joins the trunk
        for b in self.veins:
            for k in range(len(b.pts) - 1):
                A, B = self.to_image(b.pts[k]), self.to_image(b.pts[k + 1])
                self.tubes["vein"].add(A, B, b.radii[k], b.radii[k + 1], b.value)
                if b.radii[k + 1] > 3.0:
                    self.tubes["m_vein"].add(A, B, b.radii[k] - 1.6, b.radii[k + 1] - 1.6, 1.0)
        for c in self.clots:
            for k in range(len(c.pts) - 1):
                self.tubes["clot"].add(
                    self.to_image(c.pts[k]),
                    self.to_image(c.pts[k + 1]),
                    c.radii[k],
                    c.radii[k + 1],
                    c.hu,
                )

    # -- bones ----------------------------------------------------------------------------------

    def _ribs(self, rng: np.random.Generator) -> None:
        ct = float(rng.uniform(1.0, 1.8))
        self.rib_ct = ct
        self.rib_marrow = float(np.clip(self.marrow_hu + rng.uniform(-20, 60), 40, 350))
        calcified = rng.random() < 0.4
        self.st_top = self.vert[2][1] - float(rng.uniform(0, 10))
        self.st_bot = self.vert[9][0] + float(rng.uniform(-5, 10))
        for i in range(12):
            lo, hi = self.vert[i]
            z_head = (lo + hi) / 2 + 4
            r = float(rng.uniform(3.8, 5.2)) * (0.85 if i == 0 else 1.0)
            drop = [25, 40, 55, 65, 72, 78, 80, 80, 75, 65, 45, 30][i] * float(
                rng.uniform(0.85, 1.15)
            )
            phi_end = [0.78, 0.83, 0.84, 0.84, 0.83, 0.8, 0.76, 0.7, 0.64, 0.58, 0.5, 0.4][
                i
            ] * math.pi
            vb = float(self.v_vb(z_head))
            for sgn in (-1.0, 1.0):
                pts: list[tuple[np.ndarray, float]] = [
                    (np.array([sgn * 16, vb + 4, z_head + 2]), r * 0.8),
                    (np.array([sgn * 30, vb + 16, z_head]), r),
                ]
                phis = np.linspace(0.42, phi_end, 9)
                for ph in phis:
                    z = z_head - drop * ((ph - 0.42) / (math.pi - 0.42)) ** 1.2
                    ac, bc, vc = (float(x) for x in self.cavity(z))
                    rr = r + 1.0
                    du, dv = math.sin(ph), math.cos(ph)
                    t = 1.0 / float(_cavity_rho(np.array(du), np.array(vc + dv), 1.0, 1.0, vc))
                    pts.append(
                        (
                            np.array(
                                [sgn * (ac * t * du + rr * du), vc + bc * t * dv + rr * dv, z]
                            ),
                            r,
                        )
                    )
                self._chain("bone", pts, self.rib_marrow, cortex=ct)
                # costal cartilage to the sternum
                if i < 10:
                    end = pts[-1][0]
                    zst = (
                        min(max(end[2] + 8 + 4 * i, self.st_bot + 4), self.st_top - 4)
                        if i < 7
                        else end[2] + 12
                    )
                    ac, bc, vc = (float(x) for x in self.cavity(zst))
                    tgt = np.array([sgn * (16 if i < 7 else 0.45 * ac), vc - bc - r, zst])
                    mid = (end + tgt) / 2 + np.array([sgn * 8, -4, 0])
                    self._chain(
                        "cart", [(end, r * 0.9), (mid, r * 0.85), (tgt, r * 0.8)], self.cart_hu
                    )
                    if calcified and rng.random() < 0.5:
                        q = mid + rng.normal(0, 2, 3)
                        self.tubes["bone"].add(
                            self.to_image(q),
                            self.to_image(q + 1.0),
                            1.6,
                            1.6,
                            float(rng.uniform(300, 700)),
                            0.0,
                        )
        if calcified:
            self.notes.append("calcified_cartilage")
        # clavicles
        for sgn in (-1.0, 1.0):
            ac, bc, vc = (float(x) for x in self.cavity(self.st_top))
            a0 = np.array([sgn * 14, vc - bc - 12, self.st_top + 4])
            a1 = np.array([sgn * 0.55 * self.a, vc - bc - 18, self.st_top + 16])
            a2 = np.array([sgn * 0.9 * self.a, vc - 0.2 * bc, self.st_top + 28])
            rc = float(rng.uniform(5.5, 7.5))
            self._chain(
                "bone",
                [(a0, rc), (a1, rc * 0.9), (a2, rc * 0.85)],
                self.rib_marrow,
                cortex=ct + 0.4,
            )

    def _spine_tubes(self, rng: np.random.Generator) -> None:
        pe_ct = float(rng.uniform(1.0, 1.6))
        for i, (lo, hi) in enumerate(self.vert):
            zm = (lo + hi) / 2
            vb = float(self.v_vb(zm))
            us = self.scoliosis * math.sin((zm - self.dome_r) / 200 * math.pi)
            cu, cv = self.canal
            canal_v = vb + self.vb_ap[i] + cv + 1.5
            r = float(rng.uniform(2.6, 3.4))
            for dz in (-3.0, 4.0):
                z = zm + dz
                for sgn in (-1.0, 1.0):
                    ped0 = np.array(
                        [us + sgn * 0.55 * self.vb_half[i], vb + 0.6 * self.vb_ap[i], z]
                    )
                    ped1 = np.array([us + sgn * (cu + r + 0.5), canal_v, z])
                    lam = np.array([us + sgn * 2.0, canal_v + cv + r + 0.5, z - 2])
                    self._chain(
                        "bone",
                        [(ped0, r), (ped1, r), (lam, r * 0.9)],
                        self.marrow_hu * 0.9,
                        cortex=pe_ct,
                    )
            for sgn in (-1.0, 1.0):
                t0 = np.array([us + sgn * (cu + r), canal_v + 1, zm + 6])
                t1 = np.array(
                    [
                        us + sgn * float(rng.uniform(26, 34)),
                        canal_v + float(rng.uniform(6, 12)),
                        zm + 4,
                    ]
                )
                self._chain("bone", [(t0, r), (t1, r * 1.05)], self.marrow_hu * 0.9, cortex=pe_ct)
            s0 = np.array([us, canal_v + cv + r, zm - 2])
            s1 = np.array(
                [us, canal_v + cv + float(rng.uniform(16, 26)), zm - float(rng.uniform(10, 18))]
            )
            self._chain("bone", [(s0, r), (s1, r * 0.8)], self.marrow_hu * 0.9, cortex=pe_ct)
        self.spine_us = self.scoliosis

    def _extras(self, rng: np.random.Generator) -> None:
        self.liver_tex = float(rng.uniform(4, 10))
        self.fine_cut = float(rng.uniform(1.8, 2.3))
        self.fine_amp = float(rng.uniform(250, 500))
        self.stomach_air = rng.random() < 0.7
        self.pad = float(rng.uniform(20, 45))
        self.pad_hu = float(rng.uniform(-900, -600))
        self.table_r = float(rng.uniform(450, 900))
        self.table_shell = float(rng.uniform(120, 400))
        self.scap_t = float(rng.uniform(3.0, 6.0))
        self.humerus_r = float(rng.uniform(10, 13))
        self.humerus_marrow = float(rng.uniform(-60, 60))
        self.arm_band = (float(rng.uniform(20, 60)), float(rng.uniform(8, 20)))
        self.n_streaks = int(rng.integers(6, 14))
        self.streak_amp = float(rng.uniform(40, 160))
        self.streak_ang = rng.uniform(0, math.pi, 32)
        self.streak_sign = rng.choice([-1.0, 1.0], 32)
        self.swirl = float(rng.uniform(0.2, 0.6))
        self.tile_seed = int(rng.integers(2**31))
        # the study's reduced-window anchor: the first clot, or a hilum
        if self.clots:
            self.anchor = float(np.mean([p[2] for p in self.clots[0].pts]))
        else:
            self.anchor = float(self.hila["R"][2])


# -- painting -----------------------------------------------------------------------------------


def _cavity_rho(u: np.ndarray, v: np.ndarray, a: Any, b: Any, vc: Any) -> np.ndarray:
    """Normalised radius of the rib cage's inner surface: an ellipse in front, squarer at the
    back (the paravertebral gutters)."""
    x2 = (u / a) ** 2
    y2 = ((v - vc) / b) ** 2
    r2 = np.sqrt(x2 + y2)
    r4 = np.sqrt(np.sqrt(x2 * x2 + y2 * y2))
    return np.where(v > vc, 0.4 * r2 + 0.6 * r4, r2)


def _cavity_dist(U: np.ndarray, V: np.ndarray, a: float, b: float, vc: float) -> np.ndarray:
    vv = V - vc
    rr = np.sqrt(U * U + vv * vv)
    return rr / np.maximum(_cavity_rho(U, V, a, b, vc), 1e-3) - rr


def _ellipse_dist(
    U: np.ndarray, V: np.ndarray, R: np.ndarray, a: float, b: float, vc: float = 0.0
) -> np.ndarray:
    """Approximate signed distance (mm, positive inside) to the ellipse (a, b) centred (0, vc)."""
    vv = V - vc if vc else V
    rho = np.sqrt((U / a) ** 2 + (vv / b) ** 2)
    rr = np.sqrt(U * U + vv * vv) if vc else R
    return rr / np.maximum(rho, 1e-3) - rr


class _Painter:
    def __init__(self, ch: Chest, ks: np.ndarray, masks: bool) -> None:
        self.ch = ch
        px = ch.px
        self.px = px
        self.xs = ((np.arange(N) - (N - 1) / 2) * px).astype(np.float64)
        self.ys = self.xs.copy()
        self.ks = ks
        self.masks = masks
        rng = np.random.default_rng([ch.seed, 0x7E5])
        self.rng = rng
        corr = {"soft": 1.3, "standard": 0.95, "sharp": 0.6}[ch.kernel_kind]
        self.noise = _noise_tiles(rng, 4, corr, px, 0.7)
        # the crop holding the patient (the air, pad and table round it do not change with z)
        reach = ch.a + 8 + (ch.arm_gap + 2.2 * ch.arm_r if ch.arms_down else 0)
        cx, cy = ch.pos
        half = math.hypot(reach, ch.b + 8)
        c0 = int(np.clip((cx - half - self.xs[0]) / px, 0, N))
        c1 = int(np.clip((cx + half - self.xs[0]) / px + 2, 0, N))
        r0 = int(np.clip((cy - half - self.ys[0]) / px, 0, N))
        r1 = int(np.clip((cy + ch.back + 4 - self.ys[0]) / px + 2, 0, N))
        self.cr = (slice(r0, r1), slice(c0, c1))
        X, Y = np.meshgrid(self.xs[c0:c1].astype(np.float32), self.ys[r0:r1].astype(np.float32))
        c, s = math.cos(ch.theta), math.sin(ch.theta)
        dx, dy = X - cx, Y - cy
        self.U = (c * dx + s * dy).astype(np.float32)
        self.V = (-s * dx + c * dy).astype(np.float32)
        self.R = np.sqrt(self.U**2 + self.V**2)
        self.X, self.Y = X, Y
        self.tex = _noise_tiles(rng, 4, 2.5, px, 0.0)[:, r0:r1, c0:c1].copy()
        self.fine = _noise_tiles(rng, 4, 0.9, px, 0.0)[:, r0:r1, c0:c1].copy()
        dz, g = ch.dome(self.U, self.V)
        self.dz, self.g = dz.astype(np.float32), g.astype(np.float32)
        self.dz_max = float(dz.max())
        self.back = self._background()

    def _background(self) -> np.ndarray:
        """Air, pad and table (scanner frame), after the kernel."""
        ch, px = self.ch, self.px
        img = np.full((N, N), -1000.0, np.float32)
        Xs, Ys = np.meshgrid(self.xs.astype(np.float32), self.ys.astype(np.float32))
        y_tab = ch.pos[1] + ch.back + ch.pad
        curve = Ys - (y_tab + (Xs * Xs) / (2 * ch.table_r))
        inside = (np.abs(Xs) < 230).astype(np.float32)
        shell = (_clip01(0.5 + curve / px) - _clip01(0.5 + (curve - 2.5) / px)) + (
            _clip01(0.5 + (curve - 28) / px) - _clip01(0.5 + (curve - 30) / px)
        )
        core = _clip01(0.5 + (curve - 2.5) / px) * _clip01(0.5 + (28 - curve) / px)
        _blend(img, -950.0, core * inside)
        _blend(img, ch.table_shell, shell * inside)
        pad = (
            _clip01(0.5 + (curve + ch.pad) / px)
            * _clip01(0.5 - curve / px)
            * (np.abs(Xs) < 0.8 * ch.a + 20)
        )
        _blend(img, ch.pad_hu, pad)
        return self.kernel(img)

    def _field(self, bank: np.ndarray, z: float, period: float) -> np.ndarray:
        """A texture continuous in z from a bank of 4 tiles."""
        w = 2 * math.pi * z / period
        w2 = 2 * math.pi * z / (period * 1.618) + 1.0
        k = 1 / math.sqrt(2)
        return (
            bank[0] * (k * math.cos(w))
            + bank[1] * (k * math.sin(w))
            + bank[2] * (k * math.cos(w2))
            + bank[3] * (k * math.sin(w2))
        )

    def _box(self, u: float, v: float, ru: float, rv: float) -> tuple[slice, slice]:
        """Crop-local slices holding the patient-frame box centred (u, v), half sizes ru, rv."""
        x, y, _ = self.ch.to_image(np.array([u, v, 0.0]))
        r = math.hypot(ru, rv)
        rs, cs = self.cr
        c0 = int(np.clip((x - r - self.xs[0]) / self.px, cs.start, cs.stop)) - cs.start
        c1 = int(np.clip((x + r - self.xs[0]) / self.px + 2, cs.start, cs.stop)) - cs.start
        r0 = int(np.clip((y - r - self.ys[0]) / self.px, rs.start, rs.stop)) - rs.start
        r1 = int(np.clip((y + r - self.ys[0]) / self.px + 2, rs.start, rs.stop)) - rs.start
        return slice(r0, r1), slice(c0, c1)

    def zc_of(self, k: np.ndarray) -> np.ndarray:
        ch = self.ch
        z = ch.z_top_anat - k * ch.spacing
        if ch.motion:
            lo, hi = ch.dome_r + 25, ch.dome_r - 50
            w = np.clip((lo - z) / 15, 0, 1) * np.clip((z - hi) / 15, 0, 1)
            z = z + w * ch.motion_amp * np.sign(
                np.sin(2 * math.pi * z / ch.motion_period + ch.motion_phase)
            )
        return z

    def paint(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        ch = self.ch
        nk = len(self.ks)
        hu = np.empty((nk, N, N), np.float32)
        lesion = np.zeros((nk, N, N), bool)
        masks: dict[str, np.ndarray] = {}
        if self.masks:
            for name in ("trunk", "clot", "vein", "marrow", "lung", "artery"):
                masks[name] = np.zeros((nk, N, N), bool)
        nsub = max(1, math.ceil(ch.thick / 0.6))
        offs = (np.arange(nsub) + 0.5) / nsub - 0.5
        prev_noise: np.ndarray | None = None
        rho = float(np.clip(1 - ch.spacing / ch.thick, 0, 0.8))
        cr = self.cr
        for s0 in range(0, nk, SLAB):
            kk = self.ks[s0 : s0 + SLAB]
            zc = self.zc_of(kk.astype(np.float64))
            zsub = zc[:, None] + offs[None, :] * ch.thick
            buf = SlabBuffers(len(kk), cr[0].stop - cr[0].start, cr[1].stop - cr[1].start)
            for t in ch.tubes.values():
                if t.name.startswith("m_") and not self.masks:
                    continue
                _raster(t, zsub, self.xs[cr[1]], self.ys[cr[0]], self.px, buf)
            for j in range(len(kk)):
                crop, les, mk = self.paint_slice(float(zc[j]), buf, j)
                img = hu[s0 + j]
                img[...] = self.back
                img[cr] = self.kernel(crop)
                n = self._noise_slice()
                if prev_noise is not None and rho > 0:
                    n *= math.sqrt(1 - rho * rho)
                    n += rho * prev_noise
                prev_noise = n
                img += n * (ch.sigma * 0.8)
                img[cr] += n[cr] * self.sigma_map
                img += ch.offset_hu
                np.clip(img, -1024, 3071, out=img)
                lesion[s0 + j][cr] = les
                for name, m in mk.items():
                    masks[name][s0 + j][cr] = m
        return hu, lesion, masks

    def _noise_slice(self) -> np.ndarray:
        r = self.rng
        i, j = r.choice(4, 2, replace=False)
        a = float(r.uniform(0, 2 * math.pi))
        A = np.roll(self.noise[i], (int(r.integers(N)), int(r.integers(N))), axis=(0, 1))
        B = np.roll(self.noise[j], (int(r.integers(N)), int(r.integers(N))), axis=(0, 1))
        if r.random() < 0.5:
            B = B[::-1]
        A *= math.cos(a)
        A += B * math.sin(a)
        return A

    def kernel(self, img: np.ndarray) -> np.ndarray:
        kind = self.ch.kernel_kind
        if kind == "soft":
            return _box3(img, 0.22)
        if kind == "standard":
            return _box3(img, 0.1)
        bl = _box3(img, 0.2)
        return img + 0.5 * (img - bl)

    def paint_slice(
        self, zc: float, buf: SlabBuffers, j: int
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        ch = self.ch
        px, T = self.px, ch.thick
        U, V, R = self.U, self.V, self.R
        cr = self.cr
        img = self.back[cr].copy()
        # body
        ztop = ch.apex + 20
        narrow = 1 - 0.12 * float(_smoothstep(zc, ztop - 40, ztop + 40))
        a, b = ch.a * narrow, ch.b
        d_body = np.minimum(_ellipse_dist(U, V, R, a, b), ch.back - V)
        body = _clip01(0.5 + d_body / px)
        _blend(img, ch.skin_hu, body)
        _blend(img, ch.fat_hu, _clip01(0.5 + (d_body - 1.6) / px))
        if ch.female and -110 < zc < 15:
            bw, bd, gl = ch.breast
            zf = float(np.clip(1 - ((zc + 45) / 60) ** 2, 0, 1))
            if zf > 0.02:
                for sg in (-1, 1):
                    bx = self._box(sg * 0.45 * a, -b * 0.85, bw + 4, bd + 4)
                    uu, vv = U[bx] - sg * 0.45 * a, V[bx] + b * 0.85
                    dd = 1 - (uu / (bw * zf**0.5 + 1)) ** 2 - (vv / (bd * zf + 1)) ** 2
                    cb = _clip01(0.5 + dd * 8)
                    sub = img[bx]
                    _blend(sub, ch.fat_hu, cb)
                    glt = _clip01((dd - 0.45) * 6) * _clip01(
                        gl + 0.5 * self._field(self.tex[(slice(None), *bx)], zc, 30)
                    )
                    _blend(sub, 30.0, glt * cb)
        fat = ch.fat_post + (ch.fat - ch.fat_post) * np.clip(0.5 - V / b, 0, 1)
        _blend(img, ch.muscle_hu, _clip01(0.5 + (d_body - fat) / px))
        if ch.arms_down:
            for sg in (-1, 1):
                cu = sg * (a + ch.arm_gap + ch.arm_r)
                bx = self._box(cu, 0.1 * b, ch.arm_r * 1.2, ch.arm_r * 1.2)
                uu, vv = U[bx] - cu, V[bx] - 0.1 * b
                rr = np.sqrt(uu * uu + vv * vv)
                rh = np.sqrt((uu / ch.arm_r) ** 2 + (vv / (ch.arm_r * 1.1)) ** 2)
                d_arm = rr / np.maximum(rh, 1e-3) - rr
                sub = img[bx]
                _blend(sub, ch.fat_hu, _clip01(0.5 + d_arm / px))
                _blend(sub, ch.muscle_hu, _clip01(0.5 + (d_arm - 6 - 0.3 * ch.fat) / px))
                hr = np.sqrt((uu - sg * 6) ** 2 + (vv + 4) ** 2)
                _blend(sub, ch.cortex_hu, _clip01(0.5 + (ch.humerus_r - hr) / px))
                _blend(sub, ch.humerus_marrow, _clip01(0.5 + (ch.humerus_r - 3 - hr) / px))
        # cavity
        ac, bc, vc = (float(x) for x in ch.cavity(zc))
        ac2 = float(ch.cavity(zc + T / 2)[0])
        ac1 = float(ch.cavity(zc - T / 2)[0])
        w_cav = math.sqrt(px * px + (ac2 - ac1) ** 2)
        d_cav = _cavity_dist(U, V, ac, bc, vc)
        cav = _clip01(0.5 + d_cav / w_cav)
        _blend(img, ch.fat_hu, cav)
        # below the diaphragm
        if zc < self.dz_max + T:
            wdz = np.sqrt(T * T + (px * self.g) ** 2)
            dia = _clip01(0.5 + (zc - self.dz) / wdz)
            below = cav * (1 - dia)
            _blend(img, ch.muscle_hu, below)
            sub = _clip01(0.5 + (self.dz - 5 - zc) / wdz) * cav
            liver = _clip01(0.5 + (ch.ac * 0.25 - U) / 3) * sub
            _blend(img, ch.liver_hu + ch.liver_tex * self._field(self.tex, zc, 25), liver)
            hx, hy = 0.45 * ch.ac, ch.vcav + 0.5 * ch.bcav
            spl = (
                1 - ((U - hx) / 45) ** 2 - ((V - hy) / 30) ** 2 - ((zc - ch.dome_l + 40) / 50) ** 2
            )
            _blend(img, ch.spleen_hu, _clip01(0.5 + spl * 6) * sub)
            st = (
                1
                - ((U - 0.3 * ch.ac) / 50) ** 2
                - ((V - ch.vcav + 0.2 * ch.bcav) / 40) ** 2
                - ((zc - ch.dome_l + 35) / 45) ** 2
            )
            stc = _clip01(0.5 + st * 6) * sub
            _blend(img, 20.0, stc)
            if ch.stomach_air:
                air = _clip01(0.5 + (ch.vcav - 0.35 * ch.bcav - V) / px)
                _blend(img, -1000.0, stc * air * _clip01(st * 10 - 0.5))
        else:
            dia = np.ones_like(cav)
        # mediastinum: fat band, pericardial fat, paravertebral block, sheaths of the great vessels
        A = ch.h_ax
        in_heart = abs(zc - ch.h_c[2]) < A[2] + 8
        gscale = 2.0 / min(A) * math.sqrt(px * px + T * T) * 0.5 / 0.7
        med = _clip01(0.5 + (float(ch.band_w(zc)) - np.abs(U - float(ch.band_u(zc)))) / 2)
        if zc < min(ch.dome_r, ch.dome_l) + 5:
            med *= _clip01(0.5 + (zc - min(ch.dome_r, ch.dome_l) + 5) / 5)
        vb_v = float(ch.v_vb(zc))
        us = ch.spine_us * math.sin((zc - ch.dome_r) / 200 * math.pi)
        iv = min(ch.vertebra_at(zc), len(ch.vb_ap) - 1)
        around = 1 - ((U - us) / (ch.vb_half[iv] + 5)) ** 2 - ((V - vb_v) / (ch.vb_ap[iv] + 5)) ** 2
        spine_blk = np.maximum(
            _clip01(0.5 + around * 6),
            _clip01(0.5 + (32 - np.abs(U - us)) / 2) * _clip01(0.5 + (V - vb_v - 2) / 2),
        )
        med = np.maximum(med, spine_blk)
        sheath = buf.cov.get("sheath")
        if sheath is not None:
            np.maximum(med, sheath[j], out=med)
        if in_heart:
            hb_ = self._box(ch.h_c[0], ch.h_c[1], A[0] + 10, A[0] + 10)
            ha, hb = self._heart_uv(hb_)
            hc = zc - ch.h_c[2]
            fp = 1 - (ha / (A[0] + 7)) ** 2 - (hb / (A[1] + 6)) ** 2 - (hc / (A[2] + 6)) ** 2
            peri = _clip01(0.5 + fp / gscale)
            if isinstance(dia, np.ndarray):
                peri *= dia[hb_]
            np.maximum(med[hb_], peri, out=med[hb_])
        lung = cav * (1 - med)
        if isinstance(dia, np.ndarray):
            lung *= dia
        if zc > ch.apex - T:
            lung *= float(_clip01(0.5 + (ch.apex - zc) / T))
        lmap = self._field(self.tex, zc, 18)
        lmap *= ch.lung_tex
        lmap += ch.lung_hu + ch.lung_grad * (V - vc) / bc
        # vessels under a millimetre: dots and short lines of partial volume
        fine = self._field(self.fine, zc, 6)
        fine -= ch.fine_cut
        lmap += _clip01(fine) * ch.fine_amp
        if ch.atelectasis and zc < 10:
            vpost = vc + bc * np.sqrt(np.clip(1 - (U / ac) ** 2, 0, 1))
            at = _clip01(0.5 + (V - (vpost - ch.atel_t)) / 2.5) * float(_smoothstep(10 - zc, 0, 30))
            lmap += (ch.atel_hu + 25 * self._field(self.tex, zc + 50, 12) - lmap) * at
        _blend(img, lmap, lung)
        lung_w = lung.copy() if self.masks else None
        _blend(img, ch.muscle_hu, spine_blk * cav)
        if in_heart:
            self._heart(img, zc, hb_, ha, hb, hc, dia, gscale)
        marrow = self._spine(img, zc, us, vb_v)
        self._sternum_scapula(img, zc, ac, bc, vc)

        # tube classes
        def comp(name: str) -> np.ndarray | None:
            cov = buf.cov.get(name)
            if cov is None:
                return None
            c = cov[j]
            _blend(img, buf.val[name][j], c)
            if lung_w is not None:
                np.multiply(lung_w, 1 - c, out=lung_w)
            return c

        e = buf.cov.get("emph")
        if e is not None:
            _blend(img, buf.val["emph"][j], e[j] * lung)
        for name in ("eso", "airwall", "airlumen", "node", "systemic", "vein"):
            comp(name)
        c_art = comp("artery")
        les = np.zeros(img.shape, bool)
        c_clot = buf.cov.get("clot")
        clot_w = None
        if c_clot is not None and c_art is not None:
            clot_w = np.minimum(c_clot[j], c_art)
            _blend(img, buf.val["clot"][j], clot_w)
            les = clot_w >= 0.5
        comp("cart")
        c_bone = buf.cov.get("bone")
        if c_bone is not None:
            co = c_bone[j]
            _blend(img, ch.cortex_hu, co)
            _blend(img, buf.val["bone"][j], buf.inner["bone"][j])
            if lung_w is not None:
                np.multiply(lung_w, 1 - co, out=lung_w)
        self._canal(img, zc, us, vb_v)
        if ch.streaks and 70 > zc > 15:
            svc_xy = self._svc_at(zc)
            if svc_xy is not None:
                self._streaks(img, svc_xy, zc)
        if ch.arms_down:
            amp, w = ch.arm_band
            perp = V - 0.1 * ch.b + 4
            img -= (
                amp
                * np.exp(-(perp * perp) / (2 * w * w))
                * (np.abs(U) < ch.a + ch.arm_gap + ch.arm_r)
            )
        self.sigma_map = ch.sigma * (0.2 + 0.45 * body * np.clip(d_body / (0.6 * ch.b), 0, 1))
        if ch.motion and ch.dome_r - 50 < zc < ch.dome_r + 25:
            sh = int(max(1, round(ch.motion_amp / 2 / px)))
            img = (img + np.roll(img, sh, axis=0) * 0.5 + np.roll(img, -sh, axis=0) * 0.5) / 2
        mk: dict[str, np.ndarray] = {}
        if self.masks:
            shape = img.shape
            mt = buf.cov.get("m_trunk")
            mk["trunk"] = (mt[j] >= 0.999) if mt is not None else np.zeros(shape, bool)
            mk["clot"] = _erode(clot_w >= 0.999) if clot_w is not None else np.zeros(shape, bool)
            if clot_w is not None:
                mk["trunk"] &= clot_w < 0.01
            mv = buf.cov.get("m_vein")
            mk["vein"] = (mv[j] >= 0.999) if mv is not None else np.zeros(shape, bool)
            if c_art is not None:
                mk["vein"] &= c_art < 0.01
                mk["artery"] = c_art >= 0.5
            mk["marrow"] = marrow if marrow is not None else np.zeros(shape, bool)
            assert lung_w is not None
            mk["lung"] = _erode(lung_w >= 0.999)
        return img, les, mk

    def _heart_uv(self, bx: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        ch = self.ch
        c, s = math.cos(ch.h_psi), math.sin(ch.h_psi)
        du, dv = self.U[bx] - ch.h_c[0], self.V[bx] - ch.h_c[1]
        return c * du + s * dv, -s * du + c * dv

    def _heart(
        self,
        img: np.ndarray,
        zc: float,
        bx: tuple[slice, slice],
        ha: np.ndarray,
        hb: np.ndarray,
        hc: float,
        dia: np.ndarray,
        gscale: float,
    ) -> None:
        ch = self.ch
        A = ch.h_ax
        px, T = self.px, ch.thick
        fh = 1 - (ha / A[0]) ** 2 - (hb / A[1]) ** 2 - (hc / A[2]) ** 2
        heart = _clip01(0.5 + fh / gscale)
        if isinstance(dia, np.ndarray):
            heart *= dia[bx]
        if float(heart.max()) <= 0:
            return
        sub = img[bx]
        _blend(sub, ch.myo_hu, heart)
        chambers = (
            ((-0.55, 0.1, 0.3), (0.38, 0.42, 0.45), "ra"),
            ((-0.1, -0.45, 0.05), (0.42, 0.3, 0.45), "rv"),
            ((-0.05, 0.62, 0.45), (0.42, 0.27, 0.3), "la"),
            ((0.35, 0.1, -0.1), (0.33, 0.32, 0.42), "lv"),
        )
        for (ou, ov, oz), (su, sv, sz), name in chambers:
            f = (
                1
                - ((ha - ou * A[0]) / (su * A[0])) ** 2
                - ((hb - ov * A[1]) / (sv * A[1])) ** 2
                - ((hc - oz * A[2]) / (sz * A[2])) ** 2
            )
            cc = (
                _clip01(
                    0.5
                    + f
                    / (2.0 / (min(su, sv, sz) * min(A)) * math.sqrt(px * px + T * T) * 0.5)
                    * 0.7
                )
                * heart
            )
            if name == "ra":
                val = ch.pa_hu * 0.9 + (ch.ivc_hu - ch.pa_hu) * ch.swirl * _clip01(
                    0.5 + 1.5 * self._field(self.tex[(slice(None), *bx)], zc + 7, 15)
                )
                _blend(sub, val, cc)
            else:
                _blend(sub, ch.pa_hu if name == "rv" else ch.vein_hu, cc)

    def _spine(self, img: np.ndarray, zc: float, us: float, vb_v: float) -> np.ndarray | None:
        ch = self.ch
        px, T = self.px, ch.thick
        i = ch.vertebra_at(zc)
        marrow = None
        bx = self._box(us, vb_v, 30, 24)
        uu, vv = self.U[bx] - us, self.V[bx] - vb_v
        rr = np.sqrt(uu * uu + vv * vv)
        sub = img[bx]
        for k in (i - 1, i, i + 1):
            if not 0 <= k < len(ch.vert):
                continue
            lo, hi = ch.vert[k]
            rh = np.sqrt((uu / ch.vb_half[k]) ** 2 + (vv / ch.vb_ap[k]) ** 2)
            d = rr / np.maximum(rh, 1e-3) - rr
            ov = _overlap(zc, T, lo, hi)
            if ov > 0:
                ct = ch.vb_cortex
                _blend(sub, ch.cortex_hu, _clip01(0.5 + d / px) * ov)
                mar = self._field(self.tex[(slice(None), *bx)], zc * 3, 9)
                mar *= ch.marrow_tex
                mar += ch.marrow_hu
                _blend(sub, mar, _clip01(0.5 + (d - ct) / px) * _overlap(zc, T, lo + ct, hi - ct))
                if self.masks and _overlap(zc, T, lo + ct + 2, hi - ct - 2) >= 0.999:
                    marrow = np.zeros(img.shape, bool)
                    marrow[bx] = d - ct - 2 >= px
            if k + 1 < len(ch.vert):
                ovd = _overlap(zc, T, ch.vert[k + 1][1], lo)
                if ovd > 0:
                    _blend(sub, ch.disc_hu, _clip01(0.5 + d / px) * ovd)
        return marrow

    def _canal(self, img: np.ndarray, zc: float, us: float, vb_v: float) -> None:
        ch = self.ch
        cu, cv = ch.canal
        i = ch.vertebra_at(zc)
        canal_v = vb_v + ch.vb_ap[min(i, len(ch.vb_ap) - 1)] + cv + 1.5
        bx = self._box(us, canal_v, cu + 3, cv + 3)
        dcan = 1 - ((self.U[bx] - us) / cu) ** 2 - ((self.V[bx] - canal_v) / cv) ** 2
        sub = img[bx]
        _blend(sub, ch.fat_hu + 20, _clip01(0.5 + dcan * 5))
        _blend(sub, 10.0, _clip01(0.5 + (dcan - 0.25) * 5))
        _blend(sub, 35.0, _clip01(0.5 + (dcan - 0.6) * 6))

    def _sternum_scapula(self, img: np.ndarray, zc: float, ac: float, bc: float, vc: float) -> None:
        ch = self.ch
        px, T = self.px, ch.thick
        if ch.st_bot - T < zc < ch.st_top + T:
            ov = _overlap(zc, T, ch.st_bot, ch.st_top)
            manu = zc > ch.st_top - 45
            sw, sd = (24.0, 7.0) if manu else (15.0, 5.5)
            v_st = vc - bc - sd - 2
            bx = self._box(0.0, v_st, sw + 3, sd + 3)
            d = np.minimum(sw - np.abs(self.U[bx]), sd - np.abs(self.V[bx] - v_st))
            sub = img[bx]
            _blend(sub, ch.cortex_hu * 0.85, _clip01(0.5 + d / px) * ov)
            _blend(sub, ch.marrow_hu + 30, _clip01(0.5 + (d - 1.2) / px) * ov)
        if ch.apex + 25 > zc > ch.apex - 120:
            hz = float(_smoothstep(ch.apex + 25 - zc, 0, 30)) * float(
                _smoothstep(zc - (ch.apex - 120), 0, 40)
            )
            if hz <= 0:
                return
            t = ch.scap_t
            sa, sb = ac + 16, bc + 14
            for sg in (-1.0, 1.0):
                bx = self._box(sg * (sa * 0.6), vc + sb * 0.6, sa * 0.45 + 10, sb * 0.5 + 10)
                uu, vv = self.U[bx], self.V[bx]
                rr = np.sqrt(uu * uu + (vv - vc) ** 2)
                rh = np.sqrt((uu / sa) ** 2 + ((vv - vc) / sb) ** 2)
                dsc = rr / np.maximum(rh, 1e-3) - rr
                ang = np.arctan2(sg * uu, vv - vc)
                a_lo, a_hi = 0.45, 0.45 + 0.9 * hz
                m = np.abs(dsc + t / 2 + 2)
                plate = (
                    _clip01(0.5 + (t / 2 - m) / px)
                    * _clip01(0.5 + (ang - a_lo) * 40)
                    * _clip01(0.5 + (a_hi - ang) * 40)
                )
                sub = img[bx]
                _blend(sub, ch.cortex_hu * 0.8, plate)
                _blend(sub, ch.rib_marrow, plate * _clip01(0.5 + (t / 2 - 1.2 - m) / px))

    def _svc_at(self, zc: float) -> tuple[float, float] | None:
        pts = [p for p, _ in self.ch.svc]
        for a, b in itertools.pairwise(pts):
            if min(a[2], b[2]) <= zc <= max(a[2], b[2]):
                t = (zc - a[2]) / (b[2] - a[2] + 1e-9)
                p = a + t * (b - a)
                x, y, _ = self.ch.to_image(p)
                return x, y
        return None

    def _streaks(self, img: np.ndarray, c: tuple[float, float], zc: float) -> None:
        ch = self.ch
        dx, dy = self.X - c[0], self.Y - c[1]
        r = np.sqrt(dx * dx + dy * dy)
        fall = ch.streak_amp * np.exp(-r / 60.0) * _clip01(r / 10.0 - 0.5)
        acc = np.zeros_like(img)
        for k in range(ch.n_streaks):
            ang = ch.streak_ang[k] + 0.02 * zc
            perp = -dx * math.sin(ang) + dy * math.cos(ang)
            acc += ch.streak_sign[k] * np.exp(-(perp * perp) / (2 * (0.6 + 0.4 * (k % 3)) ** 2))
        img += acc * fall


def _erode(m: np.ndarray) -> np.ndarray:
    out = m.copy()
    out[1:] &= m[:-1]
    out[:-1] &= m[1:]
    out[:, 1:] &= m[:, :-1]
    out[:, :-1] &= m[:, 1:]
    return out


# -- public surface -----------------------------------------------------------------------------

_VENDORS = (
    (
        "SIEMENS",
        "SOMATOM Definition Edge",
        {"soft": "Br32f", "standard": "Br36f", "sharp": "Br44f"},
    ),
    (
        "GE MEDICAL SYSTEMS",
        "Revolution CT",
        {"soft": "SOFT", "standard": "STANDARD", "sharp": "DETAIL"},
    ),
    ("Philips", "iCT 256", {"soft": "A", "standard": "B", "sharp": "C"}),
    ("TOSHIBA", "Aquilion ONE", {"soft": "FC08", "standard": "FC13", "sharp": "FC51"}),
)
_DESCRIPTIONS = (
    "CTA CHEST PE PROTOCOL",
    "CT PULMONARY ANGIOGRAM CHEST",
    "CTPA CHEST",
    "CT ANGIO CHEST PE",
    "CTA THORAX PULMONARY EMBOLISM",
)


def plan(task_seed: int, label: bool) -> Chest:
    """Every random choice of the study (anatomy, clots, mimics, acquisition), nothing painted."""
    return Chest(task_seed, label)


def paint_detail(
    task_seed: int, label: bool, *, slices: int | None = None, masks: bool = False
) -> tuple[Painted, dict[str, np.ndarray]]:
    """Paint the study; ``slices``: only that many slices round the first clot (or the right
    hilum for negatives) - the same study, a shorter z range (tests). ``masks``: also return
    boolean masks of the cores of named structures (trunk, clot, vein, marrow, lung, artery)."""
    ch = Chest(task_seed, label)
    n = ch.n_slices
    k0 = 0
    if slices is not None and slices < n:
        kc = round((ch.z_top_anat - ch.anchor) / ch.spacing)
        k0 = int(np.clip(kc - slices // 2, 0, n - slices))
        n = slices
    ks = np.arange(k0, k0 + n)
    hu, lesion, mk = _Painter(ch, ks, masks).paint()
    vendor, model, kernels = _VENDORS[ch.vendor]
    acq = Acquisition(
        manufacturer=vendor,
        model=model,
        kernel=kernels[ch.kernel_kind],
        kvp=ch.kvp,
        slice_thickness=round(ch.thick, 3),
        spacing_z=ch.spacing,
        pixel_spacing=round(ch.px, 4),
        z_top=ch.z_carina_scanner + ch.z_top_anat - k0 * ch.spacing,
        rescale_intercept=float([-1024.0, -1024.0, -1000.0, 0.0][ch.seed % 4]),
        signed=ch.seed % 4 == 3,
        bits_stored=16 if ch.seed % 4 == 3 else 12,
        implicit_vr=ch.seed % 3 == 0,
        series_number=int(2 + ch.seed % 5),
    )
    r = np.random.default_rng([task_seed, 0x4EAD])
    header = StudyHeader(
        patient_id=f"XC{task_seed:07d}",
        patient_name="CROSSCHECK^CHEST",
        patient_sex="F" if ch.female else "M",
        patient_age=f"{int(r.integers(22, 92)):03d}Y",
        accession=f"XP{task_seed:08d}",
        study_description=str(r.choice(_DESCRIPTIONS)),
        series_description=f"CTA {ch.thick:g}MM {'LUNG' if ch.kernel_kind == 'sharp' else 'STD'}",
        protocol_name=str(r.choice(["PE PROTOCOL", "CTPA", "CHEST CTA PE"])),
        body_part=str(r.choice(["CHEST", "CHEST", "THORAX"])),
        contrast_agent=str(r.choice(["OMNIPAQUE 350", "Iomeron 400", "ISOVUE-370", "IV CONTRAST"])),
    )
    notes = tuple(
        dict.fromkeys(
            [*ch.notes, f"kernel_{ch.kernel_kind}", f"thickness_{ch.thick:g}mm"]
            + [f"clot_{c.mode}" for c in ch.clots]
        )
    )
    painted = Painted(hu=hu, lesion=lesion, acq=acq, header=header, kinds=ch.kinds, notes=notes)
    return painted, mk


def paint(task_seed: int, label: bool) -> Painted:
    """One CTPA study, deterministic from ``task_seed``: emboli when ``label`` is True."""
    return paint_detail(task_seed, label)[0]


def write_study(folder: Path, seed: int, label: bool) -> CrossStudy:
    """Paint the study and write it as one axial DICOM series under ``folder``."""
    return write_painted(folder, "pe", seed, label, paint(seed, label), window=(100.0, 700.0))
