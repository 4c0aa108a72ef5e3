"""Fixtures for the pages: a real store, the engine's app (create_app: API, sign-in, pages)
served by uvicorn on an ephemeral port, accounts, and studies stored as the pipeline stores
them (scored with the real urgency rules, key images rendered and stored by the inference
code, priority changes recorded by the scoring history)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from support.paths import REPO_ROOT

from triage.api.app import create_app
from triage.auth.users import add_user
from triage.config import Settings
from triage.inference.keyimage import render_key_image, store_key_image
from triage.scoring import Cause, FindingInput, UrgencyRules, load_urgency_rules, score_study
from triage.scoring.history import record_change
from triage.store import Database, Finding, Order, OutboundMessage, Study, StudyState
from triage.store.models import Instance

PASSWORD = "correct horse battery staple"


@pytest.fixture
def rules() -> UrgencyRules:
    return load_urgency_rules(REPO_ROOT / "rules" / "urgency.yaml")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def db(data_dir: Path) -> Iterator[Database]:
    d = Database(f"sqlite:///{data_dir / 'triage.db'}")
    d.create_all()
    add_user(d, "rita", "radiologist", PASSWORD)
    add_user(d, "mona", "manager", PASSWORD)
    yield d
    d.dispose()


def _phantom_slice(size: int = 128, lesion: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A head-like HU slice (skull ring, brain, a bright blob) and the model's coarse map."""
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(y - size / 2, x - size / 2)
    hu = np.full((size, size), -1000.0, np.float32)
    hu[r < size * 0.45] = 1000.0
    hu[r < size * 0.40] = 35.0
    blob = np.hypot(y - size * 0.4, x - size * 0.6) < size * 0.07
    if lesion:
        hu[blob] = 70.0
    cells = np.zeros((16, 16), np.float32)
    if lesion:
        cells[5:8, 8:11] = 0.9
    return hu, cells


@dataclass
class Seeded:
    study_uid: str
    accession: str
    finding_id: int | None


