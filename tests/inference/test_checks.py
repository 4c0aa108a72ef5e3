"""Input checks before any claim, on the real shared DICOM and on synthetic studies: a study the
model may not judge is "not assessable" with the reason, never "negative", and it never waits
for Triton (the analyzer here has no inference server at all)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from support.paths import MODELS_DIR, SHARED_DATA

from triage.errors import TritonUnavailable
from triage.inference.analyze import TritonAnalyzer
from triage.inference.checks import (
    AIR_MAX_HU,
    BODY_HU,
    LUNG_MAX_HU,
    InputFacts,
    InputLimits,
    anatomy,
    components,
    content_grid,
    convex_fill,
    measure,
    open_lungs,
    problems,
    pulmonary_artery_enhancement,
    reachable,
)
from triage.inference.contract import load_contract
from triage.inference.masks import erode_inplane
from triage.inference.volume import Volume, load_volume, resample
from triage.store.models import Instance
from triage.synth import ct

from .test_volume import instance_rows

SHARED = SHARED_DATA / "dicom"


def _files(folder: str, pattern: str = "*") -> list[Path]:
    root = SHARED / folder
    assert root.is_dir(), f"shared test data not found: {root}"
    return sorted(
        p
        for p in root.rglob(pattern)
        if p.is_file() and "LICENSE" not in p.name and p.name != "DIRFILE"
    )


def _limits(model: str) -> InputLimits:
    return InputLimits.from_parameters(
        model, load_contract(MODELS_DIR / model / "config.pbtxt").parameters
    )


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory: pytest.TempPathFactory) -> TritonAnalyzer:
    return TritonAnalyzer(tmp_path_factory.mktemp("data"), MODELS_DIR)  # no client attached


def _not_assessable(analyzer: TritonAnalyzer, model: str, files: list[Path]) -> str:
    a = analyzer.analyze(model, instance_rows(files))
    assert a.status == "not_assessable", a
    assert a.probability is None and not a.positive
    assert a.model_name == model and a.model_version.startswith(f"{model}-")
    return a.detail


def _passes(analyzer: TritonAnalyzer, model: str, files: list[Path]) -> None:
    """Checks pass: the analyzer goes on to ask Triton (absent here)."""
    with pytest.raises(TritonUnavailable):
        analyzer.analyze(model, instance_rows(files))


def _rewrite(files: list[Path], out: Path, change: Callable[[Dataset], None]) -> list[Path]:
    """A copy of a series with ``change`` applied to every data set (the originals are
    read-only shared data)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        change(ds)
        path = out / f"{i:04d}.dcm"
        ds.save_as(path)
        written.append(path)
    return written


def _washout(ds: Dataset) -> None:
    """Contrast washed out: blood at 100-700 HU brought to 30 % of its enhancement over 40 HU
    (a 250-450 HU pulmonary artery becomes 103-163 HU): a badly timed bolus."""
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    blood = (hu > 100.0) & (hu < 700.0)
    hu[blood] = 40.0 + (hu[blood] - 40.0) * 0.3
    stored = np.rint((hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope))
    ds.PixelData = stored.astype(ds.pixel_array.dtype).tobytes()


def _grid_facts(model: str, grid: np.ndarray, fov_mm: float, coverage_mm: float) -> InputFacts:
    """:func:`measure` on a model-grid volume (from the in-memory phantom path)."""
    n = 64
    volume = Volume(
        hu=np.zeros((n, 1, grid.shape[2]), np.float32),  # only the geometry is read
        z_positions=np.linspace(0.0, coverage_mm, n),
        pixel_spacing=(fov_mm / grid.shape[2], fov_mm / grid.shape[2]),
        slice_thickness=2.5,
        series_uid="",
    )
    return measure(_limits(model), [Instance(modality="CT")], volume, grid)


# -- real series ----------------------------------------------------------------------------------


def test_non_contrast_chest_ct_is_not_assessable_for_pe(analyzer: TritonAnalyzer) -> None:
    detail = _not_assessable(analyzer, "pe", _files("lidc-chest-ct"))
    assert "pulmonary artery enhancement too low" in detail
    assert "wrong body part" not in detail and "calibrated" not in detail


def test_chest_ct_is_the_wrong_body_part_for_ich(analyzer: TritonAnalyzer) -> None:
    detail = _not_assessable(analyzer, "ich", _files("lidc-chest-ct"))
    assert "wrong body part" in detail and "no closed skull ring" in detail


