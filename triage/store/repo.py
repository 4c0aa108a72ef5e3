"""Store operations used by the listeners and the pipeline. Plain functions over a Session."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, select

from triage.store.models import Finding, Instance, Order, Study, StudyState, utcnow

# Study-level attributes copied from an instance header when a study is first seen.
STUDY_FIELDS = (
    "accession_number",
    "patient_id",
    "patient_name",
    "body_part",
    "study_description",
    "contrast_agent",
    "study_datetime",
)


def record_instance(session: Session, inst: Instance, study_attrs: dict[str, str]) -> bool:
    """Index a stored instance and update its study. Returns False for a duplicate SOP UID.

    ``study_attrs`` holds the study-level tags read from the instance (keys in STUDY_FIELDS).
    A study that had completed goes back to RECEIVING, so it completes (and is re-scored) again.
    """
    existing = session.exec(
        select(Instance).where(Instance.sop_instance_uid == inst.sop_instance_uid)
    ).first()
    if existing is not None:
        return False
    session.add(inst)
    study = session.exec(select(Study).where(Study.study_uid == inst.study_uid)).first()
    now = inst.received_at or utcnow()
    if study is None:
        study = Study(study_uid=inst.study_uid, first_received_at=now, last_received_at=now)
        for key in STUDY_FIELDS:
            if study_attrs.get(key):
                setattr(study, key, study_attrs[key])
        study.modality = inst.modality
        study.calling_ae = inst.calling_ae
        link_order(session, study)
    else:
        for key in STUDY_FIELDS:
            if not getattr(study, key) and study_attrs.get(key):
                setattr(study, key, study_attrs[key])
    mods = set(filter(None, study.modalities.split("\\"))) | {inst.modality}
    study.modalities = "\\".join(sorted(filter(None, mods)))
    if not study.modality or study.modality in ("SR", "PR", "KO", "OT"):
        study.modality = inst.modality
    study.instance_count += 1
    study.last_received_at = max(study.last_received_at, now)
    if study.state != StudyState.RECEIVING:
        study.state = StudyState.RECEIVING
    session.add(study)
    return True


DEFAULT_MATCH_WINDOW_HOURS = 24.0
CANCELLED_CONTROLS = ("CA", "CR", "OC", "DC", "DR", "OD")


def link_order(
    session: Session, study: Study, window_hours: float = DEFAULT_MATCH_WINDOW_HOURS
) -> Order | None:
    """Find the study's order and copy what scoring needs onto the study (not committed)."""
    order, how = find_order_for_study(session, study, window_hours)
    if order is None:
        study.order_link = "none"
        return None
    if not (how == "accession" and study.order_link == "patient"):
        study.order_link = how  # (an accession copied from a patient match stays "patient")
    study.ordered_priority = order.ordered_priority
    study.patient_class = order.patient_class
    if not study.accession_number:
        study.accession_number = order.accession_number
    return order


def _newest(session: Session, *where: Any) -> Order | None:
    return session.exec(
        select(Order).where(*where).order_by(col(Order.updated_at).desc(), col(Order.id).desc())
    ).first()


def find_order_for_study(
    session: Session, study: Study, window_hours: float = DEFAULT_MATCH_WINDOW_HOURS
) -> tuple[Order | None, str]:
    """The order of a study and how it was found.

    1. ``study_uid``: the order carries the study's Study Instance UID (ZDS-1 / IPC-3);
    2. ``accession``: the same accession number;
    3. ``patient``: the only open order of the same patient and modality placed within
       ``window_hours`` of the study, not already taken by another study (an ambiguous match
       links nothing: a wrong link is worse than none).
    """
    if study.study_uid:
        order = _newest(session, Order.study_uid == study.study_uid)
        if order is not None:
            return order, "study_uid"
    if study.accession_number:
        order = _newest(session, Order.accession_number == study.accession_number)
        if order is not None:
            return order, "accession"
        return None, "none"  # an accession that matches nothing is not guessed around
    if not study.patient_id:
        return None, "none"
    window = timedelta(hours=window_hours)
    candidates = session.exec(
        select(Order).where(
            Order.patient_id == study.patient_id,
            col(Order.order_control).not_in(CANCELLED_CONTROLS),
            col(Order.updated_at) >= study.first_received_at - window,
            col(Order.updated_at) <= study.first_received_at + window,
        )
    ).all()
    free: dict[str, Order] = {}
    for o in candidates:
        if o.modality and study.modality and o.modality.upper() != study.modality.upper():
            continue
        taken = session.exec(
            select(Study.id).where(
                Study.study_uid != study.study_uid,
                (Study.accession_number == o.accession_number)
                if o.accession_number
                else (Study.study_uid == o.study_uid),
            )
        ).first()
        if taken is None:
            free[o.accession_number or o.study_uid or str(o.id)] = o
    if len(free) == 1:
        return next(iter(free.values())), "patient"
    return None, "none"


def studies_for_order(
    session: Session, order: Order, window_hours: float = DEFAULT_MATCH_WINDOW_HOURS
) -> Sequence[Study]:
    """Studies that an order belongs to: by Study UID, else accession number, else unlinked
    studies of the same patient that :func:`find_order_for_study` would link to it."""
    if order.study_uid:
        found = session.exec(select(Study).where(Study.study_uid == order.study_uid)).all()
        if found:
            return found
    if order.accession_number:
        found = session.exec(
            select(Study).where(Study.accession_number == order.accession_number)
        ).all()
        if found:
            return found
    if not order.patient_id:
        return []
    unlinked = session.exec(
        select(Study).where(
            Study.patient_id == order.patient_id,
            Study.accession_number == "",
            Study.order_link == "none",
        )
    ).all()
    return [st for st in unlinked if find_order_for_study(session, st, window_hours)[0] is order]


def study_instances(session: Session, study_uid: str) -> Sequence[Instance]:
    return session.exec(select(Instance).where(Instance.study_uid == study_uid)).all()


def latest_findings(session: Session, study_uid: str) -> list[Finding]:
    """The newest finding per model for a study."""
    rows = session.exec(
        select(Finding)
        .where(Finding.study_uid == study_uid)
        .order_by(col(Finding.created_at).desc(), col(Finding.id).desc())
    ).all()
    seen: dict[str, Finding] = {}
    for f in rows:
        seen.setdefault(f.model_name, f)
    return list(seen.values())


def study_reasons(study: Study) -> list[str]:
    try:
        value = json.loads(study.reasons or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []
