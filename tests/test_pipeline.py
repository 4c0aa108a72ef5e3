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
from sqlmodel import select
from support.paths import REPO_ROOT
from support.ris_peer import FakeRIS

from triage import pipeline as pipeline_module
from triage.completion import CompletionPolicy, complete_stable_studies
from triage.config import load_settings
from triage.errors import NotAssessable, TritonUnavailable
from triage.outbound import RISNotifier
from triage.pipeline import MAX_FAILURES, Analysis, Pipeline
from triage.routing import load_routing_rules
from triage.scoring import load_urgency_rules
from triage.store import Database, Finding, Instance, Order, OutboundMessage, Study, StudyState
from triage.store.instances import record_instance
from triage.store.models import utcnow

NEGATIVE = Analysis("ich", "ich-test-1", "done", 0.1, False, 0.5, 3, "1.2.3.4")


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


def make(
    tmp_path: Path,
    analyzer,
    ris: FakeRIS | None,
    *,
    stable: float = 0.05,
    routing=None,
    window: float | None = None,
    notifier=None,
    retry: float = 0.2,
):
    env = {"TRIAGE_DATA_DIR": str(tmp_path), "TRIAGE_STUDY_STABLE_SECONDS": str(stable)}
    if ris is not None:
        env.update(TRIAGE_RIS_HOST="127.0.0.1", TRIAGE_RIS_PORT=str(ris.port))
    if window is not None:
        env["TRIAGE_ORDER_MATCH_WINDOW_HOURS"] = str(window)
    settings = load_settings(environ=env, overrides={"retry_seconds": 0.2})
    db = Database(settings.resolved_database_url)
    db.create_all()
    routing = routing or load_routing_rules(REPO_ROOT / "rules" / "routing.yaml")
    pipeline = Pipeline(
        db,
        routing,
        load_urgency_rules(REPO_ROOT / "rules" / "urgency.yaml"),
        analyzer,
        (notifier or RISNotifier)(settings, db),
        completion=CompletionPolicy(
            stable_seconds_for=settings.stable_seconds_for,
            shortest_seconds=stable,
            expected_series_quiet_seconds=stable,
        ),
        retry_seconds=retry,
        match_window_hours=settings.order_match_window_hours,
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
    hours_ago: float = 0.0,
) -> int:
    with db.session() as s:
        o = Order(
            updated_at=utcnow() - timedelta(hours=hours_ago),
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
    # The retry is made due by hand (make_due), never by the clock: with a 0.2 s delay a loaded
    # machine can make it due before the "too early" tick below.
    db, p = make(tmp_path, analyzer, ris, retry=3600)
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
    make_due(db, "2.1")
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


def change_order(db: Database, order_id: int, **values) -> None:
    """What the message store does when an XO / CA / SC for the order is applied."""
    with db.session() as s:
        order = s.get(Order, order_id)
        assert order is not None
        for key, value in values.items():
            setattr(order, key, value)
        order.updated_at = utcnow()
        s.add(order)


def ordered(st: Study) -> tuple[str, str, str, str]:
    return st.order_link, st.ordered_priority, st.patient_class, st.accession_number


@pytest.mark.parametrize(("window", "hours_ago", "linked"), [(1, 2, False), (48, 30, True)])
def test_the_match_window_setting_is_used_to_link_by_patient(
    tmp_path, ris, window, hours_ago, linked
):
    db, p = make(tmp_path, ScriptedAnalyzer([NEGATIVE]), ris, window=window)
    add_order(db, "ACCW", "A", "E", patient="PW", modality="CT", hours_ago=hours_ago)
    add_study(db, "20.1", accession="", patient="PW")
    p.tick()
    st = study(db, "20.1")
    assert st.state == StudyState.SCORED
    if linked:
        assert ordered(st) == ("patient", "A", "E", "ACCW") and st.engine_priority == "A"
    else:
        assert ordered(st) == ("none", "", "", "") and st.engine_priority == "R"


@pytest.mark.parametrize(("window", "link"), [(1, "none"), (3, "patient")])
def test_completion_links_with_the_match_window_setting(tmp_path, ris, window, link):
    """Expected series are looked up with the order (routing may depend on it)."""
    rules = load_routing_rules(
        Path("site-routing.yaml"),
        "version: 1\nrules:\n  - name: head\n    model: ich\n    modality: [CT]\n"
        "    expected_series: ['(?i)brain']\n",
    )
    db, p = make(tmp_path, ScriptedAnalyzer([]), ris, routing=rules, window=window)
    add_study(db, "21.1", desc="BRAIN 5MM", patient="PV", age=2)
    add_order(db, "ACCV", "S", "E", patient="PV", modality="CT", hours_ago=2)
    policy = CompletionPolicy(
        stable_seconds_for=lambda m, a: 3600.0,
        shortest_seconds=3600,
        expected_series_quiet_seconds=0.5,
    )
    done = complete_stable_studies(db, policy, expected_series_present=p.expected_series_present)
    assert [uid for uid, _ in done] == ["21.1"]
    assert study(db, "21.1").order_link == link


def test_a_study_completed_by_its_expected_series_is_routed_once(
    tmp_path, ris, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Completion asks the pipeline whether the expected series are there (the pipeline
    routes); the rule found then is the one the study is processed with, not routed again
    unless its images or its order changed."""
    rules = load_routing_rules(
        Path("site-routing.yaml"),
        "version: 1\nrules:\n  - name: head\n    model: ich\n    modality: [CT]\n"
        "    expected_series: ['(?i)brain']\n",
    )
    db, p = make(
        tmp_path, ScriptedAnalyzer([positive(), positive()]), ris, stable=3600, routing=rules
    )
    p.completion = CompletionPolicy(
        stable_seconds_for=lambda m, a: 3600.0,
        shortest_seconds=3600,
        expected_series_quiet_seconds=0.5,
    )
    routed: list[object] = []
    real_route = pipeline_module.route

    def counting_route(routing, facts):
        routed.append(facts)
        return real_route(routing, facts)

    monkeypatch.setattr(pipeline_module, "route", counting_route)
    add_study(db, "23.1", desc="BRAIN 5MM", age=2)
    p.tick()
    st = study(db, "23.1")
    assert st.state == StudyState.SCORED and st.routed_model == "ich"
    assert len(routed) == 1
    # Processed again later (a retry, an order): routed then, as before.
    p.process_study("23.1")
    assert len(routed) == 2


def test_cancelled_order_takes_its_priority_and_patient_class_with_it(tmp_path, ris):
    db, p = make(tmp_path, ScriptedAnalyzer([NEGATIVE]), ris)
    order = add_order(db, "ACC22", "S", "E")
    add_study(db, "22.1", accession="ACC22")
    p.tick()
    st = study(db, "22.1")
    assert ordered(st) == ("accession", "S", "E", "ACC22") and st.engine_priority == "S"
    change_order(db, order, order_control="CA", order_status="CA")
    p.on_order(order)
    st = study(db, "22.1")
    assert ordered(st) == ("none", "", "", "ACC22")  # the images' own accession stays
    assert st.engine_priority == "R" and st.state == StudyState.SCORED
    reasons = json.loads(st.reasons)
    assert reasons[0].startswith("No ordered priority") and "Patient class unknown" in reasons[1]
    assert ris.messages == []  # nothing was raised, nothing is lowered on the RIS


def test_order_moved_to_another_study_leaves_the_first_with_no_order(tmp_path, ris):
    db, p = make(tmp_path, ScriptedAnalyzer([NEGATIVE, NEGATIVE]), ris)
    order = add_order(db, "ACC23", "S", "E", study_uid="23.1")
    add_study(db, "23.1", accession="")
    add_study(db, "23.2", accession="")
    p.tick()
    assert ordered(study(db, "23.1")) == ("study_uid", "S", "E", "ACC23")
    assert ordered(study(db, "23.2")) == ("none", "", "", "")
    change_order(db, order, order_control="XO", study_uid="23.2")  # the RIS corrects it
    p.on_order(order)
    first, second = study(db, "23.1"), study(db, "23.2")
    assert ordered(first) == ("none", "", "", "") and first.engine_priority == "R"
    assert ordered(second) == ("study_uid", "S", "E", "ACC23") and second.engine_priority == "S"


def test_relink_to_another_order_follows_it_and_tells_that_order(tmp_path, ris):
    db, p = make(tmp_path, ScriptedAnalyzer([positive()]), ris)
    add_order(db, "ACC24A", "R", "E", patient="PL", modality="CT")
    add_study(db, "24.1", accession="", patient="PL")
    p.tick()
    st = study(db, "24.1")
    assert ordered(st) == ("patient", "R", "E", "ACC24A") and st.engine_priority == "S"
    assert len(ris.messages) == 2 and "ACC24A" in ris.messages[0]
    # The RIS sends the order the study really belongs to, naming it by Study UID.
    p.on_order(add_order(db, "ACC24B", "A", "I", study_uid="24.1", patient="PL"))
    st = study(db, "24.1")
    assert ordered(st) == ("study_uid", "A", "I", "ACC24B") and st.engine_priority == "S"
    assert len(ris.messages) == 4  # the new order is told the raised priority and the result
    assert all("ACC24B" in m and "ACC24A" not in m for m in ris.messages[2:])


def test_relinked_to_a_stat_order_never_listed_below_it(tmp_path, ris):
    db, p = make(tmp_path, ScriptedAnalyzer([NEGATIVE]), ris)
    add_order(db, "ACC25A", "R", "O", patient="PK", modality="CT")
    add_study(db, "25.1", accession="", patient="PK")
    p.tick()
    assert study(db, "25.1").engine_priority == "R"
    p.on_order(add_order(db, "ACC25B", "S", "I", study_uid="25.1", patient="PK"))
    st = study(db, "25.1")
    assert ordered(st) == ("study_uid", "S", "I", "ACC25B") and st.engine_priority == "S"


def test_study_guessed_by_patient_loses_the_order_to_the_study_it_names(tmp_path, ris):
    db, p = make(tmp_path, ScriptedAnalyzer([NEGATIVE, NEGATIVE]), ris)
    order = add_order(db, "ACC26", "A", "E", patient="PD", modality="CT")
    add_study(db, "26.1", accession="", patient="PD")
    p.tick()
    assert ordered(study(db, "26.1")) == ("patient", "A", "E", "ACC26")
    change_order(db, order, order_control="XO", study_uid="26.2")
    p.on_order(order)  # the named study is not here yet: the guess stands meanwhile
    assert ordered(study(db, "26.1")) == ("patient", "A", "E", "ACC26")
    add_study(db, "26.2", accession="", patient="PD")
    p.tick()
    assert ordered(study(db, "26.2")) == ("study_uid", "A", "E", "ACC26")
    first = study(db, "26.1")
    assert ordered(first) == ("none", "", "", "") and first.engine_priority == "R"


class FlakyNotifier(RISNotifier):
    """The real outbox, except that queuing raises for the accessions in ``failing``."""

    failing: dict[str, int]

    def queue(self, session, study, order, findings, **kwargs):
        left = self.failing.get(study.accession_number, 0)
        if left:
            self.failing[study.accession_number] = left - 1
            raise RuntimeError(f"cannot queue {study.accession_number}")
        return super().queue(session, study, order, findings, **kwargs)


def make_due(db: Database, uid: str) -> None:
    with db.session() as s:
        st = s.exec(select(Study).where(Study.study_uid == uid)).one()
        st.ai_next_attempt_at = utcnow()
        s.add(st)


def test_error_while_scoring_marks_the_study_failed_others_go_on(tmp_path, ris, caplog):
    analyzer = ScriptedAnalyzer([positive(), positive()])
    # The retry is made due by hand (make_due), never by the clock: with a short retry delay,
    # a loaded machine let 27.1 come due, and be retried, within the tick that failed it.
    db, p = make(tmp_path, analyzer, ris, notifier=FlakyNotifier, retry=3600)
    p.notifier.failing = {"ACC27A": 1}
    add_order(db, "ACC27A", "R", "E")
    add_order(db, "ACC27B", "R", "E")
    add_study(db, "27.1", accession="ACC27A")
    add_study(db, "27.2", accession="ACC27B")
    p.tick()  # before: the error left 27.1 COMPLETE forever, and 27.2 too
    broken, other = study(db, "27.1"), study(db, "27.2")
    assert other.state == StudyState.SCORED and other.engine_priority == "S"
    assert broken.state == StudyState.FAILED and broken.failures == 1
    assert "Processing failed (RuntimeError: cannot queue ACC27A); retry 1 of 2" in broken.reasons
    assert "study 27.1: processing failed" in caplog.text
    assert len(ris.messages) == 2 and all("ACC27B" in m for m in ris.messages)
    make_due(db, "27.1")
    p.tick()
    st = study(db, "27.1")
    assert st.state == StudyState.SCORED and st.engine_priority == "S" and st.failures == 0
    assert "Processing failed" not in st.reasons
    assert analyzer.calls == ["ich", "ich"]  # analysed once; only the scoring was retried
    assert len(ris.messages) == 4 and all("ACC27A" in m for m in ris.messages[2:])


def test_a_study_that_keeps_failing_stops_being_retried(tmp_path, ris):
    db, p = make(tmp_path, ScriptedAnalyzer([positive()]), ris, notifier=FlakyNotifier)
    p.notifier.failing = {"ACC28": 99}
    add_order(db, "ACC28", "A", "E")
    add_study(db, "28.1", accession="ACC28")
    p.tick()
    for _ in range(MAX_FAILURES - 1):
        make_due(db, "28.1")
        p.tick()
    st = study(db, "28.1")
    assert st.state == StudyState.FAILED and st.failures == MAX_FAILURES
    assert st.ai_next_attempt_at is None and "no more retries" in st.reasons
    assert st.engine_priority in ("", "A") and st.ordered_priority == "A"  # listed as ordered
    assert p.notifier.failing["ACC28"] == 99 - MAX_FAILURES
    p.tick()
    assert p.notifier.failing["ACC28"] == 99 - MAX_FAILURES  # not retried again
    p.notifier.failing.clear()
    p.on_order(add_order(db, "ACC28", "A", "E"))  # an order change processes it again
    assert study(db, "28.1").state == StudyState.SCORED


def test_a_study_left_complete_by_a_stopped_engine_is_processed(tmp_path, ris):
    db, p = make(tmp_path, ScriptedAnalyzer([positive()]), ris, stable=3600)
    add_order(db, "ACC29", "R", "E")
    add_study(db, "29.1", accession="ACC29")
    with db.session() as s:  # completed, then the engine stopped before processing it
        st = s.exec(select(Study).where(Study.study_uid == "29.1")).one()
        st.state = StudyState.COMPLETE
        s.add(st)
    p.tick()
    assert study(db, "29.1").state == StudyState.SCORED


class CommitWatch:
    """Every committed state of one study, as another reader sees it, after each of the
    pipeline's transactions: (state, reasons, findings stored)."""

    def __init__(self, db: Database, uid: str) -> None:
        import contextlib
        import sqlite3

        self.seen: list[tuple[str, str, int]] = []
        path = db.engine.url.database
        session = db.session

        @contextlib.contextmanager
        def watched():
            with session() as s:
                yield s
            con = sqlite3.connect(path)
            try:
                row = con.execute(
                    "SELECT state, reasons, (SELECT count(*) FROM finding WHERE study_uid = ?) "
                    "FROM study WHERE study_uid = ?",
                    (uid, uid),
                ).fetchone()
            finally:
                con.close()
            if row is not None:
                self.seen.append((str(row[0]), str(row[1] or ""), int(row[2])))

        db.session = watched  # type: ignore[method-assign]


def test_ai_pending_is_committed_with_its_reason_never_without(tmp_path, ris):
    """Before, the state (AI pending) and the reasons and score that go with it were written
    in two transactions: the worklist could show a study AI pending with no reason why."""
    analyzer = ScriptedAnalyzer([TritonUnavailable("connection refused")])
    db, p = make(tmp_path, analyzer, ris, retry=3600)
    add_order(db, "ACC41", "R", "E")
    add_study(db, "41.1", accession="ACC41")
    watch = CommitWatch(db, "41.1")
    p.tick()
    pending = [reasons for state, reasons, _ in watch.seen if state == StudyState.AI_PENDING]
    assert pending, watch.seen
    assert all("AI pending" in r for r in pending), watch.seen


def test_a_finding_is_committed_with_the_score_it_gives(tmp_path, ris):
    """The finding and the study's new score, priority and reasons: one transaction (before,
    the finding was committed first, the study COMPLETE and still at its old score)."""
    analyzer = ScriptedAnalyzer([positive()])
    db, p = make(tmp_path, analyzer, ris)
    add_order(db, "ACC42", "R", "E")
    add_study(db, "42.1", accession="ACC42")
    watch = CommitWatch(db, "42.1")
    p.tick()
    with_finding = [state for state, _, findings in watch.seen if findings]
    assert with_finding and set(with_finding) == {StudyState.SCORED}, watch.seen
    assert study(db, "42.1").engine_priority == "S"


def test_images_arriving_while_the_model_runs_are_analysed_too(tmp_path, ris):
    """New instances stored while inference runs put the study back to RECEIVING; storing
    the analysis must not overwrite that (before: SCORED with the old images' result, and the
    new images never analysed)."""
    db_holder: list[Database] = []

    @dataclass
    class ArrivingAnalyzer(ScriptedAnalyzer):
        def analyze(self, model: str, instances: list[Instance]) -> Analysis:
            if not self.calls:  # a late series lands during the first inference
                add_study(db_holder[0], "43.1", accession="ACC43", first=10, n=3, series="9")
            return super().analyze(model, instances)

    analyzer = ArrivingAnalyzer([positive(0.97), positive(0.98)])
    db, p = make(tmp_path, analyzer, ris)
    db_holder.append(db)
    add_order(db, "ACC43", "R", "E")
    add_study(db, "43.1", accession="ACC43")
    p.tick()
    assert analyzer.calls == ["ich"]
    assert study(db, "43.1").state == StudyState.RECEIVING
    p.tick()  # the late images are already quiet long enough: complete, analysed again
    assert analyzer.calls == ["ich", "ich"]
    st = study(db, "43.1")
    assert st.state == StudyState.SCORED and st.engine_priority == "S"


def test_an_analysis_is_kept_when_its_scoring_fails(tmp_path, ris, caplog):
    """The model answered, then the transaction that stores and scores failed: the analysis
    is stored on its own (the retry only scores; the model is not asked again), and the log
    says so once, as kept - not a second "study ...: ich done" line."""
    import logging

    analyzer = ScriptedAnalyzer([positive(0.93)])
    db, p = make(tmp_path, analyzer, ris)
    add_order(db, "ACC44", "R", "E")
    add_study(db, "44.1", accession="ACC44")
    real = p._score_one

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("rules broke")

    p._score_one = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="triage.pipeline"):
        p.tick()
    with db.session() as s:
        findings = s.exec(select(Finding).where(Finding.study_uid == "44.1")).all()
    assert [f.probability for f in findings] == [pytest.approx(0.93)]
    kept = [r for r in caplog.records if "analysis kept" in r.getMessage()]
    assert len(kept) == 1 and "p=0.93" in kept[0].getMessage()
    done = [r for r in caplog.records if "44.1: ich done" in r.getMessage()]
    assert len(done) <= 1  # the line of the rolled-back transaction, if any; not a second one
    p._score_one = real  # type: ignore[method-assign]
    p.tick()
    assert analyzer.calls == ["ich"]  # scored again from the kept analysis, not re-inferred