def seed_study(
    db: Database,
    rules: UrgencyRules,
    data_dir: Path,
    *,
    study_uid: str,
    accession: str,
    patient_class: str = "E",
    location: str = "ED^1",
    ordered: str = "R",
    probability: float | None = 0.93,
    state: str = StudyState.SCORED,
    modality: str = "CT",
    procedure: str = "CT head without contrast",
    waited_minutes: float = 12.0,
) -> Seeded:
    """Store an ordered, completed, analysed and scored study as the pipeline leaves it:
    the order, the study, the AI finding with its key images (overlay and plain), the score
    from the urgency rules with its reasons, the priority change and, when the priority
    rose, the order change queued for the RIS."""
    now = datetime.now(UTC)
    completed = now - timedelta(minutes=waited_minutes)
    threshold = 0.5
    finding_inputs: list[FindingInput] = []
    with db.session() as s:
        order = Order(
            accession_number=accession,
            patient_id=f"P-{accession}",
            patient_class=patient_class,
            ordered_priority=ordered,
            procedure_code="CTHEAD",
            procedure_text=procedure,
            modality=modality,
            ordering_location=location,
            order_control="NW",
            sending_application="RIS",
            sending_facility="HOSP",
        )
        s.add(order)
        s.flush()
        study = Study(
            study_uid=study_uid,
            accession_number=accession,
            patient_id=f"P-{accession}",
            modality=modality,
            study_description=procedure,
            instance_count=40,
            first_received_at=completed - timedelta(minutes=1),
            last_received_at=completed - timedelta(seconds=10),
            completed_at=completed,
            state=state,
            routed_model="ich",
            ordered_priority=ordered,
            patient_class=patient_class,
            order_link="accession",
            order_id=order.id,
        )
        finding_id = None
        if state == StudyState.AI_PENDING:
            study.ai_status = "pending"
        elif probability is not None:
            positive = probability >= threshold
            hu, cells = _phantom_slice(lesion=positive)
            common: dict[str, Any] = dict(
                window=(40.0, 80.0),
                model="ich",
                model_version="1",
                probability=probability,
                slice_index=17,
                n_slices=40,
                positive=positive,
            )
            overlay = render_key_image(hu, localization=cells, **common)
            plain = render_key_image(hu, localization=None, plain=True, **common)
            name = f"ich-{accession}"
            store_key_image(data_dir, study_uid, f"{name}-plain", plain.png)
            rel = store_key_image(data_dir, study_uid, name, overlay.png)
            series_uid = f"{study_uid}.2"
            for i in range(3):  # the series the model judged, as the store indexes it
                s.add(
                    Instance(
                        sop_instance_uid=f"{series_uid}.{i}",
                        study_uid=study_uid,
                        series_uid=series_uid,
                        modality="CT",
                        series_number=2,
                        series_description="AXIAL 5MM BRAIN",
                        path=f"dicom/{series_uid}.{i}.dcm",
                    )
                )
            finding = Finding(
                study_uid=study_uid,
                model_name="ich",
                model_version="1",
                status="done",
                probability=probability,
                positive=positive,
                threshold=threshold,
                key_slice=17,
                key_image=rel,
                series_uid=series_uid,
            )
            s.add(finding)
            s.flush()
            finding_id = finding.id
            study.ai_status = "done"
            finding_inputs.append(
                FindingInput("ich", "done", probability, positive, threshold, "1", "")
            )
        result = score_study(
            rules,
            ordered_priority=ordered,
            patient_class=patient_class,
            findings=finding_inputs,
            ai_pending=state == StudyState.AI_PENDING,
            location=location,
            waiting_minutes=waited_minutes,
        )
        study.score = result.score
        study.engine_priority = result.priority
        study.reasons = json.dumps(result.reasons)
        study.scored_at = now
        study.rules_version = result.rules_version
        s.add(study)
        record_change(
            s,
            study_uid=study_uid,
            at=now,
            from_priority="",
            to_priority=result.priority,
            from_score=None,
            to_score=result.score,
            cause=Cause.FINDING if finding_id else Cause.COMPLETED,
            cause_ref=str(finding_id or ""),
            rules_version=result.rules_version,
            reasons=result.reasons,
            announced=result.priority if result.raised else "",
        )
        if result.raised:
            s.add(
                OutboundMessage(
                    study_uid=study_uid,
                    kind="ORM",
                    control_id=f"TRG{accession}",
                    raw=f"MSH|^~\\&|TRIAGE|TRIAGE|RIS|HOSP|||ORM^O01|TRG{accession}|P|2.5.1\r"
                    f"ORC|XO|||||^^^^^{result.priority}",
                    status="sent",
                    order_key=accession,
                    priority=result.priority,
                    ack=f"MSH|^~\\&|RIS|HOSP|TRIAGE|TRIAGE|||ACK|A{accession}|P|2.5.1\r"
                    f"MSA|AA|TRG{accession}",
                    ack_code="AA",
                    attempts=1,
                    sent_at=now,
                )
            )
    return Seeded(study_uid, accession, finding_id)


LIVE_TOKEN = "live-server-api-token"  # the live server's api_token (bearer, radiologist)


@dataclass
class LiveServer:
    url: str
    app: Any
    db: Database
    data_dir: Path
    health: dict[str, dict[str, Any]]  # what /healthz reports (a test may change it)


@pytest.fixture
def live_server(db: Database, rules: UrgencyRules, data_dir: Path) -> Iterator[LiveServer]:
    """The engine's app on 127.0.0.1, an ephemeral port, in a thread; stopped after."""
    health = {"dicom": {"ready": True}, "hl7": {"ready": True}}
    app = create_app(db, rules, lambda: health, data_dir, settings=Settings(api_token=LIVE_TOKEN))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", app, db, data_dir, health)
    finally:
        app.state.worklist_feed.close()  # open event streams end, so the server can stop
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "the HTTP server did not stop"
