"""Thin slices read as slabs (triage.inference.slabs) and the analyzer that uses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from triage.inference.checks import InputFacts, InputLimits, problems
from triage.inference.slabs import slab_size, slab_starts, thicken
from triage.inference.volume import Volume


def _volume(n: int, spacing: float, thickness: float | None) -> Volume:
    hu = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32)
    return Volume(
        hu=hu,
        z_positions=np.arange(n) * spacing,
        pixel_spacing=(0.5, 0.5),
        slice_thickness=thickness,
        series_uid="1.2",
        paths=[f"s{i}.dcm" for i in range(n)],
    )


@pytest.mark.parametrize(
    ("thickness", "spacing", "minimum", "k"),
    [
        (0.625, 0.625, 1.25, 2),  # contiguous 0.625 mm -> 1.25 mm slabs
        (1.0, 1.0, 1.25, 2),
        (0.8, 0.8, 1.0, 2),
        (0.5, 0.5, 1.0, 2),
        (1.25, 0.625, 1.25, 1),  # thick enough already (overlapping recon)
        (0.625, 0.3125, 1.25, 3),  # overlapping thin slices: 0.625 + 2 x 0.3125
        (2.5, 2.5, 1.25, 1),
    ],
)
def test_slab_is_just_thick_enough(
    thickness: float, spacing: float, minimum: float, k: int
) -> None:
    assert slab_size(thickness, spacing, minimum) == k
    if k > 1:
        assert thickness + (k - 1) * spacing >= minimum - 1e-9
        assert thickness + (k - 2) * spacing < minimum


def test_slab_starts_leave_no_slice_out() -> None:
    assert slab_starts(8, 2) == [0, 2, 4, 6]
    assert slab_starts(9, 2) == [0, 2, 4, 6, 7]  # the top slab overlaps the one below
    for n in range(4, 40):
        for k in (2, 3, 4):
            covered = {s + i for s in slab_starts(n, k) for i in range(k)}
            assert covered == set(range(n))


def test_thicken_averages_consecutive_slices() -> None:
    vol, k = thicken(_volume(9, 0.625, 0.625), 1.25)
    assert k == 2
    assert vol.hu[:, 0, 0].tolist() == [0.5, 2.5, 4.5, 6.5, 7.5]
    assert vol.z_positions.tolist() == pytest.approx([0.3125, 1.5625, 2.8125, 4.0625, 4.6875])
    assert vol.slice_thickness == pytest.approx(1.25)
    assert vol.paths == ["s1.dcm", "s3.dcm", "s5.dcm", "s7.dcm", "s8.dcm"]


def test_gapped_thin_slices_are_not_averaged() -> None:
    """1 mm slices every 5 mm: two neighbours are not one thicker slice; left as they are
    (the thickness check then refuses them, as before). 0.75 mm every 1.05 mm is averaged."""
    v = _volume(20, 5.0, 1.0)
    assert thicken(v, 1.25) == (v, 1)
    out, k = thicken(_volume(20, 1.05, 0.75), 1.0)
    assert k == 2 and out.slice_thickness == pytest.approx(1.8)


def test_gapped_thin_slices_are_refused_with_the_reason() -> None:
    """The thickness check says why a thin series was not read as slabs."""
    limits = InputLimits("pe", min_slice_thickness_mm=1.0, max_slice_thickness_mm=2.5)
    gapped = problems(limits, InputFacts("CT", 200, 199 * 1.25, 0.625))
    assert gapped == [
        "slice thickness 0.625 mm outside the trained range 1-2.5 mm; slices every 1.25 mm "
        "with gaps between them, so they cannot be averaged into thicker slabs"
    ]
    thick = problems(limits, InputFacts("CT", 40, 39 * 3.0, 3.0))
    assert thick == ["slice thickness 3 mm outside the trained range 1-2.5 mm"]


def test_thick_enough_volume_is_returned_as_it_is() -> None:
    v = _volume(9, 2.5, 2.5)
    out, k = thicken(v, 1.25)
    assert out is v and k == 1
    assert thicken(v, None) == (v, 1)


def test_thin_head_ct_is_assessed_as_slabs_not_refused(tmp_path: Path) -> None:
    """A 0.625 mm non-contrast head CT (under ich's trained 1.25 mm): the analyzer reads it as
    1.25 mm slabs and the input checks pass it - it was refused as 'outside the trained
    range' before. The model is not asked here (no server): the analysis stops at Triton."""
    from support.paths import MODELS_DIR

    from triage.errors import TritonUnavailable
    from triage.inference.analyze import TritonAnalyzer
    from triage.inference.checks import InputLimits, check_input
    from triage.inference.contract import load_contract
    from triage.inference.volume import load_volume, resample
    from triage.synth import ct

    from .test_volume import instance_rows

    study = ct.write_head_ct(
        tmp_path / "thin", hemorrhage=False, seed=11, patient_id="P", accession="A",
        n_slices=200, slice_thickness=0.625,
    )  # fmt: skip
    rows = instance_rows(study.files)
    contract = load_contract(MODELS_DIR / "ich" / "config.pbtxt")
    limits = InputLimits.from_parameters("ich", contract.parameters)
    volume = load_volume([Path(r.path) for r in rows])
    assert volume.slice_thickness == pytest.approx(0.625)
    slab, k = thicken(volume, limits.min_slice_thickness_mm)
    assert k == 2
    facts = check_input(limits, rows, slab, resample(slab, contract.input_shape))
    assert facts.slice_thickness_mm == pytest.approx(1.25)
    analyzer = TritonAnalyzer(tmp_path / "data", MODELS_DIR, key_images=False)
    with pytest.raises(TritonUnavailable):  # past every check, waiting for the model
        analyzer.analyze("ich", rows)
