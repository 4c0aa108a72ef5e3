"""From painted anatomy to what the scanner reconstructs: slice profile, patient pose, kernel
and calibration offset (:func:`render`), and the noise model shared by the DICOM and
in-memory paths."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from triage.synth.ct.ctpa import render_chest
from triage.synth.ct.grid import AIR_HU, Grid, Lesion, block_mean
from triage.synth.ct.head import render_head
from triage.synth.ct.spec import SCANNERS, PhantomSpec


def profile_samples(thickness: float) -> int:
    """How many planes across its thickness one slice integrates (:func:`render`): one per
    ~1.25 mm, at most 4."""
    return int(min(4, max(1, round(thickness / 1.25))))


def render(spec: PhantomSpec, seed: int, g: Grid) -> tuple[np.ndarray, np.ndarray, list[Lesion]]:
    """Noise-free HU volume, lesion mask and lesions of ``spec`` on grid ``g``, as the scanner
    reconstructs them:

    - **slice profile**: each slice is the mean of :func:`profile_samples` planes spread evenly
      over its thickness (a box profile), so bone cut obliquely by a 5 mm slice (the vertex,
      the skull base) gives the partial-volume values a real scan has; a voxel is lesion when
      at least half of its planes are;
    - **pose**: the patient rotated and moved in plane (``rotation_deg``, ``shift_mm``);
    - **glare** (head, generator 4): the skull's scatter and beam-hardening residue on what it
      encloses (:func:`skull_glare`);
    - **kernel**: blur or sharpening (``kernel``), edge overshoot included;
    - **calibration**: the scanner's offset plus ``hu_offset`` on every voxel.
    """
    paint = render_head if spec.task == "ich" else render_chest
    n_sub = profile_samples(spec.slice_thickness)
    if n_sub == 1:
        vol, mask, lesions = paint(spec, seed, g)
    else:
        vol = np.zeros(g.shape, np.float32)
        count = np.zeros(g.shape, np.uint8)
        planes: list[list[Lesion]] = []
        for k in range(n_sub):
            dz = np.float32(((k + 0.5) / n_sub - 0.5) * g.thickness)
            v, m, les = paint(spec, seed, replace(g, z=g.z + dz))
            vol += v
            count += m
            planes.append(les)
        vol /= np.float32(n_sub)
        mask = 2 * count >= n_sub
        # each lesion's volume and centre: the mean over the planes (the slab's integral)
        lesions = [
            replace(
                per[0],
                volume_ml=float(np.mean([les.volume_ml for les in per])),
                centre_mm=tuple(float(c) for c in np.mean([les.centre_mm for les in per], 0)),
            )
            for per in zip(*planes, strict=True)
        ]
    vol, mask = _pose(vol, mask, g, spec.rotation_deg, spec.shift_mm)
    if spec.task == "ich" and spec.generator >= 4:
        skull_glare(vol, g, np.random.default_rng([seed, 5]))
    _apply_kernel(vol, spec.kernel)
    vol += np.float32(SCANNERS[spec.scanner][3] + spec.hu_offset)
    return vol, mask, lesions


def _pose(
    vol: np.ndarray,
    mask: np.ndarray,
    g: Grid,
    rotation_deg: float,
    shift_mm: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """``vol`` (bilinear) and ``mask`` (nearest) rotated by ``rotation_deg`` about the image
    centre and moved by ``shift_mm`` (x, y), slice by slice; air comes in at the edges."""
    if not rotation_deg and not any(shift_mm):
        return vol, mask
    n, h, w = vol.shape
    a = math.radians(rotation_deg)
    c, s = math.cos(a), math.sin(a)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx -= (w - 1) / 2 + shift_mm[0] / g.spacing
    yy -= (h - 1) / 2 + shift_mm[1] / g.spacing
    xs = c * xx + s * yy + (w - 1) / 2  # the source of each output pixel
    ys = -s * xx + c * yy + (h - 1) / 2
    x0, y0 = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    fx, fy = (xs - x0).astype(np.float32), (ys - y0).astype(np.float32)
    inside = (x0 >= 0) & (x0 < w - 1) & (y0 >= 0) & (y0 < h - 1)
    x0, y0 = np.clip(x0, 0, w - 2), np.clip(y0, 0, h - 2)
    i00 = (y0 * w + x0).ravel()
    weights = [((1 - fy) * (1 - fx)).ravel(), ((1 - fy) * fx).ravel()]
    weights += [(fy * (1 - fx)).ravel(), (fy * fx).ravel()]
    near = (np.rint(ys).clip(0, h - 1) * w + np.rint(xs).clip(0, w - 1)).astype(np.int64).ravel()
    # Every pixel is interpolated from its (clipped) source and the outside set to air after:
    # the inside pixels get the same sums in the same order, without a scatter per slice. The
    # four neighbours of each pixel are laid side by side (16 bytes) and gathered at once.
    outside = ~inside.reshape(1, -1)
    plane = h * w
    vol = vol.reshape(n, plane)
    quad = np.zeros((plane, 4), np.float32)
    quad_items = quad.view(np.complex128).reshape(-1)
    gathered = np.empty(plane, np.complex128)
    corners = gathered.view(np.float32).reshape(-1, 4)
    out = np.empty((n, plane), dtype=np.float32)
    acc = np.empty(plane, np.float32)
    term = np.empty(plane, np.float32)
    out_mask = np.empty((n, plane), dtype=bool)
    for k in range(n):  # slice by slice: the gathers stay in cache
        flat = vol[k]
        quad[:, 0] = flat
        quad[:-1, 1] = flat[1:]
        quad[:-w, 2] = flat[w:]
        quad[: -w - 1, 3] = flat[w + 1 :]
        np.take(quad_items, i00, out=gathered)
        acc.fill(0.0)
        for j, wt in enumerate(weights):
            acc += np.multiply(corners[:, j], wt, out=term)
        out[k] = acc
        np.take(mask[k].reshape(-1), near, out=out_mask[k])
    np.copyto(out, np.float32(AIR_HU), where=outside)
    out_mask &= ~outside
    return out.reshape(n, h, w), out_mask.reshape(n, h, w)


# Glare of bone on the tissue beside it (:func:`skull_glare`): HU added per unit of bone
# excess (1,000 HU over soft tissue) spread by a Gaussian of each width, drawn per study in
# these ranges; fitted so that phantoms show the brain edge of the shared GE head CT
# (triage.training.realism, tests/training/test_realism.py).
GLARE_NEAR = ((1.5, 3.0), (50.0, 110.0))  # (sigma mm, HU)
GLARE_FAR = ((10.0, 20.0), (40.0, 80.0))


def skull_glare(vol: np.ndarray, g: Grid, rng: np.random.Generator) -> None:
    """In place: what a real head CT shows next to its skull, brain denser toward the inner
    table (+25-40 HU within 2 mm, +10-15 at 5-10 mm in a real scan), the residue of scatter,
    off-focal radiation and beam-hardening correction that bone leaves in the tissue it
    encloses. Modelled as the bone excess over soft tissue spread by two Gaussians (a short
    and a long reach, :data:`GLARE_NEAR`, :data:`GLARE_FAR`), computed on cells of about
    2 mm and interpolated back, slice by slice."""
    (n_lo, n_hi), (na_lo, na_hi) = GLARE_NEAR
    (f_lo, f_hi), (fa_lo, fa_hi) = GLARE_FAR
    near_mm, near_hu = rng.uniform(n_lo, n_hi), rng.uniform(na_lo, na_hi)
    far_mm, far_hu = rng.uniform(f_lo, f_hi), rng.uniform(fa_lo, fa_hi)
    h, w = vol.shape[1:]
    f = max(1, round(2.0 / g.spacing))
    while f > 1 and (h % f or w % f):
        f -= 1
    cell = g.spacing * f
    near_taps = _gauss_taps(max(near_mm / cell, 0.3))
    far_taps = _gauss_taps(far_mm / cell)
    for k in range(vol.shape[0]):
        excess = np.clip((vol[k] - np.float32(100.0)) / np.float32(1000.0), 0.0, 3.0)
        coarse = block_mean(excess[None], f)[0]
        field = np.float32(near_hu) * _blur_slice(coarse, near_taps)
        field += np.float32(far_hu) * _blur_slice(coarse, far_taps)
        vol[k] += _upsample(field, f)


def _upsample(a: np.ndarray, f: int) -> np.ndarray:
    """[H, W] -> [H*f, W*f]: each cell repeated, then a moving mean of ``f`` along each axis:
    linear interpolation between cell values, edges held, the fine pixel ``k`` taking the
    value at ``k / f - 1/2`` cells (half a fine pixel before its centre: a shift of about
    0.2 mm at 512, far below the glare's 1.5-20 mm, kept so that generator 4 paints what
    ich-synthcnn-4.0 was trained on)."""
    if f == 1:
        return a
    up = np.repeat(np.repeat(a, f, axis=0), f, axis=1)
    for axis in (0, 1):
        pad = [(f // 2, f - 1 - f // 2) if ax == axis else (0, 0) for ax in (0, 1)]
        c = np.cumsum(np.pad(up, pad, mode="edge"), axis=axis, dtype=np.float32)
        c = np.concatenate([np.zeros_like(c.take([0], axis=axis)), c], axis=axis)
        n = up.shape[axis]
        up = (c.take(range(f, f + n), axis=axis) - c.take(range(n), axis=axis)) / np.float32(f)
    return up


def _gauss_taps(sigma: float) -> np.ndarray:
    r = max(1, math.ceil(3.0 * sigma))
    t = np.exp(-0.5 * (np.arange(-r, r + 1, dtype=np.float32) / np.float32(sigma)) ** 2)
    return (t / t.sum()).astype(np.float32)


def _blur_slice(a: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable convolution of one slice [H, W] with ``taps`` (edges: nearest value)."""
    r = len(taps) // 2
    out = a
    term = np.empty_like(a)
    for axis in (0, 1):
        pad = np.pad(out, [(r, r) if ax == axis else (0, 0) for ax in (0, 1)], mode="edge")
        acc = np.zeros_like(a)
        n = a.shape[axis]
        for i, t in enumerate(taps):
            acc += np.multiply(pad[i : i + n] if axis == 0 else pad[:, i : i + n], t, out=term)
        out = acc
    return out


