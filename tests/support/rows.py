"""Store-level test data: a fresh SQLite database with the engine's tables, and instance rows
as the DICOM listener records them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from triage.store.db import Database


def fresh_db(path: Path) -> Database:
    """A new SQLite database at ``path`` with every table created."""
    db = Database(f"sqlite:///{path}")
    db.create_all()
    return db


def instance_row(n: int, study: str, modality: str, when: Any, **extra: Any) -> dict[str, Any]:
    """Instance ``n`` of ``study`` (one series per modality) as a row for ``record_instance``;
    ``extra`` overrides or adds columns."""
    return {
        "sop_instance_uid": f"1.2.3.{n}",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "study_uid": study,
        "series_uid": f"{study}.{modality}",
        "modality": modality,
        "series_number": 1,
        "instance_number": n,
        "series_description": "AX",
        "image_type": "ORIGINAL\\PRIMARY\\AXIAL",
        "slice_thickness": 1.0,
        "image_position_z": float(n),
        "transfer_syntax": "1.2.840.10008.1.2.1",
        "path": f"dicom/{study}/{n}.dcm",
        "size_bytes": 100 + n,
        "calling_ae": "CT1",
        "received_at": when,
        **extra,
    }
