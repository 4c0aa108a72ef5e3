"""resample averages in plane before sampling along z (less memory traffic): the result must
be what sampling along z first and then averaging gives (both steps are linear)."""

from __future__ import annotations

import numpy as np
import pytest

from triage.inference.volume import Volume, _area_weights, _bracket, _nearest, resample


def reference(volume: Volume, shape: tuple[int, int, int], z_mode: str) -> np.ndarray:
    """The two steps in the other order: along z on the full grid, then in plane."""
    nz, ny, nx = shape
    z, hu = volume.z_positions, volume.hu.astype(np.float64)
    if z_mode == "linear":
        targets, lower, upper = _bracket(z, nz)
        w = ((targets - z[lower]) / (z[upper] - z[lower])).clip(0.0, 1.0)
        stack = hu[lower] * (1.0 - w)[:, None, None] + hu[upper] * w[:, None, None]
    else:
        stack = hu[_nearest(z, nz)]
    wy = _area_weights(hu.shape[1], ny).astype(np.float64)
    wx = _area_weights(hu.shape[2], nx).astype(np.float64)
    return np.einsum("yi,zij,xj->zyx", wy, stack, wx)


@pytest.mark.parametrize("z_mode", ["linear", "nearest"])
@pytest.mark.parametrize("size,grid", [((48, 48), (12, 12)), ((50, 46), (12, 16))])
def test_in_plane_first_gives_the_same_grid(z_mode, size, grid) -> None:
    rng = np.random.default_rng(3)
    n = 37
    z = np.cumsum(rng.uniform(0.5, 3.0, n))  # uneven spacing
    hu = rng.uniform(-1024, 2000, (n, *size)).astype(np.float32)
    v = Volume(hu=hu, z_positions=z, pixel_spacing=(0.5, 0.5), slice_thickness=1.0, series_uid="")
    shape = (9, *grid)
    out = resample(v, shape, z_mode)
    assert out.shape == shape and out.dtype == np.float32
    assert np.allclose(out, reference(v, shape, z_mode), rtol=0, atol=0.02)
