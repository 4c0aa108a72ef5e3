"""What the pages show, as plain dictionaries: the worklist rows (from the same data as
``GET /api/worklist``) and everything about one study. No HTML here (the templates do that)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from triage.api.worklist import worklist
from triage.feedback import ai_result_of, study_feedback
from triage.scoring import UrgencyRules
from triage.store.models import (
    Finding,
    Instance,
    Order,
    OutboundMessage,
    PriorityChange,
    Study,
    StudyState,
)
from triage.store.repo import study_reasons

# Study states in words (the worklist's "state" filter shows these)
STATE_WORDS = {
    StudyState.RECEIVING: "receiving images",
    StudyState.COMPLETE: "being processed",
    StudyState.AI_PENDING: "AI pending",
    StudyState.SCORED: "scored",
    StudyState.NOT_ROUTED: "no AI model for this study",
    StudyState.FAILED: "processing failed",
}
MODEL_WORDS = {"ich": "Intracranial hemorrhage", "pe": "Pulmonary embolism"}


def _aware(when: datetime | None) -> datetime | None:
    if when is None:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _iso(when: datetime | None) -> str:
    aware = _aware(when)
    return aware.strftime("%Y-%m-%d %H:%M:%S UTC") if aware is not None else ""


def priority_view(rules: UrgencyRules, code: str) -> dict[str, str]:
    level = rules.level(code)
    return {"code": level.code, "label": level.label}


def class_label(rules: UrgencyRules, code: str) -> str:
    known = rules.patient_class.get((code or "").strip().upper())
    if known is not None:
        return f"{known.label} ({known.code})"
    return rules.unknown_class.label if not code else f"{rules.unknown_class.label} ({code})"


def ai_view(item_findings: list[dict[str, Any]], state: str, ai_status: str) -> dict[str, Any]:
    """The worklist's AI cell: one flag (positive / negative / not assessable / pending /
    none) and the probability of the most telling finding."""
    if state == StudyState.AI_PENDING or ai_status == "pending":
        return {"flag": "pending", "text": "AI pending", "probability": None, "model": ""}
    positives = [f for f in item_findings if f["status"] == "done" and f["positive"]]
    chosen = max(positives, key=lambda f: f["probability"] or 0.0) if positives else None
    if chosen is None and item_findings:
        chosen = item_findings[-1]
    if chosen is None:
        return {"flag": "none", "text": "no AI result", "probability": None, "model": ""}
    model = chosen["model"]
    word = MODEL_WORDS.get(model, model)
    if chosen["status"] == "not_assessable":
        flag, text = "not_assessable", f"not assessable ({model})"
    elif chosen["status"] != "done":
        flag, text = "error", f"AI error ({model})"
    elif chosen["positive"]:
        flag, text = "positive", f"{word} suspected"
    else:
        flag, text = "negative", f"no {word.lower()} found"
    return {"flag": flag, "text": text, "probability": chosen["probability"], "model": model}


_POINTS = re.compile(r"^(.*?: \+(\d+(?:\.\d+)?))")


def raise_reasons(reasons: list[str]) -> list[str]:
    """What raised a study, for its worklist row: every line of its score after the ordered
    priority's that added points (class, location, AI finding, rule, waiting), cut after
    its points ("ICH 0.97 >= 0.28: +58"). The study page shows the reasons whole."""
    out = []
    for line in reasons[1:]:
        m = _POINTS.match(line)
        if m is not None and float(m.group(2)) > 0:
            out.append(m.group(1))
    return out


def worklist_rows(
    session: Session, rules: UrgencyRules, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The worklist page's rows: :func:`triage.api.worklist.worklist` (most urgent first)
    with what the page shows besides: the location, labels and the AI cell."""
    items = worklist(session, rules, now)
    order_ids = {
        st.study_uid: st.order_id
        for st in session.exec(select(Study).where(col(Study.order_id).is_not(None))).all()
    }
    locations: dict[int, str] = {}
    wanted = {i for i in order_ids.values() if i is not None}
    if wanted:
        for order in session.exec(select(Order).where(col(Order.id).in_(wanted))).all():
            if order.id is not None:
                locations[order.id] = order.ordering_location
    rows = []
    for item in items:
        order_id = order_ids.get(item["study_uid"])
        location = locations.get(order_id, "") if order_id is not None else ""
        engine = priority_view(rules, item["engine_priority"])
        ordered = (
            priority_view(rules, item["ordered_priority"]) if item["ordered_priority"] else None
        )
        raised = (
            ordered is not None
            and rules.level(engine["code"]).rank < rules.level(ordered["code"]).rank
        )
        target = item["target_minutes"]
        waiting = item.get("waiting_minutes")
        rows.append(
            {
                **item,
                "priority": engine,
                "ordered": ordered,
                "raised": raised,
                "class_label": class_label(rules, item["patient_class"]),
                "location": location.replace("^", " ").strip(),
                "procedure_shown": item["procedure"] or item["study_description"] or "",
                "state_label": STATE_WORDS.get(item["state"], item["state"]),
                "ai": ai_view(item["findings"], item["state"], item["ai_status"]),
                "why": raise_reasons(item["reasons"]) if raised else [],
                "late": target is not None and waiting is not None and waiting > target,
            }
        )
    return rows


