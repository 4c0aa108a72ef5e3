"""In-plane mask morphology shared by the input checks (:mod:`triage.inference.checks`) and
the training augmentation (:mod:`triage.training.augment`)."""

from __future__ import annotations

import numpy as np


def dilate_inplane(mask: np.ndarray) -> np.ndarray:
    """``mask`` (boolean, [..., y, x]) and each voxel's four in-plane neighbours: one step of
    an in-plane dilation; nothing crosses slices or the image border."""
    out = mask.copy()
    out[..., 1:, :] |= mask[..., :-1, :]
    out[..., :-1, :] |= mask[..., 1:, :]
    out[..., :, 1:] |= mask[..., :, :-1]
    out[..., :, :-1] |= mask[..., :, 1:]
    return out


def erode_inplane(mask: np.ndarray) -> np.ndarray:
    """``mask`` where a voxel and its four in-plane neighbours are all set: one step of an
    in-plane erosion (a voxel on the image border keeps only the neighbours it has)."""
    out = mask.copy()
    out[..., 1:, :] &= mask[..., :-1, :]
    out[..., :-1, :] &= mask[..., 1:, :]
    out[..., :, 1:] &= mask[..., :, :-1]
    out[..., :, :-1] &= mask[..., :, 1:]
    return out
