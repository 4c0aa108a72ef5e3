"""ER7 codec: what cannot be read is AR, escape sequences both ways."""

from __future__ import annotations

import pytest
from hl7_samples import own

from triage.errors import HL7ParseError
from triage.hl7.codec import escape, unescape
from triage.hl7.header import peek_header
from triage.hl7.orders import parse_order


def test_garbage_is_a_parse_error() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_order(own("garbage.hl7"))
    assert info.value.ack_code == "AR"
    assert peek_header(own("garbage.hl7")) is None


def test_bad_encoding_characters_are_a_parse_error() -> None:
    raw = own("orm_nw_v251.hl7").replace("MSH|^~\\&|", "MSH|^^\\&|", 1)
    with pytest.raises(HL7ParseError) as info:
        parse_order(raw)
    assert info.value.hl7_code == 102 and info.value.location == "MSH^1^2"
    assert peek_header(raw) is not None and peek_header(raw).control_id == "RIS00000101"  # type: ignore[union-attr]


def test_escape_roundtrip() -> None:
    text = "a|b^c&d~e\\f\nnext"
    enc = escape(text)
    assert enc == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\.br\\next"
    assert unescape(enc) == text
    assert unescape("\\X41\\BC\\H\\x\\N\\") == "ABCx"