def test_each_reason_is_kept_apart_beside_the_message(analyzer: TritonAnalyzer) -> None:
    """The worklist shows the joined message; validation counts the reasons one by one
    (triage.training.validate), without parsing the message back."""
    a = analyzer.analyze("pe", instance_rows(_files("ge-head-ct", "*.dcm")))
    assert a.status == "not_assessable" and len(a.reasons) >= 2, a
    assert a.detail == "not assessable by pe: " + "; ".join(a.reasons)
    assert any(r.startswith("wrong body part") for r in a.reasons)


def test_head_ct_is_the_wrong_body_part_for_pe(analyzer: TritonAnalyzer) -> None:
    detail = _not_assessable(analyzer, "pe", _files("ge-head-ct", "*.dcm"))
    assert "wrong body part" in detail and "two lungs" in detail


def test_head_ct_thicker_than_trained_is_not_assessable(analyzer: TritonAnalyzer) -> None:
    # 4 and 7 mm slices, median 5.5 mm: outside the ich contract's 1.25-5 mm; nothing else
    detail = _not_assessable(analyzer, "ich", _files("ge-head-ct", "*.dcm"))
    assert (
        detail
        == "not assessable by ich: slice thickness 5.5 mm outside the trained range 1.25-5 mm"
    )


def test_real_head_ct_passes_every_content_check() -> None:
    volume = load_volume(_files("ge-head-ct", "*.dcm"))
    grid = resample(volume, (64, 128, 128), "linear")
    facts = measure(_limits("ich"), [Instance(modality="CT")], volume, grid)
    assert problems(replace(_limits("ich"), max_slice_thickness_mm=None), facts) == []
    assert facts.head_slices is not None and facts.head_slices >= 32
    assert facts.air_hu is not None and -1024 <= facts.air_hu <= -970
    assert facts.tissue_hu is not None and 20 <= facts.tissue_hu <= 40
    # a real elderly head has calcifications: measured, well under the contract's limit
    assert facts.intracranial_enhancing_ml is not None
    assert (
        0.5 < facts.intracranial_enhancing_ml < 0.6 * _limits("ich").max_intracranial_enhancing_ml
    )  # type: ignore[operator]


def test_skull_phantom_without_brain_is_not_a_head(analyzer: TritonAnalyzer) -> None:
    """The Philips head phantom: a skull filled with air and test inserts (no brain-density
    tissue); its localizer and dose screens are never the series checked."""
    detail = _not_assessable(analyzer, "ich", _files("philips-head-phantom", "I*"))
    assert "wrong body part" in detail and "brain-density tissue" in detail
    assert "slice thickness" not in detail  # the 5 mm axial series, not the localizer


@pytest.mark.parametrize("model", ["ich", "pe"])
def test_mr_never_goes_to_a_ct_model(analyzer: TritonAnalyzer, model: str) -> None:
    detail = _not_assessable(analyzer, model, _files("dcm4che-wrist-mr", "*.dcm"))
    assert "CT" in detail


# -- HU calibration -------------------------------------------------------------------------------


def test_real_series_with_wrong_rescale_are_not_assessable(
    analyzer: TritonAnalyzer, tmp_path: Path
) -> None:
    ge = _files("ge-head-ct", "*.dcm")

    def shift(delta: float) -> Callable[[Dataset], None]:
        def change(ds: Dataset) -> None:
            ds.SliceThickness = 5  # so thickness is not a reason
            ds.RescaleIntercept = float(ds.RescaleIntercept) + delta

        return change

    baseline = _rewrite(ge, tmp_path / "ok", shift(0.0))
    _passes(analyzer, "ich", baseline)
    plus = _not_assessable(analyzer, "ich", _rewrite(ge, tmp_path / "plus", shift(100.0)))
    assert "HU scale not calibrated: air around the body at" in plus
    minus = _not_assessable(analyzer, "ich", _rewrite(ge, tmp_path / "minus", shift(-80.0)))
    assert "HU scale not calibrated: intracranial tissue median at" in minus
    assert "wrong body part" not in minus

    lidc = _files("lidc-chest-ct")

    def no_intercept(ds: Dataset) -> None:
        assert float(ds.RescaleIntercept) < -500  # stored values are HU + 1024 (or so)
        ds.RescaleIntercept = 0

    detail = _not_assessable(analyzer, "pe", _rewrite(lidc, tmp_path / "lidc", no_intercept))
    assert "HU scale not calibrated: no air at about -1000 HU" in detail
    assert "enhancement" not in detail and "wrong body part" not in detail


