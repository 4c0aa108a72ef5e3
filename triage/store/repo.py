"""Store operations used by the pipeline: order-study links, findings, queries. Plain functions
over a Session (instances are indexed by :mod:`triage.store.instances`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, or_, select

from triage.store.models import Finding, Instance, Order, Study

CANCELLED_CONTROLS = ("CA", "CR", "OC", "DC", "DR", "OD")  # ORC-1 of a cancelled order
CANCELLED_STATUSES = ("CA", "DC")  # ORC-5: cancelled, discontinued
# An order that is neither cancelled nor discontinued (SQL condition, for Order queries).
OPEN_ORDER = (
    col(Order.order_control).not_in(CANCELLED_CONTROLS),
    col(Order.order_status).not_in(CANCELLED_STATUSES),
)


def order_is_open(order: Order) -> bool:
    return (
        order.order_control.upper() not in CANCELLED_CONTROLS
        and order.order_status.upper() not in CANCELLED_STATUSES
    )


def link_order(session: Session, study: Study, window_hours: float | None) -> Order | None:
    """Find the study's order and copy what scoring needs onto the study (not committed).

    The study takes the ordered priority and patient class of the order it is linked to *now*,
    and the order's accession number when its images carry none. A study whose order is gone
    (cancelled, moved to another study) or whose link changed keeps nothing of the old order:
    with no order, its ordered priority and patient class are empty (scored as unknown).
    ``window_hours``: the ``order_match_window_hours`` setting (None: no match by patient).
    """
    order, how = find_order_for_study(session, study, window_hours)
    previous = session.get(Order, study.order_id) if study.order_id is not None else None
    told = previous.accession_number if previous is not None else study.accession_number
    if order is None:
        if study.accession_from_order:
            study.accession_number = ""
            study.accession_from_order = False
            _forget_what_the_ris_was_told(study)
        study.order_link = "none"
        study.order_id = None
        study.ordered_priority = ""
        study.patient_class = ""
        return None
    if order.accession_number != told:
        _forget_what_the_ris_was_told(study)  # that was about another order
    study.order_link = how
    study.order_id = order.id
    study.ordered_priority = order.ordered_priority
    study.patient_class = order.patient_class
    if not study.accession_number or study.accession_from_order:
        study.accession_number = order.accession_number
        study.accession_from_order = bool(order.accession_number)
    return order


def _forget_what_the_ris_was_told(study: Study) -> None:
    """The RIS was told a priority and result for an order that is no longer the study's: the
    order it is linked to next is told afresh (never lower than that order's priority)."""
    study.sent_priority = ""
    study.sent_finding = ""


def _newest(session: Session, *where: Any) -> Order | None:
    return session.exec(
        select(Order).where(*where).order_by(col(Order.updated_at).desc(), col(Order.id).desc())
    ).first()


def _taken(session: Session, study: Study, order: Order) -> bool:
    """Whether another study holds ``order``: linked to it, or named by its Study UID."""
    holders = [Study.order_id == order.id]
    if order.study_uid:
        holders.append(Study.study_uid == order.study_uid)
    if order.accession_number:
        holders.append(Study.accession_number == order.accession_number)
    found = session.exec(
        select(Study.id).where(Study.study_uid != study.study_uid, or_(*holders))
    ).first()
    return found is not None


def _same_modality(study: Study, order: Order) -> bool:
    return not (order.modality and study.modality) or (
        order.modality.upper() == study.modality.upper()
    )


def find_order_for_study(
    session: Session, study: Study, window_hours: float | None
) -> tuple[Order | None, str]:
    """The order of a study and how it was found. Cancelled orders are never found.

    1. ``study_uid``: the order carries the study's Study Instance UID (ZDS-1 / IPC-3);
    2. ``accession``: the same accession number as the study's images (not one copied from an
       order), unless the order names another study that is here by its Study UID;
    3. ``patient`` (only with ``window_hours``, the ``order_match_window_hours`` setting): the
       order already linked this way while it still fits (open, same patient, not taken by
       another study), else the only open order of the same patient and modality placed
       within ``window_hours`` of the study, not taken by another study (an ambiguous match
       links nothing: a wrong link is worse than none).
    """
    if study.study_uid:
        order = _newest(session, Order.study_uid == study.study_uid, *OPEN_ORDER)
        if order is not None:
            return order, "study_uid"
    own_accession = "" if study.accession_from_order else study.accession_number
    if own_accession:
        for order in session.exec(
            select(Order)
            .where(Order.accession_number == own_accession, *OPEN_ORDER)
            .order_by(col(Order.updated_at).desc(), col(Order.id).desc())
        ).all():
            elsewhere = (
                order.study_uid
                and session.exec(select(Study.id).where(Study.study_uid == order.study_uid)).first()
            )
            if not elsewhere:
                return order, "accession"
        return None, "none"  # an accession that matches nothing is not guessed around
    if window_hours is None or not study.patient_id:
        return None, "none"
    if study.order_link == "patient" and study.order_id is not None:
        current = session.get(Order, study.order_id)
        if (
            current is not None
            and order_is_open(current)
            and current.patient_id == study.patient_id
            and _same_modality(study, current)
            and not _taken(session, study, current)
        ):
            return current, "patient"
    window = timedelta(hours=window_hours)
    candidates = session.exec(
        select(Order).where(
            Order.patient_id == study.patient_id,
            *OPEN_ORDER,
            col(Order.updated_at) >= study.first_received_at - window,
            col(Order.updated_at) <= study.first_received_at + window,
        )
    ).all()
    free: dict[str, Order] = {}
    for o in candidates:
        if _same_modality(study, o) and not _taken(session, study, o):
            free[o.accession_number or o.study_uid or str(o.id)] = o
    if len(free) == 1:
        return next(iter(free.values())), "patient"
    return None, "none"


def studies_for_order(session: Session, order: Order, window_hours: float) -> list[Study]:
    """Studies whose link an order may make, change or end: those linked to it now, then by
    Study UID, else accession number, else unlinked studies of the same patient that
    :func:`find_order_for_study` would link to it."""
    found: dict[str, Study] = {}

    def add(rows: Sequence[Study]) -> None:
        for st in rows:
            found.setdefault(st.study_uid, st)

    if order.id is not None:
        add(session.exec(select(Study).where(Study.order_id == order.id)).all())
    by_identifier: Sequence[Study] = []
    if order.study_uid:
        by_identifier = session.exec(select(Study).where(Study.study_uid == order.study_uid)).all()
    if not by_identifier and order.accession_number:
        by_identifier = session.exec(
            select(Study).where(Study.accession_number == order.accession_number)
        ).all()
    add(by_identifier)
    if by_identifier or not order.patient_id:
        return list(found.values())
    unlinked = session.exec(
        select(Study).where(
            Study.patient_id == order.patient_id,
            Study.accession_number == "",
            Study.order_link == "none",
        )
    ).all()
    add([st for st in unlinked if find_order_for_study(session, st, window_hours)[0] is order])
    return list(found.values())


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
