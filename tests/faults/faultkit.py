"""What the fault tests share besides tests/support (the engine subprocess, dcmtk's storescu,
waiting): what the RIS got, and the studies they send."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from triage.synth.ct import SyntheticStudy, write_head_ct

# -- what the RIS got --------------------------------------------------------------------------


def segment(message: str, name: str) -> list[str]:
    for seg in message.split("\r"):
        if seg.startswith(name + "|"):
            return seg.split("|")
    return []


def ris_summary(messages: Iterable[str]) -> dict[str, Any]:
    """Per accession number: the XO control ids and ORU control ids the RIS received."""
    out: dict[str, dict[str, list[str]]] = {}
    for msg in messages:
        msh = segment(msg, "MSH")
        kind = msh[8].split("^")[0]
        obr = segment(msg, "OBR")
        accession = obr[18] if len(obr) > 18 and obr[18] else (obr[3].split("^")[0] if obr else "")
        entry = out.setdefault(accession, {"XO": [], "ORU": [], "other": []})
        if kind == "ORM" and segment(msg, "ORC")[1] == "XO":
            entry["XO"].append(msh[9])
        elif kind == "ORU":
            entry["ORU"].append(msh[9])
        else:
            entry["other"].append(msh[9])
    return out


# -- studies -----------------------------------------------------------------------------------


def positive_head_ct(work: Path, accession: str, patient_id: str) -> SyntheticStudy:
    """A 24-slice 256 x 256 head CT with a bleed, the one the ich model scores positive in
    tests/inference/test_outage.py (seed 11); its UIDs follow accession and patient."""
    return write_head_ct(
        work / accession,
        hemorrhage=True,
        seed=11,
        patient_id=patient_id,
        accession=accession,
        n_slices=24,
        size=256,
    )


def with_derived_images(study: SyntheticStudy, total: int) -> list[Path]:
    """The study's files plus ``total - len(files)`` derived images (ImageType DERIVED\\
    SECONDARY, one more series, 128 x 128 copies of its slices), as reformats add to a real
    study: the model still gets the axial series, and the study has ``total`` instances."""
    files = list(study.files)
    extra = study.files[0].parent / "derived"
    extra.mkdir(exist_ok=True)
    series_uid = generate_uid(entropy_srcs=[study.study_uid, "derived"])
    for n in range(total - len(files)):
        ds = pydicom.dcmread(study.files[n % len(study.files)])
        pixels = ds.pixel_array[::2, ::2].copy()
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [float(v) * 2 for v in ds.PixelSpacing]
        ds.PixelData = pixels.tobytes()
        ds.ImageType = ["DERIVED", "SECONDARY", "REFORMATTED"]
        ds.SeriesDescription = "MPR REFORMAT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 99
        ds.InstanceNumber = n + 1
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[study.study_uid, "derived", str(n)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = extra / f"derived_{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files
