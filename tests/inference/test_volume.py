"""Series selection, HU loading and resampling on real third-party CT/MR files (../shared/data)
and on small synthetic cases with known answers."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from triage.errors import NotAssessable
from triage.inference.volume import (
    HU_MIN,
    Volume,
    load_volume,
    resample,
    select_series,
    z_sample_positions,
    z_support,
)
from triage.ingest.dicom_files import instance_rows
from triage.store.models import Instance


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _is_dicom(p))


def _is_dicom(p: Path) -> bool:
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
    except (InvalidDicomError, OSError):
        return False
    return "SOPInstanceUID" in ds


@pytest.fixture(scope="module")
def dicom_root(shared_data: Path) -> Path:
    return shared_data / "dicom"


# -- GE head CT: gantry tilt, uneven spacing --------------------------------------------------


@pytest.fixture(scope="module")
def ge_volume(dicom_root: Path) -> Volume:
    files = dicom_files(dicom_root / "ge-head-ct")
    shuffled = files[:]
    random.Random(7).shuffle(shuffled)
    return load_volume(shuffled)


def test_ge_series_selected_whole(dicom_root: Path) -> None:
    rows = instance_rows(dicom_files(dicom_root / "ge-head-ct"))
    assert len(select_series(rows)) == 28


def test_ge_slices_ordered_along_tilted_normal(ge_volume: Volume, dicom_root: Path) -> None:
    v = ge_volume
    assert v.hu.shape == (28, 512, 512) and v.hu.dtype == np.float32
    # gantry tilt 18.5 degrees: the normal leans towards +y, still mostly +z (superior)
    assert v.normal[2] == pytest.approx(np.cos(np.radians(18.5)), abs=1e-3)
    assert abs(v.normal[1]) == pytest.approx(np.sin(np.radians(18.5)), abs=1e-3)
    gaps = np.diff(v.z_positions)
    assert (gaps > 0).all()
    # uneven spacing (README: 4.22/1.14/7.38 mm along z; along the tilted normal x cos 18.5)
    assert gaps.min() < 1.5 and gaps.max() > 6.5 and np.median(gaps[:10]) == pytest.approx(4, 0.1)
    # independent of the order given, and consistent with ImagePositionPatient
    first = pydicom.dcmread(v.paths[0], stop_before_pixels=True)
    last = pydicom.dcmread(v.paths[-1], stop_before_pixels=True)
    assert float(first.ImagePositionPatient[2]) < float(last.ImagePositionPatient[2])
    assert v.slice_thickness is not None and 4.0 <= v.slice_thickness <= 7.0


def test_ge_uneven_spacing_nearest_slices(ge_volume: Volume) -> None:
    """Nearest along z on a real series with 1-7 mm gaps: every model slice is one acquired
    slice, the one nearest its position; none is a blend."""
    r = resample(ge_volume, (64, 512, 512), "nearest")
    for k, t in enumerate(z_sample_positions(ge_volume, 64)):
        i = int(np.argmin(np.abs(ge_volume.z_positions - t)))
        assert np.array_equal(r[k], ge_volume.hu[i]), k
    assert set(z_support(ge_volume.z_positions, 64, "nearest")) == {
        int(np.argmin(np.abs(ge_volume.z_positions - t))) for t in z_sample_positions(ge_volume, 64)
    }


def test_ge_hounsfield_units_are_sane(ge_volume: Volume) -> None:
    r = resample(ge_volume)
    assert r.shape == (64, 128, 128) and r.dtype == np.float32
    assert np.median(r[:, :6, :6]) == pytest.approx(-1000, abs=40)  # air in the corners
    mid = r[24:48, 40:88, 40:88]  # centre of the brain, above the skull base
    assert 20 <= float(np.median(mid)) <= 50
    assert r.max() > 1000  # skull


# -- Philips head phantom: localizer, dose screens, brain series --------------------------------


def test_philips_selection_picks_the_brain_series(dicom_root: Path) -> None:
    folder = dicom_root / "philips-head-phantom"
    files = dicom_files(folder)  # DIRFILE files are not DICOM and are skipped
    assert not any(p.name == "DIRFILE" for p in files)
    rows = instance_rows(files)
    assert len({r.series_uid for r in rows}) == 3
    chosen = select_series(rows)
    assert len(chosen) == 28
    assert {Path(r.path).parent.name for r in chosen} == {"S2010"}
    v = load_volume([r.path for r in chosen])
    assert v.hu.shape[0] == 28 and np.allclose(np.diff(v.z_positions), 5.0, atol=0.01)


def test_philips_localizer_and_dose_screens_alone_are_not_assessable(dicom_root: Path) -> None:
    folder = dicom_root / "philips-head-phantom"
    rows = instance_rows(dicom_files(folder / "S1000") + dicom_files(folder / "S4010"))
    with pytest.raises(NotAssessable, match=r"localizer|not a CT image"):
        select_series(rows)


@pytest.mark.parametrize(
    ("description", "screen"),
    [
        ("Dose Report", True),
        ("DOSE INFO", True),
        ("Dose_Record", True),
        ("Radiation Dose", True),
        ("DOSE", True),
        ("Exam Summary", True),
        ("Screen Save", True),
        ("Patient Protocol", True),
        ("HEAD LOW DOSE 5MM", False),
        ("Brain 5mm iDose 4", False),
        ("CTPA LOW-DOSE PREGNANCY", False),
        ("STD BRAIN 5MM", False),
    ],
)
def test_dose_screens_are_told_from_low_dose_protocols(description: str, screen: bool) -> None:
    """A dose screen is left out by its description; a low-dose or iDose reconstruction is a
    diagnostic series (an audit found "HEAD LOW DOSE 5MM" refused as a dose screen)."""
    from triage.inference.volume import _excluded

    inst = Instance(
        sop_instance_uid="1.2.3.4",
        study_uid="1.2.3",
        series_uid="1.2.3.5",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        modality="CT",
        path="x.dcm",
        series_description=description,
        image_type="ORIGINAL\\PRIMARY\\AXIAL",
    )
    assert (_excluded(inst) is not None) is screen, _excluded(inst)


def _rewritten(
    files: list[Path], out: Path, change: Callable[[pydicom.Dataset], None]
) -> list[Path]:
    """Copies of ``files`` in ``out``, each data set changed by ``change``."""
    out.mkdir(parents=True)
    written = []
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(out / f"{i}.dcm")
        written.append(out / f"{i}.dcm")
    return written


def test_unusable_geometry_is_named_in_the_reason(tmp_path: Path) -> None:
    """A series without positions said only "too few slices: 0 usable", and one without
    PixelSpacing was read at a silent 1 mm (then refused as the wrong body part, "body width
    344 mm"): the reason now names what is missing."""
    from triage.crosscheck.dicomio import Acquisition, StudyHeader, write_series

    hu = np.zeros((10, 32, 32), np.float32)
    files = write_series(tmp_path / "s", hu, Acquisition(), StudyHeader())

    def rewritten(name: str, change: Callable[[pydicom.Dataset], None]) -> list[Path]:
        return _rewritten(files, tmp_path / name, change)

    no_position = rewritten("p", lambda ds: delattr(ds, "ImagePositionPatient"))
    with pytest.raises(NotAssessable, match=r"0 usable .*left out: 10: no ImagePositionPatient"):
        load_volume(no_position)

    def same_place(ds: pydicom.Dataset) -> None:
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]

    stacked = rewritten("z", same_place)
    with pytest.raises(NotAssessable, match=r"1 usable .*9: the same position as another"):
        load_volume(stacked)
    for name, change in (
        ("none", lambda ds: delattr(ds, "PixelSpacing")),
        ("zero", lambda ds: setattr(ds, "PixelSpacing", [0, 0])),
    ):
        with pytest.raises(NotAssessable, match="no usable PixelSpacing"):
            load_volume(rewritten(name, change))