def _apply_kernel(vol: np.ndarray, kernel: float) -> None:
    """The reconstruction kernel, in place: ``kernel`` < 0 blurs (Gaussian, sigma = -kernel
    pixels), > 0 sharpens (unsharp mask of that amount around a 1-pixel Gaussian)."""
    if kernel == 0.0:
        return
    taps = _gauss_taps(-kernel if kernel < 0 else 1.0)
    for k in range(vol.shape[0]):
        smooth = _blur_slice(vol[k], taps)
        if kernel < 0:
            vol[k] = smooth
        else:
            vol[k] += np.float32(kernel) * (vol[k] - smooth)


def noise_sigma(spec: PhantomSpec) -> float:
    return spec.noise_hu * SCANNERS[spec.scanner][2]


def coarse_noise(spec: PhantomSpec, seed: int, n: int, cells: int) -> np.ndarray:
    """Correlated noise component: white on a ``cells`` x ``cells`` in-plane grid (the model
    grid), ``spec.coarse_noise`` x the per-pixel sigma; shared by the DICOM and in-memory
    paths."""
    rng = np.random.default_rng([seed, 1, 1])
    return rng.standard_normal((n, cells, cells), dtype=np.float32) * np.float32(
        spec.coarse_noise * noise_sigma(spec)
    )


def coarse_side(size: int) -> int:
    """Cells per side of the coarse noise for a ``size`` x ``size`` image: the 128 grid when
    ``size`` is a multiple of it (every model grid and the DICOM matrix share one field), else
    one cell per pixel."""
    return 128 if size % 128 == 0 else size


def coarse_cells(coarse: np.ndarray, size: int) -> np.ndarray:
    """``coarse`` [z, c, c] repeated over ``size`` x ``size`` pixels (size a multiple of c)."""
    rep = size // coarse.shape[1]
    return np.repeat(np.repeat(coarse, rep, axis=1), rep, axis=2) if rep > 1 else coarse