def test_phantom_without_intercept_is_not_assessable(
    analyzer: TritonAnalyzer, tmp_path: Path
) -> None:
    head = ct.write_head_ct(
        tmp_path / "h", hemorrhage=False, seed=4, patient_id="P", accession="A", size=256
    )
    _passes(analyzer, "ich", head.files)

    def no_intercept(ds: Dataset) -> None:
        ds.RescaleIntercept = 0

    detail = _not_assessable(analyzer, "ich", _rewrite(head.files, tmp_path / "x", no_intercept))
    assert "HU scale not calibrated: no air at about -1000 HU" in detail


# -- phantoms -------------------------------------------------------------------------------------


def test_synthetic_studies(analyzer: TritonAnalyzer, tmp_path: Path) -> None:
    kw = {"patient_id": "P", "accession": "A", "size": 256}
    head = ct.write_head_ct(tmp_path / "h", hemorrhage=True, seed=3, **kw)
    _passes(analyzer, "ich", head.files)
    assert "wrong body part" in _not_assessable(analyzer, "pe", head.files)
    ctpa = ct.write_ctpa(tmp_path / "c", embolus=True, seed=3, **kw)
    _passes(analyzer, "pe", ctpa.files)
    assert "wrong body part" in _not_assessable(analyzer, "ich", ctpa.files)
    washed = _rewrite(ctpa.files, tmp_path / "w", _washout)
    assert "enhancement too low" in _not_assessable(analyzer, "pe", washed)
    short = ct.write_head_ct(tmp_path / "s", hemorrhage=True, seed=3, n_slices=10, **kw)
    assert "too few slices: 10" in _not_assessable(analyzer, "ich", short.files)


def test_the_next_series_is_judged_when_the_best_ranked_is_not_assessable(
    analyzer: TritonAnalyzer, tmp_path: Path
) -> None:
    """A plain chest and a CTPA in one study, same thickness and image count, the plain one
    first: series selection ranks the plain one first (it arrived first) and pe called the
    study not assessable ("enhancement too low") without looking at the CTPA beside it.
    The analyzer now tries the next primary axial soft-tissue series."""
    from pydicom.uid import generate_uid

    from triage.inference.volume import rank_series

    kw = {"patient_id": "P", "accession": "A", "size": 256}
    ctpa = ct.write_ctpa(tmp_path / "c", embolus=True, seed=3, **kw)
    plain_uid = generate_uid()

    def plain(ds: Dataset) -> None:
        _washout(ds)
        ds.SeriesInstanceUID = plain_uid
        ds.SOPInstanceUID = generate_uid()

    washed = _rewrite(ctpa.files, tmp_path / "w", plain)
    rows = instance_rows(washed + ctpa.files)
    ranked = rank_series(rows)
    assert ranked[0].instances[0].series_uid == plain_uid
    assert all(r.plain for r in ranked)
    with pytest.raises(TritonUnavailable):  # the checks passed on the CTPA: Triton is asked
        analyzer.analyze("pe", rows)
    # a plain chest alone, or twice, stays not assessable, and says the others were tried
    assert "enhancement too low" in _not_assessable(analyzer, "pe", washed)
    again_uid = generate_uid()

    def again(ds: Dataset) -> None:
        ds.SeriesInstanceUID = again_uid
        ds.SOPInstanceUID = generate_uid()

    twice = washed + _rewrite(washed, tmp_path / "w2", again)
    detail = _not_assessable(analyzer, "pe", twice)
    assert "enhancement too low" in detail
    assert "and 1 other series of the study not assessable either" in detail


def test_an_enhanced_ct_head_reaches_the_model(analyzer: TritonAnalyzer, tmp_path: Path) -> None:
    """A head CT sent as one Enhanced CT instance passes series selection, loading and every
    input check, as the same slices one per file do (the analyzer then asks Triton)."""
    from .test_volume import enhanced_ct

    kw = {"patient_id": "P", "accession": "A", "size": 256}
    head = ct.write_head_ct(tmp_path / "h", hemorrhage=True, seed=3, **kw)
    _passes(analyzer, "ich", [enhanced_ct(head.files, tmp_path / "e" / "head.dcm")])


