"""What-if (``triage rules simulate``): the reading-queue model checked by hand, the
re-scoring at each decision checked against a naive model, the figures from a seeded store
(built with the store's own models), the command's JSON, its read-only guarantee, its
refusal of a bad rules file, and --since."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.paths import REPO_ROOT

from triage.cli import main
from triage.errors import StoreError
from triage.scoring import load_urgency_rules, order_key
from triage.scoring.score import FindingInput
from triage.scoring.simulate import (
    History,
    HistoryStudy,
    TimedFinding,
    _reading,
    load_history,
    parse_read_minutes,
    read_keys,
    score_at,
    simulate,
)
from triage.store import Database, Finding, Study
from triage.store.models import Feedback, Order

SHIPPED = REPO_ROOT / "rules" / "urgency.yaml"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def rules_file(tmp_path: Path, name: str, old: str = "", new: str = ""):
    text = SHIPPED.read_text()
    if old:
        assert text.count(old) == 1
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def positive(model: str, p: float, at: datetime) -> TimedFinding:
    return TimedFinding(at, FindingInput(model, "done", p, True, 0.5))


def study(
    acc: str,
    minute: float,
    body: str,
    *,
    priority: str = "R",
    cls: str = "O",
    findings: tuple[TimedFinding, ...] = (),
    truth: str = "",
) -> HistoryStudy:
    return HistoryStudy(
        study_uid="1.2." + acc,
        accession_number=acc,
        completed_at=T0 + timedelta(minutes=minute),
        ordered_priority=priority,
        patient_class=cls,
        fields={"study.modality": "CT", "study.body_part": body},
        findings=findings,
        truth=truth,
    )


def history(*studies: HistoryStudy) -> History:
    return History(tuple(studies), T0, T0 + timedelta(days=1))


# -- the queue, by hand -----------------------------------------------------------------------


def five_studies() -> History:
    """Outpatients (reading target 480 min: no aging within these waits)."""
    return history(
        study("A", 0, "HEAD"),  # R, score 20
        study("B", 1, "CHEST"),  # R, score 20
        study("C", 2, "HEAD"),  # R, score 20
        study("D", 3, "HEAD", findings=(positive("ich", 0.9, T0 + timedelta(minutes=3)),)),
        study("E", 4, "CHEST", priority="S"),  # S, score 70
    )


def test_two_readers_five_studies_by_hand(tmp_path):
    current = load_urgency_rules(SHIPPED)
    # the proposed rules give S from a score of 70 (was 80): D (score 20 + 0.9 x 60 = 74)
    # becomes S instead of A
    proposed = load_urgency_rules(
        rules_file(
            tmp_path, "new.yaml", "{min_score: 80, priority: S}", "{min_score: 70, priority: S}"
        )
    )
    minutes = {"ct-head": 10, "ct-chest": 20}
    result = simulate(five_studies(), current, proposed, 2, minutes)
    # current: A, B start at once (readers 1 and 2: 0-10, 1-21). At 10 reader 1 chooses among
    # C (R 20), D (A 74), E (S 70): E (10-30, waited 6). At 21 reader 2: D (A) over C (waited
    # 18). At 30 reader 1: C (waited 28).
    waits = dict(zip("ABCDE", result.before.waits["all"], strict=True))
    assert waits == {"A": 0, "B": 0, "C": 28, "D": 18, "E": 6}
    # proposed: at 10 D (S 74) goes before E (S 70): D 10-20 (waited 7). At 20 reader 1: E
    # (20-40, waited 16). At 21 reader 2: C (waited 19).
    waits = dict(zip("ABCDE", result.after.waits["all"], strict=True))
    assert waits == {"A": 0, "B": 0, "C": 19, "D": 7, "E": 16}
    # critical: D (AI positive, no truth); routine: A, B, C (E is ordered STAT)
    assert (result.critical, result.routine) == (1, 3)
    assert result.before.waits["critical"] == [18] and result.after.waits["critical"] == [7]
    assert result.before.waits["routine"] == [0, 0, 28]
    assert result.after.waits["routine"] == [0, 0, 19]
    assert [(c.accession_number, c.before, c.after) for c in result.changed] == [("D", "A", "S")]
    assert result.before.alerts == result.after.alerts == 1  # D raised from R either way
    summary = result.to_json()["before"]["wait_minutes"]["routine"]
    assert summary == {"count": 3, "mean": 9.3, "median": 0, "p90": 28, "max": 28}


def test_aging_reorders_the_queue_at_each_decision():
    """One reader busy 100 minutes with W. X (emergency, routine order: 20 + 20 = 40, target
    30 min) arrives at 1; Y (outpatient, ASAP: 50) at 50. When the reader is free at 100, X has
    waited 99 min: 69 min late, +30 (the most aging adds) = 70, priority A over Y's 50."""
    h = history(
        study("W", 0, "HEAD"),
        study("X", 1, "HEAD", cls="E"),
        study("Y", 50, "HEAD", priority="A"),
    )
    rules = load_urgency_rules(SHIPPED)
    result = simulate(h, rules, rules, 1, {"ct-head": 100})
    assert result.before.waits["all"] == [0, 99, 150]  # X at 100, Y at 200
    assert result.before.raised_while_waiting == 1  # X: R once complete, A when read
    # with no aging X (R) would have waited for Y (A): check the rules without it
    no_aging = load_urgency_rules(
        SHIPPED, SHIPPED.read_text().replace("max_points: 30", "max_points: 0")
    )
    assert simulate(h, no_aging, no_aging, 1, {"ct-head": 100}).before.waits["all"] == [0, 199, 50]


