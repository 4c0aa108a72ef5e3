"""The pipeline's event handlers on a real SQLite store, the real rules and a real MLLP peer
as the RIS. The analyzer is a scripted test double: inference itself is tested against a real
Triton in tests/inference and tests/e2e."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from ris_peer import FakeRIS
from sqlmodel import select

from triage.completion import CompletionPolicy
from triage.config import load_settings
from triage.errors import NotAssessable, TritonUnavailable
from triage.outbound import RISNotifier
from triage.pipeline import Analysis, Pipeline
from triage.routing import load_routing_rules
from triage.scoring import load_urgency_rules
from triage.store import Database, Instance, Order, OutboundMessage, Study, StudyState
from triage.store.models import utcnow
from triage.store.repo import record_instance


@dataclass
class ScriptedAnalyzer:
    """Answers from a script: an Analysis, or an exception to raise."""

    answers: list[Analysis | Exception] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def analyze(self, model: str, instances: list[Instance]) -> Analysis:
        self.calls.append(model)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def positive(p: float = 0.97) -> Analysis:
    return Analysis("ich", "ich-test-1", "done", p, p >= 0.5, 0.5, 10, "1.2.3.4")


@pytest.fixture
def ris():
    r = FakeRIS()
    yield r
    r.close()


def make(tmp_path: Path, analyzer, ris: FakeRIS | None, *, stable: float = 0.05, routing=None):
    env = {"TRIAGE_DATA_DIR": str(tmp_path), "TRIAGE_STUDY_STABLE_SECONDS": str(stable)}
    if ris is not None:
        env.update(TRIAGE_RIS_HOST="127.0.0.1", TRIAGE_RIS_PORT=str(ris.port))
    settings = load_settings(environ=env, overrides={"retry_seconds": 0.2})
    db = Database(settings.resolved_database_url)
    db.create_all()
    routing = routing or load_routing_rules(REPO_ROOT / "rules" / "routing.yaml")
    pipeline = Pipeline(
        db,
        routing,
        load_urgency_rules(REPO_ROOT / "rules" / "urgency.yaml"),
        analyzer,
        RISNotifier(settings, db),
        completion=CompletionPolicy(
            stable_seconds_for=settings.stable_seconds_for,
            shortest_seconds=stable,
            expected_series_quiet_seconds=stable,
            routing=routing,
        ),
        retry_seconds=0.2,
    )
    return db, pipeline


def add_study(
    db: Database,
    uid: str,
    *,
    modality="CT",
    body="HEAD",
    desc="CT HEAD WO CONTRAST",
    accession="",
    n=10,
    first=0,
    age=5.0,
    patient="P1",
    series="0",
    ae="",
) -> None:
    with db.session() as s:
        for i in range(first, first + n):
            inst = Instance(
                sop_instance_uid=f"{uid}.{series}.{i}",
                study_uid=uid,
                series_uid=f"{uid}.{series}",
                modality=modality,
                path=f"x/{i}.dcm",
                series_description=desc,
                calling_ae=ae,
                received_at=utcnow() - timedelta(seconds=age),
            )
            record_instance(
                s,
                inst,
                {
                    "accession_number": accession,
                    "patient_id": patient,
                    "body_part": body,
                    "study_description": desc,
                },
            )


def add_order(
    db: Database,
    accession: str,
    priority: str,
    pclass: str,
    study_uid="",
    *,
    patient="P1",
    modality="",
    status="",
    control="NW",
) -> int:
    with db.session() as s:
        o = Order(
            accession_number=accession,
            ordered_priority=priority,
            patient_class=pclass,
            patient_id=patient,
            order_control=control,
            order_status=status,
            modality=modality,
            study_uid=study_uid,
            procedure_text="CT HEAD WO CONTRAST",
        )
        s.add(o)
        s.flush()
        assert o.id is not None
        return o.id


def study(db: Database, uid: str) -> Study:
    with db.session() as s:
        row = s.exec(select(Study).where(Study.study_uid == uid)).one()
        return row


def outbox(db: Database) -> list[OutboundMessage]:
    with db.session() as s:
        return list(s.exec(select(OutboundMessage).order_by(OutboundMessage.id)).all())


def test_positive_study_is_raised_and_the_ris_told_once(tmp_path, ris):
    analyzer = ScriptedAnalyzer([positive()])
    db, p = make(tmp_path, analyzer, ris)
    add_order(db, "ACC1", "R", "E")
    add_study(db, "1.1", accession="ACC1")
    p.tick()
    st = study(db, "1.1")
    assert st.state == StudyState.SCORED and st.engine_priority == "S"
    assert st.order_link == "accession" and st.patient_class == "E"
    assert [m.kind for m in outbox(db)] == ["ORM", "ORU"]
    assert all(m.status == "sent" and "MSA|AA|" in m.ack for m in outbox(db))
    assert len(ris.messages) == 2
    # Ticks and repeated order messages do not tell the RIS again.
    p.tick()
    p.on_order(add_order(db, "ACC1", "R", "E"))
    assert len(ris.messages) == 2


def test_triton_down_leaves_study_pending_at_ordered_priority_then_completes(tmp_path, ris):
    analyzer = ScriptedAnalyzer([TritonUnavailable("connection refused"), positive()])
    db, p = make(tmp_path, analyzer, ris)
    add_order(db, "ACC2", "A", "I")
    add_study(db, "2.1", accession="ACC2")
    p.tick()
    st = study(db, "2.1")
    assert st.state == StudyState.AI_PENDING and st.ai_status == "pending"
    assert st.engine_priority == "A"  # listed at its ordered priority meanwhile
    assert any("AI pending" in r for r in json.loads(st.reasons))
    assert ris.messages == []
    p.tick()  # too early: the retry is not due yet
    assert analyzer.calls == ["ich"]
    time.sleep(0.25)
    p.tick()
    st = study(db, "2.1")
    assert analyzer.calls == ["ich", "ich"]
    assert st.state == StudyState.SCORED and st.engine_priority == "S"
    assert not any("AI pending" in r for r in json.loads(st.reasons))
    assert len(ris.messages) == 2


def test_not_assessable_is_listed_at_ordered_priority_with_the_reason(tmp_path, ris):
    db, p = make(tmp_path, ScriptedAnalyzer([NotAssessable("too few slices (3)")]), ris)
    add_order(db, "ACC3", "R", "E")
    add_study(db, "3.1", accession="ACC3")
    p.tick()
    st = study(db, "3.1")
    assert st.state == StudyState.SCORED and st.engine_priority == "R"
    assert st.ai_status == "not_assessable"
    assert any("not assessable (too few slices (3))" in r for r in json.loads(st.reasons))
    assert ris.messages == []


def test_unrouted_study_is_listed_not_hidden(tmp_path, ris):
    analyzer = ScriptedAnalyzer([])
    db, p = make(tmp_path, analyzer, ris)
    add_order(db, "ACC4", "S", "O")
    add_study(db, "4.1", modality="MR", body="WRIST", desc="MR WRIST", accession="ACC4")
    p.tick()
    st = study(db, "4.1")
    assert st.state == StudyState.NOT_ROUTED and st.engine_priority == "S"
    assert analyzer.calls == [] and ris.messages == []


def test_no_ris_configured_stores_messages_as_skipped(tmp_path):
    db, p = make(tmp_path, ScriptedAnalyzer([positive()]), None)
    add_order(db, "ACC5", "R", "E")
    add_study(db, "5.1", accession="ACC5")
    p.tick()
    assert study(db, "5.1").engine_priority == "S"
    assert [(m.kind, m.status) for m in outbox(db)] == [("ORM", "skipped"), ("ORU", "skipped")]


def test_ris_down_then_back_gets_the_messages_in_order(tmp_path, ris):
    db, p = make(tmp_path, ScriptedAnalyzer([positive()]), ris)
    ris.ack_code = None  # accepts the connection, never answers: unavailable
    add_order(db, "ACC6", "R", "E")
    add_study(db, "6.1", accession="ACC6")
    p.notifier.settings = p.notifier.settings.model_copy(update={"ris_timeout_seconds": 0.5})
    p.tick()
    assert [m.status for m in outbox(db)] == ["pending", "pending"]
    assert outbox(db)[0].attempts == 1 and outbox(db)[1].attempts == 0  # nothing overtakes
    ris.ack_code = "AA"
    ris.messages.clear()
    time.sleep(0.25)
    p.tick()
    assert [m.status for m in outbox(db)] == ["sent", "sent"]
    kinds = [m.split("\r")[0].split("|")[8].split("^")[0] for m in ris.messages]
    assert kinds == ["ORM", "ORU"]


def test_ris_rejection_is_kept_not_resent(tmp_path, ris):
    db, p = make(tmp_path, ScriptedAnalyzer([positive()]), ris)
    ris.ack_code = "AE"
    add_order(db, "ACC7", "R", "E")
    add_study(db, "7.1", accession="ACC7")
    p.tick()
    assert [m.status for m in outbox(db)] == ["rejected", "rejected"]
    assert all("MSA|AE|" in m.ack for m in outbox(db))
    n = len(ris.messages)
    time.sleep(0.25)
    p.tick()
    assert len(ris.messages) == n


def test_order_after_scoring_is_linked_and_rescored(tmp_path, ris):
    negative = Analysis("ich", "ich-test-1", "done", 0.1, False, 0.5, 3, "1.2.3.4")
    db, p = make(tmp_path, ScriptedAnalyzer([negative]), ris)
    add_study(db, "8.1", accession="ACC8")
    p.tick()
    st = study(db, "8.1")
    assert st.order_link == "none" and st.patient_class == ""
    p.on_order(add_order(db, "ACC8", "A", "E"))
    st = study(db, "8.1")
    assert st.order_link == "accession" and st.patient_class == "E"
    assert st.ordered_priority == "A" and st.engine_priority == "A"
    assert ris.messages == []  # ordered A, engine A: nothing was raised


def test_order_by_study_uid_wins_over_accession(tmp_path, ris):
    db, p = make(tmp_path, ScriptedAnalyzer([positive()]), ris)
    add_order(db, "OTHER", "S", "I", study_uid="9.1")
    add_study(db, "9.1", accession="")
    p.tick()
    st = study(db, "9.1")
    assert st.order_link == "study_uid" and st.accession_number == "OTHER"
    assert st.ordered_priority == "S" and st.engine_priority == "S"
    assert ris.messages == []  # a STAT order cannot be raised further


def test_ris_exam_completed_completes_the_study_at_once(tmp_path, ris):
    analyzer = ScriptedAnalyzer([positive()])
    db, p = make(tmp_path, analyzer, ris, stable=3600)
    add_order(db, "ACC10", "R", "E")
    add_study(db, "10.1", accession="ACC10", age=1)
    p.tick()
    assert study(db, "10.1").state == StudyState.RECEIVING  # an hour of quiet is needed
    p.on_order(add_order(db, "ACC10", "R", "E", status="CM", control="SC"))
    st = study(db, "10.1")
    assert st.state == StudyState.SCORED and st.engine_priority == "S"
    assert analyzer.calls == ["ich"]


def test_same_images_are_not_analysed_twice_new_images_are(tmp_path, ris):
    analyzer = ScriptedAnalyzer([positive(0.97), positive(0.96)])
    db, p = make(tmp_path, analyzer, ris)
    add_order(db, "ACC11", "R", "E")
    add_study(db, "11.1", accession="ACC11")
    p.tick()
    assert analyzer.calls == ["ich"]
    p.process_study("11.1")  # e.g. completed again by the RIS: same images
    assert analyzer.calls == ["ich"]
    add_study(db, "11.1", accession="ACC11", first=10, n=2)  # a late instance
    assert study(db, "11.1").state == StudyState.RECEIVING
    p.tick()
    assert analyzer.calls == ["ich", "ich"]
    assert study(db, "11.1").state == StudyState.SCORED
    assert len(ris.messages) == 2  # still positive, still S: the RIS is not told again


def test_changed_result_after_late_images_sends_one_correction(tmp_path, ris):
    negative = Analysis("ich", "ich-test-1", "done", 0.2, False, 0.5, 3, "1.2.3.4")
    analyzer = ScriptedAnalyzer([positive(), negative, negative])
    db, p = make(tmp_path, analyzer, ris)
    add_order(db, "ACC12", "R", "E")
    add_study(db, "12.1", accession="ACC12")
    p.tick()
    assert len(ris.messages) == 2
    add_study(db, "12.1", accession="ACC12", first=10, n=1)
    p.tick()
    assert len(ris.messages) == 3
    corrected = ris.messages[2]
    assert "|ORU^R01" in corrected
    obr = next(x.split("|") for x in corrected.split("\r") if x.startswith("OBR|"))
    assert obr[25] == "C"
    add_study(db, "12.1", accession="ACC12", first=11, n=1)  # later still, same result
    p.tick()
    assert len(ris.messages) == 3  # at most one corrected result
    # never downgraded on the RIS: no ORM lowering the priority was sent
    assert sum("|ORM^O01" in m for m in ris.messages) == 1


def test_order_linked_by_patient_and_modality_in_time_window(tmp_path, ris):
    db, p = make(tmp_path, ScriptedAnalyzer([positive()]), ris)
    add_order(db, "ACC13", "A", "E", patient="PX", modality="CT")
    add_order(db, "ACC13MR", "R", "O", patient="PX", modality="MR")
    add_study(db, "13.1", accession="", patient="PX")
    p.tick()
    st = study(db, "13.1")
    assert st.order_link == "patient" and st.accession_number == "ACC13"
    assert st.ordered_priority == "A"


def test_ambiguous_patient_match_links_nothing(tmp_path, ris):
    negative = Analysis("ich", "ich-test-1", "done", 0.1, False, 0.5, 3, "1.2.3.4")
    db, p = make(tmp_path, ScriptedAnalyzer([negative]), ris)
    add_order(db, "ACC14A", "A", "E", patient="PY", modality="CT")
    add_order(db, "ACC14B", "R", "E", patient="PY", modality="CT")
    add_study(db, "14.1", accession="", patient="PY")
    p.tick()
    st = study(db, "14.1")
    assert st.order_link == "none" and st.accession_number == ""


def test_study_without_order_is_triaged_then_linked_when_the_order_arrives(tmp_path, ris):
    db, p = make(tmp_path, ScriptedAnalyzer([positive()]), ris)
    add_study(db, "15.1", accession="", patient="PZ")
    p.tick()
    st = study(db, "15.1")
    assert st.state == StudyState.SCORED and st.order_link == "none"
    assert any("Patient class unknown" in r for r in json.loads(st.reasons))
    assert st.engine_priority == "S"
    assert ris.messages == []  # the RIS cannot be told which order to change yet
    p.on_order(add_order(db, "ACC15", "R", "E", patient="PZ", modality="CT"))
    st = study(db, "15.1")
    assert st.order_link == "patient" and st.patient_class == "E"
    assert len(ris.messages) == 2 and "ACC15" in ris.messages[0]


def test_quiet_period_per_modality_and_ae(tmp_path, ris):
    db, p = make(tmp_path, ScriptedAnalyzer([]), ris, stable=3600)
    p.completion = CompletionPolicy(
        stable_seconds_for=lambda modality, ae: (
            {"MR": 1.0}.get(modality, 3600.0) if ae != "FASTCT" else 0.5
        ),
        shortest_seconds=0.5,
        expected_series_quiet_seconds=3600,
    )
    add_study(db, "16.1", modality="MR", body="WRIST", desc="MR WRIST", age=2)
    add_study(db, "16.2", age=2)
    add_study(db, "16.3", age=2, ae="FASTCT", desc="CT KNEE", body="KNEE")
    p.tick()
    assert study(db, "16.1").state == StudyState.NOT_ROUTED
    assert study(db, "16.2").state == StudyState.RECEIVING
    assert study(db, "16.3").state == StudyState.NOT_ROUTED


def test_expected_series_complete_a_study_early(tmp_path, ris):
    rules = load_routing_rules(
        Path("site-routing.yaml"),
        "version: 1\nrules:\n  - name: head\n    model: ich\n    modality: [CT]\n"
        "    require:\n      - body_part: [HEAD]\n"
        "    expected_series: ['(?i)brain', '(?i)bone']\n",
    )
    db, p = make(tmp_path, ScriptedAnalyzer([positive()]), ris, stable=3600, routing=rules)
    p.completion = CompletionPolicy(
        stable_seconds_for=lambda m, a: 3600.0,
        shortest_seconds=3600,
        expected_series_quiet_seconds=0.5,
        routing=rules,
    )
    add_study(db, "17.1", desc="BRAIN 5MM", series="1", age=2)
    p.tick()
    assert study(db, "17.1").state == StudyState.RECEIVING  # the bone series is missing
    add_study(db, "17.1", desc="BONE 1MM", series="2", age=2)
    p.tick()
    assert study(db, "17.1").state == StudyState.SCORED


def test_recover_applies_orders_whose_handling_was_lost(tmp_path, ris):
    negative = Analysis("ich", "ich-test-1", "done", 0.1, False, 0.5, 3, "1.2.3.4")
    db, p = make(tmp_path, ScriptedAnalyzer([negative]), ris)
    add_order(db, "ACC18", "R", "O")
    add_study(db, "18.1", accession="ACC18")
    p.tick()
    assert study(db, "18.1").engine_priority == "R"
    # An XO to STAT was acknowledged and stored, then the engine died before handling it.
    with db.session() as s:
        order = s.exec(select(Order).where(Order.accession_number == "ACC18")).one()
        order.ordered_priority = "S"
        order.order_control = "XO"
        s.add(order)
    p.recover()
    st = study(db, "18.1")
    assert st.ordered_priority == "S" and st.engine_priority == "S"


def test_unexpected_analysis_failure_is_listed_not_retried_forever(tmp_path, ris):
    analyzer = ScriptedAnalyzer([OSError("file vanished")])
    db, p = make(tmp_path, analyzer, ris)
    add_order(db, "ACC19", "A", "E")
    add_study(db, "19.1", accession="ACC19")
    p.tick()
    st = study(db, "19.1")
    assert st.state == StudyState.SCORED and st.engine_priority == "A"
    assert st.ai_status == "error"
    assert any("analysis failed: file vanished" in r for r in json.loads(st.reasons))
    time.sleep(0.25)
    p.tick()
    assert analyzer.calls == ["ich"]
