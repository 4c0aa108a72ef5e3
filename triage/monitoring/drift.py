"""Drift: is a model version seeing something other than what it was validated on?

**The validation baseline** of a model version is its held-out validation run
(``docs/models/heldout.json``: every held-out study's status, probability and flag), else the
stress suite's unperturbed row (``docs/models/stress.json``: the probabilities of the
``none`` perturbation and the operating point). A Finding's version ``ich-synthcnn-2.0/1``
(contract version / Triton version) matches the baseline of ``ich-synthcnn-2.0``.

Three tests over the recent window (the last :data:`RECENT_DAYS` days by default), each with
a documented threshold (docs/monitoring.md):

- **positive rate**: two-proportion z-test of the recent flags (positive / analysed) against
  the validation flags; fires when ``|z| >= Z_ALERT`` (3.0: two-sided p about 0.003);
- **score distribution**: population stability index (PSI) of the recent probabilities
  against the validation probabilities over ten equal bins of [0, 1]; fires when
  ``PSI >= PSI_ALERT`` (0.25, the usual "significant shift"). The KS statistic is shown
  beside it;
- **input mix**: the stored inputs of each analysed study (``Finding.inputs``: manufacturer
  and scanner model, kernel, slice thickness, the reference tissue's median HU). The
  validation phantoms come from one synthetic scanner, so the mix is compared with this
  site's own earlier studies of the same version (the window before the recent days): PSI
  per feature (categories, or fixed bins for thickness and HU); fires when a feature's PSI
  reaches ``PSI_ALERT``.

Each needs at least :data:`MIN_STUDIES` recent studies (and reference studies, for the mix):
below that the test reports "too few studies" and never fires.

Caveat, said on the page too: the validation sets are enriched (30-50 % positive phantoms),
so a site whose prevalence differs shows a positive-rate and score shift against them that is
a difference of case mix as much as of model behaviour; the signal says "not like
validation", and a person looks. The models are trained on synthetic phantoms.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from triage.monitoring.figures import ModelFigures, Outcome
from triage.monitoring.stats import (
    category_shares,
    ks_statistic,
    psi,
    shares,
    two_proportion_z,
)

REPO = Path(__file__).resolve().parents[2]
VALIDATION_DIR = REPO / "docs" / "models"

Z_ALERT = 3.0
PSI_ALERT = 0.25
MIN_STUDIES = 20
RECENT_DAYS = 7
SCORE_EDGES = [i / 10 for i in range(11)]
THICKNESS_EDGES = [0.0, 1.0, 1.5, 2.5, 3.5, 5.5, 8.0, 100.0]
TISSUE_HU_EDGES = [-1000.0, 20.0, 25.0, 28.0, 31.0, 34.0, 37.0, 40.0, 50.0, 3000.0]
CATEGORY_FEATURES = ("scanner", "kernel")


@dataclass(frozen=True)
class Baseline:
    """A model version's validation figures: how many studies, how many it flagged, the
    probabilities it gave."""

    task: str
    version: str
    source: str  # file and date
    n: int
    flagged: int
    probabilities: tuple[float, ...]

    @property
    def positive_rate(self) -> float:
        return self.flagged / self.n if self.n else 0.0


def base_version(version: str) -> str:
    """``ich-synthcnn-2.0/1`` -> ``ich-synthcnn-2.0`` (the contract version)."""
    return version.split("/", 1)[0]


def load_baselines(folder: Path = VALIDATION_DIR) -> dict[tuple[str, str], Baseline]:
    """(task, version) -> baseline, from ``heldout.json`` first, then ``stress.json``;
    missing or unreadable files give nothing (the page says there is no baseline)."""
    out: dict[tuple[str, str], Baseline] = {}
    for name in ("heldout.json", "stress.json"):
        try:
            doc = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        date_ = str(doc.get("date", "")) if isinstance(doc, dict) else ""
        results = doc.get("results", []) if isinstance(doc, dict) else []
        for r in results if isinstance(results, list) else []:
            b = _baseline(r, f"{name} {date_}".strip())
            if b is not None:
                out.setdefault((b.task, b.version), b)
    return out


def _baseline(r: Any, source: str) -> Baseline | None:
    if not isinstance(r, dict):
        return None
    try:
        if "summary" in r and "studies" in r:  # heldout.json
            s = r["summary"]
            studies = [x for x in r["studies"] if isinstance(x, dict)]
            probs = tuple(
                float(x["probability"])
                for x in studies
                if x.get("status") == "done" and x.get("probability") is not None
            )
            flagged = sum(1 for x in studies if x.get("status") == "done" and x.get("positive"))
            return Baseline(
                str(s["task"]), str(s["model_version"]), source, len(studies), flagged, probs
            )
        probs_all = r.get("probabilities", {})
        none = probs_all.get("none") if isinstance(probs_all, dict) else None
        if none is None:
            return None
        threshold = float(r["threshold"])
        probs = tuple(float(p) for p in none)
        return Baseline(
            str(r["task"]),
            str(r["model_version"]),
            source,
            len(probs),
            sum(1 for p in probs if p >= threshold),
            probs,
        )
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Test:
    """One drift test's result."""

    name: str  # positive_rate, score_psi, input:<feature>
    statistic: float | None  # z, or PSI
    threshold: float
    fired: bool
    n: int  # recent studies
    reference_n: int  # baseline (validation) or reference (site) studies
    note: str = ""
    extra: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "fired": self.fired,
            "n": self.n,
            "reference_n": self.reference_n,
            "note": self.note,
            **self.extra,
        }


