"""SIGKILL in the middle of a C-STORE transfer: what was answered Success survives.

The engine runs as a subprocess (``python -m triage.cli serve``; an unreachable external
Triton, so nothing heavy starts). dcmtk's storescu sends the 300-slice CT with ``-v``, which
prints ``Received Store Response (Success)`` after each acknowledged file; the engine is
killed with SIGKILL once a third of them are acknowledged, then restarted on the same data
directory. Every acknowledged instance must be on disk and indexed, and the study must
complete (no instance for ``study_stable_seconds``) after the restart.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from ct_fixtures import ct300_study
from support.dcmtk import StoreSCU
from support.engine import Engine
from support.net import wait_for

from triage.synth.ct import SyntheticStudy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def ct300(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return ct300_study(tmp_path_factory)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = Engine(tmp_path, quick=False, study_stable_seconds=2, completion_poll_seconds=0.3)
    try:
        yield e
    finally:
        e.stop()


def test_sigkill_mid_transfer_loses_no_acknowledged_instance(
    engine: Engine, ct300: SyntheticStudy
) -> None:
    port = engine.start().dicom_port
    acknowledged: list[Path] = []
    killed = threading.Event()

    def on_response(file: Path, status: str) -> None:
        if status == "Success":
            acknowledged.append(file)
            if len(acknowledged) == 100:
                engine.kill()  # SIGKILL, mid-transfer
                killed.set()

    storescu = StoreSCU(port, ct300.files, on_response=on_response)
    assert killed.wait(180), "storescu never got 100 acknowledgements"
    assert storescu.wait(timeout=60) != 0  # the transfer was cut
    assert 100 <= len(acknowledged) < 300

    engine.start()  # same data directory: start-up recovery runs before the SCP listens
    assert "DICOM start-up recovery" in engine.log()
    sop_uids = [
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in acknowledged
    ]
    indexed = dict(engine.query("SELECT sop_instance_uid, path FROM instance"))
    missing = [uid for uid in sop_uids if uid not in indexed]
    assert not missing, f"{len(missing)} acknowledged instance(s) lost: {missing[:3]}"
    for uid in sop_uids:
        stored = engine.data / str(indexed[uid])
        assert pydicom.dcmread(stored).SOPInstanceUID == uid
    assert not list((engine.data / "dicom").rglob(".*.tmp"))
    ((count,),) = engine.query(
        "SELECT instance_count FROM study WHERE study_uid = ?", ct300.study_uid
    )
    assert count == len(indexed) >= len(acknowledged)

    def completed() -> bool:
        ((state, completed_at),) = engine.query(
            "SELECT state, completed_at FROM study WHERE study_uid = ?", ct300.study_uid
        )
        return state != "receiving" and completed_at is not None

    wait_for(completed, 30, "the study to complete after the restart")
