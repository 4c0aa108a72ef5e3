"""Synthetic CT series with a known label: non-contrast head CT (with or without an acute
intraparenchymal hemorrhage) and CT pulmonary angiography (with or without an embolus).

Each study is built as a volume in Hounsfield units on a patient-space grid (LPS millimetres,
axial slices), one painting function per tissue or lesion, then written as one CT Image
Storage series (Explicit VR Little Endian, int16, slope 1, intercept -1024).

Everything is deterministic given ``seed``: the same arguments give the same pixels and the
same UIDs (a re-sent study is a duplicate, as from a real modality). Lesion parameters are
drawn whether or not the lesion is painted, so a positive and a negative study with the same
seed differ only inside the lesion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

RESCALE_INTERCEPT = -1024.0
RESCALE_SLOPE = 1.0
HU_MIN, HU_MAX = -1024.0, 3071.0
AIR_HU = -1000.0

HEAD_DESCRIPTION = "CT HEAD WO CONTRAST"
CTPA_DESCRIPTION = "CTA CHEST PE PROTOCOL"


@dataclass(frozen=True)
class SyntheticStudy:
    """What was written: identifiers, files in InstanceNumber order, and the ground truth.

    ``lesion_instances``: InstanceNumbers of the slices that show the lesion (empty when
    ``label`` is False), e.g. to check a model's key slice.
    """

    study_uid: str
    series_uid: str
    accession: str
    patient_id: str
    files: list[Path]
    label: bool
    description: str
    lesion_instances: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class _Grid:
    """Voxel centres in patient coordinates (mm). Broadcastable: x (1,1,W), y (1,H,1),
    z (N,1,1). Row index grows with y (posterior), column index with x (patient left)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    spacing: float
    thickness: float

    @classmethod
    def axial(cls, size: int, fov_mm: float, n_slices: int, thickness: float, z0: float) -> _Grid:
        spacing = fov_mm / size
        coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2) * spacing
        z = z0 + np.arange(n_slices, dtype=np.float32) * thickness
        return cls(
            x=coords[None, None, :],
            y=coords[None, :, None],
            z=z[:, None, None],
            spacing=spacing,
            thickness=thickness,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z.shape[0], self.y.shape[1], self.x.shape[2])


def _ellipsoid(
    g: _Grid, centre: tuple[float, float, float], axes: tuple[float, float, float]
) -> np.ndarray:
    """Boolean mask of an axis-aligned ellipsoid (centre and semi-axes in mm)."""
    cx, cy, cz = centre
    ax, ay, az = axes
    return ((g.x - cx) / ax) ** 2 + ((g.y - cy) / ay) ** 2 + ((g.z - cz) / az) ** 2 <= 1.0


def _tube(
    g: _Grid,
    start: tuple[float, float],
    drift: tuple[float, float],
    radius: float,
) -> np.ndarray:
    """Boolean mask of a vessel running through all slices: circle of ``radius`` whose centre
    is ``start`` (x, y) at the first slice and moves by ``drift`` mm per mm of z."""
    dz = g.z - g.z[0]
    cx = start[0] + drift[0] * dz
    cy = start[1] + drift[1] * dz
    return (g.x - cx) ** 2 + (g.y - cy) ** 2 <= radius**2


def _extrude(g: _Grid, mask2d: np.ndarray) -> np.ndarray:
    """A slice mask (1, H, W) repeated through all slices."""
    return np.broadcast_to(mask2d, g.shape)


def _add_noise(vol: np.ndarray, rng: np.random.Generator, sigma: float) -> None:
    """Quantum noise: Gaussian, ``sigma`` HU, everywhere (in place)."""
    vol += rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(sigma)


def _slices_with(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) + 1 for i in np.flatnonzero(mask.any(axis=(1, 2))))


# ------------------------------------------------------------------------- head CT anatomy


