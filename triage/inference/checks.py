"""Input checks: may this model judge this series at all? Plain functions, run before any claim.

A model only says something about studies like those it was validated on. Before a volume is
sent to a model, :func:`check_input` looks at the selected series' metadata and at the volume
(in Hounsfield units, on the model grid) and raises :class:`~triage.errors.NotAssessable` with
every reason that applies - never a silent "negative":

- **modality**: CT only (an MR or any other modality never reaches a CT model);
- **body part** (``body_part`` parameter, ``head`` or ``chest``), judged from the image content,
  not from header tags (they are often missing or generic): the body's width in the axial plane
  and the share of air-filled lung inside the body. A head is narrow (<= 260 mm) and a chest is
  wide (>= 240 mm) with lungs (>= 8 % of the body's cross-section);
- **slice thickness** outside ``[min_slice_thickness_mm, max_slice_thickness_mm]`` (SliceThickness,
  else the median slice spacing);
- **too few slices** (``min_slices``) or too short a coverage along the slice normal
  (``min_coverage_mm``);
- **CTPA enhancement** (``min_enhancement_hu``): the median HU of the brightest part of the
  mediastinal blood pool (heart and great vessels, between the lungs, spine and bone excluded)
  must reach the threshold (~200 HU): a non-contrast chest CT or a mistimed bolus is not
  assessable for embolism, whatever the model would answer.

The limits come from the model contract's ``config.pbtxt`` ``parameters`` (see models/README.md);
a missing parameter skips that check (logged once per model). The thresholds of the content
checks are heuristics calibrated on the synthetic phantoms and on the real head and chest CTs
of the shared test data; they are documented here and tested, not clinically validated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from triage.errors import NotAssessable
from triage.inference.volume import Volume
from triage.store.models import Instance

log = logging.getLogger(__name__)

BODY_HU = -500.0  # above: patient (or table); below: air
LUNG_HU = (-950.0, -400.0)  # aerated lung after in-plane averaging
HEAD_MAX_WIDTH_MM = 260.0
CHEST_MIN_WIDTH_MM = 240.0
CHEST_MIN_LUNG_FRACTION = 0.08
BONE_HU = 700.0  # cortical bone and dense calcification: never "vessel"
VESSEL_MIN_HU = 0.0  # fat and air are below
BRIGHTEST_QUANTILE = 0.8  # the brightest 20 % of the mediastinal soft tissue
MIN_MEDIASTINUM_VOXELS = 40

_warned: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class InputLimits:
    """What a model was validated on, from its contract parameters (None: not checked)."""

    model: str
    body_part: str | None = None  # "head" or "chest"
    min_slice_thickness_mm: float | None = None
    max_slice_thickness_mm: float | None = None
    min_slices: int | None = None
    min_coverage_mm: float | None = None
    min_enhancement_hu: float | None = None

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
            min_enhancement_hu=num("min_enhancement_hu"),
        )


@dataclass(frozen=True)
class InputFacts:
    """What the checks measured (reported with a not-assessable result and in logs)."""

    modality: str
    slices: int
    coverage_mm: float
    slice_thickness_mm: float | None
    body_width_mm: float | None
    lung_fraction: float | None
    enhancement_hu: float | None = None


# -- measurements -------------------------------------------------------------------------------


def _inside(body: np.ndarray) -> np.ndarray:
    """Pixels between the first and last body pixel of their row AND of their column."""
    inside_rows = np.zeros_like(body)
    inside_cols = np.zeros_like(body)
    rows = np.flatnonzero(body.any(axis=1))
    for r in rows:
        c = np.flatnonzero(body[r])
        inside_rows[r, c[0] : c[-1] + 1] = True
    for c in np.flatnonzero(body.any(axis=0)):
        r = np.flatnonzero(body[:, c])
        inside_cols[r[0] : r[-1] + 1, c] = True
    return inside_rows & inside_cols


def body_metrics(grid: np.ndarray, column_mm: float) -> tuple[float, float]:
    """(body width in mm, lung fraction) of the central slices of ``grid`` ([z, y, x] HU).

    Width: per slice, the 80th percentile of the body's extent over the rows it spans (a thin
    table or head holder barely moves it); the median over the central half of the slices.
    Lung fraction: aerated-lung pixels over pixels inside the body outline, same slices.
    """
    nz = grid.shape[0]
    lo, hi = nz // 4, max(nz // 4 + 1, (3 * nz) // 4)
    widths: list[float] = []
    fractions: list[float] = []
    for s in grid[lo:hi]:
        body = s > BODY_HU
        rows = np.flatnonzero(body.any(axis=1))
        if rows.size == 0:
            continue
        extents = []
        for r in rows:
            c = np.flatnonzero(body[r])
            extents.append(c[-1] - c[0] + 1)
        widths.append(float(np.percentile(extents, 80)) * column_mm)
        inside = _inside(body)
        lung = inside & (s > LUNG_HU[0]) & (s < LUNG_HU[1])
        fractions.append(float(lung.sum()) / max(int(inside.sum()), 1))
    if not widths:
        return 0.0, 0.0
    return float(np.median(widths)), float(np.median(fractions))


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def mediastinal_enhancement(grid: np.ndarray) -> float | None:
    """Median HU of the brightest mediastinal blood pool of a chest ``grid`` ([z, y, x] HU).

    Per central slice with lungs: the box between the lungs (middle 40 % of the lungs' left-right
    extent, anterior 60 % of their front-back extent, which leaves out the spine); there, soft
    tissue and blood (0-700 HU) not touching bone (> 700 HU). The answer is the median of the
    brightest 20 % of those voxels over all such slices: contrast-filled heart, pulmonary trunk
    and aorta (~250-450 HU on a CTPA) against ~40 HU blood without contrast. None when no
    mediastinum can be found (no lungs).
    """
    nz = grid.shape[0]
    values: list[np.ndarray] = []
    for s in grid[nz // 5 : max(nz // 5 + 1, (4 * nz) // 5)]:
        body = s > BODY_HU
        lung = _inside(body) & (s > LUNG_HU[0]) & (s < LUNG_HU[1])
        if lung.sum() < 0.04 * s.size:
            continue
        ys, xs = np.nonzero(lung)
        x0, x1 = np.percentile(xs, [5, 95])
        y0, y1 = np.percentile(ys, [5, 95])
        c0, c1 = int(x0 + 0.3 * (x1 - x0)), math.ceil(x0 + 0.7 * (x1 - x0))
        r0, r1 = int(y0), math.ceil(y0 + 0.6 * (y1 - y0))
        if c1 <= c0 or r1 <= r0:
            continue
        box = s[r0:r1, c0:c1]
        near_bone = _dilate(box > BONE_HU)
        soft = (box >= VESSEL_MIN_HU) & (box <= BONE_HU) & ~near_bone
        values.append(box[soft])
    if not values:
        return None
    pool = np.concatenate(values)
    if pool.size < MIN_MEDIASTINUM_VOXELS:
        return None
    top = pool[pool >= np.quantile(pool, BRIGHTEST_QUANTILE)]
    return float(np.median(top))


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


def measure(
    limits: InputLimits, instances: Sequence[Instance], volume: Volume, grid: np.ndarray
) -> InputFacts:
    """Everything :func:`check_input` judges, measured once."""
    modalities = sorted({(i.modality or "?").upper() for i in instances}) or ["?"]
    coverage = float(volume.z_positions[-1] - volume.z_positions[0]) if volume.shape[0] else 0.0
    width = lung = enhancement = None
    if limits.body_part or limits.min_enhancement_hu is not None:
        grid = content_grid(grid)
        column_mm = volume.pixel_spacing[1] * volume.hu.shape[2] / grid.shape[2]
        width, lung = body_metrics(grid, column_mm)
    if limits.min_enhancement_hu is not None:
        enhancement = mediastinal_enhancement(grid)
    return InputFacts(
        modality="\\".join(modalities),
        slices=volume.shape[0],
        coverage_mm=coverage,
        slice_thickness_mm=_thickness(volume),
        body_width_mm=width,
        lung_fraction=lung,
        enhancement_hu=enhancement,
    )


def problems(limits: InputLimits, facts: InputFacts) -> list[str]:
    """Every reason the model may not judge this input (empty: it may)."""
    out: list[str] = []
    if facts.modality != "CT":
        out.append(f"modality {facts.modality}: the {limits.model} model takes CT only")
    if limits.body_part and facts.body_width_mm is not None and facts.lung_fraction is not None:
        width, lung = facts.body_width_mm, facts.lung_fraction
        seen = f"body width {width:.0f} mm, aerated lung {100 * lung:.0f}% of the cross-section"
        if limits.body_part == "head" and width > HEAD_MAX_WIDTH_MM:
            out.append(f"wrong body part: the {limits.model} model reads head CT ({seen})")
        elif limits.body_part == "chest" and (
            width < CHEST_MIN_WIDTH_MM or lung < CHEST_MIN_LUNG_FRACTION
        ):
            out.append(f"wrong body part: the {limits.model} model reads chest CT ({seen})")
    t = facts.slice_thickness_mm
    lo, hi = limits.min_slice_thickness_mm, limits.max_slice_thickness_mm
    if t is not None and ((lo is not None and t < lo - 1e-6) or (hi is not None and t > hi + 1e-6)):
        out.append(
            f"slice thickness {t:g} mm outside the validated range "
            f"{lo if lo is not None else 0:g}-{hi if hi is not None else math.inf:g} mm"
        )
    if limits.min_slices is not None and facts.slices < limits.min_slices:
        out.append(f"too few slices: {facts.slices} (need >= {limits.min_slices})")
    if limits.min_coverage_mm is not None and facts.coverage_mm < limits.min_coverage_mm:
        out.append(
            f"coverage {facts.coverage_mm:.0f} mm along the slice normal is too short "
            f"(need >= {limits.min_coverage_mm:g} mm)"
        )
    if limits.min_enhancement_hu is not None and not any("body part" in p for p in out):
        e = facts.enhancement_hu
        if e is None:
            out.append("pulmonary artery enhancement cannot be measured (no mediastinum found)")
        elif e < limits.min_enhancement_hu:
            out.append(
                f"pulmonary artery enhancement too low: median {e:.0f} HU in the brightest "
                f"mediastinal vessels (need >= {limits.min_enhancement_hu:g} HU; "
                "non-contrast or mistimed bolus)"
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
        raise NotAssessable("not assessable by " + limits.model + ": " + "; ".join(found))
    return facts
