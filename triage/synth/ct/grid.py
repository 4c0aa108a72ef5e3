"""The patient-space grid and the painting primitives the head and CTPA phantoms share: model
grids, voxel coordinates, index boxes, ellipsoids and capsules, the lesion record and the random
draws. Coordinates are LPS millimetres, slices axial, arrays [z, y, x]."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Task = Literal["ich", "pe"]

RESCALE_INTERCEPT = -1024.0
RESCALE_SLOPE = 1.0
HU_MIN, HU_MAX = -1024.0, 3071.0
AIR_HU = -1000.0
# Each task's model input grid (its config.pbtxt "volume" dims): pe needs the finer in-plane
# grid, segmental and subsegmental emboli being 1-3 voxels wide at 128.
MODEL_SHAPES: dict[str, tuple[int, int, int]] = {"ich": (64, 128, 128), "pe": (64, 256, 256)}
# The in-memory path paints at 512 in plane, the DICOM matrix, and area-averages to the model
# grid, as the engine averages a 512 x 512 series: partial-volume values at edges (bone,
# calcification, contrast against lung) then match what the engine sees. Painted at 256 for a
# 128 grid, edge voxels only took quarter steps between the two tissues, and a network trained
# on them flagged calcifications in real 512 x 512 series.
PAINT_SIZE = 512


# How each task's slices reach the model's z grid (its config.pbtxt "z_resampling"): pe takes
# the nearest acquired slice as it is (a clot a few mm long keeps its own HU instead of being
# blended with the next slice's contrast: tuning-range AUC 0.917 -> 0.935, docs/models.md);
# ich keeps the linear interpolation it was trained with.
MODEL_Z_RESAMPLING: dict[str, str] = {"ich": "linear", "pe": "nearest"}


def model_shape(task: str) -> tuple[int, int, int]:
    """The model input grid [z, y, x] of ``task``."""
    return MODEL_SHAPES[task]


def z_resampling(task: str) -> str:
    """How ``task``'s slices are resampled along z (:func:`triage.inference.volume.resample`)."""
    return MODEL_Z_RESAMPLING[task]


@dataclass(frozen=True)
class Lesion:
    """One painted lesion: kind, size and where (mm, patient LPS)."""

    kind: str
    size_mm: float  # characteristic size drawn (diameter / thickness)
    volume_ml: float  # painted volume on the grid (each slice standing for its slab)
    centre_mm: tuple[float, float, float]


def equivalent_diameter(volume_ml: float) -> float:
    """Diameter (mm) of a sphere of ``volume_ml`` millilitres."""
    return float((6.0 * volume_ml * 1000.0 / math.pi) ** (1.0 / 3.0)) if volume_ml > 0 else 0.0