def test_a_series_with_images_missing_is_not_assessable(
    analyzer: TritonAnalyzer, tmp_path: Path
) -> None:
    """Seven images gone from the middle of a head CT (a cut transfer): the resampling
    interpolated across the 35 mm hole and a normal head was flagged (found by a
    multi-scanner audit). One missing 5 mm slice only doubles a step, which uneven spacing
    comes near; it is a hole when the image numbers jump across it (a later audit: one slice
    gone was interpolated and judged), not when they run on."""
    kw = {"patient_id": "P", "accession": "A", "size": 256}
    head = ct.write_head_ct(tmp_path / "h", hemorrhage=False, seed=4, slice_thickness=5.0, **kw)
    by_z = sorted(
        head.files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True)
                                        .ImagePositionPatient[2])
    )  # fmt: skip
    holed = by_z[:10] + by_z[17:]
    reason = _not_assessable(analyzer, "ich", holed)
    assert "incomplete series: a gap of 40 mm between slices 10 and 11 from the bottom" in reason
    reason = _not_assessable(analyzer, "ich", by_z[:10] + by_z[11:])  # one slice missing
    assert (
        "incomplete series: 1 image number(s) missing between slices 10 and 11 from the "
        "bottom, a gap of 10.0 mm where the slices are 5 mm apart"
    ) in reason

    numbers = iter(range(1, len(by_z)))

    def renumber(ds: Dataset) -> None:  # numbered on, bottom up, as if nothing were missing
        ds.InstanceNumber = next(numbers)

    _passes(analyzer, "ich", _rewrite(by_z[:10] + by_z[11:], tmp_path / "r", renumber))
    # the real GE head (4 mm, then 7 mm apart) is not "incomplete"
    ge = _not_assessable(analyzer, "ich", _files("ge-head-ct"))
    assert "incomplete" not in ge


def _head_sample(
    seed: int, mimics: tuple[str, ...] = (), generator: int = 3
) -> tuple[ct.PhantomSpec, np.ndarray]:
    spec = ct.PhantomSpec(
        task="ich",
        label=False,
        mimics=mimics,
        n_slices=48,
        slice_thickness=2.5,
        generator=generator,
    )
    return spec, ct.model_sample(spec, seed).volume


def enhance_head(volume: np.ndarray, fov_mm: float, hu: float = 180.0) -> np.ndarray:
    """A phantom head with contrast: arteries (a circle of Willis and both middle cerebral
    arteries, 3-4 mm wide) and deep venous sinuses (straight sinus, internal cerebral veins)
    raised to ``hu`` inside the brain. Positions are relative to the head's centre on the
    grid, found from the skull, so any phantom head will do."""
    out = volume.copy()
    nz, ny, nx = out.shape
    mm = fov_mm / nx
    skull = out > 300
    ys, xs = np.nonzero(skull.any(axis=0))
    cy, cx = (ys.min() + ys.max()) / 2.0, (xs.min() + xs.max()) / 2.0
    y, x = np.mgrid[0:ny, 0:nx]
    dy, dx = (y - cy) * mm, (x - cx) * mm  # mm from the centre; +y posterior
    inside = (out > -20) & (out < 100)
    base = nz // 3  # a little above the skull base
    willis = np.abs(np.hypot(dx, dy - 5.0) - 14.0) < 2.0
    mca = (np.abs(dy - 5.0) < 1.8) & (np.abs(dx) > 12.0) & (np.abs(dx) < 55.0)
    deep = (np.abs(dx) < 2.0) & (dy > 0.0) & (dy < 60.0)
    for k in range(base, base + 4):
        out[k][(willis | mca) & inside[k]] = hu
    for k in range(base + 4, min(nz, base + 20)):
        out[k][deep & inside[k]] = hu
    return out


@pytest.mark.parametrize("generator", [3, 4])
def test_contrast_enhanced_head_is_not_assessable_for_ich(generator: int) -> None:
    """Generator 4 adds the skull base, the face and the skull's glare: a non-contrast head
    still passes, an enhanced one is still refused."""
    spec, plain = _head_sample(
        11,
        mimics=("choroid_calcification", "pineal_calcification", "falx_calcification"),
        generator=generator,
    )
    coverage = spec.n_slices * spec.slice_thickness
    facts = _grid_facts("ich", plain, spec.fov_mm, coverage)
    assert problems(_limits("ich"), facts) == []  # calcifications are not contrast
    enhanced = enhance_head(plain, spec.fov_mm)
    facts = _grid_facts("ich", enhanced, spec.fov_mm, coverage)
    found = problems(_limits("ich"), facts)
    assert len(found) == 1 and found[0].startswith("contrast-enhanced head CT:"), found
    assert "; " not in found[0]  # the separator check_input joins reasons with


