"""What an independent painter returns: the painted study (:class:`Painted`) and, once written
as DICOM, its truth (:class:`CrossStudy`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triage.crosscheck.dicomio import Acquisition, StudyHeader, write_localizer, write_series


@dataclass(frozen=True)
class Painted:
    """One painted study, before it is written."""

    hu: np.ndarray  # float32 [z, 512, 512], HU as the scanner reports them
    lesion: np.ndarray  # bool [z, 512, 512]: voxels of the finding (all False if none)
    acq: Acquisition
    header: StudyHeader
    kinds: tuple[str, ...]  # ich: epidural, subdural, ...; pe: central, lobar, ...
    notes: tuple[str, ...]  # mimics, artefacts, acquisition quirks it carries


@dataclass(frozen=True)
class CrossStudy:
    """A study written as DICOM, with what is true about it (never written into the files)."""

    task: str  # "ich" or "pe"
    seed: int
    label: bool
    kinds: tuple[str, ...]
    notes: tuple[str, ...]
    files: tuple[Path, ...]
    lesion_instances: tuple[int, ...]  # InstanceNumbers with lesion voxels


def lesion_instances(lesion: np.ndarray, acq: Acquisition | None = None) -> tuple[int, ...]:
    """InstanceNumbers of the slices of ``lesion`` [z, y, x] holding a lesion voxel, as
    :func:`~triage.crosscheck.dicomio.write_series` numbers them for ``acq`` (head first when
    None)."""
    n = lesion.shape[0]
    ks = np.flatnonzero(lesion.reshape(n, -1).any(1))
    feet = acq is not None and acq.feet_first
    return tuple(sorted(int(n - k) if feet else int(k) + 1 for k in ks))


def write_painted(
    folder: Path,
    task: str,
    seed: int,
    label: bool,
    painted: Painted,
    *,
    window: tuple[float, float],
    localizer: bool = False,
) -> CrossStudy:
    """Write ``painted`` as one axial series under ``folder`` (a localizer first when
    ``localizer``), and return its truth: what every painter's ``write_study`` does."""
    files: list[Path] = []
    if localizer:
        files.append(write_localizer(folder, painted.hu, painted.acq, painted.header))
    files += write_series(folder, painted.hu, painted.acq, painted.header, window=window)
    return CrossStudy(
        task=task,
        seed=seed,
        label=label,
        kinds=painted.kinds,
        notes=painted.notes,
        files=tuple(files),
        lesion_instances=lesion_instances(painted.lesion, painted.acq),
    )
