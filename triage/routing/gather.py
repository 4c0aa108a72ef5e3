"""Gather the routing facts of a stored study (its instances and its order)."""

from __future__ import annotations

from sqlmodel import Session, select

from triage.routing.facts import RoutingFacts, contrast_given
from triage.store.models import Instance, Order, Study


def facts_for_study(session: Session, study: Study, order: Order | None) -> RoutingFacts:
    rows = session.exec(
        select(Instance.modality, Instance.series_description).where(
            Instance.study_uid == study.study_uid
        )
    ).all()
    modalities = {m for m, _ in rows} | {study.modality}
    descriptions = [study.study_description, *(d for _, d in rows)]
    codes: list[str] = []
    if order is not None:
        descriptions.append(order.procedure_text)
        codes.append(order.procedure_code)
    return RoutingFacts.build(
        modalities=modalities,
        body_parts=[study.body_part],
        descriptions=descriptions,
        procedure_codes=codes,
        contrast=contrast_given(study.contrast_agent),
    )
