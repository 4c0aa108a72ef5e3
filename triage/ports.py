"""The orchestration types: what the pipeline asks of inference and of the RIS side.

:class:`Analysis` is a model's answer; :class:`Analyzer` (implemented by
:class:`triage.inference.analyze.TritonAnalyzer`) and :class:`Notifier` (implemented by
:class:`triage.outbound.ris.RISNotifier`) are the ports the pipeline drives. Defined here, so
that inference and outbound depend on this small module, not on the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlmodel import Session

from triage.store import Finding, Instance, Order, Study

#: ``(session, study) -> bool``: every series the study's routing rule expects is present
#: (completion asks; the pipeline, which routes, answers).
ExpectedSeriesPresent = Callable[[Session, Study], bool]


@dataclass(frozen=True)
class Analysis:
    """A model's answer for a study, ready to store as a Finding."""

    model_name: str
    model_version: str
    status: str  # done, not_assessable, error
    probability: float | None = None
    positive: bool = False
    threshold: float | None = None
    key_slice: int | None = None  # index of the key slice in the series, 0 = most inferior
    # the key slice's InstanceNumber: the image number a viewer shows (None when the header
    # has none or there is no key slice)
    key_instance: int | None = None
    # the key slice's frame number (from 1) when the series is one multi-frame image
    # (Enhanced CT): the viewer shows the image and this frame of it
    key_frame: int | None = None
    series_uid: str = ""
    detail: str = ""
    # not_assessable: each reason on its own (``detail`` is the message that joins them)
    reasons: tuple[str, ...] = ()
    key_image: str = ""  # PNG path relative to the data dir; "" when none
    inputs: str = ""  # JSON: scanner, kernel, thickness, reference HU (Finding.inputs)


class Analyzer(Protocol):
    def analyze(
        self, model: str, instances: list[Instance]
    ) -> Analysis:  # pragma: no cover - protocol
        """Run ``model`` on a study's instances. Raises NotAssessable / InferenceError."""
        ...


class Notifier(Protocol):
    """The RIS side, as an outbox: messages are queued in the scoring transaction, then sent."""

    def queue(
        self,
        session: Session,
        study: Study,
        order: Order | None,
        findings: list[Finding],
        *,
        order_change: bool = True,
        corrected: bool = False,
    ) -> bool:  # pragma: no cover - protocol
        """Queue an ORM XO (new priority, when ``order_change``) and an ORU per AI result
        (result status C when ``corrected``); False when nothing could be queued."""
        ...

    def send_pending(self) -> None:  # pragma: no cover - protocol
        """Send queued messages that are due; failures stay queued for a later retry."""
        ...