def test_generator_4_heads_pass_the_content_checks() -> None:
    """Varied non-contrast heads with a skull base, a face and the skull's glare (generator
    4) are heads, are calibrated and are not contrast-enhanced: among them the two that a
    flat skull floor once made look enhanced (6, 7), and two with 5 mm slices whose skull
    base the contrast measure read as 6.6 and 6.4 ml before it left out what lies beside bone
    one slice away (54, 87)."""
    specs = ct.spec_set("ich", list(range(3_000_000, 3_000_088)), 0.3, generator=4)
    for i in (1, 6, 7, 54, 87):
        spec = specs[i]
        vol = ct.model_sample(spec, 3_000_000 + i).volume
        facts = _grid_facts("ich", vol, spec.fov_mm, spec.n_slices * spec.slice_thickness)
        assert problems(_limits("ich"), facts) == [], (i, facts)


def aorta_timed_ctpa(seed: int) -> tuple[ct.PhantomSpec, np.ndarray, np.ndarray]:
    """(spec, well-timed CTPA, the same study with the bolus in the aorta only), on pe's grid.

    The generator's poor-contrast variant of the same seed differs only in contrast (same
    anatomy and noise streams): where it differs is the pulmonary side (trunk, arteries, right
    heart). There the aorta-timed volume keeps 30 % of the enhancement over 40 HU (a 250-450 HU
    trunk becomes 100-160 HU); the systemic side (aorta, left ventricle: 150-500 HU where the
    two agree) is raised by 150 HU."""
    kw = {"label": False, "n_slices": 80, "slice_thickness": 2.5, "fov_mm": 380.0}
    good = ct.PhantomSpec(task="pe", **kw)  # type: ignore[arg-type]
    poor = ct.PhantomSpec(task="pe", mimics=("poor_contrast",), **kw)  # type: ignore[arg-type]
    v_good = ct.model_sample(good, seed).volume
    v_poor = ct.model_sample(poor, seed).volume
    pulmonary = v_good - v_poor > 5.0
    assert pulmonary.sum() > 1000, "the poor-contrast variant no longer differs in the arteries"
    timed = np.where(pulmonary, 40.0 + (v_good - 40.0) * 0.3, v_good).astype(np.float32)
    systemic = ~pulmonary & (v_good > 150.0) & (v_good < 500.0)
    timed[systemic] += 150.0
    return good, v_good, timed


def test_bolus_in_the_aorta_only_is_not_assessable_for_pe() -> None:
    spec, good, timed = aorta_timed_ctpa(5)
    coverage = spec.n_slices * spec.slice_thickness
    ok = _grid_facts("pe", good, spec.fov_mm, coverage)
    assert problems(_limits("pe"), ok) == [] and ok.enhancement_hu is not None
    late = _grid_facts("pe", timed, spec.fov_mm, coverage)
    found = problems(_limits("pe"), late)
    assert len(found) == 1 and "pulmonary artery enhancement too low" in found[0], found
    # anywhere in the volume there is plenty of contrast: the check looks at the right place
    assert float(np.percentile(timed[timed < 700], 99.9)) > 300


def test_contract_thickness_is_not_wider_than_trained() -> None:
    """The thickness range of each contract lies inside the thicknesses the training phantoms
    are drawn with (triage/synth/ct/spec.py draw_spec)."""
    for model in ("ich", "pe"):
        rng = np.random.default_rng(0)
        drawn = {ct.draw_spec(model, rng, positive=bool(i % 2)).slice_thickness for i in range(400)}  # type: ignore[arg-type]
        limits = _limits(model)
        assert (
            limits.min_slice_thickness_mm is not None and limits.max_slice_thickness_mm is not None
        )
        assert (
            min(drawn)
            <= limits.min_slice_thickness_mm
            <= limits.max_slice_thickness_mm
            <= max(drawn)
        )


def test_limits_from_contract_parameters() -> None:
    limits = InputLimits.from_parameters(
        "pe",
        {
            "body_part": "Chest",
            "min_slice_thickness_mm": "0.6",
            "max_slice_thickness_mm": "3",
            "min_slices": "32",
            "min_enhancement_hu": "200",
        },
    )
    assert limits.body_part == "chest" and limits.min_slices == 32
    assert limits.max_slice_thickness_mm == 3.0 and limits.min_coverage_mm is None
    facts = InputFacts("CT", 40, 100.0, 3.5)
    expected = "slice thickness 3.5 mm outside the trained range 0.6-3 mm"
    assert problems(limits, facts) == [expected]
    # no parameters: nothing is checked but the modality
    bare = InputLimits.from_parameters("x", {})
    assert problems(bare, InputFacts("CT", 2, 1.0, 20.0)) == []
    assert problems(bare, InputFacts("MR", 40, 100.0, 1.0)) != []


