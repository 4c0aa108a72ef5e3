"""The engine's bundled Triton SIGKILLed while studies are in flight: they wait as AI pending,
the engine restarts Triton, and every study is then analysed and scored; nothing is dropped
and the RIS gets one XO per study. docs/reliability.md, section 2."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from faultkit import positive_head_ct, ris_summary
from support.dcmtk import StoreSCU
from support.engine import Engine
from support.net import wait_for
from support.procs import pid_alive
from support.ris_peer import FakeRIS

pytestmark = pytest.mark.integration

STUDIES = 3


def test_triton_killed_mid_run(tmp_path: Path) -> None:
    ris = FakeRIS()
    # Retries as fast as they come: a retry must not simply outlast the outage.
    engine = Engine(tmp_path, triton=True, ris_port=ris.port, triton_retry_base_seconds=0.05)
    scus: list[StoreSCU] = []
    try:
        studies = [
            positive_head_ct(tmp_path / "studies", f"TRK{i}", f"PTRK{i}") for i in range(STUDIES)
        ]
        engine.start()
        triton = engine.wait_healthy()["components"]["triton"]
        old_pid = int(triton["pid"])
        assert triton["mode"] == "local" and triton["restarts"] == 0
        for st in studies:
            engine.order(st.accession, st.patient_id, st.study_uid)
        scus = [StoreSCU(engine.dicom_port, st.files) for st in studies]

        # Kill the server as soon as the first study is on its way to the model.
        routed = re.compile(r"study (\S+) routed to ich")
        wait_for(lambda: routed.search(engine.log()), 60, "a study routed to ich", every=0.02)
        os.kill(old_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        for scu in scus:
            assert scu.wait(60) == 0 and len(scu.succeeded) == 24

        def all_scored() -> bool:
            rows = engine.query("SELECT state FROM study")
            return len(rows) == STUDIES and all(state == "scored" for (state,) in rows)

        wait_for(all_scored, 120, "every study scored", every=0.05)
        recovered = time.monotonic() - killed_at
        triton = engine.health()[1]["components"]["triton"]
        assert triton["restarts"] >= 1 and triton["pid"] != old_pid and not pid_alive(old_pid)
        log = engine.log()
        uids = {st.study_uid: st.accession for st in studies}
        pending = {uids[u] for u in re.findall(r"study (\S+): AI pending", log) if u in uids}
        assert pending, "no study waited as AI pending"

        wait_for(lambda: len(ris.messages) >= 2 * STUDIES, 30, "XO and ORU of every study")
        time.sleep(2)  # a duplicate would arrive now
        summary = ris_summary(ris.messages)
        assert set(summary) == set(uids.values())
        for acc, got in summary.items():
            assert len(got["XO"]) == 1 and len(got["ORU"]) == 1, (acc, got)
        findings = engine.query("SELECT study_uid, status, positive FROM finding")
        assert sorted(u for u, _, _ in findings) == sorted(uids)  # one analysis per study
        assert all(status == "done" and positive for _, status, positive in findings)
        rows = engine.query("SELECT count(*) FROM instance")
        assert rows == [(24 * STUDIES,)]
        print(
            f"\nFIGURE 2: Triton killed with {STUDIES} studies in flight; "
            f"{len(pending)} waited as AI pending; all scored {recovered:.1f} s after the kill; "
            f"Triton restarts {triton['restarts']}; RIS XO "
            f"{sum(len(g['XO']) for g in summary.values())} ORU "
            f"{sum(len(g['ORU']) for g in summary.values())}"
        )
    finally:
        for scu in scus:
            scu.stop()
        engine.stop()
        ris.close()


def _children(pid: int) -> dict[int, str]:
    """The child processes of ``pid``: their command lines."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found[int(entry.name)] = cmd
    return found


def test_a_dead_model_backend_restarts_triton(tmp_path: Path) -> None:
    """The process that runs the ich model inside Triton (the Python backend's stub) dies
    while the server itself runs on: Triton answers every inference on ich with "stub
    process is not healthy" and would do so for ever. The engine reports it in /healthz,
    restarts its Triton, and the study waiting for ich is then scored."""
    ris = FakeRIS()
    engine = Engine(tmp_path, triton=True, ris_port=ris.port)
    try:
        study = positive_head_ct(tmp_path / "studies", "STUB1", "PSTUB1")
        engine.start()
        triton = engine.wait_healthy()["components"]["triton"]
        old_pid = int(triton["pid"])
        stubs = [p for p, cmd in _children(old_pid).items() if "ich" in cmd]
        assert stubs, _children(old_pid)
        for p in stubs:
            os.kill(p, signal.SIGKILL)
        engine.order(study.accession, study.patient_id, study.study_uid)
        scu = StoreSCU(engine.dicom_port, study.files)
        assert scu.wait(60) == 0

        def scored() -> bool:
            return engine.query("SELECT state FROM study") == [("scored",)]

        wait_for(scored, 180, "the study scored after the restart", every=0.2)
        log = engine.log()
        assert "a model backend of the local Triton died; restarting" in log
        triton = engine.wait_healthy()["components"]["triton"]
        assert triton["restarts"] >= 1 and int(triton["pid"]) != old_pid
        (finding,) = engine.query("SELECT status, positive FROM finding")
        assert finding == ("done", 1)
    finally:
        engine.stop()
        ris.close()
