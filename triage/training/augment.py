"""Domain randomisation for training: what a scanner, its kernel and its calibration do to a
study, drawn at random per phantom on the model grid.

The generator already varies the acquisition (HU offset, a mild kernel, pose, slice profile,
noise share; :func:`triage.synth.ct.draw_spec`); what it draws is painted at 512 x 512 and
area-averaged, so on the model grid its kernels are mild. Real reconstructions are softer or
sharper than that, slices are thicker or thinner, soft tissue sits a few HU higher on one
scanner than another. :func:`augment` applies, each with its own probability and a random
strength, to a whole model-grid volume [z, y, x] in HU:

- soft tissue (0-80 HU) shifted by -8..+12 HU, or everything above 0 HU scaled x0.88-1.12;
- an in-plane Gaussian blur (sigma 0.3-1.3 model pixels: a soft kernel) or an unsharp mask
  (a sharp kernel);
- a slice profile along z ([w, 1 - 2w, w], w 0.1-0.33: thicker, overlapping slices);
- more noise, white or correlated (a lower dose, another kernel's texture);
- off by default (``p_skull_field``; the training turns it on, ``TrainConfig.skull_field``):
  what beam hardening and bone partial volume leave inside a real skull - a bright rim along
  the inner table, fading over a few voxels, and denser tissue in the lowest slices (the
  posterior fossa between the petrous bones). Real normal heads show both; without them a
  network learns that tissue a few HU denser along the skull is blood (a real head CT was
  flagged so, docs/models.md).
- off by default (``p_faint_calcifications``; ``TrainConfig.faint_calcifications``): the
  calcifications inside the skull (small dense pieces enclosed by brain in their own slice:
  pineal, choroid plexus, falx) made faint - each piece's excess over the brain around it
  scaled so that its peak lands at 65-130 HU, what a small calcification becomes when a
  thick slice or a soft kernel averages it with the brain around it. Real heads carry them
  so; a network that has only seen them dense reads a diluted one as a small bleed (the
  stress suite's soft kernel, docs/models.md).

Intensity and sharpness only: nothing moves, so the lesion targets stay where they are.
Independent of the stress suite (:mod:`triage.training.perturb`), which applies fixed
strengths to other phantoms; the shared helpers are only the Gaussian kernel, the separable
convolution and the noise measurement. Synthetic phantoms; not for clinical use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from triage.inference.checks import components
from triage.inference.masks import dilate_inplane
from triage.training.perturb import convolve_axis, gaussian_kernel, noise_sigma


@dataclass(frozen=True)
class Augmentation:
    """Probabilities and ranges of :func:`augment` (each drawn uniformly)."""

    p_soft: float = 0.25
    soft_shift_hu: tuple[float, float] = (-8.0, 12.0)
    p_contrast: float = 0.2
    contrast: tuple[float, float] = (0.88, 1.12)
    p_blur: float = 0.35
    blur_sigma_px: tuple[float, float] = (0.3, 1.3)
    p_sharp: float = 0.2
    sharp_sigma_px: tuple[float, float] = (0.7, 1.3)
    sharp_amount: tuple[float, float] = (0.3, 0.9)
    p_profile: float = 0.3
    profile_weight: tuple[float, float] = (0.1, 0.33)
    p_noise: float = 0.3
    noise_factor: tuple[float, float] = (1.3, 2.2)  # total noise / measured noise
    p_texture: float = 0.4  # share of the added noise draws that are correlated
    p_skull_field: float = 0.0  # see skull_field()
    # added just inside the inner table, and its e-folding length (model voxels): a real head
    # (the GE head CT of the shared data, on the 128 grid) is 28 HU above its core 2 voxels
    # from the bone, 14 HU at 4, 8 HU at 8; our phantoms 5-13 HU at 2, flat by 6
    rim_hu: tuple[float, float] = (15.0, 40.0)
    rim_px: tuple[float, float] = (3.0, 8.0)
    rim_reach: int = 12  # model voxels from the bone that the rim reaches
    base_hu: tuple[float, float] = (3.0, 15.0)  # added in the lowest slices inside the skull
    base_share: tuple[float, float] = (0.15, 0.35)  # of the slices, from the bottom, it fades over
    p_faint_calcifications: float = 0.0  # see fade_calcifications()
    calc_min_hu: float = 100.0  # a calcification's voxels: denser than any blood
    calc_max_px: int = 40  # in-plane pixels of one piece at most (the model grid: ~130 mm2)
    calc_max_peak_hu: float = 700.0  # denser pieces are bone (the skull base's, in its ring)
    # slices whose intracranial area is under this share of the widest slice's are the skull
    # base's or the vertex's: their small dense pieces (clinoids, petrous apex) are left dense
    calc_min_area_share: float = 0.6
    calc_peak_hu: tuple[float, float] = (65.0, 130.0)  # where a faded piece's peak lands


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def augment(
    volume: np.ndarray, rng: np.random.Generator, aug: Augmentation = Augmentation()
) -> tuple[np.ndarray, list[str]]:
    """(augmented float32 copy of ``volume`` [z, y, x] in HU, what was applied)."""
    hu = np.asarray(volume, dtype=np.float32).copy()
    done: list[str] = []
    noise0 = noise_sigma(hu)
    if aug.p_faint_calcifications > 0.0 and rng.random() < aug.p_faint_calcifications:
        hu, pieces = fade_calcifications(hu, rng, aug)
        if pieces:
            done.append(f"faint calcifications ({pieces} pieces)")
    if rng.random() < aug.p_soft:
        d = _u(rng, aug.soft_shift_hu)
        hu = np.where((hu >= 0.0) & (hu <= 80.0), hu + np.float32(d), hu)
        done.append(f"soft{d:+.1f}")
    elif rng.random() < aug.p_contrast:
        c = _u(rng, aug.contrast)
        hu = np.where(hu > 0.0, hu * np.float32(c), hu)
        done.append(f"contrast x{c:.2f}")
    r = rng.random()
    if r < aug.p_blur:
        s = _u(rng, aug.blur_sigma_px)
        k = gaussian_kernel(s)
        hu = convolve_axis(convolve_axis(hu, k, 1), k, 2)
        done.append(f"blur {s:.2f}px")
    elif r < aug.p_blur + aug.p_sharp:
        s, a = _u(rng, aug.sharp_sigma_px), _u(rng, aug.sharp_amount)
        k = gaussian_kernel(s)
        smooth = convolve_axis(convolve_axis(hu, k, 1), k, 2)
        hu = hu + np.float32(a) * (hu - smooth)
        done.append(f"sharp {s:.2f}px x{a:.2f}")
    if rng.random() < aug.p_profile and hu.shape[0] >= 3:
        w = _u(rng, aug.profile_weight)
        hu = convolve_axis(hu, np.array([w, 1.0 - 2.0 * w, w], np.float32), 0)
        done.append(f"profile {w:.2f}")
    if rng.random() < aug.p_noise and noise0 > 0.0:
        f = _u(rng, aug.noise_factor)
        now = noise_sigma(hu)
        add = math.sqrt(max((f * noise0) ** 2 - now**2, 0.0))
        if add > 0.0:
            n = rng.standard_normal(hu.shape, dtype=np.float32)
            if rng.random() < aug.p_texture:
                k = gaussian_kernel(1.2)
                n = convolve_axis(convolve_axis(n, k, 1), k, 2)
                n /= np.float32(max(float(n.std()), 1e-6))
            hu = hu + np.float32(add) * n
            done.append(f"noise x{f:.2f}")
    if aug.p_skull_field > 0.0 and rng.random() < aug.p_skull_field:
        field, what = skull_field(hu, rng, aug)
        hu = hu + field
        done.append(what)
    return hu, done


BONE_HU = 300.0


def bone_distance(hu: np.ndarray, reach: int) -> np.ndarray:
    """float32 [z, y, x]: in-plane steps (to the four neighbours) from the nearest bone
    (> 300 HU) of the voxel's own slice, 1..``reach``; 0 for bone and beyond ``reach``."""
    reached = hu > BONE_HU
    dist = np.zeros(hu.shape, np.float32)
    for d in range(1, reach + 1):
        grown = dilate_inplane(reached)
        dist[grown & ~reached] = d
        reached = grown
    return dist


