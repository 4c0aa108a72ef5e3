"""The worklist view: open studies, most urgent first, each with why it is where it is.

Order: engine priority, then score (higher first), then completion time (earlier first), then
accession number, then Study UID (:func:`triage.scoring.order_key`): the same studies always
come out in the same order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from sqlmodel import Session, col, select

from triage.scoring import UrgencyRules, order_key, reading_target
from triage.store.models import Finding, Order, PriorityChange, Study, aware
from triage.store.repo import study_reasons

SYNTHETIC_NOTICE = (
    "AI findings come from models trained on synthetic phantoms only; "
    "they are a triage aid, not a diagnosis, and not for clinical use."
)


HISTORY_SHOWN = 5  # the last engine priority changes listed per study


def worklist(
    session: Session, rules: UrgencyRules, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Every study, most urgent first (:func:`triage.scoring.order_key`)."""
    now = now or datetime.now(UTC)
    studies = session.exec(select(Study)).all()
    findings: dict[str, dict[str, Finding]] = {}
    for f in session.exec(select(Finding).order_by(Finding.created_at, Finding.id)).all():  # type: ignore[arg-type]
        findings.setdefault(f.study_uid, {})[f.model_name] = f  # the newest wins
    orders: dict[str, Order] = {}
    for o in session.exec(select(Order).order_by(Order.updated_at)).all():  # type: ignore[arg-type]
        if o.accession_number:
            orders[o.accession_number] = o

    history: dict[str, list[PriorityChange]] = {}
    changes = session.exec(select(PriorityChange).order_by(col(PriorityChange.id).desc()))
    for ch in changes.all():
        shown = history.setdefault(ch.study_uid, [])
        if len(shown) < HISTORY_SHOWN:
            shown.append(ch)

    def key(st: Study) -> tuple[int, float, int, str, str, str]:
        code = st.engine_priority or st.ordered_priority
        return order_key(rules, code, st.score, st.completed_at, st.accession_number, st.study_uid)

    items = []
    for st in sorted(studies, key=key):
        order = orders.get(st.accession_number)
        since = st.completed_at
        waiting = (
            round((now - aware(since)).total_seconds() / 60.0, 1) if since is not None else None
        )
        items.append(
            {
                "accession_number": st.accession_number,
                "study_uid": st.study_uid,
                "patient_id": st.patient_id,
                "patient_class": st.patient_class,
                "modality": st.modality,
                "study_description": st.study_description,
                "procedure": order.procedure_text if order else "",
                "ordered_priority": st.ordered_priority or "",
                "engine_priority": st.engine_priority or rules.level(st.ordered_priority).code,
                "score": st.score,
                "scored_at": st.scored_at.isoformat() if st.scored_at else None,
                "state": st.state,
                "ai_status": st.ai_status,
                "routed_model": st.routed_model,
                "order_link": st.order_link,
                "instances": st.instance_count,
                "received_at": st.first_received_at.isoformat(),
                "findings": [
                    {
                        "model": f.model_name,
                        "model_version": f.model_version,
                        "status": f.status,
                        "probability": f.probability,
                        "positive": f.positive,
                        "threshold": f.threshold,
                        "series_uid": f.series_uid,  # the series the model judged
                        "key_slice": f.key_slice,
                        "key_instance": f.key_instance,
                        "key_frame": f.key_frame,
                        "key_image_url": (
                            f"/api/studies/{quote(st.study_uid, safe='')}/key-image"
                            f"?model={quote(f.model_name, safe='')}"
                            if f.key_image
                            else None
                        ),
                        "detail": f.detail,
                    }
                    for f in findings.get(st.study_uid, {}).values()
                ],
                "reasons": study_reasons(st),
                "completed_at": aware(since).isoformat() if since is not None else None,
                "waiting_minutes": waiting,
                # what the aging counts against (patient class, shorter for a listed location)
                "target_minutes": reading_target(
                    rules, st.patient_class, order.ordering_location if order else ""
                ),
                "rules_version": st.rules_version,
                "priority_changes": [
                    {
                        "at": aware(ch.at).isoformat(),
                        "from": ch.from_priority,
                        "to": ch.to_priority,
                        "score": ch.to_score,
                        "cause": ch.cause,
                        "cause_ref": ch.cause_ref,
                        "rules_version": ch.rules_version,
                        "announced": ch.announced,
                    }
                    for ch in history.get(st.study_uid, [])
                ],
            }
        )
    return items