@dataclass(frozen=True)
class _Head:
    """Random anatomy of one synthetic head (all mm / HU)."""

    skull_axes: tuple[float, float, float]  # outer table, semi-axes x, y, z
    skull_thickness: float
    scalp_thickness: float
    grey_hu: float
    white_hu: float
    csf_hu: float
    bone_hu: float
    ventricle_axes: tuple[float, float, float]
    ventricle_z: float
    noise_sigma: float

    @property
    def inner_axes(self) -> tuple[float, float, float]:
        t = self.skull_thickness
        ax, ay, az = self.skull_axes
        return (ax - t, ay - t, az - t)


def _draw_head(rng: np.random.Generator) -> _Head:
    scale = rng.uniform(0.93, 1.07)
    return _Head(
        skull_axes=(72.0 * scale, 92.0 * scale, 95.0 * scale),
        skull_thickness=rng.uniform(5.5, 7.5),
        scalp_thickness=rng.uniform(4.0, 6.0),
        grey_hu=rng.uniform(36.0, 40.0),
        white_hu=rng.uniform(27.0, 31.0),
        csf_hu=rng.uniform(3.0, 7.0),
        bone_hu=rng.uniform(1250.0, 1500.0),
        ventricle_axes=(rng.uniform(4.0, 7.0), rng.uniform(18.0, 24.0), rng.uniform(12.0, 16.0)),
        ventricle_z=rng.uniform(12.0, 20.0),
        noise_sigma=rng.uniform(4.0, 6.0),
    )


def _paint_scalp(vol: np.ndarray, g: _Grid, head: _Head) -> None:
    s = head.scalp_thickness
    ax, ay, az = head.skull_axes
    vol[_ellipsoid(g, (0, 0, 0), (ax + s, ay + s, az + s))] = 35.0


def _paint_skull(vol: np.ndarray, g: _Grid, head: _Head) -> None:
    """Cortical outer and inner tables (~bone_hu) with less dense diploe between them."""
    vol[_ellipsoid(g, (0, 0, 0), head.skull_axes)] = head.bone_hu
    t = head.skull_thickness
    ax, ay, az = head.skull_axes
    diploe = (ax - t / 3, ay - t / 3, az - t / 3)
    inner_table = (ax - 2 * t / 3, ay - 2 * t / 3, az - 2 * t / 3)
    vol[_ellipsoid(g, (0, 0, 0), diploe) & ~_ellipsoid(g, (0, 0, 0), inner_table)] = (
        0.6 * head.bone_hu
    )


def _paint_brain(vol: np.ndarray, g: _Grid, head: _Head) -> None:
    """CSF rim under the skull, cortical grey matter band, white matter core."""
    ax, ay, az = head.inner_axes
    vol[_ellipsoid(g, (0, 0, 0), (ax, ay, az))] = head.csf_hu
    vol[_ellipsoid(g, (0, 0, 0), (ax - 1.5, ay - 1.5, az - 1.5))] = head.grey_hu
    vol[_ellipsoid(g, (0, 0, 0), (ax - 6.0, ay - 6.0, az - 6.0))] = head.white_hu


def _paint_ventricles(vol: np.ndarray, g: _Grid, head: _Head) -> np.ndarray:
    """Two lateral ventricles (CSF). Returns their mask (lesions are kept out of it)."""
    vx, vy, vz = head.ventricle_axes
    mask = _ellipsoid(g, (-vx - 2.0, -5.0, head.ventricle_z), (vx, vy, vz)) | _ellipsoid(
        g, (vx + 2.0, -5.0, head.ventricle_z), (vx, vy, vz)
    )
    vol[mask] = head.csf_hu
    return mask


@dataclass(frozen=True)
class _Hemorrhage:
    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    hu: float


