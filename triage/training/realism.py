"""How a head CT's brain changes toward its skull: the measure that tells our phantoms from a
real head (docs/models.md, "What a real skull leaves inside it").

:func:`edge_profile` takes a volume on the model grid [z, y, x] in HU and gives, for each
in-plane distance 1..``reach`` voxels from bone (> 300 HU) inside the skull, the median of
the brain-density voxels (-50..150 HU) at that distance minus the median of those farther
in (the core). A real head (the GE head CT of the shared data, resliced to 5 mm, on the 128
grid) is +28 HU two voxels from the bone, +14 at four, +8 at eight; generator-3 phantoms are
+5..13 at two and flat by six, and a network trained on them reads the real edge as blood.
Generator 4 draws the skull's glare (:func:`triage.synth.ct.scanner.skull_glare`), fitted so
that its phantoms' median profile lies within 6 HU of the real one at 2..8 voxels
(tests/training/test_realism.py). Synthetic phantoms; not for clinical use.
"""

from __future__ import annotations

import numpy as np

from triage.training.augment import bone_distance, inside_skull

BRAIN_HU = (-50.0, 150.0)


def edge_profile(hu: np.ndarray, reach: int = 12) -> np.ndarray:
    """[reach] HU: median brain-density HU at in-plane distance d = 1..``reach`` voxels from
    bone inside the skull, minus the core's median (NaN where a distance has no voxel)."""
    hu = np.asarray(hu, dtype=np.float32)
    brainish = inside_skull(hu) & (hu > BRAIN_HU[0]) & (hu < BRAIN_HU[1])
    dist = bone_distance(hu, reach)
    medians = np.full(reach, np.nan, np.float64)
    for d in range(1, reach + 1):
        ring = brainish & (dist == d)
        if ring.any():
            medians[d - 1] = float(np.median(hu[ring]))
    core = hu[brainish & (dist == 0)]  # beyond reach (bone is not brain-density)
    if core.size == 0:
        return np.full(reach, np.nan, np.float64)
    return medians - float(np.median(core))
