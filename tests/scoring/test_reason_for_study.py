"""The reason for study (OBR-31) is read from an order, stored on it, and a rule of
rules/urgency.yaml can test it (``order.reason_for_study``)."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import select
from support.paths import REPO_ROOT

from triage.config import Settings
from triage.hl7.mapping import load_mapping
from triage.hl7.orders import parse_order
from triage.ingest.hl7_store import MessageStore
from triage.pipeline import _rule_fields
from triage.scoring import load_urgency_rules, score_study
from triage.store import Database, Study
from triage.store.models import Order
from triage.synth.orders import order_message

SHIPPED = REPO_ROOT / "rules" / "urgency.yaml"
RULE = """
  - name: anticoagulated
    points: 10
    when:
      order.reason_for_study: '\\banticoagula'
"""


def with_reason(message: str, obr31: str) -> str:
    """The message with OBR-31 set (OBR-28..30 empty)."""
    lines = message.rstrip("\r").split("\r")
    lines = [line + "||||" + obr31 if line.startswith("OBR|") else line for line in lines]
    return "\r".join(lines) + "\r"


def rules_with_anticoagulated(tmp_path: Path):
    text = SHIPPED.read_text().replace("\nrules:\n", "\nrules:\n" + RULE.lstrip("\n"), 1)
    assert "anticoagulated" in text
    path = tmp_path / "urgency.yaml"
    path.write_text(text)
    return load_urgency_rules(path)


def test_obr31_text_else_code_is_the_reason_for_study():
    base = order_message(accession="A1", patient_id="P1")
    assert parse_order(with_reason(base, "^Fall, anticoagulated^L")).reason_for_study == (
        "Fall, anticoagulated"
    )
    coded = parse_order(with_reason(base, "ANTICOAG"))
    assert (coded.reason_for_study, coded.sources["reason_for_study"]) == ("ANTICOAG", "OBR-31.1")
    assert parse_order(base).reason_for_study == ""


def test_a_rule_on_anticoagulated_raises_the_stored_order(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'triage.db'}")
    db.create_all()
    ms = MessageStore(
        Settings(data_dir=tmp_path), db, load_mapping(REPO_ROOT / "rules" / "hl7-mapping.yaml")
    )
    try:
        reason = "^Head injury, anticoagulated (apixaban)^L"
        messages = [
            with_reason(order_message(accession="ACC-ANTI", patient_id="P1"), reason),
            with_reason(order_message(accession="ACC-FALL", patient_id="P2"), "^Fall^L"),
        ]
        outcomes = ms.process_batch([(m.encode(), "ris") for m in messages])
        assert [o.ack_code for o in outcomes] == ["AA", "AA"]
    finally:
        ms.close()
    rules = rules_with_anticoagulated(tmp_path)
    with db.session() as s:
        orders = {o.accession_number: o for o in s.exec(select(Order)).all()}
    db.dispose()
    assert orders["ACC-ANTI"].reason_for_study == "Head injury, anticoagulated (apixaban)"
    scored = {}
    for acc, order in orders.items():
        study = Study(study_uid="1." + acc, accession_number=acc, modality="CT")
        result = score_study(
            rules,
            ordered_priority=order.ordered_priority,
            patient_class=order.patient_class,
            fields=_rule_fields(rules.fields_used, study, order),
        )
        scored[acc] = result
    assert "anticoagulated: +10" in scored["ACC-ANTI"].reasons
    assert not any("anticoagulated" in r for r in scored["ACC-FALL"].reasons)
    assert scored["ACC-ANTI"].score == scored["ACC-FALL"].score + 10
