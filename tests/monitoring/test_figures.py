"""The monitoring figures as plain functions over a seeded store: counts, rates and Wilson
intervals that can be checked by hand, the RIS ACK times, the truth's precedence, and the
drift tests (firing on a shifted positive rate, score distribution or input mix, silent on
the baseline itself)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from triage import monitoring
from triage.monitoring.drift import (
    MIN_STUDIES,
    Baseline,
    base_version,
    input_tests,
    load_baselines,
    positive_rate_test,
    score_test,
)
from triage.monitoring.figures import Outcome
from triage.monitoring.stats import ks_statistic, psi, quantile, shares, two_proportion_z, wilson
from triage.store import Database
from triage.store.models import Feedback, Finding, OutboundMessage, Study

NOW = datetime(2027, 3, 10, 15, 0, tzinfo=UTC)
DAY1 = datetime(2027, 3, 9, 9, 0, tzinfo=UTC)
DAY2 = datetime(2027, 3, 10, 9, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = Database(f"sqlite:///{tmp_path / 'triage.db'}")
    d.create_all()
    yield d
    d.dispose()


def add(
    db: Database,
    uid: str,
    at: datetime,
    *,
    status: str = "done",
    positive: bool = False,
    probability: float | None = 0.2,
    model: str = "ich",
    version: str = "ich-synthcnn-2.0/1",
    truth: tuple[str, str] | None = None,  # (source, truth)
    ack_after: float | None = None,
) -> None:
    with db.session() as s:
        s.add(Study(study_uid=uid, completed_at=at - timedelta(minutes=1), state="scored"))
        f = Finding(
            study_uid=uid,
            model_name=model,
            model_version=version,
            status=status,
            positive=positive,
            probability=probability if status == "done" else None,
            created_at=at,
        )
        s.add(f)
        s.flush()
        if truth is not None:
            s.add(
                Feedback(
                    study_uid=uid,
                    model_name=model,
                    finding_id=f.id,
                    source=truth[0],
                    truth=truth[1],
                    at=at + timedelta(hours=1),
                )
            )
        if ack_after is not None:
            s.add(
                OutboundMessage(
                    study_uid=uid,
                    kind="ORU",
                    control_id=f"C{uid}",
                    raw="MSH|",
                    status="sent",
                    sent_at=at - timedelta(minutes=1) + timedelta(seconds=ack_after),
                )
            )


def seed_day1(db: Database) -> None:
    """Ten ich studies on day 1: 4 flagged (3 true, 1 false), 5 negative (1 missed), 1 not
    assessable (a positive: a miss)."""
    for i in range(3):
        add(db, f"tp{i}", DAY1, positive=True, probability=0.9, truth=("report", "positive"))
    add(db, "fp0", DAY1, positive=True, probability=0.7, truth=("radiologist", "negative"))
    for i in range(4):
        add(db, f"tn{i}", DAY1, probability=0.1, truth=("report", "negative"))
    add(db, "fn0", DAY1, probability=0.3, truth=("report", "positive"))
    add(db, "na0", DAY1, status="not_assessable", truth=("report", "positive"))


def test_wilson_by_hand() -> None:
    p = wilson(3, 5)
    # (0.6 + 1.96²/10 ± 1.96·sqrt(0.24/5 + 1.96²/100)) / (1 + 1.96²/5)
    z = 1.959963984540054
    centre = (0.6 + z * z / 10) / (1 + z * z / 5)
    half = z * math.sqrt(0.6 * 0.4 / 5 + z * z / 100) / (1 + z * z / 5)
    assert (p.value, p.low, p.high) == pytest.approx((0.6, centre - half, centre + half))
    assert (round(p.low or 0, 4), round(p.high or 0, 4)) == (0.2307, 0.8824)
    zero = wilson(0, 10)
    assert zero.low == 0.0 and round(zero.high or 0, 4) == 0.2775
    assert wilson(0, 0).value is None
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_quantiles_z_psi_ks_by_hand() -> None:
    assert quantile([100, 10, 40, 20, 30], 0.5) == 30
    assert quantile([10, 20, 30, 40, 100], 0.95) == pytest.approx(40 + 0.8 * 60)
    assert quantile([], 0.5) is None
    # 0.1 of 40 against 0.5 of 40: pooled 0.3, se sqrt(0.21 * 2 / 40)
    assert two_proportion_z(4, 40, 20, 40) == pytest.approx(-0.4 / math.sqrt(0.21 / 20))
    assert two_proportion_z(0, 10, 0, 10) is None
    assert shares([0.05, 0.15, 0.95, 1.0], [0.0, 0.5, 1.0]) == [0.5, 0.5]
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * math.log(1.8) - 0.4 * math.log(0.2))
    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_statistic([1, 2], [3, 4]) == 1.0


def test_figures_per_model_version_and_day(db: Database) -> None:
    seed_day1(db)
    add(db, "d2a", DAY2, positive=True, probability=0.8, ack_after=30)
    add(db, "d2b", DAY2, probability=0.1, ack_after=90)
    add(db, "pe1", DAY2, model="pe", version="pe-synthcnn-2.2/1", probability=0.2)
    rep = monitoring.report(db, days=7, now=NOW, baselines={})
    assert [(m.model, m.version) for m in rep.models] == [
        ("ich", "ich-synthcnn-2.0/1"),
        ("pe", "pe-synthcnn-2.2/1"),
    ]
    ich = rep.models[0]
    assert list(ich.days) == [date(2027, 3, 9), date(2027, 3, 10)]
    d1 = ich.days[date(2027, 3, 9)]
    assert (d1.analysed, d1.positive, d1.not_assessable) == (10, 4, 1)
    assert (d1.tp, d1.fp, d1.tn, d1.fn) == (3, 1, 4, 2)
    assert d1.positive_rate.value == 0.4 and d1.not_assessable_rate.value == 0.1
    sens = d1.sensitivity
    assert (sens.k, sens.n) == (3, 5)
    assert (round(sens.low or 0, 4), round(sens.high or 0, 4)) == (0.2307, 0.8824)
    assert (d1.specificity.k, d1.specificity.n) == (4, 5)
    assert (d1.ppv.k, d1.ppv.n) == (3, 4)
    assert (d1.false_alerts_per_study.k, d1.false_alerts_per_study.n) == (1, 10)
    assert d1.ack_median is None and d1.no_ack == 10
    d2 = ich.days[date(2027, 3, 10)]
    assert (d2.analysed, d2.positive, d2.judged) == (2, 1, 0)
    assert d2.sensitivity.value is None
    # ACK 30 s and 90 s after completion: median 60, p95 87
    assert (d2.ack_median, d2.ack_p95) == (60.0, pytest.approx(30 + 0.95 * 60))
    assert ich.total.analysed == 12 and ich.total.tp == 3
    assert rep.models[1].total.analysed == 1
    payload = rep.as_dict()
    assert "synthetic phantoms" in payload["notice"]
    assert payload["models"][0]["days"][0]["sensitivity"]["k"] == 3


def test_newest_finding_and_report_truth_win(db: Database) -> None:
    add(db, "s1", DAY1, positive=True, probability=0.9, truth=("radiologist", "negative"))
    with db.session() as s:  # analysed again later that day: now negative
        s.add(
            Finding(
                study_uid="s1",
                model_name="ich",
                model_version="ich-synthcnn-2.0/1",
                positive=False,
                probability=0.1,
                created_at=DAY1 + timedelta(hours=2),
            )
        )
        # the final report says positive: it outranks the radiologist's verdict
        s.add(
            Feedback(study_uid="s1", model_name="ich", source="report", truth="positive", at=DAY1)
        )
    rep = monitoring.report(db, days=7, now=NOW, baselines={})
    (ich,) = rep.models
    assert ich.total.analysed == 1
    assert (ich.total.positive, ich.total.fn, ich.total.fp) == (0, 1, 0)


def test_the_window_ignores_older_findings(db: Database) -> None:
    add(db, "old", NOW - timedelta(days=30), positive=True)
    add(db, "new", DAY2)
    rep = monitoring.report(db, days=7, now=NOW, baselines={})
    assert rep.models[0].total.analysed == 1


def _outcomes(n: int, flagged: int, *, probability: float = 0.5, **inputs: object) -> list[Outcome]:
    return [
        Outcome(
            study_uid=f"u{i}",
            model="ich",
            version="v/1",
            at=DAY2,
            status="done",
            positive=i < flagged,
            probability=probability if i < flagged else probability / 5,
            inputs=dict(inputs),
        )
        for i in range(n)
    ]


BASE = Baseline("ich", "v", "test", 40, 20, tuple([0.5] * 20 + [0.1] * 20))


def test_positive_rate_drift_fires_on_a_shift_not_on_the_baseline() -> None:
    same = positive_rate_test(_outcomes(40, 20), BASE)
    assert same.statistic == 0.0 and not same.fired
    shifted = positive_rate_test(_outcomes(40, 4), BASE)
    assert shifted.statistic == pytest.approx(-0.4 / math.sqrt(0.21 / 20)) and shifted.fired
    few = positive_rate_test(_outcomes(MIN_STUDIES - 1, 0), BASE)
    assert not few.fired and few.note == "too few studies"
    assert not positive_rate_test(_outcomes(40, 4), None).fired


def test_score_drift_fires_when_probabilities_move() -> None:
    assert not score_test(_outcomes(40, 20), BASE).fired  # the baseline's own distribution
    moved = score_test(_outcomes(40, 20, probability=0.95), BASE)
    assert moved.fired and (moved.statistic or 0) >= 0.25


def test_input_mix_drift_against_the_sites_earlier_studies() -> None:
    before = _outcomes(30, 5, kernel="H30s", thickness_mm=5.0, tissue_hu=31.0)
    same = _outcomes(30, 5, kernel="H30s", thickness_mm=5.0, tissue_hu=31.0)
    assert not any(t.fired for t in input_tests(same, before))
    changed = _outcomes(30, 5, kernel="Br64", thickness_mm=0.6, tissue_hu=38.5)
    fired = {t.name for t in input_tests(changed, before) if t.fired}
    assert fired == {"input:kernel", "input:thickness_mm", "input:tissue_hu"}


def test_report_drift_uses_the_validation_baseline_of_the_version(db: Database) -> None:
    for i in range(30):  # 30 recent ich studies, none flagged, against 20 of 40 in validation
        add(db, f"r{i}", DAY2, probability=0.05)
    rep = monitoring.report(db, days=7, now=NOW, baselines={("ich", "v"): BASE})
    assert rep.drift[0].baseline is None  # version ich-synthcnn-2.0/1 has no baseline here
    rep = monitoring.report(db, days=7, now=NOW, baselines={("ich", "ich-synthcnn-2.0"): BASE})
    (d,) = rep.drift
    assert d.fired and {t.name for t in d.tests if t.fired} == {"positive_rate", "score_psi"}


def test_validation_baselines_are_read_from_heldout_then_stress(tmp_path: Path) -> None:
    real = load_baselines()  # docs/models as shipped
    assert all(b.n > 0 and b.probabilities for b in real.values())
    assert base_version("ich-synthcnn-2.0/1") == "ich-synthcnn-2.0"
    heldout = {
        "date": "2027-01-01",
        "results": [
            {
                "summary": {"task": "ich", "model_version": "ich-x"},
                "studies": [
                    {"status": "done", "probability": 0.9, "positive": True},
                    {"status": "done", "probability": 0.1, "positive": False},
                    {"status": "not_assessable", "probability": None, "positive": False},
                ],
            }
        ],
    }
    stress = {
        "results": [
            {
                "task": "ich",
                "model_version": "ich-x",
                "threshold": 0.5,
                "probabilities": {"none": [0.9]},
            },
            {
                "task": "pe",
                "model_version": "pe-x",
                "threshold": 0.5,
                "probabilities": {"none": [0.9, 0.2]},
            },
        ]
    }
    (tmp_path / "heldout.json").write_text(json.dumps(heldout))
    (tmp_path / "stress.json").write_text(json.dumps(stress))
    got = load_baselines(tmp_path)
    ich, pe = got[("ich", "ich-x")], got[("pe", "pe-x")]
    assert (ich.n, ich.flagged, ich.probabilities, ich.source) == (
        3,
        1,
        (0.9, 0.1),
        "heldout.json 2027-01-01",
    )
    assert (pe.n, pe.flagged) == (2, 1)
    assert load_baselines(tmp_path / "missing") == {}
