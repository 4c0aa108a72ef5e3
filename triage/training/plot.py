"""ROC plot as a PNG without a plotting library: axes, grid, chance diagonal, the curve and
the operating point, drawn into a numpy canvas (labels are in the Markdown report)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from triage.training.png import write_png

SIZE = 420
MARGIN = 30


def _line(
    img: np.ndarray,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    colour: tuple[int, int, int],
    width: int = 1,
) -> None:
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.linspace(x0, x1, n).round().astype(int)
    ys = np.linspace(y0, y1, n).round().astype(int)
    for dx in range(-(width // 2), width - width // 2):
        for dy in range(-(width // 2), width - width // 2):
            xx = np.clip(xs + dx, 0, img.shape[1] - 1)
            yy = np.clip(ys + dy, 0, img.shape[0] - 1)
            img[yy, xx] = colour


def roc_png(
    path: Path,
    curves: list[tuple[np.ndarray, np.ndarray, tuple[int, int, int]]],
    points: list[tuple[float, float, tuple[int, int, int]]] = (),  # type: ignore[assignment]
) -> Path:
    """ROC curves (fpr, tpr, colour) and operating points (fpr, tpr, colour) as a PNG."""
    img = np.full((SIZE, SIZE, 3), 255, dtype=np.uint8)
    span = SIZE - 2 * MARGIN

    def px(fpr: float, tpr: float) -> tuple[float, float]:
        return MARGIN + fpr * span, SIZE - MARGIN - tpr * span

    for k in range(11):  # grid every 0.1
        v = k / 10
        _line(img, *px(v, 0), *px(v, 1), (225, 225, 225))
        _line(img, *px(0, v), *px(1, v), (225, 225, 225))
    _line(img, *px(0, 0), *px(1, 1), (170, 170, 170))  # chance
    for a, b, c, d in ((0, 0, 1, 0), (0, 0, 0, 1), (1, 0, 1, 1), (0, 1, 1, 1)):
        _line(img, *px(a, b), *px(c, d), (0, 0, 0), 2)
    for fpr, tpr, colour in curves:
        for i in range(len(fpr) - 1):  # step curve: horizontal then vertical
            _line(img, *px(fpr[i], tpr[i]), *px(fpr[i + 1], tpr[i]), colour, 3)
            _line(img, *px(fpr[i + 1], tpr[i]), *px(fpr[i + 1], tpr[i + 1]), colour, 3)
    for fx, ty, colour in points:
        cx, cy = px(fx, ty)
        yy, xx = np.ogrid[:SIZE, :SIZE]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = colour
    return write_png(path, img)


def _frame(img: np.ndarray, grid: int = 10) -> None:
    span = SIZE - 2 * MARGIN
    for k in range(grid + 1):
        v = MARGIN + k / grid * span
        _line(img, v, MARGIN, v, SIZE - MARGIN, (225, 225, 225))
        _line(img, MARGIN, v, SIZE - MARGIN, v, (225, 225, 225))
    lo, hi = MARGIN, SIZE - MARGIN
    for a, b, c, d in ((lo, lo, hi, lo), (lo, hi, hi, hi), (lo, lo, lo, hi), (hi, lo, hi, hi)):
        _line(img, a, b, c, d, (0, 0, 0), 2)


def _dot(img: np.ndarray, cx: float, cy: float, colour: tuple[int, int, int], r2: int) -> None:
    yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r2] = colour


def reliability_png(
    path: Path,
    curves: list[tuple[list[tuple[float, float, int, float, float]], tuple[int, int, int]]],
) -> Path:
    """Reliability diagram: x = mean predicted probability, y = observed positive fraction,
    per bin of :func:`~triage.training.metrics.reliability` (grey diagonal: perfect
    calibration); per curve a line through its non-empty bins and a dot whose area grows
    with the bin's studies. Light bars: the bins' extents along x at the observed fraction."""
    img = np.full((SIZE, SIZE, 3), 255, dtype=np.uint8)
    span = SIZE - 2 * MARGIN

    def px(x: float, y: float) -> tuple[float, float]:
        return MARGIN + x * span, SIZE - MARGIN - y * span

    _frame(img)
    _line(img, *px(0, 0), *px(1, 1), (170, 170, 170))
    for rows, colour in curves:
        light = tuple(int(255 - (255 - c) * 0.35) for c in colour)
        total = max(sum(r[2] for r in rows), 1)
        pts = []
        for lo, hi, n, mean_p, observed in rows:
            if not n:
                continue
            _line(img, *px(lo, observed), *px(hi, observed), light, 3)  # type: ignore[arg-type]
            pts.append((mean_p, observed, n))
        for (x0, y0, _), (x1, y1, _) in itertools.pairwise(pts):
            _line(img, *px(x0, y0), *px(x1, y1), colour, 2)
        for x, y, n in pts:
            _dot(img, *px(x, y), colour, int(9 + 60 * n / total))
    return write_png(path, img)


def bars_png(
    path: Path,
    groups: list[list[float]],
    colours: list[tuple[int, int, int]],
    target: float | None = None,
) -> Path:
    """Grouped bars in [0, 1]: ``groups[i][j]`` is the j-th bar (colour ``colours[j]``) of the
    i-th group, left to right; a horizontal red line at ``target``; gridlines every 0.1. NaN
    bars are left out. Group names belong in the report's table, in the same order."""
    width = max(SIZE, 2 * MARGIN + 18 * len(groups) * max(1, len(colours)))
    img = np.full((SIZE, width, 3), 255, dtype=np.uint8)
    span_y = SIZE - 2 * MARGIN
    span_x = width - 2 * MARGIN
    for k in range(11):
        y = SIZE - MARGIN - k / 10 * span_y
        _line(img, MARGIN, y, width - MARGIN, y, (225, 225, 225))
    slot = span_x / max(len(groups), 1)
    bar = slot * 0.8 / max(len(colours), 1)
    for i, values in enumerate(groups):
        x0 = MARGIN + i * slot + slot * 0.1
        for j, v in enumerate(values):
            if not np.isfinite(v):
                continue
            left = round(x0 + j * bar)
            right = max(left + 1, round(x0 + (j + 1) * bar) - 1)
            top = round(SIZE - MARGIN - float(np.clip(v, 0, 1)) * span_y)
            img[top : SIZE - MARGIN, left:right] = colours[j]
        tick = MARGIN + (i + 0.5) * slot
        _line(img, tick, SIZE - MARGIN, tick, SIZE - MARGIN + 6, (0, 0, 0))
    if target is not None:
        y = SIZE - MARGIN - target * span_y
        _line(img, MARGIN, y, width - MARGIN, y, (220, 0, 0), 2)
    lo_x, hi_x, lo_y, hi_y = MARGIN, width - MARGIN, MARGIN, SIZE - MARGIN
    _line(img, lo_x, hi_y, hi_x, hi_y, (0, 0, 0), 2)
    _line(img, lo_x, lo_y, lo_x, hi_y, (0, 0, 0), 2)
    return write_png(path, img)
