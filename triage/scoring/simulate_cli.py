"""``triage rules simulate NEW_RULES.yaml``: the what-if of a rules change, in a terminal.

The history comes from the database of the engine's settings (``--config``, ``TRIAGE_*``,
``--set``: as for ``triage serve``), read-only; the current rules are the engine's
(``<rules_dir>/urgency.yaml``) unless ``--current`` names another file. Both files are loaded
by the engine's loader: a bad one is refused with file:line: reason (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from triage.config import Settings
from triage.errors import ConfigError
from triage.scoring.simulate import (
    DEFAULT_READ_MINUTES,
    RulesFigures,
    SimulationResult,
    load_history,
    parse_read_minutes,
    simulate,
)

SettingsArgs = Callable[[argparse.ArgumentParser], None]
SettingsOf = Callable[[argparse.Namespace], Settings]

_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$", re.IGNORECASE)
_UNIT = {"m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
CHANGED_SHOWN = 15


def parse_when(text: str, now: datetime) -> datetime:
    """``7d``, ``12h``, ``90m``, ``2w`` before ``now``, or an ISO date/time (UTC if no zone)."""
    m = _SPAN.match(text)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2).lower()])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r}: expected a span (7d, 12h, 90m, 2w) or an ISO date/time"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _read_minutes(text: str) -> dict[str, float]:
    try:
        return parse_read_minutes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _readers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of readers must be 1 or more")
    return n


def add_simulate_command(
    rules: Any, add_settings_args: SettingsArgs, settings_of: SettingsOf
) -> None:
    """Register ``simulate`` under ``triage rules``."""
    p = rules.add_parser(
        "simulate",
        help="replay the stored history under the current and proposed urgency rules",
        description=(
            "Replay the studies stored by the engine under the current and the proposed "
            "urgency rules: studies that change class, alerts and false alerts per day, and "
            "the modelled wait from completion to reading (docs/rules.md, 'What-if'). Reads "
            "the engine's database; never writes to it."
        ),
    )
    add_settings_args(p)
    p.add_argument("proposed", type=Path, metavar="NEW_RULES.yaml", help="the proposed rules")
    p.add_argument(
        "--current", type=Path, help="the current rules (default: <rules_dir>/urgency.yaml)"
    )
    p.add_argument(
        "--since", default="7d", help="studies completed since: 7d, 12h, 2w or ISO time (7d)"
    )
    p.add_argument("--until", help="... and until (ISO date/time; default: now)")
    p.add_argument("--readers", type=_readers, default=2, help="radiologists reading (2)")
    p.add_argument(
        "--read-minutes",
        type=_read_minutes,
        default={},
        metavar="KEY=MIN,...",
        help=(
            "minutes one read takes, by procedure code, routed model, modality-bodypart or "
            f"modality, e.g. ct-head=6,pe=8,default=12 (default {DEFAULT_READ_MINUTES:g})"
        ),
    )
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="wait distributions as a PNG")
    p.set_defaults(func=lambda a: cmd_simulate(a, settings_of(a)))


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from triage.scoring.rules import load_urgency_rules

    current = load_urgency_rules(args.current or settings.rules_dir / "urgency.yaml")
    proposed = load_urgency_rules(args.proposed)
    now = datetime.now(UTC)
    try:
        until = parse_when(args.until, now) if args.until else now
    except ValueError as exc:
        raise ConfigError("--until", str(exc)) from None
    try:
        since = parse_when(args.since, until)
    except ValueError as exc:
        raise ConfigError("--since", str(exc)) from None
    history = load_history(settings.resolved_database_url, since, until)
    result = simulate(history, current, proposed, args.readers, args.read_minutes)
    if args.plot:
        plot_waits(args.plot, result)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print_result(result, plot=args.plot)
    return 0


# -- the terminal view ------------------------------------------------------------------------


def _readers_text(n: int) -> str:
    return f"{n} reader" if n == 1 else f"{n} readers"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def _delta(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return ""
    d = round(b - a, 2)
    return "0" if d == 0 else f"{d:+g}"


def print_result(result: SimulationResult, plot: Path | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    b, a = result.before, result.after
    minutes = ", ".join(f"{k} {v:g}" for k, v in sorted(result.read_minutes.items()))
    left_out = f"; {result.incomplete} never completed, left out" if result.incomplete else ""
    console.print(
        f"[bold]What-if[/]: {b.path} ({b.version}) -> {a.path} ({a.version})\n"
        f"{result.studies} studies completed {result.since:%Y-%m-%d %H:%M} to "
        f"{result.until:%Y-%m-%d %H:%M} UTC ({result.days:.1f} days{left_out})\n"
        f"{_readers_text(result.readers)}; minutes per read: {minutes}"
    )
    if result.unused_read_keys:
        console.print(f"read-minute keys no study used: {', '.join(result.unused_read_keys)}")

    bj, aj = b.to_json(), a.to_json()
    table = Table(title="Alerts (raised above the ordered priority once complete)")
    for col in ("", "current", "proposed", "change"):
        table.add_column(col, justify="right" if col else "left")
    for label, key in (
        ("alerts per day", "alerts_per_day"),
        ("false alerts per day (truth negative)", "false_alerts_per_day"),
        ("alerts", "alerts"),
        ("alerts whose truth is known", "alerts_with_truth"),
        ("raised while waiting (aging)", "raised_while_waiting"),
    ):
        table.add_row(label, _num(bj[key]), _num(aj[key]), _delta(bj[key], aj[key]))
    console.print(table)

    table = Table(
        title=f"Modelled wait from completion to reading, minutes ({_readers_text(result.readers)})"
    )
    for col in ("studies", "n", "", "mean", "median", "90%", "max"):
        table.add_column(col, justify="left" if col in ("studies", "") else "right")
    for group, what in (
        ("critical", "critical (positive)"),
        ("routine", "routine (ordered R)"),
        ("all", "all"),
    ):
        before, after = bj["wait_minutes"][group], aj["wait_minutes"][group]
        for name, s in (("current", before), ("proposed", after)):
            table.add_row(
                what if name == "current" else "",
                str(s["count"]) if name == "current" else "",
                name,
                *(_num(s[k]) for k in ("mean", "median", "p90", "max")),
            )
    console.print(table)

    table = Table(title=f"Studies that change class: {len(result.changed)}")
    for col in ("accession", "before", "after", "score before", "score after"):
        table.add_column(col)
    for c in result.changed[:CHANGED_SHOWN]:
        table.add_row(
            c.accession_number or c.study_uid, c.before, c.after, f"{c.before_score:g}",
            f"{c.after_score:g}",
        )  # fmt: skip
    if len(result.changed) > CHANGED_SHOWN:
        table.caption = f"and {len(result.changed) - CHANGED_SHOWN} more (--json lists all)"
    console.print(table)
    if plot is not None:
        console.print(
            f"{plot}: share of studies read within x minutes (left critical, right routine; "
            "blue current, orange proposed; grid every tenth of the largest wait, "
            f"{_plot_span(result):g} min)"
        )


# -- the plot ---------------------------------------------------------------------------------

_W, _H, _M = 360, 300, 24
_BLUE, _ORANGE = (31, 94, 180), (230, 120, 20)


def _plot_span(result: SimulationResult) -> float:
    waits = [
        w for f in (result.before, result.after) for g in ("critical", "routine")
        for w in f.waits[g]
    ]  # fmt: skip
    top = max(waits, default=0.0)
    return float(max(1, math.ceil(top)))


def _panel(
    img: Any, left: int, groups: list[tuple[list[float], tuple[int, int, int]]], span: float
) -> None:
    x0, x1, y0, y1 = left + _M, left + _W - _M, _M, _H - _M
    for k in range(11):
        x = x0 + round(k * (x1 - x0) / 10)
        y = y0 + round(k * (y1 - y0) / 10)
        img[y0:y1, x] = 225
        img[y, x0:x1] = 225
    img[y0 : y1 + 1, x0 - 1 : x0 + 1] = 0
    img[y1 - 1 : y1 + 1, x0 : x1 + 1] = 0
    for waits, colour in groups:
        s = sorted(waits)
        n = len(s)
        if not n:
            continue
        prev_x, prev_y = x0, y1
        for i, w in enumerate(s):
            x = x0 + round(min(w, span) / span * (x1 - x0))
            y = y1 - round((i + 1) / n * (y1 - y0))
            img[prev_y - 1 : prev_y + 1, min(prev_x, x) : max(prev_x, x) + 1] = colour
            img[min(prev_y, y) : max(prev_y, y) + 1, x - 1 : x + 1] = colour
            prev_x, prev_y = x, y
        img[prev_y - 1 : prev_y + 1, prev_x : x1 + 1] = colour


def plot_waits(path: Path, result: SimulationResult) -> Path:
    """The waits' cumulative distributions, before (blue) and after (orange): critical
    studies on the left, routine on the right (a PNG; the legend is printed beside it)."""
    import numpy as np

    from triage.training.png import write_png

    img = np.full((_H, 2 * _W, 3), 255, dtype=np.uint8)
    span = _plot_span(result)
    figures: tuple[RulesFigures, RulesFigures] = (result.before, result.after)
    for panel, group in enumerate(("critical", "routine")):
        _panel(
            img,
            panel * _W,
            [(figures[0].waits[group], _BLUE), (figures[1].waits[group], _ORANGE)],
            span,
        )
    return write_png(path, img)
