"""The Rules page (``/rules``) and its endpoints, for managers (and admins); anyone else
gets 403, on the page and on every endpoint.

- ``GET /rules``: the rules in force, the editor (validated as you type), the what-if
  simulation, apply with a comment, and every version (who, when, why; restore);
- ``GET /api/rules``: the rules in force and the rules file (version, errors);
- ``POST /api/rules/validate`` ``{"text"}``: the engine's loader on the text:
  ``{"ok", "version_id", "errors": [{"line", "reason", "message"}]}``;
- ``POST /api/rules/simulate`` ``{"text", "since", "until", "readers", "read_minutes"}``:
  ``triage rules simulate`` on the stored history (read-only), the proposed text against the
  rules in force: ``{"figures": <the --json object>, "html": <the page's fragment>}``;
- ``POST /api/rules/apply`` ``{"text", "comment", "base_version"}``: writes the rules file
  (atomically), records the version and audits it (``rules-change``); the engine puts it in
  force at its next tick. 409 when the file changed since ``base_version``;
- ``GET /api/rules/versions``, ``GET /api/rules/versions/{version_id}`` (with its text);
- ``POST /api/rules/versions/{version_id}/restore`` ``{"comment", "base_version"}``: that
  version's text applied again, as a new version.

The POSTs take JSON or a url-encoded form (the page's forms work without JavaScript: a form
is answered with a redirect to the page, or the page with the error); with a session cookie
they carry the CSRF token (``X-CSRF-Token`` or the ``csrf_token`` field, checked by the auth
middleware).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlmodel import select
from starlette.concurrency import run_in_threadpool

from triage.auth.audit import audit
from triage.auth.deps import client_address, require
from triage.auth.users import User
from triage.errors import StoreError
from triage.scoring import UrgencyRules
from triage.scoring.history import in_force_since
from triage.scoring.rules import version_id_of
from triage.scoring.simulate import SimulationResult, parse_read_minutes
from triage.scoring.simulate_cli import parse_when
from triage.store import Database
from triage.store.models import RulesChange, RulesVersion
from triage.web.layout import NavItem, add_nav, page, render
from triage.web.rules import (
    DEFAULT_READERS,
    DEFAULT_SINCE,
    MAX_COMMENT_CHARS,
    MAX_READERS,
    MAX_TEXT_BYTES,
    PROPOSED,
    Applied,
    apply_text,
    check_text,
    normalise,
    read_file_text,
    run_simulation,
    text_of_version,
    versions,
    wait_chart_svg,
)

RULES_ROLE = "manager"  # and admin (``require``)
CHANGED_SHOWN = 100
MAX_BODY_BYTES = MAX_TEXT_BYTES + 16 * 1024


class _BadRequest(ValueError):
    """A request body or field that cannot be used: answered ``status`` (400 unless said)
    with its message, by the handler :func:`install` registers."""

    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.status = status


def _bad(detail: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": "invalid request", "detail": detail}, status_code=status)


async def _fields(request: Request) -> tuple[dict[str, Any], bool]:
    """The body as fields, and whether it was JSON; :class:`_BadRequest` (413/400) when
    unusable."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise _BadRequest(f"the request is larger than {MAX_BODY_BYTES} bytes", 413)
    if "application/json" in request.headers.get("content-type", ""):
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise _BadRequest(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise _BadRequest("expected a JSON object")
        return data, True
    form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in form.items()}, False


def _text_field(fields: dict[str, Any], name: str, default: str = "") -> str:
    value = fields.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _BadRequest(f"{name!r} must be text")
    return value


def _simulation_params(
    fields: dict[str, Any], now: datetime
) -> tuple[datetime, datetime, int, dict[str, float]]:
    until_text = _text_field(fields, "until").strip()
    since_text = _text_field(fields, "since", DEFAULT_SINCE).strip() or DEFAULT_SINCE
    try:
        until = parse_when(until_text, now) if until_text else now
        since = parse_when(since_text, until)
    except ValueError as exc:
        raise _BadRequest(str(exc)) from None
    if since >= until:
        raise _BadRequest("'since' must be before 'until'")
    raw_readers = fields.get("readers", DEFAULT_READERS)
    try:
        readers = int(str(raw_readers).strip() or DEFAULT_READERS)
    except ValueError:
        raise _BadRequest(f"readers: {raw_readers!r} is not a whole number") from None
    if not 1 <= readers <= MAX_READERS:
        raise _BadRequest(f"readers: from 1 to {MAX_READERS}")
    minutes_field = fields.get("read_minutes") or ""
    try:
        if isinstance(minutes_field, dict):
            minutes = parse_read_minutes(",".join(f"{k}={v}" for k, v in minutes_field.items()))
        else:
            minutes = parse_read_minutes(str(minutes_field))
    except ValueError as exc:
        raise _BadRequest(f"read minutes: {exc}") from None
    return since, until, readers, minutes


