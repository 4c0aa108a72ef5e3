"""Writing a painted HU volume as a CT series the way scanners do (axial, one file per slice),
with the header variety a site sends: scanner and kernel names, rescale intercept and slope,
signed or unsigned pixels, 12 or 16 stored bits, implicit or explicit VR, an optional localizer.

Geometry: slice ``k`` of ``hu[z, row, col]`` is at patient z ``acq.z_top - k * acq.spacing_z``
(slice 0 the most superior) with InstanceNumber ``k + 1`` (head first) or ``z - k``
(``acq.feet_first``); rows run anterior to posterior (patient y
grows), columns from the patient's right to left (patient x grows); the slice is centred on
the isocentre.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

UID_ROOT = "2.25."  # UUID-derived UIDs: no organisation root needed


@dataclass(frozen=True)
class Acquisition:
    """How the series was acquired and encoded (every field says its default)."""

    manufacturer: str = "SIEMENS"
    model: str = "SOMATOM Definition AS"
    kernel: str = "H30s"
    kvp: float = 120.0
    slice_thickness: float = 5.0  # mm, nominal (SliceThickness)
    spacing_z: float = 5.0  # mm between slice centres
    pixel_spacing: float = 0.45  # mm, square pixels
    z_top: float = 0.0  # patient z of the first (most superior) slice, mm
    rescale_intercept: float = -1024.0
    rescale_slope: float = 1.0
    signed: bool = False  # PixelRepresentation 1
    bits_stored: int = 12  # 12 or 16
    implicit_vr: bool = False  # Implicit VR Little Endian instead of Explicit
    series_number: int = 2
    # numbering from the feet: slice k (still at z_top - k * spacing_z) gets InstanceNumber
    # z - k, so instance 1 is the most inferior slice (as many CTPAs are written)
    feet_first: bool = False


@dataclass(frozen=True)
class StudyHeader:
    """Who and what the study is (every field says its default)."""

    patient_id: str = "X000001"
    patient_name: str = "CROSSCHECK^PHANTOM"
    patient_sex: str = "O"
    patient_age: str = "060Y"
    accession: str = "XA000001"
    study_description: str = "CT HEAD WO CONTRAST"
    series_description: str = "AXIAL 5MM"
    protocol_name: str = "HEAD ROUTINE"
    body_part: str = "HEAD"
    contrast_agent: str | None = None  # ContrastBolusAgent; None: not written
    study_date: str = "20261207"
    study_time: str = "031500"
    station: str = "CT01"


def make_uid(*parts: object) -> str:
    """A deterministic UID from ``parts`` (2.25 + a decimal 128-bit hash, at most 64 chars)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:16]
    return UID_ROOT + str(int.from_bytes(digest, "big"))


def instance_number(k: int, n: int, acq: Acquisition) -> int:
    """The InstanceNumber of slice ``k`` of ``n`` (slice 0 the most superior)."""
    return n - k if acq.feet_first else k + 1


def stored_values(hu: np.ndarray, acq: Acquisition) -> np.ndarray:
    """``hu`` as stored pixel values of ``acq``'s encoding (rounded, clipped to what the
    encoding can hold: a scanner's lowest value is about -1024 HU)."""
    raw = np.rint((hu.astype(np.float64) - acq.rescale_intercept) / acq.rescale_slope)
    if acq.signed:
        lo, hi = -(2 ** (acq.bits_stored - 1)), 2 ** (acq.bits_stored - 1) - 1
        dtype: type[np.integer] = np.int16
    else:
        lo, hi = 0, 2**acq.bits_stored - 1
        dtype = np.uint16
    return np.clip(raw, lo, hi).astype(dtype)


