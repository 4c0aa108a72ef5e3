"""The HL7 message store's SQL: the sqlite3 cursor of the hot path writes what SQLAlchemy Core
writes, a batch is all or nothing, and database errors leave as StoreError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from support.rows import fresh_db

from triage.errors import StoreError
from triage.store.db import Database
from triage.store.messages import MessageOps, MessageRows, SQLiteOps
from triage.store.models import HL7Message, Order


def _message(control_id: str) -> dict[str, Any]:
    return {
        "peer": "127.0.0.1",
        "sending_application": "RIS",
        "sending_facility": "HOSP",
        "control_id": control_id,
        "message_type": "ORM^O01",
        "version": "2.5.1",
        "raw": f"MSH|^~\\&|RIS|HOSP|||||ORM^O01|{control_id}|P|2.5.1",
        "ack": "MSA|AA",
        "ack_code": "AA",
        "error": "",
        "processed": True,
    }


def _write(ops: MessageOps) -> None:
    mid = ops.insert_message(_message("M1"))
    oid = ops.insert_order(
        {
            "accession_number": "ACC1",
            "sending_facility": "HOSP",
            "patient_id": "P1",
            "order_control": "NW",
            "ordered_priority": "R",
            "message_id": mid,
        }
    )
    assert ops.find_order("ACC1", "HOSP")["id"] == oid
    assert ops.find_order("ACC1", "OTHER") == {}
    ops.update_order(oid, {"ordered_priority": "S", "order_control": "XO"})
    ops.update_patient("P1", "DOE^JANE")
    ops.insert_message(_message("M1"))
    assert [r[0] for r in ops.resends("M1")] == [mid, mid + 1]


def _rows(db: Database) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    skip = {"received_at", "updated_at"}
    with db.session() as s:
        msgs = [m.model_dump(exclude=skip) for m in s.exec(select(HL7Message)).all()]
        orders = [o.model_dump(exclude=skip) for o in s.exec(select(Order)).all()]
    return msgs, orders


def test_sqlite_cursor_writes_what_core_writes(tmp_path: Path) -> None:
    fast, core = fresh_db(tmp_path / "fast.db"), fresh_db(tmp_path / "core.db")
    fast_rows, core_rows = MessageRows(fast), MessageRows(core)
    assert fast_rows.sqlite
    with fast_rows.batch() as ops:
        assert isinstance(ops, SQLiteOps)
        _write(ops)
    with core_rows.transaction() as ops:
        _write(ops)
    assert _rows(fast) == _rows(core)
    (order,) = _rows(fast)[1]
    assert (order["ordered_priority"], order["patient_name"]) == ("S", "DOE^JANE")
    assert [r.id for r in fast_rows.stored(ids=[2])] == [2]
    with core_rows.transaction() as ops:
        ops.mark_processed(1, "replayed")
    assert _rows(core)[0][0]["error"] == "replayed"
    fast_rows.close()
    fast.dispose()
    core.dispose()


def test_a_failed_batch_writes_nothing_and_raises_store_error(tmp_path: Path) -> None:
    db = fresh_db(tmp_path / "t.db")
    rows = MessageRows(db)
    with pytest.raises(StoreError, match="unknown order columns"), rows.batch() as ops:
        ops.insert_message(_message("M1"))
        ops.insert_order({"accession_number": "A", "sending_facility": "H"})
        ops.update_order(1, {"no_such_column": 1})
    missing = pytest.raises(StoreError, match=r"database error: .*no such table")
    with missing, rows.batch() as ops:
        ops.insert_message(_message("M2"))
        assert isinstance(ops, SQLiteOps)
        ops.cur.execute("SELECT * FROM no_such_table")
    missing = pytest.raises(StoreError, match=r"database error: .*no such table")
    with missing, rows.transaction() as core:
        core.insert_message(_message("M3"))
        core.conn.exec_driver_sql("SELECT * FROM no_such_table")
    assert _rows(db) == ([], [])
    with rows.batch() as ops:  # the store's connection still works
        ops.insert_message(_message("M4"))
    assert [m["control_id"] for m in _rows(db)[0]] == ["M4"]
    rows.close()
    db.dispose()