def test_content_checks_judge_a_256_grid_as_its_128_average() -> None:
    """pe's 256 x 256 input is measured at the 128 x 128 resolution the thresholds were
    calibrated on: a grid and its 2 x 2 repetition give the same facts."""
    spec = ct.PhantomSpec(task="pe", label=False, n_slices=40, slice_thickness=2.5, fov_mm=380.0)
    coarse = ct.model_sample(spec, 2, shape=(64, 128, 128)).volume
    fine = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)
    assert content_grid(fine).shape == (64, 128, 128)
    assert np.allclose(content_grid(fine), coarse)
    assert content_grid(coarse) is coarse
    odd = np.zeros((4, 200, 200), np.float32)
    assert content_grid(odd) is odd  # not a multiple of 128: left as it is
    px = spec.fov_mm / 128
    value = pulmonary_artery_enhancement(content_grid(fine), anatomy(content_grid(fine), px), px)
    assert value is not None and value == pulmonary_artery_enhancement(
        coarse, anatomy(coarse, px), px
    )


def test_convex_fill_is_the_hull_of_the_set_pixels() -> None:
    """Every pixel whose centre lies in the convex hull of the set pixels' centres, and no
    other: checked against the half-planes of a triangle and on random blobs."""
    mask = np.zeros((1, 40, 50), dtype=bool)
    a, b, c = (5, 3), (45, 10), (20, 35)  # (x, y)
    for x, y in (a, b, c):
        mask[0, y, x] = True
    filled = convex_fill(mask)[0]
    ys, xs = np.mgrid[0:40, 0:50]

    def side(p: tuple[int, int], q: tuple[int, int]) -> np.ndarray:
        return (q[0] - p[0]) * (ys - p[1]) - (q[1] - p[1]) * (xs - p[0])

    s1, s2, s3 = side(a, b), side(b, c), side(c, a)
    inside = ((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0))
    assert np.array_equal(filled, inside)
    rng = np.random.default_rng(7)
    blobs = rng.random((6, 30, 30)) > 0.985
    hull = convex_fill(blobs)
    assert (hull >= blobs).all()
    for k in range(6):  # convex: every row and every column of the hull is one run
        for line in list(hull[k]) + list(hull[k].T):
            on = np.flatnonzero(line)
            assert on.size == 0 or on[-1] - on[0] + 1 == on.size


def test_lungs_cut_by_a_narrow_field_of_view_are_inside_the_body() -> None:
    """A large patient reconstructed on a field of view narrower than the chest: the lungs
    touch the image border. That air is not "air around the body" (it would read ~-870 HU and
    fail the calibration) and the lungs still count as lungs."""
    fov = 250.0
    spec = ct.PhantomSpec(task="pe", label=False, n_slices=40, slice_thickness=2.5, fov_mm=fov)
    grid = ct.model_sample(spec, 2, shape=(64, 128, 128)).volume
    edge = np.concatenate([grid[:, :, 0], grid[:, :, -1]])
    assert ((edge > -960.0) & (edge < LUNG_MAX_HU)).sum() > 1000  # lung on the border
    naive = grid[reachable(grid <= BODY_HU)]
    assert np.median(naive[naive > -1023.0]) > AIR_MAX_HU  # what border-connected air reads
    facts = _grid_facts("pe", grid, fov, 300.0)
    assert facts.air_hu is not None and facts.air_hu <= AIR_MAX_HU
    assert facts.chest_slices == 64
    assert problems(_limits("pe"), facts) == []


def _flood_labels(mask: np.ndarray) -> list[set[tuple[int, int]]]:
    """The in-plane 4-connected components of a 2-D mask, by a plain flood fill."""
    seen = np.zeros_like(mask)
    out = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        todo, comp = [(int(y0), int(x0))], set()
        seen[y0, x0] = True
        while todo:
            y, x = todo.pop()
            comp.add((y, x))
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                v, u = y + dy, x + dx
                if (
                    0 <= v < mask.shape[0]
                    and 0 <= u < mask.shape[1]
                    and mask[v, u]
                    and not seen[v, u]
                ):
                    seen[v, u] = True
                    todo.append((v, u))
        out.append(comp)
    return out


