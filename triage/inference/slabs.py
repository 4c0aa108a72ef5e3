"""Thin slices read as thicker slabs, as a radiologist reads a thin-slice series.

Sites send head CTs at 0.625-1 mm and CTPAs at 0.5-0.8 mm as often as at the thicknesses a
model was trained on (its contract's ``min_slice_thickness_mm``). Such a series is not refused:
consecutive slices are averaged into slabs just thick enough for the model - the same thing a
scanner does when it reconstructs a thicker series from the same data (the noise falls with
the square root of the slices averaged, the partial volume grows as for a thicker slice).
A slab stands at the mean position of its slices and keeps the middle slice's file as its
source, so the key slice still names an acquired image.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from triage.inference.volume import Volume


def slab_size(thickness: float, spacing: float, minimum: float) -> int:
    """Slices per slab so that the slab (``k - 1`` spacings plus one slice thickness) is at
    least ``minimum`` mm thick; 1 when the slices already are."""
    if thickness >= minimum or spacing <= 0:
        return 1
    return max(1, math.ceil((minimum - thickness) / spacing - 1e-6) + 1)


def gapped(thickness: float, spacing: float, minimum: float) -> bool:
    """Thin slices too far apart to be averaged into slabs: spacing over 1.5 x their
    thickness and over ``minimum`` (1 mm slices every 5 mm are not one thicker slice)."""
    return spacing > max(1.5 * thickness, minimum)


def slab_starts(n: int, k: int) -> list[int]:
    """First slice of each slab of ``k`` out of ``n``: back to back from the bottom; when
    ``k`` does not divide ``n``, a last slab ends on the top slice (overlapping the one below
    it), so that no slice is left out."""
    starts = list(range(0, n - k + 1, k))
    if starts and starts[-1] + k < n:
        starts.append(n - k)
    return starts


def thicken(volume: Volume, minimum: float | None) -> tuple[Volume, int]:
    """``volume`` as slabs at least ``minimum`` mm thick, and the slices per slab (1: the
    volume itself, unchanged, when its slices are thick enough, ``minimum`` is None, the
    slices lie far apart - spacing over 1.5 x their thickness and over ``minimum`` - or too
    few slices would remain)."""
    z = volume.z_positions
    if minimum is None or len(z) < 2:
        return volume, 1
    spacing = float(np.median(np.diff(z)))
    thickness = volume.slice_thickness if volume.slice_thickness else spacing
    if gapped(float(thickness), spacing, float(minimum)):
        # no slab of neighbours stands for one thicker slice; the checks judge it as it is
        return volume, 1
    k = slab_size(float(thickness), spacing, float(minimum))
    if k <= 1 or len(z) < 2 * k:
        return volume, 1
    starts = slab_starts(len(z), k)
    hu = np.empty((len(starts), *volume.hu.shape[1:]), dtype=np.float32)
    for i, s in enumerate(starts):
        hu[i] = volume.hu[s : s + k].mean(axis=0, dtype=np.float32)
    slab = replace(
        volume,
        hu=hu,
        z_positions=np.array([z[s : s + k].mean() for s in starts], dtype=np.float64),
        slice_thickness=float(thickness) + (k - 1) * spacing,
        paths=[volume.paths[s + k // 2] for s in starts] if volume.paths else [],
    )
    return slab, k
