"""Painter "b" of non-contrast head CT: a third, independent synthetic head generator.

Built from CT anatomy and physics alone. The head is an analytic 3-D model in a head frame
(millimetres; x to the patient's left, y posterior, z superior; origin near the foramen of
Monro), evaluated once per study on a 1 mm grid *in the scanner frame* (the head rotated and
shifted), then taken to the image the way a scanner does:

1. every slice integrates its slice sensitivity profile over the fine planes (partial volume
   through the thickness: a rectangle of the nominal thickness with rounded edges);
2. each slice is resampled to the 512 x 512 matrix through the reconstruction kernel (soft:
   cubic B-spline, standard: Keys cubic, sharp: Keys with edge overshoot);
3. correlated noise whose power spectrum is a ramp under the kernel's apodisation is added,
   scaled for thickness, the bone in the slice (posterior fossa) and the centre of the head;
4. beam hardening (a dark bar between the petrous bones, streaks from dense bone, a denser
   rim of brain under the inner table), a calibration offset, a head holder, motion in a few.

Anatomy painted: scalp (skin, fat, temporalis), skull with outer and inner cortex over
diploe, thickness varying over the vault, sutures (coronal, sagittal, lambdoid) that close
with age, the skull base (anterior fossa over domed orbital roofs, middle fossae, sella,
clivus, petrous ridges, foramen magnum), frontal, ethmoid, sphenoid and maxillary sinuses,
mastoid air cells, ear canals and pinnae, orbits (conical bony walls, fat, globes, lenses,
optic nerves, recti), nasal cavity; dura, falx, tentorium; the cerebrum with a folded cortex
(sulci are the zero sheets of a band-limited 3-D random field cut near the brain surface, so
they curve and branch; grey matter is a band about them), Sylvian fissures and insulae,
interhemispheric fissure, basal ganglia, thalami, internal capsules (the white matter left
between them), lateral ventricles (frontal, occipital and temporal horns along a curved
centreline), third and fourth ventricles, basal cisterns, cerebellum with folia and white
core, brainstem (peduncles, pons, medulla), venous sinuses (superior sagittal, straight,
transverse, sigmoid, torcula), arteries (carotids, circle of Willis, MCA, ACA, PCA, basilar,
vertebrals), calcifications (pineal, habenula, choroid plexus, falx, basal ganglia, carotid
siphons), ageing (atrophy: wider sulci, cisterns and ventricles; periventricular white-matter
hypodensity; lacunes).

Positives (``kinds``): epidural (biconvex, often over a fracture, sometimes swirled),
subdural (crescent, acute, or subacute and isodense with mass effect), subarachnoid (sulcal
convexity, Sylvian, basal cisterns), intraparenchymal (5 mm to 60 mm, deep or lobar or
infratentorial, with oedema), intraventricular (dependent layering or cast). Large lesions
push the brain: a radial push about the clot, effacement of sulci and ventricle, a midline
shift under the falx. The lesion mask is exact at the image grid: a voxel counts when at
least half of it (after the slice profile) is lesion.

Ranges (sampled per study, never constants), with their sources: tissue HU (white 20-30,
grey 8-12 above white, CSF 0-15, flowing blood 40-60 and 60-70 in haemoconcentration, acute
blood 50-100, subacute isodense, calcification 100 to over 1000, diploe 200-800, cortex
1000-2000, noise 3-6 HU at 5 mm, calibration a few HU) from the project's CT realism notes
(/work/shared/notes/ct-realism.md); brain 30-40 HU, cortex bone to about 2000 HU, pixel
spacing 0.49 mm and a standard kernel measured on the real GE head CT in
/work/shared/data/dicom/ge-head-ct; anatomical sizes (skull 3-10 mm, scalp 4-8 mm, globe
23-25 mm, ventricles, cistern and fissure widths, cortex 2.5-3.5 mm, sulcal depth 10-20 mm)
and lesion sizes from standard neuroradiology anatomy; acquisition mix (thickness 5 mm in
about half, 2.5 / 1.25 / 0.625 mm in the rest; 100-140 kVp; head rotated up to 12 degrees,
pitched -8 to +18 degrees, off-centre up to 15 mm) from what sites send.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from triage.crosscheck.dicomio import Acquisition, StudyHeader
from triage.crosscheck.study import CrossStudy, Painted, write_painted

MATRIX = 512
GRID = 1.0  # mm, in-plane step of the fine anatomy grid

# labels of the fine grid (kept for tests: which structure a voxel is)
AIR, SOFT, BONE, CSF, VENT, WM, GM, DEEP, BLOOD, CEREB, STEM, CALC, LESION, FAT, PETROUS = range(15)
LABELS = {
    "air": AIR,
    "soft": SOFT,
    "bone": BONE,
    "csf": CSF,
    "ventricle": VENT,
    "white": WM,
    "grey": GM,
    "deep_grey": DEEP,
    "sinus": BLOOD,
    "cerebellum": CEREB,
    "brainstem": STEM,
    "calcification": CALC,
    "lesion": LESION,
    "fat": FAT,
    "petrous": PETROUS,
}

KINDS = ("epidural", "subdural", "subarachnoid", "intraparenchymal", "intraventricular")

F32 = np.float32
Arr = np.ndarray
Put = Callable[[np.ndarray, np.ndarray, Any, int], None]


# ----------------------------------------------------------------------------- shapes


def _soft(d: np.ndarray, w: float = GRID) -> np.ndarray:
    """Occupancy of a voxel from a signed distance (negative inside), linear over ``w`` mm."""
    return np.clip(0.5 - d / w, 0.0, 1.0).astype(F32)


def _ell(x: np.ndarray, y: np.ndarray, z: np.ndarray, c: tuple, a: tuple) -> np.ndarray:
    """Approximate signed distance to an ellipsoid (radial: exact along each ray)."""
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    k = np.sqrt((dx / a[0]) ** 2 + (dy / a[1]) ** 2 + (dz / a[2]) ** 2)
    r = np.sqrt(dx * dx + dy * dy + dz * dz)
    return r * (1.0 - 1.0 / np.maximum(k, 1e-6))


def _seg(x: np.ndarray, y: np.ndarray, z: np.ndarray, a: tuple, b: tuple) -> tuple:
    """Distance to the segment a-b and the position along it (0..1)."""
    ab = np.subtract(b, a, dtype=np.float64)
    ll = float(ab @ ab)
    t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / ll
    t = np.clip(t, 0.0, 1.0)
    d = np.sqrt(
        (x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2
    )
    return d, t


def _tube(x: np.ndarray, y: np.ndarray, z: np.ndarray, pts: list, radii: list) -> np.ndarray:
    """Signed distance to a tube along a polyline with radii given at its nodes."""
    out = np.full(x.shape, np.inf, F32)
    for i in range(len(pts) - 1):
        d, t = _seg(x, y, z, pts[i], pts[i + 1])
        out = np.minimum(out, d - (radii[i] + t * (radii[i + 1] - radii[i])))
    return out


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union of two signed distances (blend radius ``k`` mm)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _sig(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(v, -30, 30)))


class _Field:
    """A band-limited Gaussian random field on a 2 mm head-frame grid, sampled trilinearly."""

    def __init__(self, rng: np.random.Generator, wavelength: float, half: float = 112.0):
        self.step = 2.0
        self.lo = -half
        n = int(2 * half / self.step)
        self.n = n
        f = np.fft.fftfreq(n, self.step)
        fr = np.fft.rfftfreq(n, self.step)
        kk = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fr[None, None, :] ** 2)
        k0 = 1.0 / wavelength
        amp = np.exp(-(((kk - k0) / (0.45 * k0)) ** 2))
        white = rng.standard_normal((n, n, n)).astype(F32)
        g = np.fft.irfftn(np.fft.rfftn(white) * amp, s=(n, n, n)).astype(F32)
        g /= g.std() + 1e-9
        self.data = g
        # mean gradient norm (per mm): turns |field| into a distance to its zero sheet
        gz, gy, gx = np.gradient(g[::2, ::2, ::2], 2 * self.step)
        self.grad = float(np.sqrt(gx**2 + gy**2 + gz**2).mean())

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        n = self.n
        fx = np.clip((x - self.lo) / self.step, 0, n - 1.001)
        fy = np.clip((y - self.lo) / self.step, 0, n - 1.001)
        fz = np.clip((z - self.lo) / self.step, 0, n - 1.001)
        ix, iy, iz = fx.astype(np.int32), fy.astype(np.int32), fz.astype(np.int32)
        tx, ty, tz = (fx - ix).astype(F32), (fy - iy).astype(F32), (fz - iz).astype(F32)
        d = self.data.ravel()
        base = (iz * n + iy) * n + ix
        out = np.zeros(x.shape, F32)
        for dz_ in (0, 1):
            wz = tz if dz_ else 1 - tz
            for dy_ in (0, 1):
                wy = ty if dy_ else 1 - ty
                for dx_ in (0, 1):
                    wx = tx if dx_ else 1 - tx
                    out += wz * wy * wx * d[base + (dz_ * n + dy_) * n + dx_]
        return out


# ----------------------------------------------------------------------------- the study


@dataclass
class _Spec:
    """Everything sampled for one study (anatomy, densities, lesion plan, acquisition)."""

    rng: np.random.Generator
    age: int
    sex: str
    scale: tuple[float, float, float]
    atrophy: float
    hu: dict[str, float]
    skull_t: float
    scalp_t: float
    w_sas: float
    w_sulc: float
    sulc_depth: float
    cortex: float
    vent: float
    flags: dict[str, bool]
    lesions: list[dict] = field(default_factory=list)
    warp: dict | None = None


def _sample_spec(rng: np.random.Generator, label: bool) -> _Spec:
    u = rng.uniform
    age = int(np.clip(rng.normal(62, 18), 18, 97))
    old = float(np.clip((age - 35) / 50.0, 0.0, 1.0))
    atrophy = float(np.clip(old * u(0.5, 1.3) + u(-0.05, 0.15), 0.0, 1.2))
    wm = u(21.0, 30.0)
    gm = wm + u(7.0, 12.0) - 2.0 * old  # grey-white contrast falls with age
    hu = {
        "wm": wm,
        "gm": gm,
        "deep": gm - u(0.0, 3.0),
        "csf": u(2.0, 12.0),
        "blood": u(40.0, 58.0) if u() > 0.12 else u(58.0, 70.0),  # haemoconcentration
        "artery": 0.0,
        "dura": u(45.0, 70.0),
        "cortex": u(1200.0, 1900.0),
        "diploe": u(300.0, 750.0),
        "petrous": u(1600.0, 2300.0),
        "fat": u(-110.0, -65.0),
        "muscle": u(35.0, 60.0),
        "skin": u(20.0, 50.0),
        "vitreous": u(0.0, 15.0),
        "lens": u(80.0, 125.0),
        "calc": u(120.0, 600.0),
        "rim": u(2.0, 9.0),  # beam-hardening rim under the inner table
        "wmd": u(4.0, 9.0),  # white-matter disease hypodensity
    }
    hu["artery"] = hu["blood"] + u(-4.0, 6.0)
    flags = {
        "pineal": u() < 0.4 + 0.5 * old,
        "habenula": u() < 0.15,
        "choroid": u() < 0.25 + 0.6 * old,
        "falx_calc": u() < 0.1 + 0.35 * old,
        "bg_calc": u() < 0.03 + 0.15 * old,
        "siphon_calc": u() < 0.1 + 0.6 * old,
        "wmd": u() < 0.6 * old,
        "lacunes": u() < 0.35 * old,
        "frontal_sinus": u() < 0.9,
        "mega_cisterna": u() < 0.08,
        "dense_mca": u() < 0.04,
        "fluid_sinus": u() < 0.08,
    }
    spec = _Spec(
        rng=rng,
        age=age,
        sex="M" if u() < 0.52 else "F",
        scale=(u(0.92, 1.06), u(0.93, 1.07), u(0.93, 1.06)),
        atrophy=atrophy,
        hu=hu,
        skull_t=u(4.5, 8.0),
        scalp_t=u(3.5, 7.5),
        w_sas=u(0.6, 1.4) + 3.5 * atrophy,
        w_sulc=u(0.8, 1.4) + 2.8 * atrophy,
        sulc_depth=u(11.0, 19.0),
        cortex=u(2.4, 3.4),
        vent=1.0 + 0.9 * atrophy + u(-0.1, 0.15),
        flags=flags,
    )
    if label:
        _plan_lesions(spec)
    return spec


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _plan_lesions(spec: _Spec) -> None:
    rng, u = spec.rng, spec.rng.uniform
    first = str(rng.choice(KINDS, p=[0.14, 0.26, 0.22, 0.26, 0.12]))
    kinds = [first]
    if u() < 0.28:
        extra = {
            "epidural": ["subdural", "subarachnoid"],
            "subdural": ["subarachnoid", "intraparenchymal"],
            "subarachnoid": ["intraventricular", "subdural"],
            "intraparenchymal": ["intraventricular", "subarachnoid"],
            "intraventricular": ["intraparenchymal"],
        }[first]
        kinds.append(str(rng.choice(extra)))
    side = 1.0 if u() < 0.5 else -1.0
    for kind in kinds:
        les: dict = {"kind": kind, "side": side}
        if kind in ("epidural", "subdural"):
            if kind == "epidural":
                az = u(-0.7, 0.7) + (0.0 if u() < 0.6 else rng.choice([-1.0, 1.0]) * 0.9)
                el = u(-0.35, 0.5)
                les["h"] = u(5.0, 28.0)
                les["alpha"] = math.radians(u(16.0, 32.0))
                les["hu"] = u(55.0, 90.0)
                les["swirl"] = u() < 0.3
                les["fracture"] = u() < 0.6
            else:
                az = u(-1.2, 1.2)
                el = u(-0.2, 0.6)
                thin = u() < 0.35
                les["h"] = u(2.0, 5.0) if thin else u(5.0, 18.0)
                les["alpha"] = math.radians(u(35.0, 65.0))
                les["subacute"] = u() < 0.25
                les["hu"] = u(30.0, 44.0) if les["subacute"] else u(50.0, 82.0)
            # direction from the cavity centre: az around the side (0 = lateral)
            d = np.array(
                [side * math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]
            )
            les["dir"] = _unit(d)
        elif kind == "subarachnoid":
            les["pattern"] = str(rng.choice(["convexity", "sylvian", "basal"], p=[0.4, 0.3, 0.3]))
            les["hu"] = u(45.0, 80.0)
            d = np.array([side * u(0.6, 1.0), u(-0.8, 0.8), u(0.0, 0.9)])
            les["dir"] = _unit(d)
            les["reach"] = u(18.0, 38.0)
        elif kind == "intraparenchymal":
            site = str(
                rng.choice(
                    ["putamen", "thalamus", "lobar", "cerebellum", "pons"],
                    p=[0.3, 0.15, 0.38, 0.1, 0.07],
                )
            )
            r = float(np.exp(u(math.log(2.5), math.log(30.0))))
            if site == "putamen":
                c = (side * u(19, 25), u(-10, 4), u(-6, 6))
            elif site == "thalamus":
                c = (side * u(7, 12), u(8, 16), u(0, 6))
                r = min(r, 16.0)
            elif site == "lobar":
                c = tuple(
                    np.array([side * u(30, 48), u(-55, 60), u(-5, 40)]) * np.array([1.0, 1.0, 1.0])
                )
            elif site == "cerebellum":
                c = (side * u(18, 30), u(35, 50), u(-45, -35))
                r = min(r, 18.0)
            else:
                c = (u(-3, 3), u(6, 10), u(-36, -26))
                r = min(r, 10.0)
            les.update(site=site, c=c, r=r, hu=u(55.0, 90.0), edema=u(0.15, 0.6) * r + 1.0)
            les["axes"] = (u(0.7, 1.2), u(0.8, 1.4), u(0.7, 1.1))
        else:
            les["pattern"] = "cast" if u() < 0.25 else "layer"
            les["hu"] = u(48.0, 80.0)
            les["level"] = u(14.0, 26.0)
        les["kind"] = kind
        spec.lesions.append(les)
    _plan_mass_effect(spec)


def _plan_mass_effect(spec: _Spec) -> None:
    """Mass effect from the lesions' volume: a push about the lesion and a midline shift."""
    u = spec.rng.uniform
    vol, centre, side, push = 0.0, None, 1.0, []
    for les in spec.lesions:
        if les["kind"] in ("epidural", "subdural"):
            v = les["h"] * (les["alpha"] * 75.0) ** 2 * (0.5 if les["kind"] == "epidural" else 0.7)
            mult = 1.6 if les.get("subacute") else 1.0
            vol += v * mult / 1000.0
            centre = np.array([0.0, 5.0, 0.0]) + les["dir"] * 65.0
            side = les["side"]
        elif les["kind"] == "intraparenchymal":
            a = les["axes"]
            v = 4.0 / 3.0 * math.pi * les["r"] ** 3 * a[0] * a[1] * a[2] / 1000.0
            vol += v
            centre = np.array(les["c"])
            side = les["side"]
            push.append((np.array(les["c"]), les["r"] * (a[0] * a[1] * a[2]) ** (1 / 3)))
    if centre is None or vol < 8.0:
        spec.warp = {"push": push, "shift": 0.0, "eff": 0.0, "c": centre, "side": side}
        return
    shift = float(np.clip(vol / 9.0, 0.0, 14.0) * u(0.6, 1.1))
    infra = centre[2] < -25 and centre[1] > 20
    spec.warp = {
        "push": push,
        "shift": 0.0 if infra else shift,
        "eff": float(np.clip(vol / 60.0, 0.1, 0.8)),
        "c": centre,
        "side": side,
        "L": 18.0 + vol ** (1 / 3) * 4.0,
    }