@pytest.mark.parametrize("fill", [0.45, 0.6])
def test_components_are_those_of_a_flood_fill(fill: float) -> None:
    rng = np.random.default_rng(7)
    mask = rng.random((3, 40, 33)) < fill  # many components, some winding
    labels = components(mask)
    assert ((labels > 0) == mask).all()
    for k in range(mask.shape[0]):
        comps = _flood_labels(mask[k])
        assert len(comps) > 5
        assert len(np.unique(labels[k][mask[k]])) == len(comps)
        for comp in comps:
            ys, xs = zip(*comp, strict=True)
            assert len(np.unique(labels[k][ys, xs])) == 1  # one label per component
    assert components(np.zeros((0, 4, 4), dtype=bool)).shape == (0, 4, 4)


def _circle_cut(grid: np.ndarray, radius_px: float) -> np.ndarray:
    """``grid`` with every pixel beyond a centred circle set to the padding the loader writes
    (-1024 HU): the scanner's reconstruction circle."""
    n = grid.shape[2]
    yy, xx = np.mgrid[:n, :n]
    out = grid.copy()
    out[:, (yy - (n - 1) / 2) ** 2 + (xx - (n - 1) / 2) ** 2 > radius_px**2] = -1024.0
    return out


def test_lungs_cut_by_the_reconstruction_circle_are_inside_the_body() -> None:
    """A chest wider than the reconstruction circle: the lungs touch the padding beyond it and,
    through it, the air in the image's corners. They are still lungs (not air around the body,
    which would read "HU not calibrated", nor a missing chest), and the chest is at least as
    wide as the circle."""
    fov = 250.0
    spec = ct.PhantomSpec(task="pe", label=False, n_slices=40, slice_thickness=2.5, fov_mm=fov)
    grid = _circle_cut(ct.model_sample(spec, 2, shape=(64, 128, 128)).volume, 64.0)
    outline = convex_fill(grid > BODY_HU)
    outside = reachable(grid <= BODY_HU, entry=~outline)
    lung_at_circle = outside & (grid > -960.0) & (grid < LUNG_MAX_HU)
    assert lung_at_circle.sum() > 1000  # the naive flood takes the lungs for outside air
    cut = open_lungs(grid, outside, outline, fov / 128)
    assert (cut & lung_at_circle).sum() > 0.9 * lung_at_circle.sum()
    assert np.median(grid[outside & ~cut & (grid > -1023.0)]) <= AIR_MAX_HU  # air is left
    facts = _grid_facts("pe", grid, fov, 300.0)
    assert facts.chest_slices == 64
    assert facts.body_width_mm is not None and facts.body_width_mm >= 240.0
    assert problems(_limits("pe"), facts) == []
    # the same chest on the square field of view, without padding: nothing is cut (there,
    # the body's convex outline keeps the lungs in)
    square = ct.model_sample(spec, 2, shape=(64, 128, 128)).volume
    hull = convex_fill(square > BODY_HU)
    assert not open_lungs(square, reachable(square <= BODY_HU, entry=~hull), hull, 1.95).any()


def test_the_foam_pads_beside_a_head_are_not_lung() -> None:
    """The real GE head has padding beyond its reconstruction circle, and the foam pads of its
    holder touch it: they read -870 to -930 HU, as dense as lung, are thick, and lie one at
    each side of the midline - but each is smaller than a lung."""
    volume = load_volume(_files("ge-head-ct", "*.dcm"))
    shape = load_contract(MODELS_DIR / "pe" / "config.pbtxt").input_shape
    grid = content_grid(resample(volume, shape))
    px = volume.pixel_spacing[1] * volume.hu.shape[2] / grid.shape[2]
    hull = convex_fill(grid > BODY_HU)
    outside = reachable(grid <= BODY_HU, entry=~hull)
    core = erode_inplane(outside & ~reachable(grid <= -1023.0) & (grid > AIR_MAX_HU))
    labels = components(core)
    areas = [(labels == k).sum() * px * px / 100.0 for k in np.unique(labels[core])]
    assert max(areas) > 5.0  # the pads: thick pieces of the outside "air", as dense as lung
    assert not open_lungs(grid, outside, hull, px).any()


