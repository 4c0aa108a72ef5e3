"""The in-memory path: a phantom directly on the model grid, as the engine sees a 512 x 512
series after its area average and z resampling. Training and validation use it (no DICOM to
write and read back)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from triage.synth.ct.grid import (
    HU_MAX,
    HU_MIN,
    PAINT_SIZE,
    Grid,
    Lesion,
    block_mean,
    equivalent_diameter,
    model_shape,
    z_resampling,
)
from triage.synth.ct.scanner import coarse_cells, coarse_noise, coarse_side, noise_sigma, render
from triage.synth.ct.spec import PhantomSpec, z_positions


@dataclass(frozen=True)
class ModelSample:
    """One study on the model grid (in-memory path).

    ``volume``: HU float32 [z, y, x], inferior -> superior. ``lesion``: float32 fraction of
    each model voxel covered by lesion (0..1). ``lesion_size_mm``: equivalent-sphere
    diameter of all lesion volume (0 for negatives).
    """

    spec: PhantomSpec
    seed: int
    volume: np.ndarray
    lesion: np.ndarray
    lesions: tuple[Lesion, ...]

    @property
    def label(self) -> bool:
        return self.spec.label

    @property
    def lesion_size_mm(self) -> float:
        return equivalent_diameter(sum(les.volume_ml for les in self.lesions))


def block_fraction(mask: np.ndarray, s: int) -> np.ndarray:
    """The fraction of True in each s x s in-plane block of boolean ``mask`` [k, H, W], float32
    (exact: a count over s*s)."""
    k, h, w = mask.shape
    r = mask.view(np.uint8).reshape(k, h // s, s, w // s, s)
    count = np.zeros((k, h // s, w // s), dtype=np.uint16)
    for i in range(s):
        for j in range(s):
            count += r[:, :, i, :, j]
    return count.astype(np.float32) / np.float32(s * s)


def model_sample(
    spec: PhantomSpec,
    seed: int,
    shape: tuple[int, int, int] | None = None,
    supersample: int | None = None,
) -> ModelSample:
    """The study of ``spec``/``seed`` on the model grid, without writing DICOM.

    Only the acquisition slices that :func:`triage.inference.volume.resample` reads (for the
    task's z resampling) are painted (at ``supersample`` x the model's in-plane resolution, by
    default the 512 DICOM matrix, then block-averaged); noise is added as it is after the
    engine's area average of a 512 matrix (per-pixel sigma x size/512, plus the shared coarse
    component).
    ``shape`` defaults to the task's model grid (:data:`MODEL_SHAPES`).
    """
    from triage.inference.volume import Volume, resample, z_support

    shape = shape or model_shape(spec.task)
    nz, ny, nx = shape
    if ny != nx:
        raise ValueError("the in-memory path needs a square in-plane model grid")
    if supersample is None:
        supersample = max(1, PAINT_SIZE // nx)
    z_all = z_positions(spec)
    z_mode = z_resampling(spec.task)
    needed = z_support(z_all, nz, z_mode)
    g = Grid.at(nx * supersample, spec.fov_mm, z_all[needed], spec.slice_thickness)
    vol, mask, lesions = render(spec, seed, g)
    vol = block_mean(vol, supersample)
    frac = block_fraction(mask, supersample)
    rng = np.random.default_rng([seed, 1, 0])
    sigma = noise_sigma(spec) * nx / 512.0
    vol += rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(sigma)
    vol += coarse_cells(coarse_noise(spec, seed, len(z_all), coarse_side(nx))[needed], nx)
    np.clip(np.rint(vol), HU_MIN, HU_MAX, out=vol)
    zpos = z_all[needed].astype(np.float64)

    def on_model_grid(a: np.ndarray) -> np.ndarray:
        v = Volume(
            hu=a.astype(np.float32),
            z_positions=zpos,
            pixel_spacing=(1.0, 1.0),
            slice_thickness=spec.slice_thickness,
            series_uid="",
        )
        return resample(v, shape, z_mode)

    # Lesion volumes are measured on the painting grid (model-size independent).
    return ModelSample(
        spec=spec,
        seed=seed,
        volume=on_model_grid(vol),
        lesion=on_model_grid(frac),
        lesions=tuple(lesions),
    )
