"""Synthetic HL7 orders (ORM^O01 NW) to go with synthetic studies, as a RIS would send them."""

from __future__ import annotations

from datetime import UTC, datetime

PROCEDURES = {
    "ich": ("CTHEADWO", "CT HEAD WO CONTRAST", "CT"),
    "pe": ("CTAPE", "CTA CHEST PE PROTOCOL", "CT"),
}


def order_message(
    *,
    accession: str,
    patient_id: str,
    patient_name: str = "PHANTOM^SYNTHETIC",
    priority: str = "R",
    patient_class: str = "E",
    procedure: str = "ich",
    study_uid: str = "",
    control_id: str = "",
    sending_application: str = "RIS",
    sending_facility: str = "HOSP",
    when: datetime | None = None,
) -> str:
    """An ORM^O01 v2.5.1 new order (ORC-1 NW), segments separated by CR.

    The priority is written where RIS products commonly put it: ORC-7.6 and OBR-27.6.
    ``study_uid`` goes in a ZDS segment, as IHE scheduled workflow does.
    """
    ts = (when or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    code, text, modality = PROCEDURES.get(procedure, (procedure, procedure, "CT"))
    control_id = control_id or f"ORM{accession}"
    tq = f"^^^{ts}^^{priority}"
    segments = [
        f"MSH|^~\\&|{sending_application}|{sending_facility}|TRIAGE|TRIAGE|{ts}||ORM^O01^ORM_O01"
        f"|{control_id}|P|2.5.1",
        f"PID|1||{patient_id}^^^HOSP^MR||{patient_name}||19700101|O",
        f"PV1|1|{patient_class}|ED^^^HOSP",
        f"ORC|NW|P{accession}|F{accession}||SC||{tq}||{ts}",
        f"OBR|1|P{accession}|F{accession}|{code}^{text}^L|||{ts}|||||||||||{accession}|||||"
        f"|{modality}|||{tq}",
    ]
    if study_uid:
        segments.append(f"ZDS|{study_uid}^^Application^DICOM")
    return "\r".join(segments) + "\r"
