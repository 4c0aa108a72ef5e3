"""DICOM files already on disk, indexed as the DICOM listener indexes what it receives: the
``Instance`` rows (header fields only, pixel data never read) and the study's attributes as
the store keeps them. For the commands and checks that take series from a folder (validation,
the independent look, the real controls) rather than from the network."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from triage.ingest.dicom_header import index_instance
from triage.store.instances import STUDY_FIELDS
from triage.store.models import Instance


@dataclass
class IndexedFiles:
    rows: list[Instance] = field(default_factory=list)
    # per study field, the first non-empty value over the files (as the store fills them)
    study: dict[str, str] = field(default_factory=dict)
    skipped: list[Path] = field(default_factory=list)  # not DICOM, or not an instance


def index_files(files: Sequence[Path], *, skip_unreadable: bool = False) -> IndexedFiles:
    """Index ``files`` (one header read each). A file that is not a DICOM instance the
    listener would accept raises, unless ``skip_unreadable`` (a DICOMDIR, a licence file)."""
    out = IndexedFiles()
    for p in files:
        try:
            fields, attrs = index_instance(pydicom.dcmread(p, stop_before_pixels=True))
        except Exception:  # pydicom raises many types for what is not DICOM
            if not skip_unreadable:
                raise
            out.skipped.append(Path(p))
            continue
        out.rows.append(Instance(**fields, path=str(p)))
        for key in STUDY_FIELDS:
            if not out.study.get(key) and attrs.get(key):
                out.study[key] = attrs[key]
    return out


def instance_rows(files: Sequence[Path], *, skip_unreadable: bool = False) -> list[Instance]:
    """The ``Instance`` rows of :func:`index_files`."""
    return index_files(files, skip_unreadable=skip_unreadable).rows
