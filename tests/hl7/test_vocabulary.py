"""What the engine recognises in orders: modalities (and the priority vocabulary they use)."""

from __future__ import annotations

import pytest

from triage.hl7.vocabulary import infer_modality
from triage.priority import normalise_priority


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("S", "S"),
        ("stat", "S"),
        ("ASAP", "A"),
        ("R", "R"),
        ("Routine", "R"),
        ("T", "T"),
        ("D", ""),
        ("", ""),
    ],
)
def test_normalise_priority(value: str, code: str) -> None:
    assert normalise_priority(value) == code


def test_infer_modality() -> None:
    assert infer_modality("CT pulmonary angiogram") == "CT"
    assert infer_modality("MRI brain") == "MR"
    assert infer_modality("X-RAY ANKLE 3+ VW") == "DX"
    assert infer_modality("KNEE-RIGHT AP LAT") == ""