def _series_shown(session: Session, study_uid: str, series_uid: str) -> str:
    """The series a model judged, as the reader finds it in the viewer: 'series 3 "AXIAL 5MM
    BRAIN", 30 images' ("" when the finding names none)."""
    if not series_uid:
        return ""
    rows = session.exec(
        select(Instance.series_number, Instance.series_description).where(
            Instance.study_uid == study_uid, Instance.series_uid == series_uid
        )
    ).all()
    if not rows:
        return ""
    number, description = rows[0]
    name = f"series {number}" if number is not None else "a series"
    desc = f" “{description.strip()}”" if description and description.strip() else ""
    return f"{name}{desc}, {len(rows)} images"


def study_detail(
    session: Session, rules: UrgencyRules, study_uid: str, now: datetime | None = None
) -> dict[str, Any] | None:
    """Everything the study page shows, or None when there is no such study."""
    study = session.exec(select(Study).where(Study.study_uid == study_uid)).first()
    if study is None:
        return None
    row = next((r for r in worklist_rows(session, rules, now) if r["study_uid"] == study_uid), None)
    order = session.get(Order, study.order_id) if study.order_id is not None else None
    findings = session.exec(
        select(Finding)
        .where(Finding.study_uid == study_uid)
        .order_by(col(Finding.created_at).desc(), col(Finding.id).desc())
    ).all()
    newest: dict[str, Finding] = {}
    for f in findings:
        newest.setdefault(f.model_name, f)
    messages = session.exec(
        select(OutboundMessage)
        .where(OutboundMessage.study_uid == study_uid)
        .order_by(col(OutboundMessage.id))
    ).all()
    changes = session.exec(
        select(PriorityChange)
        .where(PriorityChange.study_uid == study_uid)
        .order_by(col(PriorityChange.id).desc())
    ).all()
    return {
        "study": study,
        "row": row,
        "reasons": study_reasons(study),
        "order": order,
        "order_location": (order.ordering_location.replace("^", " ") if order else ""),
        "findings": [
            {
                "finding": f,
                "series": _series_shown(session, study_uid, f.series_uid),
                "result": ai_result_of(f),
                "word": MODEL_WORDS.get(f.model_name, f.model_name),
                "created": _iso(f.created_at),
            }
            for f in newest.values()
        ],
        "older_findings": len(findings) - len(newest),
        "messages": [
            {
                "m": m,
                "created": _iso(m.created_at),
                "sent": _iso(m.sent_at),
                "last_attempt": _iso(m.last_attempt_at),
            }
            for m in messages
        ],
        "changes": [
            {
                "c": c,
                "at": _iso(c.at),
                "from": priority_view(rules, c.from_priority) if c.from_priority else None,
                "to": priority_view(rules, c.to_priority),
                "reasons": _json_list(c.reasons),
            }
            for c in changes
        ],
        "feedback": [{"f": fb, "at": _iso(fb.at)} for fb in study_feedback(session, study_uid)],
        "received": _iso(study.first_received_at),
        "completed": _iso(study.completed_at),
        "scored": _iso(study.scored_at),
    }


def _json_list(text: str) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []
