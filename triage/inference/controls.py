"""Real scans as controls: every real series of the shared test data that a model could take,
through the engine's own code (series selection, load_volume, resample, check_input, the model
through the analyzer's client), with the outcome each must have.

None of these series shows a hemorrhage or an embolism (``shared/data/README.md``), so each
must be **below the operating point**, or **not assessable for the right reason**:

| control | model | right outcome |
|---|---|---|
| ``ge-head-ct`` as it is (4 and 7 mm slices) | ich | not assessable: slice thickness |
| ``ge-head-ct`` resliced to 5 mm (a new series) | ich | below the operating point |
| ``philips-head-phantom`` (S2010; never the localizer S1000 | ich | not assessable: no |
| nor the dose screens S4010) | | brain inside the skull, or below |
| ``lidc-chest-ct`` (non-contrast chest) | pe | not assessable: pulmonary artery enhancement |
| ``lidc-chest-ct`` forced past the checks | pe | below the operating point |

:func:`real_controls` runs them with an attached :class:`~triage.inference.analyze.TritonAnalyzer`
and returns one :class:`ControlResult` each (``ok`` says whether the outcome is a right one);
:func:`format_controls` prints them, one line each, for a validation report. With models
trained on phantoms only, a control that fails is a false alarm on real anatomy: report it,
never hide it. :func:`write_volume_series` writes a HU volume as a CT series (the reslice).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from triage.inference.analyze import TritonAnalyzer
from triage.inference.volume import load_volume, resample, select_series
from triage.ingest.dicom_files import instance_rows
from triage.store.models import Instance

RESLICE_MM = 5.0


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


@dataclass(frozen=True)
class ControlResult:
    """One real control's outcome."""

    name: str
    model: str
    status: str  # "not_assessable", "done" (checks passed, model answered) or "forced"
    probability: float | None
    threshold: float | None
    reason: str  # the not-assessable reason ("" otherwise)
    expected: str  # a regular expression the reason must match, "" = must be below
    series: str = ""  # the series the engine selected (description)

    @property
    def below(self) -> bool:
        return (
            self.probability is not None
            and self.threshold is not None
            and self.probability < self.threshold
        )

    @property
    def ok(self) -> bool:
        """Below the operating point, or not assessable for one of the right reasons."""
        if self.status == "not_assessable":
            return bool(self.expected) and re.search(self.expected, self.reason) is not None
        return self.below

    def line(self) -> str:
        verdict = "OK  " if self.ok else "FAIL"
        if self.status == "not_assessable":
            what = f"not assessable: {self.reason}"
        else:
            side = "below" if self.below else "AT/ABOVE"
            what = f"p={self.probability:.4f} {side} the operating point {self.threshold:.4f}" + (
                " (checks bypassed)" if self.status == "forced" else ""
            )
        return f"{verdict} {self.name} -> {self.model}: {what}"


def _rows(files: Sequence[Path]) -> list[Instance]:
    """Instance rows as the DICOM listener indexes them; files that are not DICOM (a
    DICOMDIR's DIRFILE) are left out."""
    return instance_rows(files, skip_unreadable=True)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and "LICENSE" not in p.name)


def reslice(files: Sequence[Path], out_dir: Path, thickness_mm: float = RESLICE_MM) -> list[Path]:
    """The series of ``files`` resampled along its slice normal to evenly spaced slices of
    ``thickness_mm`` (linear), written as a new axial series in ``out_dir``."""
    volume = load_volume(list(files))
    z = volume.z_positions
    n = int(np.floor((z[-1] - z[0]) / thickness_mm)) + 1
    targets = z[0] + np.arange(n) * thickness_mm
    upper = np.clip(np.searchsorted(z, targets, side="right"), 1, len(z) - 1)
    lower = upper - 1
    w = ((targets - z[lower]) / (z[upper] - z[lower])).clip(0.0, 1.0)[:, None, None]
    hu = volume.hu[lower] * (1.0 - w) + volume.hu[upper] * w
    return write_volume_series(
        hu.astype(np.float32),
        targets,
        volume.pixel_spacing[1],
        thickness_mm,
        out_dir,
        template=Path(volume.paths[0]),
        description=f"RESLICED {thickness_mm:g}MM",
    )


def _analyze(
    name: str, analyzer: TritonAnalyzer, model: str, rows: list[Instance], expected: str
) -> ControlResult:
    series = select_series(rows)
    a = analyzer.analyze(model, rows)
    return ControlResult(
        name=name,
        model=model,
        status=a.status,
        probability=a.probability,
        threshold=a.threshold if a.status == "done" else analyzer.contract(model).threshold,
        reason=a.detail if a.status == "not_assessable" else "",
        expected=expected,
        series=series[0].series_description or "" if series else "",
    )


def _forced(name: str, analyzer: TritonAnalyzer, model: str, rows: list[Instance]) -> ControlResult:
    """The model's answer on the series' volume, the input checks bypassed."""
    client = analyzer.client
    if client is None:
        raise RuntimeError("no inference client attached to the analyzer")
    contract = analyzer.contract(model)
    series = select_series(rows)
    volume = load_volume([Path(i.path) for i in series])
    out = client.infer(model, resample(volume, contract.input_shape, contract.z_resampling))
    return ControlResult(
        name=name,
        model=model,
        status="forced",
        probability=out.probability,
        threshold=out.threshold,
        reason="",
        expected="",
        series=series[0].series_description or "",
    )


def real_controls(
    data_dir: Path,
    analyzer: TritonAnalyzer,
    work_dir: Path,
    tasks: Collection[str] = ("ich", "pe"),
) -> list[ControlResult]:
    """Run every real control of ``data_dir`` (``shared/data/dicom``) for the models in
    ``tasks`` with ``analyzer`` (a client attached); the resliced series is written under
    ``work_dir``."""
    out: list[ControlResult] = []
    if "ich" in tasks:
        ge = [p for p in _files(data_dir / "ge-head-ct") if p.suffix == ".dcm"]
        ge_rows = _rows(ge)
        philips = _rows(_files(data_dir / "philips-head-phantom"))
        resliced = _rows(
            reslice([Path(r.path) for r in select_series(ge_rows)], work_dir / "ge-5mm")
        )
        out += [
            _analyze("ge-head-ct", analyzer, "ich", ge_rows, r"slice thickness [\d.]+ mm outside"),
            _analyze("ge-head-ct resliced to 5 mm", analyzer, "ich", resliced, ""),
            _analyze(
                "philips-head-phantom",
                analyzer,
                "ich",
                philips,
                r"wrong body part: .*brain-density tissue",
            ),
        ]
    if "pe" in tasks:
        lidc = _rows(_files(data_dir / "lidc-chest-ct"))
        out += [
            _analyze(
                "lidc-chest-ct", analyzer, "pe", lidc, r"pulmonary artery enhancement too low"
            ),
            _forced("lidc-chest-ct forced past the checks", analyzer, "pe", lidc),
        ]
    return out


def format_controls(results: Sequence[ControlResult]) -> str:
    """One line per control, then how many are right."""
    lines = [r.line() for r in results]
    ok = sum(r.ok for r in results)
    lines.append(
        f"{ok} of {len(results)} real controls right (below the operating point or "
        "not assessable for the right reason)"
    )
    return "\n".join(lines)
