"""The DicomAssociation row is written off the association's path: an association's slot is free
as soon as it ends, whether the database takes its time over the row or fails it, so that
associations back to back against the limit are all accepted. A failed row is logged, never
raised into the listener."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlmodel import Session, select
from support.net import wait_for

from triage.config import Settings
from triage.errors import StoreError
from triage.ingest.dicom_scp import DicomListener
from triage.store.db import Database
from triage.store.models import DicomAssociation

# more associations in all than the listener serves connections at once (2 * LIMIT + 4): an
# association thread still waiting on the database after its slot is free would be turned away
LIMIT, ROUNDS = 3, 4


@pytest.mark.parametrize("then", ["written", "failed"])
def test_associations_back_to_back_while_the_row_write_is_stuck(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, then: str
) -> None:
    settings = Settings.model_validate(
        {
            "data_dir": tmp_path,
            "dicom_port": 0,
            "bind_host": "127.0.0.1",
            "dicom_max_associations": LIMIT,
        }
    )
    db = Database(settings.resolved_database_url)
    db.create_all()
    real_session = db.session
    gate = threading.Event()  # the database answers once set

    @contextmanager
    def stuck_session() -> Iterator[Session]:
        gate.wait()
        if then == "failed":
            raise StoreError("database is locked")
        with real_session() as s:
            yield s

    listener = DicomListener(settings, db)
    _, port = listener.start()
    db.session = stuck_session  # type: ignore[method-assign]
    ae = AE(ae_title="BURST")
    ae.add_requested_context(Verification, ImplicitVRLittleEndian)
    try:
        for round_ in range(ROUNDS):
            assocs = [ae.associate("127.0.0.1", port, ae_title="TRIAGE") for _ in range(LIMIT)]
            assert all(a.is_established for a in assocs), f"round {round_}: turned away"
            for a in assocs:
                assert a.send_c_echo().Status == 0x0000
                a.release()
            # the ended associations no longer count against the limit, database or not
            wait_for(lambda: not listener.associations, 10, f"round {round_}'s slots released")
        assert not gate.is_set()  # not one row could have been written so far
    finally:
        gate.set()
        with caplog.at_level(logging.WARNING, logger="triage.ingest.dicom_scp"):
            listener.stop()  # writes (or fails) the rows waiting
        db.session = real_session  # type: ignore[method-assign]
    with db.session() as s:
        rows = list(s.exec(select(DicomAssociation)).all())
    db.dispose()
    if then == "written":
        assert len(rows) == LIMIT * ROUNDS
        assert {(r.calling_ae, r.outcome, r.stored) for r in rows} == {("BURST", "released", 0)}
    else:
        assert rows == []
        assert "not recorded" in caplog.text and "database is locked" in caplog.text
