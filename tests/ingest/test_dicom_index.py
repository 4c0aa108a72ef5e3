"""The SCP's index: the start-up recovery indexes what a crash left unindexed (and only that),
and acknowledged rows whose commit failed are owed until they commit (the SQL itself is
tested in tests/store/test_instances.py)."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlmodel import select
from support.rows import fresh_db, instance_row

from triage.errors import StoreError
from triage.ingest import dicom_index
from triage.ingest.dicom_header import index_instance
from triage.ingest.dicom_index import InstanceIndex
from triage.ingest.dicom_meta import encode_file_meta
from triage.ingest.dicom_paths import safe_instance_path
from triage.store.durable import write_instance_file
from triage.store.models import Instance, Study, utcnow
from triage.synth import write_head_ct

# --------------------------------------------------------------------------- recovery


def _write_instance(data_dir: Path, src: Path, calling_ae: str = "CT1") -> Path:
    """Write ``src`` the way the SCP does (file meta ours, data set as is)."""
    ds = pydicom.dcmread(src)
    raw = src.read_bytes()
    assert raw[128:132] == b"DICM" and raw[132:136] == b"\x02\x00\x00\x00"
    body = raw[144 + int.from_bytes(raw[140:144], "little") :]  # after the file meta group
    path = safe_instance_path(
        data_dir, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    head = encode_file_meta(
        ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID, calling_ae
    )
    write_instance_file(path, [head, body])
    return path


def test_recovery_indexes_unindexed_files_removes_broken_ones(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    study = write_head_ct(
        tmp_path / "src",
        hemorrhage=False,
        seed=4,
        patient_id="PR",
        accession="AR",
        n_slices=5,
        size=64,
    )
    data_dir.mkdir()
    db = fresh_db(data_dir / "triage.db")
    index = InstanceIndex(db)
    paths = [_write_instance(data_dir, f) for f in study.files]
    # instances 1-2 indexed as after a normal store; 3-5 written but their rows lost
    for p, f in zip(paths[:2], study.files[:2], strict=True):
        fields, attrs = index_instance(pydicom.dcmread(f, stop_before_pixels=True))
        row = {
            **fields,
            "path": p.relative_to(data_dir).as_posix(),
            "size_bytes": 1,
            "calling_ae": "CT1",
            "received_at": utcnow(),
        }
        assert index.record(row, attrs)
    truncated = paths[4]
    truncated.write_bytes(truncated.read_bytes()[:-1000])  # never acknowledged: cut short
    temp = paths[0].parent / f".{paths[0].name}.abc123.tmp"
    temp.write_bytes(b"partial")

    report = index.recover(data_dir)
    assert (report.indexed, report.removed) == (2, 2)
    assert not temp.exists() and not truncated.exists()
    with db.session() as s:
        rows = {r.sop_instance_uid: r for r in s.exec(select(Instance)).all()}
        (st,) = s.exec(select(Study)).all()
    assert len(rows) == 4 and st.instance_count == 4
    recovered = rows[str(pydicom.dcmread(study.files[2]).SOPInstanceUID)]
    assert recovered.calling_ae == "CT1"  # from the file meta (Source AE Title)
    assert recovered.path == paths[2].relative_to(data_dir).as_posix()
    assert recovered.size_bytes == paths[2].stat().st_size
    # Idempotent: a second start finds nothing to do.
    again = index.recover(data_dir)
    assert (again.indexed, again.removed) == (0, 0)
    index.close()
    db.dispose()


def test_recovery_skips_folders_older_than_the_newest_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    study = write_head_ct(
        tmp_path / "src",
        hemorrhage=False,
        seed=5,
        patient_id="PS",
        accession="AS",
        n_slices=2,
        size=64,
    )
    old = study.files[0]
    old_path = _write_instance(data_dir, old)
    long_ago = time.time() - 86400
    os.utime(old_path.parent, (long_ago, long_ago))
    db = fresh_db(data_dir / "triage.db")
    index = InstanceIndex(db)
    # The newest indexed row is from now: folders last changed a day ago are not read.
    other = instance_row(7, "7.7", "CT", utcnow())
    assert index.record(other, {})
    monkeypatch.setattr(dicom_index, "RECOVERY_MARGIN", timedelta(minutes=10))
    report = index.recover(data_dir)
    assert report.checked_dirs == 0 and report.indexed == 0
    # Without any row (a fresh or lost database) every folder is read.
    fresh = fresh_db(tmp_path / "fresh.db")
    fresh_index = InstanceIndex(fresh)
    assert fresh_index.recover(data_dir).indexed == 1
    fresh_index.close()
    fresh.dispose()
    index.close()
    db.dispose()


def test_rows_of_acknowledged_instances_are_owed_until_they_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = InstanceIndex(fresh_db(tmp_path / "t.db"))
    record = index.record
    failing: set[str] = {"1.2.3.1", "1.2.3.2"}

    def flaky(row: dict[str, Any], attrs: dict[str, str]) -> bool:
        if row["sop_instance_uid"] in failing:
            raise StoreError("database is locked")
        return record(row, attrs)

    monkeypatch.setattr(index, "record", flaky)
    t0 = utcnow()
    assert index.record_acknowledged(instance_row(1, "9.1", "CT", t0), {}) == []  # never raises
    assert index.record_acknowledged(instance_row(2, "9.2", "CT", t0), {}) == []
    assert index.owed == 2
    # the next row is committed even though the owed ones fail again
    assert index.record_acknowledged(instance_row(3, "9.3", "CT", t0), {}) == ["9.3"]
    failing.discard("1.2.3.2")  # row 2 heals; row 1 still fails: it goes to the back
    with pytest.raises(StoreError):
        index.retry_owed()
    assert index.owed == 1 and index.is_stored("1.2.3.2")
    failing.clear()
    assert index.retry_owed() == ["9.1"] and index.owed == 0
    index.close()
