"""Feedback on AI results: was the model right?

Two sources, one table (:class:`~triage.store.models.Feedback`):

- ``radiologist``: on the study page a signed-in radiologist marks the AI result *agreed* or
  *disagreed*, with an optional note (:func:`record_verdict`);
- ``report``: the RIS sends the final report as ORU^R01 with a coded result, which the site
  mapping (``final_report`` in rules/hl7-mapping.yaml) turns into positive or negative for a
  model (:func:`report_feedback_row`, written by the HL7 message store in the transaction that
  stores the message).

Each row records what the AI said when the feedback was given (``ai_result``) and the truth
it implies (``truth``): agreeing with a positive result says the study is positive, and so on.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from triage.errors import FeedbackError as FeedbackError
from triage.store.models import Feedback, Finding, utcnow

VERDICTS = ("agreed", "disagreed")
SOURCES = ("radiologist", "report")
NOTE_MAX = 2000


def ai_result_of(finding: Finding | None) -> str:
    """What a finding said: positive, negative, not_assessable, error; "" without one."""
    if finding is None:
        return ""
    if finding.status != "done":
        return finding.status
    return "positive" if finding.positive else "negative"


def truth_from_verdict(ai_result: str, verdict: str) -> str:
    """The truth a verdict on a positive or negative result implies ("" otherwise)."""
    if ai_result not in ("positive", "negative") or verdict not in VERDICTS:
        return ""
    if verdict == "agreed":
        return ai_result
    return "negative" if ai_result == "positive" else "positive"


def verdict_from_truth(ai_result: str, truth: str) -> str:
    """agreed / disagreed when the AI gave a positive or negative result, else ""."""
    if ai_result not in ("positive", "negative") or truth not in ("positive", "negative"):
        return ""
    return "agreed" if ai_result == truth else "disagreed"


def latest_finding(session: Session, study_uid: str, model: str = "") -> Finding | None:
    """The newest finding of a study (of ``model`` when given)."""
    query = select(Finding).where(Finding.study_uid == study_uid)
    if model:
        query = query.where(Finding.model_name == model)
    query = query.order_by(col(Finding.created_at).desc(), col(Finding.id).desc())
    return session.exec(query).first()


def record_verdict(
    session: Session, study_uid: str, verdict: str, *, who: str, note: str = "", model: str = ""
) -> Feedback:
    """Store a radiologist's verdict on the newest AI result of a study (of ``model``)."""
    if verdict not in VERDICTS:
        raise FeedbackError(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
    finding = latest_finding(session, study_uid, model)
    if finding is None:
        raise FeedbackError(f"study {study_uid} has no AI result to agree or disagree with")
    ai_result = ai_result_of(finding)
    row = Feedback(
        study_uid=study_uid,
        model_name=finding.model_name,
        finding_id=finding.id,
        ai_result=ai_result,
        source="radiologist",
        verdict=verdict,
        truth=truth_from_verdict(ai_result, verdict),
        note=note.strip()[:NOTE_MAX],
        who=who,
        at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def report_feedback_row(
    finding: dict[str, Any] | None,
    *,
    study_uid: str,
    model: str,
    truth: str,
    who: str,
    note: str,
    message_id: int,
) -> dict[str, Any]:
    """The Feedback row (column values) of a final report's coded result. ``finding``: the
    newest finding of that model for the study (its ``id``, ``status``, ``positive``), or
    None when the study has none (the truth is kept for later comparison all the same)."""
    if finding is None:
        ai_result = ""
    elif finding["status"] != "done":
        ai_result = str(finding["status"])
    else:
        ai_result = "positive" if finding["positive"] else "negative"
    return {
        "study_uid": study_uid,
        "model_name": model,
        "finding_id": finding["id"] if finding else None,
        "ai_result": ai_result,
        "source": "report",
        "verdict": verdict_from_truth(ai_result, truth),
        "truth": truth,
        "note": note[:NOTE_MAX],
        "who": who,
        "message_id": message_id,
        "at": utcnow(),
    }


def study_feedback(session: Session, study_uid: str) -> list[Feedback]:
    """Every feedback row of a study, newest first."""
    query = (
        select(Feedback)
        .where(Feedback.study_uid == study_uid)
        .order_by(col(Feedback.at).desc(), col(Feedback.id).desc())
    )
    return list(session.exec(query).all())
