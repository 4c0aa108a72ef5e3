"""The worklist view: open studies, most urgent first, each with why it is where it is."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from sqlmodel import Session, select

from triage.scoring import UrgencyRules
from triage.store.models import Finding, Order, Study
from triage.store.repo import study_reasons

SYNTHETIC_NOTICE = (
    "AI findings come from models trained on synthetic phantoms only; "
    "they are a triage aid, not a diagnosis, and not for clinical use."
)


def worklist(session: Session, rules: UrgencyRules) -> list[dict[str, Any]]:
    """Every study, sorted by engine priority (S first), then score, then arrival."""
    studies = session.exec(select(Study)).all()
    findings: dict[str, dict[str, Finding]] = {}
    for f in session.exec(select(Finding).order_by(Finding.created_at, Finding.id)).all():  # type: ignore[arg-type]
        findings.setdefault(f.study_uid, {})[f.model_name] = f  # the newest wins
    orders: dict[str, Order] = {}
    for o in session.exec(select(Order).order_by(Order.updated_at)).all():  # type: ignore[arg-type]
        if o.accession_number:
            orders[o.accession_number] = o

    def key(st: Study) -> tuple[int, float, str]:
        code = st.engine_priority or st.ordered_priority
        return (rules.level(code).rank, -st.score, st.first_received_at.isoformat())

    items = []
    for st in sorted(studies, key=key):
        order = orders.get(st.accession_number)
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
                        "key_slice": f.key_slice,
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
            }
        )
    return items
