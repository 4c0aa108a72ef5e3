"""Input checks: may this model judge this series at all? Plain functions, run before any claim.

A model only says something about studies like those it was trained on. Before a volume is
sent to a model, :func:`check_input` looks at the selected series' metadata and at the volume
(in Hounsfield units, on the model grid; pe's 256 x 256 grid is judged at its 128 x 128
average, :func:`content_grid`) and raises :class:`~triage.errors.NotAssessable` with every
reason that applies - never a silent "negative". Each check is a plain function of numpy arrays
(well under a second per study on one core); the thresholds are listed here.

- **modality**: CT only (an MR or any other modality never reaches a CT model).
- **HU calibration** (:func:`calibration`; whenever the model names a ``body_part``): air
  around the body (pixels below -500 HU connected to the image border outside the convex
  outline of everything above -500 HU, and outside that outline themselves, so a lung cut by
  a field of view narrower than the patient is not taken for air; the values clipped at
  -1024 left out) must have a median at or below :data:`AIR_MAX_HU` (-950; air is -1000), and
  a reference tissue must sit where it belongs: for a head the median of the tissue inside the
  skull (CSF, grey and white matter, -200..300 HU) within :data:`HEAD_TISSUE_HU` (0..65; ~30 on
  a calibrated scanner), for a chest the most frequent soft-tissue value of the body (5 HU bins
  over -40..200: muscle, heart, blood, liver) within :data:`CHEST_TISSUE_HU` (15..100; ~40-60).
  Stored values without the rescale intercept (air near 0) or a scanner offset beyond a few
  tens of HU fail; the content checks below are then not judged (their HU windows would be
  meaningless) and the reason says so.
- **body part** (``body_part`` parameter, ``head`` or ``chest``), judged from the image content,
  not from header tags (often missing or generic), slice by slice (:func:`anatomy`):

  - a *head slice* has a closed ring of bone (> :data:`SKULL_HU`, 200) enclosing at least
    :data:`HEAD_MIN_CM2` (20 cm^2) of which at least :data:`BRAIN_MIN_FRACTION` (60 %) is
    brain-density tissue (:data:`BRAIN_HU`, -20..100 HU: CSF, white and grey matter, blood);
    a head has such slices in at least :data:`MIN_ANATOMY_FRACTION` (25 %) of the slices and is
    at most :data:`HEAD_MAX_WIDTH_MM` (260 mm) wide. A skull filled with air or inserts (a
    calibration phantom) is not a head;
  - a *chest slice* has aerated lung (-1024..-400 HU inside the body outline) of at least
    :data:`LUNG_MIN_CM2` (20 cm^2) on each side of the body's midline with the mediastinum
    between them; a chest has such slices in at least 25 % of the slices and is at least
    :data:`CHEST_MIN_WIDTH_MM` (240 mm) wide. A chest wider than the scanner's reconstruction
    circle has its lungs cut by it and joined, through the padding beyond it, to the air in the
    image's corners, and a chest wall thinner than a grid pixel leaves a gap to the air: a
    piece of that "air" denser than air (over -950 HU), thick, and to one side of the midline
    is lung (:func:`open_lungs`) and counts in the width.
- **slice thickness** outside ``[min_slice_thickness_mm, max_slice_thickness_mm]``
  (SliceThickness, else the median slice spacing): the contract states the range the model was
  trained on, never wider.
- **too few slices** (``min_slices``) or too short a coverage along the slice normal
  (``min_coverage_mm``).
- **field of view** (the image's width, pixel spacing times columns, the larger of its two
  sides) outside ``[min_fov_mm, max_fov_mm]``: the input is resampled by index onto the
  model's grid, so a head reconstructed at 480 mm would reach the model at half the size it
  was trained on.
- **an incomplete series**: a gap between neighbouring slices over ``GAP_FACTOR`` times the
  series' usual spacing (and over ``MIN_GAP_MM``): images lost on the way, which the
  resampling would otherwise interpolate across (always checked; no contract parameter).
- **CTPA enhancement at the pulmonary arteries** (``min_enhancement_hu``,
  :func:`pulmonary_artery_enhancement`): at hilar level (the middle third of the chest slices,
  where the pulmonary trunk divides into the main pulmonary arteries), in the mediastinum left
  of the midline (from it to the left lung's medial edge, on rows where both lungs are) and in
  the front half of the body (:data:`ANTERIOR_FRACTION`): the pulmonary trunk and the left
  pulmonary artery, not the ascending aorta (right of the midline) nor the descending aorta
  (beside the spine). Per slice the brightest :data:`TRUNK_CM2` (2 cm^2, less than a main
  pulmonary artery's cross-section) of blood and soft tissue (0..700 HU, not touching bone) is
  taken; their median must reach the threshold (~200 HU): a non-contrast chest CT, or a bolus
  timed to the aorta only, is not assessable for embolism. No region found (no two lungs):
  not assessable either. The volume is taken as the scanner writes it, patient left on the
  image right.
- **contrast in a head for a non-contrast model** (``max_intracranial_enhancing_ml``,
  :func:`intracranial_enhancement_ml`): the volume, on the head slices, of the tissue enclosed
  by the skull ring (two voxels in from the bone, so the partial volume of the inner table is
  left out) at :data:`ENHANCING_HU` (120..200 HU): contrast-filled arteries and venous sinuses
  as the model grid shows them (a 2-5 mm vessel averaged over a voxel and a slice) and the
  rims of the larger ones. A real non-contrast head of the shared data (elderly, with
  calcifications) has ~3 ml, phantoms with calcification mimics ~1-2 ml; ich's limit is 6 ml.
  Contrast raises it whatever the header says.

The limits come from the model contract's ``config.pbtxt`` ``parameters`` (see models/README.md);
a missing parameter skips that check (logged once per model). The thresholds of the content
checks are heuristics calibrated on the synthetic phantoms and on the real head and chest CTs
of the shared test data; they are documented here and tested, not clinically validated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from triage.errors import NotAssessable
from triage.inference import slabs
from triage.inference.masks import dilate_inplane, erode_inplane
from triage.inference.volume import HU_MIN, Volume, image_numbers
from triage.store.models import Instance

log = logging.getLogger(__name__)

BODY_HU = -500.0  # above: patient (or table); below: air
AIR_MAX_HU = -950.0  # median of the air around the body at most this (air: -1000)
HEAD_TISSUE_HU = (0.0, 65.0)  # median of the intracranial tissue (~30 when calibrated)
CHEST_TISSUE_HU = (15.0, 100.0)  # most frequent soft-tissue value of a chest (~40-60)
LUNG_MAX_HU = -400.0  # aerated lung (and airway) inside the body: below
SKULL_HU = 200.0  # bone of the skull ring after in-plane averaging: above
BRAIN_HU = (-20.0, 100.0)  # CSF, white and grey matter, blood
BRAIN_MIN_FRACTION = 0.6
HEAD_MIN_CM2 = 20.0
LUNG_MIN_CM2 = 20.0
MIN_ANATOMY_FRACTION = 0.25
MIN_ANATOMY_SLICES = 3
HEAD_MAX_WIDTH_MM = 260.0
CHEST_MIN_WIDTH_MM = 240.0
BONE_HU = 700.0  # cortical bone and dense calcification: never "vessel"
VESSEL_MIN_HU = 0.0  # fat and air are below
TRUNK_CM2 = 2.0  # per slice, the brightest blood of this area: a main pulmonary artery's
ANTERIOR_FRACTION = 0.5  # of the body's front-back depth: trunk in front, descending aorta not
ENHANCING_HU = (120.0, SKULL_HU)
# A hole in a series (images lost in transfer, an association cut, a PACS that sent part):
# the largest distance between neighbouring slices may be at most GAP_FACTOR times the
# series' usual spacing (uneven spacing, e.g. 4 then 7 mm, stays under it), or MIN_GAP_MM.
# Past it the resampling would interpolate across tissue nobody sent.
GAP_FACTOR = 2.5
MIN_GAP_MM = 5.0
# One image lost from an evenly spaced series only doubles one step, which real uneven
# spacing can come near (a tilted GE head: 4.2 then 7.4 mm). So a shorter gap counts too when
# the image numbers say images are missing: a step over NUMBERED_GAP_FACTOR times the usual
# spacing across which the InstanceNumbers jump, in a series numbered one by one elsewhere.
NUMBERED_GAP_FACTOR = 1.5

_warned: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class InputLimits:
    """What a model was trained on, from its contract parameters (None: not checked)."""

    model: str
    body_part: str | None = None  # "head" or "chest"
    min_slice_thickness_mm: float | None = None
    max_slice_thickness_mm: float | None = None
    min_slices: int | None = None
    min_coverage_mm: float | None = None
    min_fov_mm: float | None = None
    max_fov_mm: float | None = None
    min_enhancement_hu: float | None = None
    max_intracranial_enhancing_ml: float | None = None

    @classmethod
    def from_parameters(cls, model: str, params: Mapping[str, str]) -> InputLimits:
        def num(key: str) -> float | None:
            raw = params.get(key)
            if raw is None or not str(raw).strip():
                if (model, key) not in _warned:
                    _warned.add((model, key))
                    log.info("model %s: no %r parameter; that input check is skipped", model, key)
                return None
            try:
                value = float(raw)
            except ValueError:
                raise NotAssessable(
                    f"model {model}: contract parameter {key}={raw!r} is not a number"
                ) from None
            return value if math.isfinite(value) else None

        body = str(params.get("body_part", "")).strip().lower() or None
        slices = num("min_slices")
        return cls(
            model=model,
            body_part=body,
            min_slice_thickness_mm=num("min_slice_thickness_mm"),
            max_slice_thickness_mm=num("max_slice_thickness_mm"),
            min_slices=int(slices) if slices is not None else None,
            min_coverage_mm=num("min_coverage_mm"),
            min_fov_mm=num("min_fov_mm"),
            max_fov_mm=num("max_fov_mm"),
            min_enhancement_hu=num("min_enhancement_hu") if body in (None, "chest") else None,
            max_intracranial_enhancing_ml=(
                num("max_intracranial_enhancing_ml") if body in (None, "head") else None
            ),
        )


@dataclass(frozen=True)
class InputFacts:
    """What the checks measured (reported with a not-assessable result and in logs)."""

    modality: str
    slices: int
    coverage_mm: float
    slice_thickness_mm: float | None
    fov_mm: float | None = None  # the image's larger side, pixel spacing x pixels
    body_width_mm: float | None = None
    air_hu: float | None = None  # median of the air around the body
    tissue_hu: float | None = None  # the body part's reference tissue (see calibration)
    head_slices: int | None = None  # slices with a skull ring around brain-density tissue
    skull_slices: int | None = None  # slices with a closed skull ring, whatever it holds
    chest_slices: int | None = None  # slices with two lungs and a mediastinum
    grid_slices: int | None = None  # slices of the grid the content checks looked at
    enhancement_hu: float | None = None  # pulmonary trunk / main pulmonary arteries
    intracranial_enhancing_ml: float | None = None
    spacing_mm: float | None = None  # median distance between neighbouring slices
    largest_gap_mm: float | None = None  # the largest one
    gap_after: int | None = None  # slices below the largest gap (counted from the bottom)
    # a gap across which the image numbers jump (see NUMBERED_GAP_FACTOR): the images missing,
    # the slices below it, and its size
    numbers_missing: int | None = None
    numbered_gap_after: int | None = None
    numbered_gap_mm: float | None = None


# -- image primitives (numpy only; [z, y, x] stacks, everything in plane) ----------------------


def _runs(passable: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Pixels of ``passable`` in the same run along the last axis as a ``seed`` pixel."""
    n = passable.shape[-1]
    if passable.size == 0:
        return passable.copy()
    lines = passable.reshape(-1, n)
    padded = np.zeros((lines.shape[0], n + 1), dtype=bool)  # a False ends every line's runs
    padded[:, :n] = lines
    seeds = np.zeros_like(padded)
    seeds[:, :n] = seed.reshape(-1, n) & lines
    flat = padded.ravel()
    starts = flat.copy()
    starts[1:] &= ~flat[:-1]
    label = np.cumsum(starts, dtype=np.int32)  # run number (int32: less memory traffic)
    label *= flat
    hit = np.zeros(int(label.max()) + 1, dtype=bool)
    hit[label[seeds.ravel()]] = True  # runs holding a seed
    hit[0] = False
    return hit[label].reshape(padded.shape)[:, :n].reshape(passable.shape)


