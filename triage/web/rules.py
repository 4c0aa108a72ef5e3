"""The Rules page's work (managers, issue 16): check a proposed urgency rules text with the
engine's own loader, simulate it against the rules in force over the stored history, write it
to the rules file the engine reads, and keep every version with who applied it, when and why.

No HTTP here (:mod:`triage.web.rules_routes` has the endpoints and the page):

- :func:`check_text`: the loader the engine uses (:func:`triage.scoring.load_urgency_rules`),
  its error as ``{line, reason, message}``;
- :func:`run_simulation`: :func:`triage.scoring.simulate.simulate` on the history read by
  :func:`~triage.scoring.simulate.load_history` (read-only), the same call and defaults as
  ``triage rules simulate``, so the same numbers;
- :func:`apply_text`: writes the rules file atomically (temp file, fsync, rename:
  :func:`triage.store.durable.write_durably`) and records a :class:`RulesChange`, under a lock,
  refusing when the file changed since the editor read it. The engine's
  :class:`~triage.scoring.UrgencyRulesWatcher` puts it in force at its next tick and re-scores
  the open studies;
- :func:`versions`: the versions applied here and those the engine put in force otherwise
  (the file edited by hand, the text it started with), newest first;
- :func:`wait_chart_svg`: the simulation's chart, inline SVG drawn here (no library).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup
from sqlmodel import col, select

from triage.errors import RulesError
from triage.scoring.rules import UrgencyRules, load_urgency_rules, version_id_of
from triage.scoring.simulate import SimulationResult, load_history, simulate
from triage.store import Database
from triage.store.durable import write_durably
from triage.store.models import RulesChange, RulesVersion, aware, utcnow

MAX_TEXT_BYTES = 256 * 1024  # a rules file is a few kilobytes
MAX_COMMENT_CHARS = 500
MAX_READERS = 100
DEFAULT_SINCE = "7d"  # as ``triage rules simulate``
DEFAULT_READERS = 2

_APPLY_LOCK = threading.Lock()  # one apply at a time (check the base, write, record)


def normalise(text: str) -> str:
    """The text as written to the file: line ends as ``\\n`` (a browser's form sends
    ``\\r\\n``; the version id is the hash of the text, so the same rules get the same id)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


@dataclass(frozen=True)
class Checked:
    rules: UrgencyRules | None
    errors: list[dict[str, Any]]
    version_id: str

    @property
    def ok(self) -> bool:
        return self.rules is not None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "version_id": self.version_id, "errors": self.errors}


PROPOSED = "the proposed text"  # what the editor's errors name: not the file in force


def error_dict(exc: RulesError, name: str | None = None) -> dict[str, Any]:
    """A loader error as the page shows it: the line (None: the whole file) and the reason;
    ``message`` names ``name`` (default: the file) and the line."""
    where = f"{exc.path}:{exc.line}" if exc.line is not None else exc.path
    reason = str(exc).removeprefix(f"{where}: ")
    if name is None:
        message = str(exc)
    elif exc.line is not None:
        message = f"{name}, line {exc.line}: {reason}"
    else:
        message = f"{name}: {reason}"
    return {"line": exc.line, "reason": reason, "message": message}


def check_text(path: Path, text: str, name: str | None = None) -> Checked:
    """``text`` loaded as the engine loads ``path`` (every check, the same reasons); errors
    name ``name`` (e.g. :data:`PROPOSED`, for a text that is not the file yet) or ``path``.
    An invalid text has no version id (it can never be in force)."""
    text = normalise(text)
    try:
        rules = load_urgency_rules(path, text)
    except RulesError as exc:
        return Checked(None, [error_dict(exc, name)], "")
    return Checked(rules, [], rules.version_id)