@dataclass(frozen=True)
class Grid:
    """Voxel centres in patient coordinates (mm). Broadcastable: x (1,1,W), y (1,H,1),
    z (N,1,1). Row index grows with y (posterior), column index with x (patient left)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    spacing: float
    thickness: float

    @classmethod
    def axial(cls, size: int, fov_mm: float, n_slices: int, thickness: float, z0: float) -> Grid:
        z = z0 + np.arange(n_slices, dtype=np.float32) * thickness
        return cls.at(size, fov_mm, z, thickness)

    @classmethod
    def at(cls, size: int, fov_mm: float, z: np.ndarray, thickness: float) -> Grid:
        spacing = fov_mm / size
        coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2) * spacing
        return cls(
            x=coords[None, None, :],
            y=coords[None, :, None],
            z=np.asarray(z, dtype=np.float32)[:, None, None],
            spacing=spacing,
            thickness=thickness,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z.shape[0], self.y.shape[1], self.x.shape[2])

    def slab_mm(self) -> np.ndarray:
        """The length along z each slice stands for: its thickness on a contiguous grid; on
        a subset of slices (the in-memory path paints only those the resampling reads) half
        the gap to each painted neighbour, so that volumes measured on it are not those of
        the painted slices alone."""
        z = self.z[:, 0, 0].astype(np.float64)
        if len(z) < 2:
            return np.full(len(z), self.thickness)
        gaps = np.diff(z)
        below = np.concatenate([[self.thickness], gaps])
        above = np.concatenate([gaps, [self.thickness]])
        return (below + above) / 2.0


Box = tuple[slice, slice, slice]


def grid_box(g: Grid, lo: Sequence[float], hi: Sequence[float]) -> Box | None:
    """Index slices of the voxels whose centres lie in [lo, hi] (x, y, z mm), or None."""
    out = []
    for axis, a, b in (
        (g.z[:, 0, 0], lo[2], hi[2]),
        (g.y[0, :, 0], lo[1], hi[1]),
        (g.x[0, 0, :], lo[0], hi[0]),
    ):
        i0 = int(np.searchsorted(axis, a, side="left"))
        i1 = int(np.searchsorted(axis, b, side="right"))
        if i1 <= i0:
            return None
        out.append(slice(i0, i1))
    return (out[0], out[1], out[2])


def grid_coords(g: Grid, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return g.x[:, :, box[2]], g.y[:, box[1], :], g.z[box[0], :, :]


def ellipsoid_in(
    g: Grid,
    centre: Sequence[float],
    axes: Sequence[float],
    angle: float = 0.0,
) -> tuple[Box, np.ndarray] | None:
    """(box, local mask) of an ellipsoid, rotated by ``angle`` (radians) about z."""
    r = max(axes[0], axes[1])
    box = grid_box(
        g,
        (centre[0] - r, centre[1] - r, centre[2] - axes[2]),
        (centre[0] + r, centre[1] + r, centre[2] + axes[2]),
    )
    if box is None:
        return None
    x, y, z = grid_coords(g, box)
    dx, dy = x - centre[0], y - centre[1]
    c, s = math.cos(angle), math.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    m = (u / axes[0]) ** 2 + (v / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2 <= 1.0
    return box, m


def capsule_in(
    g: Grid, p0: Sequence[float], p1: Sequence[float], radius: float
) -> tuple[Box, np.ndarray, np.ndarray] | None:
    """(box, local mask, position 0..1 along the axis) of a cylinder with round ends."""
    a, b = np.asarray(p0, dtype=np.float32), np.asarray(p1, dtype=np.float32)
    box = grid_box(g, list(np.minimum(a, b) - radius), list(np.maximum(a, b) + radius))
    if box is None:
        return None
    x, y, z = grid_coords(g, box)
    d = b - a
    dd = float(d @ d) or 1e-6
    t = ((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / dd
    t = np.clip(t, 0.0, 1.0)
    dist2 = (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2 + (z - a[2] - t * d[2]) ** 2
    return box, dist2 <= radius * radius, t


def full_mask(g: Grid, box: Box, local: np.ndarray) -> np.ndarray:
    out = np.zeros(g.shape, dtype=bool)
    out[box] = local
    return out


def union_box(boxes: Sequence[Box]) -> Box | None:
    """The smallest box holding every box of ``boxes`` (None when there is none)."""
    if not boxes:
        return None
    return (
        slice(min(b[0].start for b in boxes), max(b[0].stop for b in boxes)),
        slice(min(b[1].start for b in boxes), max(b[1].stop for b in boxes)),
        slice(min(b[2].start for b in boxes), max(b[2].stop for b in boxes)),
    )


def mask_on(target: Box, box: Box, local: np.ndarray) -> np.ndarray:
    """``local`` (a mask over ``box``) as seen on ``target``: False where ``box`` is not."""
    out = np.zeros(tuple(s.stop - s.start for s in target), dtype=bool)
    into, src = [], []
    for t, b in zip(target, box, strict=True):
        lo, hi = max(t.start, b.start), min(t.stop, b.stop)
        if hi <= lo:
            return out
        into.append(slice(lo - t.start, hi - t.start))
        src.append(slice(lo - b.start, hi - b.start))
    out[tuple(into)] = local[tuple(src)]
    return out


def slices_with(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) + 1 for i in np.flatnonzero(mask.any(axis=(1, 2))))


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def measure_lesion(g: Grid, kind: str, size: float, m: np.ndarray) -> Lesion:
    n = int(m.sum())
    if n:
        zi, yi, xi = (float(a.mean()) for a in np.nonzero(m))
        centre = (
            float(g.x[0, 0, 0]) + xi * g.spacing,
            float(g.y[0, 0, 0]) + yi * g.spacing,
            float(np.interp(zi, np.arange(g.shape[0]), g.z[:, 0, 0])),
        )
    else:
        centre = (0.0, 0.0, 0.0)
    per_slice = m.sum(axis=(1, 2), dtype=np.int64)
    volume_ml = float(per_slice @ g.slab_mm()) * g.spacing * g.spacing / 1000.0
    return Lesion(kind=kind, size_mm=round(size, 2), volume_ml=volume_ml, centre_mm=centre)


def block_mean(a: np.ndarray, s: int) -> np.ndarray:
    """Means of the s x s in-plane blocks of float32 ``a`` [k, H, W] -> [k, H/s, W/s]: each row
    of a block summed left to right, the row sums added top to bottom, divided by s*s. The
    same values as ``a.reshape(k, H/s, s, W/s, s).mean(axis=(2, 4))`` with today's NumPy, in a
    fixed order of our own, without a generic reduction over two short axes."""
    k, h, w = a.shape
    r = a.reshape(k, h // s, s, w // s, s)
    total: np.ndarray | None = None
    for i in range(s):
        row = r[:, :, i, :, 0].copy() if s == 1 else np.add(r[:, :, i, :, 0], r[:, :, i, :, 1])
        for j in range(2, s):
            row += r[:, :, i, :, j]
        if total is None:
            total = row
        else:
            total += row
    assert total is not None
    total /= np.float32(s * s)
    return total
