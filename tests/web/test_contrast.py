"""Accessibility basics: every text/background pair the pages use reaches WCAG AA contrast
(4.5:1), computed from the colours in triage/web/static/triage.css itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import triage.web

CSS = Path(triage.web.__file__).parent / "static" / "triage.css"

# (text, background) as the stylesheet pairs them: variables by name, literals as written.
PAIRS = [
    ("--ink", "--paper"),
    ("--muted", "--paper"),
    ("--muted", "--band"),
    ("--link", "--paper"),
    ("--stat-ink", "--stat-bg"),
    ("--asap-ink", "--asap-bg"),
    ("--routine-ink", "--routine-bg"),
    ("--other-ink", "--other-bg"),
    ("--pos-ink", "--paper"),
    ("--neg-ink", "--paper"),
    ("--na-ink", "--paper"),
    ("--pending-ink", "--paper"),
    ("--ink", "--notice-bg"),
    ("--ink", "#eef4fb"),  # a focused / hovered worklist row
    ("#ffffff", "#1f2d3d"),  # the top bar
    ("#ffffff", "--link"),  # buttons
]


def _variables() -> dict[str, str]:
    text = CSS.read_text(encoding="utf-8")
    return dict(re.findall(r"(--[a-z-]+):\s*(#[0-9a-fA-F]{6})", text))


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255.0 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_contrast_formula() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)


@pytest.mark.parametrize(("ink", "ground"), PAIRS)
def test_text_and_background_reach_wcag_aa(ink: str, ground: str) -> None:
    colours = _variables()
    a = colours.get(ink, ink)
    b = colours.get(ground, ground)
    assert a.startswith("#") and b.startswith("#"), (ink, ground, "not in triage.css")
    assert contrast(a, b) >= 4.5, (ink, ground, round(contrast(a, b), 2))