def test_the_axial_soft_series_is_chosen_by_orientation_and_kernel(tmp_path: Path) -> None:
    """ImageType need not say AXIAL: a coronal reformat written ORIGINAL\\PRIMARY beside the
    axial series was chosen (its slices thinner) and the study refused as "not axial"; and a
    sharp Siemens kernel ("H70h") named only in ConvolutionKernel ranked with the soft one.
    Both are read from the header at indexing now (an audit with foreign series)."""
    from triage.crosscheck.dicomio import Acquisition, StudyHeader, write_series
    from triage.inference.volume import rank_series, sharp_kernel

    hu = np.zeros((12, 32, 32), np.float32)
    files = write_series(tmp_path / "s", hu, Acquisition(), StudyHeader())

    def variant(name: str, **attrs: object) -> list[Path]:
        uid = pydicom.uid.generate_uid()

        def change(ds: pydicom.Dataset) -> None:
            ds.SeriesInstanceUID = uid
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            for k, v in attrs.items():
                setattr(ds, k, v)

        return _rewritten(files, tmp_path / name, change)

    axial = variant("ax", SliceThickness=5.0)
    coronal = variant("cor", SliceThickness=3.0, ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    tilted = variant("tilt", ImageOrientationPatient=[1, 0, 0, 0, 0.9063, -0.4226])  # 25 deg
    rows = instance_rows(axial + coronal + tilted)
    by_uid = {r.series_uid: r for r in rows}
    first = {Path(r.path).parent.name: r.axial for r in by_uid.values()}
    assert first == {"ax": True, "cor": False, "tilt": True}
    ranked = rank_series(instance_rows(axial + coronal))
    assert Path(ranked[0].instances[0].path).parent.name == "ax"
    assert [r.plain for r in ranked] == [True, False]

    soft = variant("soft", SliceThickness=5.0, ConvolutionKernel="H31s")
    sharp = variant("sharp", SliceThickness=2.0, ConvolutionKernel="H70h")
    ranked = rank_series(instance_rows(sharp + soft))
    assert Path(ranked[0].instances[0].path).parent.name == "soft"
    for kernel, is_sharp in (
        ("H31s", False), ("B70f", True), ("Br64d", True), ("Hr40", False), ("FC26", False),
        ("FC52", True), ("STANDARD", False), ("SOFT", False), ("BONEPLUS", True),
        ("LUNG", True), ("", False), ("UB", False),
    ):  # fmt: skip
        assert sharp_kernel(kernel) is is_sharp, kernel


def test_a_non_square_image_is_padded_and_non_square_pixels_refused(tmp_path: Path) -> None:
    """A 512 x 400 image was stretched onto the square model grid (the resampling maps index
    to index) and pixels of 0.449 x 0.6 mm read as square (an audit with foreign series):
    the image is now padded with air to a square, centred; unequal pixel spacing is refused."""
    from triage.crosscheck.dicomio import Acquisition, StudyHeader, write_series

    hu = np.zeros((10, 40, 40), np.float32)
    hu[:, 10:30, 12:28] = 40.0
    files = write_series(tmp_path / "s", hu, Acquisition(), StudyHeader())
    square = load_volume(files)

    def rewritten(name: str, change: Callable[[pydicom.Dataset], None]) -> list[Path]:
        return _rewritten(files, tmp_path / name, change)

    def narrow(ds: pydicom.Dataset) -> None:  # 8 columns cut from each side
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, 8:32]).tobytes()
        ds.Columns = 24

    v = load_volume(rewritten("n", narrow))
    assert v.hu.shape == square.hu.shape  # 40 x 40 again
    assert np.array_equal(v.hu[:, :, 8:32], square.hu[:, :, 8:32])
    assert (v.hu[:, :, :8] == HU_MIN).all() and (v.hu[:, :, 32:] == HU_MIN).all()

    def oblong(ds: pydicom.Dataset) -> None:
        ds.PixelSpacing = [0.449, 0.6]

    with pytest.raises(NotAssessable, match="pixels are not square"):
        load_volume(rewritten("o", oblong))


