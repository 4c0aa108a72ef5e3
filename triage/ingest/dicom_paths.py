"""Where a received instance is stored: ``<data_dir>/dicom/<study>/<series>/<sop>.dcm``, and
never a path outside ``data_dir`` whatever the peer put in the UIDs (how files are made durable
is :mod:`triage.store.durable`)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from triage.errors import DicomIngestError

DICOM_SUBDIR = "dicom"
UID_MAX_LEN = 64
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(uid: str) -> bool:
    """True when ``uid`` follows the DICOM UID grammar (PS3.5 9.1): digits and dots, <=64."""
    return 0 < len(uid) <= UID_MAX_LEN and _UID_RE.fullmatch(uid) is not None


def _path_component(uid: str) -> str:
    """A file-name-safe component for a UID: the UID itself when it follows the grammar (so
    it contains only digits and dots and is never ``.``/``..``), else a hash of it. The ``h``
    prefix keeps hashed names apart from real UIDs, which never contain letters."""
    if is_valid_uid(uid):
        return uid
    digest = hashlib.sha256(uid.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return f"h{digest}"


def safe_instance_path(data_dir: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """Where an instance is stored: ``<data_dir>/dicom/<study>/<series>/<sop>.dcm``.

    UIDs come from the peer; one like ``../../etc/passwd``, with a slash or NUL, or longer than
    a file name may be, is replaced by a hash-based name, so the result is always inside
    ``data_dir``. The same UIDs always give the same path (a re-sent instance overwrites its
    own file, never another's).
    """
    root = Path(data_dir)
    path = (
        root
        / DICOM_SUBDIR
        / _path_component(study_uid)
        / _path_component(series_uid)
        / f"{_path_component(sop_uid)}.dcm"
    )
    # Belt and braces: the components above cannot climb, but check the final path anyway.
    base = os.path.abspath(root)
    if os.path.commonpath([base, os.path.abspath(path)]) != base:  # pragma: no cover
        raise DicomIngestError(DicomIngestError.CANNOT_UNDERSTAND, "unsafe instance path")
    return path
