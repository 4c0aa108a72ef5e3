"""From the instances of a study to the model input: pick the series, load it in HU, resample.

- :func:`select_series` picks the one CT image series a model should see, from the ``Instance``
  rows alone (no file access): CT only; localizers/scouts, secondary-capture and dose screens
  dropped; original/primary preferred over derived/secondary, axial preferred, a soft-tissue
  reconstruction preferred over one whose description says bone, lung, sharp, edge, detail,
  MIP or MPR, then the thinnest reasonable slices (>= 0.5 mm), then the most images; on a
  tie, the series that arrived first (a later one that is no better does not displace the
  one already judged), then the lower series number - never the UIDs.
- :func:`load_volume` reads the files of one series, orders the slices by ImagePositionPatient
  projected on the slice normal (cross product of the ImageOrientationPatient vectors) - never by
  InstanceNumber - which is right for gantry tilt and uneven spacing, converts stored values
  to Hounsfield units (slope/intercept; padding and values below -1024 become -1024), and
  turns a prone, feet-first or transposed layout in plane to the supine head-first one the
  models and checks expect.
- :func:`resample` brings a volume to the model grid (default 64 x 128 x 128): along the slice
  normal by physical position (uneven spacing handled), linear or nearest slice as the model's
  contract says, area-average in-plane. Slices stay
  in acquisition geometry (a tilted gantry is not de-sheared).

Anything a model may not judge raises :class:`~triage.errors.NotAssessable` with a reason.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from triage.errors import NotAssessable
from triage.inference.contract import Z_RESAMPLING
from triage.store.models import Instance, aware

log = logging.getLogger(__name__)

MIN_SLICES = 8
MIN_THICKNESS_MM = 0.5
MODEL_SHAPE = (64, 128, 128)
HU_MIN = -1024.0
HU_MAX = 4095.0
# Rows and columns may differ in spacing by this fraction (scanners write 0.488281 x 0.488282)
MAX_PIXEL_ASPECT_ERROR = 0.01

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# SOP classes that are never a CT image volume (secondary capture, dose reports, PR, SR...)
_NOT_VOLUME_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (incl. multi-frame variants .7.x)
    "1.2.840.10008.5.1.4.1.1.88.",  # Structured reports (incl. dose SR)
    "1.2.840.10008.5.1.4.1.1.11.",  # Presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # Encapsulated documents
)
# Multi-frame CT (one instance holds the series, a frame per slice): read frame by frame
_MULTI_FRAME_CT = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
_LOCALIZER_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM")
# Dose screens and summaries by their series description: "DOSE" on its own or followed by
# report / info / record / sheet / summary / screen, not a low-dose or iDose protocol
_SCREEN_DESCRIPTION = re.compile(
    r"^\W*(RADIATION\s+)?DOSE\W*$"
    r"|\bDOSE[\s_-]*(REPORT|INFO|INFORMATION|RECORD|SHEET|SUMMARY|SCREEN|SR)\b"
    r"|EXAM\s+SUMMARY|SCREEN\s*SAVE|PATIENT\s+PROTOCOL"
)
# A series description naming a sharp (bone, lung) reconstruction or a projection: the models
# were trained on soft-tissue reconstructions, so such a series is taken only when no other is
_SHARP_WORDS = r"BONE|LUNG|SHARP|EDGE|DETAIL"
_SHARP_DESCRIPTION = re.compile(_SHARP_WORDS + r"|\bMIP\b|MINIP|\bMPR\b")
# ... or a Convolution Kernel that names one: GE's BONE, BONEPLUS, LUNG, EDGE, DETAIL; a
# Siemens kernel of sharpness 60 or more (B70f, H70h, Br64, Hr68, I70f); Canon FC50 and up
_SHARP_KERNEL_WORDS = re.compile(_SHARP_WORDS)
_NUMBERED_KERNEL = re.compile(r"^(?:FC(\d{2})|[BHIJQT][RS]?(\d{2}))")


def sharp_kernel(kernel: str) -> bool:
    """Whether a Convolution Kernel value names a sharp (bone, lung) reconstruction."""
    k = kernel.strip().upper()
    if _SHARP_KERNEL_WORDS.search(k):
        return True
    m = _NUMBERED_KERNEL.match(k)
    if m is None:
        return False
    canon, siemens = m.groups()
    return int(canon) >= 50 if canon is not None else int(siemens) >= 60


@dataclass
class Volume:
    """A CT series in Hounsfield units. ``hu`` is [z, y, x], z ascending inferior -> superior."""

    hu: np.ndarray  # float32 [z, y, x]
    z_positions: np.ndarray  # float64 [z], mm along the slice normal, ascending
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    slice_thickness: float | None
    series_uid: str
    paths: list[str] = field(default_factory=list)  # source file of each slice, in order
    normal: tuple[float, float, float] = (0.0, 0.0, 1.0)  # slice normal (patient LPS)

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.hu.shape
        return (int(z), int(y), int(x))


# -- series selection ---------------------------------------------------------------------------


def _image_type(inst: Instance) -> list[str]:
    return [v.strip().upper() for v in (inst.image_type or "").split("\\")]


def _excluded(inst: Instance) -> str | None:
    """Why this instance can never be part of a model input volume (None: it can)."""
    if (inst.modality or "").upper() != "CT":
        return f"modality {inst.modality or '?'}"
    sop = inst.sop_class_uid or ""
    if sop.startswith(_NOT_VOLUME_SOP_PREFIXES) or sop == "1.2.840.10008.5.1.4.1.1.7":
        return f"SOP class {sop} is not a CT image"
    if any(w in v for v in _image_type(inst) for w in _LOCALIZER_WORDS):
        return "localizer"
    desc = (inst.series_description or "").upper()
    if _SCREEN_DESCRIPTION.search(desc):
        return f"series description {inst.series_description!r}"
    return None


@dataclass
class RankedSeries:
    """One candidate series of :func:`rank_series`: its usable instances (ordered as given)
    and whether it is a primary, axial, soft-tissue reconstruction (``plain``) - the kind a
    model may be given instead of a better-ranked series it cannot judge."""

    instances: list[Instance]
    plain: bool


def select_series(instances: Sequence[Instance]) -> list[Instance]:
    """The instances of the best CT image series of a study (ordered as given).

    Raises NotAssessable when no series qualifies (no CT, only localizers/screens, or every
    candidate has fewer than MIN_SLICES images).
    """
    return rank_series(instances)[0].instances


def rank_series(instances: Sequence[Instance]) -> list[RankedSeries]:
    """Every CT image series of a study that a model could be given, best first (the order
    of :func:`select_series`, whose choice is the first). Raises NotAssessable as it does."""
    series: dict[str, list[Instance]] = {}
    for inst in instances:
        series.setdefault(inst.series_uid, []).append(inst)
    if not series:
        raise NotAssessable("no images in the study")

    candidates: list[tuple[tuple[float, ...], str, bool]] = []
    rejected: list[str] = []
    for uid, items in series.items():
        usable = [i for i in items if _excluded(i) is None]
        if not usable:
            rejected.append(f"{uid}: {_excluded(items[0])}")
            continue
        multi = any(i.sop_class_uid in _MULTI_FRAME_CT for i in usable)
        if len(usable) < MIN_SLICES and not multi:  # frames are counted when it is read
            rejected.append(f"{uid}: {len(usable)} images (< {MIN_SLICES})")
            continue
        types = Counter(tuple(_image_type(i)) for i in usable).most_common(1)[0][0]
        derived = (len(types) > 0 and types[0] == "DERIVED") or (
            len(types) > 1 and types[1] == "SECONDARY"
        )
        # the orientation itself where it was indexed (ImageType need not say AXIAL, and a
        # reformat may say it), else ImageType
        known = [i.axial for i in usable if i.axial is not None]
        axial = (2 * sum(known) > len(known)) if known else "AXIAL" in types
        soft = not _SHARP_DESCRIPTION.search(
            (usable[0].series_description or "").upper()
        ) and not sharp_kernel(usable[0].convolution_kernel or "")
        thick = [i.slice_thickness for i in usable if i.slice_thickness]
        thickness = float(np.median(thick)) if thick else math.inf
        reasonable = thickness >= MIN_THICKNESS_MM
        numbers = [i.series_number for i in usable if i.series_number is not None]
        first = min(aware(i.received_at) for i in usable)
        # bigger is better in every position of the key; the last three break ties so that
        # the choice never rests on UIDs: the series that came first (a later series that
        # is no better does not displace the one already judged), then the lower number
        key = (
            0.0 if derived else 1.0,
            0.0 if multi else 1.0,  # the same images one per file are read as sent
            1.0 if axial else 0.0,
            1.0 if soft else 0.0,
            1.0 if reasonable else 0.0,
            -thickness if reasonable and math.isfinite(thickness) else -1e9,
            float(len(usable)),
            -first.timestamp(),
            -float(min(numbers)) if numbers else -1e9,
        )
        candidates.append((key, uid, not derived and axial and soft))
    if not candidates:
        raise NotAssessable("no CT image series to assess (" + "; ".join(rejected) + ")")
    candidates.sort(key=lambda c: c[0], reverse=True)
    return [
        RankedSeries([i for i in series[uid] if _excluded(i) is None], plain)
        for _, uid, plain in candidates
    ]


# -- loading ------------------------------------------------------------------------------------


@dataclass
class _Slice:
    path: str
    position: float
    hu: np.ndarray


@dataclass
class _Header:
    """What :func:`load_volume` needs from one file's header, read and checked up front."""

    path: str
    ds: Dataset | None
    size: tuple[int, int]
    orientation: list[float] | None
    position: list[float] | None
    slope: float
    intercept: float
    padding: float | None
    spacing: tuple[float, float] | None
    thickness: float | None
    series_uid: str


