"""Perturbations of a CT volume for the frozen stress suite (:mod:`triage.training.stress`).

Plain, deterministic numpy functions, each with a name and one fixed strength, applied to a
:class:`Scan`: the **acquired slices** (their own z positions and thickness) at the **model's
in-plane resolution** (the engine's 512 -> model-grid area average already done), in HU. The
engine's :func:`~triage.inference.volume.resample` then takes the perturbed scan to the model
grid exactly as it takes a real series, so slice-wise operations (slice profile, thicker and
thinner slices) act on real slices, and in-plane operations act at the resolution the model
sees (``1 px`` below = one model-grid pixel: ~1.8 mm for a head, ~1.4 mm for a chest; the
in-plane operations are linear and commute with the area average up to edge effects).

None of them reads the generator's internals: the anatomical insertions find their place from
the image itself (skull, body outline, dense bone), so they are an independent look at what
the models rely on. Noise is added from a generator seeded by the study seed and the
perturbation's name, so a suite run is reproducible bit for bit.

The perturbations (``PERTURBATIONS``; the suite's names):

=====================  =========================================================================
``offset+10``           every voxel +10 HU (a scanner's water/air calibration off by 10 HU)
``offset-10``           every voxel -10 HU
``soft+6``              voxels in 0-80 HU (brain, blood, muscle, clot) +6 HU, the rest unchanged
``soft+10``             the same, +10 HU
``contrast x0.9``       every voxel above 0 HU multiplied by 0.9 (iodine, bone, blood and brain
                        scale about water as with another tube voltage); 0 HU and below (fat,
                        lung, air) unchanged, so the mapping is continuous
``contrast x1.1``       the same, x1.1
``noise x2``            white noise added so the voxel noise measured in the scan (neighbour
                        differences in -150..150 HU) doubles (sigma x sqrt(3) added)
``noise texture``       correlated noise (white noise smoothed in plane, Gaussian sigma 1.5 px,
                        rescaled to the measured voxel noise): the blotchy texture of a
                        low-dose or iteratively reconstructed series; total noise x ~1.4
``kernel blur``         in-plane Gaussian blur, sigma 1 px (a softer reconstruction kernel)
``kernel sharp``        unsharp mask, sigma 1 px, amount 0.7 (a sharper kernel: edge overshoot
                        at bone, more noise)
``slice profile``       along z, each slice = 1/4 previous + 1/2 itself + 1/4 next (a wider
                        slice sensitivity profile)
``thick slices``        re-sliced to twice the thickness: each pair of slices averaged into one
                        at their mean position
``thin slices``         re-sliced to half the spacing and thickness: a slice linearly
                        interpolated between each pair, and every slice's noise raised to
                        sqrt(2) x the measured noise (a slice half as thick collects half the
                        photons)
``rotate 10``           in-plane rotation by 10 degrees about the image centre (bilinear;
                        outside the field: air, -1000 HU; white noise added back up to the
                        measured noise, which bilinear interpolation lowers - as for the two
                        below)
``translate``           in-plane shift by 12 mm right and 8 mm anterior (bilinear)
``fov 0.85``            reconstruction field of view 0.85 x the original (the anatomy 1/0.85
                        larger on the same matrix, the edge of the body may leave the field)
``fov 1.15``            field of view 1.15 x (the anatomy smaller, more air around it)
``sinus 62`` (ich)      a superior sagittal sinus: a 4 mm radius channel at 62 HU (+ the
                        measured noise) on the midline, 4 mm inside the inner table front and
                        back, in the upper 45 % of the slices with brain (toward the vertex);
                        dense dural sinus blood is a classic mimic of subdural / subarachnoid
                        blood. Applied to every study; it matters for the negatives.
``spine 60`` (pe)       the vertebral body at 60 HU instead of ~400-900: on the posterior
                        midline, the disk bounded by the dense cortex (> 600 HU) and every
                        voxel > 150 HU in it replaced by 60 HU + the measured noise
=====================  =========================================================================

Combinations (``COMBINATIONS``) chain singles in the order given: ``offset+10 & noise x2 &
kernel blur``, ``offset-10 & noise x2 & kernel sharp``, ``rotate 10 & fov 1.15 & translate``.

Synthetic phantoms; not for clinical use.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

AIR = -1000.0
HU_MIN, HU_MAX = -1024.0, 3071.0


@dataclass(frozen=True)
class Scan:
    """One series: ``hu`` float32 [z, y, x] (inferior -> superior), slice positions ``z`` (mm,
    ascending), in-plane ``pixel_mm`` and the slice ``thickness`` (mm)."""

    hu: np.ndarray
    z: np.ndarray
    pixel_mm: float
    thickness: float

    def __post_init__(self) -> None:
        if self.hu.ndim != 3 or self.hu.shape[0] != len(self.z):
            raise ValueError("hu must be [z, y, x] with one position per slice")


Fn = Callable[[Scan, np.random.Generator], Scan]


@dataclass(frozen=True)
class Perturbation:
    name: str
    description: str
    fn: Fn
    tasks: tuple[str, ...] = ("ich", "pe")

    def apply(self, scan: Scan, seed: int) -> Scan:
        """The perturbed scan (rounded to whole HU and clipped to the stored range, as a
        series written to DICOM would be); deterministic in ``seed`` and the name."""
        rng = np.random.default_rng([int(seed), zlib.crc32(self.name.encode())])
        out = self.fn(scan, rng)
        hu = np.clip(np.rint(out.hu), HU_MIN, HU_MAX).astype(np.float32)
        return replace(out, hu=hu)


# -- helpers --------------------------------------------------------------------------------------


def noise_sigma(hu: np.ndarray) -> float:
    """Voxel noise (HU) measured in the scan, from differences of horizontally adjacent voxels
    that are both soft tissue or fluid (-150..150 HU): their RMS over sqrt(2), leaving out the
    differences beyond 4 robust standard deviations (1.4826 x MAD; edges between tissues).
    Works on whole-HU (rounded) data, where the MAD alone moves in steps."""
    a, b = hu[:, :, :-1], hu[:, :, 1:]
    sel = (a > -150) & (a < 150) & (b > -150) & (b < 150)
    d = (a - b)[sel].astype(np.float64)
    if d.size < 100:
        return 0.0
    if d.size > 400_000:
        d = d[:: d.size // 400_000]
    d -= np.median(d)
    mad = 1.4826 * float(np.median(np.abs(d)))
    keep = d[np.abs(d) <= max(4.0 * mad, 3.0)]
    return float(np.sqrt(np.mean(keep**2)) / math.sqrt(2.0))


def gaussian_kernel(sigma: float) -> np.ndarray:
    r = max(1, math.ceil(3.0 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def convolve_axis(a: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """``a`` convolved with the odd, symmetric ``kernel`` along ``axis`` (edges replicated)."""
    r = len(kernel) // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    p = np.pad(a.astype(np.float32, copy=False), pad, mode="edge")
    out = np.zeros(a.shape, np.float32)
    n = a.shape[axis]
    for i, w in enumerate(kernel):
        out += np.float32(w) * np.take(p, np.arange(i, i + n), axis=axis)
    return out


def blur_inplane(hu: np.ndarray, sigma_px: float) -> np.ndarray:
    k = gaussian_kernel(sigma_px)
    return convolve_axis(convolve_axis(hu, k, 1), k, 2)


def warp_inplane(hu: np.ndarray, src_y: np.ndarray, src_x: np.ndarray) -> np.ndarray:
    """Every slice sampled bilinearly at the source coordinates [y, x] (pixel units) of each
    output pixel; outside the image: air."""
    ny, nx = hu.shape[1:]
    y0 = np.floor(src_y).astype(np.int64)
    x0 = np.floor(src_x).astype(np.int64)
    fy = (src_y - y0).astype(np.float32)
    fx = (src_x - x0).astype(np.float32)
    out = np.zeros(hu.shape, np.float32)
    for dy, dx, w in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yy, xx = y0 + dy, x0 + dx
        inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
        vals = hu[:, np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)]
        vals = np.where(inside[None], vals, np.float32(AIR))
        out += w[None] * vals
    return out


def _keep_noise(before: float, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bilinear resampling smooths the noise; add white noise back up to the ``before`` level
    so a geometric perturbation does not also act as a denoiser."""
    after = noise_sigma(hu)
    if before <= after:
        return hu
    add = math.sqrt(before**2 - after**2)
    return hu + rng.standard_normal(hu.shape, np.float32) * np.float32(add)


