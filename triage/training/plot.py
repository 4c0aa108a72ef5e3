"""ROC plot as a PNG without a plotting library: axes, grid, chance diagonal, the curve and
the operating point, drawn into a numpy canvas (labels are in the Markdown report)."""

from __future__ import annotations

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
