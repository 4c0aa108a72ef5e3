"""Scoring benchmark: re-scoring 10,000 open studies, measured side by side in one run.

    .venv/bin/python benchmarks/bench_scoring.py              # 10,000 studies, best of 5
    .venv/bin/python benchmarks/bench_scoring.py -n 20000 --repeat 3

What it measures:

- ``pure``: :func:`triage.scoring.score_study` (the plain function, no I/O) over ``-n``
  generated inputs with the shipped rules/urgency.yaml: a mix of ordered priorities, patient
  classes, ICU/stroke/ward locations, positive/negative/not-assessable/pending findings, waits
  around their reading targets and order fields the rules test. Each call builds its reasons.
  Target: under 200 ms for 10,000.
- ``floor``: the same inputs through the bare arithmetic of the score (base + class +
  points x probability, no reasons, no rules, no aging): what any scoring costs in Python.
- ``pass``: the pipeline's scheduled re-score (:meth:`triage.pipeline.Pipeline.rescore_open`)
  against a SQLite store (on disk, in a temporary folder) holding ``-n`` open studies with
  their orders and findings: two queries (only the columns scoring needs, read from the
  sqlite3 cursor), the score of every study through the pass's memo (a study whose inputs are
  those of the last pass costs only its aging term; the result is always ``score_study``'s),
  and the writes of the studies whose score or reasons changed (one executemany UPDATE;
  through the ORM only those whose priority changes), in one transaction, and the ORM/ORU
  messages queued for the studies whose priority rose (no RIS configured: they are stored,
  not sent). Measured four ways: ``first`` (the store was scored 50 minutes earlier: most
  studies change and many rise, so the HL7 messages built for the RIS dominate), ``idle`` (a
  second pass at the same time: nothing changes, nothing is written), ``aging`` (one minute
  later: the late studies' waits change; capped ones rise no more), ``cold`` (an idle pass
  of a new pipeline, its memo empty: what the pass costs after a restart or a rules change,
  when every study is scored in full).

The machine's load average is printed first: the figures move with it.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from triage.scoring import FindingInput, load_urgency_rules, score_study  # noqa: E402

RULES = ROOT / "rules" / "urgency.yaml"
PRIORITIES = ["R"] * 6 + ["A", "S", "P", "C", "T", ""]
CLASSES = ["E", "E", "I", "I", "O", "O", "O", ""]
LOCATIONS = ["", "", "WARD3^12", "ICU^4^B", "STROKE^1", "ED^BAY2"]
PROCEDURES = ["CT HEAD WO CONTRAST", "CT HEAD TRAUMA", "CT CHEST CTPA", "MR BRAIN"]


def inputs(n: int, seed: int = 15) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        findings: list[FindingInput] = []
        kind = rnd.random()
        model = rnd.choice(["ich", "pe"])
        if kind < 0.55:
            p = rnd.random()
            findings.append(FindingInput(model, "done", p, p >= 0.6, 0.6, "3"))
        elif kind < 0.65:
            findings.append(FindingInput(model, "not_assessable", detail="too few slices (3)"))
        out.append(
            {
                "ordered_priority": rnd.choice(PRIORITIES),
                "patient_class": rnd.choice(CLASSES),
                "findings": findings,
                "ai_pending": 0.65 <= kind < 0.7,
                "location": rnd.choice(LOCATIONS),
                "waiting_minutes": rnd.uniform(0, 600),
                "fields": {
                    "order.procedure_text": rnd.choice(PROCEDURES),
                    "order.ordering_location": rnd.choice(LOCATIONS),
                    "study.modality": rnd.choice(["CT", "CT", "MR"]),
                },
            }
        )
    return out


def floor(rules, items: list[dict]) -> None:
    for it in items:
        s = rules.level(it["ordered_priority"]).base
        cls = rules.patient_class.get(it["patient_class"]) or rules.unknown_class
        s += cls.points
        for f in it["findings"]:
            w = rules.findings.get(f.model)
            if w is not None and f.positive and f.probability is not None:
                s += w.points * f.probability
        min(100.0, round(s, 1))


def best_of(repeat: int, fn) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def bench_pure(n: int, repeat: int) -> float:
    rules = load_urgency_rules(RULES)
    items = inputs(n)
    pure, pure_med = best_of(repeat, lambda: [score_study(rules, **it) for it in items])
    bare, bare_med = best_of(repeat, lambda: floor(rules, items))
    print(
        f"pure   score_study x {n:,}: best {pure * 1e3:7.1f} ms, median {pure_med * 1e3:7.1f} ms"
        f"  ({pure / n * 1e6:.1f} us/study; target < 200 ms for 10,000)"
    )
    print(
        f"floor  bare arithmetic x {n:,}: best {bare * 1e3:7.1f} ms, "
        f"median {bare_med * 1e3:7.1f} ms"
        f"  (pure / floor = {pure / bare:.1f}x)"
    )
    return pure


def bench_pass(n: int, pure: float) -> None:
    from sqlmodel import select

    from triage.completion import CompletionPolicy
    from triage.config import load_settings
    from triage.outbound import RISNotifier
    from triage.pipeline import Pipeline
    from triage.routing import load_routing_rules
    from triage.scoring import Cause
    from triage.store import Database, Finding, Order, OutboundMessage, Study, StudyState

    rnd = random.Random(16)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(environ={"TRIAGE_DATA_DIR": tmp})
        db = Database(settings.resolved_database_url)
        db.create_all()
        t0 = datetime.now(UTC) - timedelta(hours=6)
        t = time.perf_counter()
        with db.session() as s:
            orders = []
            for i in range(n):
                orders.append(
                    Order(
                        accession_number=f"ACC{i}",
                        ordered_priority=rnd.choice(PRIORITIES),
                        patient_class=rnd.choice(CLASSES),
                        ordering_location=rnd.choice(LOCATIONS),
                        procedure_text=rnd.choice(PROCEDURES),
                        patient_id=f"P{i}",
                    )
                )
            s.add_all(orders)
            s.flush()
            for i, o in enumerate(orders):
                done = t0 + timedelta(minutes=rnd.uniform(0, 300))
                s.add(
                    Study(
                        study_uid=f"1.2.826.0.1.{i}",
                        accession_number=o.accession_number,
                        patient_id=o.patient_id,
                        modality="CT",
                        state=StudyState.SCORED,
                        completed_at=done,
                        ordered_priority=o.ordered_priority,
                        patient_class=o.patient_class,
                        order_id=o.id,
                        order_link="accession",
                    )
                )
                if rnd.random() < 0.6:
                    p = rnd.random()
                    s.add(
                        Finding(
                            study_uid=f"1.2.826.0.1.{i}",
                            model_name=rnd.choice(["ich", "pe"]),
                            model_version="3",
                            probability=p,
                            positive=p >= 0.6,
                            threshold=0.6,
                        )
                    )
        print(
            f"store  {n:,} open studies with orders and findings written in "
            f"{time.perf_counter() - t:.1f} s (SQLite, {tmp})"
        )
        routing = load_routing_rules(ROOT / "rules" / "routing.yaml")
        clock_now = [datetime.now(UTC) - timedelta(minutes=50)]
        pipeline = Pipeline(
            db,
            routing,
            load_urgency_rules(RULES),
            None,
            RISNotifier(settings, db),  # no RIS configured: raises are stored as skipped
            completion=CompletionPolicy(
                stable_seconds_for=settings.stable_seconds_for,
                shortest_seconds=10,
                expected_series_quiet_seconds=2,
            ),
            retry_seconds=15,
            match_window_hours=24,
            clock=lambda: clock_now[0],
        )
        pipeline.rescore_open(Cause.COMPLETED)  # as scored 50 minutes ago
        clock_now[0] += timedelta(minutes=50)
        cold = Pipeline(
            db,
            routing,
            load_urgency_rules(RULES),
            None,
            RISNotifier(settings, db),
            completion=pipeline.completion,
            retry_seconds=15,
            match_window_hours=24,
            clock=lambda: clock_now[0],
        )
        for label in ("first", "idle", "aging", "cold"):
            if label == "aging":
                clock_now[0] += timedelta(minutes=1)
            elif label == "cold":
                pipeline = cold  # nothing changed since the last pass; nothing remembered
            with db.session() as s:
                before = len(s.exec(select(OutboundMessage.id)).all())
            t = time.perf_counter()
            changed = pipeline.rescore_open(Cause.AGING)
            dt = time.perf_counter() - t
            with db.session() as s:
                queued = len(s.exec(select(OutboundMessage.id)).all()) - before
            print(
                f"pass   re-score of {n:,} open studies ({label:5}): {dt * 1e3:7.0f} ms "
                f"({dt / pure:.1f}x pure; target < 200 ms), "
                f"{changed:,} changed and written, {queued:,} HL7 messages queued for the RIS"
            )
        db.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=10_000, help="studies (default 10,000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs of the pure function (best of)")
    ap.add_argument("--no-store", action="store_true", help="skip the pipeline pass")
    args = ap.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load   average {load} (1, 5, 15 min) on {os.cpu_count()} CPUs")
    pure = bench_pure(args.n, args.repeat)
    if not args.no_store:
        bench_pass(args.n, pure)


if __name__ == "__main__":
    main()
