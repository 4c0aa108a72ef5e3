"""The Monitoring page (``/monitoring``) and ``/metrics`` (Prometheus text format).

``/monitoring``: per AI model and version, over the last ``days`` days (28 by default, 1-365),
day by day and for the whole window: studies analysed, positive and not-assessable rates,
time from study complete to RIS ACK (median, p95), and where the truth is known the
sensitivity, specificity, PPV and false alerts per study with 95 % Wilson intervals; then
the drift tests against the validation baseline (:mod:`triage.monitoring`). Roles: manager
and radiologist (they give the feedback these figures are made of), and admin. Aggregates
only, no patient data; each view is audited all the same.

``/metrics``: the same figures (with the outbox, DICOM association and component counters)
for Prometheus. It needs credentials like every endpoint but ``/healthz``: a bearer token
(``TRIAGE_API_TOKEN`` or a personal token of ``triage users token``) or a signed-in session of
any role; scrapes are not audited (no patient data, every few seconds).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from triage.auth.audit import audit
from triage.auth.deps import READERS, client_address, require
from triage.auth.users import ADMIN, MANAGER, RADIOLOGIST, User
from triage.monitoring import DEFAULT_DAYS, SYNTHETIC, report
from triage.monitoring.drift import MIN_STUDIES, PSI_ALERT, RECENT_DAYS, Z_ALERT
from triage.monitoring.prometheus import CONTENT_TYPE, render
from triage.store import Database
from triage.web.layout import NavItem, add_nav, page
from triage.web.views import MODEL_WORDS

#: Who sees the Monitoring page (admin always).
MONITORING_ROLES: tuple[str, ...] = (MANAGER, RADIOLOGIST)
MAX_DAYS = 365

TEST_WORDS = {
    "positive_rate": "Positive rate against validation",
    "score_psi": "Score distribution against validation",
    "input:scanner": "Input mix: scanner",
    "input:kernel": "Input mix: kernel",
    "input:thickness_mm": "Input mix: slice thickness",
    "input:tissue_hu": "Input mix: reference tissue HU",
}


def _days(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        return DEFAULT_DAYS
    return min(max(value, 1), MAX_DAYS)


def install_monitoring(
    app: FastAPI, db: Database, health: Callable[[], dict[str, dict[str, Any]]]
) -> None:
    """Add ``/monitoring`` and ``/metrics`` to ``app``, and the navigation entry."""
    router = APIRouter()
    add_nav(NavItem("/monitoring", "Monitoring", (*MONITORING_ROLES, ADMIN)))

    @router.get("/monitoring", response_class=HTMLResponse)
    def monitoring_page(
        request: Request,
        days: str = str(DEFAULT_DAYS),
        user: User = Depends(require(*MONITORING_ROLES)),
    ) -> HTMLResponse:
        n = _days(days)
        rep = report(db, days=n)
        audit(db, user.name, "view", "monitoring", client_address(request), f"{n} days")
        return page(
            request,
            "monitoring.html",
            user,
            title="Monitoring",
            rep=rep,
            days=n,
            words=MODEL_WORDS,
            test_words=TEST_WORDS,
            synthetic=SYNTHETIC,
            limits={
                "z": Z_ALERT,
                "psi": PSI_ALERT,
                "min": MIN_STUDIES,
                "recent": RECENT_DAYS,
            },
        )

    @router.get("/metrics")
    def metrics(user: User = Depends(require(*READERS))) -> Response:
        try:
            parts = health()
        except Exception:  # the figures stand without the component states
            parts = {}
        return Response(render(report(db), db, parts), media_type=CONTENT_TYPE)

    app.include_router(router)
