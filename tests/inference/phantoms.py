"""Small numpy phantoms on the models' input grids (HU, inferior -> superior): head at
64 x 128 x 128, chest at the pe grid 64 x 256 x 256 (drawn at 128, each voxel repeated 2 x 2).

Geometry assumes ~1.8 mm in-plane and 2.5 mm between slices, a typical resampled head/chest FOV.
"""

from __future__ import annotations

import numpy as np

from triage.synth.ct import model_shape

SHAPE = (64, 128, 128)
PE_SHAPE = model_shape("pe")
PIXEL_MM = 1.8
SLICE_MM = 2.5


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.meshgrid(
        np.arange(SHAPE[0], dtype=np.float32),
        np.arange(SHAPE[1], dtype=np.float32),
        np.arange(SHAPE[2], dtype=np.float32),
        indexing="ij",
    )
    return z, y, x


def head_ct(
    *,
    lesion_diameter_mm: float | None = None,
    lesion_hu: float = 65.0,
    brain_hu: float = 35.0,
    noise_hu: float = 5.0,
    seed: int = 0,
) -> np.ndarray:
    """Ellipsoid head: skin 40 HU, ~1000 HU skull, brain, optional intraparenchymal lesion."""
    rng = np.random.default_rng(seed)
    z, y, x = _grid()
    # normalised ellipsoid radius of the outer surface (semi-axes in voxels)
    r = np.sqrt(((z - 32) / 28) ** 2 + ((y - 64) / 54) ** 2 + ((x - 64) / 46) ** 2)
    vol = np.full(SHAPE, -1000.0, dtype=np.float32)
    vol[r < 1.0] = 40.0  # scalp
    vol[r < 0.96] = 1000.0  # skull (~2-3 voxels)
    vol[r < 0.90] = brain_hu
    if lesion_diameter_mm:
        rad = lesion_diameter_mm / 2
        cz, cy, cx = 36, 52, 78  # right frontal-parietal, well inside the brain
        d = np.sqrt(
            ((z - cz) * SLICE_MM) ** 2 + ((y - cy) * PIXEL_MM) ** 2 + ((x - cx) * PIXEL_MM) ** 2
        )
        vol[d <= rad] = lesion_hu
    vol += rng.normal(0.0, noise_hu, SHAPE).astype(np.float32)
    return vol


def chest_cta(*, clot: bool = False, noise_hu: float = 10.0, seed: int = 0) -> np.ndarray:
    """Chest: soft tissue 40 HU, lungs -850 HU, spine ~1000 HU, two contrast-filled (~350 HU)
    pulmonary arteries running along z; optional 40 HU thrombus in the centre of one artery."""
    rng = np.random.default_rng(seed)
    z, y, x = _grid()
    vol = np.full(SHAPE, -1000.0, dtype=np.float32)
    body = ((y - 64) / 50) ** 2 + ((x - 64) / 60) ** 2 < 1.0
    vol[body] = 40.0
    for cx in (38, 90):  # lungs
        vol[((y - 60) / 34) ** 2 + ((x - cx) / 22) ** 2 < 1.0] = -850.0
    vol[(y - 104) ** 2 + (x - 64) ** 2 < 8**2] = 1000.0  # vertebral body
    for cx in (38, 90):  # pulmonary arteries, radius 6 voxels (~11 mm)
        vol[(y - 58) ** 2 + (x - cx) ** 2 < 6**2] = 350.0
    if clot:
        sel = ((y - 58) ** 2 + (x - 90) ** 2 < 3**2) & (z >= 24) & (z < 36)
        vol[sel] = 40.0
    k = PE_SHAPE[1] // SHAPE[1]
    vol = np.repeat(np.repeat(vol, k, axis=1), k, axis=2)
    vol += rng.normal(0.0, noise_hu, vol.shape).astype(np.float32)
    return vol
