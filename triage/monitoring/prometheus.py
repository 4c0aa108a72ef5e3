"""The monitoring figures in the Prometheus text exposition format (version 0.0.4).

Written by hand: a few dozen lines of ``# HELP`` / ``# TYPE`` and ``name{labels} value``, with
label values escaped (backslash, double quote, newline). Every AI metric carries ``model`` and
``version`` labels; the window figures also ``window`` (e.g. ``28d``). A figure that cannot be
computed (no studies, no known truth) is left out rather than written as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func
from sqlmodel import select

from triage.monitoring import Report
from triage.monitoring.stats import Proportion
from triage.store import Database
from triage.store.models import DicomAssociation, Finding, OutboundMessage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NOTICE = "models trained on synthetic phantoms; not for clinical use"


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Exposition:
    """Collects metric families, each with HELP, TYPE and samples, in the order added."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(
        self,
        name: str,
        kind: str,
        text: str,
        value: float | None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        family = self._families.setdefault(name, (kind, text, []))
        if value is None:
            return
        body = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in (labels or {}).items())
        family[2].append(
            f"{name}{{{body}}} {_number(value)}" if body else f"{name} {_number(value)}"
        )

    def text(self) -> str:
        lines: list[str] = []
        for name, (kind, text, samples) in self._families.items():
            lines.append(f"# HELP {name} {_escape_help(text)}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)
        return "\n".join(lines) + "\n"


def _proportion(
    out: Exposition, name: str, text: str, p: Proportion, labels: Mapping[str, str]
) -> None:
    out.add(name, "gauge", text, p.value, labels)
    out.add(f"{name}_ci_low", "gauge", f"{text}: 95% Wilson interval, lower bound", p.low, labels)
    out.add(f"{name}_ci_high", "gauge", f"{text}: 95% Wilson interval, upper bound", p.high, labels)


def render(rep: Report, db: Database | None = None, health: Mapping[str, Any] | None = None) -> str:
    """The exposition text: the report's figures and drift tests, the findings counted since
    the database began, and (with ``db`` / ``health``) the integration counters."""
    out = Exposition()
    out.add(
        "triage_ai_notice", "gauge", "The AI models' disclaimer (always 1)", 1, {"notice": NOTICE}
    )
    days = max(1, round((rep.until - rep.since).total_seconds() / 86400))
    win = f"{days}d"
    for m in rep.models:
        t = m.total
        lab = {"model": m.model, "version": m.version, "window": win}
        out.add(
            "triage_ai_studies_analysed",
            "gauge",
            f"Studies analysed in the window (newest result per study; {NOTICE})",
            t.analysed,
            lab,
        )
        _proportion(
            out,
            "triage_ai_positive_rate",
            "Share of analysed studies flagged positive",
            t.positive_rate,
            lab,
        )
        _proportion(
            out,
            "triage_ai_not_assessable_rate",
            "Share of analysed studies not assessable",
            t.not_assessable_rate,
            lab,
        )
        for q, value in (("0.5", t.ack_median), ("0.95", t.ack_p95)):
            out.add(
                "triage_ai_complete_to_ris_ack_seconds",
                "gauge",
                "Seconds from study complete to the first RIS ACK (quantiles over the window)",
                value,
                {**lab, "quantile": q},
            )
        out.add(
            "triage_ai_judged_studies",
            "gauge",
            "Studies with a known truth (final report or radiologist)",
            t.judged,
            lab,
        )
        _proportion(
            out,
            "triage_ai_sensitivity",
            "Sensitivity against final reports and radiologist feedback",
            t.sensitivity,
            lab,
        )
        _proportion(
            out,
            "triage_ai_specificity",
            "Specificity against final reports and radiologist feedback",
            t.specificity,
            lab,
        )
        _proportion(
            out,
            "triage_ai_ppv",
            "Positive predictive value against final reports and radiologist feedback",
            t.ppv,
            lab,
        )
        _proportion(
            out,
            "triage_ai_false_alerts_per_study",
            "False alerts per study with a known truth",
            t.false_alerts_per_study,
            lab,
        )
    for d in rep.drift:
        for test in d.tests:
            lab = {"model": d.model, "version": d.version, "test": test.name}
            out.add(
                "triage_ai_drift_statistic",
                "gauge",
                "Drift test statistic over the recent days (z for positive_rate, PSI otherwise)",
                test.statistic,
                lab,
            )
            out.add(
                "triage_ai_drift_threshold",
                "gauge",
                "The statistic at which a drift test fires",
                test.threshold,
                lab,
            )
            out.add(
                "triage_ai_drift_alert",
                "gauge",
                "1 when the drift test fires",
                1 if test.fired else 0,
                lab,
            )
    if db is not None:
        _store_counters(out, db)
    if health is not None:
        _health(out, health)
    return out.text()


def _store_counters(out: Exposition, db: Database) -> None:
    with db.session() as s:
        findings = s.exec(
            select(
                Finding.model_name, Finding.model_version, Finding.status, func.count()
            ).group_by(Finding.model_name, Finding.model_version, Finding.status)
        ).all()
        outbox = s.exec(
            select(OutboundMessage.status, func.count()).group_by(OutboundMessage.status)
        ).all()
        assoc = s.exec(
            select(
                DicomAssociation.outcome,
                func.count(),
                func.sum(DicomAssociation.stored),
                func.sum(DicomAssociation.refused),
            ).group_by(DicomAssociation.outcome)
        ).all()
    for model, version, status, n in findings:
        out.add(
            "triage_ai_findings_total",
            "counter",
            f"AI results stored since the database began ({NOTICE})",
            int(n),
            {"model": model, "version": version, "status": status},
        )
    for status, n in outbox:
        out.add(
            "triage_outbox_messages",
            "gauge",
            "Messages to the RIS by state (dead letters: rejected, dead)",
            int(n),
            {"status": status},
        )
    for outcome, n, stored, refused in assoc:
        lab = {"outcome": outcome}
        out.add(
            "triage_dicom_associations_total",
            "counter",
            "DICOM associations ended, by how they ended",
            int(n),
            lab,
        )
        out.add(
            "triage_dicom_instances_stored_total",
            "counter",
            "Instances stored, by how their association ended",
            int(stored or 0),
            lab,
        )
        out.add(
            "triage_dicom_instances_refused_total",
            "counter",
            "C-STOREs refused with a failure status",
            int(refused or 0),
            lab,
        )


def _health(out: Exposition, health: Mapping[str, Any]) -> None:
    for name, part in sorted(health.items()):
        if not isinstance(part, Mapping):
            continue
        out.add(
            "triage_component_ready",
            "gauge",
            "1 when the component is ready (/healthz)",
            1 if part.get("ready") else 0,
            {"component": name},
        )
        counters = part.get("counters")
        if isinstance(counters, Mapping):
            for event, n in sorted(counters.items()):
                if isinstance(n, int | float):
                    out.add(
                        "triage_dicom_protocol_events_total",
                        "counter",
                        "DICOM protocol events since the engine started",
                        n,
                        {"event": str(event)},
                    )


def families(text: str) -> Iterable[str]:
    """The metric family names of an exposition (for tests and docs)."""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            yield line.split()[2]
