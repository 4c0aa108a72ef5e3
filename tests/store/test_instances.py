"""The instance writer: its fast path does what record_instance does, and database errors
leave as StoreError (the connection replaced)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from support.rows import fresh_db, instance_row

from triage.errors import StoreError
from triage.store import instances
from triage.store.db import Database
from triage.store.instances import InstanceWriter, record_instance
from triage.store.models import Instance, Study, StudyState, utcnow

_SEQUENCE = [  # (instance, study, modality, seconds after t0, study attributes)
    (1, "9.1", "SR", 0, {"patient_id": "", "accession_number": "ACC1"}),
    (2, "9.1", "CT", 5, {"patient_id": "P1", "body_part": "HEAD"}),
    (3, "9.1", "CT", 3, {"patient_id": "OTHER", "study_description": "CT HEAD"}),  # older
    (4, "9.2", "OT", 1, {}),
    (5, "9.2", "MR", 2, {"contrast_agent": "GAD"}),
    (2, "9.1", "CT", 9, {}),  # duplicate SOP: nothing changes
    (6, "9.1", "PR", 20, {}),  # after completion: back to RECEIVING
]


def _apply_with_record_instance(db: Database, rows: list[tuple[dict[str, Any], dict]]) -> None:
    for i, (row, attrs) in enumerate(rows):
        with db.session() as s:
            record_instance(s, Instance(**row), attrs)
        if i == 4:
            _complete(db, "9.1")


def _apply_with_index(db: Database, rows: list[tuple[dict[str, Any], dict]]) -> list[bool]:
    index = InstanceWriter(db)
    results = []
    for i, (row, attrs) in enumerate(rows):
        results.append(index.record(dict(row), attrs))
        if i == 4:
            _complete(db, "9.1")
    index.close()
    return results


def _complete(db: Database, study_uid: str) -> None:
    with db.session() as s:
        st = s.exec(select(Study).where(Study.study_uid == study_uid)).one()
        st.state = StudyState.COMPLETE
        s.add(st)


def _snapshot(db: Database) -> tuple[list[dict], list[dict]]:
    with db.session() as s:
        insts = [i.model_dump(exclude={"id"}) for i in s.exec(select(Instance)).all()]
        studies = [
            st.model_dump(exclude={"id", "first_received_at"})
            for st in s.exec(select(Study).order_by(Study.study_uid)).all()
        ]
    return sorted(insts, key=lambda r: r["sop_instance_uid"]), studies


def test_fast_path_matches_record_instance(tmp_path: Path) -> None:
    t0 = utcnow()
    rows = [
        (instance_row(n, study, mod, t0 + timedelta(seconds=dt)), attrs)
        for n, study, mod, dt, attrs in _SEQUENCE
    ]
    a, b = fresh_db(tmp_path / "a.db"), fresh_db(tmp_path / "b.db")
    _apply_with_record_instance(a, rows)
    results = _apply_with_index(b, rows)
    assert results == [True, True, True, True, True, False, True]
    assert _snapshot(a) == _snapshot(b)
    (_, studies) = _snapshot(b)
    first = studies[0]
    assert first["modality"] == "CT" and first["modalities"] == "CT\\PR\\SR"
    assert first["patient_id"] == "P1" and first["state"] == "receiving"
    assert first["instance_count"] == 4
    a.dispose()
    b.dispose()


def test_fast_path_is_used_for_known_studies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = fresh_db(tmp_path / "t.db")
    index = InstanceWriter(db)
    t0 = utcnow()
    assert index.record(instance_row(1, "9.9", "CT", t0), {})  # new study: record_instance
    calls: list[int] = []
    monkeypatch.setattr(instances, "record_instance", lambda *a: calls.append(1) or True)
    assert index.record(instance_row(2, "9.9", "CT", t0), {})
    assert calls == []
    assert index.record(instance_row(3, "9.8", "CT", t0), {})  # a new study goes through it
    assert calls == [1]
    ((sync,),) = index.raw_connection().execute("PRAGMA synchronous").fetchall()
    assert sync == 1  # NORMAL on the index connection only
    index.close()
    db.dispose()


def test_database_errors_become_store_errors_and_the_connection_is_replaced(
    tmp_path: Path,
) -> None:
    db = fresh_db(tmp_path / "t.db")
    index = InstanceWriter(db)
    t0 = utcnow()
    assert index.record(instance_row(1, "9.9", "CT", t0), {})
    first = index.raw_connection()
    with db.engine.begin() as conn:  # another connection takes the table away
        conn.exec_driver_sql("ALTER TABLE instance RENAME TO instance_away")
    for call in (
        lambda: index.record(instance_row(2, "9.9", "CT", t0), {}),
        lambda: index.is_stored("1.2.3.1"),
        index.newest_received,
        lambda: index.paths_of_study("9.9"),
    ):
        with pytest.raises(StoreError, match=r"database error: .*no such table: instance"):
            call()
    with db.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE instance_away RENAME TO instance")
    assert index.raw_connection() is not first  # a new connection after the error
    assert not index.is_stored("1.2.3.2")  # nothing of the failed call was written
    assert index.record(instance_row(2, "9.9", "CT", t0), {})
    assert index.paths_of_study("9.9") == {"dicom/9.9/1.dcm", "dicom/9.9/2.dcm"}
    assert index.paths_under("dicom/9.9/") == {"dicom/9.9/1.dcm", "dicom/9.9/2.dcm"}
    assert index.newest_received() == t0
    index.close()
    db.dispose()