# -- LIDC chest CT, dcm4che wrist MR --------------------------------------------------------------


def test_lidc_chest_loads_in_position_order(dicom_root: Path) -> None:
    files = dicom_files(dicom_root / "lidc-chest-ct")
    rows = instance_rows(files)
    assert len(select_series(rows)) == 100
    v = load_volume(files)
    assert v.hu.shape == (100, 512, 512)
    assert (np.diff(v.z_positions) > 0).all()
    zs = [
        float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in v.paths
    ]
    assert zs == sorted(zs)
    r = resample(v)
    assert r.shape == (64, 128, 128)
    assert (r < -700).mean() > 0.05  # lungs
    assert np.median(r[:, :4, :4]) == pytest.approx(-1000, abs=30)
    # as pe takes it: nearest acquired slice, 256 x 256 (each 2 x 2 block of the slice)
    pe = resample(v, (64, 256, 256), "nearest")
    assert pe.shape == (64, 256, 256) and (pe < -700).mean() > 0.05
    for k, t in enumerate(z_sample_positions(v, 64)):
        i = int(np.argmin(np.abs(v.z_positions - t)))
        assert np.allclose(pe[k], v.hu[i].reshape(256, 2, 256, 2).mean(axis=(1, 3)), atol=0.01)


def test_mr_is_not_assessable(dicom_root: Path) -> None:
    files = dicom_files(dicom_root / "dcm4che-wrist-mr")
    with pytest.raises(NotAssessable, match="modality MR"):
        select_series(instance_rows(files))
    with pytest.raises(NotAssessable, match="not a CT series"):
        load_volume(files)


