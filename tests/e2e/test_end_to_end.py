"""The whole data path with real parts: the engine as a subprocess with its bundled Triton,
dcmtk's storescu as the modality, an MLLP client as the RIS order feed, and a test RIS (an
MLLP server in this test) receiving what the engine sends back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from conftest import dcmtk
from ris_peer import FakeRIS

from triage.hl7.client import send_message
from triage.synth.ct import write_head_ct
from triage.synth.orders import order_message

pytestmark = pytest.mark.integration


def segments(msg: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in msg.split("\r") if s.startswith(name + "|")]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


API_TOKEN = "end-to-end-api-token"  # TRIAGE_API_TOKEN of the engine started here
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def ris():
    r = FakeRIS()
    yield r
    r.close()


@pytest.fixture
def engine(tmp_path, ris):
    data = tmp_path / "var"
    env = dict(os.environ)
    env.update(
        TRIAGE_DATA_DIR=str(data),
        TRIAGE_DICOM_PORT="0",
        TRIAGE_HL7_PORT="0",
        TRIAGE_HTTP_PORT="0",
        TRIAGE_API_TOKEN=API_TOKEN,
        TRIAGE_RIS_HOST="127.0.0.1",
        TRIAGE_RIS_PORT=str(ris.port),
        TRIAGE_STUDY_STABLE_SECONDS="2",
        TRIAGE_COMPLETION_POLL_SECONDS="0.5",
        TRIAGE_LOG_LEVEL="INFO",
    )
    env.pop("TRIAGE_TRITON_URL", None)
    env.pop("TRIAGE_CONFIG", None)
    log = (tmp_path / "engine.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "triage.cli", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def ready():
            if proc.poll() is not None:
                raise AssertionError(f"engine exited: {(tmp_path / 'engine.log').read_text()}")
            try:
                ep = json.loads((data / "endpoints.json").read_text())
            except (OSError, ValueError):
                return None
            if "triton" not in ep:
                return None
            r = httpx.get(f"http://127.0.0.1:{ep['http'][1]}/healthz", timeout=5)
            return ep if r.status_code == 200 else None

        ep = wait_for(ready, 120, "engine /healthz 200")
        yield proc, ep, tmp_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def test_bleed_jumps_to_the_top(engine, ris, tmp_path):
    proc, ep, work = engine
    base = f"http://127.0.0.1:{ep['http'][1]}"
    pos = write_head_ct(
        work / "pos", hemorrhage=True, seed=11, patient_id="E2EPOS", accession="ACCPOS1"
    )
    # The data path is under test here, not the model: the negative's seed is one the model
    # scores well below its operating point (model quality: docs/models.md, tests/training).
    neg = write_head_ct(
        work / "neg", hemorrhage=False, seed=17, patient_id="E2ENEG", accession="ACCNEG1"
    )
    # Orders over MLLP: both routine emergency-department head CTs.
    for study, acc, pid in ((neg, "ACCNEG1", "E2ENEG"), (pos, "ACCPOS1", "E2EPOS")):
        ack = send_message(
            "127.0.0.1",
            ep["hl7"][1],
            order_message(
                accession=acc,
                patient_id=pid,
                priority="R",
                patient_class="E",
                study_uid=study.study_uid,
            ),
            timeout=10,
        )
        assert "MSA|AA|ORM" + acc in ack
    # Images with dcmtk's storescu: the negative study first, so it arrived first.
    for study in (neg, pos):
        subprocess.run(
            [
                dcmtk("storescu"),
                "-aec",
                "TRIAGE",
                "127.0.0.1",
                str(ep["dicom"][1]),
                *map(str, study.files),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def scored():
        items = httpx.get(f"{base}/api/worklist", headers=AUTH, timeout=5).json()["studies"]
        ours = [s for s in items if s["accession_number"] in ("ACCPOS1", "ACCNEG1")]
        return ours if len(ours) == 2 and all(s["state"] == "scored" for s in ours) else None

    studies = wait_for(scored, 120, "both studies scored")
    top, second = studies
    assert top["accession_number"] == "ACCPOS1"
    assert top["engine_priority"] == "S" and top["ordered_priority"] == "R"
    assert second["engine_priority"] == "R"
    assert top["score"] > second["score"]
    (finding,) = top["findings"]
    assert finding["model"] == "ich" and finding["positive"] and finding["probability"] > 0.5
    assert not second["findings"][0]["positive"]
    assert any("raised from R" in r for r in top["reasons"])
    assert top["patient_class"] == "E" and top["order_link"] in ("study_uid", "accession")

    # The RIS got an order change (XO, new priority) and an AI result, for the positive only.
    wait_for(lambda: len(ris.messages) >= 2, 30, "two messages at the RIS")
    time.sleep(1.0)
    assert len(ris.messages) == 2, ris.messages
    kinds = sorted(segments(m, "MSH")[0][8].split("^")[0] for m in ris.messages)
    assert kinds == ["ORM", "ORU"]
    orm = next(m for m in ris.messages if "|ORM^" in m)
    assert segments(orm, "ORC")[0][1] == "XO"
    assert "ACCPOS1" in orm and "E2ENEG" not in orm
    assert segments(orm, "ORC")[0][7].split("^")[5] == "S"
    oru = next(m for m in ris.messages if "|ORU^" in m)
    assert "ACCPOS1" in oru and "synthetic phantoms" in oru

    # Ctrl-C stops everything, Triton included.
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    log = (work / "engine.log").read_text()
    assert "stopped" in log
    out = subprocess.run(["pgrep", "-f", str(work / "var" / "triton")], capture_output=True)
    assert out.stdout.strip() == b"", "tritonserver left running"