def _floats(value: object, n: int) -> list[float] | None:
    try:
        out = [float(v) for v in value]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _finite(value: object, name: str) -> float:
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ValueError(f"{name} {value!r} is not a finite number")
    return number


def _header(path: str, ds: Dataset) -> _Header:
    """Read every attribute the volume needs; raises (ValueError and whatever pydicom raises for
    a corrupt element) when one is there but unusable."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"image size {rows}x{cols}")
    spacing = _floats(ds.get("PixelSpacing"), 2)
    thickness: float | None = None
    with contextlib.suppress(TypeError, ValueError):
        st = ds.get("SliceThickness")
        thickness = float(st) if st not in (None, "") else None
    pad = ds.get("PixelPaddingValue")
    return _Header(
        path=path,
        ds=ds,
        size=(rows, cols),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        slope=_finite(ds.get("RescaleSlope") or 1, "RescaleSlope"),  # absent, empty or 0: 1
        intercept=_finite(ds.get("RescaleIntercept") or 0, "RescaleIntercept"),
        padding=float(pad) if isinstance(pad, int | float) else None,
        spacing=(spacing[0], spacing[1]) if spacing else None,
        thickness=thickness if thickness is not None and math.isfinite(thickness) else None,
        series_uid=str(ds.get("SeriesInstanceUID", "")),
    )


@dataclass
class SliceRead:
    """One file read for :func:`load_volume`: its header and its pixels in HU, or why it is
    skipped. A pure function of the file's bytes (:func:`read_slice`), so it may be made
    ahead of time, while the study arrives (:class:`triage.inference.slices.SliceCache`)."""

    path: str
    modality: str = ""  # "" when the file is not readable DICOM
    header: _Header | None = None  # None: not CT, or skipped (``skip`` says why)
    hu: np.ndarray | None = None  # float32 [y, x]; None when the pixels cannot be decoded
    skip: str = ""  # why the file is skipped ("" for a usable CT slice)
    decode_error: str = ""  # why its pixel data could not be decoded
    # a multi-frame CT (Enhanced / Legacy Converted Enhanced CT): one read per frame, each
    # with its own position, path "<file>#<frame number>" (this read has no header itself)
    frames: list[SliceRead] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        own = int(self.hu.nbytes) if self.hu is not None else 0
        return own + sum(f.nbytes for f in self.frames)


def read_slice(path: Path | str) -> SliceRead:
    """Read one file as :func:`load_volume` needs it: header, then pixels in HU (slope and
    intercept applied; padding and values below -1024 become -1024; clipped to 4095)."""
    p = str(path)
    try:
        ds: Dataset = pydicom.dcmread(p, force=False)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        return SliceRead(p, skip=f"not readable DICOM ({exc})")
    try:
        modality = str(ds.get("Modality", "")).upper()
    except Exception as exc:  # a corrupt element raises on access, with many types
        return SliceRead(p, skip=f"unreadable Modality ({exc})")
    if modality != "CT":
        return SliceRead(p, modality=modality)
    if "PixelData" not in ds:
        return SliceRead(p, modality=modality, skip="no pixel data")
    if str(ds.get("SOPClassUID", "")) in _MULTI_FRAME_CT:
        return _read_frames(p, ds, modality)
    try:
        h = _header(p, ds)
    except Exception as exc:  # pydicom raises many types for corrupt elements
        return SliceRead(
            p, modality=modality, skip=f"unusable header ({type(exc).__name__}: {exc})"
        )
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable pixel data
        h.ds = None
        return SliceRead(p, modality=modality, header=h, decode_error=str(exc))
    h.ds = None  # the data set (with its pixel bytes) is not kept
    if stored.shape != h.size:
        return SliceRead(
            p, modality=modality, header=h, decode_error=f"pixel data of shape {stored.shape}"
        )
    return SliceRead(p, modality=modality, header=h, hu=_to_hu(stored, h))


def _to_hu(stored: np.ndarray, h: _Header) -> np.ndarray:
    """Stored pixel values in HU, float32: slope and intercept applied, padding and values
    below -1024 at -1024, clipped to 4095."""
    hu = stored.astype(np.float32) * np.float32(h.slope) + np.float32(h.intercept)
    if h.padding is not None:
        hu[stored == h.padding] = HU_MIN
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    return hu


def _group(item: Dataset | None, sequence: str) -> Dataset | None:
    """The first item of ``sequence`` in a functional group item (None: absent)."""
    if item is None:
        return None
    seq = item.get(sequence)
    return seq[0] if seq else None


def _frame_value(
    per: Dataset | None, shared: Dataset | None, sequence: str, keyword: str
) -> object:
    """``keyword`` of functional group ``sequence``: the frame's own, else the shared one."""
    for item in (per, shared):
        group = _group(item, sequence)
        if group is not None and keyword in group:
            return group.get(keyword)
    return None