def _centre_grid(ny: int, nx: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    return yy, xx, (ny - 1) / 2.0, (nx - 1) / 2.0


# -- the single perturbations ---------------------------------------------------------------------


def offset(delta: float) -> Fn:
    def fn(s: Scan, rng: np.random.Generator) -> Scan:
        return replace(s, hu=s.hu + np.float32(delta))

    return fn


def soft_tissue(delta: float, lo: float = 0.0, hi: float = 80.0) -> Fn:
    def fn(s: Scan, rng: np.random.Generator) -> Scan:
        sel = (s.hu >= lo) & (s.hu <= hi)
        return replace(s, hu=np.where(sel, s.hu + np.float32(delta), s.hu))

    return fn


def contrast(k: float) -> Fn:
    def fn(s: Scan, rng: np.random.Generator) -> Scan:
        return replace(s, hu=np.where(s.hu > 0, s.hu * np.float32(k), s.hu))

    return fn


def noise_times(factor: float) -> Fn:
    def fn(s: Scan, rng: np.random.Generator) -> Scan:
        add = noise_sigma(s.hu) * math.sqrt(factor**2 - 1.0)
        return replace(s, hu=s.hu + rng.standard_normal(s.hu.shape, np.float32) * np.float32(add))

    return fn


def noise_texture(sigma_px: float = 1.5) -> Fn:
    def fn(s: Scan, rng: np.random.Generator) -> Scan:
        n = blur_inplane(rng.standard_normal(s.hu.shape, np.float32), sigma_px)
        scale = noise_sigma(s.hu) / max(float(n.std()), 1e-6)
        return replace(s, hu=s.hu + n * np.float32(scale))

    return fn


def kernel_blur(sigma_px: float = 1.0) -> Fn:
    def fn(s: Scan, rng: np.random.Generator) -> Scan:
        return replace(s, hu=blur_inplane(s.hu, sigma_px))

    return fn


def kernel_sharp(sigma_px: float = 1.0, amount: float = 0.7) -> Fn:
    def fn(s: Scan, rng: np.random.Generator) -> Scan:
        smooth = blur_inplane(s.hu, sigma_px)
        return replace(s, hu=s.hu + np.float32(amount) * (s.hu - smooth))

    return fn


def slice_profile(s: Scan, rng: np.random.Generator) -> Scan:
    return replace(s, hu=convolve_axis(s.hu, np.array([0.25, 0.5, 0.25], np.float32), 0))


def thick_slices(s: Scan, rng: np.random.Generator) -> Scan:
    n = (s.hu.shape[0] // 2) * 2
    if n < 4:
        return s
    hu = 0.5 * (s.hu[0:n:2] + s.hu[1:n:2])
    z = 0.5 * (s.z[0:n:2] + s.z[1:n:2])
    return Scan(hu=hu.astype(np.float32), z=z, pixel_mm=s.pixel_mm, thickness=2.0 * s.thickness)


def thin_slices(s: Scan, rng: np.random.Generator) -> Scan:
    sigma = noise_sigma(s.hu)
    n = s.hu.shape[0]
    hu = np.empty((2 * n - 1, *s.hu.shape[1:]), np.float32)
    hu[0::2] = s.hu + rng.standard_normal(s.hu.shape, np.float32) * np.float32(sigma)
    mid = 0.5 * (s.hu[:-1] + s.hu[1:])  # noise sigma/sqrt(2) -> sqrt(2) sigma
    extra = sigma * math.sqrt(1.5)
    hu[1::2] = mid + rng.standard_normal(mid.shape, np.float32) * np.float32(extra)
    z = np.empty(2 * n - 1)
    z[0::2] = s.z
    z[1::2] = 0.5 * (s.z[:-1] + s.z[1:])
    return Scan(hu=hu, z=z, pixel_mm=s.pixel_mm, thickness=s.thickness / 2.0)


def rotate(degrees: float) -> Fn:
    def fn(s: Scan, rng: np.random.Generator) -> Scan:
        yy, xx, cy, cx = _centre_grid(*s.hu.shape[1:])
        a = math.radians(degrees)
        # output (y, x) shows the source point rotated back by -a about the centre
        sy = cy + (yy - cy) * math.cos(a) - (xx - cx) * math.sin(a)
        sx = cx + (yy - cy) * math.sin(a) + (xx - cx) * math.cos(a)
        return replace(s, hu=_keep_noise(noise_sigma(s.hu), warp_inplane(s.hu, sy, sx), rng))

    return fn


def translate(right_mm: float, anterior_mm: float) -> Fn:
    """Patient moved ``right_mm`` to the patient's right (image left, -x in LPS columns) and
    ``anterior_mm`` anterior (image up, -y)."""

    def fn(s: Scan, rng: np.random.Generator) -> Scan:
        yy, xx, _, _ = _centre_grid(*s.hu.shape[1:])
        dx, dy = -right_mm / s.pixel_mm, -anterior_mm / s.pixel_mm
        hu = warp_inplane(s.hu, yy - dy, xx - dx)
        return replace(s, hu=_keep_noise(noise_sigma(s.hu), hu, rng))

    return fn


def field_of_view(factor: float) -> Fn:
    def fn(s: Scan, rng: np.random.Generator) -> Scan:
        yy, xx, cy, cx = _centre_grid(*s.hu.shape[1:])
        hu = warp_inplane(s.hu, cy + (yy - cy) * factor, cx + (xx - cx) * factor)
        hu = _keep_noise(noise_sigma(s.hu), hu, rng)
        return Scan(hu=hu, z=s.z, pixel_mm=s.pixel_mm * factor, thickness=s.thickness)

    return fn


def _disk(ny: int, nx: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.ogrid[:ny, :nx]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


SINUS_HU = 62.0
SINUS_RADIUS_MM = 4.0
SINUS_DEPTH_MM = 4.0  # centre inside the inner table
SINUS_TOP_FRACTION = 0.45


def sinus_mask(s: Scan) -> np.ndarray:
    """Where :func:`superior_sagittal_sinus` paints: per slice in the upper part of the brain,
    disks on the midline just inside the inner table of the skull, front and back."""
    _, ny, nx = s.hu.shape
    mask = np.zeros(s.hu.shape, bool)
    brain = (s.hu > 0) & (s.hu < 80)
    brain_slices = np.flatnonzero(brain.sum(axis=(1, 2)) > 0.02 * ny * nx)
    if brain_slices.size == 0:
        return mask
    lo, hi = brain_slices[0], brain_slices[-1]
    first = hi - round(SINUS_TOP_FRACTION * (hi - lo))
    r = SINUS_RADIUS_MM / s.pixel_mm
    depth = SINUS_DEPTH_MM / s.pixel_mm
    for k in range(max(first, lo), hi + 1):
        body = s.hu[k] > -500
        if not body.any():
            continue
        cols = np.flatnonzero(body.any(axis=0))
        cx = round(0.5 * (cols[0] + cols[-1]))  # midline: centre of the head's extent
        column = s.hu[k, :, cx]
        bone = np.flatnonzero(column > 300)
        if bone.size < 2:
            continue
        inside = np.flatnonzero((column > 0) & (column < 80))
        inside = inside[(inside > bone[0]) & (inside < bone[-1])]
        if inside.size < 2 * depth + 2:
            continue
        front, back = inside[0], inside[-1]  # first / last brain pixel inside the inner table
        for cy in (front + depth - 0.5, back - depth + 0.5):
            mask[k] |= _disk(ny, nx, cy, cx, r)
    return mask & (s.hu > -50) & (s.hu < 100)  # soft tissue only, never bone or air


def _fill(s: Scan, m: np.ndarray, value_hu: float, rng: np.random.Generator) -> Scan:
    """``s`` with the voxels of mask ``m`` set to ``value_hu`` plus the scan's own noise
    (:func:`noise_sigma`); ``s`` itself when the mask is empty."""
    if not m.any():
        return s
    sigma = noise_sigma(s.hu)
    hu = s.hu.copy()
    hu[m] = value_hu + rng.standard_normal(int(m.sum()), np.float32) * np.float32(sigma)
    return replace(s, hu=hu)


def superior_sagittal_sinus(s: Scan, rng: np.random.Generator) -> Scan:
    return _fill(s, sinus_mask(s), SINUS_HU, rng)


SPINE_HU = 60.0
SPINE_CORTEX_HU = 600.0
SPINE_DENSE_HU = 150.0
SPINE_BAND_MM = 30.0


def spine_mask(s: Scan) -> np.ndarray:
    """The vertebral body per slice: dense cortex (> 600 HU) within 30 mm of the posterior
    midline, the disk it bounds (centre: the cortex pixels' centroid, radius: their 95th
    percentile distance from it) and every voxel > 150 HU in that disk."""
    nz, ny, nx = s.hu.shape
    mask = np.zeros(s.hu.shape, bool)
    band = SPINE_BAND_MM / s.pixel_mm
    xx = np.arange(nx)[None, :]
    yy = np.arange(ny)[:, None]
    for k in range(nz):
        sl = s.hu[k]
        body = sl > -500
        if body.sum() < 100:
            continue
        ys, xs = np.nonzero(body)
        cy, cx = ys.mean(), xs.mean()
        cortex = (sl > SPINE_CORTEX_HU) & (np.abs(xx - cx) <= band) & (yy > cy)
        if cortex.sum() < 6:
            continue
        py, px = np.nonzero(cortex)
        my, mx = py.mean(), px.mean()
        r = float(np.percentile(np.hypot(py - my, px - mx), 95)) + 0.5
        mask[k] = _disk(ny, nx, my, mx, r) & (sl > SPINE_DENSE_HU)
    return mask


def spine_soft(s: Scan, rng: np.random.Generator) -> Scan:
    return _fill(s, spine_mask(s), SPINE_HU, rng)


# -- the suite ------------------------------------------------------------------------------------


PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation("offset+10", "every voxel +10 HU", offset(10.0)),
    Perturbation("offset-10", "every voxel -10 HU", offset(-10.0)),
    Perturbation("soft+6", "0-80 HU voxels +6 HU", soft_tissue(6.0)),
    Perturbation("soft+10", "0-80 HU voxels +10 HU", soft_tissue(10.0)),
    Perturbation("contrast x0.9", "voxels > 0 HU x0.9", contrast(0.9)),
    Perturbation("contrast x1.1", "voxels > 0 HU x1.1", contrast(1.1)),
    Perturbation("noise x2", "voxel noise doubled (white)", noise_times(2.0)),
    Perturbation("noise texture", "correlated noise (sigma 1.5 px) at the measured level",
                 noise_texture()),
    Perturbation("kernel blur", "Gaussian sigma 1 px in plane", kernel_blur(1.0)),
    Perturbation("kernel sharp", "unsharp mask sigma 1 px, amount 0.7", kernel_sharp(1.0, 0.7)),
    Perturbation("slice profile", "z profile [1/4, 1/2, 1/4]", slice_profile),
    Perturbation("thick slices", "re-sliced at 2x thickness", thick_slices),
    Perturbation("thin slices", "re-sliced at 1/2 spacing, noise x sqrt(2)", thin_slices),
    Perturbation("rotate 10", "in-plane rotation 10 degrees", rotate(10.0)),
    Perturbation("translate", "12 mm right, 8 mm anterior", translate(12.0, 8.0)),
    Perturbation("fov 0.85", "field of view x0.85 (anatomy larger)", field_of_view(0.85)),
    Perturbation("fov 1.15", "field of view x1.15 (anatomy smaller)", field_of_view(1.15)),
    Perturbation(
        "sinus 62", "superior sagittal sinus at 62 HU", superior_sagittal_sinus, tasks=("ich",)
    ),
    Perturbation("spine 60", "vertebral body at 60 HU", spine_soft, tasks=("pe",)),
)  # fmt: skip

_BY_NAME = {p.name: p for p in PERTURBATIONS}


def chain(name: str, parts: Sequence[str]) -> Perturbation:
    """A combination: the singles ``parts`` applied in order (each with its own noise)."""
    singles = [_BY_NAME[p] for p in parts]

    def fn(s: Scan, rng: np.random.Generator) -> Scan:
        for p in singles:
            s = p.fn(s, rng)
        return s

    tasks = tuple(t for t in ("ich", "pe") if all(t in p.tasks for p in singles))
    return Perturbation(name, " then ".join(parts), fn, tasks)


COMBINATIONS: tuple[Perturbation, ...] = (
    chain("offset+10 & noise x2 & kernel blur", ("offset+10", "noise x2", "kernel blur")),
    chain("offset-10 & noise x2 & kernel sharp", ("offset-10", "noise x2", "kernel sharp")),
    chain("rotate 10 & fov 1.15 & translate", ("rotate 10", "fov 1.15", "translate")),
)


def suite(task: str) -> list[Perturbation]:
    """The singles then the combinations that apply to ``task``."""
    return [p for p in (*PERTURBATIONS, *COMBINATIONS) if task in p.tasks]


def by_name(name: str) -> Perturbation:
    for p in (*PERTURBATIONS, *COMBINATIONS):
        if p.name == name:
            return p
    raise KeyError(name)