def _draw_hemorrhage(rng: np.random.Generator, head: _Head, g: _Grid) -> _Hemorrhage:
    """An intraparenchymal bleed of 1.2-2.8 cm in plane spanning several slices, centred in
    the white matter away from the skull and ventricles, on a slice inside the series."""
    axes = (rng.uniform(6.0, 14.0), rng.uniform(6.0, 14.0), rng.uniform(6.0, 12.0))
    ax, ay, _ = head.inner_axes
    side = rng.choice([-1.0, 1.0])
    cx = side * rng.uniform(0.35, 0.5) * ax
    cy = rng.uniform(-0.35, 0.35) * ay
    # Slices whose brain section is wide enough; the lesion sits on one of them.
    zs = g.z[:, 0, 0]
    _, _, az = head.inner_axes
    candidates = zs[np.abs(zs) < 0.45 * az]
    cz = float(rng.choice(candidates)) if candidates.size else float(zs[len(zs) // 2])
    return _Hemorrhage(centre=(cx, cy, cz), axes=axes, hu=rng.uniform(60.0, 75.0))


def _paint_hemorrhage(
    vol: np.ndarray, g: _Grid, head: _Head, bleed: _Hemorrhage, keep_out: np.ndarray
) -> np.ndarray:
    """Acute blood; clipped to stay at least 3 mm inside the inner table and out of
    ``keep_out`` (the ventricles), so it is always intraparenchymal."""
    ax, ay, az = head.inner_axes
    inside = _ellipsoid(g, (0, 0, 0), (ax - 3.0, ay - 3.0, az - 3.0))
    mask = _ellipsoid(g, bleed.centre, bleed.axes) & inside & ~keep_out
    vol[mask] = bleed.hu
    return mask


def head_volume(
    rng: np.random.Generator, g: _Grid, *, hemorrhage: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A head CT volume in HU and the lesion mask (all False without hemorrhage)."""
    head = _draw_head(rng)
    bleed = _draw_hemorrhage(rng, head, g)
    vol = np.full(g.shape, AIR_HU, dtype=np.float32)
    _paint_scalp(vol, g, head)
    _paint_skull(vol, g, head)
    _paint_brain(vol, g, head)
    ventricles = _paint_ventricles(vol, g, head)
    lesion = np.zeros(g.shape, dtype=bool)
    if hemorrhage:
        lesion = _paint_hemorrhage(vol, g, head, bleed, keep_out=ventricles)
    _add_noise(vol, rng, head.noise_sigma)
    return vol, lesion


# ------------------------------------------------------------------------- CTPA anatomy


@dataclass(frozen=True)
class _Chest:
    body_axes: tuple[float, float]
    fat_thickness: float
    lung_axes: tuple[float, float]
    lung_hu: float
    soft_hu: float
    artery_hu: float
    aorta_hu: float
    branches: tuple[tuple[float, float, float, float, float], ...]  # x, y, dx/dz, dy/dz, r
    noise_sigma: float


# Pulmonary arteries in which an embolus may lodge: (x, y, radius) of the right and left
# pulmonary arteries at the hilum, relative to the lung centres.
_HILAR = ((-48.0, 5.0, 9.0), (48.0, 5.0, 9.0))
_LUNG_CENTRES = (-78.0, 78.0)


def _draw_chest(rng: np.random.Generator) -> _Chest:
    scale = rng.uniform(0.92, 1.08)
    branches = []
    for lung_x in _LUNG_CENTRES:
        for _ in range(6):
            branches.append(
                (
                    lung_x + rng.uniform(-30.0, 30.0),
                    rng.uniform(-50.0, 50.0),
                    rng.uniform(-0.3, 0.3),
                    rng.uniform(-0.3, 0.3),
                    rng.uniform(2.0, 4.5),
                )
            )
    return _Chest(
        body_axes=(160.0 * scale, 115.0 * scale),
        fat_thickness=rng.uniform(8.0, 18.0),
        lung_axes=(55.0 * scale, 82.0 * scale),
        lung_hu=rng.uniform(-870.0, -830.0),
        soft_hu=rng.uniform(38.0, 48.0),
        artery_hu=rng.uniform(280.0, 340.0),
        aorta_hu=rng.uniform(230.0, 280.0),
        branches=tuple(branches),
        noise_sigma=rng.uniform(5.0, 8.0),
    )


def _paint_body(vol: np.ndarray, g: _Grid, chest: _Chest) -> None:
    """Torso: subcutaneous fat (-100 HU) around muscle / mediastinal soft tissue."""
    a, b = chest.body_axes
    t = chest.fat_thickness
    vol[_extrude(g, (g.x / a) ** 2 + (g.y / b) ** 2 <= 1.0)] = -100.0
    vol[_extrude(g, (g.x / (a - t)) ** 2 + (g.y / (b - t)) ** 2 <= 1.0)] = chest.soft_hu


def _paint_spine(vol: np.ndarray, g: _Grid) -> None:
    """Vertebral body (cortex ~900 HU, cancellous ~400 HU) with the spinal canal behind."""
    body = _tube(g, (0.0, 72.0), (0.0, 0.0), 19.0)
    vol[body] = 900.0
    vol[_tube(g, (0.0, 72.0), (0.0, 0.0), 16.0)] = 400.0
    vol[_tube(g, (0.0, 100.0), (0.0, 0.0), 8.0)] = 15.0


def _paint_lungs(vol: np.ndarray, g: _Grid, chest: _Chest) -> np.ndarray:
    la, lb = chest.lung_axes
    mask = np.zeros(g.shape, dtype=bool)
    for lx in _LUNG_CENTRES:
        mask |= _extrude(g, ((g.x - lx) / la) ** 2 + ((g.y - 5.0) / lb) ** 2 <= 1.0)
    vol[mask] = chest.lung_hu
    return mask


def _paint_arteries(vol: np.ndarray, g: _Grid, chest: _Chest) -> None:
    """Contrast-filled vessels: aorta, main and hilar pulmonary arteries, lung branches."""
    vol[_tube(g, (-18.0, -20.0), (0.0, 0.0), 15.0)] = chest.aorta_hu  # ascending aorta
    vol[_tube(g, (22.0, 55.0), (0.0, 0.0), 11.0)] = chest.aorta_hu  # descending aorta
    vol[_tube(g, (12.0, -38.0), (0.0, 0.0), 14.0)] = chest.artery_hu  # pulmonary trunk
    for hx, hy, r in _HILAR:
        vol[_tube(g, (hx, hy), (0.0, 0.0), r)] = chest.artery_hu
    for x, y, dx, dy, r in chest.branches:
        vol[_tube(g, (x, y), (dx, dy), r)] = chest.artery_hu


@dataclass(frozen=True)
class _Embolus:
    vessel: int  # index into _HILAR
    offset: tuple[float, float]
    radius: float
    z_range: tuple[int, int]  # first and last slice index
    hu: float


def _draw_embolus(rng: np.random.Generator, g: _Grid) -> _Embolus:
    vessel = int(rng.integers(len(_HILAR)))
    r = _HILAR[vessel][2]
    n = g.shape[0]
    length = int(min(n, max(3, round(rng.uniform(15.0, 30.0) / g.thickness))))
    first = int(rng.integers(0, n - length + 1))
    return _Embolus(
        vessel=vessel,
        offset=(rng.uniform(-0.2, 0.2) * r, rng.uniform(-0.2, 0.2) * r),
        radius=rng.uniform(0.45, 0.65) * r,
        z_range=(first, first + length - 1),
        hu=rng.uniform(30.0, 50.0),
    )


def _paint_embolus(vol: np.ndarray, g: _Grid, emb: _Embolus) -> np.ndarray:
    """A filling defect (clot, ~40 HU) inside a contrast-filled hilar pulmonary artery."""
    hx, hy, _ = _HILAR[emb.vessel]
    mask = _tube(g, (hx + emb.offset[0], hy + emb.offset[1]), (0.0, 0.0), emb.radius)
    mask[: emb.z_range[0]] = False
    mask[emb.z_range[1] + 1 :] = False
    vol[mask] = emb.hu
    return mask


def ctpa_volume(
    rng: np.random.Generator, g: _Grid, *, embolus: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A CT pulmonary angiogram volume in HU and the embolus mask (all False without)."""
    chest = _draw_chest(rng)
    emb = _draw_embolus(rng, g)
    vol = np.full(g.shape, AIR_HU, dtype=np.float32)
    _paint_body(vol, g, chest)
    _paint_lungs(vol, g, chest)
    _paint_spine(vol, g)
    _paint_arteries(vol, g, chest)
    lesion = np.zeros(g.shape, dtype=bool)
    if embolus:
        lesion = _paint_embolus(vol, g, emb)
    _add_noise(vol, rng, chest.noise_sigma)
    return vol, lesion


# ------------------------------------------------------------------------- DICOM writing


@dataclass(frozen=True)
class _SeriesInfo:
    study_uid: str
    series_uid: str
    frame_uid: str
    uid_entropy: tuple[object, ...]
    patient_id: str
    accession: str
    study_description: str
    series_description: str
    body_part: str
    kernel: str
    when: datetime
    window: tuple[float, float]  # centre, width
    contrast_agent: str = ""


def _uid(*entropy: object) -> UID:
    return generate_uid(entropy_srcs=[str(e) for e in ("triage.synth", *entropy)])


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:32] or "study"


def _slice_dataset(info: _SeriesInfo, g: _Grid, index: int, pixels: np.ndarray) -> Dataset:
    sop_uid = _uid(*info.uid_entropy, "sop", index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    date, time = info.when.strftime("%Y%m%d"), info.when.strftime("%H%M%S")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
    ds.AccessionNumber = info.accession
    ds.Modality = "CT"
    ds.Manufacturer = "TRIAGE SYNTHETIC"
    ds.InstitutionName = "TRIAGE DEMO HOSPITAL"
    ds.ReferringPhysicianName = ""
    ds.StationName = "SYNTHCT01"
    ds.StudyDescription = info.study_description
    ds.SeriesDescription = info.series_description
    ds.ManufacturerModelName = "PhantomScan 64"
    ds.PatientName = f"SYNTHETIC^{info.patient_id}"
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    if info.contrast_agent:
        ds.ContrastBolusAgent = info.contrast_agent
        ds.ContrastBolusRoute = "IV"
    ds.BodyPartExamined = info.body_part
    ds.SliceThickness = f"{g.thickness:g}"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.SoftwareVersions = "triage-synth 1"
    ds.ReconstructionDiameter = f"{g.spacing * g.shape[2]:.1f}"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.XRayTubeCurrent = 250
    ds.ConvolutionKernel = info.kernel
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = info.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    z = float(g.z[index, 0, 0])
    ds.ImagePositionPatient = [
        f"{float(g.x[0, 0, 0]):.4f}",
        f"{float(g.y[0, 0, 0]):.4f}",
        f"{z:.4f}",
    ]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = info.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{z:.4f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [f"{g.spacing:.6f}", f"{g.spacing:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = f"{info.window[0]:g}"
    ds.WindowWidth = f"{info.window[1]:g}"
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
    ds.RescaleSlope = f"{RESCALE_SLOPE:g}"
    ds.RescaleType = "HU"
    ds.PixelData = pixels.astype("<i2").tobytes()
    return ds


def _write_series(vol_hu: np.ndarray, g: _Grid, info: _SeriesInfo, out_dir: Path) -> list[Path]:
    """Write one file per slice; stored value = round(HU - intercept) / slope, as int16."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stored = np.rint((np.clip(vol_hu, HU_MIN, HU_MAX) - RESCALE_INTERCEPT) / RESCALE_SLOPE)
    stored = stored.astype(np.int16)
    prefix = _safe_name(info.accession)
    files = []
    for i in range(g.shape[0]):
        path = out_dir / f"{prefix}_{i + 1:04d}.dcm"
        _slice_dataset(info, g, i, stored[i]).save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _when(seed: int) -> datetime:
    """A deterministic acquisition time in 2025, spread by seed."""
    return datetime(2025, 1, 1) + timedelta(minutes=(seed * 7919) % (365 * 24 * 60))


# ------------------------------------------------------------------------- public API


def write_head_ct(
    out_dir: Path,
    *,
    hemorrhage: bool,
    seed: int,
    patient_id: str,
    accession: str,
    study_uid: str | None = None,
    n_slices: int = 24,
    slice_thickness: float = 5.0,
    size: int = 512,
) -> SyntheticStudy:
    """Write a non-contrast axial head CT series into ``out_dir``; ``label`` = ``hemorrhage``.

    Anatomy: scalp, cortical skull (>1000 HU) with diploe, CSF rim, grey (~38 HU) and white
    (~29 HU) matter, lateral ventricles (~5 HU), air (-1000 HU), Gaussian noise 4-6 HU.
    ``hemorrhage=True`` adds an acute intraparenchymal bleed (60-75 HU, 1.2-2.8 cm across,
    over several slices). Files are named ``<accession>_<instance>.dcm``.
    """
    rng = np.random.default_rng(seed)
    # Slices from skull base upward; the head centre sits a third of the way up the series.
    z0 = -(n_slices * slice_thickness) / 3.0
    g = _Grid.axial(size, 230.0, n_slices, slice_thickness, z0)
    vol, lesion = head_volume(rng, g, hemorrhage=hemorrhage)
    entropy = ("head", seed, patient_id, accession)
    study = study_uid or _uid(*entropy, "study")
    info = _SeriesInfo(
        study_uid=study,
        series_uid=_uid(*entropy, study, "series"),
        frame_uid=_uid(*entropy, study, "frame"),
        uid_entropy=(*entropy, study),
        patient_id=patient_id,
        accession=accession,
        study_description=HEAD_DESCRIPTION,
        series_description=f"AXIAL {slice_thickness:g}MM BRAIN",
        body_part="HEAD",
        kernel="STANDARD",
        when=_when(seed),
        window=(40.0, 80.0),
    )
    files = _write_series(vol, g, info, Path(out_dir))
    return SyntheticStudy(
        study_uid=info.study_uid,
        series_uid=info.series_uid,
        accession=accession,
        patient_id=patient_id,
        files=files,
        label=hemorrhage,
        description=HEAD_DESCRIPTION,
        lesion_instances=_slices_with(lesion),
    )


def write_ctpa(
    out_dir: Path,
    *,
    embolus: bool,
    seed: int,
    patient_id: str,
    accession: str,
    study_uid: str | None = None,
    n_slices: int = 40,
    slice_thickness: float = 2.5,
    size: int = 512,
) -> SyntheticStudy:
    """Write a CT pulmonary angiogram series into ``out_dir``; ``label`` = ``embolus``.

    Anatomy: subcutaneous fat, soft tissue/mediastinum (~40 HU), lungs (~-850 HU), vertebra,
    contrast-filled aorta (~250 HU) and pulmonary arteries (~300 HU), noise 5-8 HU.
    ``embolus=True`` adds a filling defect (30-50 HU) inside a hilar pulmonary artery over
    1.5-3 cm of z. ContrastBolusAgent is set.
    """
    rng = np.random.default_rng(seed)
    g = _Grid.axial(size, 380.0, n_slices, slice_thickness, -(n_slices * slice_thickness) / 2)
    vol, lesion = ctpa_volume(rng, g, embolus=embolus)
    entropy = ("ctpa", seed, patient_id, accession)
    study = study_uid or _uid(*entropy, "study")
    info = _SeriesInfo(
        study_uid=study,
        series_uid=_uid(*entropy, study, "series"),
        frame_uid=_uid(*entropy, study, "frame"),
        uid_entropy=(*entropy, study),
        patient_id=patient_id,
        accession=accession,
        study_description=CTPA_DESCRIPTION,
        series_description=f"CTA {slice_thickness:g}MM PE",
        body_part="CHEST",
        kernel="SOFT",
        when=_when(seed),
        window=(100.0, 700.0),
        contrast_agent="IOHEXOL 350 MG/ML",
    )
    files = _write_series(vol, g, info, Path(out_dir))
    return SyntheticStudy(
        study_uid=info.study_uid,
        series_uid=info.series_uid,
        accession=accession,
        patient_id=patient_id,
        files=files,
        label=embolus,
        description=CTPA_DESCRIPTION,
        lesion_instances=_slices_with(lesion),
    )
