"""Final reports from the RIS (ORU^R01) as truth for the AI results: the mapping's
``final_report`` section, the parse, and the store (feedback with source ``report``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import delete, select
from support.paths import REPO_ROOT

from triage.config import Settings
from triage.errors import RulesError
from triage.hl7.mapping import load_mapping
from triage.ingest.hl7_store import MessageStore
from triage.store import Database, Finding, Study
from triage.store.models import Feedback

MAPPING = REPO_ROOT / "rules" / "hl7-mapping.yaml"


def oru(control: str, accession: str, value: str, *, status: str = "F", code: str = "ICH") -> bytes:
    segments = [
        f"MSH|^~\\&|RIS|GENHOSP|TRIAGE|TRIAGE|20260101120000||ORU^R01|{control}|P|2.5.1",
        "PID|1||P1^^^H||DOE^JANE",
        f"OBR|1|PL1|{accession}|CTHEAD^CT head|||20260101110000|||||||||||{accession}"
        f"||||20260101115900|||{status}",
        f"OBX|1|CE|{code}^Intracranial hemorrhage^L||{value}^coded||||||{status}",
        "OBX|2|TX|REPORT^Report text^L||No acute intracranial abnormality.||||||F",
    ]
    return "\r".join(segments).encode()


@pytest.fixture
def store(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'triage.db'}")
    db.create_all()
    with db.session() as s:
        s.add(Study(study_uid="1.2.3", accession_number="ACC7", patient_id="P1"))
        s.add(
            Finding(
                study_uid="1.2.3",
                model_name="ich",
                status="done",
                probability=0.9,
                positive=True,
                threshold=0.5,
            )
        )
    ms = MessageStore(Settings(data_dir=tmp_path), db, load_mapping(MAPPING))
    yield ms, db
    ms.close()
    db.dispose()


def feedback(db: Database) -> list[Feedback]:
    with db.session() as s:
        return list(s.exec(select(Feedback)).all())


def test_the_shipped_mapping_reads_final_reports():
    fr = load_mapping(MAPPING).final_report
    assert fr.enabled and fr.result_status == {"F", "C"}
    assert {r.model for r in fr.results} == {"ich", "pe"}


def test_a_final_report_is_stored_as_feedback_once(store):
    ms, db = store
    [out] = ms.process_batch([(oru("R1", "ACC7", "NEG"), "ris")])
    assert out.ack_code == "AA"
    [fb] = feedback(db)
    assert (fb.study_uid, fb.model_name, fb.source, fb.truth) == (
        "1.2.3",
        "ich",
        "report",
        "negative",
    )
    assert (fb.ai_result, fb.verdict, fb.who) == ("positive", "disagreed", "RIS")
    assert fb.message_id == out.message_id and "ICH=NEG" in fb.note
    # a resend is answered again and changes nothing; a replay adds nothing either
    ms.process_batch([(oru("R1", "ACC7", "NEG"), "ris")])
    assert ms.replay(ids=[out.message_id])[0].failed is False
    assert len(feedback(db)) == 1


def test_replay_through_sqlalchemy_core_records_it_again(store):
    ms, db = store
    [out] = ms.process_batch([(oru("R2", "ACC7", "POS"), "ris")])
    with db.session() as s:
        s.exec(delete(Feedback))  # type: ignore[call-overload]
    ms.replay(ids=[out.message_id])  # the Core path (any database)
    [fb] = feedback(db)
    assert (fb.truth, fb.verdict) == ("positive", "agreed")


def test_reports_that_do_not_count_are_acknowledged_and_not_applied(store):
    ms, db = store
    prelim, unknown, other = ms.process_batch(
        [
            (oru("R3", "ACC7", "POS", status="P"), "ris"),  # preliminary
            (oru("R4", "NOSUCH", "POS"), "ris"),  # no such study here
            (oru("R5", "ACC7", "MAYBE"), "ris"),  # a value the mapping does not know
        ]
    )
    assert [o.ack_code for o in (prelim, unknown, other)] == ["AA", "AA", "AA"]
    assert feedback(db) == []
    assert any("not a final result status" in n for n in prelim.notes)
    assert any("no such study here" in n for n in unknown.notes)
    assert any("neither positive nor negative" in n for n in other.notes)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "final_report:\n  results:\n"
            "    - {model: ich, code: [X], positive: [A], negative: [A]}\n",
            "both positive and negative",
        ),
        (
            "final_report:\n  results:\n    - {model: ich, code: [X], positive: [A]}\n",
            "missing required key 'negative'",
        ),
        ("final_report:\n  colour: red\n  results: []\n", "unknown key 'colour'"),
    ],
)
def test_a_bad_final_report_section_is_refused_with_its_line(tmp_path, section, message):
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\n" + section)
    with pytest.raises(RulesError, match=message) as err:
        load_mapping(path)
    assert "m.yaml" in str(err.value) and ":" in str(err.value)
