"""The FastAPI application. Handlers read the store; they never block on the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from sqlmodel import col, select
from starlette.exceptions import HTTPException as StarletteHTTPException

from triage import __version__
from triage.api.guards import BodyLimit, SecurityHeaders
from triage.api.worklist import SYNTHETIC_NOTICE, worklist
from triage.auth.audit import audit
from triage.auth.deps import READERS, client_address, current_user, require
from triage.auth.routes import install_auth
from triage.auth.users import Clock, User
from triage.config import Settings
from triage.errors import StoreError
from triage.inference.keyimage import DISCLAIMER, resolve_key_image
from triage.scoring import UrgencyRules
from triage.store import Database
from triage.store.models import Finding

HealthProbe = Callable[[], dict[str, dict[str, Any]]]

# What /healthz tells a caller without credentials about each part: whether it is ready and,
# for the RIS, whether it is configured and failing. Addresses, process ids, counters, model
# states and error texts (which name hosts) are for signed-in users and bearer tokens only.
PUBLIC_HEALTH_KEYS = frozenset({"ready", "configured", "failing", "next_try"})


def public_health(parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``parts`` with only :data:`PUBLIC_HEALTH_KEYS` in each."""
    return {
        name: {k: v for k, v in part.items() if k in PUBLIC_HEALTH_KEYS}
        for name, part in parts.items()
    }


def create_app(
    db: Database,
    rules: UrgencyRules | Callable[[], UrgencyRules],
    health: HealthProbe,
    data_dir: Path | None = None,
    settings: Settings | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """``rules``: the urgency rules, or a function giving the rules in force (they change
    while the engine runs); ``data_dir``: where key images live (None: the key-image endpoint
    always answers 404); ``settings``: the sign-in, session and token settings (None: the
    defaults, so no ``api_token``); ``clock``: the time source of sessions and lock-out.
    Every endpoint but ``/healthz`` needs a signed-in user or a bearer token
    (docs/security.md); each read of patient data is audited."""
    current_rules = rules if callable(rules) else (lambda: rules)
    app = FastAPI(
        title="Triage engine",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # no route list for strangers (every route but /healthz needs a login)
    )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid request", "detail": exc.errors()}, 400)

    @app.exception_handler(OverflowError)
    async def _out_of_range(_req: Request, exc: OverflowError) -> JSONResponse:
        # an id past the database's integer range (SQLite: 64 bits) in a path or query
        return JSONResponse({"error": "invalid request", "detail": "a number out of range"}, 400)

    @app.exception_handler(StoreError)
    async def _store_error(_req: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"error": "store unavailable", "detail": str(exc)}, 503)

    install_auth(app, db, settings or Settings.model_validate({}), clock=clock)
    # outermost: no body over the limit is read, whoever sends it; every answer framed by
    # no other page and not cached (triage.api.guards)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit)

    @app.get("/healthz")
    def healthz(request: Request) -> JSONResponse:
        parts = health()
        ready = all(p.get("ready") for p in parts.values())
        body: dict[str, Any] = {"status": "ready" if ready else "not ready"}
        if current_user(request) is None:  # open to load balancers: states, no topology
            body["components"] = public_health(parts)
            body["detail"] = "each part's details need a signed-in user or a bearer token"
        else:
            body["components"] = parts
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/api/worklist")
    def get_worklist(request: Request, user: User = Depends(require(*READERS))) -> dict[str, Any]:
        if request.query_params:  # it takes none: a client's filter would silently do nothing
            names = ", ".join(sorted(set(request.query_params.keys())))
            raise StarletteHTTPException(
                400,
                f"/api/worklist takes no query parameters (got {names}): every study, "
                "most urgent first",
            )
        with db.session() as s:
            items = worklist(s, current_rules())
        audit(db, user.name, "view", "worklist", client_address(request), f"{len(items)} studies")
        return {"notice": SYNTHETIC_NOTICE, "count": len(items), "studies": items}

    @app.get("/api/studies/{study_uid}/key-image", response_model=None)
    def key_image(
        request: Request,
        study_uid: str,
        model: str | None = None,
        user: User = Depends(require(*READERS)),
    ) -> FileResponse | JSONResponse:
        """The newest key image PNG of a study's AI finding (of ``model`` when given)."""
        audit(db, user.name, "view", f"study:{study_uid}", client_address(request), "key image")
        with db.session() as s:
            query = select(Finding).where(Finding.study_uid == study_uid, Finding.key_image != "")
            if model:
                query = query.where(Finding.model_name == model)
            query = query.order_by(col(Finding.created_at).desc(), col(Finding.id).desc())
            finding = s.exec(query).first()
        path = (
            resolve_key_image(data_dir, finding.key_image)
            if finding is not None and data_dir is not None
            else None
        )
        if finding is None or path is None:
            what = f"of model {model!r} " if model else ""
            return JSONResponse({"error": f"no key image {what}for this study"}, status_code=404)
        return FileResponse(
            path,
            media_type="image/png",
            headers={
                "Cache-Control": "no-store",
                "X-Triage-Model": f"{finding.model_name} {finding.model_version}",
                "X-Triage-Notice": DISCLAIMER,
            },
        )

    from triage.web import install_pages  # the pages: worklist, study (triage/web/)

    install_pages(app, db, current_rules, data_dir)
    from triage.web.rules_routes import install as install_rules_page  # managers' /rules

    install_rules_page(app, db, current_rules)
    from triage.web.integration import install_integration
    from triage.web.monitoring import install_monitoring  # /monitoring, /metrics

    install_monitoring(app, db, health)
    install_integration(app, db, health)
    return app
