"""Study completion: when a study has all its images and may be analysed.

DICOM has no "study finished" message, so completion is inferred, and made idempotent:

- **Quiet period**: no instance for ``stable_seconds_for(modality, calling AE)`` (per-AE, then
  per-modality overrides of ``study_stable_seconds``).
- **Expected series**: once every series the matching routing rule lists in
  ``expected_series`` is present, a shorter quiet period (``expected_series_quiet_seconds``)
  is enough. Completion does not route: it asks the ``expected_series_present`` callable it
  is given (the pipeline's, which routes the study once and keeps the rule for processing).
- **From the RIS**: an order with ORC-5 = CM (exam completed) completes its studies that have
  images at once (see :meth:`triage.pipeline.Pipeline.on_order`).

The engine does not wait for its periodic tick to notice a quiet period that ended:
:class:`CompletionWaker` queues a completion pass when a study's quiet period ends.

A late instance puts a study back to RECEIVING (``record_instance``), so it completes again;
the pipeline re-analyses it only when its set of instances changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, select

from triage.ports import ExpectedSeriesPresent
from triage.store import Database, Study, StudyState
from triage.store.models import utcnow

log = logging.getLogger("triage.completion")


@dataclass(frozen=True)
class CompletionPolicy:
    stable_seconds_for: Callable[[str, str], float]  # (modality, calling AE) -> seconds
    shortest_seconds: float  # the shortest quiet period any study can have
    expected_series_quiet_seconds: float


def complete_stable_studies(
    db: Database,
    policy: CompletionPolicy,
    *,
    expected_series_present: ExpectedSeriesPresent | None = None,
    now: datetime | None = None,
) -> list[tuple[str, str]]:
    """Mark quiet RECEIVING studies COMPLETE; return (study UID, why) for each.

    ``expected_series_present(session, study)``: whether every series the study's routing
    rule expects is present (None: no rule expects any); asked only for a study quiet for
    ``expected_series_quiet_seconds`` but not yet for its whole quiet period."""
    now = now or utcnow()
    shortest = min(policy.shortest_seconds, policy.expected_series_quiet_seconds)
    done: list[tuple[str, str]] = []
    with db.session() as s:
        candidates = s.exec(
            select(Study).where(
                Study.state == StudyState.RECEIVING,
                col(Study.last_received_at) < now - timedelta(seconds=shortest),
            )
        ).all()
        for study in candidates:
            quiet = (now - study.last_received_at).total_seconds()
            needed = policy.stable_seconds_for(study.modality, study.calling_ae)
            why = ""
            if quiet >= needed:
                why = f"no new image for {needed:g} s"
            elif (
                expected_series_present is not None
                and quiet >= policy.expected_series_quiet_seconds
                and expected_series_present(s, study)
            ):
                why = "every expected series is present"
            if why:
                study.state = StudyState.COMPLETE
                study.completed_at = now
                s.add(study)
                done.append((study.study_uid, why))
    return done


class CompletionWaker:
    """Wakes the pipeline when a receiving study's quiet period ends, instead of waiting for
    the next periodic tick (``completion_poll_seconds``).

    :meth:`stored` is told of each new instance (study, when it was received, how long that
    study must then be quiet); one thread waits for the earliest end and calls ``wake()``
    (which queues a completion pass on the pipeline worker) a little after it. A later instance
    moves its study's end later. The periodic tick stays: this only makes it come sooner."""

    MARGIN_SECONDS = 0.02  # after the end, so that completion finds the study quiet enough

    def __init__(self, wake: Callable[[], None], clock: Callable[[], float] | None = None) -> None:
        self._wake = wake
        self._clock = clock or time.monotonic
        self._due: dict[str, float] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="completion-waker", daemon=True)
        self.wakes = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def stored(self, study_uid: str, quiet_seconds: float, at: float | None = None) -> None:
        """An instance of ``study_uid`` arrived ``at`` (the clock's time; default now); the
        study may complete ``quiet_seconds`` later."""
        due = (self._clock() if at is None else at) + quiet_seconds + self.MARGIN_SECONDS
        with self._cond:
            earliest = min(self._due.values(), default=None)
            self._due[study_uid] = max(due, self._due.get(study_uid, due))
            if earliest is None or due < earliest:
                self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._due)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop:
                    now = self._clock()
                    ready = [uid for uid, due in self._due.items() if due <= now]
                    if ready:
                        for uid in ready:
                            del self._due[uid]
                        break
                    earliest = min(self._due.values(), default=None)
                    self._cond.wait(None if earliest is None else max(earliest - now, 0.001))
                if self._stop:
                    return
            self.wakes += 1
            try:
                self._wake()
            except Exception:  # the periodic tick still completes the study
                log.exception("completion wake-up failed")
