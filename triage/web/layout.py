"""The pages' shared layout: the Jinja2 environment (templates in ``triage/web/templates``,
autoescaped), the navigation and the static files (``triage/web/static``, served at
``/static``).

A new page: a template that ``{% extends "base.html" %}`` and fills ``title`` and
``content`` (and ``scripts`` for its own JavaScript), an entry in :data:`NAV` (or
:func:`add_nav`), and a route that returns :func:`page`. ``base.html`` shows the signed-in
user, the navigation and the synthetic-phantom notice on every page; ``triage.css`` holds the
colours (CSS variables at its top) and the shared pieces (tables, badges, forms, focus).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from triage import __version__
from triage.api.worklist import SYNTHETIC_NOTICE
from triage.auth.routes import csrf_token

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


@dataclass(frozen=True)
class NavItem:
    path: str
    label: str
    roles: tuple[str, ...] = ()  # who sees it; () = everyone signed in


NAV: list[NavItem] = [NavItem("/", "Worklist")]


def add_nav(item: NavItem) -> None:
    """Add a navigation entry (once; the order of calls is the order shown)."""
    if all(n.path != item.path for n in NAV):
        NAV.append(item)


ENV = Environment(
    loader=FileSystemLoader(str(TEMPLATES)),
    autoescape=select_autoescape(["html", "xml"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.globals.update(notice=SYNTHETIC_NOTICE, version=__version__)


def nav_for(user: Any, current: str) -> list[dict[str, Any]]:
    role = getattr(user, "role", "")
    return [
        {"path": n.path, "label": n.label, "current": n.path == current}
        for n in NAV
        if not n.roles or role in n.roles
    ]


def render(template: str, **context: Any) -> str:
    return ENV.get_template(template).render(**context)


def page(
    request: Request, template: str, user: Any, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """A full page: ``template`` with the user, the navigation and ``context``."""
    html = render(
        template,
        request=request,
        user=user,
        nav=nav_for(user, request.url.path),
        **{"csrf": csrf_token(request), **context},
    )
    return HTMLResponse(
        html,
        status_code=status_code,
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )
