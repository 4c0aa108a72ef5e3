"""The DICOM path: a phantom written as a CT Image Storage series (int16, slope 1, intercept
-1024) with its ground truth beside it (``truth.json``, ``truth_mask.npz``), never in it."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
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

from triage.synth.ct.grid import (
    HU_MAX,
    HU_MIN,
    RESCALE_INTERCEPT,
    RESCALE_SLOPE,
    Grid,
    Lesion,
    equivalent_diameter,
    slices_with,
)
from triage.synth.ct.scanner import coarse_cells, coarse_noise, coarse_side, noise_sigma, render
from triage.synth.ct.spec import SCANNERS, PhantomSpec, z_positions

HEAD_DESCRIPTION = "CT HEAD WO CONTRAST"
CTPA_DESCRIPTION = "CTA CHEST PE PROTOCOL"
DISCLAIMER = "synthetic phantom; not for clinical use"


@dataclass(frozen=True)
class SyntheticStudy:
    """What was written: identifiers, files in InstanceNumber order, and the ground truth.

    ``lesion_instances``: InstanceNumbers of the slices that show the lesion (empty when
    ``label`` is False), e.g. to check a model's key slice. ``truth_json`` / ``truth_mask``:
    the ground-truth files beside the series.
    """

    study_uid: str
    series_uid: str
    accession: str
    patient_id: str
    files: list[Path]
    label: bool
    description: str
    lesion_instances: tuple[int, ...] = field(default=())
    subtypes: tuple[str, ...] = ()
    mimics: tuple[str, ...] = ()
    truth_json: Path | None = None
    truth_mask: Path | None = None


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
    model_name: str
    when: datetime
    window: tuple[float, float]  # centre, width
    contrast_agent: str = ""


def _uid(*entropy: object) -> UID:
    return generate_uid(entropy_srcs=[str(e) for e in ("triage.synth", *entropy)])


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:32] or "study"


def _slice_dataset(info: _SeriesInfo, g: Grid, index: int, pixels: np.ndarray) -> Dataset:
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
    ds.ManufacturerModelName = info.model_name
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
    ds.SoftwareVersions = "triage-synth 2"
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


def _write_series(vol_hu: np.ndarray, g: Grid, info: _SeriesInfo, out_dir: Path) -> list[Path]:
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


def _dicom_volume(
    spec: PhantomSpec, seed: int, size: int
) -> tuple[np.ndarray, np.ndarray, Grid, list[Lesion]]:
    """The DICOM-path volume: painted at ``size`` x ``size``, white noise per pixel plus the
    coarse component (shared with :func:`model_sample`) repeated over its cells."""
    z = z_positions(spec)
    g = Grid.at(size, spec.fov_mm, z, spec.slice_thickness)
    vol, mask, lesions = render(spec, seed, g)
    rng = np.random.default_rng([seed, 1, 0])
    vol += rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(noise_sigma(spec))
    vol += coarse_cells(coarse_noise(spec, seed, len(z), coarse_side(size)), size)
    return vol, mask, g, lesions


def _write_truth(
    out_dir: Path, spec: PhantomSpec, seed: int, g: Grid, mask: np.ndarray, lesions: list[Lesion]
) -> tuple[Path, Path]:
    """``truth.json`` and ``truth_mask.npz`` beside the series (never inside the DICOM)."""
    truth = {
        "note": f"{DISCLAIMER}; ground truth of the generator, not a reading",
        "seed": seed,
        "spec": asdict(spec),
        "label": spec.label,
        "subtypes": list(spec.subtypes),
        "mimics": list(spec.mimics),
        "lesions": [asdict(les) for les in lesions],
        "lesion_volume_ml": float(sum(les.volume_ml for les in lesions)),
        "lesion_size_mm": equivalent_diameter(sum(les.volume_ml for les in lesions)),
        "lesion_instances": list(slices_with(mask)),
        "grid": {
            "shape": list(g.shape),
            "pixel_spacing_mm": g.spacing,
            "slice_thickness_mm": g.thickness,
            "z_mm": [float(v) for v in g.z[:, 0, 0]],
        },
        "scanner": SCANNERS[spec.scanner][0],
    }
    json_path = out_dir / "truth.json"
    json_path.write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    mask_path = out_dir / "truth_mask.npz"
    np.savez_compressed(
        mask_path,
        mask=np.packbits(mask, axis=None),
        shape=np.array(mask.shape),
        z_mm=g.z[:, 0, 0].astype(np.float64),
    )
    return json_path, mask_path


def read_truth_mask(path: Path) -> np.ndarray:
    """The boolean lesion mask [z, y, x] (DICOM grid, InstanceNumber order) of
    ``truth_mask.npz``."""
    with np.load(path) as f:
        shape = tuple(int(v) for v in f["shape"])
        return np.unpackbits(f["mask"], count=int(np.prod(shape))).astype(bool).reshape(shape)


def write_study(
    out_dir: Path,
    spec: PhantomSpec,
    *,
    seed: int,
    patient_id: str,
    accession: str,
    study_uid: str | None = None,
    size: int = 512,
) -> SyntheticStudy:
    """Write the study of ``spec`` as a DICOM series into ``out_dir`` with its ground truth
    beside it (``truth.json``, ``truth_mask.npz``). Files are ``<accession>_<instance>.dcm``."""
    out = Path(out_dir)
    vol, mask, g, lesions = _dicom_volume(spec, seed, size)
    head = spec.task == "ich"
    entropy = ("head" if head else "ctpa", seed, patient_id, accession)
    study = study_uid or _uid(*entropy, "study")
    model_name, kernel, _, _ = SCANNERS[spec.scanner]
    t = spec.slice_thickness
    info = _SeriesInfo(
        study_uid=study,
        series_uid=_uid(*entropy, study, "series"),
        frame_uid=_uid(*entropy, study, "frame"),
        uid_entropy=(*entropy, study),
        patient_id=patient_id,
        accession=accession,
        study_description=HEAD_DESCRIPTION if head else CTPA_DESCRIPTION,
        series_description=f"AXIAL {t:g}MM BRAIN" if head else f"CTA {t:g}MM PE",
        body_part="HEAD" if head else "CHEST",
        kernel=kernel,
        model_name=model_name,
        when=_when(seed),
        window=(40.0, 80.0) if head else (100.0, 700.0),
        contrast_agent="" if head else "IOHEXOL 350 MG/ML",
    )
    files = _write_series(vol, g, info, out)
    truth_json, truth_mask = _write_truth(out, spec, seed, g, mask, lesions)
    return SyntheticStudy(
        study_uid=info.study_uid,
        series_uid=info.series_uid,
        accession=accession,
        patient_id=patient_id,
        files=files,
        label=spec.label,
        description=info.study_description,
        lesion_instances=slices_with(mask),
        subtypes=spec.subtypes,
        mimics=spec.mimics,
        truth_json=truth_json,
        truth_mask=truth_mask,
    )


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
    subtype: str = "intraparenchymal",
    lesion_size_mm: float | None = None,
    mimics: Sequence[str] = (),
    fov_mm: float = 230.0,
    noise_hu: float = 5.0,
    generator: int = 3,
) -> SyntheticStudy:
    """Write a non-contrast axial head CT series into ``out_dir``; ``label`` = ``hemorrhage``.

    Anatomy: scalp, cortical skull (>1000 HU) with diploe and skull base, CSF rim and sulci,
    grey (~38 HU) and white (~29 HU) matter, deep grey nuclei, falx, basal cisterns, lateral
    and third ventricles (~5 HU), air (-1000 HU), noise ~``noise_hu`` HU per pixel.
    ``hemorrhage=True`` adds an acute bleed of ``subtype`` (default: intraparenchymal,
    12-28 mm, clearly visible); ``mimics`` adds look-alikes (:data:`HEAD_MIMICS`). The
    ground truth is written beside the series (``truth.json``, ``truth_mask.npz``).
    ``generator``: what paints the head (:attr:`PhantomSpec.generator`).
    """
    size_mm = lesion_size_mm
    if hemorrhage and size_mm is None and subtype == "intraparenchymal":
        size_mm = float(np.random.default_rng([seed, 5]).uniform(14.0, 28.0))
    spec = PhantomSpec(
        task="ich",
        label=hemorrhage,
        subtypes=(subtype,) if hemorrhage else (),
        mimics=tuple(mimics),
        n_slices=n_slices,
        slice_thickness=slice_thickness,
        fov_mm=fov_mm,
        noise_hu=noise_hu,
        generator=generator,
        size_mm=size_mm,
    )
    return write_study(
        out_dir,
        spec,
        seed=seed,
        patient_id=patient_id,
        accession=accession,
        study_uid=study_uid,
        size=size,
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
    level: str = "central",
    mimics: Sequence[str] = (),
    fov_mm: float = 380.0,
    noise_hu: float = 8.0,
    generator: int = 3,
) -> SyntheticStudy:
    """Write a CT pulmonary angiogram series into ``out_dir``; ``label`` = ``embolus``.

    Anatomy: chest wall (fat, muscle, ribs, sternum), lungs (~-850 HU), mediastinum
    (~40 HU), heart with enhanced right and left chambers, aorta (ascending, arch,
    descending), SVC, vertebra, and a branching contrast-filled pulmonary arterial tree
    (250-450 HU, central to subsegmental). ``embolus=True`` adds a filling defect (20-70 HU)
    at ``level`` (default: central, clearly visible); ``mimics`` adds look-alikes
    (:data:`CTPA_MIMICS`). ContrastBolusAgent is set. Ground truth beside the series.
    ``generator``: what paints the chest (:attr:`PhantomSpec.generator`).
    """
    spec = PhantomSpec(
        task="pe",
        label=embolus,
        subtypes=(level,) if embolus else (),
        mimics=tuple(mimics),
        n_slices=n_slices,
        slice_thickness=slice_thickness,
        fov_mm=fov_mm,
        noise_hu=noise_hu,
        generator=generator,
    )
    return write_study(
        out_dir,
        spec,
        seed=seed,
        patient_id=patient_id,
        accession=accession,
        study_uid=study_uid,
        size=size,
    )