def test_lung_reached_through_a_gap_in_the_chest_wall_is_lung() -> None:
    """A chest wall thinner than a grid pixel, drawn or reconstructed, can leave a gap: the air
    from the border then floods a lung. It is taken back as lung (denser than air, thick, at
    one side of the midline) and the chest is read."""
    spec = ct.PhantomSpec(task="pe", label=False, n_slices=40, slice_thickness=2.5, fov_mm=380.0)
    grid = ct.model_sample(spec, 2, shape=(64, 128, 128)).volume.copy()
    px = 380.0 / 128
    hull = convex_fill(grid > BODY_HU)
    lung = ~reachable(grid <= BODY_HU, entry=~hull) & (grid < LUNG_MAX_HU)
    # a channel of air from the image's left edge into the right lung on every slice
    for k in range(grid.shape[0]):
        ys, _ = np.nonzero(lung[k, :, : grid.shape[2] // 2])
        y = int(np.median(ys))
        x = int(np.flatnonzero(lung[k, y, : grid.shape[2] // 2]).min()) + 2
        grid[k, y - 1 : y + 2, : x + 1] = np.minimum(grid[k, y - 1 : y + 2, : x + 1], -1000.0)
    hull = convex_fill(grid > BODY_HU)
    outside = reachable(grid <= BODY_HU, entry=~hull)
    assert (outside & lung).sum() > 0.3 * lung.sum()  # the flood took a lung
    back = open_lungs(grid, outside, hull, px)
    assert (back & lung & outside).sum() > 0.95 * (outside & lung & (grid > AIR_MAX_HU)).sum()
    facts = _grid_facts("pe", grid, 380.0, 300.0)
    assert facts.chest_slices == 64
    assert problems(_limits("pe"), facts) == []


def _pad_beyond_circle(ds: Dataset) -> None:
    """Pixels beyond the circle inscribed in the image stored as the series' pixel padding
    (PixelPaddingValue), as a scanner writes what lies outside its reconstruction circle."""
    pixels = ds.pixel_array.copy()
    n = pixels.shape[1]
    yy, xx = np.mgrid[: pixels.shape[0], :n]
    beyond = (yy - (pixels.shape[0] - 1) / 2) ** 2 + (xx - (n - 1) / 2) ** 2 > (n / 2) ** 2
    pad = -2000 if ds.PixelRepresentation else 0
    pixels[beyond] = pad
    ds.PixelData = pixels.tobytes()
    ds.add_new(0x00280120, "SS" if ds.PixelRepresentation else "US", pad)  # PixelPaddingValue


def test_ctpa_cut_by_its_reconstruction_circle_is_read(
    analyzer: TritonAnalyzer, tmp_path: Path
) -> None:
    """Production path (DICOM, loader, resampling, checks): a CTPA of a chest wider than its
    250 mm field of view, padded beyond the reconstruction circle, passes the checks for the
    chest model and is still the wrong body part for the head model."""
    kw = {"patient_id": "P", "accession": "A", "size": 256, "generator": 4}
    ctpa = ct.write_ctpa(tmp_path / "c", embolus=False, seed=2, fov_mm=250.0, **kw)
    cut = _rewrite(ctpa.files, tmp_path / "cut", _pad_beyond_circle)
    assert pydicom.dcmread(cut[0]).PixelPaddingValue in (0, -2000)
    _passes(analyzer, "pe", cut)
    assert "wrong body part" in _not_assessable(analyzer, "ich", cut)


def test_a_field_of_view_outside_the_trained_range_is_not_assessable(
    analyzer: TritonAnalyzer, tmp_path: Path
) -> None:
    """A head reconstructed at 480 mm passed every check and reached the model at half the
    scale it was trained on (an audit with foreign series); the contract now states the
    trained range of the field of view. Here: the same head, its images padded with air to
    twice their width at the same pixel spacing."""
    kw = {"patient_id": "P", "accession": "A", "size": 256}
    head = ct.write_head_ct(tmp_path / "h", hemorrhage=False, seed=4, **kw)
    _passes(analyzer, "ich", head.files)
    series_uid = pydicom.uid.generate_uid()

    def wide(ds: Dataset) -> None:
        ds.SeriesInstanceUID = series_uid  # another series (the analyzer keeps volumes read)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        pixels = ds.pixel_array
        rows, cols = pixels.shape
        air = round((-1000.0 - float(ds.RescaleIntercept)) / float(ds.RescaleSlope))
        canvas = np.full((2 * rows, 2 * cols), air, dtype=pixels.dtype)
        canvas[rows // 2 : rows // 2 + rows, cols // 2 : cols // 2 + cols] = pixels
        ds.Rows, ds.Columns = 2 * rows, 2 * cols
        ds.PixelData = canvas.tobytes()

    reason = _not_assessable(analyzer, "ich", _rewrite(head.files, tmp_path / "w", wide))
    assert "field of view 460 mm outside the trained range 160-320 mm" in reason
    limits = _limits("pe")
    assert (limits.min_fov_mm, limits.max_fov_mm) == (200.0, 500.0)