def naive_waits(h: History, rules, readers: int, minutes: dict[str, float]) -> list[float]:
    """Every waiting study re-scored at every decision, as the engine's worklist would be."""
    n = len(h.studies)
    arrive = [(s.completed_at - T0).total_seconds() / 60 for s in h.studies]
    read = [minutes[next(k for k in read_keys(s) if k in minutes)] for s in h.studies]
    cap = rules.aging.stop_after_hours * 60
    free_at = [arrive[0]] * readers
    started: dict[int, float] = {}
    now = min(arrive)
    while len(started) < n:
        r = min(range(readers), key=lambda k: free_at[k])
        now = max(now, free_at[r])
        waiting = [i for i in range(n) if i not in started and arrive[i] <= now]
        if not waiting:
            now = min(arrive[i] for i in range(n) if i not in started)
            continue

        def key(i: int, now: float = now):
            s = h.studies[i]
            res = score_at(rules, s, min(now - arrive[i], cap), T0 + timedelta(minutes=now))
            return order_key(
                rules, res.priority, res.score, s.completed_at, s.accession_number, s.study_uid
            )

        best = min(waiting, key=key)
        started[best] = now
        free_at[r] = now + read[best]
    return [round(started[i] - arrive[i], 6) for i in range(n)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_event_driven_queue_equals_rescoring_everything_at_each_decision(seed):
    rng = random.Random(seed)
    studies = []
    for k in range(60):
        minute = rng.randrange(0, 300)
        findings = ()
        if rng.random() < 0.3:
            findings = (
                positive(
                    "ich", rng.random(), T0 + timedelta(minutes=minute + rng.randrange(0, 30))
                ),
            )
        studies.append(
            study(
                f"S{k:02d}",
                minute,
                rng.choice(["HEAD", "CHEST"]),
                priority=rng.choice(["R", "R", "R", "A", "S"]),
                cls=rng.choice(["E", "I", "O", ""]),
                findings=findings,
            )
        )
    studies.sort(key=lambda s: (s.completed_at, s.study_uid))
    h = history(*studies)
    rules = load_urgency_rules(SHIPPED)
    minutes = {"ct-head": 12, "ct-chest": 25.5}
    readers = rng.choice([1, 2])
    got = [round(w, 6) for w in simulate(h, rules, rules, readers, minutes).before.waits["all"]]
    assert got == naive_waits(h, rules, readers, minutes)
    assert max(got) > 30  # the queue did build up, so aging was in play


def test_read_minute_keys_and_parsing():
    s = HistoryStudy(
        "1.2",
        "A",
        T0,
        fields={
            "order.procedure_code": "CTHEADWO",
            "study.modality": "CT",
            "study.body_part": "HEAD",
        },
        routed_model="ich",
    )
    assert read_keys(s) == ("ctheadwo", "ich", "ct-head", "ct", "default")
    assert parse_read_minutes("CT-head=6, pe=8.5,default=12") == {
        "ct-head": 6,
        "pe": 8.5,
        "default": 12,
    }
    for bad in ("ct-head", "ct-head=abc", "pe=0", "=5"):
        with pytest.raises(ValueError):
            parse_read_minutes(bad)


# -- the store --------------------------------------------------------------------------------

NOW = datetime.now(UTC).replace(microsecond=0)  # the seeded store's "now" (--until NOW)


def seed(path: Path) -> None:
    """Five complete studies (one 10 days old) and one still arriving, with orders, AI
    results and truth, written with the store's models."""
    db = Database(f"sqlite:///{path}")
    db.create_all()
    specs = [
        # acc, completed hours ago, body part, model, p, class, truth (source)
        ("H1", 2, "HEAD", "ich", 0.9, "E", ("negative", "report")),
        ("H2", 3, "HEAD", "ich", 0.95, "E", ("positive", "radiologist")),
        ("H3", 5, "HEAD", "ich", None, "O", None),
        ("P1", 24, "CHEST", "pe", 0.7, "I", None),
        ("OLD", 240, "HEAD", "ich", 0.9, "E", None),
    ]
    with db.session() as s:
        for acc, hours, body, model, p, cls, truth in specs:
            done = NOW - timedelta(hours=hours)
            order = Order(
                accession_number=acc,
                ordered_priority="R",
                patient_class=cls,
                ordering_location="ED^^^HOSP",
                procedure_text="CT",
                modality="CT",
                updated_at=done,
            )
            s.add(order)
            s.flush()
            uid = "1.9." + acc
            s.add(
                Study(
                    study_uid=uid,
                    accession_number=acc,
                    modality="CT",
                    body_part=body,
                    state="scored",
                    completed_at=done,
                    first_received_at=done,
                    last_received_at=done,
                    routed_model=model,
                    ordered_priority="R",
                    patient_class=cls,
                    order_id=order.id,
                    order_link="accession",
                )
            )
            s.add(
                Finding(
                    study_uid=uid,
                    model_name=model,
                    status="done",
                    probability=p if p is not None else 0.1,
                    positive=p is not None,
                    threshold=0.5,
                    created_at=done + timedelta(seconds=30),
                )
            )
            if truth:
                s.add(
                    Feedback(
                        study_uid=uid,
                        model_name=model,
                        source=truth[1],
                        truth=truth[0],
                        at=done + timedelta(hours=1),
                    )
                )
        s.add(Study(study_uid="1.9.NEW", accession_number="NEW", first_received_at=NOW))
    db.dispose()


@pytest.fixture
def store(tmp_path, monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("TRIAGE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path))
    seed(tmp_path / "triage.db")
    return tmp_path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["rules", "simulate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def proposed_a_from_70(tmp_path: Path) -> Path:
    return rules_file(
        tmp_path, "proposed.yaml", "{min_score: 55, priority: A}", "{min_score: 70, priority: A}"
    )


def test_json_figures_from_the_store(store, capsys):
    db_file = store / "triage.db"
    before = digest(db_file)
    code, out, err = run(
        capsys, str(proposed_a_from_70(store)), "--current", str(SHIPPED), "--json",
        "--until", NOW.isoformat(),
        "--readers", "1", "--read-minutes", "ct-head=6,pe=8,mr=3",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert digest(db_file) == before  # never written
    assert set(data) >= {
        "window",
        "studies",
        "readers",
        "read_minutes",
        "before",
        "after",
        "changed",
    }
    assert (data["studies"], data["incomplete"], data["readers"]) == (4, 1, 1)  # OLD is 10 d old
    assert data["read_minutes"] == {"ct-head": 6, "pe": 8, "mr": 3, "default": 10}
    assert data["unused_read_keys"] == ["mr"]
    # P1: R 20 + inpatient 10 + PE 0.7 x 55 = 68.5: A now, R when A needs 70
    assert data["changed"] == [
        {
            "accession_number": "P1",
            "study_uid": "1.9.P1",
            "before": "A",
            "after": "R",
            "before_score": 68.5,
            "after_score": 68.5,
        }
    ]
    days = data["window"]["days"]
    assert days == 7.0  # --since 7d (the store holds older studies)
    b, a = data["before"], data["after"]
    # H1 (S, report: negative), H2 (S, radiologist: positive), P1 (A, no truth)
    assert (b["alerts"], b["alerts_with_truth"], b["false_alerts"]) == (3, 2, 1)
    assert (a["alerts"], a["alerts_with_truth"], a["false_alerts"]) == (2, 2, 1)
    assert b["alerts_per_day"] == round(3 / days, 2)
    assert a["false_alerts_per_day"] == round(1 / days, 2)
    # critical: H2 (truth positive) and P1 (AI positive, no truth); H1's truth is negative
    assert data["critical"] == 2 and b["wait_minutes"]["critical"]["count"] == 2
    assert b["wait_minutes"]["all"]["count"] == 4
    assert a["version"] != b["version"] and b["rules"] == str(SHIPPED)


def test_since_selects_the_window(store, capsys):
    new = str(proposed_a_from_70(store))
    accs = {}
    for since in ("7d", "14d", "4h", (NOW - timedelta(hours=2, minutes=30)).isoformat()):
        code, out, err = run(
            capsys, new, "--current", str(SHIPPED), "--json", "--since", since,
            "--until", NOW.isoformat(),
        )  # fmt: skip
        assert code == 0, err
        data = json.loads(out)
        accs[since] = (data["before"]["wait_minutes"]["all"]["count"], data["window"]["days"])
    # 14 days: from the first completion (OLD, 10 days ago); under a day: counted as one
    assert list(accs.values()) == [(4, 7.0), (5, 10.0), (2, 1.0), (1, 1.0)]
    history = load_history(f"sqlite:///{store / 'triage.db'}", NOW - timedelta(days=14), NOW)
    assert [s.accession_number for s in history.studies] == ["OLD", "P1", "H3", "H2", "H1"]
    h1 = history.studies[-1]
    assert (h1.truth, h1.routed_model, h1.fields["order.ordering_location"]) == (
        "negative",
        "ich",
        "ED^^^HOSP",
    )
    assert history.studies[3].truth == "positive"


def test_the_rich_view_and_the_plot(store, capsys):
    plot = store / "waits.png"
    code, out, err = run(
        capsys, str(proposed_a_from_70(store)), "--current", str(SHIPPED), "--plot", str(plot)
    )
    assert code == 0, err
    assert "Studies that change class: 1" in out and "P1" in out
    assert "alerts per day" in out and "critical" in out
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[16:24] == (720).to_bytes(4, "big") + (
        300
    ).to_bytes(4, "big")


def test_the_database_is_opened_read_only(store):
    url = f"sqlite:///{store / 'triage.db'}"
    with pytest.raises(StoreError, match=r"readonly|read-only|read only"), _reading(url) as conn:
        conn.exec_driver_sql("DELETE FROM study")
    with sqlite3.connect(store / "triage.db") as conn:
        assert conn.execute("SELECT count(*) FROM study").fetchone()[0] == 6


def test_a_bad_rules_file_is_refused_with_file_and_line(store, capsys):
    bad = rules_file(store, "bad.yaml", "max_points: 30", "max_points: -1")
    before = digest(store / "triage.db")
    code, out, err = run(capsys, str(bad), "--current", str(SHIPPED))
    assert code == 2 and out == ""
    line = SHIPPED.read_text().splitlines().index("  max_points: 30") + 1
    assert err.startswith(f"triage: error: {bad}:{line}: 'max_points' is -1")
    assert digest(store / "triage.db") == before


def test_bad_arguments_are_refused_in_one_line(store, capsys):
    code, out, err = run(capsys, str(SHIPPED), "--since", "last tuesday")
    assert code == 2 and out == ""
    assert err == (
        "triage: error: --since: 'last tuesday': expected a span (7d, 12h, 90m, 2w) or an "
        "ISO date/time\n"
    )
    with pytest.raises(SystemExit) as exit_:
        main(["rules", "simulate", str(SHIPPED), "--readers", "0"])
    assert exit_.value.code == 2
    assert "the number of readers must be 1 or more" in capsys.readouterr().err


def test_no_database_is_an_error_not_a_new_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "nothing"))
    code, _, err = run(capsys, str(SHIPPED), "--current", str(SHIPPED))
    assert code == 1 and "no engine database" in err
    assert not (tmp_path / "nothing").exists()