def _delta(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return ""
    d = round(b - a, 2)
    return "no change" if d == 0 else f"{d:+g}"


def simulation_html(result: SimulationResult) -> str:
    figures = result.to_json()
    b, a = figures["before"], figures["after"]
    rows = [
        ("Alerts per day", b["alerts_per_day"], a["alerts_per_day"]),
        (
            "False alerts per day (truth known and negative)",
            b["false_alerts_per_day"],
            a["false_alerts_per_day"],
        ),
        ("Alerts whose truth is known", b["alerts_with_truth"], a["alerts_with_truth"]),
        ("Raised while waiting (aging)", b["raised_while_waiting"], a["raised_while_waiting"]),
    ]
    waits = []
    for group, label in (
        ("critical", "Critical (positive)"),
        ("routine", "Routine (ordered R)"),
        ("all", "All studies"),
    ):
        for stat, stat_label in (("median", "median"), ("p90", "90th percentile")):
            before, after = b["wait_minutes"][group][stat], a["wait_minutes"][group][stat]
            waits.append(
                (
                    f"{label}: {stat_label}",
                    b["wait_minutes"][group]["count"],
                    before,
                    after,
                    _delta(before, after),
                )
            )
    return render(
        "_rules_simulation.html",
        r=figures,
        result=result,
        rows=[(label, x, y, _delta(x, y)) for label, x, y in rows],
        waits=waits,
        chart=wait_chart_svg(result),
        changed=result.changed[:CHANGED_SHOWN],
        more=max(0, len(result.changed) - CHANGED_SHOWN),
        since=result.since.strftime("%Y-%m-%d %H:%M"),
        until=result.until.strftime("%Y-%m-%d %H:%M"),
    )


def install(app: FastAPI, db: Database, rules: Callable[[], UrgencyRules]) -> None:
    """Add ``/rules`` and ``/api/rules/*`` to ``app``. The rules file written is the one the
    rules in force were read from (``<rules_dir>/urgency.yaml`` in the engine, which its
    :class:`~triage.scoring.UrgencyRulesWatcher` reads at every tick)."""
    add_nav(NavItem("/rules", "Rules", (RULES_ROLE, "admin")))
    router = APIRouter()
    manager = Depends(require(RULES_ROLE))

    def rules_path() -> Path:
        return Path(rules().path)

    def state() -> dict[str, Any]:
        in_force = rules()
        path = rules_path()
        file_text = read_file_text(path)
        checked = check_text(path, file_text)
        with db.session() as s:  # when it last came into force (a restore is a new start)
            loaded = (
                in_force_since(s, in_force.version_id)
                or s.exec(
                    select(RulesVersion.first_loaded_at).where(
                        RulesVersion.version_id == in_force.version_id
                    )
                ).first()
            )
        return {
            "path": str(path),
            "in_force": {
                "version_id": in_force.version_id,
                "since": loaded.replace(tzinfo=loaded.tzinfo or UTC).isoformat() if loaded else "",
            },
            "file": {
                "version_id": version_id_of(file_text) if file_text else "",
                "ok": checked.ok,
                "errors": checked.errors,
                "in_force": checked.version_id == in_force.version_id,
            },
            "text": in_force.text,
            "file_text": file_text,
        }

    def rules_page(
        request: Request,
        user: User,
        *,
        status_code: int = 200,
        text: str | None = None,
        message: str = "",
        errors: tuple[dict[str, Any], ...] = (),
        applied: RulesChange | None = None,
    ) -> HTMLResponse:
        st = state()
        editor_text = st["file_text"] if text is None else normalise(text)
        checked = check_text(rules_path(), editor_text, None if text is None else PROPOSED)
        return page(
            request,
            "rules.html",
            user,
            status_code=status_code,
            title="Urgency rules",
            st=st,
            editor_text=editor_text,
            checked=checked,
            base_version=st["file"]["version_id"],
            versions=versions(db, st["in_force"]["version_id"], st["file"]["version_id"]),
            message=message,
            errors=errors,
            applied=applied,
            since=DEFAULT_SINCE,
            readers=DEFAULT_READERS,
            max_readers=MAX_READERS,
            max_comment=MAX_COMMENT_CHARS,
        )

    def answer(
        request: Request, user: User, outcome: Applied, is_json: bool, text: str | None
    ) -> Response:
        if outcome.change is not None:
            c = outcome.change
            what = f"restore of {c.restored_from}: " if c.restored_from else ""
            audit(
                db,
                user.name,
                "rules-change",
                f"rules:{c.path}",
                client_address(request),
                f"{what}{c.previous_version_id or '-'} -> {c.version_id}: {c.comment}",
            )
            if is_json:
                return JSONResponse(
                    {
                        "id": c.id,
                        "version_id": c.version_id,
                        "previous_version_id": c.previous_version_id,
                        "restored_from": c.restored_from,
                        "at": c.at.isoformat(),
                        "user": c.user,
                        "comment": c.comment,
                        "in_force": rules().version_id == c.version_id,
                    }
                )
            return RedirectResponse(f"/rules?applied={c.id}", status_code=303)
        if is_json:
            return JSONResponse(
                {"error": outcome.refusal, "errors": list(outcome.errors)},
                status_code=outcome.status,
            )
        return rules_page(
            request,
            user,
            status_code=outcome.status,
            text=text,
            message=outcome.refusal,
            errors=outcome.errors,
        )

    async def apply_and_answer(
        request: Request,
        user: User,
        is_json: bool,
        text: str,
        comment: str,
        base: str,
        *,
        restored_from: str = "",
        shown: str | None,
    ) -> Response:
        """Apply ``text`` (:func:`apply_text`, in a worker thread) and answer as
        :func:`answer` does, ``shown`` being the text a refusal shows back in the editor;
        503 when the rules file cannot be written."""
        try:
            outcome = await run_in_threadpool(
                apply_text,
                db,
                rules_path(),
                text,
                user=user.name,
                comment=comment,
                base_version=base,
                restored_from=restored_from,
            )
        except StoreError as exc:
            return JSONResponse(
                {"error": "cannot write the rules file", "detail": str(exc)}, status_code=503
            )
        return await run_in_threadpool(answer, request, user, outcome, is_json, shown)

    @router.get("/rules", response_class=HTMLResponse)
    def rules_editor(
        request: Request, applied: int | None = None, user: User = manager
    ) -> Response:
        change = None
        if applied is not None:
            with db.session() as s:
                change = s.get(RulesChange, applied)
        return rules_page(request, user, applied=change)

    @router.get("/api/rules")
    def rules_state(user: User = manager) -> dict[str, Any]:
        return state()

    @router.post("/api/rules/validate", response_model=None)
    async def validate(request: Request, user: User = manager) -> Response:
        fields, _ = await _fields(request)
        text = _text_field(fields, "text")
        checked = await run_in_threadpool(check_text, rules_path(), text, PROPOSED)
        in_force = rules().version_id
        return JSONResponse(
            {**checked.to_json(), "same_as_in_force": checked.version_id == in_force}
        )

    @router.post("/api/rules/simulate", response_model=None)
    async def simulate_rules(request: Request, user: User = manager) -> Response:
        fields, _ = await _fields(request)
        text = _text_field(fields, "text")
        since, until, readers, minutes = _simulation_params(fields, datetime.now(UTC))
        checked = await run_in_threadpool(check_text, rules_path(), text, PROPOSED)
        if checked.rules is None:
            return JSONResponse(
                {"error": "the proposed rules have an error", "errors": checked.errors},
                status_code=400,
            )
        result = await run_in_threadpool(
            run_simulation,
            db.url,
            rules(),
            checked.rules,
            since=since,
            until=until,
            readers=readers,
            read_minutes=minutes,
        )
        await run_in_threadpool(
            audit,
            db,
            user.name,
            "view",
            "rules-simulation",
            client_address(request),
            f"{result.studies} studies {since.isoformat()}..{until.isoformat()}, "
            f"{len(result.changed)} change class",
        )
        html = await run_in_threadpool(simulation_html, result)
        return JSONResponse({"figures": result.to_json(), "html": html})

    @router.post("/api/rules/apply", response_model=None)
    async def apply(request: Request, user: User = manager) -> Response:
        fields, is_json = await _fields(request)
        text = _text_field(fields, "text")
        comment = _text_field(fields, "comment")
        base = _text_field(fields, "base_version").strip()
        return await apply_and_answer(request, user, is_json, text, comment, base, shown=text)

    @router.get("/api/rules/versions")
    def list_versions(user: User = manager) -> dict[str, Any]:
        st = state()
        in_force, on_file = st["in_force"]["version_id"], st["file"]["version_id"]
        return {
            "in_force": in_force,
            "on_file": on_file,
            "versions": versions(db, in_force, on_file),
        }

    @router.get("/api/rules/versions/{version_id}", response_model=None)
    def one_version(version_id: str, user: User = manager) -> Response:
        text = text_of_version(db, version_id)
        if text is None:
            return JSONResponse({"error": f"no rules version {version_id!r}"}, status_code=404)
        return JSONResponse({"version_id": version_id, "text": text})

    @router.post("/api/rules/versions/{version_id}/restore", response_model=None)
    async def restore(request: Request, version_id: str, user: User = manager) -> Response:
        fields, is_json = await _fields(request)
        comment = _text_field(fields, "comment")
        base = _text_field(fields, "base_version").strip()
        text = await run_in_threadpool(text_of_version, db, version_id)
        if text is None:
            return JSONResponse({"error": f"no rules version {version_id!r}"}, status_code=404)
        return await apply_and_answer(
            request, user, is_json, text, comment, base, restored_from=version_id, shown=None
        )

    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _BadRequest)
        return _bad(str(exc), exc.status)

    app.add_exception_handler(_BadRequest, bad_request)
    app.include_router(router)
