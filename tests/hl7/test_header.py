"""MSH checks: message type (200), event (201), version (203)."""

from __future__ import annotations

import pytest
from hl7_samples import own

from triage.errors import HL7Error
from triage.hl7.orders import parse_order


def test_non_order_type_is_200() -> None:
    with pytest.raises(HL7Error) as info:
        parse_order(own("adt_a01_v251.hl7"))
    assert (info.value.ack_code, info.value.hl7_code) == ("AE", 200)


def test_wrong_event_is_201() -> None:
    raw = own("orm_nw_v251.hl7").replace("ORM^O01^ORM_O01", "ORM^O02", 1)
    with pytest.raises(HL7Error) as info:
        parse_order(raw)
    assert info.value.hl7_code == 201


@pytest.mark.parametrize("version", ["2.1", "3.0", "2.7"])
def test_unsupported_version_is_203(version: str) -> None:
    raw = own("orm_nw_v251.hl7").replace("|P|2.5.1|", f"|P|{version}|", 1)
    with pytest.raises(HL7Error) as info:
        parse_order(raw)
    assert (info.value.ack_code, info.value.hl7_code, info.value.location) == (
        "AE",
        203,
        "MSH^1^12",
    )