@dataclass(frozen=True)
class Drift:
    model: str
    version: str
    baseline: Baseline | None
    since: date  # first day of the recent window
    tests: tuple[Test, ...]

    @property
    def fired(self) -> bool:
        return any(t.fired for t in self.tests)

    def as_dict(self) -> dict[str, Any]:
        b = self.baseline
        return {
            "model": self.model,
            "version": self.version,
            "fired": self.fired,
            "recent_since": self.since.isoformat(),
            "baseline": None
            if b is None
            else {"source": b.source, "n": b.n, "positive_rate": b.positive_rate},
            "tests": [t.as_dict() for t in self.tests],
        }


def positive_rate_test(recent: Sequence[Outcome], baseline: Baseline | None) -> Test:
    n = len(recent)
    k = sum(1 for o in recent if o.flagged)
    if baseline is None:
        return Test("positive_rate", None, Z_ALERT, False, n, 0, "no validation baseline")
    if n < MIN_STUDIES:
        return Test("positive_rate", None, Z_ALERT, False, n, baseline.n, "too few studies")
    z = two_proportion_z(k, n, baseline.flagged, baseline.n)
    fired = z is not None and abs(z) >= Z_ALERT
    return Test(
        "positive_rate",
        z,
        Z_ALERT,
        fired,
        n,
        baseline.n,
        extra={"recent_rate": k / n, "baseline_rate": baseline.positive_rate},
    )


def score_test(recent: Sequence[Outcome], baseline: Baseline | None) -> Test:
    probs = [o.probability for o in recent if o.status == "done" and o.probability is not None]
    if baseline is None or not baseline.probabilities:
        return Test("score_psi", None, PSI_ALERT, False, len(probs), 0, "no validation baseline")
    ref = baseline.probabilities
    if len(probs) < MIN_STUDIES:
        return Test("score_psi", None, PSI_ALERT, False, len(probs), len(ref), "too few studies")
    value = psi(shares(ref, SCORE_EDGES), shares(probs, SCORE_EDGES))
    return Test(
        "score_psi",
        value,
        PSI_ALERT,
        value is not None and value >= PSI_ALERT,
        len(probs),
        len(ref),
        extra={"ks": ks_statistic(probs, list(ref))},
    )


def _feature(o: Outcome, name: str) -> Any:
    if name == "scanner":
        man, model = o.inputs.get("manufacturer"), o.inputs.get("scanner")
        return f"{man or '?'} {model or '?'}" if (man or model) else None
    return o.inputs.get(name)


def input_tests(recent: Sequence[Outcome], reference: Sequence[Outcome]) -> list[Test]:
    tests: list[Test] = []
    for name in (*CATEGORY_FEATURES, "thickness_mm", "tissue_hu"):
        now = [v for v in (_feature(o, name) for o in recent) if v is not None]
        ref = [v for v in (_feature(o, name) for o in reference) if v is not None]
        label = f"input:{name}"
        if len(now) < MIN_STUDIES or len(ref) < MIN_STUDIES:
            tests.append(Test(label, None, PSI_ALERT, False, len(now), len(ref), "too few studies"))
            continue
        if name in CATEGORY_FEATURES:
            cats = sorted({str(v) for v in [*now, *ref]})
            value = psi(
                category_shares([str(v) for v in ref], cats),
                category_shares([str(v) for v in now], cats),
            )
            extra: dict[str, float | None] = {}
        else:
            edges = THICKNESS_EDGES if name == "thickness_mm" else TISSUE_HU_EDGES
            xs, rs = [float(v) for v in now], [float(v) for v in ref]
            value = psi(shares(rs, edges), shares(xs, edges))
            extra = {"ks": ks_statistic(xs, rs)}
        tests.append(
            Test(
                label,
                value,
                PSI_ALERT,
                value is not None and value >= PSI_ALERT,
                len(now),
                len(ref),
                "against this site's earlier studies",
                extra,
            )
        )
    return tests


def drift(
    groups: Iterable[ModelFigures],
    baselines: dict[tuple[str, str], Baseline],
    today: date,
    recent_days: int = RECENT_DAYS,
) -> list[Drift]:
    """The drift tests of each model version: its outcomes of the last ``recent_days`` days
    (to ``today`` included) against its validation baseline, and its input mix against its
    earlier outcomes in the window."""
    since = today - timedelta(days=recent_days - 1)
    out: list[Drift] = []
    for g in groups:
        recent = [o for o in g.outcomes if o.day >= since]
        earlier = [o for o in g.outcomes if o.day < since]
        baseline = baselines.get((g.model, base_version(g.version)))
        tests = (
            positive_rate_test(recent, baseline),
            score_test(recent, baseline),
            *input_tests(recent, earlier),
        )
        out.append(Drift(g.model, g.version, baseline, since, tests))
    return out
