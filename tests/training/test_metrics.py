"""Validation metrics (numpy only), the PNG writer and the ROC plot."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from triage.training import metrics
from triage.training.plot import roc_png
from triage.training.png import window, write_png


def test_auc_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    assert metrics.auc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert metrics.auc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert metrics.auc(np.array([0.5, 0.5, 0.5, 0.5]), y) == 0.5  # ties count one half
    assert metrics.auc(np.array([0.1, 0.6, 0.5, 0.9]), y) == 0.75
    assert np.isnan(metrics.auc(np.array([0.1, 0.2]), np.array([0, 0])))


def test_auc_matches_roc_area_and_ci_contains_it() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    fpr, tpr = metrics.roc_curve(p, y)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    a = metrics.auc(p, y)
    assert a == pytest.approx(area, abs=1e-9)
    lo, hi = metrics.auc_ci(p, y, n_boot=300)
    assert lo < a < hi and hi - lo < 0.2


def test_operating_point_and_ppv() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1])
    op = metrics.operating_point(p, y, 0.5)
    assert (op.tp, op.fn, op.fp, op.tn) == (3, 1, 1, 5)
    assert op.sensitivity == 0.75 and op.specificity == pytest.approx(5 / 6)
    assert op.fp_per_study == 0.1
    se, sp, prev = 0.75, 5 / 6, 0.05
    assert op.ppv_at(prev) == pytest.approx(se * prev / (se * prev + (1 - sp) * (1 - prev)))
    assert op.ppv_at(0.15) > op.ppv_at(0.05)


def test_calibration_and_wilson() -> None:
    p = np.array([0.05, 0.05, 0.95, 0.95, 1.0])
    y = np.array([0, 0, 1, 1, 1])
    rows = metrics.calibration(p, y)
    assert sum(r[2] for r in rows) == 5
    assert rows[0][2] == 2 and rows[0][4] == 0.0 and rows[-1][2] == 3 and rows[-1][4] == 1.0
    lo, hi = metrics.wilson(9, 10)
    assert 0.55 < lo < 0.9 < hi <= 1.0


def _read_png(path: Path) -> tuple[int, int, int, bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    return header[0], header[1], header[3], zlib.decompress(idat)


def test_png_round_trip(tmp_path: Path) -> None:
    grey = window(np.linspace(-100, 200, 12 * 7).reshape(7, 12), 40, 80)
    w, h, colour, raw = _read_png(write_png(tmp_path / "g.png", grey))
    assert (w, h, colour) == (12, 7, 0)
    rows = np.frombuffer(raw, np.uint8).reshape(7, 13)
    assert (rows[:, 0] == 0).all() and np.array_equal(rows[:, 1:], grey)
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0] = 255
    assert _read_png(write_png(tmp_path / "c.png", rgb))[2] == 2
    with pytest.raises(ValueError):
        write_png(tmp_path / "bad.png", np.zeros((2, 2), np.float32))


def test_roc_png(tmp_path: Path) -> None:
    fpr, tpr = metrics.roc_curve(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    w, h, colour, _ = _read_png(roc_png(tmp_path / "roc.png", [(fpr, tpr, (200, 0, 0))],
                                        [(0.5, 1.0, (0, 0, 0))]))  # fmt: skip
    assert (w, h, colour) == (420, 420, 2)
