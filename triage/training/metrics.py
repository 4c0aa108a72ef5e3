"""Classification metrics for the validation report (numpy only): ROC and AUC with a
bootstrap interval, operating-point statistics, PPV at a given prevalence, calibration."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


def roc_curve(prob: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) from (0, 0) to (1, 1), one point per
    distinct score."""
    y = np.asarray(labels) > 0.5
    p = np.asarray(prob, dtype=np.float64)
    order = np.argsort(-p, kind="mergesort")
    p, y = p[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(p)), p.size - 1]
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(~y)[distinct]
    tpr = np.r_[0.0, tp / max(int(y.sum()), 1)]
    fpr = np.r_[0.0, fp / max(int((~y).sum()), 1)]
    return fpr, tpr


def auc(prob: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half)."""
    y = np.asarray(labels) > 0.5
    p = np.asarray(prob, dtype=np.float64)
    pos, neg = p[y], p[~y]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    ranks = _ranks(np.r_[pos, neg])
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def _ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.arange(1, a.size + 1)
    # average ranks of ties
    sorted_a = a[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_a)) + 1]
    ends = np.r_[starts[1:], a.size]
    for s, e in zip(starts, ends, strict=True):
        if e - s > 1:
            ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def auc_ci(
    prob: np.ndarray, labels: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC (studies resampled with replacement)."""
    rng = np.random.default_rng(seed)
    n = len(prob)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        a = auc(prob[idx], labels[idx])
        if np.isfinite(a):
            values.append(a)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def specificity(self) -> float:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")

    @property
    def fp_per_study(self) -> float:
        n = self.tp + self.fp + self.tn + self.fn
        return self.fp / n if n else float("nan")

    def ppv_at(self, prevalence: float) -> float:
        """Positive predictive value at ``prevalence`` (Bayes, from sensitivity/specificity)."""
        se, sp = self.sensitivity, self.specificity
        num = se * prevalence
        den = num + (1.0 - sp) * (1.0 - prevalence)
        return num / den if den > 0 else float("nan")


def operating_point(prob: np.ndarray, labels: np.ndarray, threshold: float) -> OperatingPoint:
    y = np.asarray(labels) > 0.5
    flag = np.asarray(prob) >= threshold
    return OperatingPoint(
        threshold=threshold,
        tp=int((flag & y).sum()),
        fp=int((flag & ~y).sum()),
        tn=int((~flag & ~y).sum()),
        fn=int((~flag & y).sum()),
    )


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return float(c - h), float(c + h)


def calibration(
    prob: np.ndarray,
    labels: np.ndarray,
    edges: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
) -> list[tuple[float, float, int, float, float]]:
    """Rows (bin low, bin high, studies, mean predicted, observed positive fraction)."""
    rows = []
    p = np.asarray(prob)
    y = np.asarray(labels) > 0.5
    for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
        sel = (p >= lo) & ((p < hi) if i < len(edges) - 2 else (p <= hi))
        n = int(sel.sum())
        rows.append(
            (
                lo,
                hi,
                n,
                float(p[sel].mean()) if n else float("nan"),
                float(y[sel].mean()) if n else float("nan"),
            )
        )
    return rows


def reliability(
    prob: np.ndarray, labels: np.ndarray, bins: int = 10
) -> list[tuple[float, float, int, float, float]]:
    """Reliability-diagram rows over ``bins`` equal-width bins of [0, 1] (the last one closed):
    (bin low, bin high, studies, mean predicted, observed positive fraction)."""
    edges = tuple(float(v) for v in np.linspace(0.0, 1.0, bins + 1))
    return calibration(prob, labels, edges)


def ece(prob: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: over equal-width bins, the study-weighted mean of
    |mean predicted - observed positive fraction| (0: perfectly calibrated)."""
    n = len(prob)
    if n == 0:
        return float("nan")
    total = 0.0
    for _, _, k, mean_p, observed in reliability(prob, labels, bins):
        if k:
            total += k / n * abs(mean_p - observed)
    return float(total)