def test_mr_series_is_not_selected_next_to_ct(dicom_root: Path) -> None:
    rows = instance_rows(
        dicom_files(dicom_root / "dcm4che-wrist-mr") + dicom_files(dicom_root / "ge-head-ct")
    )
    assert {r.modality for r in select_series(rows)} == {"CT"}


# -- robustness ---------------------------------------------------------------------------------


def test_too_few_slices(dicom_root: Path) -> None:
    files = dicom_files(dicom_root / "ge-head-ct")[:7]
    with pytest.raises(NotAssessable, match="too few slices"):
        load_volume(files)
    with pytest.raises(NotAssessable, match="< 8"):
        select_series(instance_rows(files))


def test_slice_of_another_size_and_non_dicom_are_skipped(dicom_root: Path, tmp_path: Path) -> None:
    files = dicom_files(dicom_root / "ge-head-ct")[:10]
    ds = pydicom.dcmread(files[3])
    small = ds.pixel_array[::2, ::2].copy()
    ds.Rows, ds.Columns = small.shape
    ds.PixelData = small.tobytes()
    odd = tmp_path / "odd.dcm"
    ds.save_as(odd)
    junk = tmp_path / "DIRFILE"
    junk.write_bytes(b"not dicom at all")
    v = load_volume([*files[:3], odd, *files[4:], junk])
    assert v.hu.shape == (9, 512, 512)
    assert str(odd) not in v.paths