def inside_skull(hu: np.ndarray) -> np.ndarray:
    """Voxels [z, y, x] enclosed by bone (> 300 HU) in their own slice: what cannot be
    reached from the slice's border without crossing bone. A slice whose skull is open (the
    skull base, a craniectomy) has little or nothing inside."""
    free = hu <= BONE_HU
    out = np.zeros_like(free)
    out[:, 0, :] = free[:, 0, :]
    out[:, -1, :] = free[:, -1, :]
    out[:, :, 0] |= free[:, :, 0]
    out[:, :, -1] |= free[:, :, -1]
    count = int(out.sum())
    while True:
        grown = dilate_inplane(out) & free
        n = int(grown.sum())
        if n == count:
            return free & ~grown
        out, count = grown, n


def skull_field(
    hu: np.ndarray, rng: np.random.Generator, aug: Augmentation = Augmentation()
) -> tuple[np.ndarray, str]:
    """(float32 field to add to ``hu`` [z, y, x], what it is): inside the skull only, a rim
    along the inner table (``rim_hu`` at the bone, falling off over ``rim_px`` voxels,
    varying smoothly from slice to slice) plus a denser floor in the lowest slices
    (``base_hu`` at the bottom slice, fading to 0 over ``base_share`` of them)."""
    inside = inside_skull(hu)
    z = hu.shape[0]
    dist = bone_distance(hu, aug.rim_reach)  # outside the skull too: masked off below
    rim_hu, rim_px = _u(rng, aug.rim_hu), _u(rng, aug.rim_px)
    rim = np.where(dist > 0, np.exp(-(dist - 1.0) / rim_px), 0.0).astype(np.float32)
    # the rim's strength along z: a smooth random curve between 0.6 and 1 of rim_hu
    knots = rng.uniform(0.6, 1.0, 5)
    along = np.interp(np.linspace(0.0, 4.0, z), np.arange(5), knots).astype(np.float32)
    field = rim * (np.float32(rim_hu) * along)[:, None, None]
    base_hu, share = _u(rng, aug.base_hu), _u(rng, aug.base_share)
    ramp = np.clip(1.0 - np.arange(z) / max(share * z, 1.0), 0.0, 1.0).astype(np.float32)
    field = field + (np.float32(base_hu) * ramp)[:, None, None]
    field = np.where(inside, field, np.float32(0.0)).astype(np.float32)
    return field, f"skull field rim {rim_hu:.0f} HU/{rim_px:.1f}px base {base_hu:.0f} HU"