def _read_frames(p: str, ds: Dataset, modality: str) -> SliceRead:
    """A multi-frame CT instance as one read per frame: position, orientation, pixel spacing,
    thickness and rescale from the frame's functional groups (else the shared ones, else the
    top level), pixels in HU. A frame without a position is skipped (logged by the caller)."""
    try:
        shared_seq = ds.get("SharedFunctionalGroupsSequence")
        shared = shared_seq[0] if shared_seq else None
        per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for corrupt data
        return SliceRead(p, modality=modality, skip=f"unreadable multi-frame CT ({exc})")
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if stored.ndim == 2:
        stored = stored[None]
    if stored.shape[0] != n or len(per_frame) not in (0, n):
        return SliceRead(
            p, modality=modality, skip=f"multi-frame CT with {stored.shape[0]} frames for {n}"
        )
    rows, cols = int(ds.Rows), int(ds.Columns)
    pad = ds.get("PixelPaddingValue")
    series_uid = str(ds.get("SeriesInstanceUID", ""))
    frames: list[SliceRead] = []
    for i in range(n):
        per = per_frame[i] if per_frame else None
        path = f"{p}#{i + 1}"

        def value(sequence: str, keyword: str, per: Dataset | None = per) -> object:
            found = _frame_value(per, shared, sequence, keyword)
            return found if found is not None else ds.get(keyword)

        try:
            spacing = _floats(value("PixelMeasuresSequence", "PixelSpacing"), 2)
            thickness = value("PixelMeasuresSequence", "SliceThickness")
            slope = value("PixelValueTransformationSequence", "RescaleSlope")
            intercept = value("PixelValueTransformationSequence", "RescaleIntercept")
            h = _Header(
                path=path,
                ds=None,
                size=(rows, cols),
                orientation=_floats(
                    value("PlaneOrientationSequence", "ImageOrientationPatient"), 6
                ),
                position=_floats(value("PlanePositionSequence", "ImagePositionPatient"), 3),
                slope=_finite(slope or 1, "RescaleSlope"),
                intercept=_finite(intercept or 0, "RescaleIntercept"),
                padding=float(pad) if isinstance(pad, int | float) else None,
                spacing=(spacing[0], spacing[1]) if spacing else None,
                thickness=float(thickness) if thickness not in (None, "") else None,  # type: ignore[arg-type]
                series_uid=series_uid,
            )
        except Exception as exc:  # a corrupt functional group: this frame only
            frames.append(SliceRead(path, modality=modality, skip=f"unusable frame ({exc})"))
            continue
        frames.append(SliceRead(path, modality=modality, header=h, hu=_to_hu(stored[i], h)))
    return SliceRead(p, modality=modality, frames=frames)