def test_slices_with_corrupt_headers_are_skipped_not_fatal(
    dicom_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by fuzzing: one slice whose header has an unusable value cost the whole series.
    Such a slice passes the Storage SCP (the encoding is well formed, the indexed tags fine),
    so the reader must skip it and keep the others."""
    files = dicom_files(dicom_root / "ge-head-ct")[:14]

    def patched(source: Path, tag: bytes, value: bytes, name: str) -> Path:
        raw = source.read_bytes()  # explicit VR LE: tag, VR, 2-byte length, value
        at = raw.index(tag) + 6
        length = int.from_bytes(raw[at : at + 2], "little")
        out = tmp_path / name
        out.write_bytes(raw[: at + 2] + value.ljust(length) + raw[at + 2 + length :])
        return out

    no_columns = pydicom.dcmread(files[3])
    del no_columns.Columns  # a required attribute missing
    no_columns.save_as(tmp_path / "no_columns.dcm")
    broken = [
        patched(files[2], b"\x28\x00\x53\x10DS", b"1J", "slope.dcm"),  # not a number
        tmp_path / "no_columns.dcm",
        patched(files[4], b"\x28\x00\x52\x10DS", b"1e999", "intercept.dcm"),  # not finite
        tmp_path / "bad_vr.dcm",
    ]
    raw = files[6].read_bytes()  # Modality with VR bytes that are no VR
    at = raw.index(b"\x08\x00\x60\x00CS")
    broken[3].write_bytes(raw[: at + 4] + b"C\x9a" + raw[at + 6 :])
    caplog.set_level("WARNING", logger="triage.inference.volume")
    v = load_volume([*files[:2], *broken[:3], files[5], broken[3], *files[7:]])
    assert v.hu.shape == (10, 512, 512)
    assert not {str(b) for b in broken} & set(v.paths)
    assert sum("skipping" in r.getMessage() for r in caplog.records) == 4


def test_selection_ranking_on_synthetic_rows() -> None:
    def rows(uid: str, n: int, **kw: object) -> list[Instance]:
        base: dict[str, object] = dict(
            modality="CT", sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_uid="s"
        )
        base.update(kw)
        return [
            Instance(sop_instance_uid=f"{uid}.{i}", series_uid=uid, path=f"{uid}/{i}", **base)  # type: ignore[arg-type]
            for i in range(n)
        ]

    axial_thin = rows("thin", 200, image_type="ORIGINAL\\PRIMARY\\AXIAL", slice_thickness=0.625)
    axial_thick = rows("thick", 30, image_type="ORIGINAL\\PRIMARY\\AXIAL", slice_thickness=5.0)
    too_thin = rows("tiny", 400, image_type="ORIGINAL\\PRIMARY\\AXIAL", slice_thickness=0.2)
    derived = rows("mpr", 300, image_type="DERIVED\\SECONDARY\\REFORMATTED", slice_thickness=1.0)
    scout = rows("scout", 2, image_type="ORIGINAL\\PRIMARY\\LOCALIZER", slice_thickness=0.6)
    dose = rows("dose", 9, sop_class_uid="1.2.840.10008.5.1.4.1.1.7", slice_thickness=1.0)
    study = derived + axial_thick + scout + axial_thin + too_thin + dose
    assert {r.series_uid for r in select_series(study)} == {"thin"}
    assert {r.series_uid for r in select_series(derived + axial_thick)} == {"thick"}
    assert {r.series_uid for r in select_series(too_thin + axial_thick)} == {"thick"}
    assert {r.series_uid for r in select_series(derived + scout + dose)} == {"mpr"}
    with pytest.raises(NotAssessable):
        select_series([])


def test_soft_tissue_series_first_and_ties_go_to_the_first_arrived() -> None:
    """A thin bone reconstruction was judged over the brain series (thinner wins); two equal
    series were chosen between by their UIDs, so a second series arriving after the first
    was scored could replace it and flip the result (found by a multi-scanner audit)."""
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

    def rows(uid: str, n: int, desc: str, thick: float, at: datetime, number: int) -> list:
        return [
            Instance(
                sop_instance_uid=f"{uid}.{i}",
                series_uid=uid,
                path=f"{uid}/{i}",
                modality="CT",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_uid="s",
                image_type="ORIGINAL\\PRIMARY\\AXIAL",
                series_description=desc,
                slice_thickness=thick,
                received_at=at,
                series_number=number,
            )
            for i in range(n)
        ]

    brain = rows("9.9", 30, "AXIAL 5MM BRAIN", 5.0, t0, 2)
    bone = rows("1.1", 75, "AXIAL 2MM BONE", 2.0, t0, 3)
    assert {r.series_uid for r in select_series(bone + brain)} == {"9.9"}
    # equal series: the one that came first, whatever the UIDs say
    later = rows("9.99", 30, "AXIAL 5MM BRAIN", 5.0, t0 + timedelta(minutes=5), 4)
    assert {r.series_uid for r in select_series(brain + later)} == {"9.9"}
    earlier = rows("0.1", 30, "AXIAL 5MM BRAIN", 5.0, t0 - timedelta(minutes=5), 5)
    assert {r.series_uid for r in select_series(brain + earlier)} == {"0.1"}
    # a bone series alone is still judged (better than nothing)
    assert {r.series_uid for r in select_series(bone)} == {"1.1"}


@pytest.mark.parametrize(
    ("iop", "turn"),
    [
        ([-1, 0, 0, 0, -1, 0], lambda a: a[::-1, ::-1]),  # prone
        ([-1, 0, 0, 0, 1, 0], lambda a: a[:, ::-1]),  # left-right mirrored (feet first)
        ([0, 1, 0, 1, 0, 0], lambda a: a.T),  # rows and columns swapped
    ],
)
def test_other_in_plane_layouts_are_turned_to_the_trained_one(tmp_path: Path, iop, turn) -> None:
    """A prone or mirrored series reached the models and the checks as written (the PE
    enhancement check measured another vessel; found by a multi-scanner audit): the volume
    is the supine head-first one whatever the layout the scanner wrote."""
    from triage.synth import ct

    study = ct.write_head_ct(
        tmp_path / "src", hemorrhage=True, seed=5, patient_id="P", accession="A", size=64,
        n_slices=10,
    )  # fmt: skip
    reference = load_volume(study.files)
    turned = []
    for f in study.files:
        ds = pydicom.dcmread(f)
        ds.PixelData = np.ascontiguousarray(turn(ds.pixel_array)).tobytes()
        ds.ImageOrientationPatient = [str(v) for v in iop]
        out = tmp_path / f.name
        ds.save_as(out, enforce_file_format=True)
        turned.append(out)
    v = load_volume(turned)
    np.testing.assert_array_equal(v.hu, reference.hu)
    assert v.pixel_spacing == reference.pixel_spacing


def enhanced_ct(files: list[Path], out: Path, *, shuffle: bool = False) -> Path:
    """The classic CT ``files`` as one Enhanced CT Image Storage instance (a frame per slice:
    position per frame, orientation, spacing and rescale shared), as scanners that send the
    enhanced objects write it."""
    from pydicom.dataset import Dataset as DS
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    slices = [pydicom.dcmread(f) for f in files]
    if shuffle:
        random.Random(3).shuffle(slices)
    first = slices[0]
    ds = pydicom.dcmread(files[0])
    for kw in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "RescaleSlope",
        "RescaleIntercept",
        "InstanceNumber",
    ):
        if kw in ds:
            delattr(ds, kw)  # fmt: skip
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()  # a series of its own
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.NumberOfFrames = len(slices)

    def item(**values: object) -> DS:
        d = DS()
        for k, v in values.items():
            setattr(d, k, v)
        return d

    shared = item(
        PixelMeasuresSequence=Sequence(
            [item(PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness)]
        ),
        PlaneOrientationSequence=Sequence(
            [item(ImageOrientationPatient=first.ImageOrientationPatient)]
        ),
        PixelValueTransformationSequence=Sequence(
            [item(RescaleSlope=first.RescaleSlope, RescaleIntercept=first.RescaleIntercept,
                  RescaleType="HU")]
        ),
    )  # fmt: skip
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [
            item(
                PlanePositionSequence=Sequence([item(ImagePositionPatient=f.ImagePositionPatient)])
            )
            for f in slices
        ]
    )
    ds.PixelData = np.stack([f.pixel_array for f in slices]).tobytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def test_enhanced_ct_is_read_frame_by_frame(tmp_path: Path) -> None:
    """An Enhanced CT series (one multi-frame instance, as some scanners send) was refused
    as "1 images": each frame is now a slice, placed by its own functional groups, and the
    volume is the one the classic series gives."""
    from triage.synth import ct

    study = ct.write_head_ct(
        tmp_path / "src", hemorrhage=True, seed=6, patient_id="P", accession="A", size=64,
        n_slices=12,
    )  # fmt: skip
    classic = load_volume(study.files)
    one = enhanced_ct(study.files, tmp_path / "enh" / "ct.dcm", shuffle=True)
    v = load_volume([one])
    np.testing.assert_array_equal(v.hu, classic.hu)
    np.testing.assert_allclose(v.z_positions, classic.z_positions)
    assert v.pixel_spacing == classic.pixel_spacing
    assert v.slice_thickness == classic.slice_thickness
    assert all(p.startswith(f"{one}#") for p in v.paths)  # each slice names its frame
    # selection takes the one instance as a series; the classic series first when both came
    rows = instance_rows([one])
    assert [r.sop_class_uid for r in select_series(rows)] == ["1.2.840.10008.5.1.4.1.1.2.1"]
    both = instance_rows([*study.files, one])
    assert {r.sop_class_uid for r in select_series(both)} == {"1.2.840.10008.5.1.4.1.1.2"}


def test_resample_is_linear_in_physical_position() -> None:
    z = np.array([0.0, 1.0, 5.0, 6.0, 20.0, 21.0, 22.0, 30.0])  # uneven spacing
    hu = np.repeat(z[:, None, None], 16, axis=1).repeat(16, axis=2).astype(np.float32)
    v = Volume(hu=hu, z_positions=z, pixel_spacing=(1.0, 1.0), slice_thickness=1.0, series_uid="x")
    out = resample(v, (10, 4, 4))
    expected = z_sample_positions(v, 10)
    assert np.allclose(out[:, 2, 2], expected, atol=1e-4)
    # in-plane area average: a 16x16 checkerboard of 4x4 blocks becomes exact block means
    board = (np.indices((16, 16)).sum(axis=0) % 2).astype(np.float32) * 100
    v2 = Volume(
        hu=np.stack([board] * 8),
        z_positions=z,
        pixel_spacing=(1, 1),
        slice_thickness=1,
        series_uid="y",
    )
    assert np.allclose(resample(v2, (8, 4, 4)), 50.0)


def test_resample_on_the_grid_in_plane_only_interpolates_z() -> None:
    rng = np.random.default_rng(5)
    z = np.array([0.0, 2.0, 3.0, 7.0, 9.0])
    hu = rng.normal(0.0, 300.0, (5, 8, 8)).astype(np.float32)
    v = Volume(hu=hu, z_positions=z, pixel_spacing=(1.0, 1.0), slice_thickness=1.0, series_uid="z")
    out = resample(v, (6, 8, 8))
    assert out.shape == (6, 8, 8) and out.dtype == np.float32 and out.flags.c_contiguous
    for k, t in enumerate(z_sample_positions(v, 6)):
        upper = min(max(int(np.searchsorted(z, t, side="right")), 1), 4)
        w = np.float32((t - z[upper - 1]) / (z[upper] - z[upper - 1]))
        expected = hu[upper - 1] * (np.float32(1.0) - w) + hu[upper] * w
        assert np.allclose(out[k], expected, atol=1e-3)
    # evenly spaced slices sampled at their own positions, same in-plane size: an exact copy
    even = Volume(
        hu=hu, z_positions=np.arange(5.0), pixel_spacing=(1, 1), slice_thickness=1, series_uid="e"
    )
    assert np.array_equal(resample(even, (5, 8, 8)), hu)


UNEVEN = np.array([0.0, 1.0, 5.0, 6.0, 20.0, 21.0, 22.0, 30.0])


def test_resample_nearest_takes_acquired_slices_as_they_are() -> None:
    rng = np.random.default_rng(8)
    hu = rng.normal(0.0, 300.0, (len(UNEVEN), 16, 16)).astype(np.float32)
    v = Volume(hu=hu, z_positions=UNEVEN, pixel_spacing=(1, 1), slice_thickness=1, series_uid="n")
    out = resample(v, (10, 16, 16), "nearest")
    for k, t in enumerate(z_sample_positions(v, 10)):  # 0, 3.3, 6.7, 10, ... 30 mm
        gaps = np.abs(UNEVEN - t)
        nearest = int(np.flatnonzero(gaps == gaps.min())[0])  # a tie goes to the lower slice
        assert np.array_equal(out[k], hu[nearest]), k
    # in plane: the same area average as linear
    small = resample(v, (10, 4, 4), "nearest")
    assert np.allclose(small, out.reshape(10, 4, 4, 4, 4).mean(axis=(2, 4)), atol=1e-3)
    with pytest.raises(ValueError, match="linear, nearest"):
        resample(v, (10, 4, 4), "cubic")


def test_resample_nearest_reads_no_slice_twice_into_a_blend() -> None:
    """A one-slice spike (a 1 mm clot in a 1 mm series, every ~3 mm on the model grid) is
    either on the grid at full height or absent: never diluted, as linear dilutes it."""
    z = np.arange(0.0, 200.0, 1.0)
    hu = np.zeros((200, 2, 2), np.float32)
    heights = {"linear": set(), "nearest": set()}
    for i in range(1, 199):
        hu[:] = 0.0
        hu[i] = 100.0
        v = Volume(hu=hu, z_positions=z, pixel_spacing=(1, 1), slice_thickness=1, series_uid="s")
        for mode in heights:
            heights[mode].add(round(float(resample(v, (64, 2, 2), mode).max()), 1))
    assert heights["nearest"] == {0.0, 100.0}
    assert len(heights["linear"]) > 10  # every height in between, depending on the phase


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_z_support_is_all_resample_reads(mode: str) -> None:
    """Resampling only the slices of z_support gives the same volume (the phantom generator
    paints only those)."""
    z = np.cumsum(np.random.default_rng(2).uniform(0.6, 2.6, 150))
    hu = np.random.default_rng(4).normal(0.0, 200.0, (150, 4, 4)).astype(np.float32)
    full = Volume(hu=hu, z_positions=z, pixel_spacing=(1, 1), slice_thickness=1, series_uid="f")
    keep = z_support(z, 64, mode)
    assert len(keep) < 150
    part = Volume(
        hu=hu[keep], z_positions=z[keep], pixel_spacing=(1, 1), slice_thickness=1, series_uid="p"
    )
    assert np.array_equal(resample(full, (64, 4, 4), mode), resample(part, (64, 4, 4), mode))
