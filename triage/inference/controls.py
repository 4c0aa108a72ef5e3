"""Write a HU volume as an axial CT series (int16, intercept -1024), for tests that need a
volume the engine must read back from DICOM: a resliced real series, a numpy phantom."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_volume_series(
    hu: np.ndarray,
    z_positions: Sequence[float],
    pixel_mm: float,
    thickness_mm: float,
    out_dir: Path,
    *,
    template: Path | None = None,
    description: str = "AXIAL",
) -> list[Path]:
    """``hu`` [z, y, x] (inferior -> superior) as one CT series in ``out_dir``; header fields
    other than geometry, pixels and UIDs come from ``template`` when given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(template, stop_before_pixels=True) if template else None
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    nz, ny, nx = hu.shape
    paths = []
    for k in range(nz):
        ds = Dataset()
        if base is not None:
            for elem in base:
                if elem.tag.group not in (0x0002, 0x7FE0) and elem.VR != "SQ":
                    ds.add(elem)
        sop = generate_uid()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.Modality = "CT"
        ds.PatientID = ds.get("PatientID", "") or "TEST"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesDescription = description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-nx * pixel_mm / 2, -ny * pixel_mm / 2, float(z_positions[k])]
        ds.PixelSpacing = [pixel_mm, pixel_mm]
        ds.SliceThickness = thickness_mm
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        for tag in ("PixelPaddingValue", "GantryDetectorTilt"):
            if tag in ds:
                delattr(ds, tag)
        stored = np.clip(np.rint(hu[k] + 1024.0), -32768, 32767).astype(np.int16)
        ds.PixelData = stored.tobytes()
        path = out_dir / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