def _base(acq: Acquisition, header: StudyHeader, study_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Modality = "CT"
    ds.Manufacturer = acq.manufacturer
    ds.ManufacturerModelName = acq.model
    ds.StationName = header.station
    ds.PatientID = header.patient_id
    ds.PatientName = header.patient_name
    ds.PatientSex = header.patient_sex
    ds.PatientAge = header.patient_age
    ds.PatientBirthDate = ""
    ds.AccessionNumber = header.accession
    ds.ReferringPhysicianName = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = header.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = header.study_time
    ds.StudyID = header.accession[-8:]
    ds.StudyDescription = header.study_description
    ds.BodyPartExamined = header.body_part
    ds.ProtocolName = header.protocol_name
    if header.contrast_agent:
        ds.ContrastBolusAgent = header.contrast_agent
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = make_uid("for", study_uid)
    ds.KVP = acq.kvp
    return ds


def _file(ds: Dataset, sop_uid: str, implicit: bool) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    return ds


def _pixels(ds: Dataset, values: np.ndarray, acq: Acquisition) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(values.shape[0]), int(values.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = acq.bits_stored
    ds.HighBit = acq.bits_stored - 1
    ds.PixelRepresentation = 1 if acq.signed else 0
    ds.RescaleIntercept = f"{acq.rescale_intercept:g}"
    ds.RescaleSlope = f"{acq.rescale_slope:g}"
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(values).astype("<i2" if acq.signed else "<u2").tobytes()


def write_series(
    folder: Path,
    hu: np.ndarray,
    acq: Acquisition,
    header: StudyHeader,
    *,
    window: tuple[float, float] = (40.0, 80.0),
) -> list[Path]:
    """Write ``hu`` [z, rows, cols] (float HU) as one axial series under ``folder``; returns
    the files in instance order. UIDs derive from the accession and series number, so the
    same study written twice gets the same UIDs."""
    if hu.ndim != 3:
        raise ValueError(f"hu must be [z, rows, cols], got shape {hu.shape}")
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = make_uid("study", header.accession, header.patient_id)
    series_uid = make_uid("series", study_uid, acq.series_number)
    z, rows, cols = hu.shape
    ps = acq.pixel_spacing
    x0, y0 = -(cols - 1) / 2 * ps, -(rows - 1) / 2 * ps
    files = []
    for k in range(z):
        ds = _base(acq, header, study_uid, series_uid)
        sop_uid = make_uid("sop", series_uid, k)
        _file(ds, sop_uid, acq.implicit_vr)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesDescription = header.series_description
        ds.SeriesNumber = acq.series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = instance_number(k, z, acq)
        zpos = acq.z_top - k * acq.spacing_z
        ds.ImagePositionPatient = [f"{x0:.4f}", f"{y0:.4f}", f"{zpos:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = f"{zpos:.4f}"
        ds.SliceThickness = f"{acq.slice_thickness:g}"
        ds.PixelSpacing = [f"{ps:.6g}", f"{ps:.6g}"]
        ds.ConvolutionKernel = acq.kernel
        ds.WindowCenter = f"{window[0]:g}"
        ds.WindowWidth = f"{window[1]:g}"
        _pixels(ds, stored_values(hu[k], acq), acq)
        path = folder / f"CT{acq.series_number:03d}_{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def write_localizer(folder: Path, hu: np.ndarray, acq: Acquisition, header: StudyHeader) -> Path:
    """One lateral localizer (scout) of the study in its own series (SeriesNumber 1,
    ImageType ORIGINAL\\PRIMARY\\LOCALIZER), as scanners send first: the mean of ``hu`` along
    the columns, a projection the series selection must pass over."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = make_uid("study", header.accession, header.patient_id)
    series_uid = make_uid("series", study_uid, 1)
    ds = _base(acq, header, study_uid, series_uid)
    _file(ds, make_uid("sop", series_uid, 0), acq.implicit_vr)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesDescription = "Topogram"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    proj = hu.mean(axis=2)  # [z, rows]: a lateral view
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ps = acq.pixel_spacing
    ds.ImagePositionPatient = [0, f"{-(hu.shape[1] - 1) / 2 * ps:.4f}", f"{acq.z_top:.4f}"]
    ds.PixelSpacing = [f"{acq.spacing_z:.6g}", f"{ps:.6g}"]
    ds.SliceThickness = "1"
    ds.WindowCenter, ds.WindowWidth = "0", "2000"
    _pixels(ds, stored_values(proj, acq), acq)
    path = folder / "CT001_0001.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def instance_numbers(files: Sequence[Path]) -> list[int]:
    """InstanceNumbers of ``files`` (header only), for tests and reports."""
    import pydicom

    return [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in files]