class SliceSource(Protocol):
    """Where :func:`load_volume` gets a file's :class:`SliceRead` (a cache of reads made
    while the study arrived); None: it reads the file itself."""

    def take(self, path: str) -> SliceRead | None: ...


def load_volume(paths: Sequence[Path | str], source: SliceSource | None = None) -> Volume:
    """Read one CT series and return it in HU, slices ordered inferior -> superior.

    Files that are not DICOM, not CT, lack geometry, whose header has an unusable value (a
    corrupt element, a rescale that is not a number), or whose size differs from the majority
    are skipped (logged): one bad file does not cost the series. Raises NotAssessable when
    fewer than MIN_SLICES slices remain, when the series is not CT, or when the slices are not
    (roughly) axial. ``source``: reads made ahead of time (each file not found there is read
    now); the result is the same either way.
    """
    headers: list[_Header] = []
    pixels: dict[str, SliceRead] = {}
    modalities: Counter[str] = Counter()
    reads: list[SliceRead] = []
    for p in paths:
        read = source.take(str(p)) if source is not None else None
        if read is None:
            read = read_slice(p)
        reads.extend(read.frames or [read])  # a multi-frame CT: each frame a slice
    for read in reads:
        p = read.path
        if read.skip and read.header is None and not read.modality:
            log.warning("skipping %s: %s", p, read.skip)
            continue
        modalities[read.modality] += 1
        if read.modality != "CT":
            continue
        if read.header is None:
            log.warning("skipping %s: %s", p, read.skip)
            continue
        headers.append(read.header)
        pixels[read.header.path] = read
    if not headers:
        if modalities:
            found = ", ".join(sorted(m or "?" for m in modalities))
            raise NotAssessable(f"not a CT series (modality {found})")
        raise NotAssessable("no readable DICOM images")

    size = Counter(h.size for h in headers).most_common(1)[0][0]
    orientations = [h.orientation for h in headers if h.orientation is not None]
    if not orientations:
        raise NotAssessable("no ImageOrientationPatient: cannot order slices")
    iop = np.median(np.array(orientations), axis=0)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-3:
        raise NotAssessable("degenerate ImageOrientationPatient")
    normal = normal / norm
    if abs(normal[2]) < 0.5:  # more than 60 degrees from axial: sagittal/coronal
        raise NotAssessable("series is not axial (slice normal far from the patient z axis)")
    if normal[2] < 0:
        normal = -normal  # positions then increase inferior -> superior (LPS: +z is superior)

    slices: list[_Slice] = []
    skipped: Counter[str] = Counter()  # why images were left out, for the reason given
    for h in headers:
        if h.size != size:
            log.warning("skipping %s: %dx%d differs from %dx%d", h.path, *h.size, *size)
            skipped[f"another image size than {size[0]}x{size[1]}"] += 1
            continue
        if h.position is None:
            log.warning("skipping %s: no ImagePositionPatient", h.path)
            skipped["no ImagePositionPatient"] += 1
            continue
        read = pixels[h.path]
        if read.hu is None:
            log.warning("skipping %s: cannot decode pixel data (%s)", h.path, read.decode_error)
            skipped["pixel data not decoded"] += 1
            continue
        slices.append(_Slice(h.path, float(np.dot(h.position, normal)), read.hu))

    slices.sort(key=lambda s: s.position)
    unique: list[_Slice] = []
    for s in slices:
        if unique and abs(s.position - unique[-1].position) < 1e-3:
            log.warning("skipping %s: duplicate slice position %.3f", s.path, s.position)
            skipped["the same position as another image"] += 1
            continue
        unique.append(s)
    if len(unique) < MIN_SLICES:
        why = "; ".join(f"{n}: {what}" for what, n in skipped.most_common())
        raise NotAssessable(
            f"too few slices: {len(unique)} usable (need >= {MIN_SLICES})"
            + (f"; left out: {why}" if why else "")
        )
    used = {s.path for s in unique}
    kept = [h for h in headers if h.path in used]
    spacing = next((h.spacing for h in kept if h.spacing is not None), None)
    if spacing is None or min(spacing) <= 0.0:
        raise NotAssessable(
            "no usable PixelSpacing (missing, one value or not over 0): the size of what the "
            "images show is unknown"
        )
    thickness = [h.thickness for h in kept if h.thickness is not None]
    dr, dc = spacing
    if abs(dr / dc - 1.0) > MAX_PIXEL_ASPECT_ERROR:
        raise NotAssessable(
            f"pixels are not square (PixelSpacing {dr:g} x {dc:g} mm): the models read square "
            f"pixels"
        )
    hu, spacing = _standard_layout(_stacked([s.hu for s in unique]), row, col, spacing)
    hu = _square(hu)
    return Volume(
        hu=hu,
        z_positions=np.array([s.position for s in unique], dtype=np.float64),
        pixel_spacing=spacing or (1.0, 1.0),
        slice_thickness=float(np.median(thickness)) if thickness else None,
        series_uid=next((h.series_uid for h in kept if h.series_uid), ""),
        paths=[s.path for s in unique],
        normal=(float(normal[0]), float(normal[1]), float(normal[2])),
    )


