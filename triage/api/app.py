"""The FastAPI application. Handlers read the store; they never block on the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from triage import __version__
from triage.api.worklist import SYNTHETIC_NOTICE, worklist
from triage.errors import StoreError
from triage.scoring import UrgencyRules
from triage.store import Database

HealthProbe = Callable[[], dict[str, dict[str, Any]]]


def create_app(db: Database, rules: UrgencyRules, health: HealthProbe) -> FastAPI:
    app = FastAPI(title="Triage engine", version=__version__, docs_url=None, redoc_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid request", "detail": exc.errors()}, 400)

    @app.exception_handler(StoreError)
    async def _store_error(_req: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"error": "store unavailable", "detail": str(exc)}, 503)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        parts = health()
        ready = all(p.get("ready") for p in parts.values())
        body = {"status": "ready" if ready else "not ready", "components": parts}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/api/worklist")
    def get_worklist() -> dict[str, Any]:
        with db.session() as s:
            items = worklist(s, rules)
        return {"notice": SYNTHETIC_NOTICE, "count": len(items), "studies": items}

    return app
