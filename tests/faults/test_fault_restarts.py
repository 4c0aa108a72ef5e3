"""The engine (and with it its scheduler) stopped five times while studies complete and are
scored, SIGTERM and SIGKILL in turn, then started once more: one engine per period, each study
analysed once, one order change (XO) per study at the RIS. docs/reliability.md, section 5.

Triton is not what is under test here (tests/faults/test_fault_triton.py is): one started by
the test serves every period, so a period costs the engine's start and stop only."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from faultkit import positive_head_ct, ris_summary
from support.dcmtk import store
from support.engine import Engine
from support.net import wait_for
from support.procs import pid_alive
from support.ris_peer import FakeRIS

from triage.inference.local_triton import LocalTriton

pytestmark = pytest.mark.integration

RESTARTS = 5
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


def test_restarted_five_times_during_work(tmp_path: Path) -> None:
    ris = FakeRIS()
    triton = LocalTriton(MODELS_DIR, tmp_path / "triton", startup_seconds=90)
    triton.start()
    engine = Engine(tmp_path, ris_port=ris.port, triton_url=triton.grpc_url)
    rng = random.Random(14)
    studies = [
        positive_head_ct(tmp_path / "studies", f"RST{i}", f"PRST{i}") for i in range(RESTARTS)
    ]
    uids = {st.study_uid: st.accession for st in studies}
    periods: list[str] = []
    try:
        for i, st in enumerate(studies):
            engine.start()
            # One engine per period: the one stopped before is gone.
            assert not any(pid_alive(p) for p in engine.pids[:-1])
            engine.order(st.accession, st.patient_id, st.study_uid)
            assert store(engine.dicom_port, st.files).succeeded == list(st.files)

            def completed(uid: str = st.study_uid) -> bool:
                rows = engine.query("SELECT completed_at FROM study WHERE study_uid = ?", uid)
                return bool(rows and rows[0][0])

            wait_for(completed, 30, f"study {st.accession} complete")
            time.sleep(rng.uniform(0.0, 1.5))  # somewhere in routing, inference or scoring
            states = dict(engine.query("SELECT accession_number, state FROM study"))
            sig = signal.SIGTERM if i % 2 == 0 else signal.SIGKILL
            rc = engine.kill(sig)
            assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL), engine.log()[-3000:]
            periods.append(f"{sig.name}: {states[st.accession]}")

        engine.start()

        def all_scored() -> bool:
            rows = engine.query("SELECT state FROM study")
            return len(rows) == RESTARTS and all(state == "scored" for (state,) in rows)

        wait_for(all_scored, 120, "every study scored")
        wait_for(lambda: len(ris.messages) >= 2 * RESTARTS, 60, "XO and ORU of every study")
        time.sleep(1)  # a second order change would arrive now
        summary = ris_summary(ris.messages)
        assert set(summary) == set(uids.values())
        for acc, got in summary.items():
            # one order change per study; a message the engine sent but could not mark sent
            # before SIGKILL is sent again with the same MSH-10 (HL7's at-least-once)
            assert len(set(got["XO"])) == 1, (acc, got)
            assert len(set(got["ORU"])) == 1, (acc, got)
        resent = sum(len(g["XO"]) + len(g["ORU"]) for g in summary.values()) - 2 * RESTARTS
        findings = engine.query("SELECT study_uid FROM finding")
        assert sorted(u for (u,) in findings) == sorted(uids)  # each study analysed once
        counts = engine.query("SELECT count(*), count(DISTINCT control_id) FROM hl7message")
        assert counts == [(RESTARTS, RESTARTS)]
        print(
            f"\nFIGURE 5: {RESTARTS} stops ({'; '.join(periods)}); every study scored once, "
            f"RIS: {sum(len(set(g['XO'])) for g in summary.values())} XO for {RESTARTS} studies, "
            f"{resent} same-id resend(s)"
        )
    finally:
        engine.stop()
        triton.stop()
        ris.close()
