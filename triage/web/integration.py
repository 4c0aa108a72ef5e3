"""The Integration page (``/integration``) for the integration engineer (roles engineer, admin).

What it shows: each listener and part of the engine with its state (``/healthz``'s
components, the DICOM protocol counters), the peers seen (DICOM calling AE titles and
addresses from the association log, HL7 senders, the RIS), recent DICOM associations with how
they ended, recent inbound HL7 messages with the ACK we answered, recent messages to the RIS
with their ACK, and the dead letters. A dead letter is retried with a form POST (CSRF token)
to ``/integration/outbox/{id}/retry``, which calls the same code as ``triage outbox retry``
(:func:`triage.outbound.outbox.retry`, recorded in the outbox action log with the signed-in
user) and is audited (``outbox-retry``). Raw HL7 text holds patient data: each page view is
audited.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from sqlalchemy import func
from sqlmodel import Session, col, select

from triage.auth.audit import audit
from triage.auth.deps import client_address, require
from triage.auth.users import ADMIN, ENGINEER, User
from triage.errors import OutboxError
from triage.outbound import outbox
from triage.store import Database
from triage.store.models import DicomAssociation, HL7Message, OutboundMessage
from triage.web.layout import NavItem, add_nav, page

INTEGRATION_ROLES: tuple[str, ...] = (ENGINEER,)
RECENT = 50
FORM_MAX_BYTES = 16_384


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def integration_view(session: Session, health: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Everything the page shows, as plain values."""
    assoc = session.exec(
        select(DicomAssociation).order_by(col(DicomAssociation.id).desc()).limit(RECENT)
    ).all()
    peers = session.exec(
        select(  # type: ignore[call-overload]
            DicomAssociation.calling_ae,
            DicomAssociation.address,
            func.count(),
            func.sum(DicomAssociation.stored),
            func.sum(DicomAssociation.refused),
            func.max(DicomAssociation.ended_at),
        )
        .group_by(DicomAssociation.calling_ae, DicomAssociation.address)
        .order_by(func.max(DicomAssociation.ended_at).desc())
    ).all()
    hl7_peers = session.exec(
        select(  # type: ignore[call-overload]
            HL7Message.sending_application,
            HL7Message.sending_facility,
            HL7Message.peer,
            func.count(),
            func.max(HL7Message.received_at),
        )
        .group_by(HL7Message.sending_application, HL7Message.sending_facility, HL7Message.peer)
        .order_by(func.max(HL7Message.received_at).desc())
        .limit(RECENT)
    ).all()
    inbound = session.exec(
        select(HL7Message).order_by(col(HL7Message.id).desc()).limit(RECENT)
    ).all()
    outbound = session.exec(
        select(OutboundMessage).order_by(col(OutboundMessage.id).desc()).limit(RECENT)
    ).all()
    dead = session.exec(
        select(OutboundMessage)
        .where(col(OutboundMessage.status).in_(outbox.DEAD_LETTERS))
        .order_by(col(OutboundMessage.id).desc())
    ).all()
    counts = dict(
        session.exec(
            select(OutboundMessage.status, func.count()).group_by(OutboundMessage.status)
        ).all()
    )
    components = []
    for name, part in sorted(health.items()):
        extra = {k: v for k, v in part.items() if k not in ("ready", "counters")}
        components.append(
            {
                "name": name,
                "ready": bool(part.get("ready")),
                "details": ", ".join(f"{k}: {_plain(v)}" for k, v in extra.items()),
                "counters": part.get("counters") or {},
            }
        )
    return {
        "components": components,
        "dicom_peers": [
            {
                "ae": ae,
                "address": address,
                "associations": int(n),
                "stored": int(stored or 0),
                "refused": int(refused or 0),
                "last": _when(last),
            }
            for ae, address, n, stored, refused, last in peers
        ],
        "hl7_peers": [
            {
                "application": app,
                "facility": facility,
                "peer": peer,
                "messages": int(n),
                "last": _when(last),
            }
            for app, facility, peer, n, last in hl7_peers
        ],
        "associations": [
            {"a": a, "ended": _when(a.ended_at), "statuses": _statuses(a.statuses)} for a in assoc
        ],
        "inbound": [{"m": m, "at": _when(m.received_at)} for m in inbound],
        "outbound": [
            {"m": m, "at": _when(m.created_at), "sent": _when(m.sent_at)} for m in outbound
        ],
        "dead": [{"m": m, "at": _when(m.dead_at or m.last_attempt_at)} for m in dead],
        "outbox_counts": {s: int(counts.get(s, 0)) for s in outbox.STATUSES},
    }


def _plain(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ":".join(str(v) for v in value)
    return "—" if value is None else str(value)


def _statuses(text: str) -> str:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return ""
    if not isinstance(value, dict):
        return ""
    return ", ".join(f"0x{k}: {v}" for k, v in sorted(value.items()))


def install_integration(
    app: FastAPI, db: Database, health: Callable[[], dict[str, dict[str, Any]]]
) -> None:
    """Add ``/integration`` and the dead-letter retry POST to ``app``, and the navigation."""
    router = APIRouter()
    add_nav(NavItem("/integration", "Integration", (*INTEGRATION_ROLES, ADMIN)))
    allowed = Depends(require(*INTEGRATION_ROLES))

    @router.get("/integration", response_class=HTMLResponse)
    def integration_page(
        request: Request, retried: str = "", error: str = "", user: User = allowed
    ) -> HTMLResponse:
        try:
            parts = health()
        except Exception as exc:  # the store's part of the page is still worth showing
            parts = {"engine": {"ready": False, "error": str(exc)}}
        with db.session() as s:
            view = integration_view(s, parts)
        audit(db, user.name, "view", "integration", client_address(request), "integration page")
        return page(
            request,
            "integration.html",
            user,
            title="Integration",
            v=view,
            retried=retried,
            error=error[:300],
        )

    @router.post("/integration/outbox/{message_id}/retry", response_model=None)
    async def retry(request: Request, message_id: int, user: User = allowed) -> Response:
        body = await request.body()
        if len(body) > FORM_MAX_BYTES:
            return HTMLResponse("form too large", status_code=413)
        # the CSRF middleware (triage.auth.routes) has checked the form's csrf_token
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        note = form.get("note", "").strip()[:500]
        try:
            done = outbox.retry(db, [message_id], who=user.name, note=note)
        except OutboxError as exc:
            return PlainTextResponse(f"not retried: {exc}", status_code=409)
        for m in done:
            audit(
                db,
                user.name,
                "outbox-retry",
                f"outbox:{m.id}",
                client_address(request),
                f"{m.kind} {m.control_id}, order {m.order_key}: now {m.status}",
            )
        return RedirectResponse(f"/integration?retried={message_id}#dead-letters", status_code=303)

    app.include_router(router)
