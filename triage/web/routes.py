"""The pages: the worklist (``/``, live through ``/worklist/events``), a study
(``/studies/{study_uid}``) with its key images, and the feedback form's POST.

Every page needs a signed-in user (radiologist, manager, engineer or admin; a page request
without a session is sent to ``/login``); each study page view and each feedback is written
to the audit log. Feedback is a form POST carrying the session's CSRF token (checked by the
auth middleware), from a radiologist (or an admin).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from starlette.responses import StreamingResponse

from triage.auth.audit import audit
from triage.auth.deps import READERS, client_address, require, still_valid
from triage.auth.routes import csrf_token
from triage.auth.users import User
from triage.feedback import VERDICTS, FeedbackError, record_verdict
from triage.inference.keyimage import DISCLAIMER, plain_key_image_path, resolve_key_image
from triage.scoring import UrgencyRules
from triage.store import Database
from triage.store.models import Finding
from triage.web.feed import WorklistFeed
from triage.web.layout import STATIC, page, render
from triage.web.views import study_detail, worklist_rows

FEEDBACK_ROLE = "radiologist"  # and admin (``User.may``)
FORM_MAX_BYTES = 16_384


def _rows_html(rows: list[dict[str, Any]]) -> str:
    return render("_worklist_rows.html", rows=rows)


def install(
    app: FastAPI,
    db: Database,
    rules: Callable[[], UrgencyRules],
    data_dir: Path | None,
) -> WorklistFeed:
    """Add the pages and ``/static`` to ``app``; returns the live feed (``close()`` it when
    the server stops, so open pages do not hold the shutdown)."""
    feed = WorklistFeed(db, rules, worklist_rows)
    router = APIRouter()
    signed_in = Depends(require(*READERS))

    @router.get("/", response_class=HTMLResponse)
    def worklist_page(request: Request, user: User = signed_in) -> HTMLResponse:
        stamp, rows = feed.snapshot()
        audit(db, user.name, "view", "worklist", client_address(request), f"{len(rows)} studies")
        return page(
            request,
            "worklist.html",
            user,
            title="Worklist",
            rows=rows,
            stamp=stamp,
            modalities=sorted({r["modality"] for r in rows if r["modality"]}),
            locations=sorted({r["location"] for r in rows if r["location"]}),
            states=sorted({r["state_label"] for r in rows}),
        )

    @router.get("/worklist/events")
    async def worklist_events(request: Request, user: User = signed_in) -> StreamingResponse:
        since = request.headers.get("last-event-id", "")
        address = client_address(request)
        audit(db, user.name, "view", "worklist", address, "live updates opened")
        return StreamingResponse(
            feed.events(_rows_html, request.is_disconnected, since, lambda: still_valid(request)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.get("/studies/{study_uid}", response_class=HTMLResponse)
    def study_page(
        request: Request, study_uid: str, saved: str = "", user: User = signed_in
    ) -> HTMLResponse:
        with db.session() as s:
            detail = study_detail(s, rules(), study_uid)
        audit(db, user.name, "view", f"study:{study_uid}", client_address(request), "study page")
        if detail is None:
            return page(
                request,
                "not_found.html",
                user,
                status_code=404,
                title="No such study",
                uid=study_uid,
            )
        return page(
            request,
            "study.html",
            user,
            title=f"Study {detail['study'].accession_number or study_uid}",
            d=detail,
            uid_q=quote(study_uid, safe=""),
            csrf=csrf_token(request),
            verdicts=VERDICTS,
            can_feedback=user.may(FEEDBACK_ROLE),
            saved=saved,
        )

    @router.post("/studies/{study_uid}/feedback", response_model=None)
    async def feedback(request: Request, study_uid: str, user: User = signed_in) -> Response:
        body = await request.body()
        if len(body) > FORM_MAX_BYTES:
            return HTMLResponse("form too large", status_code=413)
        # the CSRF middleware (triage.auth.routes) has checked the form's csrf_token
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not user.may(FEEDBACK_ROLE):
            return HTMLResponse("only a radiologist records feedback", status_code=403)
        verdict = form.get("verdict", "")
        note = form.get("note", "")
        try:
            with db.session() as s:
                row = record_verdict(
                    s, study_uid, verdict, who=user.name, note=note, model=form.get("model", "")
                )
                detail = f"{row.model_name} {row.ai_result}: {verdict}"
        except FeedbackError as exc:
            return PlainTextResponse(f"feedback not recorded: {exc}", status_code=400)
        audit(db, user.name, "feedback", f"study:{study_uid}", client_address(request), detail)
        return RedirectResponse(
            f"/studies/{quote(study_uid, safe='')}?saved=1#feedback", status_code=303
        )

    @router.get("/studies/{study_uid}/findings/{finding_id}/{which}.png", response_model=None)
    def finding_image(
        request: Request, study_uid: str, finding_id: int, which: str, user: User = signed_in
    ) -> Response:
        """A finding's key image: ``overlay`` (with the model's overlay) or ``plain`` (the
        same slice, same window, without it). Audited; never cached by the browser."""
        if which not in ("overlay", "plain") or data_dir is None or not 0 < finding_id < 2**63:
            return HTMLResponse("no such image", status_code=404)
        audit(db, user.name, "view", f"study:{study_uid}", client_address(request), "key image")
        with db.session() as s:
            finding = s.get(Finding, finding_id)
        if finding is None or finding.study_uid != study_uid or not finding.key_image:
            return HTMLResponse("no such image", status_code=404)
        rel = finding.key_image if which == "overlay" else plain_key_image_path(finding.key_image)
        path = resolve_key_image(data_dir, rel)
        if path is None:
            return HTMLResponse("no such image", status_code=404)
        return FileResponse(
            path,
            media_type="image/png",
            headers={"Cache-Control": "no-store", "X-Triage-Notice": DISCLAIMER},
        )

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.worklist_feed = feed
    return feed
