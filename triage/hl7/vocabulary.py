"""What the engine recognises in RIS messages: the order message types, their trigger events
and versions, the ADT events that update a patient, and DICOM modality codes (with the
procedure words that hint at one). Priorities have their own vocabulary: :mod:`triage.priority`.
"""

from __future__ import annotations

import re

ORDER_VERSIONS: dict[str, frozenset[str]] = {
    "ORM": frozenset({"2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6"}),
    "OMI": frozenset({"2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"}),
}
ORDER_TRIGGERS: dict[str, str] = {"ORM": "O01", "OMI": "O23"}
PATIENT_UPDATE_TRIGGERS = frozenset({"A08", "A31"})

MODALITIES = frozenset(
    {"CT", "MR", "US", "NM", "PT", "CR", "DX", "MG", "XA", "RF", "OT", "IO", "PX", "RG", "OP"}
)
_MODALITY_ALIASES = {"MRI": "MR", "PET": "PT", "XR": "DX", "RAD": "", "CUS": "US"}
_MODALITY_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(CT|CTA|CTPA|CAT|COMPUTED TOMOGRAPHY)\b"), "CT"),
    (re.compile(r"\b(MR|MRI|MRA|MAGNETIC RESONANCE)\b"), "MR"),
    (re.compile(r"\b(PET|PET-CT)\b"), "PT"),
    (re.compile(r"\b(US|ULTRASOUND|SONOGRAPHY|DOPPLER|ECHO)\b"), "US"),
    (re.compile(r"\b(MAMMO|MAMMOGRAPHY|MAMMOGRAM)\b"), "MG"),
    (re.compile(r"\b(NM|SCINTIGRAPHY|BONE SCAN)\b"), "NM"),
    (re.compile(r"\b(FLUORO|FLUOROSCOPY)\b"), "RF"),
    (re.compile(r"\b(ANGIO|ANGIOGRAPHY)\b"), "XA"),
    (re.compile(r"\b(X-RAY|XRAY|XR|RADIOGRAPH|RADIOGRAPHY)\b"), "DX"),
)


def normalise_modality(value: str) -> str:
    """A DICOM modality code for an OBR-24 / IPC-5 value, or "" if it is not one."""
    v = value.strip().upper()
    if v in MODALITIES:
        return v
    return _MODALITY_ALIASES.get(v, "")


def infer_modality(*texts: str) -> str:
    """Guess the modality from procedure codes/texts ("CT HEAD W/O", "X-RAY ANKLE")."""
    for text in texts:
        t = text.upper()
        for pattern, modality in _MODALITY_HINTS:
            if pattern.search(t):
                return modality
    return ""
