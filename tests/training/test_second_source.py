"""Phantoms of the second painter brought onto the model grid as the engine reads a study."""

from __future__ import annotations

import numpy as np
import pytest

from triage.crosscheck.dicomio import Acquisition, StudyHeader
from triage.crosscheck.study import Painted
from triage.synth.ct import model_shape
from triage.training.data import Dataset
from triage.training.second_source import joined, labels_for, on_model_grid


def _painted(thickness: float, n: int) -> Painted:
    hu = np.full((n, 512, 512), 30.0, np.float32)
    lesion = np.zeros(hu.shape, bool)
    lesion[:4, 200:264, 200:264] = True  # the four most superior slices
    hu[lesion] = 70.0
    acq = Acquisition(slice_thickness=thickness, spacing_z=thickness, pixel_spacing=0.45)
    return Painted(hu, lesion, acq, StudyHeader(), ("intraparenchymal",), ())


@pytest.mark.parametrize(("thickness", "n"), [(5.0, 30), (0.625, 80)])
def test_on_model_grid_keeps_orientation_and_lesion_fraction(thickness: float, n: int) -> None:
    hu, frac = on_model_grid(_painted(thickness, n), "ich")
    assert hu.shape == frac.shape == model_shape("ich")
    # slice 0 of the painting is the most superior: it lands at the top of the grid
    assert frac[-1].max() == pytest.approx(1.0) and frac[0].max() == 0.0
    # 64 x 64 pixels of the 512 matrix -> 16 x 16 cells of the 128 grid, wholly lesion
    assert int((frac[-1] > 0.99).sum()) == 16 * 16
    assert hu[-1][frac[-1] > 0.99].mean() == pytest.approx(70.0, abs=0.5)


def test_labels_have_the_exact_positive_share() -> None:
    a = labels_for(1_000_000, 210, 0.5)
    assert a.sum() == 105 and (labels_for(1_000_000, 210, 0.5) == a).all()
    assert labels_for(3_000_000, 48, 0.3).sum() == 14


def test_joined_keeps_both_sets_in_order() -> None:
    def ds(seed0: int, n: int) -> Dataset:
        return Dataset(
            "ich", np.arange(seed0, seed0 + n), np.zeros((n, 2, 2, 2), np.float16),
            np.ones(n, np.float32), np.zeros((n, 2), np.float32),
            np.zeros((n, 16, 32, 32), np.float32), [("a",)] * n, [()] * n,
            np.zeros(n, np.float32),
        )  # fmt: skip

    j = joined(ds(1, 3), ds(100, 2))
    assert j.seeds.tolist() == [1, 2, 3, 100, 101] and len(j) == 5 and len(j.subtypes) == 5
    with pytest.raises(ValueError):
        joined(ds(1, 1), Dataset("pe", *list(ds(1, 1).__dict__.values())[1:]))