def fade_calcifications(
    hu: np.ndarray, rng: np.random.Generator, aug: Augmentation = Augmentation()
) -> tuple[np.ndarray, int]:
    """(``hu`` [z, y, x] with its calcifications made faint, how many pieces). A piece is an
    in-plane component of voxels over ``calc_min_hu`` of at most ``calc_max_px`` pixels
    whose every neighbour is dense or inside the skull (:func:`inside_skull`: enclosed by
    brain, not touching the skull, the scalp or the air), whose peak is under
    ``calc_max_peak_hu`` (denser: bone of the skull base inside its ring), in a slice whose
    intracranial area is at least ``calc_min_area_share`` of the widest slice's (the skull
    base's small pieces of bone stay dense: faded, they would look like blood in the basal
    cisterns; where the skull is open, nothing is inside). Each keeps its shape, its excess
    over the brain's median scaled so that its peak lands at a random ``calc_peak_hu``.
    Blood (< 100 HU) is never touched."""
    dense = hu > aug.calc_min_hu
    if not dense.any():
        return hu, 0
    inside = inside_skull(hu)  # a flood fill: only when there is something to fade
    if not inside.any():
        return hu, 0
    labels = components(dense)
    flat = labels[dense]
    ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    # a piece touching anything neither dense nor inside the skull is the skull, not in it
    open_ = dense & dilate_inplane(~dense & ~inside)
    touching = np.isin(ids, np.unique(labels[open_]))
    peaks = np.full(len(ids), -np.inf, np.float32)
    np.maximum.at(peaks, inverse, hu[dense])
    area = inside.sum(axis=(1, 2))
    wide = area >= aug.calc_min_area_share * area.max()
    piece_z = np.zeros(len(ids), np.int64)
    piece_z[inverse] = np.nonzero(dense)[0]
    keep = (counts <= aug.calc_max_px) & ~touching & (peaks <= aug.calc_max_peak_hu)
    keep &= wide[piece_z]
    if not keep.any():
        return hu, 0
    soft = hu[inside & (hu > 0.0) & (hu < 80.0)]
    if soft.size == 0:  # no brain to fade towards
        return hu, 0
    brain = float(np.median(soft))
    targets = rng.uniform(aug.calc_peak_hu[0], aug.calc_peak_hu[1], len(ids)).astype(np.float32)
    scale = np.clip((targets - brain) / np.maximum(peaks - brain, 1.0), 0.0, 1.0)
    scale[~keep] = 1.0
    out = hu.copy()
    out[dense] = brain + (hu[dense] - brain) * scale[inverse]
    return out, int(keep.sum())
