"""Helpers of the access tests: the moved clock, the sign-in form."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

API_TOKEN = "automation-token-0123456789"  # the api_token setting of these tests
PASSWORD = "correct horse battery"


class Clock:
    """The time source handed to the app; tests move it."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def form_token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def sign_in(client: TestClient, name: str, password: str = PASSWORD, next_url: str = "/"):
    """GET the form, POST it; returns the POST's response (not followed)."""
    page = client.get("/login", params={"next": next_url})
    assert page.status_code == 200
    return client.post(
        "/login",
        data={
            "username": name,
            "password": password,
            "csrf_token": form_token(page.text),
            "next": next_url,
        },
        follow_redirects=False,
    )