# ----------------------------------------------------------------------------- anatomy


def _cavity(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed distance to the intracranial cavity's inner surface (negative inside)."""
    ax = np.abs(x)
    cer = _ell(x, y, z, (0.0, 4.0, 6.0), (67.0, 84.0, 63.0))
    tmp = _ell(ax, y, z, (40.0, -6.0, -30.0), (22.0, 36.0, 20.0))
    pf = _ell(x, y, z, (0.0, 42.0, -42.0), (50.0, 40.0, 25.0))
    cav = _smin(_smin(cer, tmp, 6.0), pf, 8.0)
    # floor of the skull base: anterior fossa over domed orbital roofs, middle fossae with the
    # sella in the midline, posterior fossa basin with the foramen magnum
    y_sph = -34.0 + 0.3 * ax
    y_pet = 2.0 + 0.55 * np.maximum(ax - 14.0, 0.0)
    f_ant = -27.0 + 9.0 * np.exp(-(((ax - 28.0) / 13.0) ** 2))
    f_mid = (
        -47.0 + 15.0 * np.exp(-((x / 15.0) ** 2)) - 6.0 * np.exp(-(x**2 + (y + 8.0) ** 2) / 30.0)
    )
    f_post = -66.0 + 12.0 * ((x / 48.0) ** 2 + ((y - 36.0) / 40.0) ** 2)
    fm = np.exp(-(((x**2 + (y - 22.0) ** 2) / 14.0**2) ** 3))  # foramen magnum
    f_post = f_post * (1 - fm) - 140.0 * fm
    wa = _sig((y_sph - y) / 2.5)
    wp = _sig((y - y_pet) / 2.0)
    floor = wa * f_ant + (1 - wa) * ((1 - wp) * f_mid + wp * f_post)
    cav = np.maximum(cav, (floor - z) * 0.8)
    cav = np.maximum(cav, -_petrous(x, y, z))
    # the clivus (dorsum sellae to basion) is bone, not cavity
    d_cl, _ = _seg(x * 0.7, y, z, (0.0, -1.0, -31.0), (0.0, 19.0, -64.0))
    cav = np.maximum(cav, 5.0 - d_cl)
    return cav


def _petrous(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed distance to the petrous pyramids: cones from the apex by the clivus out to the
    mastoid, their ridges between the middle and posterior fossae."""
    ax = np.abs(x)
    d, t = _seg(ax, y, z, (15.0, -1.0, -39.0), (50.0, 21.0, -47.0))
    return d - (3.5 + 8.5 * t)


def _skull_t(spec: _Spec, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Skull thickness (mm) over the vault and base: thin temporal squama, thick base."""
    t0 = spec.skull_t
    ax = np.abs(x)
    t = t0 * (
        1.0 + 0.25 * np.exp(-(((y + 70.0) / 25.0) ** 2)) + 0.2 * np.exp(-(((y - 75) / 20) ** 2))
    )
    t = t * (1.0 - 0.55 * np.exp(-(((ax - 62.0) / 10.0) ** 2) - ((z + 12.0) / 22.0) ** 2))
    t = t + 5.0 * _sig((-30.0 - z) / 4.0) * _sig((30.0 - y) / 6.0)  # the base is thick
    t = t + 9.0 * np.exp(-(((y + 78.0) / 12.0) ** 2) - ((z + 12.0) / 12.0) ** 2 - (x / 22.0) ** 2)
    return t


def _sutures(spec: _Spec, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Occupancy of suture gaps (zig-zag sheets through the vault), fading with age."""
    w = 0.9 * max(0.0, 1.2 - spec.age / 70.0)
    if w < 0.15:
        return np.zeros(x.shape, F32)
    zig = 1.2 * np.sin(y * 1.3) + 0.6 * np.sin(z * 2.1)
    sag = (np.abs(x + zig) < w / 2) & (z > 25) & (y > -12) & (y < 68)
    zig2 = 1.2 * np.sin(x * 1.4) + 0.6 * np.sin(z * 1.9)
    cor = (np.abs(y - (-14.0 - 0.15 * np.abs(x) + 0.1 * (z - 40)) + zig2) < w / 2) & (z > -18)
    ylam = 68.0 - 0.5 * (45.0 - z)
    lam = (np.abs(y - ylam + zig2) < w / 2) & (z > -35) & (y > 20)
    return (sag | cor | lam).astype(F32) * 0.8


def _paint_points(spec: _Spec, fields: dict, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple:
    """HU, lesion fraction, petrous fraction and label of points in the head frame."""
    h = spec.hu
    n = x.shape[0]
    hu = np.full(n, -1000.0, F32)
    les = np.zeros(n, F32)
    pet = np.zeros(n, F32)
    lab = np.zeros(n, np.int8)
    ax = np.abs(x)

    def put(idx: np.ndarray, o: np.ndarray, v: np.ndarray | float, lb: int) -> None:
        cur = hu[idx]
        hu[idx] = cur + o * (v - cur)
        lab[idx] = np.where(o >= 0.5, lb, lab[idx])

    cav = _cavity(x, y, z)
    t = _skull_t(spec, x, y, z)
    s_t = spec.scalp_t + 9.0 * np.exp(
        -(((ax - 66) / 12) ** 2) - ((z + 15) / 22) ** 2 - (y / 35) ** 2
    )
    d_vault = cav - t - s_t
    face = _ell(x, y, z, (0.0, -40.0, -52.0), (62.0, 56.0, 44.0))
    neck = _ell(x, y, z, (0.0, 28.0, -98.0), (58.0, 60.0, 55.0))
    nose = _ell(x, y, z, (0.0, -86.0, -62.0), (11.0, 14.0, 18.0))
    ear = np.maximum(
        np.abs(ax - (np.sqrt(np.maximum(67.0**2 - (y / 1.25) ** 2, 1.0)) + 9.0 + 0.15 * (z + 40)))
        - 1.8,
        _ell(ax * 0, y, z, (0.0, 12.0, -38.0), (1.0, 17.0, 29.0)),
    )
    body = np.minimum(np.minimum(_smin(d_vault, face, 10.0), _smin(neck, nose, 4.0)), ear)
    o = _soft(body)
    depth_skin = -body
    fatmix = np.clip((depth_skin - 1.5) / 1.0, 0, 1) * np.clip((cav - t - 1.0) / 1.5, 0, 1)
    tem = np.exp(-(((ax - 62) / 9) ** 2) - ((z + 15) / 20) ** 2 - (y / 30) ** 2)  # temporalis
    deep = _sig((-40.0 - z) / 6.0)  # face and neck below the base: mostly muscle
    soft_v = h["skin"] + fatmix * (h["fat"] - h["skin"]) * (1 - np.maximum(tem, deep * 0.7))
    soft_v = soft_v + fatmix * np.maximum(tem, deep * 0.7) * (h["muscle"] - h["skin"])
    all_i = np.arange(n)
    put(all_i, o, soft_v, SOFT)

    # skull: outer and inner cortex over diploe, sutures
    ob = _soft(cav - t) * _soft(-cav)
    sb = np.flatnonzero(ob > 0)
    xb, yb, zb, cb, tb = x[sb], y[sb], z[sb], cav[sb], t[sb]
    outer_c = 1.2 + 0.4 * (tb > 7)
    inner_c = 1.0
    di = np.clip(np.minimum(cb - inner_c, tb - outer_c - cb), 0, None)
    dip_tex = fields["low2"](xb * 8.0, yb * 8.0, zb * 8.0) * 0.5
    dip = h["diploe"] * (0.85 + 0.3 * dip_tex)
    bone_v = h["cortex"] + np.clip(di / 1.0, 0, 1) * (dip - h["cortex"])
    bone_v = bone_v * (1.0 - _sutures(spec, xb, yb, zb) * np.clip(di > 0, 0.6, 1.0))
    put(sb, ob[sb], bone_v, BONE)

    # petrous bones (dense) and the mastoid air cells behind them
    for sgn in (-1.0, 1.0):
        op = _soft(_petrous(x, y, z) + 1.0) * (x * sgn > 0) * (cav > -1.0)
        ip = np.flatnonzero(op > 0)
        put(ip, op[ip], h["petrous"], PETROUS)
        pet[ip] = np.maximum(pet[ip], op[ip])
        # internal auditory canal and cochlea: small fluid-density channels in the petrous bone
        dia, _ = _seg(x, y, z, (sgn * 20.0, 2.0, -39.0), (sgn * 32.0, 8.0, -40.0))
        oi = _soft(dia - 2.0)
        ii = np.flatnonzero(oi > 0)
        put(ii, oi[ii], h["csf"] + 10.0, SOFT)
        dm = _ell(x, y, z, (sgn * 52.0, 22.0, -50.0), (11.0, 14.0, 15.0))
        om = _soft(dm)
        im = np.flatnonzero((om > 0) & (cav > 1.0))
        cells = fields["sulci2"](x[im] * 4.5, y[im] * 4.5, z[im] * 4.5)
        air = np.clip((np.abs(cells) - 0.2) * 4.0, 0, 1) * fields["mastoid"]
        put(im, om[im], -950.0 * air + (1 - air) * h["diploe"] * 1.4, BONE)
        # external ear canal
        de, _ = _seg(x, y, z, (sgn * 47.0, 14.0, -44.0), (sgn * 85.0, 12.0, -42.0))
        oe = _soft(de - 3.5) * (cav > 1.0)
        ie = np.flatnonzero(oe > 0)
        put(ie, oe[ie], -1000.0, AIR)

    _paint_face(spec, fields, x, y, z, cav, put)

    # the cavity: CSF first, then the brain in warped coordinates
    oc = _soft(cav)
    ic = np.flatnonzero(oc > 0)
    put(ic, oc[ic], h["csf"], CSF)
    sa = np.zeros(n, F32)  # subarachnoid CSF fraction
    sa[ic] = oc[ic]
    vf = np.zeros(n, F32)  # ventricular CSF fraction
    _paint_brain(spec, fields, x, y, z, cav, ic, hu, lab, sa, vf, put)
    _paint_vessels(spec, x, y, z, cav, ic, put, sa)
    _paint_lesions(spec, fields, x, y, z, cav, hu, les, lab, sa, vf)
    return hu, les, pet, lab


def _paint_face(spec: _Spec, fields: dict, x: Arr, y: Arr, z: Arr, cav: Arr, put: Put) -> None:
    """Orbits, globes, sinuses and nasal cavity (below the anterior cranial fossa)."""
    h = spec.hu
    ax = np.abs(x)
    out = cav > 1.5
    # paranasal sinuses: air with thin bony walls
    sinuses = [
        ((0.0, -20.0, -47.0), (13.0, 11.0, 9.0), True),  # sphenoid
        ((24.0, -52.0, -66.0), (14.0, 17.0, 15.0), False),  # maxillary (mirrored)
    ]
    if spec.flags["frontal_sinus"]:
        sinuses.append(((0.0, -80.0, -12.0), (17.0, 5.5, 11.0), True))
    for c, a, mid in sinuses:
        xx = x if mid else ax
        d = _ell(xx, y, z, c, a)
        ow = _soft(d - 1.2) * out
        i = np.flatnonzero(ow > 0)
        put(i, ow[i], h["cortex"] * 0.55, BONE)
        oa = _soft(d) * out
        i = np.flatnonzero(oa > 0)
        put(i, oa[i], -990.0, AIR)
    # ethmoid air cells between the orbits, nasal cavity below with septum and turbinates
    de = _ell(ax, y, z, (7.0, -47.0, -42.0), (6.5, 21.0, 11.0))
    oe = _soft(de) * out
    i = np.flatnonzero(oe > 0)
    cells = fields["sulci2"](x[i] * 4.0, y[i] * 4.0, z[i] * 4.0)
    air = np.clip((np.abs(cells) - 0.25) * 4.0, 0, 1)
    put(i, oe[i], -980.0 * air + (1 - air) * 350.0, BONE)
    dn = _ell(x, y, z, (0.0, -58.0, -72.0), (14.0, 31.0, 19.0))
    on = _soft(dn) * out
    i = np.flatnonzero(on > 0)
    xi, zi = x[i], z[i]
    turb = np.exp(-(((np.abs(xi) - 10.0) / 2.5) ** 2)) * (0.5 + 0.5 * np.cos((zi + 60) * 0.55))
    sept = np.exp(-((xi / 1.0) ** 2))
    tissue = np.clip(turb + sept, 0, 1)
    put(i, on[i], -1000.0 + tissue * (1000.0 + h["muscle"]), AIR)
    # orbits: conical bony walls, fat, globe, lens, optic nerve, medial and lateral recti
    for sgn in (-1.0, 1.0):
        apex = np.array([sgn * 15.0, -20.0, -37.0])
        rim = np.array([sgn * 33.0, -70.0, -37.0])
        ln = float(np.linalg.norm(rim - apex))
        uu = (rim - apex) / ln
        px, py, pz = x - apex[0], y - apex[1], z - apex[2]
        tt = (px * uu[0] + py * uu[1] + pz * uu[2]) / ln
        rx, ry, rz = px - tt * ln * uu[0], py - tt * ln * uu[1], pz - tt * ln * uu[2]
        rho = np.sqrt(rx * rx + ry * ry + (rz * 1.1) ** 2)
        rad = 3.0 + 16.0 * np.clip(tt, 0, 1) ** 0.7
        d = np.maximum(rho - rad, -tt * ln)
        d = np.where(tt > 1.0, np.maximum(d, (tt - 1.0) * ln), d)
        wall = _soft(d - 1.6) * (cav > 0.5) * (tt < 1.02)
        i = np.flatnonzero(wall > 0)
        put(i, wall[i], h["cortex"] * 0.7, BONE)
        o = _soft(d) * (cav > 0.5)
        i = np.flatnonzero(o > 0)
        put(i, o[i], h["fat"], FAT)
        g = rim + uu * 2.0 + np.array([0.0, -2.0, 0.0])
        dg = _ell(x, y, z, tuple(g), (12.0, 12.0, 12.0))
        og = _soft(dg)
        i = np.flatnonzero(og > 0)
        sclera = np.clip(dg[i] + 1.2, 0, 1)
        put(i, og[i], h["vitreous"] + sclera * (h["muscle"] - h["vitreous"]), SOFT)
        dl = _ell(x, y, z, (g[0], g[1] - 9.0, g[2]), (4.5, 2.0, 4.5))
        ol = _soft(dl)
        i = np.flatnonzero(ol > 0)
        put(i, ol[i], h["lens"], SOFT)
        # optic nerve from the globe to the apex, medial and lateral recti along the walls
        muscles = (
            (apex, g + np.array([0.0, 11.0, 0.0]), 2.3),
            (apex + np.array([-sgn, 0.0, 0.0]), g + np.array([-sgn * 10.0, 4.0, 0.0]), 2.0),
            (apex + np.array([sgn * 2.0, 0.0, 0.0]), g + np.array([sgn * 11.0, 4.0, 0.0]), 2.2),
        )
        for a_, b_, r_ in muscles:
            d_mus = _seg(x, y, z, tuple(a_), tuple(b_))[0] - r_
            om = _soft(d_mus) * (d < 0)
            i = np.flatnonzero(om > 0)
            put(i, om[i], h["muscle"] - 10.0, SOFT)


def _warp(spec: _Spec, x: Arr, y: Arr, z: Arr) -> tuple:
    """Brain coordinates under mass effect: content at p comes from q (see module doc)."""
    w = spec.warp
    if not w:
        return x, y, z, np.zeros(x.shape, F32)
    qx, qy, qz = x.astype(F32).copy(), y.astype(F32).copy(), z.astype(F32).copy()
    for c, r in w["push"]:
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        rr = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-3
        r2 = np.cbrt(np.maximum(rr**3 - 0.7 * r**3, 0.0))
        f = np.where(rr > r, r2 / rr, 0.3)
        f = 1 - (1 - f) * np.exp(-(((rr - r) / (3 * r + 20)) ** 2))
        qx, qy, qz = c[0] + dx * f, c[1] + dy * f, c[2] + dz * f
    for les in spec.lesions:
        if les["kind"] in ("epidural", "subdural"):
            c0 = np.array([0.0, 5.0, 0.0])
            dx, dy, dz = x - c0[0], y - c0[1], z - c0[2]
            rr = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-3
            cosa = (dx * les["dir"][0] + dy * les["dir"][1] + dz * les["dir"][2]) / rr
            ang = np.arccos(np.clip(cosa, -1, 1))
            hh = _extra_h(les, ang)
            dc = np.maximum(-_cavity(x, y, z), 0)
            m = hh * np.exp(-dc / 35.0)
            qx, qy, qz = qx + dx / rr * m, qy + dy / rr * m, qz + dz / rr * m
    eff = np.zeros(x.shape, F32)
    if w["c"] is not None and w["eff"] > 0:
        c = w["c"]
        dd = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
        eff = (w["eff"] * np.exp(-((dd / w["L"]) ** 2))).astype(F32)
        if w["shift"] > 0:
            sgn = w["side"]
            taper = np.clip((x * sgn + 60.0) / 60.0, 0, 1) * np.clip((62.0 - z) / 40.0, 0, 1)
            taper = taper * _sig((z + 22.0) / 3.0)
            qx = qx + sgn * w["shift"] * taper
    return qx, qy, qz, eff


def _extra_h(les: dict, ang: np.ndarray) -> np.ndarray:
    """Thickness (mm) of an extra-axial collection at angular distance ``ang`` from its centre."""
    s = np.clip(ang / les["alpha"], 0, 1)
    if les["kind"] == "epidural":
        return les["h"] * np.sqrt(np.clip(1 - s**2, 0, 1))  # biconvex lens
    return les["h"] * np.clip(1 - s**4, 0, 1) ** 0.7  # crescent


def _paint_brain(
    spec: _Spec,
    fields: dict,
    x: Arr,
    y: Arr,
    z: Arr,
    cav: Arr,
    ic: Arr,
    hu: Arr,
    lab: Arr,
    sa: Arr,
    vf: Arr,
    put: Put,
) -> None:
    """Cerebrum, deep grey, ventricles, cisterns, cerebellum, brainstem, dura, calcifications
    (points ``ic`` of the cavity, drawn in the mass-effect coordinates)."""
    h = spec.hu
    X, Y, Z = x[ic], y[ic], z[ic]
    qx, qy, qz, eff = _warp(spec, X, Y, Z)
    dcq = -_cavity(qx, qy, qz)
    aqx = np.abs(qx)
    # compartments: under the tentorium (cerebellum, brainstem) or above it
    z_mid = 4.0 - 27.0 * np.clip((qy - 24.0) / 54.0, 0, 1)
    z_t = z_mid - 0.55 * aqx
    y_pet = -2.0 + 0.65 * np.maximum(aqx - 14.0, 0.0)
    infra = (qz < z_t) & (qy > y_pet + 2.0)
    w_sas = spec.w_sas * (1 - eff) + 0.3
    # cerebrum: brain below the subarachnoid space, minus the basal cisterns
    bcis = _ell(
        qx, qy, qz, (0.0, 6.0, -20.0), (17.0 + 5 * spec.atrophy, 26.0, 12.0 + 2 * spec.atrophy)
    )
    d_cer = np.maximum(w_sas - dcq, -bcis)
    # sulci: zero sheets of a band-limited field, widest at the surface, tapering with depth
    band = (~infra) & (dcq < spec.sulc_depth + 6.0) & (dcq > 0)
    bi = np.flatnonzero(band)
    dist_s = np.full(X.shape, 99.0, F32)
    if bi.size:
        nf = fields["sulci"](qx[bi], qy[bi], qz[bi])
        depth = dcq[bi] - w_sas[bi]
        width = spec.w_sulc * (1 - eff[bi]) * np.clip(1 - depth / spec.sulc_depth, 0, 1) ** 0.6
        dist_s[bi] = np.abs(nf) / fields["sulci"].grad - width / 2
    # Sylvian fissure: insular cistern, lateral cleft and stem, widening with atrophy
    w_syl = (1.2 + 3.5 * spec.atrophy) * (1 - eff)
    x_ins = 37.0 - 0.006 * qy**2 + 1.5 * np.sin(qz * 0.12)
    ins_zone = (np.abs(qy - 0.0) < 20.0) & (qz > -24.0) & (qz < 14.0)
    d_ins = np.where(ins_zone, np.abs(aqx - x_ins) - w_syl / 2, 99.0)
    z_syl = -14.0 + 0.32 * (qy + 22.0)
    d_lat = np.where(
        (aqx > x_ins) & (qy > -26.0) & (qy < 30.0), np.abs(qz - z_syl) - w_syl / 2, 99.0
    )
    d_stem = np.where(
        (aqx > 16.0) & (qz > -26.0) & (qz < -10.0),
        np.abs(qy + 25.0 - 0.01 * (aqx - 14.0) ** 2 + 0.06 * (qz + 18.0) ** 2 * 0.1) - w_syl / 2,
        99.0,
    )
    d_syl = np.minimum(np.minimum(d_ins, d_lat), d_stem)
    # interhemispheric fissure above the corpus callosum (all the way down at the poles)
    z_cc = 24.0 + 10.0 * ((qy - 2.0) / 30.0) ** 2
    z_cc = np.where(np.abs(qy - 2.0) > 31.0, -99.0, z_cc)
    w_ih = 1.0 + 2.5 * spec.atrophy
    d_ih = np.where(qz > z_cc, aqx - w_ih / 2, 99.0)
    d_csf = np.minimum(np.minimum(dist_s, d_syl), d_ih)
    o_brain = _soft(np.maximum(d_cer, -d_csf)) * (~infra)
    # grey matter: a band along the cortex surface and along every sulcus and fissure
    d_surf = np.minimum(dcq - w_sas, d_csf)
    o_gm = _soft(d_surf - spec.cortex) * (dcq < spec.sulc_depth + spec.cortex + 4.0)
    val = h["wm"] + o_gm * (h["gm"] - h["wm"])
    if spec.flags["wmd"]:
        low = fields["low"](qx, qy, qz)
        peri = np.exp(
            -((np.sqrt((aqx - 16) ** 2 + ((qy - 5) / 2.2) ** 2 + ((qz - 16) / 1.2) ** 2) / 22) ** 2)
        )
        wmd = np.clip((low + 1.6 * peri - 0.9) * 1.5, 0, 1) * (1 - o_gm) * (dcq > 10)
        val = val - wmd * h["wmd"] * spec.atrophy
    # beam-hardening rim: brain just under the inner table reads denser
    val = val + h["rim"] * np.exp(-np.maximum(-cav[ic], 0) / 2.5)
    put(ic, o_brain, val, WM)
    lab[ic] = np.where((o_brain >= 0.5) & (o_gm >= 0.5), GM, lab[ic])
    sa[ic] *= 1 - o_brain

    def carve_csf(o: np.ndarray, ventricle: bool) -> None:
        put(ic, o, h["csf"], VENT if ventricle else CSF)
        if ventricle:
            vf[ic] = np.maximum(vf[ic], o)
            sa[ic] *= 1 - o
        else:
            sa[ic] = np.maximum(sa[ic], o)

    def paint_tissue(o: np.ndarray, v: float | np.ndarray, lb: int) -> None:
        put(ic, o, v, lb)
        sa[ic] *= 1 - o
        vf[ic] *= 1 - o

    # deep grey: caudate heads, lentiform nuclei, thalami; insular cortex
    vs = spec.vent
    for sgn in (-1.0, 1.0):
        side_eff = eff * (np.sign(qx) == sgn)
        # lateral ventricle along its C-shaped course (frontal horn to temporal horn tip)
        pts = [
            (sgn * (1.2 + 4.0 * vs), -28.0, 12.0),
            (sgn * (1.2 + 4.5 * vs), -12.0, 17.0),
            (sgn * (3.0 + 5.0 * vs), 8.0, 19.0),
            (sgn * (12.0 + 5.0 * vs), 27.0, 15.0),
            (sgn * (12.0 + 3.0 * vs), 46.0, 12.0),
        ]
        radii = [3.0 * vs, 4.2 * vs, 4.0 * vs, 5.5 * vs, 1.8 * vs]
        dv = _tube(qx, qy, qz * 1.35, [(p[0], p[1], p[2] * 1.35) for p in pts], radii)
        tpts = [
            (sgn * (12.0 + 5.0 * vs), 27.0, 15.0),
            (sgn * 27.0, 18.0, -6.0),
            (sgn * 30.0, 2.0, -20.0),
            (sgn * 30.0, -14.0, -26.0),
        ]
        dt = _tube(qx, qy, qz, tpts, [4.5 * vs, 2.8 * vs, 1.6 * vs, 1.0 * vs])
        dv = np.minimum(dv, dt) + 2.5 * side_eff
        carve_csf(_soft(dv) * (~infra), True)
        paint_tissue(
            _soft(_ell(qx, qy, qz, (sgn * (9.0 + 4.5 * vs), -16.0, 10.0), (5.0, 10.0, 8.0))),
            h["deep"],
            DEEP,
        )
        paint_tissue(
            _soft(_ell(qx, qy, qz, (sgn * 22.5, -4.0, 0.0), (6.5, 17.0, 11.0))),
            h["deep"] + 1.0,
            DEEP,
        )
        paint_tissue(
            _soft(_ell(qx, qy, qz, (sgn * (8.5 + 1.5 * vs), 13.0, 4.0), (8.5, 14.0, 9.0))),
            h["deep"],
            DEEP,
        )
        o_ins = _soft(np.abs(aqx - x_ins + 2.5 - w_syl / 2) - 2.0) * ins_zone * (np.sign(qx) == sgn)
        paint_tissue(o_ins, h["gm"], GM)
        # choroid plexus in the atrium (calcified with age)
        if spec.flags["choroid"]:
            oc = _soft(_ell(qx, qy, qz, (sgn * (13.0 + 5.0 * vs), 28.0, 15.0), (2.5, 3.5, 2.5)))
            paint_tissue(oc, h["calc"] * 0.6, CALC)
        if spec.flags["bg_calc"]:
            paint_tissue(
                _soft(_ell(qx, qy, qz, (sgn * 17.0, -2.0, -2.0), (1.8, 3.0, 2.0))), h["calc"], CALC
            )
    # third ventricle between the thalami
    w3 = 1.0 + 2.2 * vs + 3.0 * spec.atrophy
    d3 = np.maximum(aqx - w3 / 2, _ell(0 * qx, qy, qz, (0.0, 2.0, -6.0), (1.0, 13.0, 13.0)))
    carve_csf(_soft(d3), True)
    # lacunes: small CSF holes in the deep grey and white matter
    if spec.flags["lacunes"]:
        for _ in range(int(spec.rng.integers(1, 4))):
            c = (
                spec.rng.choice([-1, 1]) * spec.rng.uniform(12, 26),
                spec.rng.uniform(-15, 15),
                spec.rng.uniform(-4, 14),
            )
            carve_csf(_soft(_ell(qx, qy, qz, c, (1.8, 2.5, 2.0))), False)

    # infratentorial: cerebellum with folia and a white core, brainstem, fourth ventricle
    w_c = 0.6 + 2.0 * spec.atrophy
    dcb = np.minimum(
        _ell(aqx, qy, qz, (23.0, 43.0, -43.0), (27.0, 29.0, 21.0)),
        _ell(qx, qy, qz, (0.0, 44.0, -37.0), (12.0, 24.0, 19.0)),
    )
    dcb = np.maximum(dcb, w_c - dcq)
    if spec.flags["mega_cisterna"]:
        dcb = np.maximum(dcb, -_ell(qx, qy, qz, (0.0, 62.0, -56.0), (14.0, 14.0, 12.0)))
    o_cb = _soft(dcb) * infra
    r4 = np.sqrt(qx**2 * 0.6 + (qy - 26.0) ** 2 + (qz + 38.0) ** 2)
    r4 = r4 + 9.0 * fields["low"](qx, qy, qz) + 2.0 * fields["sulci2"](qx * 1.5, qy * 1.5, qz * 1.5)
    fol = np.cos(2 * np.pi * r4 / (3.4 + 0.8 * spec.atrophy))
    fol_csf = np.clip((fol - (0.75 - 0.25 * spec.atrophy)) * 3.0, 0, 1) * (dcb < -3.0)
    core = np.exp(
        -(((np.abs(qx) - 16.0) / 9.0) ** 2 + ((qy - 36.0) / 11.0) ** 2 + ((qz + 40.0) / 8.0) ** 2)
    )
    cval = h["gm"] - 1.0 + core * (h["wm"] - h["gm"] + 3.0)
    cval = cval - fol_csf * (cval - h["csf"]) * 0.7
    paint_tissue(o_cb, cval, CEREB)
    zz = np.clip(qz, -80, 0)
    yc = np.interp(zz, [-80, -62, -45, -32, -20, -8, 0], [22, 20, 14, 9, 10, 13, 12])
    rx = np.interp(zz, [-80, -62, -45, -32, -20, -8, 0], [9, 10, 12, 15, 14, 13, 10])
    ry = np.interp(zz, [-80, -62, -45, -32, -20, -8, 0], [8, 9, 10, 13, 11, 10, 7])
    kk = np.sqrt((qx / rx) ** 2 + ((qy - yc) / ry) ** 2)
    dst = (kk - 1.0) * np.minimum(rx, ry)
    dst = np.where(qz > 0, np.maximum(dst, qz - 2), dst)
    # interpeduncular notch in front of the midbrain
    notch = (qz > -22) & (qz < -6)
    dst = np.where(notch, np.maximum(dst, 3.5 - np.sqrt(qx**2 * 2.0 + (qy - (yc - ry)) ** 2)), dst)
    paint_tissue(_soft(dst) * (dcq > 0.5), h["wm"] + 4.0, STEM)
    d4 = _ell(qx, qy, qz, (0.0, 25.0, -37.0), (6.0 + 2 * spec.atrophy, 3.5, 7.0))
    carve_csf(_soft(d4), True)
    daq, _ = _seg(qx, qy, qz, (0.0, 22.0, -30.0), (0.0, 20.0, -8.0))
    carve_csf(_soft(daq - 0.9), True)
    # pituitary in the sella and the optic chiasm above it
    paint_tissue(_soft(_ell(qx, qy, qz, (0.0, -8.0, -35.0), (6.0, 5.0, 3.5))), h["gm"] + 8.0, SOFT)
    paint_tissue(_soft(_ell(qx, qy, qz, (0.0, -11.0, -22.0), (9.0, 3.5, 1.8))), h["wm"] + 2.0, WM)
    # dura: falx, tentorium, a thin layer under the inner table
    o_falx = _soft(np.abs(qx) - 0.45) * (qz > z_cc + 4.0) * (dcq > 0) * (~infra)
    paint_tissue(o_falx * 0.8, h["dura"], SOFT)
    o_tent = _soft(np.abs(qz - z_t) - 0.5) * (qy > y_pet) * ((aqx > 12.0) | (qy > 22.0)) * (dcq > 0)
    paint_tissue(o_tent * 0.8, h["dura"], SOFT)
    # midline calcifications
    if spec.flags["pineal"]:
        rp = spec.rng.uniform(1.5, 4.0)
        paint_tissue(
            _soft(_ell(qx, qy, qz, (0.0, 24.0, 2.0), (rp, rp * 1.2, rp))), h["calc"] * 1.3, CALC
        )
    if spec.flags["habenula"]:
        paint_tissue(_soft(_ell(qx, qy, qz, (0.0, 19.0, 6.0), (1.5, 1.2, 1.2))), h["calc"], CALC)
    if spec.flags["falx_calc"]:
        for _ in range(int(spec.rng.integers(1, 3))):
            c = (0.0, spec.rng.uniform(-50, 50), spec.rng.uniform(35, 55))
            paint_tissue(
                _soft(_ell(qx, qy, qz, c, (1.3, spec.rng.uniform(3, 8), spec.rng.uniform(2, 5)))),
                h["calc"] * 1.6,
                CALC,
            )


def _paint_vessels(
    spec: _Spec, x: Arr, y: Arr, z: Arr, cav: Arr, ic: Arr, put: Put, sa: Arr
) -> None:
    """Dural venous sinuses (on the skull) and arteries of the base (in the cisterns)."""
    h = spec.hu
    X, Y, Z = x[ic], y[ic], z[ic]
    dc = -cav[ic]
    ax = np.abs(X)
    bl = h["blood"]
    # superior sagittal sinus: a triangle under the vault, larger toward the back
    hs = 5.5 + 3.5 * np.clip((Y + 60.0) / 130.0, 0, 1)
    o = _soft(np.maximum(dc - hs, ax - (hs - dc) * 0.55)) * (Z > -12.0) * (Y > -75.0)
    put(ic, o, bl, BLOOD)
    sa[ic] *= 1 - o
    ds = _tube(X, Y, Z, [(0.0, 26.0, 4.0), (0.0, 52.0, -10.0), (0.0, 76.0, -22.0)], [2.6, 3.0, 3.5])
    dtr = [
        _tube(
            X,
            Y,
            Z,
            [
                (0.0, 78.0, -22.0),
                (s * 35.0, 72.0, -28.0),
                (s * 52.0, 48.0, -33.0),
                (s * 50.0, 32.0, -48.0),
                (s * 40.0, 26.0, -64.0),
            ],
            [5.0, r, r, r, r],
        )
        for s, r in ((-1.0, spec.rng.uniform(3.8, 5.0)), (1.0, spec.rng.uniform(2.6, 4.5)))
    ]
    d_ven = np.minimum(np.minimum(ds, dtr[0]), dtr[1])
    dg = _tube(X, Y, Z, [(-1.8, -6.0, 12.0), (-1.5, 20.0, 6.0), (0.0, 26.0, 4.0)], [1.3, 1.5, 2.8])
    dg = np.minimum(dg, _tube(X, Y, Z, [(1.8, -6.0, 12.0), (1.5, 20.0, 6.0)], [1.3, 1.5]))
    d_ven = np.minimum(d_ven, dg)
    o = _soft(d_ven)
    put(ic, o, bl + 2.0, BLOOD)
    sa[ic] *= 1 - o
    # arteries: carotids, circle of Willis, MCA into the Sylvian fissure, ACA, PCA, basilar
    qs = []
    for s in (-1.0, 1.0):
        qs += [
            (
                [(s * 15.0, -12.0, -44.0), (s * 14.0, -8.0, -30.0), (s * 13.0, -7.0, -24.0)],
                [2.3, 2.1, 1.9],
            ),
            (
                [
                    (s * 13.0, -7.0, -24.0),
                    (s * 30.0, -10.0, -22.0),
                    (s * 37.0, -6.0, -18.0),
                    (s * 37.0, 8.0, -4.0),
                ],
                [1.6, 1.5, 1.2, 1.0],
            ),
            (
                [
                    (s * 13.0, -7.0, -24.0),
                    (s * 2.0, -16.0, -22.0),
                    (s * 1.6, -30.0, 0.0),
                    (s * 1.6, -20.0, 26.0),
                ],
                [1.2, 1.1, 1.0, 0.9],
            ),
            (
                [
                    (0.0, -2.0, -30.0),
                    (s * 12.0, 2.0, -24.0),
                    (s * 19.0, 20.0, -16.0),
                    (s * 16.0, 45.0, -10.0),
                ],
                [1.2, 1.1, 1.0, 0.9],
            ),
            ([(s * 9.0, 14.0, -75.0), (s * 5.0, 4.0, -62.0), (0.0, 0.0, -56.0)], [1.8, 1.7, 1.7]),
        ]
    qs.append(([(0.0, 0.0, -56.0), (0.0, -3.0, -42.0), (0.0, -2.0, -30.0)], [1.8, 1.8, 1.6]))
    da = np.full(X.shape, np.inf, F32)
    for pts, rr in qs:
        da = np.minimum(da, _tube(X, Y, Z, pts, rr))
    o = _soft(da)
    put(ic, o, h["artery"], BLOOD)
    sa[ic] *= 1 - o
    if spec.flags["dense_mca"]:
        s = 1.0 if spec.rng.uniform() < 0.5 else -1.0
        dm = _tube(X, Y, Z, [(s * 13.0, -7.0, -24.0), (s * 30.0, -10.0, -22.0)], [1.7, 1.6])
        put(ic, _soft(dm), spec.rng.uniform(65.0, 85.0), BLOOD)
    if spec.flags["siphon_calc"]:
        for s in (-1.0, 1.0):
            d, _ = _seg(X, Y, Z, (s * 15.0, -12.0, -44.0), (s * 14.0, -8.0, -30.0))
            arc = np.cos(np.arctan2(Z + 37.0, X - s * 14.0) + s) > 0.2
            o = _soft(np.abs(d - 2.4) - 0.7) * arc
            put(ic, o, spec.hu["calc"] * 1.5, CALC)


def _paint_lesions(
    spec: _Spec,
    fields: dict,
    x: Arr,
    y: Arr,
    z: Arr,
    cav: Arr,
    hu: Arr,
    les: Arr,
    lab: Arr,
    sa: Arr,
    vf: Arr,
) -> None:
    """The planned haemorrhages over the painted head; ``les`` gets their occupancy."""
    n = x.shape[0]
    for L in spec.lesions:
        kind = L["kind"]
        o = np.zeros(n, F32)
        if kind in ("epidural", "subdural"):
            c0 = np.array([0.0, 5.0, 0.0])
            i = np.flatnonzero(cav < 0.5)
            dx, dy, dz = x[i] - c0[0], y[i] - c0[1], z[i] - c0[2]
            rr = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-3
            d = L["dir"]
            ang = np.arccos(np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / rr, -1, 1))
            hh = _extra_h(L, ang)
            dc = -cav[i]
            oo = _soft(dc - hh) * _soft(-dc) * (hh > 0.3)
            oo = oo * np.clip(x[i] * L["side"] / 1.0 + 0.5, 0, 1)  # stops at the falx
            oo = oo * _sig((z[i] + 30.0) / 3.0)  # above the skull base
            o[i] = oo
            v = L["hu"]
            if L.get("swirl"):
                sw = fields["sulci"](x[i] * 2.0, y[i] * 2.0, z[i] * 2.0)
                v = v - 25.0 * np.clip(sw - 0.6, 0, 1)
            if L.get("subacute") and spec.rng.uniform() < 0.5:
                v = v + 15.0 * np.clip((y[i] - c0[1]) / 40.0, 0, 1)  # haematocrit layering
            cur = hu[i]
            hu[i] = cur + oo * (v - cur)
            if L.get("fracture"):
                p = c0 + d * 80.0
                df, _ = _seg(
                    x,
                    y,
                    z,
                    tuple(p + np.array([0.0, 0.0, -25.0])),
                    tuple(p + np.array([0.0, 4.0, 25.0])),
                )
                of = _soft(df - 0.6) * (cav > 0) * (cav < 14)
                hu[:] = hu + of * (spec.hu["muscle"] - hu)
        elif kind == "subarachnoid":
            c0 = np.array([0.0, 5.0, 0.0])
            if L["pattern"] == "convexity":
                c = c0 + L["dir"] * 62.0
                reach = L["reach"]
            elif L["pattern"] == "sylvian":
                c = np.array([L["side"] * 34.0, -4.0, -12.0])
                reach = L["reach"] + 8.0
            else:
                c = np.array([0.0, -2.0, -22.0])
                reach = L["reach"] + 14.0
            dd = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
            reg = np.clip(1.4 - dd / reach, 0, 1) * np.clip(0.5 + fields["sulci2"](x, y, z), 0.3, 1)
            o = np.clip(sa * np.clip(reg * 1.6, 0, 1), 0, 1) * (cav < 0)
            cur = hu
            hu[:] = cur + o * (L["hu"] - spec.hu["csf"])
        elif kind == "intraparenchymal":
            c, r, a = L["c"], L["r"], L["axes"]
            d = _ell(x, y, z, c, (r * a[0], r * a[1], r * a[2]))
            i = np.flatnonzero((d < L["edema"] + 2.0) & (cav < 0))
            pert = fields["low2"](x[i] * 3.0, y[i] * 3.0, z[i] * 3.0) * 0.18 * r
            di = d[i] + pert
            oe = _soft(di - L["edema"]) * (lab[i] != BONE)
            cur = hu[i]
            hu[i] = cur - oe * np.clip(cur - spec.hu["csf"], 0, None) * spec.rng.uniform(0.25, 0.45)
            oo = _soft(di)
            v = L["hu"] + 8.0 * np.clip(-di / max(r, 1.0), 0, 1)
            hu[i] = hu[i] + oo * (v - hu[i])
            o[i] = oo
        else:
            i = np.flatnonzero(vf > 0)
            if L["pattern"] == "cast":
                oo = vf[i]
            else:
                oo = vf[i] * np.clip((y[i] - L["level"]) / 1.0, 0, 1)
                if not np.any(oo > 0.5):
                    oo = vf[i] * np.clip((y[i] - 10.0) / 1.0, 0, 1)
            cur = hu[i]
            hu[i] = cur + oo * (L["hu"] - cur)
            o[i] = oo
        les[:] = np.maximum(les, o)
    lab[les >= 0.5] = LESION


# ----------------------------------------------------------------------------- acquisition

SCANNERS = (
    ("GE MEDICAL SYSTEMS", "LightSpeed VCT", ("SOFT", "STANDARD", "BONEPLUS")),
    ("GE MEDICAL SYSTEMS", "Revolution CT", ("SOFT", "STND", "BONE")),
    ("SIEMENS", "SOMATOM Definition Edge", ("H21s", "H31s", "H60s")),
    ("SIEMENS", "SOMATOM go.Top", ("Hr32", "Hr38", "Hr64")),
    ("Philips", "iCT 256", ("UA", "UB", "YC")),
    ("Philips", "Ingenuity CT", ("UA", "UC", "YB")),
    ("TOSHIBA", "Aquilion ONE", ("FC21", "FC26", "FC30")),
    ("CANON_MEC", "Aquilion Prime SP", ("FC20", "FC23", "FC31")),
)
STUDY_DESCRIPTIONS = (
    "CT HEAD WO CONTRAST",
    "CT HEAD W/O CONTRAST",
    "CT BRAIN WITHOUT CONTRAST",
    "HEAD ROUTINE",
    "CT HEAD NON CONTRAST",
    "CT CRANIAL",
    "NCCT HEAD",
    "CT HEAD STROKE",
    "CT HEAD TRAUMA",
)
# (intercept, signed, bits stored, slope): encodings sites send
ENCODINGS = (
    (-1024.0, False, 12, 1.0),
    (-1024.0, False, 16, 1.0),
    (-1024.0, True, 16, 1.0),
    (0.0, True, 16, 1.0),
    (-1000.0, True, 16, 1.0),
    (-1024.0, False, 16, 0.5),
)
KERNEL_FC = {0: 0.28, 1: 0.40, 2: 0.75}  # noise apodisation cut-off, cycles/mm
KERNEL_NOISE = {0: 0.85, 1: 1.0, 2: 2.4}  # noise relative to a standard kernel


def _rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cr, 0, sr], [0, 1, 0], [-sr, 0, cr]])
    return rz @ rx @ ry


def _kernel_w(src: np.ndarray, dst: np.ndarray, step: float, kind: int) -> np.ndarray:
    """Resampling matrix [dst, src] with the reconstruction kernel's point spread: cubic
    B-spline (soft), Keys cubic (standard), Keys with overshoot (sharp), linear (masks)."""
    s = np.abs((dst[:, None] - src[None, :]) / step)
    if kind == 0:
        w = np.where(s < 1, 2 / 3 - s**2 + s**3 / 2, np.where(s < 2, (2 - s) ** 3 / 6, 0.0))
    elif kind in (1, 2):
        a = -0.5 if kind == 1 else -1.0
        w = np.where(
            s < 1,
            (a + 2) * s**3 - (a + 3) * s**2 + 1,
            np.where(s < 2, a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a, 0.0),
        )
    else:
        w = np.clip(1 - s, 0, None)
    inside = (dst >= src[0]) & (dst <= src[-1])
    tot = w.sum(1, keepdims=True)
    w = np.where(inside[:, None] & (tot > 0), w / np.where(tot > 0, tot, 1), 0.0)
    return w.astype(F32)


def _profile_w(
    centres: np.ndarray, thick: float, z_hi: float, dz: float, n_planes: int
) -> np.ndarray:
    """Slice sensitivity profile matrix [slice, plane]: a rectangle of the nominal thickness
    with rounded edges, sampled finely and spread linearly over the fine planes."""
    sig = 0.1 * thick + 0.15
    half = thick / 2 + 3 * sig
    m = max(8, math.ceil(2 * half / 0.2))
    s = np.linspace(-half, half, m)
    w = _sig((thick / 2 - s) / sig) * _sig((thick / 2 + s) / sig)
    w = w / w.sum()
    out = np.zeros((len(centres), n_planes), F32)
    for k, zc in enumerate(centres):
        f = (z_hi - (zc + s)) / dz
        i0 = np.clip(np.floor(f).astype(int), 0, n_planes - 2)
        t = np.clip(f - i0, 0, 1)
        np.add.at(out[k], i0, w * (1 - t))
        np.add.at(out[k], i0 + 1, w * t)
    return out


def _noise_textures(
    rng: np.random.Generator, n: int, ps: float, fc: float, count: int
) -> np.ndarray:
    """Unit-variance noise images with a CT noise power spectrum (ramp x apodisation)."""
    f = np.fft.fftfreq(n, ps)
    fr = np.fft.rfftfreq(n, ps)
    rad = np.sqrt(f[:, None] ** 2 + fr[None, :] ** 2)
    amp = np.sqrt(rad * np.exp(-((rad / fc) ** 2)))
    out = np.empty((count, n, n), F32)
    for i in range(count):
        w = rng.standard_normal((n, n)).astype(F32)
        t = np.fft.irfft2(np.fft.rfft2(w) * amp, s=(n, n))
        out[i] = t / t.std()
    return out


@dataclass
class _Geometry:
    rot: np.ndarray
    shift: np.ndarray  # head origin in the scanner frame (mm)
    ps: float
    z_top: float
    z_bottom: float
    half: float  # half extent of the fine in-plane box


def _geometry(rng: np.random.Generator, spec: _Spec) -> _Geometry:
    u = rng.uniform
    rot = _rot(math.radians(u(-12, 12)), math.radians(u(-8, 18)), math.radians(u(-6, 6)))
    sx, sy, sz = spec.scale
    # points on the head's outline (vault, face, back of the neck) in the head frame
    g = np.random.default_rng(0).standard_normal((3, 2500))
    g /= np.linalg.norm(g, axis=0)
    pad = spec.skull_t + spec.scalp_t + 2.0
    vault = g * np.array([[67 + pad], [84 + pad], [63 + pad]]) + np.array([[0], [4], [6]])
    face = g * np.array([[62], [56], [44]]) + np.array([[0], [-40], [-52]])
    ears = g * np.array([[80], [20], [25]]) + np.array([[0], [12], [-38]])
    cloud = np.concatenate([vault, face, ears], 1) * np.array([[sx], [sy], [sz]])
    for _ in range(20):
        shift = np.array([u(-15, 15), u(-15, 15), u(-40, 120)])
        pts = rot @ cloud + shift[:, None]
        ext = float(max(np.abs(pts[0]).max(), np.abs(pts[1]).max())) + 6.0
        if ext < 126.0:
            break
    else:
        shift[:2] = 0.0
        pts = rot @ cloud + shift[:, None]
        ext = float(max(np.abs(pts[0]).max(), np.abs(pts[1]).max())) + 6.0
    fit = [p for p in (0.39, 0.43, 0.45, 0.46875, 0.488, 0.5) if p * MATRIX / 2 >= ext]
    ps = float(fit[0] if u() < 0.5 or len(fit) == 1 else rng.choice(fit[: min(3, len(fit))]))
    top_h = rot @ (vault * np.array([[sx], [sy], [sz]])) + shift[:, None]
    z_top = float(top_h[2].max()) + u(-1.0, 4.0)
    fm = rot @ (np.array([0.0, 20.0, -64.0]) * np.array([sx, sy, sz])) + shift
    z_bottom = float(fm[2]) - u(0.0, 6.0)
    half = float(np.ceil(max(np.abs(pts[0] - shift[0]).max(), np.abs(pts[1] - shift[1]).max()) + 4))
    return _Geometry(rot, shift, ps, z_top, z_bottom, half)


def _fields(rng: np.random.Generator) -> dict:
    return {
        "sulci": _Field(rng, rng.uniform(15.0, 21.0)),
        "sulci2": _Field(rng, 24.0),
        "low": _Field(rng, 40.0),
        "low2": _Field(rng, 30.0),
        "mastoid": rng.uniform(0.3, 1.0),
    }


def _acquisition(rng: np.random.Generator, geo: _Geometry, thick: float, spacing: float) -> tuple:
    u = rng.uniform
    man, model, kernels = SCANNERS[int(rng.integers(len(SCANNERS)))]
    kclass = int(rng.choice([0, 1, 2], p=[0.3, 0.58, 0.12]))
    inter, signed, bits, slope = ENCODINGS[
        int(rng.choice(len(ENCODINGS), p=[0.36, 0.14, 0.12, 0.18, 0.12, 0.08]))
    ]
    acq = Acquisition(
        manufacturer=man,
        model=model,
        kernel=kernels[kclass],
        kvp=float(rng.choice([100.0, 120.0, 120.0, 120.0, 140.0])),
        slice_thickness=thick,
        spacing_z=spacing,
        pixel_spacing=geo.ps,
        z_top=0.0,
        rescale_intercept=inter,
        rescale_slope=slope,
        signed=signed,
        bits_stored=bits,
        implicit_vr=bool(u() < 0.25),
        series_number=int(rng.choice([2, 3, 4, 201, 601])),
        feet_first=bool(u() < 0.1),
    )
    return acq, kclass


def _encoding_range(acq: Acquisition) -> tuple[float, float]:
    if acq.signed:
        lo, hi = -(2 ** (acq.bits_stored - 1)), 2 ** (acq.bits_stored - 1) - 1
    else:
        lo, hi = 0, 2**acq.bits_stored - 1
    return (
        lo * acq.rescale_slope + acq.rescale_intercept,
        hi * acq.rescale_slope + acq.rescale_intercept,
    )


def _thickness(rng: np.random.Generator) -> tuple[float, float]:
    t = float(rng.choice([5.0, 2.5, 1.25, 0.625, 3.0], p=[0.5, 0.15, 0.14, 0.15, 0.06]))
    spacing = t
    if t < 2 and rng.uniform() < 0.2:
        spacing = t * 0.8  # overlapping reconstruction
    return t, spacing


@dataclass
class _Result:
    painted: Painted
    masks: dict[str, np.ndarray]
    spec: _Spec


def paint(task_seed: int, label: bool) -> Painted:
    """Paint one non-contrast head CT (a positive when ``label``), deterministic from the seed."""
    return _paint(task_seed, label).painted


def _paint(
    seed: int,
    label: bool,
    *,
    keep: tuple[str, ...] = (),
    thickness: float | None = None,
    fine: float = GRID,
) -> _Result:
    """The painter behind :func:`paint`. Test hooks: ``keep`` names structures (see
    ``LABELS``) whose pure voxels are returned as masks; ``thickness`` forces the slice
    thickness; ``fine`` coarsens the anatomy grid (mm) for quicker studies."""
    rng = np.random.default_rng([seed, 0x4EAD, int(label)])
    spec = _sample_spec(rng, label)
    fields = _fields(rng)
    geo = _geometry(rng, spec)
    thick, spacing = _thickness(rng)
    if thickness is not None:
        thick = spacing = float(thickness)
    acq, kclass = _acquisition(rng, geo, thick, spacing)
    notes: list[str] = []

    # slice centres from the top of the head down past the foramen magnum
    n_sl = math.floor((geo.z_top - geo.z_bottom) / spacing) + 1
    centres = geo.z_top - spacing * np.arange(n_sl)
    dz = fine  # fine planes; a thin slice spreads over two (its profile is about 1 mm)
    z_hi = geo.z_top + thick
    n_pl = math.ceil((z_hi - (centres[-1] - thick)) / dz) + 1
    planes = z_hi - dz * np.arange(n_pl)
    gx = geo.shift[0] + np.arange(-geo.half, geo.half + 0.5 * fine, fine)
    gy = geo.shift[1] + np.arange(-geo.half, geo.half + 0.5 * fine, fine)
    ny, nx = len(gy), len(gx)

    vol = np.zeros((n_pl, ny, nx), F32)  # HU + 1000 (air is 0)
    lesf = np.zeros((n_pl, ny, nx), F32) if label else None
    petf = np.zeros((n_pl, ny, nx), F32)
    labv = np.zeros((n_pl, ny, nx), np.int8) if keep else None
    rt = geo.rot.T
    sc = np.array(spec.scale)
    yy, xx = np.meshgrid(gy - geo.shift[1], gx - geo.shift[0], indexing="ij")
    kvp_f = {100.0: 1.1, 120.0: 1.0, 140.0: 0.93}[acq.kvp]
    chunk = 12
    for j0 in range(0, n_pl, chunk):
        zs = planes[j0 : j0 + chunk] - geo.shift[2]
        m = len(zs)
        px = np.broadcast_to(xx, (m, ny, nx)).ravel()
        py = np.broadcast_to(yy, (m, ny, nx)).ravel()
        pz = np.repeat(zs.astype(F32), ny * nx)
        hx = ((rt[0, 0] * px + rt[0, 1] * py + rt[0, 2] * pz) / sc[0]).astype(F32)
        hy = ((rt[1, 0] * px + rt[1, 1] * py + rt[1, 2] * pz) / sc[1]).astype(F32)
        hz = ((rt[2, 0] * px + rt[2, 1] * py + rt[2, 2] * pz) / sc[2]).astype(F32)
        near = np.flatnonzero(_ell(hx, hy, hz, (0.0, -4.0, -14.0), (96.0, 112.0, 104.0)) < 0)
        if near.size == 0:
            continue
        hu, les, pet, lab = _paint_points(spec, fields, hx[near], hy[near], hz[near])
        hu = np.where(hu > 100, 100 + (hu - 100) * kvp_f, hu)
        blk = np.zeros(m * ny * nx, F32)
        blk[near] = hu + 1000.0
        vol[j0 : j0 + m] = blk.reshape(m, ny, nx)
        blk[:] = 0
        blk[near] = pet
        petf[j0 : j0 + m] = blk.reshape(m, ny, nx)
        if lesf is not None:
            blk[:] = 0
            blk[near] = les
            lesf[j0 : j0 + m] = blk.reshape(m, ny, nx)
        if labv is not None:
            lb = np.zeros(m * ny * nx, np.int8)
            lb[near] = lab
            labv[j0 : j0 + m] = lb.reshape(m, ny, nx)

    wz = _profile_w(centres, thick, z_hi, dz, n_pl)
    pix = (np.arange(MATRIX) - (MATRIX - 1) / 2) * geo.ps
    wy, wx = _kernel_w(gy, pix, fine, kclass), _kernel_w(gx, pix, fine, kclass)
    wyl, wxl = _kernel_w(gy, pix, fine, 3), _kernel_w(gx, pix, fine, 3)
    flat = vol.reshape(n_pl, -1)
    thin = (wz @ flat).reshape(n_sl, ny, nx)  # 1 mm slices, partial volume across thickness
    del vol, flat
    pet_sl = (wz @ petf.reshape(n_pl, -1)).reshape(n_sl, ny, nx)
    del petf

    out = np.empty((n_sl, MATRIX, MATRIX), F32)
    for k0 in range(0, n_sl, 16):
        out[k0 : k0 + 16] = np.matmul(np.matmul(wy, thin[k0 : k0 + 16]), wx.T) - 1000.0
    lesion = np.zeros(out.shape, bool)
    if lesf is not None:
        ls = (wz @ lesf.reshape(n_pl, -1)).reshape(n_sl, ny, nx)
        del lesf
        for k in np.flatnonzero(ls.reshape(n_sl, -1).max(1) >= 0.3):
            lesion[k] = (wyl @ ls[k] @ wxl.T) >= 0.5
    masks: dict[str, np.ndarray] = {}
    if labv is not None:
        for name in keep:
            f = (wz @ (labv == LABELS[name]).reshape(n_pl, -1).astype(F32)).reshape(n_sl, ny, nx)
            masks[name] = np.matmul(np.matmul(wyl, f), wxl.T) >= 0.97
        del labv

    # ---- physics in the image: beam hardening, holder, noise, motion, offset, FOV
    yv = pix[:, None]
    xv = pix[None, :]
    # photon starvation: noise grows with the water-equivalent path through the slice (bone
    # counts more), e^(mu L / 2) with mu 0.019/mm; vertex slices are quieter, the skull base
    # and posterior fossa noisier
    a_w = np.clip(thin, 0, None).sum((1, 2)) / 1000.0 * fine * fine
    path = 2.0 * np.sqrt(a_w / np.pi)
    noise_gain = np.clip(np.exp(0.0095 * (path - 175.0)), 0.6, 1.9)
    axis_x = geo.rot[:, 0]
    side = np.sign(
        (gx[None, :] - geo.shift[0]) * axis_x[0] + (gy[:, None] - geo.shift[1]) * axis_x[1]
    )
    bar_a = rng.uniform(8.0, 26.0)
    bar_w = rng.uniform(3.0, 7.0)
    streak_k = 0
    for k in range(n_sl):
        p = pet_sl[k]
        cents = []
        for sgn in (-1, 1):
            w = p * (side == sgn)
            a = float(w.sum())
            if a < 15.0:
                break
            cents.append(
                (float((w * gy[:, None]).sum() / a), float((w * gx[None, :]).sum() / a), a)
            )
        if len(cents) < 2:
            continue
        (y1, x1, a1), (y2, x2, a2) = cents
        dxl, dyl = x2 - x1, y2 - y1
        ll = math.hypot(dxl, dyl) + 1e-6
        t = ((xv - x1) * dxl + (yv - y1) * dyl) / ll**2
        dperp = np.abs((xv - x1) * dyl - (yv - y1) * dxl) / ll
        amp = bar_a * min(1.0, min(a1, a2) / 120.0)
        band = np.exp(-((dperp / bar_w) ** 2)) * np.clip(np.minimum(t, 1 - t) * 6, 0, 1)
        out[k] -= (amp * band).astype(F32)
        for _ in range(3):  # thin streaks fanning out of the dense bone
            ang = rng.uniform(0, np.pi)
            ca, sa_ = math.cos(ang), math.sin(ang)
            ys, xs = (y1, x1) if rng.uniform() < 0.5 else (y2, x2)
            dl = np.abs((xv - xs) * sa_ - (yv - ys) * ca)
            r = np.hypot(xv - xs, yv - ys)
            out[k] += (
                rng.choice([-1, 1])
                * rng.uniform(5, 14)
                * np.exp(-((dl / 0.9) ** 2))
                * np.exp(-r / 45.0)
            ).astype(F32)
        streak_k += 1
    if streak_k:
        notes.append("petrous_streaks")

    if rng.uniform() < 0.8:
        notes.append("head_holder")
        ang = np.arctan2(xv - geo.shift[0], yv - geo.shift[1])  # 0 = posterior
        r = np.hypot(xv - geo.shift[0], yv - geo.shift[1])
        back = 90.0 * spec.scale[1] + spec.skull_t + spec.scalp_t + rng.uniform(0.0, 6.0)
        span = math.radians(rng.uniform(55, 80))
        arc = np.abs(ang) < span
        shell_t = rng.uniform(2.5, 5.0)
        shell = np.clip(1 - np.abs(r - back - shell_t / 2) / (shell_t / 2 + geo.ps), 0, 1) * arc
        pad = (r > back - 25.0) & (r < back) & arc
        hold_v = rng.uniform(120.0, 450.0)
        foam_v = rng.uniform(-930.0, -780.0)
        for k0 in range(0, n_sl, 32):
            blk = out[k0 : k0 + 32]
            airy = blk < -900
            blk[:] = np.where(pad & airy, foam_v, blk)
            blk += (shell * (hold_v - blk) * (blk < -500)).astype(F32)

    sd5 = rng.uniform(2.6, 5.0) * KERNEL_NOISE[kclass]
    sd = sd5 * math.sqrt(5.0 / thick)
    tex = _noise_textures(rng, MATRIX, geo.ps, KERNEL_FC[kclass], 6)
    rc = np.hypot(xv - geo.shift[0], yv - geo.shift[1])
    centre_gain = (1.0 + 0.15 * np.exp(-((rc / 70.0) ** 2))).astype(F32)
    for k in range(n_sl):
        i, j = rng.integers(6, size=2)
        c = rng.uniform(0, 1)
        n1 = np.roll(tex[i], tuple(rng.integers(MATRIX, size=2)), (0, 1))
        n2 = np.roll(tex[j], tuple(rng.integers(MATRIX, size=2)), (0, 1))[::-1]
        f = noise_gain[k]
        out[k] += (sd * f) * centre_gain * (math.sqrt(c) * n1 + math.sqrt(1 - c) * n2)
    if rng.uniform() < 0.08 and n_sl > 6:
        notes.append("motion")
        k0 = int(rng.integers(0, n_sl - 3))
        run = int(rng.integers(2, min(8, n_sl - k0) + 1))
        for k in range(k0, k0 + run):
            sh = tuple(int(v) for v in rng.integers(-8, 9, size=2))
            w = rng.uniform(0.2, 0.45)
            out[k] = (1 - w) * out[k] + w * np.roll(out[k], sh, (0, 1))
    offset = rng.uniform(-5.0, 5.0)
    out += offset
    outside = float(rng.choice([-1024.0, -1024.0, -2000.0, -3024.0]))
    fov = (xv**2 + yv**2) > (MATRIX / 2 * geo.ps) ** 2
    out[:, fov] = outside
    lo, hi = _encoding_range(acq)
    np.clip(out, lo, hi, out=out)
    lesion[:, fov] = False

    if spec.flags["dense_mca"]:
        notes.append("dense_mca")
    for key in (
        "pineal",
        "choroid",
        "falx_calc",
        "bg_calc",
        "siphon_calc",
        "wmd",
        "lacunes",
        "mega_cisterna",
    ):
        if spec.flags[key]:
            notes.append(
                {
                    "pineal": "calcified_pineal",
                    "choroid": "calcified_choroid_plexus",
                    "falx_calc": "calcified_falx",
                    "bg_calc": "basal_ganglia_calcification",
                    "siphon_calc": "carotid_calcification",
                    "wmd": "white_matter_hypodensity",
                    "lacunes": "lacunes",
                    "mega_cisterna": "mega_cisterna_magna",
                }[key]
            )
    if spec.hu["blood"] > 58:
        notes.append("dense_sinuses")
    if spec.atrophy > 0.6:
        notes.append("atrophy")
    kinds: list[str] = []
    for L in spec.lesions:
        if L["kind"] not in kinds:
            kinds.append(L["kind"])
        if L.get("subacute"):
            notes.append("subacute")
        if L.get("fracture"):
            notes.append("fracture")
        if L.get("swirl"):
            notes.append("swirl")
    if spec.warp and spec.warp.get("shift", 0) > 2:
        notes.append(f"midline_shift_{spec.warp['shift']:.0f}mm")
    notes.append(f"thickness_{thick:g}mm")
    notes.append(f"kernel_{('soft', 'standard', 'sharp')[kclass]}")
    if abs(offset) > 3:
        notes.append("calibration_offset")

    table = rng.uniform(-80.0, 160.0)
    acq = Acquisition(**{**acq.__dict__, "z_top": float(round(geo.z_top + table, 3))})
    header = _header(
        np.random.default_rng([seed, 0x4EAE, int(label)]), seed, label, spec, thick, acq
    )
    painted = Painted(
        hu=out, lesion=lesion, acq=acq, header=header, kinds=tuple(kinds), notes=tuple(notes)
    )
    return _Result(painted, masks, spec)


def _header(
    rng: np.random.Generator, seed: int, label: bool, spec: _Spec, thick: float, acq: Acquisition
) -> StudyHeader:
    body = str(rng.choice(["HEAD", "HEAD", "HEAD", "HEAD", "BRAIN", "SKULL", ""]))
    desc = str(rng.choice(STUDY_DESCRIPTIONS))
    series = str(
        rng.choice(
            [
                f"AXIAL {thick:g}MM",
                f"Head {thick:g} {acq.kernel}",
                f"BRAIN {thick:g}mm",
                f"Ax {thick:g} Std",
            ]
        )
    )
    day = 1 + int(rng.integers(0, 28))
    tag = f"{seed:07d}{int(label)}"
    return StudyHeader(
        patient_id=f"HB{tag}",
        patient_name=f"CROSSCHECK^HEADB{tag}",
        patient_sex=spec.sex,
        patient_age=f"{spec.age:03d}Y",
        accession=f"HB{tag}",
        study_description=desc,
        series_description=series,
        protocol_name=str(rng.choice(["HEAD ROUTINE", "BRAIN", "Head Seq", "TRAUMA HEAD"])),
        body_part=body,
        contrast_agent=None,
        study_date=f"2026{int(rng.integers(1, 13)):02d}{day:02d}",
        study_time=f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}00",
        station=str(rng.choice(["CT01", "CTED", "CT-2", "ERCT"])),
    )


def write_study(folder: Path, seed: int, label: bool) -> CrossStudy:
    """Paint a study and write it as DICOM under ``folder`` (a localizer first in some)."""
    p = paint(seed, label)
    scout = bool(np.random.default_rng([seed, 0x10C, int(label)]).uniform() < 0.35)
    return write_painted(folder, "ich", seed, label, p, window=(40.0, 80.0), localizer=scout)
