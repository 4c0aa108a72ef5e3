"""The outbound section of rules/hl7-mapping.yaml: checked on load, errors name file and line."""

from __future__ import annotations

import pytest
from support.paths import REPO_ROOT

from triage.errors import RulesError
from triage.hl7.mapping import load_mapping


def test_shipped_mapping_sends_orm() -> None:
    assert load_mapping(REPO_ROOT / "rules" / "hl7-mapping.yaml").order_change == "ORM^O01"


def test_omi_can_be_chosen(tmp_path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\noutbound:\n  order_change: OMI^O23\n")
    assert load_mapping(path).order_change == "OMI^O23"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("version: 1\noutbound:\n  order_change: OMG^O19\n", 3, "ORM^O01 or OMI^O23"),
        ("version: 1\noutbound:\n  order_change: ORM^O01\n  resend: true\n", 4, "unknown key"),
        ("version: 1\noutbound: OMI^O23\n", 2, "must be a mapping"),
    ],
)
def test_bad_outbound_section_names_file_and_line(tmp_path, text, line, words) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(RulesError) as info:
        load_mapping(path)
    assert str(info.value).startswith(f"{path}:{line}: ") and words in str(info.value)
