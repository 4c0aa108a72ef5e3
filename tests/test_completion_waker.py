"""Event-driven hand-offs: a study's quiet period ending wakes the pipeline (CompletionWaker),
and the engine reads a study's CT slices while they arrive (the slice cache)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlmodel import select

from triage.completion import CompletionWaker
from triage.config import Settings
from triage.demo import send_images
from triage.service import Engine
from triage.store import Study
from triage.synth.ct import write_head_ct


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_quiet_period_that_ended_wakes_at_once() -> None:
    woken = threading.Event()
    waker = CompletionWaker(woken.set)
    waker.start()
    try:
        waker.stored("1.2.3", 0.0)
        assert woken.wait(10)
        assert waker.pending() == 0 and waker.wakes == 1
    finally:
        waker.stop()


def test_each_study_wakes_when_its_own_period_ends_and_a_later_image_moves_it() -> None:
    woken: list[int] = []
    waker = CompletionWaker(lambda: woken.append(1))
    waker.start()
    try:
        waker.stored("A", 3600.0)
        waker.stored("A", 0.0)  # an earlier end never shortens the wait of a later image
        waker.stored("B", 0.0)
        wait_until(lambda: woken, 10, "B's wake-up")
        assert waker.pending() == 1  # A still waits for its hour
        assert len(woken) == 1
    finally:
        waker.stop()


def test_a_wake_up_that_fails_is_logged_and_the_next_still_comes(caplog) -> None:
    calls: list[int] = []

    def wake() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("scheduler gone")

    waker = CompletionWaker(wake)
    waker.start()
    try:
        waker.stored("A", 0.0)
        wait_until(lambda: calls, 10, "the first wake-up")
        waker.stored("B", 0.0)
        wait_until(lambda: len(calls) == 2, 10, "the second wake-up")
    finally:
        waker.stop()
    assert "completion wake-up failed" in caplog.text


def _state(db_path: Path, study_uid: str) -> str | None:
    with sqlite3.connect(db_path) as conn:
        row = conn.execute("SELECT state FROM study WHERE study_uid = ?", (study_uid,)).fetchone()
    return None if row is None else str(row[0])


@pytest.mark.integration
def test_the_engine_completes_a_quiet_study_without_its_periodic_tick(tmp_path: Path) -> None:
    """The periodic tick is an hour away: only the wake-up can complete the study. Its CT
    slices were read while they arrived: the analysis (Triton absent: AI pending) takes them
    from the slice cache, which then holds nothing."""
    study = write_head_ct(
        tmp_path / "head", hemorrhage=False, seed=3, patient_id="W1", accession="W1"
    )
    settings = Settings(
        data_dir=tmp_path / "var",
        dicom_port=0,
        hl7_port=0,
        http_port=0,
        triton_url="127.0.0.1:1",  # nothing there: the study becomes AI pending
        triton_warmup=False,
        study_stable_seconds=0.3,
        completion_poll_seconds=3600,
    )
    engine = Engine(settings)
    runner = threading.Thread(target=asyncio.run, args=(engine.run(),))
    runner.start()
    try:
        wait_until(lambda: "dicom" in engine.endpoints, 60, "the DICOM listener")
        assert send_images("127.0.0.1", engine.endpoints["dicom"][1], "TRIAGE", study.files) == len(
            study.files
        )
        db = settings.data_dir / "triage.db"
        wait_until(
            lambda: _state(db, study.study_uid) not in (None, "receiving", "complete"),
            60,
            "the study to complete and be processed",
        )
        assert _state(db, study.study_uid) == "ai_pending"
        assert engine.waker.wakes >= 1
        # every slice taken once, from the cache where the reader (a niced thread) got to it
        # first: all of them on a quiet machine, fewer when the CPUs are busy elsewhere
        slices = engine.slices
        assert slices.hits + slices.misses == len(study.files) and slices.hits > 0
        assert engine.slices.held_bytes == 0
        with engine.db.session() as s:
            assert s.exec(select(Study)).one().ai_status == "pending"
    finally:
        engine.request_stop()
        runner.join(60)
    assert not runner.is_alive()
