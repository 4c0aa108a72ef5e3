"""`triage demo`: send synthetic head CTs and their orders to a running engine and show the
worklist before and after scoring.

Everything sent is synthetic (phantoms and made-up patients); the AI models are trained on
synthetic phantoms only and are not for clinical use.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread
from pydicom.uid import CTImageStorage
from pynetdicom import AE
from rich.console import Console
from rich.table import Table

from triage.config import Settings
from triage.errors import TriageError
from triage.hl7.client import send_message
from triage.service import read_endpoints
from triage.synth.ct import write_head_ct
from triage.synth.orders import order_message

PENDING_STATES = {"receiving", "complete", "ai_pending"}


@dataclass(frozen=True)
class DemoCase:
    hemorrhage: bool
    priority: str
    patient_class: str


def demo_cases(n: int) -> list[DemoCase]:
    """A busy night in miniature: mostly routine scans, one bleed ordered as routine."""
    classes = ["O", "I", "E"]
    cases = [DemoCase(False, "R" if i % 3 else "A", classes[i % 3]) for i in range(n)]
    if cases:
        cases[n // 2] = DemoCase(True, "R", "E")  # the bleed that would wait behind the rest
    return cases


def send_images(host: str, port: int, called_ae: str, files: list[Path]) -> int:
    """C-STORE ``files`` on one association; returns how many were answered Success."""
    ae = AE(ae_title="TRIAGEDEMO")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise TriageError(f"DICOM association with {called_ae}@{host}:{port} was not accepted")
    ok = 0
    try:
        for f in files:
            status = assoc.send_c_store(dcmread(f))
            if status and status.Status == 0x0000:
                ok += 1
    finally:
        assoc.release()
    return ok


def _table(title: str, studies: list[dict[str, Any]]) -> Table:
    t = Table(title=title)
    for col in ("#", "accession", "class", "ordered", "engine", "score", "AI", "state"):
        t.add_column(col)
    for i, st in enumerate(studies, 1):
        ai = ", ".join(
            f"{f['model']} {f['probability']:.2f}{' POS' if f['positive'] else ''}"
            if f["probability"] is not None
            else f"{f['model']} {f['status']}"
            for f in st["findings"]
        )
        raised = st["engine_priority"] != (st["ordered_priority"] or "R")
        style = "bold red" if raised else ""
        t.add_row(
            str(i),
            st["accession_number"],
            st["patient_class"] or "?",
            st["ordered_priority"] or "-",
            st["engine_priority"],
            f"{st['score']:.1f}" if st["scored_at"] else "-",
            ai or "-",
            st["state"],
            style=style,
        )
    return t


def run_demo(settings: Settings, *, studies: int = 6, wait_seconds: float = 120.0) -> int:
    console = Console()
    try:
        ep = read_endpoints(settings.data_dir)
    except (OSError, ValueError):
        ep = {
            "http": [settings.bind_host, settings.http_port],
            "hl7": [settings.bind_host, settings.hl7_port],
            "dicom": [settings.bind_host, settings.dicom_port],
        }
    base = f"http://{ep['http'][0]}:{ep['http'][1]}"
    run_id = time.strftime("%H%M%S")
    cases = demo_cases(studies)
    accessions = []
    with tempfile.TemporaryDirectory(prefix="triage-demo-") as tmp:
        for i, case in enumerate(cases):
            acc = f"DEMO{run_id}{i:02d}"
            pid = f"SYN{run_id}{i:02d}"
            study = write_head_ct(
                Path(tmp) / acc,
                hemorrhage=case.hemorrhage,
                seed=1000 + i,
                patient_id=pid,
                accession=acc,
            )
            msg = order_message(
                accession=acc,
                patient_id=pid,
                priority=case.priority,
                patient_class=case.patient_class,
                study_uid=study.study_uid,
            )
            send_message(ep["hl7"][0], ep["hl7"][1], msg, timeout=10.0)
            n = send_images(ep["dicom"][0], ep["dicom"][1], settings.dicom_ae_title, study.files)
            console.print(
                f"sent {acc}: order {case.priority}/{case.patient_class}, {n} images"
                f"{'  (synthetic hemorrhage)' if case.hemorrhage else ''}"
            )
            accessions.append(acc)

    token = settings.api_token.get_secret_value()
    auth = {"Authorization": f"Bearer {token}"} if token else {}

    def ours() -> list[dict[str, Any]]:
        r = httpx.get(f"{base}/api/worklist", headers=auth, timeout=10.0)
        if r.status_code in (401, 403):
            raise TriageError(
                "the engine refused to show the worklist: run the engine and the demo with "
                "the same TRIAGE_API_TOKEN (`make run` and `make demo` share one; "
                "docs/security.md)"
            )
        r.raise_for_status()
        return [s for s in r.json()["studies"] if s["accession_number"] in accessions]

    before = sorted(ours(), key=lambda s: accessions.index(s["accession_number"]))
    console.print(_table("Worklist before scoring (arrival order)", before))
    deadline = time.monotonic() + wait_seconds
    after = ours()
    while time.monotonic() < deadline and (
        len(after) < len(accessions) or any(s["state"] in PENDING_STATES for s in after)
    ):
        time.sleep(1.0)
        after = ours()
    console.print(_table("Worklist after scoring (most urgent first)", after))
    if after:
        top = after[0]
        console.print(f"[bold]Why {top['accession_number']} is first:[/bold]")
        for reason in top["reasons"]:
            console.print(f"  - {reason}")
    console.print(
        "[dim]AI findings come from models trained on synthetic phantoms only; "
        "not for clinical use.[/dim]"
    )
    done = all(s["state"] not in PENDING_STATES for s in after) and len(after) == len(accessions)
    return 0 if done else 1