def _standard_layout(
    hu: np.ndarray, row: np.ndarray, col: np.ndarray, spacing: tuple[float, float] | None
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """``hu`` [z, y, x] turned in plane to the layout the models were trained on and the
    checks assume: columns toward the patient's left, rows toward the back (ImageOrientation
    Patient 1\\0\\0\\0\\1\\0, supine head first). A prone or feet-first series, or one with
    rows and columns swapped, is flipped / transposed (the nearest of the eight layouts; a
    gantry tilt stays). ``spacing`` (row, column) follows a transpose."""
    turned = hu
    if abs(row[1]) > abs(row[0]):  # rows run left-right: swap the in-plane axes
        turned = turned.transpose(0, 2, 1)
        row, col = col, row
        spacing = (spacing[1], spacing[0]) if spacing is not None else None
    if row[0] < 0:
        turned = turned[:, :, ::-1]
    if col[1] < 0:
        turned = turned[:, ::-1, :]
    if turned is hu:
        return hu, spacing  # the usual layout: untouched (a view stays a view)
    return np.ascontiguousarray(turned), spacing


def image_numbers(
    instances: Sequence[Instance], volume: Volume
) -> list[tuple[int | None, int | None]]:
    """Per slice of ``volume``: the InstanceNumber of the image among ``instances`` it was read
    from (the image number a radiologist's viewer shows) and, when the slice is a frame of a
    multi-frame image (Enhanced CT: its path is ``<file>#<frame>``), its frame number; None
    where unknown. Images are matched by file name (the store names each file by its SOP
    Instance UID); a name found twice among ``instances`` gives no number."""

    def name(path: object) -> str:
        return str(path or "").replace("\\", "/").rsplit("/", 1)[-1]

    numbers: dict[str, int | None] = {}
    for inst in instances:
        if n := name(inst.path):
            numbers[n] = None if n in numbers else inst.instance_number
    out: list[tuple[int | None, int | None]] = []
    for path in volume.paths:
        n, frame = name(path), None
        if n not in numbers:
            file, _, tail = n.rpartition("#")
            if tail.isdigit() and file in numbers:
                n, frame = file, int(tail)
        number = numbers.get(n)
        out.append((int(number) if number is not None else None, frame))
    return out


def _square(hu: np.ndarray) -> np.ndarray:
    """``hu`` [z, y, x] padded with air (HU_MIN) to a square image, centred: a 512 x 400
    image would otherwise be stretched onto the models' square grid (the resampling maps
    index to index); unchanged when square."""
    z, rows, cols = hu.shape
    if rows == cols:
        return hu
    n = max(rows, cols)
    out = np.full((z, n, n), HU_MIN, dtype=np.float32)
    top, left = (n - rows) // 2, (n - cols) // 2
    out[:, top : top + rows, left : left + cols] = hu
    return out


def _stacked(planes: list[np.ndarray]) -> np.ndarray:
    """The planes as one float32 [z, y, x] array: a view, without a copy, when they already
    lie one after another (or in reverse) in one array (slices read ahead of time, in
    position order: :mod:`triage.inference.slices`), else a new array."""
    first = planes[0]
    base = first.base
    if (
        isinstance(base, np.ndarray)
        and base.ndim == 3
        and base.dtype == np.float32
        and base.flags.c_contiguous
        and base.shape[1:] == first.shape
        and all(p.base is base for p in planes)
    ):
        start = base.__array_interface__["data"][0]
        step = base.strides[0]
        index = [(p.__array_interface__["data"][0] - start) // step for p in planes]
        n = len(index)
        if index == list(range(index[0], index[0] + n)):
            return base[index[0] : index[0] + n]
        if index == list(range(index[0], index[0] - n, -1)):
            return base[index[-1] : index[0] + 1][::-1]
    return np.stack(planes).astype(np.float32, copy=False)


# -- resampling ---------------------------------------------------------------------------------


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] matrix averaging input cells over each output cell's extent."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def z_sample_positions(volume: Volume, n: int) -> np.ndarray:
    """The n physical positions (mm along the normal) that :func:`resample` samples."""
    return np.linspace(volume.z_positions[0], volume.z_positions[-1], n)


def z_support(z: np.ndarray, n: int, mode: str = "linear") -> np.ndarray:
    """Indices of the slices at ``z`` that :func:`resample` reads for ``n`` model slices."""
    z = np.asarray(z, dtype=np.float64)
    if mode == "nearest":
        return np.unique(_nearest(z, n))
    _, lower, upper = _bracket(z, n)
    return np.unique(np.concatenate([lower, upper]))


def _nearest(z: np.ndarray, n: int) -> np.ndarray:
    """The acquired slice nearest to each of ``n`` evenly spaced positions (ties: the lower).

    A clot a few millimetres long keeps its own HU in the slices that cross it, where linear
    interpolation blends it with the contrast-filled lumen of the next slice (pe's
    ``z_resampling``; docs/models.md)."""
    targets, lower, upper = _bracket(z, n)
    return np.where(targets - z[lower] <= z[upper] - targets, lower, upper)


def _bracket(z: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` evenly spaced positions from z[0] to z[-1] (:func:`z_sample_positions`), and the
    slices below and above each."""
    targets = np.linspace(z[0], z[-1], n)
    upper = np.clip(np.searchsorted(z, targets, side="right"), 1, len(z) - 1)
    return targets, upper - 1, upper


def resample(
    volume: Volume, shape: tuple[int, int, int] = MODEL_SHAPE, z_mode: str = "linear"
) -> np.ndarray:
    """``volume.hu`` on a [z, y, x] = ``shape`` grid, float32 HU, inferior -> superior.

    Along z: at ``shape[0]`` evenly spaced physical positions between the first and last
    slice (uneven spacing is handled by position, not index), linear interpolation or the
    nearest acquired slice as it is (``z_mode``, the model contract's ``z_resampling``).
    In-plane: area average (exact block means when shrinking 512 -> 128).
    """
    nz, ny, nx = shape
    z = volume.z_positions
    if len(z) < 2 or volume.hu.shape[0] != len(z):
        raise NotAssessable("cannot resample fewer than 2 slices")
    if z_mode not in Z_RESAMPLING:
        raise ValueError(f"z resampling is one of {', '.join(Z_RESAMPLING)}, not {z_mode!r}")
    # Both steps are linear and act on different axes, so they commute: the slices the z
    # sampling reads are averaged in plane first (at most 2 x nz of them, on the full grid),
    # then sampled along z on the small grid - far less memory traffic than the other order.
    if z_mode == "linear":
        targets, lower, upper = _bracket(z, nz)
        w = ((targets - z[lower]) / (z[upper] - z[lower])).clip(0.0, 1.0).astype(np.float32)
        needed, index = np.unique(np.concatenate([lower, upper]), return_inverse=True)
        small = _in_plane(volume.hu, needed, ny, nx)
        lo, up = small[index[:nz]], small[index[nz:]]
        stack = lo * (1.0 - w)[:, None, None] + up * w[:, None, None]
    else:
        needed, index = np.unique(_nearest(z, nz), return_inverse=True)
        stack = _in_plane(volume.hu, needed, ny, nx)[index]
    return np.ascontiguousarray(stack, dtype=np.float32)


def _in_plane(hu: np.ndarray, slices: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Slices ``slices`` of ``hu`` area-averaged in plane to ``ny`` x ``nx`` (float32)."""
    h, w = hu.shape[1:]
    if (h, w) == (ny, nx):  # already on the grid in plane: the averaging is the identity
        return np.asarray(hu[slices], dtype=np.float32)
    if h % ny == 0 and w % nx == 0:  # whole blocks (512 -> 128): the exact block mean
        fy, fx = h // ny, w // nx
        out = np.empty((len(slices), ny, nx), dtype=np.float32)
        for i, k in enumerate(slices):  # one slice at a time: no big temporary
            rows = hu[k].reshape(ny, fy, w).sum(axis=1, dtype=np.float32)
            out[i] = rows.reshape(ny, nx, fx).sum(axis=2)
        out *= np.float32(1.0 / (fy * fx))
        return out
    wy = _area_weights(h, ny)
    wx = _area_weights(w, nx)
    return np.asarray(
        np.einsum("yi,zij,xj->zyx", wy, hu[slices], wx, optimize=True), dtype=np.float32
    )