def read_file_text(path: Path) -> str:
    """The rules file's text as it is now ("" when it cannot be read)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


# -- simulation -------------------------------------------------------------------------------


def run_simulation(
    db_url: str,
    current: UrgencyRules,
    proposed: UrgencyRules,
    *,
    since: datetime,
    until: datetime,
    readers: int = DEFAULT_READERS,
    read_minutes: Mapping[str, float] | None = None,
) -> SimulationResult:
    """What ``triage rules simulate`` computes: the history from ``since`` to ``until``
    (read-only) under ``current`` and ``proposed``."""
    history = load_history(db_url, since, until)
    return simulate(history, current, proposed, readers, read_minutes or {})


# -- apply, versions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """What :func:`apply_text` did: ``change`` (written and recorded), or why not:
    ``status`` 400 (invalid, nothing to change, no comment) or 409 (the file changed since
    the editor read it), with ``errors`` for an invalid text."""

    change: RulesChange | None
    status: int = 200
    refusal: str = ""
    errors: tuple[dict[str, Any], ...] = ()


def apply_text(
    db: Database,
    path: Path,
    text: str,
    *,
    user: str,
    comment: str,
    base_version: str,
    restored_from: str = "",
    now: datetime | None = None,
) -> Applied:
    """Write ``text`` to the rules file ``path`` and record it, when it is valid, differs
    from the file, carries a comment, and the file is still the version the editor started
    from (``base_version``; "" skips that check). The record and the file are written in one
    database transaction: a failed write records nothing (:class:`~triage.errors.StoreError`
    propagates)."""
    text = normalise(text)
    comment = comment.strip()
    if not comment:
        return Applied(None, 400, "a comment is needed: say why the rules change")
    if len(comment) > MAX_COMMENT_CHARS:
        return Applied(None, 400, f"the comment is longer than {MAX_COMMENT_CHARS} characters")
    checked = check_text(path, text, PROPOSED)
    if checked.rules is None:
        return Applied(None, 400, "the rules have an error", tuple(checked.errors))
    with _APPLY_LOCK:
        on_disk = read_file_text(path)
        disk_version = version_id_of(on_disk) if on_disk else ""
        if base_version and base_version != disk_version:
            return Applied(
                None,
                409,
                f"the rules file changed since the editor read it (version {base_version}, now "
                f"{disk_version or 'unreadable'}): reload the page and apply again",
            )
        if checked.version_id == disk_version:
            return Applied(None, 400, "nothing to apply: the rules file holds this text already")
        try:
            mode: int | None = path.stat().st_mode & 0o7777
        except OSError:
            mode = None
        with db.session() as s:
            change = RulesChange(
                at=now or utcnow(),
                user=user,
                comment=comment,
                version_id=checked.version_id,
                previous_version_id=disk_version,
                restored_from=restored_from,
                path=str(path),
                text=text,
            )
            s.add(change)
            s.flush()
            write_durably(path, text.encode("utf-8"))  # a StoreError rolls the record back
            if mode is not None:  # the temp file was made 0600; keep the file's own mode
                with contextlib.suppress(OSError):
                    os.chmod(path, mode)
    return Applied(change)


def text_of_version(db: Database, version_id: str) -> str | None:
    """The text of a version applied here or put in force by the engine (None: unknown)."""
    with db.session() as s:
        change = s.exec(
            select(RulesChange).where(RulesChange.version_id == version_id).limit(1)
        ).first()
        if change is not None:
            return change.text
        loaded = s.exec(select(RulesVersion).where(RulesVersion.version_id == version_id)).first()
    return loaded.text if loaded is not None else None


def _iso(when: datetime) -> str:
    return aware(when).strftime("%Y-%m-%d %H:%M:%S UTC")


def versions(db: Database, in_force: str, on_file: str, limit: int = 200) -> list[dict[str, Any]]:
    """Newest first: every text applied or restored here (who, when, comment) and every
    version the engine put in force before anyone applied it here (edited in the file, or
    the text it started with: ``user`` ""); each with ``in_force`` / ``on_file`` flags and
    when the engine first put it in force (``loaded``, "" not yet)."""
    with db.session() as s:
        changes = s.exec(
            select(RulesChange).order_by(col(RulesChange.id).desc()).limit(limit)
        ).all()
        loaded = s.exec(
            select(RulesVersion).order_by(col(RulesVersion.id).desc()).limit(limit)
        ).all()
    first_loaded = {v.version_id: v.first_loaded_at for v in loaded}
    first_applied: dict[str, datetime] = {}
    for c in changes:
        at = aware(c.at)
        first_applied[c.version_id] = min(at, first_applied.get(c.version_id, at))
    rows: list[tuple[datetime, int, dict[str, Any]]] = []
    for c in changes:
        rows.append(
            (
                aware(c.at),
                1,
                {
                    "id": c.id,
                    "version_id": c.version_id,
                    "at": aware(c.at).isoformat(),
                    "at_text": _iso(c.at),
                    "user": c.user,
                    "comment": c.comment,
                    "previous_version_id": c.previous_version_id,
                    "restored_from": c.restored_from,
                    "source": "restored" if c.restored_from else "applied",
                    "loaded": _iso(first_loaded[c.version_id])
                    if c.version_id in first_loaded
                    else "",
                },
            )
        )
    for v in loaded:
        applied_at = first_applied.get(v.version_id)
        if applied_at is not None and applied_at <= aware(v.first_loaded_at):
            continue  # put in force because it was applied here: that row speaks for it
        rows.append(
            (
                aware(v.first_loaded_at),
                0,
                {
                    "id": None,
                    "version_id": v.version_id,
                    "at": aware(v.first_loaded_at).isoformat(),
                    "at_text": _iso(v.first_loaded_at),
                    "user": "",
                    "comment": "",
                    "previous_version_id": "",
                    "restored_from": "",
                    "source": "file",
                    "loaded": _iso(v.first_loaded_at),
                },
            )
        )
    rows.sort(key=lambda r: (r[0], r[1], r[2]["id"] or 0), reverse=True)
    out = [r[2] for r in rows[:limit]]
    latest_seen: set[str] = set()
    for row in out:
        row["in_force"] = row["version_id"] == in_force
        row["on_file"] = row["version_id"] == on_file
        # the newest row of a version speaks for it: only that one says "in force"
        row["current"] = row["version_id"] not in latest_seen
        latest_seen.add(row["version_id"])
    return out


# -- the chart --------------------------------------------------------------------------------

_BLUE, _ORANGE = "#1f5eb4", "#b35300"  # both at least 4.5:1 on white
_PW, _PH, _PAD_L, _PAD_R, _PAD_T, _PAD_B = 340, 230, 46, 14, 30, 40


def _steps(waits: Sequence[float], span: float, x0: float, y0: float, w: float, h: float) -> str:
    """The path of an empirical cumulative distribution: share read within x minutes."""
    s = sorted(waits)
    n = len(s)
    if not n:
        return ""
    pts = [(x0, y0 + h)]
    for i, v in enumerate(s):
        x = x0 + min(v, span) / span * w
        y_before = y0 + h - i / n * h
        y_after = y0 + h - (i + 1) / n * h
        pts.append((x, y_before))
        pts.append((x, y_after))
    pts.append((x0 + w, pts[-1][1]))
    return " ".join(f"{'M' if k == 0 else 'L'}{x:.1f},{y:.1f}" for k, (x, y) in enumerate(pts))


def _nice_span(top: float) -> float:
    if top <= 0:
        return 10.0
    step = 10 ** math.floor(math.log10(top))
    for m in (1, 2, 2.5, 5, 10):
        if top <= m * step:
            return float(m * step)
    return float(10 * step)


def wait_chart_svg(result: SimulationResult) -> Markup:
    """Two panels (critical, routine): the share of studies whose modelled wait from
    completion to reading is at most x minutes, current rules (solid, blue) and proposed
    (dashed, orange). Numbers only go into the SVG (nothing from the user)."""
    groups = (("critical", "Critical (positive)"), ("routine", "Routine (ordered R)"))
    top = max(
        (w for f in (result.before, result.after) for g, _ in groups for w in f.waits[g]),
        default=0.0,
    )
    span = _nice_span(top)
    width, height = 2 * _PW, _PH + 26
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="wait-chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-labelledby="chart-title chart-desc">',
        '<title id="chart-title">Modelled wait from completion to reading</title>',
        '<desc id="chart-desc">Share of studies read within a given number of minutes, for '
        "critical and routine studies, under the rules in force (solid line) and the proposed "
        "rules (dashed line). The table above gives the same figures.</desc>",
    ]
    plot_w, plot_h = _PW - _PAD_L - _PAD_R, _PH - _PAD_T - _PAD_B
    for k, (group, label) in enumerate(groups):
        x0, y0 = k * _PW + _PAD_L, float(_PAD_T)
        n = len(result.before.waits[group])
        parts.append(
            f'<text x="{x0}" y="18" class="chart-label">{label}: {n} '
            f"{'study' if n == 1 else 'studies'}</text>"
        )
        for t in range(6):
            x = x0 + t / 5 * plot_w
            y = y0 + plot_h - t / 5 * plot_h
            parts.append(
                f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + plot_h}" class="grid"/>'
                f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + plot_w}" y2="{y:.1f}" class="grid"/>'
                f'<text x="{x:.1f}" y="{y0 + plot_h + 14}" text-anchor="middle" '
                f'class="tick">{span * t / 5:g}</text>'
                f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                f"{t * 20}%</text>"
            )
        parts.append(
            f'<text x="{x0 + plot_w / 2:.1f}" y="{y0 + plot_h + 30}" text-anchor="middle" '
            'class="tick">minutes from completion to reading</text>'
        )
        for figures, colour, dash, name in (
            (result.before, _BLUE, "", "current"),
            (result.after, _ORANGE, ' stroke-dasharray="6 4"', "proposed"),
        ):
            d = _steps(figures.waits[group], span, x0, y0, plot_w, plot_h)
            if d:
                parts.append(
                    f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="2.5"{dash} '
                    f'class="line-{name}" data-group="{group}"/>'
                )
        if not n:
            parts.append(
                f'<text x="{x0 + plot_w / 2:.1f}" y="{y0 + plot_h / 2:.1f}" '
                'text-anchor="middle" class="tick">no studies</text>'
            )
    ly = height - 8
    parts.append(
        f'<line x1="{_PAD_L}" y1="{ly - 4}" x2="{_PAD_L + 30}" y2="{ly - 4}" stroke="{_BLUE}" '
        f'stroke-width="2.5"/><text x="{_PAD_L + 36}" y="{ly}" class="tick">rules in force'
        f'</text><line x1="{_PAD_L + 150}" y1="{ly - 4}" x2="{_PAD_L + 180}" y2="{ly - 4}" '
        f'stroke="{_ORANGE}" stroke-width="2.5" stroke-dasharray="6 4"/>'
        f'<text x="{_PAD_L + 186}" y="{ly}" class="tick">proposed rules</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))