def reachable(passable: np.ndarray, entry: np.ndarray | None = None) -> np.ndarray:
    """The pixels of ``passable`` [..., y, x] connected in plane (4-neighbours) to the image
    border (to those border pixels of ``entry`` when given): runs along rows and columns,
    alternated until nothing changes (a few passes)."""
    seed = np.zeros_like(passable)
    seed[..., 0, :] = seed[..., -1, :] = True
    seed[..., :, 0] = seed[..., :, -1] = True
    seed &= passable
    if entry is not None:
        seed &= entry
    while True:
        grown = _runs(passable, seed)
        grown = np.swapaxes(
            _runs(np.swapaxes(passable, -1, -2), np.swapaxes(grown, -1, -2)), -1, -2
        )
        if np.array_equal(grown, seed):
            return grown
        seed = grown


def components(mask: np.ndarray) -> np.ndarray:
    """In-plane connected components (4-neighbours) of ``mask`` [..., y, x]: a label per
    pixel (0 outside ``mask``; one label for the pixels of one component, in no particular
    order). Runs along rows and columns (found once) take their smallest label, alternated
    until nothing changes (a few passes for round shapes; int32 labels: less memory
    traffic)."""
    big = np.iinfo(np.int32).max
    if mask.size == 0 or mask.shape[-1] == 0:
        return np.zeros(mask.shape, dtype=np.int32)
    if mask.size >= big:
        raise ValueError(f"components: {mask.size} pixels is more than int32 labels can hold")
    labels = np.where(mask, np.arange(1, mask.size + 1, dtype=np.int32).reshape(mask.shape), big)
    # per axis, once: which pixels of each line are set and the run each set pixel is in
    runs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for axis in (-1, -2):
        lines = np.ascontiguousarray(np.swapaxes(mask, axis, -1))
        n = lines.shape[-1]
        on = np.zeros((lines.size // n, n + 1), dtype=bool)  # a False ends each line
        on[:, :n] = lines.reshape(-1, n)
        flat = on.ravel()
        starts = flat.copy()
        starts[1:] &= ~flat[:-1]
        runs[axis] = on[:, :n], np.cumsum(starts, dtype=np.int32)[flat]
    changed = True
    while changed:
        changed = False
        for axis in (-1, -2):
            on, run = runs[axis]
            lab = np.ascontiguousarray(np.swapaxes(labels, axis, -1))
            values = lab.reshape(on.shape)[on]
            least = np.full(int(run[-1]) + 1 if run.size else 1, big, dtype=np.int32)
            np.minimum.at(least, run, values)
            if not np.array_equal(least[run], values):
                changed = True
                lab.reshape(on.shape)[on] = least[run]
                labels = np.swapaxes(lab, axis, -1)
    return np.where(mask, labels, 0)


def middle_columns(mask: np.ndarray) -> np.ndarray:
    """Per slice of ``mask`` [z, y, x], the column with half of the slice's set pixels at or
    left of it (-1 where none is set): the midline of a body or of its tissue."""
    per_col = mask.sum(axis=1)  # [z, x]
    total = per_col.sum(axis=1)
    middle = (per_col.cumsum(axis=1) < total[:, None] / 2.0).sum(axis=1)
    return np.where(total > 0, middle, -1)


OPEN_LUNG_MIN_CM2 = LUNG_MIN_CM2  # of a piece's core (what one in-plane erosion leaves)


def open_lungs(
    grid: np.ndarray, outside: np.ndarray, outline: np.ndarray, pixel_mm: float
) -> np.ndarray:
    """Lung that the flood of air from the image border (``outside``, entering outside the
    body's convex ``outline``) reached, with what that lung encloses (airways, its pixels
    below -950 HU): pixels to take back from ``outside`` for a chest.

    The flood reaches a lung in two ways: a chest wider than the scanner's reconstruction
    circle has its lungs cut by it and joined, through the padding beyond (-1024 HU, as the
    loader writes pixel padding and clipped air), to the air in the image's corners; and a
    chest wall drawn or reconstructed thinner than a grid pixel leaves a gap. Lung reads
    denser than air (about -850 HU against -1000): a piece of ``outside`` without the padding
    whose pixels are all over :data:`AIR_MAX_HU`, taken after one in-plane erosion (the
    partial-volume fringe round a body is one or two pixels thin, and joins what it touches),
    is lung when it covers a lung's :data:`OPEN_LUNG_MIN_CM2` (the foam pads beside a head in
    its holder read as dense, but are smaller) and lies to one side of the body's midline (a
    mattress spans it)."""
    pad = reachable(grid <= HU_MIN + 1.0)
    dense = outside & ~pad & (grid > AIR_MAX_HU)
    none = np.zeros_like(outside)
    if not dense.any():
        return none
    core = erode_inplane(dense)  # without the fringe and one-pixel bridges
    labels = components(core)
    ids, inverse, counts = np.unique(labels[core], return_inverse=True, return_counts=True)
    _, ny, nx = grid.shape
    midline = middle_columns(grid > BODY_HU)  # of each slice's tissue
    cols = np.nonzero(core)[2]
    left = np.full(ids.size, nx)
    right = np.full(ids.size, -1)
    np.minimum.at(left, inverse, cols)
    np.maximum.at(right, inverse, cols)
    z = (ids.astype(np.int64) - 1) // (ny * nx)  # a label is a pixel index of its slice, + 1
    one_side = (midline[z] < 0) | (right < midline[z]) | (left > midline[z])
    big = counts * pixel_mm * pixel_mm / 100.0 >= OPEN_LUNG_MIN_CM2
    lung = dilate_inplane(np.isin(labels, ids[big & one_side]) & core) & dense
    if not lung.any():
        return none
    return outside & ~reachable(outside & ~lung, entry=~outline)


def convex_fill(mask: np.ndarray) -> np.ndarray:
    """Per slice of ``mask`` [z, y, x], the pixels inside the convex hull of its set pixels
    (their centres; the set pixels themselves always included)."""
    out = mask.copy()
    nz, ny, nx = mask.shape
    for k in range(nz):
        rows = np.flatnonzero(mask[k].any(axis=1))
        if rows.size < 2:
            continue
        first = np.argmax(mask[k, rows], axis=1)
        last = nx - 1 - np.argmax(mask[k, rows, ::-1], axis=1)
        # the hull of the rows' extreme pixels is the hull of them all (monotone chain)
        ends = zip(rows, first, last, strict=True)
        pts = sorted({(int(x), int(y)) for y, a, b in ends for x in (a, b)})
        hull = _hull(pts)
        if len(hull) < 3:
            continue
        lo = np.full(ny, np.inf)
        hi = np.full(ny, -np.inf)
        for (x0, y0), (x1, y1) in zip(hull, hull[1:] + hull[:1], strict=True):
            if y0 == y1:
                ys = np.array([y0])
                xs_lo, xs_hi = np.array([min(x0, x1)]), np.array([max(x0, x1)])
            else:
                ys = np.arange(min(y0, y1), max(y0, y1) + 1)
                xs = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
                xs_lo = xs_hi = xs
            np.minimum.at(lo, ys, xs_lo)
            np.maximum.at(hi, ys, xs_hi)
        cols = np.arange(nx)
        span = (cols[None, :] >= np.ceil(lo[:, None] - 1e-6)) & (
            cols[None, :] <= np.floor(hi[:, None] + 1e-6)
        )
        out[k] |= span
    return out


def _hull(pts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Convex hull of sorted, distinct integer points, counter-clockwise (Andrew's chain)."""

    def cross(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[int, int]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[int, int]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


# -- measurements -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """Per slice of a [z, y, x] HU grid: what :func:`anatomy` found."""

    body: np.ndarray  # [z, y, x] inside the body outline (holes filled)
    outside_air: np.ndarray  # [z, y, x] air outside the body's convex outline, off the border
    intracranial: np.ndarray  # [z, y, x] inside a closed ring of bone (the ring left out)
    skull: np.ndarray  # [z] a closed ring encloses >= HEAD_MIN_CM2
    head: np.ndarray  # [z] ... and it is mostly brain-density tissue
    chest: np.ndarray  # [z] two lungs and a mediastinum
    midline: np.ndarray  # [z] column of the body's centre (-1: no body)
    open_lung: np.ndarray  # [z, y, x] lung the air from the border reached (chests only)


def anatomy(grid: np.ndarray, pixel_mm: float, *, chest: bool = False) -> Anatomy:
    """Head and chest slices of ``grid`` ([z, y, x] HU, square pixels of ``pixel_mm``);
    ``chest``: judged for a chest model, so lung that the air from the border reaches (cut by
    the reconstruction circle, or through a gap in the chest wall) is looked for
    (:func:`open_lungs`)."""
    cm2 = pixel_mm * pixel_mm / 100.0
    # Air enters from the image border only where the border lies outside the body's convex
    # outline: a lung cut by a field of view narrower than the patient touches the border too.
    outline = convex_fill(grid > BODY_HU)
    outside = reachable(grid <= BODY_HU, entry=~outline)
    opened = open_lungs(grid, outside, outline, pixel_mm) if chest else np.zeros_like(outside)
    outside &= ~opened
    bone = grid > SKULL_HU
    enclosed = ~reachable(~bone) & ~bone  # inside a closed ring of bone, bone left out
    # ... with what lies wholly inside that tissue (calcifications, contrast-filled vessels)
    intracranial = ~reachable(~enclosed)
    interior = erode_inplane(enclosed)
    inner = interior & (grid >= BRAIN_HU[0]) & (grid <= BRAIN_HU[1])
    n_enclosed = intracranial.sum(axis=(1, 2))
    n_interior = np.maximum(interior.sum(axis=(1, 2)), 1)
    skull = n_enclosed * cm2 >= HEAD_MIN_CM2
    head = skull & (inner.sum(axis=(1, 2)) >= BRAIN_MIN_FRACTION * n_interior)
    body = ~outside
    lung = body & (grid < LUNG_MAX_HU)
    nz, _, nx = grid.shape
    chests = np.zeros(nz, dtype=bool)
    midline = middle_columns(body)
    cols = np.arange(nx)
    for k in range(nz):
        cx = int(midline[k])
        if cx < 0:
            continue
        lung_cols = lung[k].sum(axis=0)
        right, left = lung_cols[cols < cx].sum(), lung_cols[cols > cx].sum()
        if min(right, left) * cm2 < LUNG_MIN_CM2:
            continue
        rows = np.flatnonzero(lung[k].any(axis=1))
        centre = lung[k, rows[0] : rows[-1] + 1, max(cx - 1, 0) : cx + 2]
        chests[k] = centre.mean() < 0.5  # tissue (the mediastinum) between the lungs
    return Anatomy(body, outside & ~outline, intracranial, skull, head, chests, midline, opened)


def body_width_mm(grid: np.ndarray, anat: Anatomy, pixel_mm: float) -> float:
    """Median over the central half of the slices of the 80th percentile of the body's
    left-right extent over its rows (a thin table or head holder barely moves it); lung that
    the air from the border reached (:func:`open_lungs`) counts as body: cut by the
    reconstruction circle, the chest is at least that wide."""
    nz = grid.shape[0]
    widths: list[float] = []
    for k in range(nz // 4, max(nz // 4 + 1, (3 * nz) // 4)):
        solid = (anat.body[k] & (grid[k] > BODY_HU)) | anat.open_lung[k]
        rows = np.flatnonzero(solid.any(axis=1))
        if rows.size == 0:
            continue
        first = np.argmax(solid[rows], axis=1)
        last = solid.shape[1] - 1 - np.argmax(solid[rows, ::-1], axis=1)
        widths.append(float(np.percentile(last - first + 1, 80)) * pixel_mm)
    return float(np.median(widths)) if widths else 0.0


def calibration(
    grid: np.ndarray, anat: Anatomy, body_part: str
) -> tuple[float | None, float | None]:
    """(median HU of the air around the body, the reference tissue's HU) - None when absent.

    Air: pixels at or below -500 HU connected to the border, without those clipped at -1024
    (padding, and air the loader clipped) unless they are all there is. Tissue: for a head the
    median of -200..300 HU inside the skull ring on the head-like slices (else on every ring);
    for a chest the centre of the fullest 5 HU bin of the body's -40..200 HU voxels.
    """
    air = grid[anat.outside_air]
    unclipped = air[air > HU_MIN + 1.0]
    air_hu: float | None = None
    if unclipped.size >= 100:
        air_hu = float(np.median(unclipped))
    elif air.size >= 100:
        air_hu = HU_MIN
    tissue_hu: float | None = None
    if body_part == "head":
        rings = anat.head if anat.head.any() else anat.skull
        inside = grid[rings][erode_inplane(anat.intracranial[rings])]
        inside = inside[(inside > -200.0) & (inside < 300.0)]
        tissue_hu = float(np.median(inside)) if inside.size >= 100 else None
    elif body_part == "chest":
        soft = grid[anat.body & (grid >= -40.0) & (grid < 200.0)]
        if soft.size >= 100:
            counts, edges = np.histogram(soft, bins=np.arange(-40.0, 205.0, 5.0))
            tissue_hu = float(edges[int(np.argmax(counts))] + 2.5)
    return air_hu, tissue_hu


def pulmonary_artery_enhancement(grid: np.ndarray, anat: Anatomy, pixel_mm: float) -> float | None:
    """Median HU of the brightest blood in the region of the pulmonary trunk and main
    pulmonary arteries (see the module docstring), or None when it cannot be found."""
    chest = np.flatnonzero(anat.chest)
    if chest.size == 0:
        return None
    first, last = int(chest[0]), int(chest[-1])
    third = (last - first) / 3.0
    lung = anat.body & (grid < LUNG_MAX_HU)
    per_slice = max(1, round(TRUNK_CM2 * 100.0 / (pixel_mm * pixel_mm)))
    values: list[np.ndarray] = []
    for k in chest[(chest >= first + third) & (chest <= last - third)]:
        s, cx = grid[k], int(anat.midline[k])
        body_rows = np.flatnonzero(anat.body[k].any(axis=1))
        depth = body_rows[-1] - body_rows[0] + 1
        region = np.zeros(s.shape, dtype=bool)
        for r in range(body_rows[0], body_rows[0] + int(ANTERIOR_FRACTION * depth)):
            left = np.flatnonzero(lung[k, r, cx + 1 :])
            if left.size and lung[k, r, :cx].any():  # between the lungs, left of the midline
                region[r, cx + 2 : cx + 1 + left[0]] = True
        blood = s[region & (s >= VESSEL_MIN_HU) & (s <= BONE_HU) & ~dilate_inplane(s > BONE_HU)]
        if blood.size >= per_slice:
            values.append(np.partition(blood, blood.size - per_slice)[-per_slice:])
    if not values:
        return None
    return float(np.median(np.concatenate(values)))


def intracranial_enhancement_ml(
    grid: np.ndarray, anat: Anatomy, pixel_mm: float, slice_mm: float
) -> float:
    """Millilitres at :data:`ENHANCING_HU` (over 120 HU) in the tissue the skull ring encloses
    on the head slices (up to :data:`SKULL_HU`), two voxels in from the ring and from anything
    denser, and not beside bone in the slice above or below: contrast-filled vessels and
    sinuses as the model grid shows them (a 2-5 mm vessel averaged over a voxel and a slice:
    120-200 HU), and the rim of the larger ones. Not the skull base or the vertex cut by a
    thick slice: their bone's partial volume reaches 120-200 HU over whole areas next to bone
    one slice away (a real non-contrast head measured 5.1 ml with it, 0.9 without; phantom
    heads with a skull base up to 7.0 and 1.4; with contrast in the arteries and deep veins
    11.3 or more either way)."""
    if not anat.head.any():
        return 0.0
    head = grid[anat.head]
    soft = ~reachable(head <= SKULL_HU) & (head <= SKULL_HU)
    inside = erode_inplane(erode_inplane(soft))
    bone = dilate_inplane(grid > SKULL_HU)
    beside = np.zeros_like(bone)
    beside[1:] |= bone[:-1]
    beside[:-1] |= bone[1:]
    inside &= ~beside[anat.head]
    n = int((inside & (head >= ENHANCING_HU[0]) & (head <= ENHANCING_HU[1])).sum())
    return n * pixel_mm * pixel_mm * slice_mm / 1000.0


def _thickness(volume: Volume) -> float | None:
    if volume.slice_thickness and volume.slice_thickness > 0:
        return float(volume.slice_thickness)
    if len(volume.z_positions) > 1:
        return float(np.median(np.diff(volume.z_positions)))
    return None


# -- the checks ----------------------------------------------------------------------------------


CONTENT_GRID = 128  # in-plane size the content checks were calibrated at


def content_grid(grid: np.ndarray) -> np.ndarray:
    """``grid`` [z, y, x] block-averaged in plane to :data:`CONTENT_GRID` when it is a multiple
    of it (pe's 256 x 256), so the content checks judge every model's input at the resolution
    they were calibrated on: at 256 the partial-volume rim of bone is two voxels wide and no
    longer excluded, and the per-voxel noise doubles, both of which lift the "brightest blood"
    median of a poorly enhanced CTPA over the threshold."""
    nz, ny, nx = grid.shape
    ky, kx = ny // CONTENT_GRID, nx // CONTENT_GRID
    if ky <= 1 or kx <= 1 or ny % CONTENT_GRID or nx % CONTENT_GRID:
        return grid
    return grid.reshape(nz, CONTENT_GRID, ky, CONTENT_GRID, kx).mean(axis=(2, 4))


def _numbered_gap(
    instances: Sequence[Instance], volume: Volume, steps: np.ndarray
) -> dict[str, Any]:
    """The largest step over NUMBERED_GAP_FACTOR times the usual spacing across which the
    slices' InstanceNumbers jump, in a series whose numbers otherwise step by one: {} when
    there is none, or the numbers are unknown (frames of one image, slabs, numbers missing)."""
    numbers = [n if frame is None else None for n, frame in image_numbers(instances, volume)]
    if len(numbers) != steps.size + 1 or any(n is None for n in numbers):
        return {}
    jumps = np.abs(np.diff(np.asarray(numbers, dtype=np.int64)))
    usual = float(np.median(steps))
    if usual <= 0 or float(np.median(jumps)) != 1.0:
        return {}
    suspect = (jumps >= 2) & (steps > NUMBERED_GAP_FACTOR * usual)
    if not suspect.any():
        return {}
    k = int(np.argmax(np.where(suspect, steps, -1.0)))
    return {
        "numbers_missing": int(jumps[k]) - 1,
        "numbered_gap_after": k + 1,
        "numbered_gap_mm": float(steps[k]),
    }


def _fov(volume: Volume) -> float | None:
    """The image's larger side in mm (pixel spacing times pixels); None for an empty volume."""
    if volume.hu.ndim != 3 or not volume.shape[0]:
        return None
    (rows, cols), (dr, dc) = volume.hu.shape[1:], volume.pixel_spacing
    return float(max(rows * dr, cols * dc))


def measure(
    limits: InputLimits, instances: Sequence[Instance], volume: Volume, grid: np.ndarray
) -> InputFacts:
    """Everything :func:`check_input` judges, measured once."""
    modalities = sorted({(i.modality or "?").upper() for i in instances}) or ["?"]
    coverage = float(volume.z_positions[-1] - volume.z_positions[0]) if volume.shape[0] else 0.0
    steps = np.diff(np.asarray(volume.z_positions, dtype=np.float64))
    gaps: dict[str, Any] = {}
    if steps.size:
        k = int(np.argmax(steps))
        gaps = {
            "spacing_mm": float(np.median(steps)),
            "largest_gap_mm": float(steps[k]),
            "gap_after": k + 1,
        }
    if steps.size:
        gaps.update(_numbered_gap(instances, volume, steps))
    facts = InputFacts(
        modality="\\".join(modalities),
        slices=volume.shape[0],
        coverage_mm=coverage,
        slice_thickness_mm=_thickness(volume),
        fov_mm=_fov(volume),
        **gaps,
    )
    part = limits.body_part
    if part is None and limits.min_enhancement_hu is not None:
        part = "chest"
    if part is None and limits.max_intracranial_enhancing_ml is not None:
        part = "head"
    if part not in ("head", "chest"):
        return facts
    g = content_grid(grid)
    pixel_mm = volume.pixel_spacing[1] * volume.hu.shape[2] / g.shape[2]
    slice_mm = coverage / max(g.shape[0] - 1, 1)
    anat = anatomy(g, pixel_mm, chest=part == "chest")
    air, tissue = calibration(g, anat, part)
    enhancement = enhancing = None
    if limits.min_enhancement_hu is not None:
        enhancement = pulmonary_artery_enhancement(g, anat, pixel_mm)
    if limits.max_intracranial_enhancing_ml is not None:
        enhancing = intracranial_enhancement_ml(g, anat, pixel_mm, slice_mm)
    return replace(
        facts,
        body_width_mm=body_width_mm(g, anat, pixel_mm),
        air_hu=air,
        tissue_hu=tissue,
        head_slices=int(anat.head.sum()),
        skull_slices=int(anat.skull.sum()),
        chest_slices=int(anat.chest.sum()),
        grid_slices=int(g.shape[0]),
        enhancement_hu=enhancement,
        intracranial_enhancing_ml=enhancing,
    )


def _miscalibrated(part: str, facts: InputFacts, *, tissue: bool) -> str | None:
    air = facts.air_hu
    hint = "rescale intercept missing or scanner offset"
    if air is None:
        return f"HU scale not calibrated: no air at about -1000 HU around the body ({hint})"
    if air > AIR_MAX_HU:
        return (
            f"HU scale not calibrated: air around the body at {air:.0f} HU "
            f"(expected about -1000, at most {AIR_MAX_HU:g}; {hint})"
        )
    lo, hi = HEAD_TISSUE_HU if part == "head" else CHEST_TISSUE_HU
    what = "intracranial tissue median" if part == "head" else "soft tissue peak"
    value = facts.tissue_hu
    if tissue and value is not None and not lo <= value <= hi:
        return (
            f"HU scale not calibrated: {what} at {value:.0f} HU (expected {lo:g} to {hi:g}; {hint})"
        )
    return None


def _anatomy_problem(limits: InputLimits, facts: InputFacts) -> str | None:
    part, n = limits.body_part, facts.grid_slices or 0
    need = max(MIN_ANATOMY_SLICES, math.ceil(MIN_ANATOMY_FRACTION * n))
    width = facts.body_width_mm or 0.0
    seen = f"body width {width:.0f} mm"
    prefix = f"wrong body part: the {limits.model} model reads {part} CT"
    if part == "head":
        heads, rings = facts.head_slices or 0, facts.skull_slices or 0
        if heads < need:
            if rings >= need:
                return (
                    f"{prefix}; a closed skull ring is seen in {rings} of {n} slices but it "
                    f"encloses brain-density tissue in only {heads} (need {need}): not a head "
                    f"with a brain (a phantom?) ({seen})"
                )
            return (
                f"{prefix}; no closed skull ring around brain-density tissue in enough slices "
                f"({heads} of {n}, need {need}) ({seen})"
            )
        if width > HEAD_MAX_WIDTH_MM:
            return f"{prefix}; {seen} is wider than a head (<= {HEAD_MAX_WIDTH_MM:g} mm)"
    elif part == "chest":
        chests = facts.chest_slices or 0
        if chests < need:
            return (
                f"{prefix}; two lungs with a mediastinum between them in {chests} of {n} "
                f"slices (need {need}) ({seen})"
            )
        if width < CHEST_MIN_WIDTH_MM:
            return f"{prefix}; {seen} is narrower than a chest (>= {CHEST_MIN_WIDTH_MM:g} mm)"
    return None


def problems(limits: InputLimits, facts: InputFacts) -> list[str]:
    """Every reason the model may not judge this input (empty: it may)."""
    out: list[str] = []
    if facts.modality != "CT":
        out.append(f"modality {facts.modality}: the {limits.model} model takes CT only")
    t = facts.slice_thickness_mm
    lo, hi = limits.min_slice_thickness_mm, limits.max_slice_thickness_mm
    if t is not None and ((lo is not None and t < lo - 1e-6) or (hi is not None and t > hi + 1e-6)):
        spacing = facts.coverage_mm / (facts.slices - 1) if facts.slices > 1 else 0.0
        gapped = ""
        if lo is not None and t < lo and slabs.gapped(t, spacing, lo):
            gapped = (
                f"; slices every {spacing:.3g} mm with gaps between them, so they cannot be "
                f"averaged into thicker slabs"
            )
        out.append(
            f"slice thickness {t:g} mm outside the trained range "
            f"{lo if lo is not None else 0:g}-{hi if hi is not None else math.inf:g} mm{gapped}"
        )
    if limits.min_slices is not None and facts.slices < limits.min_slices:
        out.append(f"too few slices: {facts.slices} (need >= {limits.min_slices})")
    f, lo, hi = facts.fov_mm, limits.min_fov_mm, limits.max_fov_mm
    if f is not None and ((lo is not None and f < lo) or (hi is not None and f > hi)):
        out.append(
            f"field of view {f:.0f} mm outside the trained range "
            f"{lo if lo is not None else 0:g}-{hi if hi is not None else math.inf:g} mm (the "
            f"anatomy would reach the model at another scale than it was trained on)"
        )
    if limits.min_coverage_mm is not None and facts.coverage_mm < limits.min_coverage_mm:
        out.append(
            f"coverage {facts.coverage_mm:.0f} mm along the slice normal is too short "
            f"(need >= {limits.min_coverage_mm:g} mm)"
        )
    largest, usual = facts.largest_gap_mm, facts.spacing_mm
    if largest is not None and usual is not None and largest > max(GAP_FACTOR * usual, MIN_GAP_MM):
        out.append(
            f"incomplete series: a gap of {largest:.0f} mm between slices {facts.gap_after} "
            f"and {(facts.gap_after or 0) + 1} from the bottom, where the slices are "
            f"{usual:.3g} mm apart (images missing; they are not interpolated)"
        )
    elif facts.numbers_missing and usual is not None:
        below = facts.numbered_gap_after or 0
        out.append(
            f"incomplete series: {facts.numbers_missing} image number(s) missing between "
            f"slices {below} and {below + 1} from the bottom, a gap of "
            f"{facts.numbered_gap_mm or 0.0:.1f} mm where the slices are {usual:.3g} mm apart "
            f"(images missing; they are not interpolated)"
        )
    if facts.grid_slices is None or facts.modality != "CT":
        return out  # content not measured (no body part), or not CT: nothing more to judge
    part = limits.body_part or ("chest" if limits.min_enhancement_hu is not None else "head")
    # air first (no anatomy needed); the reference tissue once the body part is found - or,
    # for a head, once the skull ring is (brain shifted out of its window is a calibration
    # fault, not another body part)
    need = max(MIN_ANATOMY_SLICES, math.ceil(MIN_ANATOMY_FRACTION * facts.grid_slices))
    wrong_part = _anatomy_problem(limits, facts) if limits.body_part else None
    shaped = wrong_part is None or (part == "head" and (facts.skull_slices or 0) >= need)
    wrong = _miscalibrated(part, facts, tissue=shaped)
    if wrong:
        out.append(wrong + "; anatomy and contrast not judged")
        return out
    if wrong_part:
        out.append(wrong_part)
        return out  # the other content checks assume the body part
    if limits.min_enhancement_hu is not None:
        e = facts.enhancement_hu
        if e is None:
            out.append(
                "pulmonary artery enhancement cannot be measured (pulmonary trunk not found "
                "above the heart)"
            )
        elif e < limits.min_enhancement_hu:
            out.append(
                f"pulmonary artery enhancement too low: median {e:.0f} HU in the brightest "
                f"blood of the pulmonary trunk and main arteries (need >= "
                f"{limits.min_enhancement_hu:g} HU; non-contrast, or bolus not timed to the "
                "pulmonary arteries)"
            )
    ml = facts.intracranial_enhancing_ml
    limit = limits.max_intracranial_enhancing_ml
    if limit is not None and ml is not None and ml > limit:
        out.append(
            f"contrast-enhanced head CT: {ml:.1f} ml inside the skull at "
            f"{ENHANCING_HU[0]:g}-{ENHANCING_HU[1]:g} HU (arteries and venous sinuses with "
            f"contrast, limit {limits.max_intracranial_enhancing_ml:g} ml: the "
            f"{limits.model} model reads non-contrast CT)"
        )
    return out


def check_input(
    limits: InputLimits, instances: Sequence[Instance], volume: Volume, grid: np.ndarray
) -> InputFacts:
    """Raise NotAssessable with every reason that applies; return the measurements otherwise.

    ``instances`` are the selected series' rows, ``volume`` that series in HU, ``grid`` the
    volume resampled to the model input (the content checks run on it: cheap, and already
    smoothed in-plane).
    """
    facts = measure(limits, instances, volume, grid)
    found = problems(limits, facts)
    if found:
        raise NotAssessable("not assessable by " + limits.model + ": " + "; ".join(found), found)
    return facts
