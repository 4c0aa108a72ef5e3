"""The whole data path with real parts: the engine as a subprocess with its bundled Triton,
dcmtk's storescu as the modality, an MLLP client as the RIS order feed, and a test RIS (an
MLLP server in this test) receiving what the engine sends back."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pydicom
import pytest
from support.dcmtk import storescu
from support.engine import Engine
from support.net import wait_for
from support.ris_peer import FakeRIS

from triage.hl7.client import send_message
from triage.synth.ct import write_ctpa, write_head_ct
from triage.synth.orders import order_message

pytestmark = pytest.mark.integration


def segments(msg: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in msg.split("\r") if s.startswith(name + "|")]


API_TOKEN = "end-to-end-api-token"  # TRIAGE_API_TOKEN of the engine started here
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def ris():
    r = FakeRIS()
    yield r
    r.close()


@pytest.fixture
def engine(tmp_path, ris) -> Iterator[Engine]:
    """The engine with its bundled Triton, ready (/healthz 200: Triton up and warm)."""
    e = Engine(
        tmp_path,
        triton=True,
        ris_port=ris.port,
        quick=False,
        api_token=API_TOKEN,
        study_stable_seconds=2,
        completion_poll_seconds=0.5,
    )
    try:
        e.start(timeout=120)
        e.wait_healthy(timeout=120)
        yield e
    finally:
        e.stop()


def test_bleed_jumps_to_the_top(engine, ris, tmp_path):
    work, base = engine.work, engine.base
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
        assert "MSA|AA|ORM" + acc in engine.order(acc, pid, study.study_uid, priority="R")
    # Images with dcmtk's storescu: the negative study first, so it arrived first.
    for study in (neg, pos):
        storescu(engine.dicom_port, study.files, check=True)

    def scored():
        items = httpx.get(f"{base}/api/worklist", headers=AUTH, timeout=5).json()["studies"]
        ours = [s for s in items if s["accession_number"] in ("ACCPOS1", "ACCNEG1")]
        return ours if len(ours) == 2 and all(s["state"] == "scored" for s in ours) else None

    studies = wait_for(scored, 120, "both studies scored", every=0.3)
    top, second = studies
    assert top["accession_number"] == "ACCPOS1"
    assert top["engine_priority"] == "S" and top["ordered_priority"] == "R"
    assert second["engine_priority"] == "R"
    assert top["score"] > second["score"]
    (finding,) = top["findings"]
    assert finding["model"] == "ich" and finding["positive"] and finding["probability"] > 0.5
    # the key image is named by the image number the radiologist's viewer shows, and it lies
    # on the bleed
    key = finding["key_instance"]
    assert key is not None and any(abs(key - i) <= 2 for i in pos.lesion_instances), (
        key,
        pos.lesion_instances,
    )
    assert not second["findings"][0]["positive"]
    assert any("raised from R" in r for r in top["reasons"])
    assert top["patient_class"] == "E" and top["order_link"] in ("study_uid", "accession")

    # The RIS got an order change (XO, new priority) and an AI result, for the positive only.
    wait_for(lambda: len(ris.messages) >= 2, 30, "two messages at the RIS", every=0.3)
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
    assert engine.kill(signal.SIGINT) == 0
    assert "stopped" in engine.log()
    out = subprocess.run(["pgrep", "-f", str(work / "var" / "triton")], capture_output=True)
    assert out.stdout.strip() == b"", "tritonserver left running"


def test_a_ctpa_beside_a_plain_chest_is_judged_on_the_ctpa(engine, ris, tmp_path):
    """A CTPA order whose study holds a plain chest series (sent first, same thickness and
    image count: series selection ranks it first) and the CTPA: pe may not judge the plain
    one (enhancement too low), so the engine judges the CTPA, and the worklist says which
    series it judged."""
    work, base = engine.work, engine.base
    ctpa = write_ctpa(
        work / "ctpa", embolus=True, seed=3, patient_id="E2EPE", accession="ACCPE1", size=256
    )
    plain_uid = pydicom.uid.generate_uid()
    plain = work / "plain"
    plain.mkdir()
    for i, f in enumerate(ctpa.files):  # the same chest, its contrast washed out
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        blood = (hu > 100.0) & (hu < 700.0)
        hu[blood] = 40.0 + (hu[blood] - 40.0) * 0.3
        stored = np.rint((hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope))
        ds.PixelData = stored.astype(ds.pixel_array.dtype).tobytes()
        ds.SeriesInstanceUID = plain_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(plain / f"{i:04d}.dcm")
    order = order_message(
        accession="ACCPE1", patient_id="E2EPE", procedure="pe", study_uid=ctpa.study_uid
    )
    assert "MSA|AA|" in send_message("127.0.0.1", engine.hl7_port, order, timeout=10)
    storescu(engine.dicom_port, sorted(plain.iterdir()), check=True)
    storescu(engine.dicom_port, ctpa.files, check=True)

    def scored():
        items = httpx.get(f"{base}/api/worklist", headers=AUTH, timeout=5).json()["studies"]
        ours = [s for s in items if s["accession_number"] == "ACCPE1"]
        return ours[0] if ours and ours[0]["state"] == "scored" else None

    study = wait_for(scored, 120, "the CTPA scored", every=0.3)
    (finding,) = study["findings"]
    assert finding["model"] == "pe"
    assert finding["series_uid"] == ctpa.series_uid != plain_uid
    assert finding["probability"] is not None, finding
    assert "not assessable" not in " ".join(study["reasons"]).lower(), study["reasons"]
    log = engine.log()
    assert "judged on series " + ctpa.series_uid in log
    assert "the best-ranked one was not assessable" in log
